use super::*;
use common::pg::free_port;
use common::s3::{FaultProxy, Moto};

// ---------------------------------------------------------------------------------------
// The store in S3 (moto's server on loopback, authentication on; tests/common/s3.rs)
// ---------------------------------------------------------------------------------------

pub(super) const BUCKET: &str = "walmgr-test";
pub(super) const STORE: &str = "s3://walmgr-test/pg/main";
pub(super) const WALS: &str = "pg/main/logs.complete/";

/// The `s3_*` lines of an ini reaching the service at `endpoint`.
pub(super) fn s3_keys(endpoint: &str, creds: &Path, extra: &str) -> String {
    format!(
        "s3_endpoint = {endpoint}\ns3_credentials_file = {}\n{extra}",
        creds.display()
    )
}

pub(super) fn exit_code(c: &mut Command) -> (i32, String) {
    let o = run(c);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// PostgreSQL archives into S3 through archive_command; base backups go to a local
/// directory beside it (s3_backup.rs has them in the bucket) (keep_backups = 1: the second backup purges the WAL before it
/// from the bucket); `restore --recovery` from the slave ini, which names the same S3
/// store, replays the WAL from S3 through restore_command and holds every row.
#[test]
fn s3_archive_and_recover_from_it() {
    let _g = serial();
    let sb = Sandbox::new("s3-recover");
    let moto = Moto::start(&sb.p(""), BUCKET);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let backups = sb.p("backups");
    let keys = s3_keys(
        &moto.endpoint,
        &creds,
        &format!("full_backup = {}\nkeep_backups = 1\n", backups.display()),
    );
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "");
    m.start();
    let ini = master_ini(&sb, &m, STORE, &format!("compression = zstd\n{keys}"));
    ok(walmgr().arg(&ini).arg("setup"));
    assert_eq!(m.psql("show archive_mode"), "on", "{}", m.log_tail());
    assert!(backups.is_dir(), "setup makes the local backup directory");

    m.psql("create table t as select g, md5(g::text) h from generate_series(1, 20000) g");
    ok(walmgr().arg(&ini).arg("backup"));
    // (Something to switch away from: the archiver sends the .backup file last.)
    m.psql("create table t2 as select 1 y");
    let first = m.switch_and_wait_archived(60);
    m.psql("insert into t select g, md5(g::text) from generate_series(20001, 40000) g");
    m.switch_and_wait_archived(60);
    assert!(moto.keys(WALS).contains(&format!("{WALS}{first}.meta")));
    ok(walmgr().arg(&ini).arg("backup"));
    let sets = backup_sets(&sb.p(""));
    assert!(sets.is_empty(), "no sets under the sandbox root: {sets:?}");
    let sets: Vec<String> = names(&backups)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(sets.len(), 1, "keep_backups = 1: {sets:?}");
    let stored = moto.keys(WALS);
    assert!(
        !stored
            .iter()
            .any(|k| k.starts_with(&format!("{WALS}{first}."))),
        "WAL before the kept set is purged from the bucket: {stored:?}"
    );

    m.psql("insert into t select g, md5(g::text) from generate_series(40001, 60000) g");
    m.psql("delete from t where g % 7 = 0");
    m.psql("create table after_backup as select 42 x");
    let last = m.switch_and_wait_archived(60);
    let q = "select count(*), sum(g), md5(string_agg(h, ',' order by g)) from t";
    let want = m.psql(q);
    let stored = moto.keys(WALS);
    assert!(
        stored.contains(&format!("{WALS}{last}.meta"))
            && stored
                .iter()
                .any(|k| k.starts_with(&format!("{WALS}{last}.")) && k.ends_with(".zst")),
        "{last} and its .meta in the bucket: {stored:?}"
    );

    // The slave ini names the same store.
    let dst = sb.p("restored");
    let slave = slave_ini(&sb, "slave.ini", Path::new(STORE), &dst, &keys);
    let v = ok(walmgr().arg(&slave).arg("verify"));
    assert!(v.contains("files") && v.contains(&last), "verify: {v}");
    let lb = ok(walmgr().arg(&slave).arg("listbackups"));
    assert!(lb.contains(sets[0].as_str()), "listbackups: {lb}");
    ok(walmgr().arg("--recovery").arg(&slave).arg("restore"));
    let auto = fs::read_to_string(dst.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("xrestore"), "{auto}");
    let c = Cluster::adopt(&sb, &dst, free_port(), "");
    c.start();
    wait_promoted(&c, 120);
    assert_eq!(c.psql(q), want, "recovered rows");
    assert_eq!(c.psql("select x from after_backup"), "42");

    // status asks the service: the newest segment in the bucket and its age (from its
    // meta's archived_at), and a segment PostgreSQL has ready is waiting only when the
    // bucket lacks it. The master is stopped: status reads pg_wal/archive_status alone.
    let ini = master_ini(&sb, &m, STORE, &format!("compression = zstd\n{keys}"));
    let data = m.data.clone();
    drop(c);
    drop(m);
    let newest = moto
        .keys(WALS)
        .iter()
        .filter_map(|k| {
            k.strip_prefix(WALS)?
                .strip_suffix(".meta")
                .map(str::to_string)
        })
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .max()
        .expect("segments in the bucket");
    let status = |extra: &[&str]| {
        let o = run(walmgr().arg(&ini).arg("status").args(extra));
        let line = String::from_utf8_lossy(&o.stdout).trim_end().to_string();
        (o.status.code().unwrap_or(-1), line)
    };
    let (code, line) = status(&[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.contains(&format!("last segment {newest} ")) && line.contains(", 0 segments waiting"),
        "{line}"
    );
    // Three days old by its meta: CRITICAL (default 6 h), whatever the local files say.
    let client = moto.client(&moto.endpoint, BUCKET);
    let key = format!("{WALS}{newest}.meta");
    let meta = client.get_bytes(&key, 1 << 20).unwrap().expect("meta");
    let mut meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86400);
    meta["archived_at"] = humantime::format_rfc3339_seconds(old).to_string().into();
    let body = serde_json::to_vec(&meta).unwrap();
    let sha = hostkit::digest::sha256_hex(&body);
    let no_precondition = hostkit::s3::PutOptions {
        if_none_match: false,
        meta: &[],
    };
    client.put(&key, &body, &sha, &no_precondition).unwrap();
    let (code, line) = status(&[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!("last segment {newest} 3 d ago")),
        "{line}"
    );
    // Ready marks: one for a segment the bucket holds, one for a segment it lacks.
    let status_dir = data.join("pg_wal/archive_status");
    fs::write(status_dir.join(format!("{newest}.ready")), "").unwrap();
    fs::write(status_dir.join("00000009000000FF000000FE.ready"), "").unwrap();
    let (_, line) = status(&["--crit-wal-age", "999999999", "--warn-wal-age", "999999999"]);
    assert!(line.contains(", 1 segments waiting"), "{line}");

    // Incremental verify on S3: the state is an object beside the segments; the next
    // run reads nothing that the listing shows unchanged, and an object the service
    // holds in another form (rewritten: a new Last-Modified) is read again and caught.
    let v = ok(walmgr().arg(&slave).arg("verify").arg("--full"));
    let (read, trusted) = verify_counts(&v);
    assert!(read >= 3 && trusted == 0, "--full reads every file: {v}");
    assert!(moto
        .keys(WALS)
        .contains(&format!("{WALS}verify-state.json")));
    let v = ok(walmgr().arg(&slave).arg("verify"));
    assert_eq!(verify_counts(&v), (0, read), "{v}");
    let (victim, bytes) = moto
        .keys(WALS)
        .into_iter()
        .filter(|k| k.ends_with(".zst"))
        .find_map(|k| Some((k.clone(), client.get_bytes(&k, 64 << 20).ok()??)))
        .expect("a stored segment");
    std::thread::sleep(Duration::from_millis(1100));
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let sha = hostkit::digest::sha256_hex(&bad);
    client.put(&victim, &bad, &sha, &no_precondition).unwrap();
    let o = run(walmgr().arg(&slave).arg("verify"));
    assert_eq!(o.status.code(), Some(12), "{}", show(&walmgr(), &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&victim), "names the rewritten object: {err}");
    let v = String::from_utf8_lossy(&o.stdout);
    // (A file that fails its check counts as a problem, not as read.)
    assert_eq!(verify_counts(&v), (0, read - 1), "{v}");
    finish();
}

