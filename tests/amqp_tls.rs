//! amqps:// against a private RabbitMQ node with a TLS listener that requires a client
//! certificate (tests/common/rabbitmq.rs), driven through snf-progress-monitor,
//! snf-ganeti-hook and snf-ganeti-eventd. Consumers read over the node's plain listener.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cmd::{assert_one_line_error, finish};
use common::rabbitmq::TlsBroker;
use common::*;

/// `[gtools]` lines for the TLS settings; `ca` None means the system store.
fn tls_keys(b: &TlsBroker, ca: Option<&str>, client_cert: bool) -> String {
    let mut s = String::new();
    if let Some(ca) = ca {
        s += &format!("amqp_tls_ca_file = {}\n", b.file(ca).display());
    }
    if client_cert {
        s += &format!(
            "amqp_tls_cert_file = {}\namqp_tls_key_file = {}\n",
            b.file("client.pem").display(),
            b.file("client.key").display()
        );
    }
    s
}

fn configure(sb: &Sandbox, url: &str, tls: &str) {
    sb.write_config(
        url,
        &sb.exchange.clone(),
        &format!("spool_dir = {}\n{tls}", sb.spool.display()),
    );
}

/// Feed `objects` to snf-progress-monitor; its exit code and stderr.
fn monitor(sb: &Sandbox, objects: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_snf-progress-monitor"))
        .arg("snf-7")
        .env("SNF_GTOOLS_CONFIG", &sb.config)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A configuration error ends the monitor before it reads: a broken pipe here is
    // that, and its exit code and stderr say what happened.
    for o in objects {
        if stdin.write_all(o.as_bytes()).is_err() {
            break;
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// stderr without the `[MONITOR]` echo lines.
fn errors(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("[MONITOR] "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_broker_with_client_certificate_gets_every_message() {
    let b = TlsBroker::get();
    let sb = Sandbox::new();
    let mut c = Consumer::with_url(&b.plain_url(), &sb.exchange).await;

    // By IP address and by DNS name: both are in the certificate's subjectAltName.
    for host in ["127.0.0.1", "localhost"] {
        configure(&sb, &b.amqps_url(host), &tls_keys(b, Some("ca.pem"), true));
        let (code, err) = monitor(&sb, &[r#"{"progress":1}"#, r#"{"progress":2}"#]);
        assert_eq!((code, errors(&err).as_str()), (0, ""), "{host}: {err}");
        for want in [1, 2] {
            let g = c.next(Duration::from_secs(10)).await.expect("delivered");
            assert_eq!(g.routing_key, "ganeti.snf.event.progress");
            assert_eq!(g.body["progress"], want);
            assert_eq!(g.body["instance"], "snf-7");
        }
    }

    // The hook reads the same [gtools] keys.
    let env: BTreeMap<String, String> = hostkit::ganeti::hookenv::parse_env_dump(
        &fs::read_to_string(fixture(
            "ganeti/hook-env/instance-start-post-inst1-diskless.env",
        ))
        .unwrap(),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-hook"))
        .env_clear()
        .envs(&env)
        .env("SNF_GTOOLS_CONFIG", &sb.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let g = c.next(Duration::from_secs(10)).await.expect("hook message");
    assert_eq!(g.body["type"], "ganeti-net-status");
    assert_eq!(sb.spool_entries(), 0, "nothing spooled while TLS works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_is_refused_loudly_and_the_message_kept_for_eventd() {
    let b = TlsBroker::get();
    let sb = Sandbox::new();
    let mut c = Consumer::with_url(&b.plain_url(), &sb.exchange).await;
    let url = b.amqps_url("127.0.0.1");
    // (TLS settings, broker host, what the error line must name)
    let cases = [
        // A CA file that did not sign the server's certificate.
        (
            tls_keys(b, Some("other-ca.pem"), true),
            "127.0.0.1",
            "UnknownIssuer",
        ),
        // No CA file: the system store does not know the test CA.
        (tls_keys(b, None, true), "127.0.0.1", "UnknownIssuer"),
        // The right CA, but the certificate is not for 127.0.0.2.
        (
            tls_keys(b, Some("ca.pem"), true),
            "127.0.0.2",
            "certificate not valid for name \"127.0.0.2\"",
        ),
    ];
    for (i, (tls, host, what)) in cases.iter().enumerate() {
        configure(&sb, &b.amqps_url(host), tls);
        let (code, err) = monitor(&sb, &[&format!(r#"{{"case":{i}}}"#)]);
        assert_eq!(code, 1, "case {i}: {err}");
        let err = errors(&err);
        assert_one_line_error("snf-progress-monitor", &err, what);
        assert_one_line_error("snf-progress-monitor", &err, "TLS with the broker failed");
        assert_one_line_error("snf-progress-monitor", &err, "1 message(s) spooled");
        assert!(!err.contains("guest:guest"), "password in {err}");
        assert_eq!(
            sb.spool_entries(),
            i + 1,
            "case {i}: the message is spooled"
        );
    }
    c.expect_silence(Duration::from_millis(300)).await;

    // Fixed configuration: eventd delivers what was spooled, over amqps.
    configure(&sb, &url, &tls_keys(b, Some("ca.pem"), true));
    let d = sb.start();
    let got = c
        .collect_until(Duration::from_secs(20), |g| g.len() == cases.len())
        .await;
    let mut seen: Vec<u64> = got
        .iter()
        .map(|g| g.body["case"].as_u64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2], "{}", sb.log_text());
    assert!(wait_for(Duration::from_secs(5), || sb.spool_entries() == 0));
    assert!(d.stop().success());
    finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_broker_requires_must_be_configured() {
    let b = TlsBroker::get();
    let sb = Sandbox::new();
    configure(
        &sb,
        &b.amqps_url("127.0.0.1"),
        &tls_keys(b, Some("ca.pem"), false),
    );
    let (code, err) = monitor(&sb, &[r#"{"x":1}"#]);
    assert_eq!(code, 1, "{err}");
    let err = errors(&err);
    assert_one_line_error("snf-progress-monitor", &err, "TLS with the broker failed");
    // The broker's alert, or (TLS 1.3: the client's handshake is over before the broker
    // checks) the connection it then resets.
    assert!(
        err.contains("received fatal alert: CertificateRequired")
            || err.contains("does it require a client certificate"),
        "{err}"
    );
    assert_eq!(sb.spool_entries(), 1);

    // A certificate without its key is a configuration error, before anything is sent.
    configure(
        &sb,
        &b.amqps_url("127.0.0.1"),
        &format!(
            "amqp_tls_ca_file = {}\namqp_tls_cert_file = {}\n",
            b.file("ca.pem").display(),
            b.file("client.pem").display()
        ),
    );
    let (code, err) = monitor(&sb, &[r#"{"x":2}"#]);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error("snf-progress-monitor", &err, "both or neither");
    assert_eq!(sb.spool_entries(), 1);

    // eventd --check loads the TLS files too: a missing CA file is one line, exit 1.
    configure(
        &sb,
        &b.amqps_url("127.0.0.1"),
        "amqp_tls_ca_file = /nonexistent/ca.pem\n",
    );
    let out = common::cmd::run(sb.eventd().arg("--check"));
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        "snf-ganeti-eventd",
        &String::from_utf8_lossy(&out.stderr),
        "amqp_tls_*: /nonexistent/ca.pem: No such file or directory",
    );
    finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_no_connects_to_an_unverifiable_broker_with_a_warning() {
    let b = TlsBroker::get();
    let sb = Sandbox::new();
    let mut c = Consumer::with_url(&b.plain_url(), &sb.exchange).await;
    // No CA file (the system store cannot verify this server) and a name that does not
    // match: only verify = no lets this through.
    configure(
        &sb,
        &b.amqps_url("127.0.0.2"),
        &format!("{}amqp_tls_verify = no\n", tls_keys(b, None, true)),
    );
    let (code, err) = monitor(&sb, &[r#"{"insecure":true}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        errors(&err),
        "snf-progress-monitor: warning: TLS certificate verification of the AMQP broker is OFF \
         (amqp_tls_verify = no): anyone on the path can impersonate it"
    );
    let g = c.next(Duration::from_secs(10)).await.expect("delivered");
    assert_eq!(g.body["insecure"], true);
    assert_eq!(sb.spool_entries(), 0);
}
