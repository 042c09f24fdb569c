use super::*;

// ---------------------------------------------------------------------------------------
// restore_prefetch: a recovery replays from segments the prefetcher fetched ahead into
// <data>/walmgr_prefetch, and a damaged spool file is caught and fetched again
// ---------------------------------------------------------------------------------------

/// The segment after `seg` (1 MiB segments: no log-number wrap in a test's range).
fn next_segment(seg: &str) -> String {
    let n = u32::from_str_radix(&seg[16..], 16).unwrap();
    format!("{}{:08X}", &seg[..16], n + 1)
}

#[test]
fn prefetch_restore_uses_the_spool_and_refetches_a_corrupt_copy() {
    let _g = serial();
    let sb = Sandbox::new("prefetch");
    let store = sb.p("store");
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
        "compression = gzip\n",
    );
    ok(walmgr().arg(&ini).arg("setup"));
    ok(m.pgbench().args(["-i", "-s", "2", "-q", "postgres"]));
    ok(walmgr().arg(&ini).arg("backup"));
    ok(m.pgbench()
        .args(["-n", "-c", "2", "-j", "1", "-t", "1500", "postgres"])
        .stdout(Stdio::null()));
    m.psql("create table after_load as select generate_series(1, 300) g");
    m.switch_and_wait_archived(60);

    let set = backup_sets(&store).pop().unwrap();
    let label =
        fs::read_to_string(store.join("data.master").join(&set).join("backup_label")).unwrap();
    let start = label
        .lines()
        .find_map(|l| l.split("(file ").nth(1))
        .map(|v| v.trim_end_matches(')').to_string())
        .unwrap();
    let dst = sb.p("restored");
    let slave = slave_ini(&sb, "slave.ini", &store, &dst, "restore_prefetch = 4\n");
    ok(walmgr().arg("--recovery").arg(&slave).arg("restore"));
    // A damaged copy of the segment after the backup's start, already in the spool: the
    // prefetcher leaves names it has alone, so xrestore meets it.
    let bad = next_segment(&start);
    let spool = dst.join("walmgr_prefetch");
    fs::create_dir(&spool).unwrap();
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o700)).unwrap();
    chown_pg(&spool);
    let planted = spool.join(&bad);
    fs::write(&planted, vec![0x5au8; 1 << 20]).unwrap();
    chown_pg(&planted);

    let r = Cluster::adopt(&sb, &dst, common::pg::free_port(), "-c archive_mode=off");
    r.start();
    wait_promoted(&r, 120);
    assert_eq!(pgbench_fingerprint(&m), pgbench_fingerprint(&r));
    assert_eq!(r.psql("select count(*) from after_load"), "300");

    let log = fs::read_to_string(sb.p("walmgr-slave.log")).unwrap();
    let from_spool = log.matches("restored from the prefetch spool").count();
    assert!(
        from_spool >= 3,
        "replay used the prefetch spool ({from_spool} segments)\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&bad) && l.contains("prefetched copy has sha256")),
        "the damaged spool copy of {bad} was detected\n{log}"
    );
    finish();
}
