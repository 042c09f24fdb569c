use super::*;

// ---------------------------------------------------------------------------------------
// archive_async = yes: the background pusher under pgbench, a store outage, a pusher
// killed with SIGKILL, the queue bound; then a restore from the store
// ---------------------------------------------------------------------------------------

/// True when `seg` is stored: its .meta parses and its data file has stored_size bytes.
pub(crate) fn stored(store: &Path, seg: &str) -> bool {
    let done = store.join("logs.complete");
    let Ok(text) = fs::read(done.join(format!("{seg}.meta"))) else {
        return false;
    };
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    let ext = match j["compression"].as_str() {
        Some("gzip") => ".gz",
        Some("zstd") => ".zst",
        _ => "",
    };
    fs::metadata(done.join(format!("{seg}{ext}")))
        .is_ok_and(|m| Some(m.len()) == j["stored_size"].as_u64())
}

/// Nothing counted as archived that is not stored: every segment PostgreSQL marked done
/// (`archive_status/*.done`: archive_command returned 0 for it) and every one the pusher
/// recorded in its spool. Returns how many spool records were checked.
/// Segments before `from` (the backup's start) are left out: the backup's retention
/// purged them from the store, by design, after they were archived.
fn assert_counted_are_stored(
    m: &Cluster,
    store: &Path,
    spool: &Path,
    from: &str,
    when: &str,
) -> usize {
    let mut n = 0;
    let spool_dir = spool.to_path_buf();
    for (dir, ext) in [
        (m.data.join("pg_wal/archive_status"), ".done"),
        (spool.to_path_buf(), ".done"),
    ] {
        for f in names(&dir) {
            let Some(seg) = f.strip_suffix(ext) else {
                continue;
            };
            if seg.starts_with('.') || seg < from {
                continue;
            }
            // A .done mark PostgreSQL removed meanwhile (segment recycled) still had to be
            // stored; from the backup on the store never loses one here.
            assert!(
                stored(store, seg),
                "{when}: {seg} counted as archived ({}) but not in the store: {:?}",
                dir.display(),
                names(&store.join("logs.complete"))
                    .iter()
                    .filter(|n| n.starts_with(seg))
                    .collect::<Vec<_>>()
            );
            if dir == spool_dir {
                n += 1;
            }
        }
    }
    n
}

fn pusher_pid(spool: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(spool.join("pusher.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    hostkit::daemon::pid_alive(pid).then_some(pid)
}

#[test]
fn async_archiving_under_load_with_outage_and_killed_pusher() {
    let _g = serial();
    let sb = Sandbox::new("async");
    let store = sb.p("store");
    // 1 MiB segments: many of them in a few seconds of pgbench.
    let m = Cluster::initdb(
        &sb,
        "master",
        common::pg::free_port(),
        1,
        "archive_mode = on\n",
    );
    m.start();
    let ini = master_ini(
        &sb,
        &m,
        &store.display().to_string(),
        "compression = zstd\narchive_async = yes\nparallel = 3\narchive_queue_max = 3\n\
         archive_async_wait = 3\n",
    );
    let spool = sb.p("master.walmgr-spool");
    ok(walmgr().arg(&ini).arg("setup"));
    ok(m.pgbench().args(["-i", "-s", "2", "-q", "postgres"]));
    ok(walmgr().arg(&ini).arg("backup"));
    let set = backup_sets(&store).pop().expect("a backup set");
    let label = fs::read_to_string(store.join("data.master").join(&set).join("backup_label"))
        .expect("backup_label");
    let start = label
        .lines()
        .find_map(|l| l.split("(file ").nth(1))
        .map(|v| v.trim_end_matches(')').to_string())
        .expect("START WAL LOCATION in backup_label");
    let mut load = Bg(Some(
        m.pgbench()
            .args(["-n", "-c", "2", "-j", "1", "-T", "22", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        wait_for(Duration::from_secs(10), || pusher_pid(&spool).is_some()),
        "no background pusher holds {}/pusher.lock\n{}",
        spool.display(),
        fs::read_to_string(sb.p("walmgr-master.log")).unwrap_or_default()
    );
    let mut records = assert_counted_are_stored(&m, &store, &spool, &start, "under load");

    // The store becomes unavailable (walmgr runs as postgres: mode 000 shuts it out).
    let done_dir = store.join("logs.complete");
    fs::set_permissions(&done_dir, fs::Permissions::from_mode(0o000)).unwrap();
    let outage = Instant::now();
    let archived_before = m.archiver().0;
    while outage.elapsed() < Duration::from_secs(6) {
        // Segments keep coming (more than archive_queue_max of them).
        m.psql("select pg_switch_wal()");
        records += assert_counted_are_stored(&m, &store, &spool, &start, "store unavailable");
        std::thread::sleep(Duration::from_millis(400));
    }
    fs::set_permissions(&done_dir, fs::Permissions::from_mode(0o700)).unwrap();

    // The pusher killed mid-run: what it recorded is stored, and archiving goes on.
    assert!(
        wait_for(Duration::from_secs(15), || m.archiver().0
            > archived_before + 5),
        "archiving did not resume after the outage: {:?}\n{}",
        m.archiver(),
        m.log_tail()
    );
    if let Some(pid) = pusher_pid(&spool) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(wait_for(Duration::from_secs(5), || {
            !hostkit::daemon::pid_alive(pid)
        }));
    } else {
        problem("no pusher running to kill after the outage".into());
    }
    records += assert_counted_are_stored(&m, &store, &spool, &start, "pusher killed");
    assert!(load.wait().success(), "pgbench load failed");
    m.psql("create table after_load as select generate_series(1, 500) g");
    let last = m.switch_and_wait_archived(90);
    records += assert_counted_are_stored(&m, &store, &spool, &start, "after the load");
    assert!(
        records > 0,
        "the background pusher stored segments ahead of archive_command (spool records)"
    );
    assert!(stored(&store, &last), "{last} stored");

    let log = fs::read_to_string(sb.p("walmgr-master.log")).unwrap();
    assert!(
        log.contains("ARCHIVE QUEUE FULL"),
        "the queue bound (archive_queue_max = 3) was passed during the outage: warned\n{log}"
    );
    // Every stored segment is whole and the sequence from the backup on has no gap.
    let slave = slave_ini(
        &sb,
        "slave.ini",
        &store,
        &sb.p("restored"),
        "restore_prefetch = 0\n",
    );
    ok(walmgr().arg(&slave).arg("verify"));
    let st = run(walmgr().arg(&ini).arg("status"));
    let line = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(line.contains("0 segments waiting"), "{line}");

    // A restore from the store reproduces the master.
    let dst = sb.p("restored");
    let r = recover_newest(&sb, &slave, &dst);
    assert_eq!(pgbench_fingerprint(&m), pgbench_fingerprint(&r));
    assert_eq!(r.psql("select count(*) from after_load"), "500");
    finish();
}
