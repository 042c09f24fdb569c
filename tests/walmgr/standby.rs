use super::*;

// ---------------------------------------------------------------------------------------
// 2. a standby follows the archive; pause holds it, continue resumes, boot promotes
// ---------------------------------------------------------------------------------------

#[test]
fn standby_follows_pause_continue_boot() {
    let _g = serial();
    let sb = Sandbox::new("standby");
    let store = sb.p("store");
    let m = Cluster::initdb(&sb, "master", 56111, 16, "archive_mode = on\n");
    m.start();
    let ini = master_ini(&sb, &m, &store.display().to_string(), "keep_backups = 1\n");
    ok(walmgr().arg(&ini).arg("setup"));
    m.psql("create table t (i int)");
    // A lock file left by a backup that died (no flock, dead pid) does not block.
    let lock = sb.write("walmgr-backup.lock", "999999\n");
    ok(walmgr().arg(&ini).arg("backup"));
    let first = backup_sets(&store);
    assert_eq!(first.len(), 1, "{first:?}");
    m.psql("create table t_old as select generate_series(1, 10000) g");
    m.switch_and_wait_archived(30);
    std::thread::sleep(Duration::from_millis(1100)); // set names have 1 s resolution
                                                     // keep_backups = 1: the second backup rotates the first away and purges the WAL
                                                     // only it needed.
    ok(walmgr().arg(&ini).arg("backup"));
    let sets = backup_sets(&store);
    assert_eq!(sets.len(), 1, "keep_backups = 1 keeps one set: {sets:?}");
    assert!(
        sets[0] > first[0],
        "the newest set is kept: {sets:?} (first {first:?})"
    );
    let label = fs::read_to_string(
        store
            .join("data.master")
            .join(&sets[0])
            .join("backup_label"),
    )
    .unwrap();
    let start = label
        .lines()
        .find_map(|l| l.split("(file ").nth(1))
        .map(|v| v.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("START WAL LOCATION in backup_label: {label}"));
    let done = store.join("logs.complete");
    let listing = names(&done);
    let old: Vec<&String> = listing
        .iter()
        .filter(|n| n.len() >= 24 && n[..24].chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|n| n[..24] < *start)
        .collect();
    assert!(old.is_empty(), "WAL older than {start} purged: {old:?}");
    assert!(
        listing.contains(&format!("{start}.meta")),
        "the kept set's start segment {start} stays: {listing:?}"
    );
    let _ = lock;

    let dst = sb.p("standby");
    let slave = slave_ini(&sb, "slave.ini", &store, &dst, "");
    // Defaults: newest set, into slave_data, as a standby.
    ok(walmgr().arg(&slave).arg("restore"));
    assert!(
        dst.join("standby.signal").exists(),
        "default restore is a standby"
    );
    // Started exactly as restored (no recovery_prefetch override): PostgreSQL 15's
    // read-ahead (recovery_prefetch = try) calls restore_command for the next segment
    // before the current one is fully replayed, so a waiting xrestore would hold back the
    // tail of every segment, consistency included.
    let s = Cluster::adopt(&sb, &dst, 56112, "-c archive_mode=off -c hot_standby=on");
    if let Err(e) = s.try_start() {
        let auto = fs::read_to_string(dst.join("postgresql.auto.conf")).unwrap_or_default();
        panic!(
            "the restored standby never became consistent: {e}\n\
             (postgresql.auto.conf sets recovery_prefetch: {}; PostgreSQL 15 read-ahead \
             blocks in a waiting restore_command before replaying the end of the segment \
             it already has)\n--- standby log ---\n{}\n--- postgresql.auto.conf ---\n{auto}",
            auto.contains("recovery_prefetch"),
            s.log_tail()
        );
    }
    assert_eq!(s.in_recovery(), Some(true), "{}", s.log_tail());
    let count = || s.try_psql("select count(*) from t").unwrap_or_default();

    m.psql("insert into t select generate_series(1, 100)");
    m.switch_and_wait_archived(30);
    assert!(
        wait_for(Duration::from_secs(30), || count() == "100"),
        "standby did not replay the first 100 rows (has {})\n--- standby log ---\n{}",
        count(),
        s.log_tail()
    );

    ok(walmgr().arg(&slave).arg("pause"));
    assert!(dst.join("walmgr.PAUSE").exists());
    std::thread::sleep(Duration::from_millis(1500));
    m.psql("insert into t select generate_series(101, 200)");
    m.switch_and_wait_archived(30);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        count(),
        "100",
        "a paused standby must not replay new segments"
    );

    ok(walmgr().arg(&slave).arg("continue"));
    assert!(!dst.join("walmgr.PAUSE").exists());
    assert!(
        wait_for(Duration::from_secs(30), || count() == "200"),
        "standby did not resume after continue (has {})\n--- standby log ---\n{}",
        count(),
        s.log_tail()
    );

    ok(walmgr().arg(&slave).arg("boot"));
    wait_promoted(&s, 30);
    s.psql("insert into t values (1000)");
    assert_eq!(count(), "201");
    finish();
}
