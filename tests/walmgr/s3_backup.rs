use super::s3::{exit_code, s3_keys, BUCKET, STORE, WALS};
use super::*;
use common::pg::free_port;
use common::s3::{FaultProxy, Moto};

const SETS: &str = "pg/main/data.master/";

/// The set directories under `data.master/` in the bucket, and their files.
fn sets_in(moto: &Moto) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for k in moto.keys(SETS) {
        let (set, file) = k.strip_prefix(SETS).unwrap().split_once('/').unwrap();
        out.entry(set.to_string())
            .or_default()
            .push(file.to_string());
    }
    out
}

/// Base backups into the bucket (`full_backup` defaults to `<slave>/data.master`): a
/// multipart upload of 5 MiB parts with a 503 on one part (retried), the service cut
/// mid-upload (exit 15, nothing committed, the claim gone and the upload aborted), a
/// `backup` killed with SIGKILL mid-upload (not listed; `cleanup` removes its claim and
/// aborts its upload), then rotation to keep_backups = 1 with the WAL before it purged
/// from the bucket; the slave ini lists, verifies (incrementally) and restores the set
/// from the bucket, and the recovered cluster holds every row.
#[test]
fn s3_base_backups_in_the_bucket() {
    let _g = serial();
    let sb = Sandbox::new("s3-backup");
    let moto = Moto::start(&sb.p(""), BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "");
    m.start();
    let keys = s3_keys(
        &proxy.endpoint(),
        &creds,
        "s3_part_size = 5\ns3_retries = 2\ns3_timeout = 10\nkeep_backups = 1\n",
    );
    let ini = master_ini(&sb, &m, STORE, &format!("compression = none\n{keys}"));
    ok(walmgr().arg(&ini).arg("setup"));
    m.psql("create table t as select g, md5(g::text) h from generate_series(1, 20000) g");

    // One part answered 503: the part is sent again and the backup commits.
    proxy.fail_once("partNumber=2&");
    let out = ok(walmgr().arg(&ini).arg("backup"));
    assert!(proxy.fault_count() >= 1, "the 503 was injected");
    let sets = sets_in(&moto);
    assert_eq!(sets.len(), 1, "{sets:?} ({out})");
    let (first, files) = sets.iter().next().unwrap();
    let first = first.clone();
    assert_eq!(
        files,
        &["backup.json", "backup_label", "base.tar"],
        "committed: the claim is gone"
    );
    let client = moto.client(&moto.endpoint, BUCKET);
    let info: serde_json::Value = serde_json::from_slice(
        &client
            .get_bytes(&format!("{SETS}{first}/backup.json"), 1 << 20)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let base = client
        .head(&format!("{SETS}{first}/base.tar"))
        .unwrap()
        .unwrap();
    assert_eq!(Some(base.size), info["stored_size"].as_u64());
    assert!(
        base.size > 3 * (5 << 20),
        "several parts of 5 MiB: {} bytes",
        base.size
    );
    assert!(
        base.etag.as_deref().is_some_and(|e| e.contains('-')),
        "a multipart object: {:?}",
        base.etag
    );

    // The service cut mid-upload: exit 15 on one line, nothing of the attempt remains.
    proxy.cut_after(3 << 20);
    let (code, err) = exit_code(walmgr().arg(&ini).arg("backup"));
    proxy.pass();
    assert_eq!(code, 15, "{err}");
    assert_one_line_error(&err, "s3://walmgr-test/pg/main/data.master/");
    assert_eq!(
        sets_in(&moto).keys().collect::<Vec<_>>(),
        [&first],
        "no second set, not even its claim"
    );
    let pending = client.multipart_list(SETS).unwrap();
    assert!(
        pending.is_empty(),
        "the failed upload was aborted: {pending:?}"
    );

    // SIGKILL mid-upload: the set is not listed; cleanup removes the claim and the
    // upload (its writer's pid is dead on this host).
    let slave = slave_ini(
        &sb,
        "slave.ini",
        Path::new(STORE),
        &sb.p("restored"),
        &s3_keys(&moto.endpoint, &creds, ""),
    );
    m.psql("create table ballast as select g, md5(g::text) h from generate_series(1, 600000) g");
    let mut child = walmgr().arg(&ini).arg("backup").spawn().unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || {
            sets_in(&moto).len() == 2
                && client
                    .multipart_list(SETS)
                    .is_ok_and(|p| p.iter().any(|(k, ..)| k.ends_with("/base.tar")))
        }),
        "the killed backup had claimed a set and started its upload"
    );
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let lb = ok(walmgr().arg(&slave).arg("listbackups"));
    assert_eq!(lb.lines().count(), 1, "only the committed set: {lb}");
    assert!(lb.contains(&first), "{lb}");
    let cleaned = ok(walmgr().arg(&slave).arg("cleanup"));
    assert!(cleaned.contains("incomplete upload"), "{cleaned}");
    assert_eq!(sets_in(&moto).keys().collect::<Vec<_>>(), [&first]);
    assert!(client.multipart_list(SETS).unwrap().is_empty());
    m.psql("drop table ballast");

    // A second backup: keep_backups = 1 removes the first set and the WAL before it.
    m.psql("insert into t select g, md5(g::text) from generate_series(20001, 40000) g");
    let old_wal = m.switch_and_wait_archived(60);
    ok(walmgr().arg(&ini).arg("backup"));
    let sets = sets_in(&moto);
    assert_eq!(sets.len(), 1, "{sets:?}");
    let second = sets.keys().next().unwrap().clone();
    assert_ne!(second, first);
    assert!(
        !moto
            .keys(WALS)
            .iter()
            .any(|k| k.starts_with(&format!("{WALS}{old_wal}."))),
        "WAL before the kept set is purged"
    );

    m.psql("insert into t select g, md5(g::text) from generate_series(40001, 60000) g");
    m.psql("delete from t where g % 7 = 0");
    m.switch_and_wait_archived(60);
    let q = "select count(*), sum(g), md5(string_agg(h, ',' order by g)) from t";
    let want = m.psql(q);

    // The slave side: verify reads the set once, then trusts the listing.
    let v = ok(walmgr().arg(&slave).arg("verify"));
    assert!(v.contains("1 base backup set(s)"), "{v}");
    let (read, _) = verify_counts(&v);
    let v = ok(walmgr().arg(&slave).arg("verify"));
    assert_eq!(verify_counts(&v), (0, read), "{v}");
    let status = run(walmgr().arg(&ini).arg("status"));
    let line = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        line.contains(&second),
        "status names the newest set: {line}"
    );

    let dst = sb.p("restored");
    let c = recover_newest(&sb, &slave, &dst);
    assert_eq!(c.psql(q), want, "recovered rows");
    finish();
}