/// xarchive's rules on S3: an identical re-archive succeeds and writes nothing, a
/// different file under the same name is refused naming both sha256, and xrestore
/// delivers the original bytes; a 5xx on the upload is retried, and without retries
/// nothing is stored.
#[test]
fn s3_rearchive_conflict_and_5xx() {
    let _g = serial();
    let sb = Sandbox::new("s3-xarchive");
    let moto = Moto::start(&sb.p(""), BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "");
    let ini = master_ini(
        &sb,
        &m,
        STORE,
        &format!(
            "compression = none\n{}",
            s3_keys(&proxy.endpoint(), &creds, "")
        ),
    );
    let rel = format!("pg_wal/{SEG1}");

    // The first upload of the segment gets a 503 (from the proxy): retried, stored.
    proxy.fail_once(&format!("PUT /{BUCKET}/{WALS}{SEG1}."));
    let o = run(&mut xarchive(&ini, &m.data, &rel, SEG1));
    assert!(
        o.status.success(),
        "{}",
        show(&xarchive(&ini, &m.data, &rel, SEG1), &o)
    );
    assert_eq!(proxy.fault_count(), 1, "the 503 was injected");
    let log = fs::read_to_string(sb.p("walmgr-master.log")).unwrap_or_default();
    assert!(
        log.contains("503") && log.contains("retrying"),
        "the retry is logged: {log}"
    );
    let before = moto.keys(WALS);
    assert_eq!(before.len(), 2, "one data object and its .meta: {before:?}");

    let (code, err) = exit_code(&mut xarchive(&ini, &m.data, &rel, SEG1));
    assert_eq!(code, 0, "identical re-archive: {err}");
    let log = fs::read_to_string(sb.p("walmgr-master.log")).unwrap_or_default();
    assert!(log.contains("already archived"), "{log}");
    assert_eq!(
        moto.keys(WALS),
        before,
        "identical re-archive wrote nothing"
    );

    let orig = fs::read(m.data.join(&rel)).unwrap();
    let mut forged = orig.clone();
    forged[8 << 20] ^= 0xff;
    let forged_p = sb.write("forged", &forged);
    chown_pg(&forged_p);
    let (code, err) = exit_code(&mut xarchive(&ini, &m.data, &forged_p, SEG1));
    assert_eq!(code, 5, "conflict: {err}");
    assert_one_line_error(&err, SEG1);
    for sha in [sha256(&m.data.join(&rel)), sha256(&forged_p)] {
        assert!(err.contains(&sha), "the error names sha256 {sha}: {err}");
    }
    assert_eq!(moto.keys(WALS), before, "conflict wrote nothing");

    // xrestore from the slave ini (direct to the service) delivers the original bytes.
    let slave = slave_ini(
        &sb,
        "slave.ini",
        Path::new(STORE),
        &sb.p("standby"),
        &s3_keys(&moto.endpoint, &creds, ""),
    );
    let out = sb.mkdir("out");
    ok(&mut xrestore(&slave, &out, SEG1, out.join("RECOVERYXLOG")));
    assert_eq!(fs::read(out.join("RECOVERYXLOG")).unwrap(), orig);
    let (code, _) = exit_code(&mut xrestore(
        &slave,
        &out,
        "000000010000000000000002",
        out.join("x"),
    ));
    assert_eq!(code, 1, "a segment not in the bucket: 'not in the archive'");
    ok(walmgr().arg(&slave).arg("verify"));
    ok(walmgr().arg(&slave).arg("cleanup"));
    // verify added its state object; cleanup kept it and every committed segment.
    let mut want = before.clone();
    want.push(format!("{WALS}verify-state.json"));
    want.sort();
    assert_eq!(moto.keys(WALS), want, "cleanup keeps committed segments");

    // Without retries a 503 fails the push, and nothing counts as stored.
    let ini2 = master_ini(
        &sb,
        &m,
        "s3://walmgr-test/other",
        &format!(
            "compression = zstd\n{}",
            s3_keys(&proxy.endpoint(), &creds, "s3_retries = 0\n")
        ),
    );
    proxy.fail_once("PUT /walmgr-test/other/logs.complete/");
    let (code, err) = exit_code(&mut xarchive(&ini2, &m.data, &rel, SEG1));
    assert_eq!(code, 15, "{err}");
    assert_one_line_error(&err, "503");
    assert!(
        !moto
            .keys("other/logs.complete/")
            .iter()
            .any(|k| k.ends_with(".meta")),
        "no .meta after a failed push"
    );
    // PostgreSQL's retry (the same command again) then succeeds.
    ok(&mut xarchive(&ini2, &m.data, &rel, SEG1));
    finish();
}

