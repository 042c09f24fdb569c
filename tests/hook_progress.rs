//! snf-ganeti-hook and snf-progress-monitor against the real RabbitMQ, with the hook
//! environments captured from Ganeti 3.0.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn hook_env(name: &str) -> BTreeMap<String, String> {
    hostkit::ganeti::hookenv::parse_env_dump(
        &fs::read_to_string(fixture(&format!("ganeti/hook-env/{name}"))).unwrap(),
    )
}

/// Run the hook as Ganeti does: clean environment, cwd /, stdin /dev/null.
fn run_hook(sb: &Sandbox, env: &BTreeMap<String, String>) -> (i32, String, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-hook"))
        .env_clear()
        .envs(env)
        .env("SNF_GTOOLS_CONFIG", &sb.config)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

fn spool_config(sb: &Sandbox, url: &str, extra: &str) {
    sb.write_config(
        url,
        &sb.exchange.clone(),
        &format!("spool_dir = {}\n{extra}", sb.spool.display()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reported_post_hook_publishes_net_status() {
    let sb = Sandbox::new();
    spool_config(&sb, &amqp_url(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    for f in [
        "instance-add-post-inst1-diskless.env",
        "instance-start-post-inst1-diskless.env",
        "instance-reboot-post-inst1-diskless.env",
        "instance-modify-post-inst1-diskless.env",
        "instance-add-post-inst2-file.env",
    ] {
        let env = hook_env(f);
        let (code, err, _) = run_hook(&sb, &env);
        assert_eq!(code, 0, "{f}: {err}");
        let g = c
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no message for {f}"));
        let inst = &env["GANETI_POST_INSTANCE_NAME"];
        assert_eq!(
            g.routing_key,
            format!("ganeti.{}.event.net", inst.split('-').next().unwrap())
        );
        assert!(g.persistent);
        let mut body = g.body.clone();
        let t = body.as_object_mut().unwrap().remove("event_time").unwrap();
        assert!(
            t[0].as_u64().unwrap() > 1_700_000_000 && t[1].as_u64().unwrap() < 1_000_000,
            "{t}"
        );
        assert_eq!(
            body,
            json!({
                "type": "ganeti-net-status",
                "instance": inst,
                "nics": [{
                    "mac": env["GANETI_POST_INSTANCE_NIC0_MAC"],
                    "ip": null,
                    "link": "ganeti0",
                    "network": null,
                }],
            }),
            "{f}"
        );
    }
    // Stop post does nothing, successfully.
    let (code, err, _) = run_hook(&sb, &hook_env("instance-stop-post-inst1-diskless.env"));
    assert_eq!((code, err.as_str()), (0, ""));
    c.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(
        sb.spool_entries(),
        0,
        "nothing spooled while the broker is up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_master_sends_and_bad_environments_fail_cleanly() {
    let sb = Sandbox::new();
    spool_config(&sb, &amqp_url(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let base = hook_env("instance-start-post-inst1-diskless.env");

    let mut e = base.clone();
    e.insert("GANETI_MASTER".into(), "node2.example.test".into());
    assert_eq!(run_hook(&sb, &e).0, 0);

    // (variable, new value or None to remove it, the one line expected on stderr)
    let cases = [
        ("GANETI_POST_INSTANCE_NAME", None, "snf-ganeti-hook: missing environment variable GANETI_POST_INSTANCE_NAME"),
        ("GANETI_POST_INSTANCE_NIC0_MAC", Some("aa:bb"), "snf-ganeti-hook: GANETI_POST_INSTANCE_NIC0_MAC=\"aa:bb\": not a MAC address (aa:bb:cc:dd:ee:ff)"),
        ("GANETI_POST_INSTANCE_NIC3_IP", Some("10.0.0.1"), "snf-ganeti-hook: NIC variables name indexes [0, 3], but GANETI_POST_INSTANCE_NIC_COUNT=1 (expected 0..1)"),
        ("GANETI_HOOKS_PHASE", Some("pre"), "snf-ganeti-hook: GANETI_HOOKS_PHASE=\"pre\": install this hook in *-post.d only"),
    ];
    for (var, value, want) in cases {
        let mut e = base.clone();
        match value {
            Some(v) => e.insert(var.to_string(), v.to_string()),
            None => e.remove(var),
        };
        let (code, err, _) = run_hook(&sb, &e);
        assert_eq!(code, 1, "{want}");
        assert_eq!(err.trim_end(), want);
        assert_eq!(err.lines().count(), 1);
    }
    fs::write(&sb.config, "[hook]\ntimeout = forever\n").unwrap();
    let (code, err, _) = run_hook(&sb, &base);
    assert_eq!(code, 1);
    assert!(err.contains("[hook] timeout = \"forever\""), "{err}");
    c.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(sb.spool_entries(), 0, "nothing half-sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_silent_broker_spools_within_the_bound_and_eventd_delivers() {
    let sb = Sandbox::new();
    let env = hook_env("instance-start-post-inst1-diskless.env");
    // Refused: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    spool_config(&sb, &closed_url, "");
    let (code, err, took) = run_hook(&sb, &env);
    assert_eq!(code, 0, "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(sb.spool_entries(), 1);

    // Silent: accepts the connection and never answers. The hook is bounded by its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        silent.local_addr().unwrap().port()
    );
    spool_config(&sb, &silent_url, "[hook]\ntimeout = 1.5\n");
    let (code, err, took) = run_hook(&sb, &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        took < Duration::from_millis(2500),
        "bounded by the 1.5 s timeout: {took:?}"
    );
    assert_eq!(sb.spool_entries(), 2);
    drop(silent);

    // snf-ganeti-eventd drains the shared spool once the broker is reachable.
    spool_config(&sb, &amqp_url(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let _d = sb.start();
    for _ in 0..2 {
        let g = c
            .next(Duration::from_secs(15))
            .await
            .expect("spooled hook message delivered");
        assert_eq!(g.body["type"], "ganeti-net-status");
        assert_eq!(g.body["instance"], "inst1.example.test");
    }
    assert!(wait_for(Duration::from_secs(5), || sb.spool_entries() == 0));
}

fn monitor(sb: &Sandbox, instance: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_snf-progress-monitor"))
        .arg(instance)
        .env("SNF_GTOOLS_CONFIG", &sb.config)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_stream_in_pieces_with_garbage() {
    let sb = Sandbox::new();
    spool_config(&sb, &amqp_url(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let mut m = monitor(&sb, "snf-42");
    let stream = concat!(
        r#"{"type":"image-info","messages":["Starting"],"timestamp":1.5}"#,
        r#"{"type":"image-copy-progress","position":10,"total":100,"progress":10.0,"timestamp":2.0}"#,
        "garbage!",
        "\n",
        r#"{"type":"image-helper","subtype":"task-start","task":"FixPartitionTable","timestamp":3.0}"#,
        r#"{"type":"image-error","messages":["}{ tricky"],"timestamp":4.0}"#,
    );
    let mut stdin = m.stdin.take().unwrap();
    for chunk in stream.as_bytes().chunks(13) {
        stdin.write_all(chunk).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(stdin);
    let out = m.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let garbage_at = stream.find("garbage!").unwrap();
    assert!(
        err.contains(&format!("skipping garbage at byte {garbage_at}")),
        "{err}"
    );
    assert_eq!(err.matches("[MONITOR] ").count(), 4, "{err}");
    let got = c
        .collect_until(Duration::from_secs(10), |g| g.len() >= 4)
        .await;
    let types: Vec<&str> = got
        .iter()
        .map(|g| g.body["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "image-info",
            "image-copy-progress",
            "image-helper",
            "image-error"
        ]
    );
    for g in &got {
        assert_eq!(g.routing_key, "ganeti.snf.event.progress");
        assert_eq!(g.body["instance"], "snf-42");
        assert_eq!(g.body["event_time"].as_array().map(Vec::len), Some(2));
    }
    assert_eq!(got[3].body["messages"], json!(["}{ tricky"]));
    // The [MONITOR] lines carry the same objects.
    let first: Value = serde_json::from_str(
        err.lines()
            .find(|l| l.starts_with("[MONITOR] "))
            .unwrap()
            .trim_start_matches("[MONITOR] "),
    )
    .unwrap();
    assert_eq!(first["messages"], json!(["Starting"]));
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_or_an_absent_broker_loses_nothing() {
    let sb = Sandbox::new();
    // No broker: everything goes to the spool, the monitor still exits 0.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    spool_config(&sb, &url, "");
    let mut m = monitor(&sb, "snf-7");
    let mut stdin = m.stdin.take().unwrap();
    for i in 0..20 {
        write!(
            stdin,
            "{{\"type\":\"image-copy-progress\",\"progress\":{i}}}"
        )
        .unwrap();
    }
    // The writer dies mid-object.
    stdin.write_all(br#"{"type":"image-info","mess"#).unwrap();
    drop(stdin);
    let out = m.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stream ended inside an object"), "{err}");
    assert!(err.contains("20 messages spooled"), "{err}");

    // eventd delivers them, in order.
    spool_config(&sb, &amqp_url(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let _d = sb.start();
    let got = c
        .collect_until(Duration::from_secs(15), |g| g.len() >= 20)
        .await;
    let progress: Vec<u64> = got
        .iter()
        .map(|g| g.body["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, (0..20).collect::<Vec<_>>());
    assert!(got
        .iter()
        .all(|g| g.routing_key == "ganeti.snf.event.progress"));
}

#[test]
fn progress_monitor_needs_exactly_one_instance() {
    let out = Command::new(env!("CARGO_BIN_EXE_snf-progress-monitor"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_snf-progress-monitor"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("snf-progress-monitor {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-hook"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("snf-ganeti-hook {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_objects_with_the_broker_down_make_few_spool_entries_and_all_arrive() {
    let sb = Sandbox::new();
    let proxy = Proxy::start().await;
    proxy.cut();
    spool_config(&sb, &proxy.url(), "");
    let mut m = monitor(&sb, "snf-9");
    let mut stdin = m.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..10_000 {
            write!(
                stdin,
                "{{\"type\":\"image-copy-progress\",\"progress\":{i}}}"
            )
            .unwrap();
        }
    });
    let out = m.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("10000 messages spooled"), "{err}");
    // Batched: one entry per read or per 1000 messages, not one fsynced file each.
    let entries = sb.spool_entries();
    assert!(
        (10..=100).contains(&entries),
        "{entries} spool entries for 10000 messages"
    );

    // The broker is back: eventd delivers every one, in order.
    proxy.restore();
    spool_config(&sb, &proxy.url(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let _d = sb.start();
    let got = c
        .collect_until(Duration::from_secs(60), |g| g.len() >= 10_000)
        .await;
    let progress: Vec<u64> = got
        .iter()
        .map(|g| g.body["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, (0..10_000).collect::<Vec<_>>());
    assert!(wait_for(Duration::from_secs(10), || sb.spool_entries() == 0));
}

#[test]
fn a_full_spool_is_an_error_and_a_non_zero_exit_never_a_silent_drop() {
    let sb = Sandbox::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    spool_config(&sb, &url, "spool_max_entries = 1\n");
    let mut m = monitor(&sb, "snf-9");
    let mut stdin = m.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..3000 {
            if write!(stdin, "{{\"progress\":{i}}}").is_err() {
                break;
            }
        }
    });
    let out = m.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("snf-progress-monitor: ")
            && last.contains("holds 1 entries, cap is 1 (spool_max_entries)"),
        "{err}"
    );
    assert_eq!(sb.spool_entries(), 1);
}

#[test]
fn an_object_over_max_object_bytes_is_named_and_skipped() {
    let sb = Sandbox::new();
    spool_config(
        &sb,
        &amqp_url(),
        "[progress-monitor]\nmax_object_bytes = 100\n",
    );
    let mut m = monitor(&sb, "snf-9");
    let mut stdin = m.stdin.take().unwrap();
    write!(stdin, "{{\"big\":\"{}\"}}{{\"ok\":1}}", "x".repeat(500)).unwrap();
    drop(stdin);
    let out = m.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("skipping garbage at byte 0: object larger than max_object_bytes (100 bytes)"),
        "{err}"
    );
    assert_eq!(err.matches("[MONITOR] ").count(), 1, "{err}");
}
