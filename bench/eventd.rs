//! snf-ganeti-eventd end to end against the real RabbitMQ, beside the broker's own
//! ceiling on this machine. Run with `make bench` (or `cargo bench --bench eventd`);
//! results are printed as Markdown for BENCHMARKS.md. Not a test: nothing is asserted.
//!
//! - throughput: N job-file versions (each a new queued job, so one message each) are
//!   renamed into the queue while the daemon is frozen; time from SIGCONT until the
//!   consumer has all N (the daemon's capacity, not the writer's).
//! - latency: versions written at a fixed rate; per message, rename → delivery.
//! - ceiling: a bare lapin publisher with confirms (same window, same message bodies)
//!   publishing N messages to the same kind of exchange and consumer.
//! - RSS: the daemon's peak resident set (VmHWM) after the runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Write a version and rename it into place (the writer's fsync is Ganeti's cost, not
/// the daemon's, so it is left out).
fn put(sb: &Sandbox, id: u64, body: &[u8]) {
    let tmp = sb.queue.join(format!("job-{id}-1-0.tmp"));
    fs::File::create(&tmp).unwrap().write_all(body).unwrap();
    fs::rename(&tmp, sb.queue.join(format!("job-{id}"))).unwrap();
}

fn body(id: u64) -> Vec<u8> {
    job_version(id, "v1-queued").to_string().into_bytes()
}

fn status_kb(pid: i32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The daemon's capacity: N versions are renamed into the queue while the daemon is
/// frozen (SIGSTOP), so the writer cannot be the bottleneck; the clock starts at
/// SIGCONT and stops when the consumer has all N messages. N stays below the kernel's
/// default inotify queue (16384 events) so no rescan is involved.
async fn throughput(sb: &Sandbox, d: &Daemon, c: &mut Consumer, first: u64, n: u64) -> f64 {
    let tmps: Vec<_> = (first..first + n)
        .map(|id| {
            let tmp = sb.queue.join(format!("job-{id}-1-0.tmp"));
            fs::File::create(&tmp)
                .unwrap()
                .write_all(&body(id))
                .unwrap();
            (id, tmp)
        })
        .collect();
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    for (id, tmp) in &tmps {
        fs::rename(tmp, sb.queue.join(format!("job-{id}"))).unwrap();
    }
    let t0 = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGCONT);
    let got = c
        .collect_until(Duration::from_secs(300), |g| g.len() as u64 >= n)
        .await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got.len() as u64, n, "all messages arrived");
    n as f64 / secs
}

