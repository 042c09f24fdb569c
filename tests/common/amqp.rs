//! RabbitMQ and Ganeti job files, for the eventd / hook / progress tests against the real
//! RabbitMQ on this host.
//!
//! Each test gets its own exchange name, so tests run in parallel without seeing each
//! other's messages. Job files are written exactly as Ganeti writes them: temp file,
//! fsync, rename.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{fixture, unique, wait_for};

pub fn amqp_url() -> String {
    std::env::var("HK_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Job-6 startup versions captured from Ganeti 3.0, in order.
pub const STARTUP_VERSIONS: [&str; 6] = [
    "v1-queued",
    "v2-queued",
    "v3-queued",
    "v4-waiting",
    "v5-running",
    "v6-success",
];

pub fn startup_version(v: &str) -> Value {
    let p = fixture(&format!(
        "ganeti/job-versions/job-6-instance-startup-{v}.json"
    ));
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// A startup job's version `v` renumbered as job `id` (instance `snf-<id>`).
pub fn job_version(id: u64, v: &str) -> Value {
    let mut j = startup_version(v);
    j["id"] = id.into();
    j["ops"][0]["input"]["instance_name"] = format!("snf-{id}").into();
    j
}

/// Write like Ganeti: temp name beside the target, fsync, rename.
pub fn write_like_ganeti(dir: &Path, name: &str, content: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!("{name}-{}-0.tmp", std::process::id()));
    let mut f = fs::File::create(&tmp).unwrap();
    f.write_all(content).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(&tmp, dir.join(name)).unwrap();
}

pub fn write_job(queue: &Path, id: u64, job: &Value) {
    write_like_ganeti(queue, &format!("job-{id}"), job.to_string().as_bytes());
}

/// Archive like Ganeti: one rename into archive/<id / 10000>/.
pub fn archive_job(queue: &Path, id: u64) {
    let dir = queue.join("archive").join((id / 10000).to_string());
    fs::create_dir_all(&dir).unwrap();
    fs::rename(
        queue.join(format!("job-{id}")),
        dir.join(format!("job-{id}")),
    )
    .unwrap();
}

/// A message as the consumer received it.
#[derive(Debug, Clone)]
pub struct Got {
    pub routing_key: String,
    pub body: Value,
    pub persistent: bool,
    pub content_type: Option<String>,
}

/// Declare `exchange` as the daemons do: topic, durable.
pub async fn declare_exchange(ch: &lapin::Channel, exchange: &str) {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// A consumer bound with `#` to a test's own exchange.
pub struct Consumer {
    rx: tokio::sync::mpsc::UnboundedReceiver<Got>,
    _conn: Connection,
}

impl Consumer {
    pub async fn new(exchange: &str) -> Consumer {
        Consumer::with_url(&amqp_url(), exchange).await
    }

    /// A consumer on another broker (the private TLS node of `rabbitmq.rs`).
    pub async fn with_url(url: &str, exchange: &str) -> Consumer {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running (make check starts it)");
        let ch = conn.create_channel().await.unwrap();
        declare_exchange(&ch, exchange).await;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            q.name().clone(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let body: Value = serde_json::from_slice(&d.data).expect("message body is JSON");
                let _ = tx.send(Got {
                    routing_key: d.routing_key.to_string(),
                    body,
                    persistent: d.properties.delivery_mode() == &Some(2),
                    content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
                });
            }
        });
        Consumer { rx, _conn: conn }
    }

    /// The next message, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Got> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collect messages until `done` says so or `timeout` passes.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Got]) -> bool,
    ) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next(left).await {
                Some(g) => got.push(g),
                None => break,
            }
        }
        got
    }

    /// Nothing more arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(g) = self.next(quiet).await {
            panic!("unexpected message: {} {}", g.routing_key, g.body);
        }
    }
}

/// Per job: statuses in order of first arrival, and the raw sequence.
pub fn by_job(got: &[Got]) -> BTreeMap<u64, Vec<String>> {
    let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for g in got {
        let id = g.body["jobId"].as_u64().expect("jobId");
        m.entry(id)
            .or_default()
            .push(g.body["status"].as_str().unwrap().to_string());
    }
    m
}

/// Drop repeats (duplicates of a message in flight at a cut or crash are allowed), keep
/// first occurrences in order.
pub fn first_occurrences(seq: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seq {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// A Ganeti-like sandbox: queue dir, data dir with ssconf, spool dir.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub queue: PathBuf,
    pub data: PathBuf,
    pub spool: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub exchange: String,
    /// Pass --debug to the daemon (off for benchmarks).
    pub debug: bool,
}

pub const NODE: &str = "node1.example.test";

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        let data = dir.path().join("data");
        fs::create_dir_all(&queue).unwrap();
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("ssconf_master_node"), format!("{NODE}\n")).unwrap();
        fs::write(data.join("ssconf_cluster_name"), "cluster.example.test\n").unwrap();
        let s = Sandbox {
            queue,
            data,
            spool: dir.path().join("spool"),
            pid_file: dir.path().join("eventd.pid"),
            log: dir.path().join("eventd.log"),
            config: dir.path().join("gtools.conf"),
            exchange: unique("hk-test"),
            debug: true,
            dir,
        };
        s.write_config(&amqp_url(), &s.exchange.clone(), "");
        s
    }

    /// Write gtools.conf (`%` doubled: ConfigParser interpolation).
    pub fn write_config(&self, url: &str, exchange: &str, extra: &str) {
        fs::write(
            &self.config,
            format!(
                "[gtools]\namqp_hosts = {}\nexchange_ganeti = {exchange}\nnode_name = {NODE}\n{extra}\n",
                url.replace('%', "%%")
            ),
        )
        .unwrap();
    }

    pub fn eventd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-eventd"));
        c.arg("--config")
            .arg(&self.config)
            .arg("--queue-dir")
            .arg(&self.queue)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--spool-dir")
            .arg(&self.spool)
            .arg("--pid-file")
            .arg(&self.pid_file)
            .arg("--log")
            .arg(&self.log);
        if self.debug {
            c.arg("--debug");
        }
        c
    }

    /// Start the daemon in the foreground (as start-stop-daemon would) and wait until
    /// it has written its pidfile and finished its start-up scan.
    pub fn start(&self) -> Daemon {
        self.start_with(|_| {})
    }

    pub fn start_with(&self, f: impl FnOnce(&mut Command)) -> Daemon {
        let mut c = self.eventd();
        f(&mut c);
        let before = self.log_text().matches(" started: ").count();
        let child = c
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child) };
        wait_for(Duration::from_secs(10), || {
            self.log_text().matches(" started: ").count() > before
        });
        // The start-up rescan runs right after the "started" line.
        std::thread::sleep(Duration::from_millis(200));
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn spool_entries(&self) -> usize {
        fs::read_dir(&self.spool)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".msgs")
                })
                .count()
            })
            .unwrap_or(0)
    }
}

pub struct Daemon {
    pub child: Option<Child>,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.take().unwrap().wait().unwrap()
    }

    pub fn kill9(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.take().unwrap().wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP proxy in front of RabbitMQ that a test can cut: `cut()` drops every live
/// connection and refuses new ones until `restore()`.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                if !u.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, up, conns }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
