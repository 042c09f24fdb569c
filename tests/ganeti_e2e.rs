//! End to end on a real Ganeti 3.0 cluster (Debian's `ganeti`, fake hypervisor,
//! diskless template) that tests/e2e/ganeti-cluster.sh brings up inside network, UTS
//! and mount namespaces of its own. snf-ganeti-eventd watches the real job queue and
//! snf-ganeti-hook runs as Ganeti's post-hook inside the namespace, reaching RabbitMQ
//! through the script's Unix-socket relay. Needs root; tears everything down.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/ganeti-cluster.sh");
const INSTANCE: &str = "inst1.example.test";
const HOOK_PATHS: [&str; 5] = [
    "instance-add",
    "instance-modify",
    "instance-reboot",
    "instance-start",
    "instance-stop",
];

fn hook_link(hpath: &str) -> PathBuf {
    Path::new("/etc/ganeti/hooks")
        .join(format!("{hpath}-post.d"))
        .join("00-snf-ganeti-hook")
}

/// Tears the cluster and the hook links down whatever happens to the test.
struct Cluster;

impl Cluster {
    fn up() -> Cluster {
        let c = Cluster;
        let st = Command::new("bash").arg(SCRIPT).arg("up").status().unwrap();
        assert!(st.success(), "ganeti-cluster.sh up failed");
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in HOOK_PATHS {
            let _ = fs::remove_file(hook_link(h));
        }
        let st = Command::new("bash")
            .arg(SCRIPT)
            .arg("down")
            .status()
            .unwrap();
        assert!(
            st.success() || std::thread::panicking(),
            "ganeti-cluster.sh down left something behind"
        );
    }
}

fn gnt(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_life_cycle_on_a_real_cluster() {
    let sb = Sandbox::new();
    let _cluster = Cluster::up();

    // The hook as Ganeti will run it: environment reset, so a wrapper names the config.
    let wrapper = sb.dir.path().join("snf-ganeti-hook");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --config {}\n",
            env!("CARGO_BIN_EXE_snf-ganeti-hook"),
            sb.config.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    for h in HOOK_PATHS {
        let link = hook_link(h);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&wrapper, &link).unwrap();
    }
    sb.write_config(
        &amqp_url(),
        &sb.exchange.clone(),
        &format!("spool_dir = {}\n", sb.spool.display()),
    );

    let mut c = Consumer::new(&sb.exchange).await;
    let mut eventd = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-eventd"));
    eventd
        .arg("--config")
        .arg(&sb.config)
        .args([
            "--queue-dir",
            "/var/lib/ganeti/queue",
            "--data-dir",
            "/var/lib/ganeti",
        ])
        .arg("--spool-dir")
        .arg(&sb.spool)
        .arg("--pid-file")
        .arg(&sb.pid_file)
        .arg("--log")
        .arg(&sb.log)
        .args(["--node-name", NODE, "--debug"]);
    let _d = Daemon {
        child: Some(eventd.stdin(Stdio::null()).spawn().unwrap()),
    };
    assert!(wait_for(Duration::from_secs(10), || sb
        .log_text()
        .contains(" started: ")));

    let os = "hostkit-dummy+default";
    let ops: [(&str, Vec<&str>); 6] = [
        (
            "OP_INSTANCE_CREATE",
            vec![
                "gnt-instance",
                "add",
                "-t",
                "diskless",
                "-o",
                os,
                "-n",
                NODE,
                "--net",
                "0",
                "-B",
                "memory=128M",
                "--no-ip-check",
                "--no-install",
                "--no-start",
                INSTANCE,
            ],
        ),
        (
            "OP_INSTANCE_STARTUP",
            vec!["gnt-instance", "startup", INSTANCE],
        ),
        (
            "OP_INSTANCE_REBOOT",
            vec!["gnt-instance", "reboot", INSTANCE],
        ),
        (
            "OP_INSTANCE_SET_PARAMS",
            vec!["gnt-instance", "modify", "-B", "memory=256M", INSTANCE],
        ),
        (
            "OP_INSTANCE_SHUTDOWN",
            vec!["gnt-instance", "shutdown", INSTANCE],
        ),
        (
            "OP_INSTANCE_REMOVE",
            vec!["gnt-instance", "remove", "-f", INSTANCE],
        ),
    ];
    for (_, cmd) in &ops {
        gnt(cmd);
    }

    // Every status of every op, in order; and one net-status per reported hook.
    let got = c
        .collect_until(Duration::from_secs(30), |g| {
            let done = g
                .iter()
                .filter(|m| m.body["instance"] == INSTANCE && m.body["status"] == "success")
                .count();
            done >= ops.len()
                && g.iter()
                    .filter(|m| m.body["type"] == "ganeti-net-status")
                    .count()
                    >= 4
        })
        .await;
    let mut per_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for m in got
        .iter()
        .filter(|m| m.body["type"] == "ganeti-op-status" && m.body["instance"] == INSTANCE)
    {
        assert_eq!(m.routing_key, "ganeti.inst1.example.test.event.op");
        assert_eq!(m.body["cluster"], "cluster.example.test");
        let op = ops
            .iter()
            .find(|(id, _)| m.body["operation"] == *id)
            .map(|(id, _)| *id)
            .expect("one of our ops");
        per_op
            .entry(op)
            .or_default()
            .push(m.body["status"].as_str().unwrap().to_string());
    }
    for (op, _) in &ops {
        assert_eq!(
            per_op.get(op).map(|s| first_occurrences(s)),
            Some(vec![
                "queued".into(),
                "waiting".into(),
                "running".into(),
                "success".into()
            ]),
            "{op}: {:?}\n{}",
            per_op.get(op),
            sb.log_text()
        );
    }
    let create_success = got
        .iter()
        .find(|m| m.body["operation"] == "OP_INSTANCE_CREATE" && m.body["status"] == "success")
        .unwrap();
    let nics = create_success.body["instance_nics"]
        .as_array()
        .expect("instance_nics from config.data");
    assert_eq!(nics.len(), 1);
    let mac = nics[0]["mac"].as_str().unwrap().to_string();
    assert_eq!(nics[0]["link"], "ganeti0");
    assert_eq!(nics[0]["mode"], "bridged");
    let modify_success = got
        .iter()
        .find(|m| m.body["operation"] == "OP_INSTANCE_SET_PARAMS" && m.body["status"] == "success")
        .unwrap();
    assert_eq!(modify_success.body["job_fields"]["beparams"]["memory"], 256);

    let net: Vec<&Got> = got
        .iter()
        .filter(|m| m.body["type"] == "ganeti-net-status")
        .collect();
    assert_eq!(
        net.len(),
        4,
        "add, start, reboot and modify post-hooks (stop sends nothing): {net:?}"
    );
    for m in &net {
        assert_eq!(m.routing_key, "ganeti.inst1.example.test.event.net");
        assert_eq!(m.body["instance"], INSTANCE);
        assert_eq!(m.body["nics"][0]["mac"], Value::String(mac.clone()));
        assert_eq!(m.body["nics"][0]["link"], "ganeti0");
    }
    assert_eq!(
        sb.spool_entries(),
        0,
        "the hooks published directly through the relay"
    );
}