async fn latency(
    sb: &Sandbox,
    c: &mut Consumer,
    first: u64,
    rate: u64,
    secs: u64,
) -> (f64, f64, f64) {
    let n = rate * secs;
    let bodies: Vec<_> = (first..first + n).map(|id| (id, body(id))).collect();
    let mut sent_at = HashMap::new();
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let consumer = async {
        let mut at = HashMap::new();
        while (at.len() as u64) < n {
            match c.next(Duration::from_secs(30)).await {
                Some(g) => {
                    at.insert(g.body["jobId"].as_u64().unwrap(), Instant::now());
                }
                None => break,
            }
        }
        at
    };
    let writer = async {
        for (i, (id, b)) in bodies.iter().enumerate() {
            let due = t0 + interval * i as u32;
            tokio::time::sleep_until(due.into()).await;
            sent_at.insert(*id, Instant::now());
            put(sb, *id, b);
        }
    };
    let (at, ()) = tokio::join!(consumer, writer);
    let mut lat: Vec<f64> = at
        .iter()
        .filter_map(|(id, t)| {
            sent_at
                .get(id)
                .map(|s| t.duration_since(*s).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(lat.len() as u64, n, "all messages arrived");
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (q(0.50), q(0.99), lat[lat.len() - 1])
}

async fn ceiling(exchange: &str, c: &mut Consumer, n: u64, window: usize) -> f64 {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_exchange(&ch, exchange).await;
    // The same body the daemon sends for such a job.
    let sample = hostkit::ganeti::jobfile::parse(&body(1), None).unwrap();
    let m = hostkit::ganeti::messages::op_message(
        &sample,
        0,
        "cluster.example.test",
        &mut hostkit::ganeti::messages::NoLookup,
    )
    .unwrap();
    let payload = serde_json::to_vec(&m.body).unwrap();
    let t0 = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    for _ in 0..n {
        if inflight.len() >= window {
            let f: lapin::PublisherConfirm = inflight.pop_front().unwrap();
            f.await.unwrap();
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        inflight.push_back(
            ch.basic_publish(
                exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                props,
            )
            .await
            .unwrap(),
        );
    }
    for f in inflight {
        f.await.unwrap();
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let got = c
        .collect_until(Duration::from_secs(120), |g| g.len() as u64 >= n)
        .await;
    assert_eq!(got.len() as u64, n);
    rate
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_num("HK_BENCH_N", 10000);
    let rate = env_num("HK_BENCH_RATE", 1000);
    let secs = env_num("HK_BENCH_SECS", 10);
    let rounds = env_num("HK_BENCH_ROUNDS", 3);
    let mut sb = Sandbox::new();
    // A debug line per batch would be part of the cost; run as an operator would.
    sb.debug = false;
    let mut c = Consumer::new(&sb.exchange).await;
    let d = sb.start();
    let rss = |what: &str| {
        eprintln!(
            "rss {what}: {:.1} MB (peak {:.1} MB)",
            status_kb(d.pid(), "VmRSS:") as f64 / 1024.0,
            status_kb(d.pid(), "VmHWM:") as f64 / 1024.0
        )
    };
    rss("after start-up");
    let ceiling_exchange = format!("{}-ceiling", sb.exchange);
    let mut c2 = Consumer::new(&ceiling_exchange).await;
    // Warm up (connections, page cache).
    throughput(&sb, &d, &mut c, 1, 500).await;
    ceiling(&ceiling_exchange, &mut c2, 500, 256).await;

    println!("| round | snf-ganeti-eventd versions/s | broker ceiling msg/s (bare lapin, confirms, window 256) | ratio |");
    println!("|---|---|---|---|");
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let first = 1_000_000 * (r + 1);
        let e = throughput(&sb, &d, &mut c, first, n).await;
        rss(&format!("after round {}", r + 1));
        let b = ceiling(&ceiling_exchange, &mut c2, n, 256).await;
        println!("| {} | {e:.0} | {b:.0} | {:.0}% |", r + 1, 100.0 * e / b);
        ours.push(e);
        theirs.push(b);
        ratios.push(e / b);
    }
    println!(
        "| median | {:.0} | {:.0} | {:.0}% |",
        median(&mut ours),
        median(&mut theirs),
        100.0 * median(&mut ratios)
    );
    println!();
    println!(
        "| latency run ({rate} versions/s for {secs} s, rename → delivery) | p50 | p99 | max |"
    );
    println!("|---|---|---|---|");
    for r in 0..rounds {
        let first = 100_000_000 * (r + 1);
        let (p50, p99, max) = latency(&sb, &mut c, first, rate, secs).await;
        println!("| {} | {p50:.2} ms | {p99:.2} ms | {max:.2} ms |", r + 1);
        rss(&format!("after latency run {}", r + 1));
    }
    let hwm_mb = status_kb(d.pid(), "VmHWM:") as f64 / 1024.0;
    let rss_mb = status_kb(d.pid(), "VmRSS:") as f64 / 1024.0;
    let live = hostkit::synnefo::eventd::state::StateStore::peek(&sb.spool)
        .ok()
        .flatten()
        .map_or(0, |s| s.live_jobs());
    for l in sb
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        eprintln!("daemon: {l}");
    }
    println!();
    println!(
        "Daemon memory: peak {hwm_mb:.1} MB (VmHWM, during the {n}-version bursts), {rss_mb:.1} MB at the end (VmRSS), with {live} live (never archived) jobs in its state"
    );
}
