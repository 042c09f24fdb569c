use super::*;

// ---------------------------------------------------------------------------------------
// 7. remote store over a real sshd
// ---------------------------------------------------------------------------------------

#[test]
fn remote_slave_over_ssh() {
    let _g = serial();
    let sb = Sandbox::new("ssh");
    // A port the kernel just had free: fixed ports in the ephemeral range (56170 was)
    // can be taken by any outgoing connection of the moment.
    let sshd = Sshd::start(&sb, common::pg::free_port());
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

// ---------------------------------------------------------------------------------------
// A black-holed remote ends within remote_timeout; xreceive-wal reads no more than announced
// ---------------------------------------------------------------------------------------

#[test]
fn a_black_holed_remote_fails_within_remote_timeout() {
    let _g = serial();
    let sb = Sandbox::new("blackhole");
    let m = Cluster::initdb(&sb, "master", 56175, 16, "");
    // The "ssh" connects and then nothing ever comes back (a black-holed network).
    let hole = sb.write("blackhole-ssh", "#!/bin/sh\nexec sleep 3600\n");
    fs::set_permissions(&hole, fs::Permissions::from_mode(0o755)).unwrap();
    let ini = master_ini(
        &sb,
        &m,
        "standby.invalid:/var/lib/walmgr",
        &format!(
            "slave_config = /etc/wal-slave.ini\nssh = {}\nremote_timeout = 2\n",
            hole.display()
        ),
    );
    let mut c = xarchive(&ini, &m.data, format!("pg_wal/{SEG1}"), SEG1);
    let mut child = Bg(Some(
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // A liveness bound, not a timing assert: without the timeout this never ends.
    let ended = wait_for(Duration::from_secs(60), || {
        child.0.as_mut().unwrap().try_wait().unwrap().is_some()
    });
    assert!(ended, "xarchive still hangs on a black-holed remote");
    let o = child.0.take().unwrap().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_one_line_error(&err, "remote_timeout");
    assert!(
        err.contains(&format!("xreceive-wal {SEG1}")) && err.contains("no answer within"),
        "{err}"
    );
    finish();
}

#[test]
fn xreceive_wal_refuses_more_stdin_than_announced() {
    let _g = serial();
    let sb = Sandbox::new("xreceive");
    let store = sb.p("store");
    let slave = slave_ini(&sb, "slave.ini", &store, &sb.p("standby"), "");
    ok(walmgr().arg(&slave).arg("setup"));
    let data = vec![0x5au8; 8192];
    let sum = hostkit::digest::sha256_hex(&data);
    let receive = |announced: &str, feed: usize| {
        let mut c = walmgr();
        c.arg(&slave).args([
            "xreceive-wal",
            SEG1,
            announced,
            &sum,
            "none",
            announced,
            &sum,
        ]);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let chunk = vec![0x5au8; 8192];
            let mut left = feed;
            while left > 0 {
                let n = left.min(chunk.len());
                if stdin.write_all(&chunk[..n]).is_err() {
                    break; // the receiver stopped reading: what we want to see
                }
                left -= n;
            }
        });
        let o = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // 8 KiB announced, 64 MiB sent: refused, nothing stored.
    let (ok_, err) = receive("8192", 64 << 20);
    assert!(!ok_, "{err}");
    assert_one_line_error(&err, "more data on stdin than the sender announced");
    assert!(
        !names(&store.join("logs.complete"))
            .iter()
            .any(|n| n.starts_with(SEG1)),
        "{:?}",
        names(&store.join("logs.complete"))
    );
    // An announced size no WAL segment has is refused before reading.
    let (ok_, err) = receive(&(2u64 << 30).to_string(), 0);
    assert!(!ok_, "{err}");
    assert_one_line_error(&err, "beyond a WAL segment");
    // Exactly what was announced is stored.
    let (ok_, err) = receive("8192", 8192);
    assert!(ok_, "{err}");
    assert!(store.join("logs.complete").join(SEG1).exists());
    finish();
}
