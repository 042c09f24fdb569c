//! pgqd against the real PostgreSQL 15 with the pgq extension: batches delivered,
//! retries returned, tables rotated, databases appearing and disappearing, connections
//! cut, reload, the control flags, one ticker per database.
//!
//! Tests in this file run one at a time: a pgqd that discovers databases would tick
//! (and lock) the databases of a test running beside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::pg::pg_ids;
use common::wait_for;

use std::os::unix::process::CommandExt;

use tokio_postgres::{Client, NoTls};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static SEQ: AtomicU64 = AtomicU64::new(0);

const BASE: &str = "host=127.0.0.1 user=postgres";

async fn connect(db: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(&format!("{BASE} dbname={db}"), NoTls)
        .await
        .expect("PostgreSQL must be running (make check starts it)");
    tokio::spawn(conn);
    c
}

/// A fresh database with pgq and a queue `q` that ticks on every event.
async fn pgq_db(with_pgq: bool) -> String {
    let name = format!(
        "hk_pgqd_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect("postgres").await;
    // Separate statements: a multi-statement string runs as one transaction.
    for sql in [
        format!("drop database if exists {name} with (force)"),
        format!("create database {name}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    if with_pgq {
        let c = connect(&name).await;
        c.batch_execute(
            "create extension pgq;
             select pgq.create_queue('q');
             select pgq.set_queue_config('q', 'ticker_max_count', '1');
             select pgq.set_queue_config('q', 'ticker_max_lag', '0');
             select pgq.register_consumer('q', 'c');",
        )
        .await
        .unwrap();
    }
    name
}

async fn drop_db(name: &str) {
    let admin = connect("postgres").await;
    let _ = admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await;
}

/// Sessions ever opened to `db` (pg_stat_database, counted from outside it).
async fn sessions(db: &str) -> i64 {
    connect("postgres")
        .await
        .query_one(
            "select sessions from pg_stat_database where datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// The backend holding `db`'s ticker lock (pgqd's ticker session), if any.
async fn ticker_pid(db: &str) -> Option<i32> {
    connect("postgres")
        .await
        .query_opt(
            "select l.pid from pg_locks l join pg_database d on d.oid = l.database \
             where l.locktype = 'advisory' and l.granted and d.datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Poll an async condition for up to `secs`.
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The numbers of every `{ticks: N, maint: N, retry: N}` line logged so far.
fn stats_lines(log: &str) -> Vec<(u64, u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let body = &l[l.find("{ticks: ")? + 1..];
            let body = body.strip_suffix('}')?;
            let mut n = body
                .split(", ")
                .map(|kv| kv.split(": ").nth(1)?.parse().ok());
            Some((n.next()??, n.next()??, n.next()??))
        })
        .collect()
}

async fn cur_table(c: &Client) -> i32 {
    c.query_one(
        "select queue_cur_table from pgq.queue where queue_name = 'q'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Wait (20 s) for queue q's current table to differ from `before`, inserting events
/// (and, with a consumer, finishing its batches so it does not hold rotation back).
async fn rotates(c: &Client, before: i32, with_consumer: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if with_consumer {
            let batch: Option<i64> = c
                .query_one("select pgq.next_batch('q', 'c')", &[])
                .await
                .unwrap()
                .get(0);
            if let Some(b) = batch {
                c.execute("select pgq.finish_batch($1)", &[&b])
                    .await
                    .unwrap();
            }
        }
        c.execute("select pgq.insert_event('q', 'test', 'tick')", &[])
            .await
            .unwrap();
        if cur_table(c).await != before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// Insert an event, then wait (up to `secs`) for a batch holding it; finish the batch.
/// Whether `data`, inserted now, comes out of a batch within `secs`. The bound is for
/// liveness only: on a loaded host the C pgqd as well takes seconds for one batch.
async fn event_delivered(db: &str, data: &str, secs: u64) -> bool {
    let c = connect(db).await;
    c.execute("select pgq.insert_event('q', 'test', $1)", &[&data])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let row = c
            .query_one("select pgq.next_batch('q', 'c')", &[])
            .await
            .unwrap();
        if let Some(batch) = row.get::<_, Option<i64>>(0) {
            let evs = c
                .query("select ev_data from pgq.get_batch_events($1)", &[&batch])
                .await
                .unwrap();
            c.execute("select pgq.finish_batch($1)", &[&batch])
                .await
                .unwrap();
            if evs
                .iter()
                .any(|r| r.get::<_, Option<String>>(0).as_deref() == Some(data))
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Consume batches as consumer `c` for up to 10 s, sending every event whose data
/// `pick` accepts back with `pgq.event_retry` (retry at once), until `want` have been;
/// returns how many were.
async fn send_back(c: &Client, want: usize, pick: impl Fn(&str) -> bool) -> usize {
    let mut retried = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while retried < want && Instant::now() < deadline {
        if let Some(batch) = c
            .query_one("select pgq.next_batch('q', 'c')", &[])
            .await
            .unwrap()
            .get::<_, Option<i64>>(0)
        {
            for ev in c
                .query(
                    "select ev_id, ev_data from pgq.get_batch_events($1)",
                    &[&batch],
                )
                .await
                .unwrap()
            {
                if ev.get::<_, Option<String>>(1).is_some_and(|d| pick(&d)) {
                    c.execute(
                        "select pgq.event_retry($1, $2, 0)",
                        &[&batch, &ev.get::<_, i64>(0)],
                    )
                    .await
                    .unwrap();
                    retried += 1;
                }
            }
            c.execute("select pgq.finish_batch($1)", &[&batch])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    retried
}

struct Pgqd {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// Run as the user postgres with no PG* variables (as Debian's service runs it).
    as_postgres: bool,
}

impl Pgqd {
    fn new(extra: &str) -> Pgqd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pgqd.ini");
        let p = Pgqd {
            dir,
            config,
            child: None,
            as_postgres: false,
        };
        p.write_config(extra);
        p
    }

    /// Debian's stock /etc/pgqd.ini (package pgqd): logfile and pidfile only, in a
    /// directory postgres owns.
    fn stock() -> Pgqd {
        let dir = tempfile::Builder::new()
            .prefix("hk-pgqd-stock-")
            .tempdir()
            .unwrap();
        let (uid, gid) = pg_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let config = dir.path().join("pgqd.ini");
        let p = Pgqd {
            dir,
            config,
            child: None,
            as_postgres: true,
        };
        fs::write(
            &p.config,
            format!(
                "[pgqd]\nlogfile = {}\npidfile = {}\n",
                p.log().display(),
                p.pidfile().display()
            ),
        )
        .unwrap();
        p
    }

    fn write_config(&self, extra: &str) {
        fs::write(
            &self.config,
            format!(
                "[pgqd]\nbase_connstr = {BASE}\nlogfile = {}\npidfile = {}\nsyslog = 0\n\
                 ticker_period = 0.2\ncheck_period = 1\nretry_period = 0.5\nmaint_period = 1\nstats_period = 1\n{extra}\n",
                self.log().display(),
                self.pidfile().display()
            ),
        )
        .unwrap();
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("pgqd.log")
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("pgqd.pid")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn cmd(&self) -> Command {
        // postgres may not reach target/ (a checkout under a 0700 directory): run a copy.
        let bin = if self.as_postgres {
            common::pg::pgqd_bin()
        } else {
            env!("CARGO_BIN_EXE_pgqd")
        };
        let mut c = Command::new(bin);
        if self.as_postgres {
            let (uid, gid) = pg_ids();
            c.uid(uid)
                .gid(gid)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", "/var/lib/postgresql")
                .env("USER", "postgres")
                .env("LOGNAME", "postgres")
                .current_dir("/");
        }
        c.arg(&self.config);
        c
    }

    /// Start in the background with -d, as scriptmgr does; logs go to the logfile.
    fn start(&mut self) {
        let out = self.cmd().arg("-d").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(wait_for(Duration::from_secs(5), || self.pidfile().exists()));
    }

    /// Start in the foreground with -q (logfile only).
    fn spawn(&mut self) {
        self.child = Some(self.cmd().arg("-q").stdin(Stdio::null()).spawn().unwrap());
        assert!(wait_for(Duration::from_secs(5), || self
            .log_text()
            .contains("starting")));
    }

    fn control(&self, flag: &str) -> String {
        let out = self.cmd().arg(flag).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn pid(&self) -> Option<i32> {
        hostkit::daemon::running_pid(&self.pidfile()).unwrap()
    }
}

impl Drop for Pgqd {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_deliver_batches_in_several_databases_and_report_status() {
    let _g = SERIAL.lock().await;
    let (a, b) = (pgq_db(true).await, pgq_db(true).await);
    let mut p = Pgqd::new(&format!("database_list = {a}, {b}"));
    p.start();
    assert!(event_delivered(&a, "hello a", 30).await, "{}", p.log_text());
    assert!(event_delivered(&b, "hello b", 30).await, "{}", p.log_text());
    assert!(
        wait_for(Duration::from_secs(5), || p.log_text().contains("{ticks: ")),
        "{}",
        p.log_text()
    );
    assert!(p
        .log_text()
        .contains(&format!("{a}: ticker: pgq version ok")));
    // The status file names both databases as ticking, recently: the check's line, then
    // one table line each.
    assert!(wait_for(Duration::from_secs(5), || {
        let out = p.cmd().arg("--status").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let table: Vec<&str> = text.lines().skip(2).collect();
        out.status.success()
            && text.starts_with("PGQD OK - 2 of 2 databases ticking, ")
            && table.iter().any(|l| l.starts_with(&a))
            && table.iter().any(|l| l.starts_with(&b))
            && table.iter().filter(|l| l.contains(" ticking ")).count() == 2
    }));
    assert_eq!(p.control("-s"), "SIGINT sent");
    assert!(wait_for(Duration::from_secs(10), || p.pid().is_none()
        && !p.pidfile().exists()));
    assert!(p.log_text().contains("got SIGINT, shutting down"));
    // Once stopped, --status is CRITICAL at once: the pid it recorded is gone.
    let out = p.cmd().arg("--status").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("PGQD CRITICAL - pid "), "{text}");
    assert!(
        text.lines().next().unwrap().contains(" is not running, "),
        "{text}"
    );
    drop_db(&a).await;
    drop_db(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_events_come_back_and_tables_rotate() {
    let _g = SERIAL.lock().await;
    let db = pgq_db(true).await;
    let c = connect(&db).await;
    c.batch_execute(
        "update pgq.queue set queue_rotation_period = '2 seconds' where queue_name = 'q'",
    )
    .await
    .unwrap();
    let table0 = cur_table(&c).await;
    let mut p = Pgqd::new(&format!("database_list = {db}"));
    p.start();
    c.execute("select pgq.insert_event('q', 'test', 'again')", &[])
        .await
        .unwrap();
    // Take the event, and ask for it again immediately.
    assert_eq!(send_back(&c, 1, |d| d == "again").await, 1);
    // pgqd's retry worker puts it back in the queue; a later batch has it again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut back = false;
    while Instant::now() < deadline && !back {
        if let Some(batch) = c
            .query_one("select pgq.next_batch('q', 'c')", &[])
            .await
            .unwrap()
            .get::<_, Option<i64>>(0)
        {
            back = c
                .query(
                    "select ev_data, ev_retry from pgq.get_batch_events($1)",
                    &[&batch],
                )
                .await
                .unwrap()
                .iter()
                .any(|r| {
                    r.get::<_, Option<String>>(0).as_deref() == Some("again")
                        && r.get::<_, Option<i32>>(1) == Some(1)
                });
            c.execute("select pgq.finish_batch($1)", &[&batch])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "retried event came back; log:\n{}", p.log_text());
    // Maintenance rotates the queue's tables once rotation_period has passed.
    let rotated = rotates(&c, table0, true).await;
    assert!(rotated, "queue_cur_table changed; log:\n{}", p.log_text());
    drop(c);
    p.control("-k");
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_come_and_go_and_cut_connections_recover() {
    let _g = SERIAL.lock().await;
    let mut p = Pgqd::new("");
    p.spawn();
    // Discovered while running.
    let db = pgq_db(true).await;
    assert!(wait_for(Duration::from_secs(5), || p
        .log_text()
        .contains(&format!("Register database {db}"))));
    assert!(event_delivered(&db, "found", 30).await, "{}", p.log_text());
    // Every pgqd connection to it cut: ticking resumes.
    let admin = connect("postgres").await;
    let killed: i64 = admin
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    assert!(
        event_delivered(&db, "after cut", 30).await,
        "{}",
        p.log_text()
    );
    // Dropped: unregistered, and pgqd keeps running.
    drop_db(&db).await;
    assert!(
        wait_for(Duration::from_secs(5), || p
            .log_text()
            .contains(&format!("Unregister database {db}"))),
        "{}",
        p.log_text()
    );
    // A database without pgq is reported once, not on every check.
    let plain = pgq_db(false).await;
    std::thread::sleep(Duration::from_secs(4));
    let no_pgq = format!("{plain}: ticker: no pgq installed");
    assert_eq!(p.log_text().matches(&no_pgq).count(), 1, "{}", p.log_text());
    assert!(
        p.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running"
    );
    drop_db(&plain).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.as_ref().unwrap().id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(p.child.take().unwrap().wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_control_flags_and_one_ticker_per_database() {
    let _g = SERIAL.lock().await;
    let (a, b) = (pgq_db(true).await, pgq_db(true).await);
    let mut p = Pgqd::new(&format!("database_list = {a}"));
    p.start();
    assert!(event_delivered(&a, "a1", 30).await);
    assert!(
        !event_delivered(&b, "b-not-yet", 3).await,
        "b is not in database_list"
    );
    let pid_a = ticker_pid(&a).await.expect("a's ticker holds the lock");
    // SIGHUP with a changed database_list.
    p.write_config(&format!("database_list = {a}, {b}"));
    assert_eq!(p.control("-r"), "SIGHUP sent");
    assert!(wait_for(Duration::from_secs(5), || p
        .log_text()
        .contains("configuration reloaded")));
    assert!(event_delivered(&b, "b1", 30).await, "{}", p.log_text());
    // a, still listed, kept its ticker and its session.
    assert_eq!(ticker_pid(&a).await, Some(pid_a), "{}", p.log_text());
    assert!(event_delivered(&a, "a2", 30).await, "{}", p.log_text());

    // A second pgqd with the same pidfile is refused.
    let out = p.cmd().arg("-q").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("pgqd: pidfile exists, another instance running?"),
        "{err}"
    );

    // A second ticker elsewhere (own pidfile) backs off on the advisory lock.
    let mut other = Pgqd::new(&format!("database_list = {a}"));
    other.spawn();
    assert!(
        wait_for(Duration::from_secs(5), || other.log_text().contains(
            &format!("{a}: ticker: another ticker holds this database's lock")
        )),
        "{}",
        other.log_text()
    );
    drop(other);

    // a dropped from the list: its workers stop, b's session is kept.
    let pid_b = ticker_pid(&b).await.expect("b's ticker holds the lock");
    p.write_config(&format!("database_list = {b}"));
    assert_eq!(p.control("-r"), "SIGHUP sent");
    assert!(
        wait_for(Duration::from_secs(5), || p
            .log_text()
            .contains(&format!("Unregister database {a}"))),
        "{}",
        p.log_text()
    );
    assert!(
        eventually(5, || async { ticker_pid(&a).await.is_none() }).await,
        "a's ticker session ended"
    );
    assert!(
        eventually(5, || async {
            let n: i64 = connect("postgres")
                .await
                .query_one(
                    "select count(*) from pg_stat_activity where datname = $1",
                    &[&a],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await,
        "no pgqd session left on a"
    );
    assert_eq!(ticker_pid(&b).await, Some(pid_b));

    assert_eq!(p.control("-k"), "SIGTERM sent");
    assert!(wait_for(Duration::from_secs(5), || p.pid().is_none()));
    assert_eq!(p.control("-s"), "Old process is not running");
    drop_db(&a).await;
    drop_db(&b).await;
}

#[test]
fn a_recycled_pid_in_the_pidfile_is_not_signalled() {
    // The pidfile names a live process that is not pgqd (its pid was recycled): its
    // lock is free, so -k/-s/-r say "not running" and the process survives.
    let p = Pgqd::new("");
    let mut other = Command::new("sleep").arg("600").spawn().unwrap();
    fs::write(p.pidfile(), format!("{}\n", other.id())).unwrap();
    for flag in ["-k", "-s", "-r"] {
        assert_eq!(p.control(flag), "Old process is not running", "{flag}");
    }
    assert!(
        other.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn command_line_and_bad_config() {
    let bin = env!("CARGO_BIN_EXE_pgqd");
    let out = Command::new(bin).arg("--ini").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("[pgqd]"));
    let out = Command::new(bin).arg("-V").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pgqd {}", env!("CARGO_PKG_VERSION"))
    );
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("bad.ini");
    fs::write(&cfg, "[pgqd]\nticker_perod = 1\n").unwrap();
    let out = Command::new(bin).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("pgqd: {}: [pgqd] ticker_perod: unknown key", cfg.display())
    );
    fs::write(&cfg, "[pgqd]\n").unwrap();
    let out = Command::new(bin).arg(&cfg).arg("-d").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pidfile is required with -d"));
    let out = Command::new(bin).arg(&cfg).arg("-s").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(Path::new(bin).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_servers_and_old_pgq_are_logged_once_and_survived() {
    let _g = SERIAL.lock().await;
    // A database whose pgq claims version 2: ignored, as the original does.
    let old = pgq_db(false).await;
    connect(&old)
        .await
        .batch_execute("create schema pgq; create function pgq.version() returns text language sql as $$ select '2.1.8'::text $$;")
        .await
        .unwrap();
    let mut p = Pgqd::new(&format!("database_list = {old}"));
    p.spawn();
    // Unreachable server and wrong credentials, each its own pgqd.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut down = Pgqd::new("database_list = somedb");
    fs::write(
        &down.config,
        fs::read_to_string(&down.config)
            .unwrap()
            .replace(BASE, &format!("host=127.0.0.1 port={port} user=postgres")),
    )
    .unwrap();
    down.spawn();
    let mut creds = Pgqd::new("database_list = postgres");
    fs::write(
        &creds.config,
        fs::read_to_string(&creds.config)
            .unwrap()
            .replace(BASE, "host=127.0.0.1 user=no_such_role_hk"),
    )
    .unwrap();
    creds.spawn();
    // Several check periods (1 s) pass; each state is logged once per worker.
    std::thread::sleep(Duration::from_secs(4));
    let bad = format!("{old}: ticker: bad pgq version 2.1.8, ignoring");
    assert_eq!(p.log_text().matches(&bad).count(), 1, "{}", p.log_text());
    let refused = "somedb: ticker: connection failed";
    assert_eq!(
        down.log_text().matches(refused).count(),
        1,
        "{}",
        down.log_text()
    );
    let denied = "postgres: ticker: connection failed";
    assert_eq!(
        creds.log_text().matches(denied).count(),
        1,
        "{}",
        creds.log_text()
    );
    assert!(
        creds.log_text().contains("no_such_role_hk"),
        "the server's reason is logged: {}",
        creds.log_text()
    );
    for q in [&mut p, &mut down, &mut creds] {
        assert!(
            q.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "still running"
        );
    }
    drop_db(&old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_maintenance_path_rotates_without_maint_operations() {
    let _g = SERIAL.lock().await;
    let db = pgq_db(false).await;
    let c = connect(&db).await;
    // pgq < 3.1 had no pgq.maint_operations(): hide it to take the legacy path.
    c.batch_execute(
        "create extension pgq;
         select pgq.create_queue('q');
         alter function pgq.maint_operations() rename to maint_operations_hidden;
         update pgq.queue set queue_rotation_period = '2 seconds' where queue_name = 'q';",
    )
    .await
    .unwrap();
    let table0 = cur_table(&c).await;
    let mut p = Pgqd::new(&format!("database_list = {db}"));
    p.start();
    let rotated = rotates(&c, table0, false).await;
    assert!(
        rotated,
        "rotated by the legacy path; log:\n{}",
        p.log_text()
    );
    assert!(!p.log_text().contains("maint failed"), "{}", p.log_text());
    drop(c);
    p.control("-k");
    drop_db(&db).await;
}

/// The bug of issue 9: with Debian's stock /etc/pgqd.ini (no base_connstr) pgqd run as
/// postgres failed discovery with "invalid configuration"; like the C pgqd it must use
/// the local socket and the OS user, and tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_debian_ini_as_postgres_ticks_over_the_socket() {
    let _g = SERIAL.lock().await;
    let db = pgq_db(true).await;
    let c = connect(&db).await;
    let ticks = || async {
        c.query_one(
            "select count(*) from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue \
             where q.queue_name = 'q'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let before = ticks().await;
    let mut p = Pgqd::stock();
    p.spawn();
    assert!(
        wait_for(Duration::from_secs(10), || p
            .log_text()
            .contains(&format!("{db}: ticker: pgq version ok"))),
        "{}",
        p.log_text()
    );
    assert!(
        event_delivered(&db, "stock ini", 30).await,
        "{}",
        p.log_text()
    );
    assert!(ticks().await > before, "pgq.tick has new rows");
    // The ticker's session is pgqd's: it holds pgqd's advisory lock, as postgres, over
    // the Unix socket (no client address).
    let holder = c
        .query_opt(
            "select a.usename::text, a.client_addr is null from pg_locks l \
             join pg_stat_activity a on a.pid = l.pid \
             where l.locktype = 'advisory' and l.database = \
             (select oid from pg_database where datname = current_database()) \
             and l.classid::bigint = ($1::bigint >> 32) and l.objid::bigint = ($1::bigint & 4294967295) \
             and l.granted",
            &[&hostkit::skytools::pgqd::db::TICKER_LOCK],
        )
        .await
        .unwrap()
        .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)));
    assert_eq!(
        holder,
        Some(("postgres".to_string(), true)),
        "{}",
        p.log_text()
    );
    let log = p.log_text();
    assert!(!log.contains("discovery failed"), "{log}");
    assert!(!log.contains("connection failed"), "{log}");
    let pid = p.child.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(p.child.take().unwrap().wait().unwrap().success());
    drop(c);
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_pgq_costs_one_connection_per_check_and_pgq_is_found_later() {
    let _g = SERIAL.lock().await;
    let plain = pgq_db(false).await;
    let mut p = Pgqd::new(&format!("database_list = {plain}"));
    p.spawn();
    let no_pgq = format!("{plain}: ticker: no pgq installed");
    assert!(
        wait_for(Duration::from_secs(5), || p.log_text().contains(&no_pgq)),
        "{}",
        p.log_text()
    );
    // check_period is 1 s: the ticker's check is the only session, so about six in
    // six seconds (ticker, retry and maintenance each checking would make eighteen).
    let before = sessions(&plain).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let opened = sessions(&plain).await - before;
    assert!((4..=8).contains(&opened), "{opened} sessions in 6 s");
    // The status shows the state and the reason apart.
    assert!(wait_for(Duration::from_secs(5), || {
        let out = p.cmd().arg("--status").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().any(|l| {
            l.starts_with(&plain)
                && l.contains(" closed ")
                && l.contains("ticker: no pgq installed")
        })
    }));
    // pgq installed later: picked up at the next check, ticking, retry and maint run.
    connect(&plain)
        .await
        .batch_execute(
            "create extension pgq;
             select pgq.create_queue('q');
             select pgq.set_queue_config('q', 'ticker_max_count', '1');
             select pgq.set_queue_config('q', 'ticker_max_lag', '0');
             select pgq.register_consumer('q', 'c');",
        )
        .await
        .unwrap();
    assert!(
        event_delivered(&plain, "late", 30).await,
        "{}",
        p.log_text()
    );
    assert!(p
        .log_text()
        .contains(&format!("{plain}: ticker: pgq version ok")));
    assert!(
        wait_for(Duration::from_secs(5), || stats_lines(&p.log_text())
            .iter()
            .any(|s| s.1 > 0)),
        "maintenance ran: {}",
        p.log_text()
    );
    assert_eq!(p.log_text().matches(&no_pgq).count(), 1, "{}", p.log_text());
    drop(p);
    drop_db(&plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_count_adds_up_the_events_moved() {
    let _g = SERIAL.lock().await;
    let db = pgq_db(true).await;
    let mut p = Pgqd::new(&format!("database_list = {db}"));
    p.spawn();
    // Retry runs every 0.5 s with nothing to move: it counts 0, not its calls.
    assert!(
        wait_for(Duration::from_secs(10), || stats_lines(&p.log_text()).len()
            >= 3),
        "{}",
        p.log_text()
    );
    assert!(
        stats_lines(&p.log_text()).iter().all(|s| s.2 == 0),
        "{}",
        p.log_text()
    );
    // Twelve events taken and all sent back: more than one call's ten.
    let c = connect(&db).await;
    for i in 0..12 {
        c.execute(
            "select pgq.insert_event('q', 'test', $1)",
            &[&format!("r{i}")],
        )
        .await
        .unwrap();
    }
    assert_eq!(send_back(&c, 12, |d| d.starts_with('r')).await, 12);
    let total = || stats_lines(&p.log_text()).iter().map(|s| s.2).sum::<u64>();
    assert!(
        wait_for(Duration::from_secs(10), || total() >= 12),
        "{}",
        p.log_text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(total(), 12, "{}", p.log_text());
    drop(c);
    drop(p);
    drop_db(&db).await;
}

/// `--status --prometheus` with `extra` options: (exit code, the summary line, the
/// textfile's samples). Every textfile line must parse.
fn check(p: &Pgqd, extra: &[&str]) -> (i32, String, Vec<hostkit::monitor::Sample>) {
    let prom = p.dir.path().join("pgqd.prom");
    let _ = fs::remove_file(&prom);
    let out = p
        .cmd()
        .arg("--status")
        .arg("--prometheus")
        .arg(&prom)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let prom_text = fs::read_to_string(&prom).unwrap();
    let samples =
        hostkit::monitor::parse_textfile(&prom_text).unwrap_or_else(|e| panic!("{e}\n{prom_text}"));
    assert!(samples
        .iter()
        .all(|(n, _, _)| n.starts_with("hostkit_pgqd_")));
    assert!(prom_text.contains("# TYPE hostkit_pgqd_check_state gauge\n"));
    let line = text.lines().next().unwrap_or_default().to_string();
    (out.status.code().unwrap(), line, samples)
}

fn sample(s: &[hostkit::monitor::Sample], name: &str, db: Option<&str>) -> Option<f64> {
    s.iter()
        .find(|(n, l, _)| n == name && l.get("database").map(String::as_str) == db)
        .map(|(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_ok_while_ticking_and_critical_when_the_ticker_is_stuck() {
    let _g = SERIAL.lock().await;
    let db = pgq_db(true).await;
    let mut p = Pgqd::new(&format!("database_list = {db}"));
    p.start();
    let ok = wait_for(Duration::from_secs(15), || {
        check(&p, &[])
            .1
            .starts_with("PGQD OK - 1 of 1 databases ticking, oldest last tick ")
    });
    let (code, line, s) = check(&p, &[]);
    assert!(ok && code == 0, "{line}\n{}", p.log_text());
    assert!(line.contains(&format!("tick_age_{db}=")), "{line}");
    assert!(line.contains("s;60;300;0 databases=1 ticking=1"), "{line}");
    assert_eq!(sample(&s, "hostkit_pgqd_up", None), Some(1.0));
    assert_eq!(sample(&s, "hostkit_pgqd_check_state", None), Some(0.0));
    assert!(sample(&s, "hostkit_pgqd_last_tick_age_seconds", Some(&db)).unwrap() <= 60.0);
    assert!(sample(&s, "hostkit_pgqd_ticks_total", Some(&db)).unwrap() >= 1.0);
    assert!(s.iter().any(|(n, l, v)| n == "hostkit_pgqd_database_state"
        && l.get("state").map(String::as_str) == Some("ticking")
        && *v == 1.0));
    // Stuck: a transaction holds pgq.queue exclusively, so pgq.ticker() blocks on it
    // while pgqd itself goes on writing its status.
    let c = connect(&db).await;
    c.batch_execute("begin; lock table pgq.queue in access exclusive mode")
        .await
        .unwrap();
    let t = ["--warn-age", "1", "--crit-age", "3"];
    let stuck = wait_for(Duration::from_secs(20), || check(&p, &t).0 == 2);
    let (code, line, s) = check(&p, &t);
    assert!(stuck && code == 2, "{line}\n{}", p.log_text());
    assert!(
        line.starts_with(&format!("PGQD CRITICAL - {db}: no tick for ")),
        "{line}"
    );
    assert!(sample(&s, "hostkit_pgqd_last_tick_age_seconds", Some(&db)).unwrap() > 3.0);
    assert_eq!(sample(&s, "hostkit_pgqd_check_state", None), Some(2.0));
    assert_eq!(
        sample(&s, "hostkit_pgqd_up", None),
        Some(1.0),
        "pgqd itself is alive"
    );
    // Between the thresholds: WARNING.
    let (code, line, _) = check(&p, &["--warn-age", "1", "--crit-age", "3600"]);
    assert_eq!(code, 1, "{line}");
    // Released: ticking again, OK under the same thresholds.
    c.batch_execute("rollback").await.unwrap();
    let back = wait_for(Duration::from_secs(20), || check(&p, &t).0 == 0);
    assert!(back, "{}\n{}", check(&p, &t).1, p.log_text());
    // Contradictory thresholds are UNKNOWN.
    let (code, line, _) = check(&p, &["--warn-age", "9", "--crit-age", "3"]);
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with("PGQD UNKNOWN - --warn-age/--crit-age: "),
        "{line}"
    );
    // Stopped: CRITICAL.
    assert_eq!(p.control("-s"), "SIGINT sent");
    assert!(wait_for(Duration::from_secs(10), || p.pid().is_none()));
    // The pidfile goes just before the process does.
    wait_for(Duration::from_secs(5), || check(&p, &[]).0 == 2);
    let (code, line, s) = check(&p, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains(" is not running"), "{line}");
    assert_eq!(sample(&s, "hostkit_pgqd_up", None), Some(0.0));
    drop(c);
    drop(p);
    drop_db(&db).await;
}

/// pgqd's own session (`hostkit::pg::simple`, which replaced tokio-postgres in the
/// ticker) against a private cluster that asks for passwords: SCRAM-SHA-256, MD5 and
/// cleartext answered with the conninfo's password, a wrong one refused with the
/// server's reason, and a failed statement leaving the session usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_session_authenticates_and_survives_a_failed_statement() {
    use common::pg::{free_port, Cluster, Sandbox};
    use hostkit::pg::conninfo::Env;
    use hostkit::pg::simple::{self, SessionError};

    let sb = Sandbox::new("pgqd-auth");
    let secret = "s3cret'\\x";
    let c = Cluster::with_password(&sb, "data", free_port(), "hk_scram", secret);
    fs::write(
        c.data.join("pg_hba.conf"),
        "local all postgres trust\n\
         host all hk_md5 127.0.0.1/32 md5\n\
         host all hk_clear 127.0.0.1/32 password\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let lit = simple::literal(secret);
    c.psql(&format!(
        "set password_encryption = 'md5'; create role hk_md5 login password {lit}; \
         create role hk_clear login password {lit}; select pg_reload_conf()"
    ));
    // The postmaster rereads pg_hba.conf on the signal; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let env = Env::empty().with_os_user("nobody", Path::new("/nonexistent"));
    let pw = secret.replace('\\', "\\\\").replace('\'', "\\'");
    for role in ["hk_scram", "hk_md5", "hk_clear"] {
        let info = format!(
            "host=127.0.0.1 port={} user={role} dbname=postgres password='{pw}'",
            c.port
        );
        let mut s = simple::connect_with(&info, &env)
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}\n{}", c.log_tail()));
        assert_eq!(
            s.first_value("select current_user")
                .await
                .unwrap()
                .as_deref(),
            Some(role)
        );
        let e = s.execute("select 1/0").await.unwrap_err();
        assert!(
            matches!(&e, SessionError::Server(m) if m.contains("division by zero")),
            "{e:?}"
        );
        assert!(!e.is_fatal());
        let rows = s
            .rows("select 'a', null::text union all select 'b''c', ''", 2)
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("a".to_string()), None],
                vec![Some("b'c".to_string()), Some(String::new())]
            ]
        );
        let wrong = info.replace(&pw, "wrong");
        let e = simple::connect_with(&wrong, &env).await.err().unwrap();
        assert!(
            matches!(&e, SessionError::Connect(m) if m.contains("password authentication failed")),
            "{role}: {e:?}"
        );
        let e = simple::connect_with(&info.replace(&format!("password='{pw}'"), ""), &env)
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("asked for a password"),
            "{role}: {e}"
        );
    }
    // The socket, and a server error at startup (no such database).
    let sock = format!(
        "host={} port={} user=postgres dbname=nosuchdb",
        c.sock.display(),
        c.port
    );
    let e = simple::connect_with(&sock, &env).await.err().unwrap();
    assert!(e.to_string().contains("\"nosuchdb\" does not exist"), "{e}");
}
