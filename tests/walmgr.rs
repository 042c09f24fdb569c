//! walmgr end to end against real PostgreSQL 15 clusters this file creates (initdb on
//! private ports, sockets in the test's own directory): archiving through
//! `archive_command`, base backups under load, restores that replay to the end or follow
//! the archive as a standby, pause/continue/boot, crash and disk-full safety of
//! `xarchive`, and a remote store reached through a real sshd.
//!
//! Tests run as root; every PostgreSQL server and every walmgr command runs as the user
//! `postgres` (as archive_command/restore_command do in production). Tests run one at a
//! time (2-core hosts, pgbench load): see `serial()`.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod common;
use common::wait_for;

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: they share the CPU (pgbench), /run/sshd and mount points.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn walmgr_bin() -> &'static str {
    env!("CARGO_BIN_EXE_walmgr")
}

fn pg_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("user postgres must exist (apt install postgresql-15)");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// A command that runs as `postgres` (uid, gid, no supplementary groups, HOME).
fn as_postgres(prog: impl AsRef<OsStr>) -> Command {
    let (uid, gid) = pg_ids();
    let mut c = Command::new(prog);
    c.uid(uid)
        .gid(gid)
        .env("HOME", "/var/lib/postgresql")
        .env("USER", "postgres")
        .env("LOGNAME", "postgres")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGDATABASE")
        .env_remove("PGUSER")
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

fn pgtool(tool: &str) -> Command {
    as_postgres(Path::new(PGBIN).join(tool))
}

fn walmgr() -> Command {
    as_postgres(walmgr_bin())
}

fn show(c: &Command, o: &Output) -> String {
    format!(
        "{c:?}\n  status: {}\n  stdout: {}\n  stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim_end(),
        String::from_utf8_lossy(&o.stderr).trim_end()
    )
}

fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"))
}

