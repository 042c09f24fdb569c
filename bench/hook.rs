//! Cost of one snf-ganeti-hook run (process start to exit), as Ganeti pays it: with a
//! live RabbitMQ (publish + confirm), with the broker down (straight to the spool), and
//! as a non-master (nothing to do). Run with `cargo bench --bench hook`. Not a test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn env() -> BTreeMap<String, String> {
    let p = fixture("ganeti/hook-env/instance-start-post-inst1-diskless.env");
    hostkit::ganeti::hookenv::parse_env_dump(&std::fs::read_to_string(p).unwrap())
}

fn run_many(sb: &Sandbox, env: &BTreeMap<String, String>, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-hook"))
            .env_clear()
            .envs(env)
            .env("SNF_GTOOLS_CONFIG", &sb.config)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        out.push(t.elapsed());
        assert!(st.success());
    }
    out.sort();
    out
}

fn row(name: &str, d: &[Duration]) {
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    println!(
        "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        d.len(),
        ms(d[d.len() / 2]),
        ms(d[d.len() * 99 / 100]),
        ms(d[d.len() - 1])
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n = std::env::var("HK_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let sb = Sandbox::new();
    let spool = format!("spool_dir = {}\n", sb.spool.display());
    let e = env();
    let mut c = Consumer::new(&sb.exchange).await;

    println!("| snf-ganeti-hook run | runs | median | p99 | max |");
    println!("|---|---|---|---|---|");
    sb.write_config(&amqp_url(), &sb.exchange.clone(), &spool);
    run_many(&sb, &e, 10);
    row(
        "live broker (connect, publish, confirm)",
        &run_many(&sb, &e, n),
    );
    let got = c
        .collect_until(Duration::from_secs(30), |g| g.len() >= n + 10)
        .await;
    assert_eq!(got.len(), n + 10, "every run's message arrived");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    sb.write_config(&url, &sb.exchange.clone(), &spool);
    row(
        "broker down (connection refused, spooled)",
        &run_many(&sb, &e, n),
    );
    assert_eq!(sb.spool_entries(), n, "every run spooled its message");

    let mut other = e.clone();
    other.insert("GANETI_MASTER".into(), "node2.example.test".into());
    row("not the master (nothing sent)", &run_many(&sb, &other, n));
}
