use super::*;

// ---------------------------------------------------------------------------------------
// 7. remote store over a real sshd
// ---------------------------------------------------------------------------------------

#[test]
fn remote_slave_over_ssh() {
    let _g = serial();
    let sb = Sandbox::new("ssh");
    let sshd = Sshd::start(&sb, 56170);
    let m = Cluster::initdb(&sb, "master", 56171, 16, "archive_mode = on\n");
    m.start();
    let store = sb.p("slavestore");
    let dst = sb.p("restored");
    let slave = slave_ini(&sb, "slave.ini", &store, &dst, "");
    let ini = master_ini(
        &sb,
        &m,
        &format!("127.0.0.1:{}", store.display()),
        &format!(
            "slave_config = {}\nssh = {}\nremote_walmgr = {}\ncompression = gzip\n\
             compression_level = 1\n",
            slave.display(),
            sshd.ssh,
            walmgr_bin()
        ),
    );
    ok(walmgr().arg(&ini).arg("setup"));
    assert!(
        store.join("logs.complete").is_dir(),
        "setup creates the remote store through ssh: {:?}",
        names(&store)
    );
    let ac = m.psql("show archive_command");
    assert!(ac.contains("xarchive"), "{ac}");

    ok(m.pgbench().args(["-i", "-s", "2", "-q", "postgres"]));
    let mut load = Bg(Some(
        m.pgbench()
            .args(["-n", "-c", "2", "-j", "1", "-T", "6", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(1));
    // The slave refuses the set (its backup directory is read-only): the backup fails
    // with one line, and the master's lock and backup session are released (the next
    // backup works).
    let fb = store.join("data.master");
    if !fb.exists() {
        sb.mkdir("slavestore/data.master");
    }
    fs::set_permissions(&fb, fs::Permissions::from_mode(0o555)).unwrap();
    let err = fails(walmgr().arg(&ini).arg("backup"));
    fs::set_permissions(&fb, fs::Permissions::from_mode(0o755)).unwrap();
    assert_one_line_error(&err, "");
    assert!(backup_sets(&store).is_empty());
    ok(walmgr().arg(&ini).arg("backup"));
    assert!(load.wait().success(), "pgbench load failed");
    let seg = m.switch_and_wait_archived(60);
    let (archived, _, failed, _) = m.archiver();
    assert!(archived > 0);
    assert_eq!(
        failed,
        0,
        "no failed archive attempts over ssh\n{}",
        m.log_tail()
    );
    let done = store.join("logs.complete");
    assert!(
        done.join(format!("{seg}.gz")).exists() && done.join(format!("{seg}.meta")).exists(),
        "{seg} stored gzip-compressed on the slave side: {:?}",
        names(&done)
    );

    let sets = backup_sets(&store);
    assert_eq!(sets.len(), 1, "{sets:?}");
    // listbackups from the master ini is forwarded over ssh.
    let lb = ok(walmgr().arg(&ini).arg("listbackups"));
    assert!(lb.contains(sets[0].as_str()), "{lb}");
    ok(walmgr().arg(&slave).arg("verify"));

    ok(walmgr()
        .arg("--recovery")
        .arg(&slave)
        .arg("restore")
        .arg(&sets[0])
        .arg(&dst));
    let r = Cluster::adopt(&sb, &dst, 56172, "-c archive_mode=off");
    r.start();
    wait_promoted(&r, 60);
    assert_eq!(
        pgbench_fingerprint(&m),
        pgbench_fingerprint(&r),
        "restored cluster differs from the master"
    );

    // The slave is unreachable: xarchive fails with one line, PostgreSQL would retry.
    let log = sshd.log.clone();
    drop(sshd);
    let next = m.psql("select pg_walfile_name(pg_current_wal_lsn())");
    let copy = sb.write(
        "unsent",
        fs::read(m.data.join("pg_wal").join(&next)).unwrap(),
    );
    let t0 = Instant::now();
    let err = fails(&mut xarchive(&ini, &m.data, &copy, &next));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_one_line_error(&err, &next);
    assert!(
        final_names(&next).iter().all(|f| !done.join(f).exists()),
        "{next} stored although the slave was unreachable; sshd log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
    finish();
}
