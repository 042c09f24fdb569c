use super::*;

// ---------------------------------------------------------------------------------------
// 6. xrestore of a missing file fails at once outside standby mode
// ---------------------------------------------------------------------------------------

#[test]
fn xrestore_missing() {
    let _g = serial();
    let sb = Sandbox::new("missing");
    let store = sb.p("store");
    let slave = slave_ini(&sb, "slave.ini", &store, &sb.p("standby"), "");
    ok(walmgr().arg(&slave).arg("setup"));
    // A log file walmgr cannot open must not stop it (archiving would stall): stderr instead.
    let unlogged = slave_ini(
        &sb,
        "unlogged.ini",
        &store,
        &sb.p("standby"),
        &format!("logfile = {}\n", sb.p("no/such/dir/wal.log").display()),
    );
    let mut c = walmgr();
    c.arg(&unlogged).arg("verify");
    let o = run(&mut c);
    assert!(o.status.success(), "unwritable logfile: {}", show(&c, &o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("logging to stderr"),
        "{}",
        show(&c, &o)
    );
    let cwd = sb.mkdir("recovering");
    let target = cwd.join("pg_wal/RECOVERYXLOG");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    chown_pg(target.parent().unwrap());

    let prompt_failure = |name: &str| {
        let t0 = Instant::now();
        let mut c = xrestore(&slave, &cwd, name, &target);
        let o = run(&mut c);
        // Exactly 1: "not there", which PostgreSQL takes as such (not > 125: fatal).
        assert_eq!(o.status.code(), Some(1), "missing {name}: {}", show(&c, &o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "xrestore {name} took {:?}",
            t0.elapsed()
        );
        assert!(!target.exists(), "nothing delivered for {name}: {err}");
    };
    // Archive recovery (no standby.signal): missing segment and history fail now.
    prompt_failure("000000010000000000000005");
    prompt_failure("00000002.history");
    prompt_failure("000000010000000000000005.partial");

    // Standby mode: a missing history file still fails now; a segment is waited for.
    let signal = sb.write("recovering/standby.signal", "");
    prompt_failure("00000003.history");
    let mut waiting = Bg(Some(
        xrestore(&slave, &cwd, "000000010000000000000005", &target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        waiting.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "a standby's xrestore waits for a missing segment"
    );
    // boot (STOP, in the recovering data directory) ends the wait with a failure:
    // recovery ends, the standby promotes.
    sb.write("recovering/PG_VERSION", "15\n");
    ok(walmgr().arg(&slave).arg("boot").arg(&cwd));
    assert!(cwd.join("walmgr.STOP").exists());
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = waiting.0.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "xrestore still waiting 5 s after boot"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !st.success(),
        "xrestore after STOP with nothing stored must fail"
    );
    assert!(!target.exists());
    fs::remove_file(signal).unwrap();
    finish();
}
