use super::*;

// ---------------------------------------------------------------------------------------
// 1. archive, base backup under load, restore with --recovery, compare contents
// ---------------------------------------------------------------------------------------

#[test]
fn archive_backup_restore_roundtrip() {
    let _g = serial();
    let sb = Sandbox::new("roundtrip");
    let store = sb.p("store");
    let m = Cluster::initdb(&sb, "master", 56101, 16, "");
    m.start();
    let ini = master_ini(
        &sb,
        &m,
        &store.display().to_string(),
        "compression = zstd\nkeep_backups = 0\n",
    );

    // setup: ALTER SYSTEM, archive_mode changed -> master_restart_cmd.
    ok(walmgr().arg(&ini).arg("setup"));
    assert_eq!(m.psql("show archive_mode"), "on", "{}", m.log_tail());
    let ac = m.psql("show archive_command");
    assert!(
        ac.contains(walmgr_bin())
            && ac.contains(&ini.display().to_string())
            && ac.contains("xarchive %p %f"),
        "archive_command after setup: {ac}"
    );
    assert!(
        store.join("logs.complete").is_dir(),
        "setup creates the store"
    );

    // A tablespace outside the data directory, written before and after the backup.
    let ts = sb.mkdir("ts");
    m.psql(&format!("create tablespace ts location '{}'", ts.display()));
    m.psql("create table in_ts tablespace ts as select g from generate_series(1, 500) g");
    let ts_oid = m.psql("select oid from pg_tablespace where spcname = 'ts'");

    ok(m.pgbench().args(["-i", "-s", "3", "-q", "postgres"]));
    let mut load = Bg(Some(
        m.pgbench()
            .args(["-n", "-c", "2", "-j", "1", "-T", "8", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(2));
    ok(walmgr().arg(&ini).arg("backup")); // mid-load
    assert!(load.wait().success(), "pgbench load failed");
    m.psql("create table after_backup as select g from generate_series(1, 1000) g");
    m.psql("insert into in_ts select generate_series(501, 700)");
    m.switch_and_wait_archived(60);

    let dst = sb.p("restored");
    // The master still uses the tablespace's path: restore it elsewhere.
    let ts_dir = sb.p("restored_ts");
    let slave = slave_ini(
        &sb,
        "slave.ini",
        &store,
        &dst,
        &format!("tablespace_dir = {}\n", ts_dir.display()),
    );
    let sets = backup_sets(&store);
    assert_eq!(sets.len(), 1, "one backup set in the store: {sets:?}");
    let set = &sets[0];
    for f in ["backup_label", "backup.json"] {
        assert!(
            store.join("data.master").join(set).join(f).is_file(),
            "set {set} has {f}: {:?}",
            names(&store.join("data.master").join(set))
        );
    }
    let lb = ok(walmgr().arg(&slave).arg("listbackups"));
    assert!(lb.contains(set.as_str()), "listbackups lists {set}: {lb}");
    ok(walmgr().arg(&slave).arg("verify"));

    ok(walmgr()
        .arg("--recovery")
        .arg(&slave)
        .arg("restore")
        .arg(set)
        .arg(&dst));
    assert!(
        dst.join("recovery.signal").exists(),
        "--recovery writes recovery.signal"
    );
    assert!(!dst.join("standby.signal").exists());
    assert!(!dst.join("tablespace_map").exists());
    let auto = fs::read_to_string(dst.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("restore_command") && auto.contains("xrestore"),
        "restore_command in postgresql.auto.conf: {auto}"
    );

    let wal: Vec<String> = names(&dst.join("pg_wal"))
        .into_iter()
        .filter(|n| n != "archive_status")
        .collect();
    assert!(wal.is_empty(), "restore leaves pg_wal empty: {wal:?}");
    assert!(!dst.join("postmaster.pid").exists());
    let link = fs::read_link(dst.join("pg_tblspc").join(&ts_oid))
        .unwrap_or_else(|e| panic!("pg_tblspc/{ts_oid} is a symlink: {e}"));
    assert_eq!(
        link,
        ts_dir.join(&ts_oid),
        "tablespace restored into tablespace_dir"
    );
    assert!(
        names(&ts).iter().all(|n| n.starts_with("PG_")),
        "the master's tablespace directory is untouched: {:?}",
        names(&ts)
    );

    let r = Cluster::adopt(&sb, &dst, 56102, "-c archive_mode=off");
    r.start();
    wait_promoted(&r, 60);
    // Restoring over a running cluster is refused and leaves it alone.
    let err = fails(walmgr().arg(&slave).arg("restore").arg(set).arg(&dst));
    assert_one_line_error(&err, &dst.display().to_string());
    assert_eq!(r.in_recovery(), Some(false), "{}", r.log_tail());
    assert_eq!(
        pgbench_fingerprint(&m),
        pgbench_fingerprint(&r),
        "restored cluster differs from the master"
    );
    assert_eq!(r.psql("select count(*) from after_backup"), "1000");
    assert_eq!(
        r.psql("select count(*), sum(g) from in_ts"),
        m.psql("select count(*), sum(g) from in_ts")
    );
    assert_eq!(
        r.psql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts'"),
        ts_dir.join(&ts_oid).display().to_string()
    );
    // Promoted: a new timeline, writable.
    r.psql("insert into after_backup values (0)");

    // stop: archive_command = '/bin/true' and, with master_restart_cmd, archive_mode off.
    ok(walmgr().arg(&ini).arg("stop"));
    assert_eq!(m.psql("show archive_mode"), "off", "{}", m.log_tail());
    // (SHOW says "(disabled)" once archive_mode is off: ask the config file.)
    assert_eq!(
        m.psql(
            "select setting from pg_file_settings where name = 'archive_command' \
             order by seqno desc limit 1"
        ),
        "/bin/true"
    );
    finish();
}