/// An https endpoint whose certificate is signed by a CA named in `s3_ca_file` (made
/// here with openssl); without it, the system store does not know that CA and the
/// push fails.
#[test]
fn s3_https_with_a_private_ca() {
    let _g = serial();
    let sb = Sandbox::new("s3-tls");
    let d = sb.mkdir("tls");
    let sh = format!(
        "cd {} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem \
         -days 2 -subj /CN=walmgr-test-ca && openssl req -newkey rsa:2048 -nodes \
         -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 && printf \
         'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' >ext \
         && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
         -out srv.pem -days 2 -extfile ext && chmod 644 ca.pem",
        d.display()
    );
    let o = run(Command::new("sh").arg("-c").arg(&sh));
    assert!(
        o.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let moto = Moto::start_tls(
        &sb.p(""),
        BUCKET,
        &d.join("srv.pem"),
        &d.join("srv.key"),
        &d.join("ca.pem"),
    );
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "");
    let rel = format!("pg_wal/{SEG1}");
    let untrusted = master_ini(&sb, &m, STORE, &s3_keys(&moto.endpoint, &creds, ""));
    let (code, err) = exit_code(&mut xarchive(&untrusted, &m.data, &rel, SEG1));
    assert_eq!(code, 15, "unknown CA: {err}");
    let ca = format!("s3_ca_file = {}\n", d.join("ca.pem").display());
    let trusted = master_ini(&sb, &m, STORE, &s3_keys(&moto.endpoint, &creds, &ca));
    ok(&mut xarchive(&trusted, &m.data, &rel, SEG1));
    let slave = slave_ini(
        &sb,
        "slave.ini",
        Path::new(STORE),
        &sb.p("standby"),
        &s3_keys(&moto.endpoint, &creds, &ca),
    );
    let out = sb.mkdir("out");
    ok(&mut xrestore(&slave, &out, SEG1, out.join("x")));
    assert_eq!(
        fs::read(out.join("x")).unwrap(),
        fs::read(m.data.join(&rel)).unwrap()
    );
    finish();
}

