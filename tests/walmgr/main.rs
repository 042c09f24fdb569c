//! walmgr end to end against real PostgreSQL 15 clusters this file creates (initdb on
//! private ports, sockets in the test's own directory): archiving through
//! `archive_command`, base backups under load, restores that replay to the end or follow
//! the archive as a standby, pause/continue/boot, crash and disk-full safety of
//! `xarchive`, and a remote store reached through a real sshd.
//!
//! Tests run as root; every PostgreSQL server and every walmgr command runs as the user
//! `postgres` (as archive_command/restore_command do in production). Tests run one at a
//! time (2-core hosts, pgbench load): see `serial()`. The harness (clusters, sandboxes,
//! sshd, the copy of walmgr postgres runs) is in tests/common/; one module per scenario.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "../common/mod.rs"]
mod common;
use common::cmd::{fails, finish, ok, problem, run, show, Bg};
use common::pg::{as_postgres, chown_pg, pg_ids, pgtool, walmgr_bin, Cluster, Sandbox, PGBIN};
use common::sshd::Sshd;
use common::wait_for;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: they share the CPU (pgbench), /run/sshd and mount points.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// walmgr as postgres (from the copy postgres can read).
fn walmgr() -> Command {
    as_postgres(walmgr_bin())
}

/// stderr of a failed walmgr: exactly one line, `walmgr: ...`, mentioning `what`.
fn assert_one_line_error(stderr: &str, what: &str) {
    common::cmd::assert_one_line_error("walmgr", stderr, what)
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

/// `walmgr --recovery <slave> restore` (the newest set into the ini's slave_data, `dst`),
/// then the recovered cluster started on a free port (archiving off) and promoted.
fn recover_newest(sb: &Sandbox, slave: &Path, dst: &Path) -> Cluster {
    ok(walmgr().arg("--recovery").arg(slave).arg("restore"));
    let r = Cluster::adopt(sb, dst, common::pg::free_port(), "-c archive_mode=off");
    r.start();
    wait_promoted(&r, 120);
    r
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

/// verify's "read N file(s), M unchanged" figures.
fn verify_counts(out: &str) -> (usize, usize) {
    let line = out
        .lines()
        .find(|l| l.contains(" file(s), "))
        .unwrap_or_else(|| panic!("no read/unchanged line in verify's output: {out}"));
    let num = |after: &str| -> usize {
        line.split(after)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("read "), num(" file(s), "))
}

mod async_archive;
mod full_disk;
mod pitr;
mod prefetch;
mod remote;
mod restore_as_root;
mod roundtrip;
mod s3;
mod s3_backup;
mod secrets;
mod standby;
mod status;
mod xarchive_safety;
mod xrestore_missing;
