use super::*;

// ---------------------------------------------------------------------------------------
// 3. xarchive: idempotent re-archive, conflicts, bad input, foreign cluster
// ---------------------------------------------------------------------------------------

#[test]
fn xarchive_idempotent_and_conflict() {
    let _g = serial();
    let sb = Sandbox::new("xarchive");
    // Real segments without starting a server: initdb writes segment 1.
    let (m, store, ini, slave) = local_archive(&sb, 56131);
    let other = Cluster::initdb(&sb, "other", 56132, 16, "");
    let done = store.join("logs.complete");
    let rel = format!("pg_wal/{SEG1}");

    // Same segment twice: both succeed.
    ok(&mut xarchive(&ini, &m.data, &rel, SEG1));
    assert!(done.join(SEG1).is_file() && done.join(format!("{SEG1}.meta")).is_file());
    let stored_sha = sha256(&done.join(SEG1));
    let meta = fs::read(done.join(format!("{SEG1}.meta"))).unwrap();
    assert_eq!(stored_sha, sha256(&m.data.join(&rel)));
    // The .meta describes the segment (design: name, size, sha256, compression, ...).
    let j: serde_json::Value = serde_json::from_slice(&meta).expect(".meta is JSON");
    assert_eq!(j["name"], SEG1, "{j}");
    assert_eq!(j["size"], 16 * 1024 * 1024, "{j}");
    assert_eq!(j["sha256"], stored_sha.as_str(), "{j}");
    assert_eq!(j["compression"], "none", "{j}");
    assert_eq!(j["stored_sha256"], stored_sha.as_str(), "{j}");
    let sysid = ok(pgtool("pg_controldata").arg(&m.data))
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .map(|v| v.trim().to_string())
        .unwrap();
    assert_eq!(
        j["system_identifier"].to_string().trim_matches('"'),
        sysid,
        "{j}"
    );
    ok(&mut xarchive(&ini, &m.data, &rel, SEG1));
    let before = names(&done);

    let unchanged = |what: &str| {
        assert_eq!(names(&done), before, "{what}: store listing changed");
        assert_eq!(
            sha256(&done.join(SEG1)),
            stored_sha,
            "{what}: stored data changed"
        );
        assert_eq!(
            fs::read(done.join(format!("{SEG1}.meta"))).unwrap(),
            meta,
            "{what}: .meta changed"
        );
    };

    // A different file under the same name: refused, nothing overwritten.
    let mut forged = fs::read(m.data.join(&rel)).unwrap();
    forged[8 * 1024 * 1024] ^= 0xff;
    let forged_p = sb.write("forged", &forged);
    let err = fails(&mut xarchive(&ini, &m.data, &forged_p, SEG1));
    assert_one_line_error(&err, SEG1);
    if !err.contains("different contents") {
        problem(format!(
            "conflict message should say 'different contents': {err:?}"
        ));
    }
    unchanged("conflicting re-archive");

    // Bad %f names.
    for bad in [
        "not-a-wal",
        "00000001000000000000000a",
        "../000000010000000000000001",
        "0000000100000000000000011",
    ] {
        let err = fails(&mut xarchive(&ini, &m.data, &rel, bad));
        assert_one_line_error(&err, bad);
        unchanged(bad);
    }

    // Unreadable %p (root's file, mode 000; walmgr runs as postgres).
    let unreadable = sb.p("unreadable");
    fs::write(&unreadable, &forged).unwrap();
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let err = fails(&mut xarchive(
        &ini,
        &m.data,
        &unreadable,
        "000000010000000000000002",
    ));
    assert_one_line_error(&err, "unreadable");
    unchanged("unreadable %p");

    // Missing %p.
    let err = fails(&mut xarchive(
        &ini,
        &m.data,
        "pg_wal/000000010000000000000009",
        "000000010000000000000009",
    ));
    assert_one_line_error(&err, "000000010000000000000009");
    unchanged("missing %p");

    // A segment whose page address does not match its name.
    let err = fails(&mut xarchive(
        &ini,
        &m.data,
        &rel,
        "000000010000000000000002",
    ));
    assert_one_line_error(&err, "000000010000000000000002");
    unchanged("renamed segment");

    // Missing required ini key (`slave`), and an unknown key (typo).
    let text = fs::read_to_string(&ini).unwrap();
    let no_slave: String = text
        .lines()
        .filter(|l| !l.starts_with("slave ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let ini_noslave = sb.write("noslave.ini", no_slave);
    let err = fails(&mut xarchive(&ini_noslave, &m.data, &rel, SEG1));
    assert_one_line_error(&err, "slave");
    let ini_typo = sb.write("typo.ini", format!("{text}compresion = gzip\n"));
    let err = fails(&mut xarchive(
        &ini_typo,
        &m.data,
        &rel,
        "000000010000000000000002",
    ));
    assert_one_line_error(&err, "compresion");
    unchanged("bad ini");

    // A segment from another cluster (other system identifier), into a fresh store.
    let store2 = sb.p("store2");
    let ini2 = sb.write(
        "master2.ini",
        text.replace(&store.display().to_string(), &store2.display().to_string()),
    );
    let slave2 = slave_ini(&sb, "slave2.ini", &store2, &sb.p("standby2"), "");
    ok(walmgr().arg(&slave2).arg("setup"));
    let err = fails(&mut xarchive(&ini2, &m.data, other.data.join(&rel), SEG1));
    assert_one_line_error(&err, SEG1);
    let left = names(&store2.join("logs.complete"));
    assert!(
        left.iter().all(|n| !n.starts_with(SEG1)),
        "foreign segment left something under a final name: {left:?}"
    );
    // The same segment with the header check off is accepted (it is a valid segment).
    let ini3 = sb.write(
        "master3.ini",
        format!(
            "{}check_wal_header = no\n",
            fs::read_to_string(&ini2).unwrap()
        ),
    );
    ok(&mut xarchive(&ini3, &m.data, other.data.join(&rel), SEG1));
    // A .history file (no header to check) archives too.
    let hist = sb.write(
        "00000002.history",
        "1\t0/3000000\tno recovery target specified\n",
    );
    ok(&mut xarchive(&ini, &m.data, &hist, "00000002.history"));
    ok(&mut xarchive(&ini, &m.data, &hist, "00000002.history"));
    ok(walmgr().arg(&slave).arg("verify"));
    finish();
}

// ---------------------------------------------------------------------------------------
// 4. kill -9 in the middle of xarchive: nothing under a final name, the retry works
// ---------------------------------------------------------------------------------------

#[test]
fn xarchive_kill9_midcopy() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let _g = serial();
    let sb = Sandbox::new("kill9");
    let (m, store, ini, slave) = local_archive(&sb, 56141);
    let done = store.join("logs.complete");
    let rel = format!("pg_wal/{SEG1}");
    let data_tmp = format!(".tmp-{SEG1}");
    let meta_tmp = format!(".tmp-{SEG1}.meta.");

    let mut caught = None;
    for attempt in 0..30 {
        let mut child = Bg(Some(
            xarchive(&ini, &m.data, &rel, SEG1)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let pid = Pid::from_raw(child.0.as_ref().unwrap().id() as i32);
        let mut tmp = None;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Some(n) = names(&done)
                .into_iter()
                .find(|n| n.starts_with(&data_tmp) && !n.starts_with(&meta_tmp))
            {
                kill(pid, Signal::SIGSTOP).unwrap();
                tmp = Some(n);
                break;
            }
            if child.0.as_mut().unwrap().try_wait().unwrap().is_some() {
                break;
            }
        }
        match tmp {
            // Stopped while its data temp file still exists: caught mid-write.
            Some(n) if done.join(&n).exists() => {
                for f in final_names(SEG1) {
                    assert!(
                        !done.join(&f).exists(),
                        "{f} exists while xarchive is stopped mid-write: {:?}",
                        names(&done)
                    );
                }
                kill(pid, Signal::SIGKILL).unwrap();
                child.wait();
                eprintln!("caught xarchive mid-write at attempt {attempt}: {n}");
                caught = Some(n);
                break;
            }
            _ => {
                // Too late (already renamed): start over with an empty store.
                let _ = kill(pid, Signal::SIGKILL);
                child.wait();
                for n in names(&done) {
                    fs::remove_file(done.join(n)).unwrap();
                }
            }
        }
    }
    let tmp = caught.expect("never caught xarchive while its temp file existed");
    for f in final_names(SEG1) {
        assert!(
            !done.join(&f).exists(),
            "{f} exists after kill -9 mid-write: {:?}",
            names(&done)
        );
    }
    assert!(
        done.join(&tmp).exists(),
        "the killed writer's temp file stays"
    );

    // Nothing is stored: xrestore must not find it.
    let out = sb.mkdir("out");
    let err = fails(&mut xrestore(&slave, &out, SEG1, out.join("RECOVERYXLOG")));
    assert!(!out.join("RECOVERYXLOG").exists(), "{err}");

    // PostgreSQL's retry succeeds and xrestore returns the very same bytes.
    ok(&mut xarchive(&ini, &m.data, &rel, SEG1));
    ok(&mut xrestore(&slave, &out, SEG1, out.join("RECOVERYXLOG")));
    assert_eq!(
        fs::read(out.join("RECOVERYXLOG")).unwrap(),
        fs::read(m.data.join(&rel)).unwrap(),
        "xrestore returns the archived bytes"
    );
    ok(walmgr().arg(&slave).arg("verify"));
    // cleanup removes the dead writer's temp file, keeps the segment.
    ok(walmgr().arg(&slave).arg("cleanup"));
    let left = names(&done);
    assert!(
        left.iter().all(|n| !n.starts_with(".tmp-")),
        "cleanup leaves stale temp files: {left:?}"
    );
    assert!(done.join(SEG1).exists() && done.join(format!("{SEG1}.meta")).exists());

    // A stored copy damaged afterwards (bit rot): verify names it, xrestore refuses to
    // deliver it, and archiving the segment again repairs it.
    let stored = done.join(SEG1);
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&stored, &bytes).unwrap();
    let o = run(walmgr().arg(&slave).arg("verify"));
    assert!(!o.status.success(), "verify must fail on a damaged segment");
    let verr =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(verr.contains(SEG1), "verify names {SEG1}: {verr:?}");
    fs::remove_file(out.join("RECOVERYXLOG")).unwrap();
    // Exit > 125: PostgreSQL stops recovery instead of taking it as the archive's end.
    let mut c = xrestore(&slave, &out, SEG1, out.join("RECOVERYXLOG"));
    let o = run(&mut c);
    assert_eq!(
        o.status.code(),
        Some(255),
        "damaged segment: {}",
        show(&c, &o)
    );
    assert_one_line_error(&String::from_utf8_lossy(&o.stderr), SEG1);
    assert!(
        !out.join("RECOVERYXLOG").exists(),
        "damaged segment delivered"
    );
    ok(&mut xarchive(&ini, &m.data, &rel, SEG1));
    ok(walmgr().arg(&slave).arg("verify"));
    ok(&mut xrestore(&slave, &out, SEG1, out.join("RECOVERYXLOG")));
    assert_eq!(
        fs::read(out.join("RECOVERYXLOG")).unwrap(),
        fs::read(m.data.join(&rel)).unwrap()
    );
    finish();
}