/// Wrong credentials, a missing bucket, a readable credentials file, credentials from
/// the environment.
#[test]
fn s3_credentials_and_missing_bucket() {
    let _g = serial();
    let sb = Sandbox::new("s3-creds");
    let moto = Moto::start_authenticated(&sb.p(""), BUCKET);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "");
    let rel = format!("pg_wal/{SEG1}");
    let ini_with = |name: &str, store: &str, keys: &str| {
        let p = master_ini(&sb, &m, store, &format!("compression = none\n{keys}"));
        let to = sb.p(name);
        fs::rename(&p, &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
        chown_pg(&to);
        to
    };
    let ep = format!("s3_endpoint = {}\n", moto.endpoint);

    let wrong_secret = ini_with(
        "wrong-secret.ini",
        STORE,
        &format!(
            "{ep}s3_access_key_id = {}\ns3_secret_access_key = not-the-secret\n",
            moto.key_id
        ),
    );
    let (code, err) = exit_code(&mut xarchive(&wrong_secret, &m.data, &rel, SEG1));
    assert_eq!(code, 15, "{err}");
    assert_one_line_error(&err, "SignatureDoesNotMatch");
    assert!(
        !err.contains("not-the-secret"),
        "the secret is not shown: {err}"
    );

    let wrong_key = ini_with(
        "wrong-key.ini",
        STORE,
        &format!("{ep}s3_access_key_id = AKIAWRONGWRONGWRONG\ns3_secret_access_key = x\n"),
    );
    let (code, err) = exit_code(&mut xarchive(&wrong_key, &m.data, &rel, SEG1));
    assert_eq!(code, 15, "{err}");
    assert_one_line_error(&err, "InvalidAccessKeyId");

    let no_bucket = ini_with(
        "no-bucket.ini",
        "s3://no-such-bucket/pg",
        &format!("{ep}s3_credentials_file = {}\n", creds.display()),
    );
    let (code, err) = exit_code(&mut xarchive(&no_bucket, &m.data, &rel, SEG1));
    assert_eq!(code, 15, "{err}");
    assert_one_line_error(&err, "NoSuchBucket");
    let (code, err) = exit_code(walmgr().arg("-n").arg(&no_bucket).arg("setup"));
    assert_ne!(code, 0, "{err}");

    // A credentials file others may read is refused before anything is sent.
    let loose = moto.credentials_file(&sb.p("loose.credentials"));
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    let loose_ini = ini_with(
        "loose.ini",
        STORE,
        &format!("{ep}s3_credentials_file = {}\n", loose.display()),
    );
    let (code, err) = exit_code(&mut xarchive(&loose_ini, &m.data, &rel, SEG1));
    assert_eq!(code, 3, "{err}");
    assert_one_line_error(&err, "loose.credentials");
    assert!(!err.contains(&moto.secret), "{err}");

    // A secret in a world-readable ini is refused too.
    let open_ini = ini_with(
        "open.ini",
        STORE,
        &format!(
            "{ep}s3_access_key_id = {}\ns3_secret_access_key = {}\n",
            moto.key_id, moto.secret
        ),
    );
    fs::set_permissions(&open_ini, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = exit_code(&mut xarchive(&open_ini, &m.data, &rel, SEG1));
    assert_eq!(code, 3, "{err}");
    assert_one_line_error(&err, "s3_secret_access_key");
    assert!(!err.contains(&moto.secret), "{err}");

    // From the environment.
    let env_ini = ini_with("env.ini", STORE, &ep);
    let (code, err) = exit_code(&mut xarchive(&env_ini, &m.data, &rel, SEG1));
    assert_eq!(code, 3, "no credentials anywhere: {err}");
    assert_one_line_error(&err, "credentials");
    ok(xarchive(&env_ini, &m.data, &rel, SEG1)
        .env("AWS_ACCESS_KEY_ID", &moto.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &moto.secret));
    // (No listing here: see tests/common/s3.rs on moto and '/' in a signed query.)
    let meta = moto
        .client(&moto.endpoint, BUCKET)
        .get_bytes(&format!("{WALS}{SEG1}.meta"), 1 << 20)
        .unwrap();
    assert!(
        meta.is_some(),
        "{SEG1}.meta stored with the environment's key"
    );
    finish();
}

/// The service goes away in the middle of an upload (connections cut after 4 MiB of a
/// 16 MiB segment), then is refused altogether: archive_command fails, nothing counts as
/// stored, and PostgreSQL's own retry archives the segment once the service is back.
#[test]
fn s3_service_cut_mid_push() {
    let _g = serial();
    let sb = Sandbox::new("s3-cut");
    let moto = Moto::start(&sb.p(""), BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "");
    m.start();
    let ini = master_ini(
        &sb,
        &m,
        STORE,
        &format!(
            "compression = none\n{}",
            s3_keys(
                &proxy.endpoint(),
                &creds,
                "s3_retries = 1\ns3_timeout = 5\n"
            )
        ),
    );
    ok(walmgr().arg(&ini).arg("setup"));
    m.switch_and_wait_archived(60);

    for (what, fault) in [("cut mid-upload", 0u8), ("refused", 1)] {
        match fault {
            0 => proxy.cut_after(4 << 20),
            _ => proxy.refuse(),
        }
        m.psql("create table if not exists t (g int)");
        m.psql("insert into t select generate_series(1, 1000)");
        let seg = m.psql("select pg_walfile_name(pg_switch_wal())");
        assert!(
            wait_for(Duration::from_secs(60), || m.archiver().3 == seg),
            "{what}: archive_command failed on {seg}: {:?}\n{}",
            m.archiver(),
            m.log_tail()
        );
        assert!(!m.archived(&seg), "{what}: not reported archived");
        assert!(
            !moto.keys(WALS).contains(&format!("{WALS}{seg}.meta")),
            "{what}: no .meta for a failed push"
        );
        let slave = slave_ini(
            &sb,
            "slave.ini",
            Path::new(STORE),
            &sb.p("standby"),
            &s3_keys(&moto.endpoint, &creds, ""),
        );
        let out = sb.mkdir("out");
        let (code, _) = exit_code(&mut xrestore(&slave, &out, &seg, out.join("x")));
        assert_eq!(code, 1, "{what}: {seg} is not in the archive");
        proxy.pass();
        // A new .ready file wakes the archiver, which has given up for a minute.
        m.psql("insert into t select generate_series(1, 10)");
        let wake = m.psql("select pg_walfile_name(pg_switch_wal())");
        assert!(
            wait_for(Duration::from_secs(90), || m.archived(&wake)),
            "{what}: PostgreSQL's retry archived {seg}: {:?}\n{}",
            m.archiver(),
            m.log_tail()
        );
        ok(&mut xrestore(&slave, &out, &seg, out.join("x")));
        assert_eq!(fs::metadata(out.join("x")).unwrap().len(), 16 << 20);
        fs::remove_file(out.join("x")).unwrap();
    }
    assert!(proxy.fault_count() >= 2);
    let slave = sb.p("slave.ini");
    ok(walmgr().arg(&slave).arg("verify"));
    finish();
}

/// archive_async onto S3 under pgbench, the service refused for a while and then back:
/// every segment PostgreSQL (`archive_status/*.done`) or the pusher (its spool records)
/// counted as archived is in the bucket, meta and data, at every moment checked; the
/// archive is gapless and a restore from the bucket reproduces the master.
#[test]
fn s3_async_archiving_under_pgbench_with_the_service_cut() {
    let _g = serial();
    let sb = Sandbox::new("s3-async");
    let moto = Moto::start(&sb.p(""), BUCKET);
    let proxy = FaultProxy::start(moto.port);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    let backups = sb.p("backups");
    // 1 MiB segments: many of them in a few seconds of pgbench.
    let m = Cluster::initdb(&sb, "master", free_port(), 1, "archive_mode = on\n");
    m.start();
    let ini = master_ini(
        &sb,
        &m,
        STORE,
        &format!(
            "compression = zstd\narchive_async = yes\nparallel = 3\narchive_queue_max = 3\n\
             archive_async_wait = 3\nfull_backup = {}\n{}",
            backups.display(),
            s3_keys(
                &proxy.endpoint(),
                &creds,
                "s3_retries = 0\ns3_timeout = 5\n"
            )
        ),
    );
    let spool = sb.p("master.walmgr-spool");
    ok(walmgr().arg(&ini).arg("setup"));
    ok(m.pgbench().args(["-i", "-s", "2", "-q", "postgres"]));
    ok(walmgr().arg(&ini).arg("backup"));
    let set = names(&backups)
        .into_iter()
        .find(|n| !n.starts_with('.'))
        .expect("a backup set");
    let label = fs::read_to_string(backups.join(&set).join("backup_label")).unwrap();
    let start = label
        .lines()
        .find_map(|l| l.split("(file ").nth(1))
        .map(|v| v.trim_end_matches(')').to_string())
        .expect("START WAL LOCATION in backup_label");

    // Segments from the backup on that were counted as archived, each in the bucket;
    // returns how many of them the pusher recorded.
    // The marks are read first and the bucket listed after: a mark made after the listing
    // (the pusher or archive_command finishing meanwhile) would otherwise look unstored.
    let check = |when: &str| -> usize {
        let mut counted = Vec::new();
        for (dir, pusher) in [
            (m.data.join("pg_wal/archive_status"), false),
            (spool.clone(), true),
        ] {
            for f in names(&dir) {
                let Some(seg) = f.strip_suffix(".done") else {
                    continue;
                };
                if seg.starts_with('.') || seg < start.as_str() {
                    continue;
                }
                counted.push((seg.to_string(), dir.clone(), pusher));
            }
        }
        let keys = moto.keys(WALS);
        let in_bucket = |seg: &str| {
            let meta = format!("{WALS}{seg}.meta");
            keys.contains(&meta)
                && keys
                    .iter()
                    .any(|k| *k != meta && k.starts_with(&format!("{WALS}{seg}.")))
        };
        let mut by_pusher = 0;
        for (seg, dir, pusher) in counted {
            assert!(
                in_bucket(&seg),
                "{when}: {seg} counted as archived ({}) but not in the bucket",
                dir.display()
            );
            by_pusher += usize::from(pusher);
        }
        by_pusher
    };
    let mut load = Bg(Some(
        m.pgbench()
            .args(["-n", "-c", "2", "-j", "1", "-T", "15", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(3));
    let mut records = check("under load");
    proxy.refuse();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(5) {
        m.psql("select pg_switch_wal()");
        records += check("service refused");
        std::thread::sleep(Duration::from_millis(400));
    }
    proxy.pass();
    assert!(load.wait().success(), "pgbench load failed");
    m.psql("create table after_load as select generate_series(1, 500) g");
    let last = m.switch_and_wait_archived(90);
    records += check("after the load");
    assert!(
        records > 0,
        "the pusher stored segments ahead of archive_command"
    );
    assert!(proxy.fault_count() > 0, "the outage refused requests");
    assert!(moto.keys(WALS).contains(&format!("{WALS}{last}.meta")));

    let dst = sb.p("restored");
    let slave = slave_ini(
        &sb,
        "slave.ini",
        Path::new(STORE),
        &dst,
        &format!(
            "restore_prefetch = 0\nfull_backup = {}\n{}",
            backups.display(),
            s3_keys(&moto.endpoint, &creds, "")
        ),
    );
    ok(walmgr().arg(&slave).arg("verify"));
    let r = recover_newest(&sb, &slave, &dst);
    assert_eq!(pgbench_fingerprint(&m), pgbench_fingerprint(&r));
    assert_eq!(r.psql("select count(*) from after_load"), "500");
    finish();
}

/// Point-in-time recovery with the whole store in S3 (WAL and the base backup): to an LSN, a time and a named restore point, each recovered row for row
/// through restore_command from the bucket, and a target before every set's end refused.
#[test]
fn s3_point_in_time_recovery() {
    use super::pitr::{batch, rows};
    let _g = serial();
    let sb = Sandbox::new("s3-pitr");
    let moto = Moto::start(&sb.p(""), BUCKET);
    let creds = moto.credentials_file(&sb.p("s3.credentials"));
    // WAL and the base backup both in the bucket.
    let keys = s3_keys(&moto.endpoint, &creds, "");
    let m = Cluster::initdb(&sb, "master", free_port(), 16, "archive_mode = on\n");
    m.start();
    let ini = master_ini(&sb, &m, STORE, &format!("compression = gzip\n{keys}"));
    ok(walmgr().arg(&ini).arg("setup"));
    m.psql("create table t (i int)");
    batch(&m, 1);
    ok(walmgr().arg(&ini).arg("backup"));
    assert!(
        moto.keys("pg/main/data.master/")
            .iter()
            .any(|k| k.ends_with("/base.tar.gz")),
        "the set is in the bucket"
    );
    // The time target must be more than a second after the set's end (1 s resolution).
    std::thread::sleep(Duration::from_millis(1100));
    batch(&m, 2);
    let lsn = m.psql("select pg_current_wal_insert_lsn()");
    batch(&m, 3);
    let time = m.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(50));
    batch(&m, 4);
    m.psql("select pg_create_restore_point('before_5')");
    batch(&m, 5);
    let last = m.switch_and_wait_archived(60);
    assert!(moto.keys(WALS).contains(&format!("{WALS}{last}.meta")));

    let restore = |what: &str, args: &[&str], want: &str| {
        let dst = sb.p(what);
        let slave = slave_ini(&sb, &format!("{what}.ini"), Path::new(STORE), &dst, &keys);
        ok(walmgr().arg(&slave).arg("restore").args(args));
        let auto = fs::read_to_string(dst.join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("xrestore %f %p"), "{auto}");
        let c = Cluster::adopt(&sb, &dst, free_port(), "-c archive_mode=off");
        c.start();
        wait_promoted(&c, 120);
        assert_eq!(rows(&c), want, "{what}: {}", c.log_tail());
    };
    restore(
        "lsn",
        &["--target-lsn", &lsn, "--target-action", "promote"],
        "200 200",
    );
    restore(
        "time",
        &["--target-time", &time, "--target-action", "promote"],
        "300 300",
    );
    restore(
        "name",
        &["--target-name", "before_5", "--target-action", "promote"],
        "400 400",
    );

    let slave = slave_ini(
        &sb,
        "refused.ini",
        Path::new(STORE),
        &sb.p("refused"),
        &keys,
    );
    let o = run(walmgr()
        .arg(&slave)
        .args(["restore", "--target-time", "2000-01-01 00:00:00+00"]));
    assert_eq!(o.status.code(), Some(14), "{}", show(&walmgr(), &o));
    assert_one_line_error(&String::from_utf8_lossy(&o.stderr), "backup set");
    finish();
}