/// Run; panic with the full output unless it exits 0. Returns stdout.
fn ok(c: &mut Command) -> String {
    let o = run(c);
    assert!(o.status.success(), "command failed: {}", show(c, &o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run; panic unless it exits non-zero. Returns stderr.
fn fails(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        !o.status.success(),
        "command should have failed: {}",
        show(c, &o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

thread_local! {
    /// Contract violations that do not stop a test (error-message shape): reported
    /// together by `finish()` at the end, so one wording problem does not hide the rest.
    static PROBLEMS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn problem(msg: String) {
    eprintln!("PROBLEM: {msg}");
    PROBLEMS.with(|p| p.borrow_mut().push(msg));
}

/// Panic with every recorded problem (call last in a test).
fn finish() {
    let p = PROBLEMS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    assert!(p.is_empty(), "{} problem(s):\n{}", p.len(), p.join("\n"));
}

/// stderr of a failed walmgr: exactly one line, `walmgr: ...`, mentioning `what`.
fn assert_one_line_error(stderr: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        problem(format!("expected one line on stderr, got: {stderr:?}"));
    }
    let Some(last) = lines.last() else {
        return problem("nothing on stderr".into());
    };
    if !last.starts_with("walmgr: ") {
        problem(format!(
            "error line should start with 'walmgr: ': {stderr:?}"
        ));
    }
    if !last.contains(what) {
        problem(format!("error line should name {what:?}: {stderr:?}"));
    }
}

fn chown_pg(p: &Path) {
    let (uid, gid) = pg_ids();
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// A test's private directory, owned by postgres (clusters, store, inis, sockets).
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hk-walmgr-{tag}-"))
            .tempdir()
            .unwrap();
        chown_pg(dir.path());
        let s = Sandbox { dir };
        s.mkdir("sock");
        s
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        fs::create_dir_all(&p).unwrap();
        chown_pg(&p);
        p
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.p(rel);
        fs::write(&p, content).unwrap();
        chown_pg(&p);
        p
    }

    fn sock(&self) -> PathBuf {
        self.p("sock")
    }
}

/// A PostgreSQL 15 cluster in a sandbox. Dropping it stops the server (`-m immediate`),
/// whatever happened to the test.
struct Cluster {
    data: PathBuf,
    port: u16,
    sock: PathBuf,
    log: PathBuf,
    /// Extra `-c` settings passed at start (e.g. archive_mode=off for restored copies).
    opts: String,
}

impl Cluster {
    /// initdb (16 MB segments unless `seg_mb` says otherwise) and a postgresql.conf that
    /// listens only on the sandbox's socket directory.
    fn initdb(sb: &Sandbox, name: &str, port: u16, seg_mb: u32, conf: &str) -> Cluster {
        let data = sb.p(name);
        ok(pgtool("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg(format!("--wal-segsize={seg_mb}"))
            .arg("--no-sync")
            .arg("--no-instructions"));
        let c = Cluster {
            port,
            sock: sb.sock(),
            log: sb.p(&format!("{name}.log")),
            opts: String::new(),
            data,
        };
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(c.data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            f,
            "\n# hostkit tests/walmgr.rs\nlisten_addresses = ''\nport = {port}\n\
             unix_socket_directories = '{}'\nshared_buffers = 32MB\nmax_connections = 20\n\
             wal_level = replica\nhot_standby = on\nmax_wal_size = 256MB\n\
             log_line_prefix = '%m [%p] '\n{conf}",
            c.sock.display()
        )
        .unwrap();
        c
    }

    /// A data directory laid out by someone else (walmgr restore), started on `port`.
    fn adopt(sb: &Sandbox, data: &Path, port: u16, opts: &str) -> Cluster {
        let name = data.file_name().unwrap().to_string_lossy().into_owned();
        Cluster {
            data: data.to_path_buf(),
            port,
            sock: sb.sock(),
            log: sb.p(&format!("{name}.log")),
            opts: opts.to_string(),
        }
    }

    fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!(
                "pg_ctl start {} failed: {e}\n--- server log ---\n{}",
                self.data.display(),
                self.log_tail()
            );
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let o = run(pgtool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-p {} -k {} {}",
                self.port,
                self.sock.display(),
                self.opts
            ))
            .arg("start"));
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    /// Restart through pg_ctl (the command walmgr setup runs as master_restart_cmd).
    fn restart_cmd(&self) -> String {
        format!(
            "{PGBIN}/pg_ctl -D {} -l {} -w -t 60 -m fast restart",
            self.data.display(),
            self.log.display()
        )
    }

    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.sock.display(),
            self.port
        )
    }

    fn log_tail(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn psql_cmd(&self, sql: &str) -> Command {
        let mut c = pgtool("psql");
        c.args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql]);
        c
    }

    fn try_psql(&self, sql: &str) -> Result<String, String> {
        let o = run(&mut self.psql_cmd(sql));
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql on port {} failed: {sql}: {e}\n--- server log ---\n{}",
                self.port,
                self.log_tail()
            )
        })
    }

    fn pgbench(&self) -> Command {
        let mut c = pgtool("pgbench");
        c.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    fn in_recovery(&self) -> Option<bool> {
        self.try_psql("select pg_is_in_recovery()")
            .ok()
            .map(|s| s == "t")
    }

    /// (archived_count, last_archived_wal, failed_count, last_failed_wal)
    fn archiver(&self) -> (i64, String, i64, String) {
        let s = self.psql(
            "select archived_count, coalesce(last_archived_wal, ''), failed_count, \
             coalesce(last_failed_wal, '') from pg_stat_archiver",
        );
        let f: Vec<&str> = s.split('|').collect();
        (
            f[0].parse().unwrap(),
            f[1].to_string(),
            f[2].parse().unwrap(),
            f[3].to_string(),
        )
    }

    /// True once the archiver has archived segment `seg` (archiving is in order, so any
    /// later plain segment counts too).
    fn archived(&self, seg: &str) -> bool {
        let last = self.archiver().1;
        if last.len() < 24 {
            return false;
        }
        let head = &last[..24];
        head > seg || (head == seg && last.len() == 24)
    }

    /// Switch to a new segment and wait (`secs`) until the finished one is archived.
    /// Returns its name.
    fn switch_and_wait_archived(&self, secs: u64) -> String {
        let seg = self.psql("select pg_walfile_name(pg_switch_wal())");
        assert!(
            wait_for(Duration::from_secs(secs), || self.archived(&seg)),
            "segment {seg} not archived within {secs}s: pg_stat_archiver = {:?}\n--- server log ---\n{}",
            self.archiver(),
            self.log_tail()
        );
        seg
    }

    fn running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running() {
            let _ = pgtool("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A background process killed (SIGKILL) and reaped on drop.
struct Bg(Option<Child>);

impl Bg {
    fn wait(&mut self) -> std::process::ExitStatus {
        self.0.take().unwrap().wait().unwrap()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tmpfs mounted for one test, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(at));
        chown_pg(at);
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Master and slave ini files for a store at `store` (a path, or `host:/path`).
/// What the xarchive tests start from: an initdb'd master (not started: initdb wrote
/// segment 1) archiving uncompressed into a local store made by `walmgr slave.ini setup`.
/// Returns (master, store, master ini, slave ini).
fn local_archive(sb: &Sandbox, port: u16) -> (Cluster, PathBuf, PathBuf, PathBuf) {
    let m = Cluster::initdb(sb, "master", port, 16, "");
    let store = sb.p("store");
    let ini = master_ini(sb, &m, &store.display().to_string(), "compression = none\n");
    let slave = slave_ini(sb, "slave.ini", &store, &sb.p("standby"), "");
    ok(walmgr().arg(&slave).arg("setup"));
    (m, store, ini, slave)
}

fn master_ini(sb: &Sandbox, m: &Cluster, slave: &str, extra: &str) -> PathBuf {
    sb.write(
        "master.ini",
        format!(
            "[walmgr]\njob_name = wal-master\nlogfile = {log}\nmaster_db = {db}\n\
             master_data = {data}\nmaster_config = {data}/postgresql.conf\n\
             master_bin = {PGBIN}\nmaster_restart_cmd = {restart}\nslave = {slave}\n\
             setup_method = alter_system\n{extra}\n",
            log = sb.p("walmgr-master.log").display(),
            db = m.conninfo(),
            data = m.data.display(),
            restart = m.restart_cmd(),
        ),
    )
}

fn slave_ini(sb: &Sandbox, name: &str, store: &Path, slave_data: &Path, extra: &str) -> PathBuf {
    sb.write(
        name,
        format!(
            "[walmgr]\njob_name = wal-slave\nlogfile = {log}\nslave_data = {sd}\n\
             slave_bin = {PGBIN}\nslave = {store}\n{extra}\n",
            log = sb.p("walmgr-slave.log").display(),
            sd = slave_data.display(),
            store = store.display(),
        ),
    )
}

/// Names in a directory (sorted), `.tmp-*` included.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The backup set names in `<store>/data.master` (staging dirs excluded).
fn backup_sets(store: &Path) -> Vec<String> {
    names(&store.join("data.master"))
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// What must be equal between a master and its restored copy.
fn pgbench_fingerprint(c: &Cluster) -> String {
    [
        "select sum(abalance), count(*) from pgbench_accounts",
        "select sum(bbalance), count(*) from pgbench_branches",
        "select sum(tbalance), count(*) from pgbench_tellers",
        "select count(*), coalesce(md5(string_agg(h::text, ',' order by \
         tid, bid, aid, delta, mtime)), '') from pgbench_history h",
        "select md5(string_agg(b::text, ',' order by bid)) from pgbench_branches b",
    ]
    .iter()
    .map(|q| c.psql(q))
    .collect::<Vec<_>>()
    .join(" / ")
}

fn wait_promoted(c: &Cluster, secs: u64) {
    assert!(
        wait_for(Duration::from_secs(secs), || c.in_recovery() == Some(false)),
        "cluster on port {} did not leave recovery within {secs}s\n--- server log ---\n{}",
        c.port,
        c.log_tail()
    );
}

/// The sha256 of a file as `sha256sum` prints it.
fn sha256(p: &Path) -> String {
    let out = ok(Command::new("sha256sum").arg(p));
    out.split_whitespace().next().unwrap().to_string()
}

/// A real sshd on 127.0.0.1:`port` with its own host key; `postgres` logs in with a key
/// the test generated. `ssh` is the client command line (walmgr's `ssh` ini key).
struct Sshd {
    _child: Bg,
    ssh: String,
    log: PathBuf,
}

impl Sshd {
    fn start(sb: &Sandbox, port: u16) -> Sshd {
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        let dir = sb.mkdir("ssh");
        let host_key = dir.join("host_ed25519");
        let user_key = dir.join("id_ed25519");
        for (k, c) in [
            (&host_key, "walmgr-test-host"),
            (&user_key, "walmgr-test-user"),
        ] {
            ok(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", c, "-f"])
                .arg(k));
        }
        // The client key belongs to postgres (archive_command runs as postgres).
        chown_pg(&user_key);
        chown_pg(&dir.join("id_ed25519.pub"));
        let authorized = dir.join("authorized_keys");
        fs::copy(dir.join("id_ed25519.pub"), &authorized).unwrap();
        chown_pg(&authorized);
        let host_pub = fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
        let known = dir.join("known_hosts");
        fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
        chown_pg(&known);
        let conf = dir.join("sshd_config");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
                 AuthorizedKeysFile {ak}\nStrictModes no\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM yes\nAllowUsers postgres root\n\
                 PrintMotd no\nLogLevel VERBOSE\n",
                hk = host_key.display(),
                ak = authorized.display(),
            ),
        )
        .unwrap();
        ok(Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&conf));
        let log = dir.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("/usr/sbin/sshd (apt install openssh-server; tests/setup-host.sh)");
        let ssh = format!(
            "ssh -F /dev/null -p {port} -i {key} -o UserKnownHostsFile={known} \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \
             -o ConnectTimeout=10 -o LogLevel=ERROR -l postgres",
            key = user_key.display(),
            known = known.display(),
        );
        let s = Sshd {
            _child: Bg(Some(child)),
            ssh,
            log,
        };
        let mut last = String::new();
        let up = wait_for(Duration::from_secs(15), || {
            let o = run(s.client().args(["127.0.0.1", "echo", "ssh-ok"]));
            last = show(&s.client(), &o);
            String::from_utf8_lossy(&o.stdout).trim() == "ssh-ok"
        });
        assert!(
            up,
            "cannot log in through the test sshd: {last}\n--- sshd log ---\n{}",
            fs::read_to_string(&s.log).unwrap_or_default()
        );
        s
    }

    /// The ssh client as postgres.
    fn client(&self) -> Command {
        let mut w = self.ssh.split_whitespace();
        let mut c = as_postgres(w.next().unwrap());
        c.args(w);
        c
    }
}

/// `walmgr <ini> xarchive <p> <f>` as PostgreSQL runs it: as postgres, cwd = data dir.
fn xarchive(ini: &Path, data: &Path, p: impl AsRef<OsStr>, f: &str) -> Command {
    let mut c = walmgr();
    c.current_dir(data).arg(ini).arg("xarchive").arg(p).arg(f);
    c
}

/// `walmgr <ini> xrestore <f> <p>` with cwd `cwd` (standby mode iff cwd/standby.signal).
fn xrestore(ini: &Path, cwd: &Path, f: &str, p: impl AsRef<OsStr>) -> Command {
    let mut c = walmgr();
    c.current_dir(cwd).arg(ini).arg("xrestore").arg(f).arg(p);
    c
}

/// Segment names as walmgr stores them (data file in any compression, and its .meta).
fn final_names(seg: &str) -> [String; 4] {
    [
        seg.to_string(),
        format!("{seg}.gz"),
        format!("{seg}.zst"),
        format!("{seg}.meta"),
    ]
}

const SEG1: &str = "000000010000000000000001";

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
    assert!(store.join("logs.complete/PAUSE").exists());
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
    assert!(!store.join("logs.complete/PAUSE").exists());
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

// ---------------------------------------------------------------------------------------
// 5. the store's filesystem fills up: archiving fails, PostgreSQL keeps the segment, then
//    succeeds once space is freed
// ---------------------------------------------------------------------------------------

#[test]
fn full_destination() {
    let _g = serial();
    let sb = Sandbox::new("full");
    let store = sb.p("store");
    let fs_guard = Tmpfs::mount(&store, "20m");
    let m = Cluster::initdb(&sb, "master", 56151, 1, "archive_mode = on\n");
    m.start();
    let ini = master_ini(
        &sb,
        &m,
        &store.display().to_string(),
        "compression = none\n",
    );
    ok(walmgr().arg(&ini).arg("setup"));
    let done = store.join("logs.complete");
    assert!(done.is_dir());
    m.psql("create table t (x text)");
    m.switch_and_wait_archived(30);

    // Leave room for a few 1 MB segments only.
    let filler = fs_guard.0.join("filler");
    ok(Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=15", "status=none"])
        .arg(format!("of={}", filler.display())));

    let fill_segment = || {
        m.psql("insert into t select repeat('x', 200) from generate_series(1, 1500)");
        m.psql("select pg_switch_wal()");
    };
    let mut failed = false;
    for _ in 0..25 {
        fill_segment();
        if wait_for(Duration::from_secs(2), || m.archiver().2 > 0) {
            failed = true;
            break;
        }
    }
    let (_, last_ok, failed_count, last_failed) = m.archiver();
    assert!(
        failed,
        "archiving never failed on a full store: {:?}, store {:?}",
        m.archiver(),
        names(&done)
    );
    assert!(failed_count > 0 && !last_failed.is_empty());
    // PostgreSQL keeps the segment and will retry it.
    assert!(
        m.data.join("pg_wal").join(&last_failed).exists(),
        "PostgreSQL keeps {last_failed}"
    );
    assert!(m
        .data
        .join("pg_wal/archive_status")
        .join(format!("{last_failed}.ready"))
        .exists());
    // Nothing partial in the store.
    let listing = names(&done);
    assert!(
        !listing.iter().any(|n| n.starts_with(".tmp-")),
        "temp files left on a full disk: {listing:?}"
    );
    assert!(
        !done.join(format!("{last_failed}.meta")).exists(),
        "{last_failed} acknowledged although archiving failed"
    );
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("walmgr: ") && l.contains(&last_failed)),
        "server log has walmgr's one-line error naming {last_failed}:\n{}",
        m.log_tail()
    );
    eprintln!("full: last archived {last_ok}, failing {last_failed}");

    // Free space; the master keeps working and PostgreSQL's retry succeeds.
    fs::remove_file(&filler).unwrap();
    let seg = {
        m.psql("insert into t values ('after')");
        m.switch_and_wait_archived(60)
    };
    assert!(seg.as_str() > last_failed.as_str());
    // Every segment from the first stored to `seg` is there, acknowledged.
    let listing = names(&done);
    assert!(
        !listing.iter().any(|n| n.starts_with(".tmp-")),
        "temp files left: {listing:?}"
    );
    let segs: Vec<&String> = listing
        .iter()
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    for s in &segs {
        assert!(
            listing.contains(&format!("{s}.meta")),
            "{s} without .meta: {listing:?}"
        );
    }
    assert!(
        segs.iter().any(|s| **s == last_failed),
        "{last_failed} stored"
    );
    assert!(segs.iter().any(|s| **s == seg), "{seg} stored");
    let slave = slave_ini(&sb, "slave.ini", &store, &sb.p("standby"), "");
    ok(walmgr().arg(&slave).arg("verify"));

    // A base backup that cannot fit (data dir > free space): fails with one line, leaves
    // no set and no staging behind (the space is given back), releases its lock and its
    // backup session (a second attempt fails the same way, not on the lock).
    for attempt in 0..2 {
        let err = fails(walmgr().arg(&ini).arg("backup"));
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("walmgr: ")).collect();
        if lines.len() != 1 || err.contains("lock") {
            problem(format!("backup on a full disk, attempt {attempt}: {err:?}"));
        }
        let left = names(&store.join("data.master"));
        assert!(left.is_empty(), "failed backup left {left:?}");
    }
    m.psql("insert into t values ('after backup')");
    m.switch_and_wait_archived(30);
    ok(walmgr().arg(&slave).arg("verify"));
    finish();
}

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
    // boot (STOP) ends the wait with a failure: recovery ends, the standby promotes.
    ok(walmgr().arg(&slave).arg("boot"));
    assert!(store.join("logs.complete/STOP").exists());
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
