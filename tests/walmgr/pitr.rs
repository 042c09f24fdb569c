use super::*;

// ---------------------------------------------------------------------------------------
// 3. point-in-time recovery (LSN, time, restore point), per-data-directory PAUSE, the
//    walmgr path through a symlink, expected misses not logged as errors, incremental
//    verify. One primary for all of it.
// ---------------------------------------------------------------------------------------

/// Rows (k-1)*100+1 ..= k*100 in one transaction.
pub(crate) fn batch(m: &Cluster, k: u32) {
    m.psql(&format!(
        "insert into t select generate_series({}, {})",
        (k - 1) * 100 + 1,
        k * 100
    ));
}

/// "count max" of t: batches 1..=k present and nothing after is "k*100 k*100".
pub(crate) fn rows(c: &Cluster) -> String {
    c.psql("select count(*) || ' ' || coalesce(max(i), 0) from t")
}

fn metas(store: &Path) -> usize {
    names(&store.join("logs.complete"))
        .iter()
        .filter(|n| n.ends_with(".meta"))
        .count()
}

#[test]
fn point_in_time_recovery() {
    let _g = serial();
    let sb = Sandbox::new("pitr");
    let store = sb.p("store");
    let m = Cluster::initdb(&sb, "master", 56191, 16, "archive_mode = on\n");
    m.start();
    let ini = master_ini(&sb, &m, &store.display().to_string(), "");
    ok(walmgr().arg(&ini).arg("setup"));
    m.psql("create table t (i int)");
    batch(&m, 1);
    ok(walmgr().arg(&ini).arg("backup"));
    let first = backup_sets(&store);
    assert_eq!(first.len(), 1, "{first:?}");
    let set1 = first[0].clone();
    // backup.json's finished_at is to the second (taken as the next one): the time
    // target below must be more than a second after set 1.
    std::thread::sleep(Duration::from_millis(1100));
    batch(&m, 2);
    batch(&m, 3);
    let lsn = m.psql("select pg_current_wal_insert_lsn()");
    batch(&m, 4);
    let time = m.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(50));
    batch(&m, 5);
    m.psql("select pg_create_restore_point('before_6')");
    batch(&m, 6);
    std::thread::sleep(Duration::from_millis(1100)); // set names have 1 s resolution
    ok(walmgr().arg(&ini).arg("backup"));
    let sets = backup_sets(&store);
    assert_eq!(sets.len(), 2, "{sets:?}");
    let set2 = sets[1].clone();
    batch(&m, 7);
    m.switch_and_wait_archived(30);

    // The slave's configured data directory (a standby elsewhere) is paused throughout
    // the PITR restores below: they must not be held by it.
    let standby = sb.mkdir("standby");
    sb.write("standby/PG_VERSION", "15\n");
    let slave = slave_ini(&sb, "slave.ini", &store, &standby, "");
    ok(walmgr().arg(&slave).arg("pause"));
    assert!(standby.join("walmgr.PAUSE").exists());
    assert!(!store.join("logs.complete/PAUSE").exists());

    // walmgr run through a symlink names the symlink in restore_command.
    sb.mkdir("bin");
    let link = sb.p("bin/wm");
    std::os::unix::fs::symlink(walmgr_bin(), &link).unwrap();
    let wm = || as_postgres(&link);

    // Targets before every set's end, and a named set that ends after the target: refused.
    let code = |c: &mut Command| {
        let o = run(c);
        assert_one_line_error(&String::from_utf8_lossy(&o.stderr), "backup set");
        o.status.code()
    };
    let dst = sb.p("refused");
    assert_eq!(
        code(
            wm().arg(&slave)
                .arg("restore")
                .arg("--target-time")
                .arg("2000-01-01 00:00:00+00")
                .arg(&set1)
                .arg(&dst)
        ),
        Some(14)
    );
    let e = fails(
        wm().arg(&slave)
            .args(["restore", "--target-lsn", "0/1"])
            .arg("--")
            .arg(&set1)
            .arg(&dst),
    );
    assert_one_line_error(&e, "ends after the recovery target");
    assert_eq!(
        code(wm().arg(&slave).args(["restore", "--target-lsn", "0/1"])),
        Some(14)
    );
    assert_eq!(
        code(
            wm().arg(&slave)
                .arg("restore")
                .arg(&set2)
                .arg(&dst)
                .args(["--target-lsn", &lsn])
        ),
        Some(14)
    );
    for bad in [
        ["--target-lsn", "12"],
        ["--target-time", "yesterday"],
        ["--target-xid", "x1"],
        ["--target-timeline", "newest"],
    ] {
        let o = run(wm()
            .arg(&slave)
            .arg("restore")
            .args(bad)
            .arg(&set1)
            .arg(&dst));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", show(&wm(), &o));
    }
    assert!(!dst.exists());
    let log = sb.p("walmgr-slave.log");
    let log_from = fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;

    // To an LSN, promote, through the symlink: no set named, so the newest that ends
    // before it (set 1), restored into that ini's slave_data.
    let d_lsn = sb.p("lsn");
    let lsn_ini = slave_ini(&sb, "lsn.ini", &store, &d_lsn, "");
    let out = ok(wm().arg(&lsn_ini).arg("restore").args([
        "--target-lsn",
        &lsn,
        "--target-action",
        "promote",
    ]));
    assert!(out.contains(&format!("restored {set1} ")), "{out}");
    assert!(d_lsn.join("recovery.signal").exists() && !d_lsn.join("standby.signal").exists());
    let auto = fs::read_to_string(d_lsn.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!(
            "restore_command = '{} {} xrestore %f %p %r'",
            link.display(),
            lsn_ini.display()
        )),
        "restore_command names walmgr by the symlink it was run through: {auto}"
    );
    assert!(
        auto.contains(&format!("recovery_target_lsn = '{lsn}'\n"))
            && auto.contains("recovery_target_action = 'promote'\n")
            && auto.contains("recovery_target_inclusive = 'on'\n"),
        "{auto}"
    );
    let c = Cluster::adopt(&sb, &d_lsn, 56192, "");
    c.start();
    wait_promoted(&c, 60);
    assert_eq!(rows(&c), "300 300", "{}", c.log_tail());
    drop(c);

    // To a time, promote, into a directory of its own (set 2 ends after it: set 1).
    let d_time = sb.p("time");
    let out = ok(walmgr()
        .arg(&slave)
        .arg("restore")
        .arg(&set1)
        .arg(&d_time)
        .args(["--target-time", &time, "--target-action", "promote"]));
    assert!(out.contains(&format!("restored {set1} ")), "{out}");
    let c = Cluster::adopt(&sb, &d_time, 56193, "");
    c.start();
    wait_promoted(&c, 60);
    assert_eq!(rows(&c), "400 400", "{}", c.log_tail());
    drop(c);

    // Meanwhile the paused data directory's own restore_command is held...
    let seg = names(&store.join("logs.complete"))
        .into_iter()
        .find(|n| n.ends_with(".meta") && n.len() == 29)
        .map(|n| n[..24].to_string())
        .unwrap();
    let mut held = Bg(Some(
        xrestore(&slave, &standby, &seg, "RECOVERYXLOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        held.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "xrestore in the paused data directory must wait"
    );
    // ...until continue.
    ok(walmgr().arg(&slave).arg("continue"));
    assert!(held.wait().success());
    assert!(standby.join("RECOVERYXLOG").is_file());

    // To a restore point, pause (the default), then boot ends the paused recovery.
    let d_name = sb.p("name");
    ok(walmgr()
        .arg(&slave)
        .arg("restore")
        .args(["--target-name", "before_6"])
        .arg(&set1)
        .arg(&d_name));
    let auto = fs::read_to_string(d_name.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("recovery_target_name = 'before_6'\n")
            && auto.contains("recovery_target_action = 'pause'\n"),
        "{auto}"
    );
    let c = Cluster::adopt(&sb, &d_name, 56194, "");
    c.start();
    assert!(
        wait_for(Duration::from_secs(60), || c
            .try_psql("select pg_get_wal_replay_pause_state()")
            .is_ok_and(|s| s == "paused")),
        "recovery did not pause at before_6\n{}",
        c.log_tail()
    );
    assert_eq!(rows(&c), "500 500", "{}", c.log_tail());
    let out = ok(walmgr().arg(&slave).arg("boot").arg(&d_name));
    assert!(out.contains("promoted"), "{out}");
    wait_promoted(&c, 30);
    c.psql("insert into t values (0)");
    drop(c);

    // The segment past the end, asked for in a recovery's directory: exit 1, quietly.
    // (Well past the current position: right after a WAL switch the current LSN sits on
    // a segment boundary, and pg_walfile_name of a boundary names the segment before
    // it, which is archived.)
    let last = m.psql("select pg_walfile_name(pg_current_wal_lsn() + 10 * 16 * 1024 * 1024)");
    let o = run(&mut xrestore(&slave, &d_time, &last, "RECOVERYXLOG"));
    assert_eq!(o.status.code(), Some(1), "{}", show(&walmgr(), &o));

    // What PostgreSQL asks for and does not get (*.history, the segment past the end)
    // is logged at info/debug, never as an error.
    let text = fs::read_to_string(&log).unwrap();
    let tail = &text[log_from..];
    let errors: Vec<&str> = tail
        .lines()
        .filter(|l| l.contains(" ERROR: ") || l.contains(" WARN: "))
        .collect();
    assert!(
        errors.is_empty(),
        "errors logged by the PITR restores: {errors:?}"
    );
    assert!(
        tail.lines()
            .any(|l| l.contains(" INFO: ") && l.contains("not in the archive")),
        "the miss past the end is logged at info: {tail}"
    );

    // Incremental verify: the first run reads everything, the next only what is new.
    let out = ok(walmgr().arg(&slave).arg("verify"));
    let (read, trusted) = verify_counts(&out);
    assert_eq!((read, trusted), (metas(&store) + 2, 0), "{out}");
    assert!(store.join("verify-state.json").is_file());
    let before = metas(&store);
    batch(&m, 8);
    m.switch_and_wait_archived(30);
    let new = metas(&store) - before;
    assert!(new >= 1);
    let out = ok(walmgr().arg(&slave).arg("verify"));
    assert_eq!(verify_counts(&out), (new, read), "{out}");
    // A bit flipped in an old, verified segment, size and mtime kept: trusted by the
    // incremental run (documented), caught by --full.
    let victim = names(&store.join("logs.complete"))
        .into_iter()
        .find(|n| {
            n.len() >= 24
                && !n.ends_with(".meta")
                && n[..24].bytes().all(|c| c.is_ascii_hexdigit())
                && n[..24] > *"000000010000000000000002"
        })
        .map(|n| store.join("logs.complete").join(n))
        .unwrap();
    let stamp = sb.p("stamp");
    ok(Command::new("touch").arg("-r").arg(&victim).arg(&stamp));
    let mut b = fs::read(&victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    fs::write(&victim, &b).unwrap();
    ok(Command::new("touch").arg("-r").arg(&stamp).arg(&victim));
    let out = ok(walmgr().arg(&slave).arg("verify"));
    assert_eq!(verify_counts(&out).0, 0, "{out}");
    let o = run(walmgr().arg(&slave).arg("verify").arg("--full"));
    assert_eq!(o.status.code(), Some(12), "{}", show(&walmgr(), &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&victim.display().to_string()),
        "--full names the flipped file: {err}"
    );
    finish();
}
