use super::*;

// ---------------------------------------------------------------------------------------
// 5. the store's filesystem fills up: archiving fails, PostgreSQL keeps the segment, then
//    succeeds once space is freed
// ---------------------------------------------------------------------------------------

#[test]
fn full_destination() {
    let _g = serial();
    let sb = Sandbox::new("full");
    let store = sb.p("store");
    let fs_guard = Tmpfs::mount(&store, "20m");
    let m = Cluster::initdb(&sb, "master", 56151, 1, "archive_mode = on\n");
    m.start();
    let ini = master_ini(
        &sb,
        &m,
        &store.display().to_string(),
        "compression = none\n",
    );
    ok(walmgr().arg(&ini).arg("setup"));
    let done = store.join("logs.complete");
    assert!(done.is_dir());
    m.psql("create table t (x text)");
    m.switch_and_wait_archived(30);

    // Leave room for a few 1 MB segments only.
    let filler = fs_guard.0.join("filler");
    ok(Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=15", "status=none"])
        .arg(format!("of={}", filler.display())));

    let fill_segment = || {
        m.psql("insert into t select repeat('x', 200) from generate_series(1, 1500)");
        m.psql("select pg_switch_wal()");
    };
    let mut failed = false;
    for _ in 0..25 {
        fill_segment();
        if wait_for(Duration::from_secs(2), || m.archiver().2 > 0) {
            failed = true;
            break;
        }
    }
    let (_, last_ok, failed_count, last_failed) = m.archiver();
    assert!(
        failed,
        "archiving never failed on a full store: {:?}, store {:?}",
        m.archiver(),
        names(&done)
    );
    assert!(failed_count > 0 && !last_failed.is_empty());
    // PostgreSQL keeps the segment and will retry it.
    assert!(
        m.data.join("pg_wal").join(&last_failed).exists(),
        "PostgreSQL keeps {last_failed}"
    );
    assert!(m
        .data
        .join("pg_wal/archive_status")
        .join(format!("{last_failed}.ready"))
        .exists());
    // Nothing partial in the store.
    let listing = names(&done);
    assert!(
        !listing.iter().any(|n| n.starts_with(".tmp-")),
        "temp files left on a full disk: {listing:?}"
    );
    assert!(
        !done.join(format!("{last_failed}.meta")).exists(),
        "{last_failed} acknowledged although archiving failed"
    );
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("walmgr: ") && l.contains(&last_failed)),
        "server log has walmgr's one-line error naming {last_failed}:\n{}",
        m.log_tail()
    );
    eprintln!("full: last archived {last_ok}, failing {last_failed}");

    // Free space; the master keeps working and PostgreSQL's retry succeeds.
    fs::remove_file(&filler).unwrap();
    let seg = {
        m.psql("insert into t values ('after')");
        m.switch_and_wait_archived(60)
    };
    assert!(seg.as_str() > last_failed.as_str());
    // Every segment from the first stored to `seg` is there, acknowledged.
    let listing = names(&done);
    assert!(
        !listing.iter().any(|n| n.starts_with(".tmp-")),
        "temp files left: {listing:?}"
    );
    let segs: Vec<&String> = listing
        .iter()
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    for s in &segs {
        assert!(
            listing.contains(&format!("{s}.meta")),
            "{s} without .meta: {listing:?}"
        );
    }
    assert!(
        segs.iter().any(|s| **s == last_failed),
        "{last_failed} stored"
    );
    assert!(segs.iter().any(|s| **s == seg), "{seg} stored");
    let slave = slave_ini(&sb, "slave.ini", &store, &sb.p("standby"), "");
    ok(walmgr().arg(&slave).arg("verify"));

    // A base backup that cannot fit (data dir > free space): fails with one line, leaves
    // no set and no staging behind (the space is given back), releases its lock and its
    // backup session (a second attempt fails the same way, not on the lock).
    for attempt in 0..2 {
        let err = fails(walmgr().arg(&ini).arg("backup"));
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("walmgr: ")).collect();
        if lines.len() != 1 || err.contains("lock") {
            problem(format!("backup on a full disk, attempt {attempt}: {err:?}"));
        }
        let left = names(&store.join("data.master"));
        assert!(left.is_empty(), "failed backup left {left:?}");
    }
    m.psql("insert into t values ('after backup')");
    m.switch_and_wait_archived(30);
    ok(walmgr().arg(&slave).arg("verify"));
    finish();
}
