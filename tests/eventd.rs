//! snf-ganeti-eventd against the real RabbitMQ: exact messages, and nothing lost or
//! reordered through broker cuts, kill -9, downtime, archive renames, inotify overflow,
//! a full spool and a full disk.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use hostkit::synnefo::eventd::state::{State, StateStore};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const ALL: [&str; 4] = ["queued", "waiting", "running", "success"];
/// The versions that carry each of those statuses.
const ROUNDS: [&str; 4] = ["v1-queued", "v4-waiting", "v5-running", "v6-success"];

/// The daemon's recorded state (snapshot + journal), read as the daemon would.
fn recorded(sb: &Sandbox) -> State {
    StateStore::peek(&sb.spool)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Wait until the daemon has recorded (spooled) `status` for every job in `ids`.
fn wait_recorded(sb: &Sandbox, ids: impl Iterator<Item = u64> + Clone, status: &str) {
    let ok = wait_for(Duration::from_secs(30), || {
        let s = recorded(sb);
        ids.clone()
            .all(|id| s.job_marks(id).is_some_and(|m| m[0].0.as_str() == status))
    });
    assert!(
        ok,
        "daemon did not record {status} for all jobs; log:\n{}",
        sb.log_text()
    );
}

fn write_round(sb: &Sandbox, ids: impl Iterator<Item = u64>, v: &str) {
    for id in ids {
        write_job(&sb.queue, id, &job_version(id, v));
    }
}

async fn collect_all_success(c: &mut Consumer, n: usize, secs: u64) -> Vec<Got> {
    c.collect_until(Duration::from_secs(secs), |got| {
        got.iter()
            .filter(|g| g.body["status"] == "success")
            .map(|g| g.body["jobId"].as_u64())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= n
    })
    .await
}

fn assert_every_status_in_order(got: &[Got], ids: impl Iterator<Item = u64>, log: &str) {
    let per_job = by_job(got);
    for id in ids {
        let seq = per_job.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            first_occurrences(&seq),
            ALL,
            "job {id} got {seq:?}\nlog:\n{log}"
        );
    }
}

fn config_data(sb: &Sandbox) {
    fs::copy(
        fixture("ganeti/config.data.json"),
        sb.data.join("config.data"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_job_versions_become_the_exact_messages() {
    let sb = Sandbox::new();
    config_data(&sb);
    let mut c = Consumer::new(&sb.exchange).await;
    let d = sb.start();
    let base = |status: &str, t: Value| {
        json!({
            "type": "ganeti-op-status",
            "instance": "inst1.example.test",
            "job_fields": {},
            "tags": [],
            "operation": "OP_INSTANCE_STARTUP",
            "status": status,
            "jobId": 6,
            "logmsg": null,
            "result": null,
            "event_time": t,
            "cluster": "cluster.example.test",
        })
    };
    let mut success = base("success", json!([1795370263, 391693]));
    let info = instance_info_fixture();
    success["instance_nics"] = info["nics"].clone();
    success["instance_disks"] = info["disks"].clone();
    success["instance_hvparams"] = info["hvparams"].clone();
    let expected: BTreeMap<&str, Option<Value>> = BTreeMap::from([
        (
            "v1-queued",
            Some(base("queued", json!([1795370262, 734074]))),
        ),
        ("v2-queued", None),
        ("v3-queued", None),
        (
            "v4-waiting",
            Some(base("waiting", json!([1795370263, 9132]))),
        ),
        (
            "v5-running",
            Some(base("running", json!([1795370263, 18440]))),
        ),
        ("v6-success", Some(success)),
    ]);
    for v in STARTUP_VERSIONS {
        write_job(&sb.queue, 6, &startup_version(v));
        match &expected[v] {
            Some(want) => {
                let got = c
                    .next(Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|| panic!("no message for {v}\n{}", sb.log_text()));
                assert_eq!(&got.body, want, "{v}");
                assert_eq!(got.routing_key, "ganeti.inst1.example.test.event.op");
                assert!(got.persistent, "delivery mode 2");
                assert_eq!(got.content_type.as_deref(), Some("application/json"));
            }
            None => c.expect_silence(Duration::from_millis(500)).await,
        }
    }
    assert!(d.stop().success());
    assert!(!sb.pid_file.exists(), "pidfile removed on clean stop");
    assert_eq!(sb.spool_entries(), 0, "every confirmed entry removed");
}

/// instance_nics & co. as the fixture config.data gives them for inst1.
fn instance_info_fixture() -> Value {
    let cfg: Value =
        serde_json::from_slice(&fs::read(fixture("ganeti/config.data.json")).unwrap()).unwrap();
    let info = hostkit::ganeti::configdata::instance_info(&cfg, "inst1.example.test")
        .expect("inst1 in fixture");
    json!({"nics": info.nics, "disks": info.disks, "hvparams": info.hvparams})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_cut_mid_burst_loses_and_reorders_nothing() {
    let sb = Sandbox::new();
    let proxy = Proxy::start().await;
    sb.write_config(&proxy.url(), &sb.exchange.clone(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let _d = sb.start();
    let ids = 1..=150u64;
    for (i, v) in ROUNDS.iter().enumerate() {
        write_round(&sb, ids.clone(), v);
        if i == 1 {
            // Cut while round two is being published, and keep the broker away a while.
            std::thread::sleep(Duration::from_millis(30));
            proxy.cut();
        }
        wait_recorded(&sb, ids.clone(), ALL[i]);
        if i == 2 {
            proxy.restore();
        }
    }
    let got = collect_all_success(&mut c, ids.clone().count(), 60).await;
    assert_every_status_in_order(&got, ids, &sb.log_text());
    assert!(
        sb.log_text().contains("AMQP publishing stalled"),
        "the cut reached the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_point_loses_nothing() {
    let sb = Sandbox::new();
    let proxy = Proxy::start().await;
    sb.write_config(&proxy.url(), &sb.exchange.clone(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let ids = 1..=200u64;

    // 1. Killed mid-burst while publishing.
    let d = sb.start();
    write_round(&sb, ids.clone(), ROUNDS[0]);
    std::thread::sleep(Duration::from_millis(40));
    d.kill9();
    // 2. Restarted: whatever it had not read yet is found by the start-up scan.
    let d = sb.start();
    wait_recorded(&sb, ids.clone(), "queued");
    // 3. Broker away, messages only in the spool, then killed.
    proxy.cut();
    write_round(&sb, ids.clone(), ROUNDS[1]);
    wait_recorded(&sb, ids.clone(), "waiting");
    assert!(sb.spool_entries() > 0, "waiting messages are spooled");
    d.kill9();
    // 4. Ganeti moves on while the daemon is down.
    write_round(&sb, ids.clone(), ROUNDS[2]);
    // 5. Back with the broker: spool drained, downtime changes found, live ones follow.
    proxy.restore();
    let _d = sb.start();
    wait_recorded(&sb, ids.clone(), "running");
    write_round(&sb, ids.clone(), ROUNDS[3]);
    let got = collect_all_success(&mut c, ids.clone().count(), 60).await;
    assert_every_status_in_order(&got, ids, &sb.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_renames_and_downtime_are_caught() {
    let sb = Sandbox::new();
    let mut c = Consumer::new(&sb.exchange).await;
    let d = sb.start();
    // Job 1 finishes, then is archived (archive/ and archive/0/ created on the fly).
    write_job(&sb.queue, 1, &job_version(1, "v6-success"));
    let g = c
        .next(Duration::from_secs(10))
        .await
        .expect("job 1 success");
    assert_eq!(
        (g.body["jobId"].as_u64(), g.body["status"].as_str()),
        (Some(1), Some("success"))
    );
    archive_job(&sb.queue, 1);
    // Job 2 is seen running, and its final version only ever appears in the archive.
    write_job(&sb.queue, 2, &job_version(2, "v5-running"));
    let g = c
        .next(Duration::from_secs(10))
        .await
        .expect("job 2 running");
    assert_eq!(g.body["status"], "running");
    fs::remove_file(sb.queue.join("job-2")).unwrap();
    write_like_ganeti(
        &sb.queue.join("archive/0"),
        "job-2",
        job_version(2, "v6-success").to_string().as_bytes(),
    );
    let g = c
        .next(Duration::from_secs(10))
        .await
        .expect("job 2 success from the archive");
    assert_eq!(
        (g.body["jobId"].as_u64(), g.body["status"].as_str()),
        (Some(2), Some("success"))
    );
    // A second archive subdirectory, created while running.
    write_job(&sb.queue, 10001, &job_version(10001, "v6-success"));
    archive_job(&sb.queue, 10001);
    let g = c.next(Duration::from_secs(10)).await.expect("job 10001");
    assert_eq!(g.body["jobId"], 10001);
    c.expect_silence(Duration::from_millis(500)).await;
    assert!(d.stop().success());

    // While stopped: a new job runs, another finishes and is archived.
    write_job(&sb.queue, 3, &job_version(3, "v4-waiting"));
    write_job(&sb.queue, 4, &job_version(4, "v1-queued"));
    let _d = sb.start();
    write_job(&sb.queue, 4, &job_version(4, "v6-success"));
    archive_job(&sb.queue, 4);
    let got = c
        .collect_until(Duration::from_secs(10), |g| g.len() >= 3)
        .await;
    let per_job = by_job(&got);
    assert_eq!(per_job.get(&3), Some(&vec!["waiting".to_string()]));
    assert_eq!(
        per_job.get(&4).map(|s| first_occurrences(s)),
        Some(vec!["queued".to_string(), "success".to_string()])
    );
    assert!(
        !per_job.contains_key(&1) && !per_job.contains_key(&2),
        "archived jobs are not sent again: {got:?}"
    );
    c.expect_silence(Duration::from_millis(500)).await;
    let s = recorded(&sb);
    for id in [1, 2, 4, 10001] {
        assert!(
            s.job_marks(id).is_none() && s.is_done(id),
            "archived job {id} leaves the live state: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_overflow_triggers_a_rescan() {
    let sb = Sandbox::new();
    let mut c = Consumer::new(&sb.exchange).await;
    // The kernel takes the queue limit when the daemon calls inotify_init.
    let limit = "/proc/sys/fs/inotify/max_queued_events";
    let old = fs::read_to_string(limit).expect("tests run as root on Linux");
    fs::write(limit, "16").expect("tests run as root");
    let d = sb.start();
    fs::write(limit, old.trim()).unwrap();
    d.signal(Signal::SIGSTOP);
    let ids = 1..=100u64;
    write_round(&sb, ids.clone(), "v4-waiting");
    d.signal(Signal::SIGCONT);
    let got = c
        .collect_until(Duration::from_secs(20), |g| g.len() >= 100)
        .await;
    let per_job = by_job(&got);
    for id in ids {
        assert_eq!(
            per_job.get(&id).map(|s| first_occurrences(s)),
            Some(vec!["waiting".to_string()]),
            "job {id}"
        );
    }
    assert!(
        sb.log_text().contains("inotify queue overflowed"),
        "{}",
        sb.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_or_moved_queue_dir_is_watched_again_when_it_is_back() {
    let sb = Sandbox::new();
    let mut c = Consumer::new(&sb.exchange).await;
    let d = sb.start();
    write_job(&sb.queue, 1, &job_version(1, "v4-waiting"));
    let g = c.next(Duration::from_secs(10)).await.expect("job 1");
    assert_eq!(g.body["jobId"], 1);
    // Removed and recreated (a re-initialised cluster): IN_IGNORED on the old watch.
    fs::remove_dir_all(&sb.queue).unwrap();
    assert!(wait_for(Duration::from_secs(5), || sb
        .log_text()
        .contains("was removed or moved away")));
    fs::create_dir(&sb.queue).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || sb
            .log_text()
            .contains("is back: watching it again")),
        "{}",
        sb.log_text()
    );
    write_job(&sb.queue, 2, &job_version(2, "v4-waiting"));
    let g = c
        .next(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("job 2 not published after the rewatch\n{}", sb.log_text()));
    assert_eq!(g.body["jobId"], 2);
    // Moved away and replaced (IN_MOVE_SELF): the path is watched, not the old tree.
    let old = sb.queue.with_extension("old");
    fs::rename(&sb.queue, &old).unwrap();
    fs::create_dir(&sb.queue).unwrap();
    assert!(wait_for(Duration::from_secs(10), || sb
        .log_text()
        .matches("is back: watching it again")
        .count()
        == 2));
    write_job(&old, 4, &job_version(4, "v4-waiting"));
    write_job(&sb.queue, 3, &job_version(3, "v4-waiting"));
    let g = c.next(Duration::from_secs(10)).await.expect("job 3");
    assert_eq!(g.body["jobId"], 3);
    c.expect_silence(Duration::from_millis(500)).await;
    let _ = fs::remove_dir_all(&old);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_pauses_and_catches_up() {
    let sb = Sandbox::new();
    let proxy = Proxy::start().await;
    sb.write_config(
        &proxy.url(),
        &sb.exchange.clone(),
        "spool_max_bytes = 16384",
    );
    let mut c = Consumer::new(&sb.exchange).await;
    proxy.cut();
    let _d = sb.start();
    let ids = 1..=80u64;
    for id in ids.clone() {
        write_job(&sb.queue, id, &job_version(id, "v4-waiting"));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        wait_for(Duration::from_secs(10), || sb
            .log_text()
            .contains("is full")),
        "{}",
        sb.log_text()
    );
    proxy.restore();
    let got = c
        .collect_until(Duration::from_secs(40), |g| by_job(g).len() >= 80)
        .await;
    let per_job = by_job(&got);
    for id in ids {
        assert_eq!(
            per_job.get(&id).map(|s| first_occurrences(s)),
            Some(vec!["waiting".to_string()]),
            "job {id}\n{}",
            sb.log_text()
        );
    }
    assert!(wait_for(Duration::from_secs(10), || sb
        .log_text()
        .contains("publishing resumed")));
}

/// Unmounts on drop so a failing test does not leave a mount behind.
struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_and_catches_up() {
    let sb = Sandbox::new();
    fs::create_dir_all(&sb.spool).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24k", "tmpfs"])
        .arg(&sb.spool)
        .status()
        .unwrap();
    assert!(st.success(), "tests run as root and may mount a tmpfs");
    let _m = Tmpfs(sb.spool.clone());
    let proxy = Proxy::start().await;
    sb.write_config(&proxy.url(), &sb.exchange.clone(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    proxy.cut();
    let _d = sb.start();
    let ids = 1..=60u64;
    for id in ids.clone() {
        write_job(&sb.queue, id, &job_version(id, "v4-waiting"));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        wait_for(Duration::from_secs(10), || sb
            .log_text()
            .contains("No space left")),
        "{}",
        sb.log_text()
    );
    proxy.restore();
    let got = c
        .collect_until(Duration::from_secs(30), |g| by_job(g).len() >= 60)
        .await;
    let per_job = by_job(&got);
    for id in ids {
        assert_eq!(
            per_job.get(&id).map(|s| first_occurrences(s)),
            Some(vec!["waiting".to_string()]),
            "job {id}\n{}",
            sb.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_master_publishes() {
    let sb = Sandbox::new();
    fs::write(sb.data.join("ssconf_master_node"), "node2.example.test\n").unwrap();
    let mut c = Consumer::new(&sb.exchange).await;
    let _d = sb.start();
    write_job(&sb.queue, 6, &startup_version("v4-waiting"));
    c.expect_silence(Duration::from_millis(800)).await;
    // Master failover to this node: later changes are published, the past is not replayed.
    fs::write(sb.data.join("ssconf_master_node"), format!("{NODE}\n")).unwrap();
    write_job(&sb.queue, 6, &startup_version("v5-running"));
    let g = c
        .next(Duration::from_secs(10))
        .await
        .expect("running after failover");
    assert_eq!(g.body["status"], "running");
    c.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_files_are_logged_and_read_again_on_next_rename() {
    let sb = Sandbox::new();
    let mut c = Consumer::new(&sb.exchange).await;
    let _d = sb.start();
    write_like_ganeti(&sb.queue, "job-6", b"{\"id\": 6, \"ops\": [");
    write_like_ganeti(
        &sb.queue,
        "job-7",
        br#"{"id": 7, "ops": [{"input": {}, "status": "queued"}]}"#,
    );
    write_like_ganeti(&sb.queue, "job-8.tmp", b"garbage");
    c.expect_silence(Duration::from_millis(600)).await;
    let log = sb.log_text();
    assert!(
        log.contains(&format!(
            "skipping job file {}: not JSON",
            sb.queue.join("job-6").display()
        )),
        "{log}"
    );
    assert!(log.contains("job-7: op 0: input.OP_ID is missing"), "{log}");
    write_job(&sb.queue, 6, &startup_version("v4-waiting"));
    let g = c
        .next(Duration::from_secs(10))
        .await
        .expect("valid version published");
    assert_eq!(g.body["status"], "waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_exchange() {
    let sb = Sandbox::new();
    let mut c1 = Consumer::new(&sb.exchange).await;
    let other = unique("hk-test-reload");
    let mut c2 = Consumer::new(&other).await;
    let d = sb.start();
    write_job(&sb.queue, 1, &job_version(1, "v1-queued"));
    assert!(c1.next(Duration::from_secs(10)).await.is_some());
    sb.write_config(&amqp_url(), &other, "");
    d.signal(Signal::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || sb
        .log_text()
        .contains("configuration reloaded")));
    write_job(&sb.queue, 1, &job_version(1, "v4-waiting"));
    let g = c2
        .next(Duration::from_secs(10))
        .await
        .expect("message on the new exchange");
    assert_eq!(g.body["status"], "waiting");
    c1.expect_silence(Duration::from_millis(300)).await;
    // A broken config on reload keeps the running one.
    fs::write(&sb.config, "[gtools]\namqp_hosts = http://nope/\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || sb
        .log_text()
        .contains("reload failed, keeping the running configuration")));
    write_job(&sb.queue, 1, &job_version(1, "v5-running"));
    assert_eq!(
        c2.next(Duration::from_secs(10))
            .await
            .expect("still publishing")
            .body["status"],
        "running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_ending_in_a_slash_is_named_as_the_empty_vhost() {
    let sb = Sandbox::new();
    let url = "amqp://guest:guest@127.0.0.1:5672/";
    let hint = "vhost '' (the URL ends in '/'); write the default vhost '/' as %2f, \
                e.g. amqp://127.0.0.1:5672/%2f";
    let out = sb
        .eventd()
        .args(["--amqp", url, "--check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.trim(),
        format!("snf-ganeti-eventd: warning: amqp://guest:***@127.0.0.1:5672/: {hint}")
    );
    // At start, and in the broker's refusal (RabbitMQ: "vhost  not found").
    let d = sb.start_with(|c| {
        c.args(["--amqp", url]);
    });
    write_job(&sb.queue, 1, &job_version(1, "v1-queued"));
    assert!(
        wait_for(Duration::from_secs(10), || sb
            .log_text()
            .contains("connect: ")
            && sb.log_text().matches(hint).count() >= 2),
        "{}",
        sb.log_text()
    );
    assert!(!sb.log_text().contains("guest:guest"), "{}", sb.log_text());
    assert!(d.stop().success());
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr:?}");
    lines[0]
}

#[test]
fn bad_startup_input_is_one_line_and_non_zero() {
    let sb = Sandbox::new();
    let (code, err) = run(sb.eventd().args(["--amqp", "http://broker/"]));
    assert_eq!(code, 1);
    assert_eq!(
        one_line(&err),
        "snf-ganeti-eventd: --amqp: bad AMQP URL http://broker/: must start with amqp:// or amqps://"
    );

    let mut c = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-eventd"));
    c.arg("--config")
        .arg(&sb.config)
        .arg("--queue-dir")
        .arg(sb.dir.path().join("missing"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 1);
    assert!(
        one_line(&err).starts_with(&format!(
            "snf-ganeti-eventd: cannot read queue directory {}",
            sb.dir.path().join("missing").display()
        )),
        "{err}"
    );

    fs::write(&sb.config, "[gtools]\nspool_max_bytes = many\n").unwrap();
    let (code, err) = run(&mut sb.eventd());
    assert_eq!(code, 1);
    assert_eq!(one_line(&err), format!("snf-ganeti-eventd: {}: [gtools] spool_max_bytes = \"many\": invalid digit found in string", sb.config.display()));

    fs::write(&sb.config, "[eventd]\nqueue_directory = /x\n").unwrap();
    let (code, err) = run(&mut sb.eventd());
    assert_eq!(code, 1);
    assert!(
        one_line(&err).ends_with("[eventd] queue_directory: unknown key"),
        "{err}"
    );

    let mut c = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-eventd"));
    c.arg("--config").arg(sb.dir.path().join("nope.conf"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 1);
    assert!(one_line(&err).contains("nope.conf: cannot read"), "{err}");

    let (code, err) = run(sb.eventd().arg("--no-such-flag"));
    assert_eq!(code, 2, "{err}");

    sb.write_config(&amqp_url(), &sb.exchange.clone(), "");
    let out = sb.eventd().arg("--check").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("configuration OK: queue "));

    let (code, _) = run(sb.eventd().arg("--help"));
    assert_eq!(code, 0);
    let out = Command::new(env!("CARGO_BIN_EXE_snf-ganeti-eventd"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("snf-ganeti-eventd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn pidfile_refuses_a_second_instance_and_daemonize_detaches() {
    let sb = Sandbox::new();
    // A stale pidfile from a crashed run is taken over.
    fs::write(&sb.pid_file, "4194300\n").unwrap();
    let d = sb.start();
    let (code, err) = run(&mut sb.eventd());
    assert_eq!(code, 1);
    assert!(one_line(&err).contains("already running as pid"), "{err}");
    assert!(d.stop().success());
    assert!(!sb.pid_file.exists());

    // --daemonize: the caller gets 0 once the daemon is up; the pidfile names the daemon.
    let st = sb.eventd().arg("--daemonize").status().unwrap();
    assert!(st.success());
    assert!(wait_for(Duration::from_secs(5), || sb.pid_file.exists()));
    let pid: i32 = fs::read_to_string(&sb.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(hostkit::daemon::pid_alive(pid));
    // A second daemonized start fails, and says why on the terminal.
    let (code, err) = run(sb.eventd().arg("--daemonize"));
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        !hostkit::daemon::pid_alive(pid)
    }));
    assert!(!sb.pid_file.exists());
    assert!(Path::new(&sb.log).exists());
}

/// `--status` with `extra` options and a textfile: (exit code, the output, the textfile's
/// samples by name and labels). Every textfile line must parse.
fn status(sb: &Sandbox, extra: &[&str]) -> (i32, String, BTreeMap<String, f64>) {
    let prom = sb.dir.path().join("eventd.prom");
    let _ = fs::remove_file(&prom);
    let out = sb
        .eventd()
        .arg("--status")
        .arg("--prometheus")
        .arg(&prom)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom_text = fs::read_to_string(&prom).unwrap();
    let samples = hostkit::monitor::parse_textfile(&prom_text)
        .unwrap_or_else(|e| panic!("{e}\n{prom_text}"))
        .into_iter()
        .map(|(name, labels, v)| {
            assert!(name.starts_with("hostkit_eventd_"), "{name}");
            assert!(labels.is_empty(), "{name}");
            (name, v)
        })
        .collect();
    let code = out.status.code().unwrap();
    let expected: &[&str] = if code == 3 {
        // Nothing was looked at: only the verdict.
        &["hostkit_eventd_check_state"]
    } else {
        &["hostkit_eventd_spool_entries", "hostkit_eventd_check_state"]
    };
    for name in expected {
        assert!(
            prom_text.contains(&format!("# TYPE {name} gauge\n")),
            "{prom_text}"
        );
    }
    (code, text, samples)
}

/// Poll `--status` until `ok` holds for its code and line; returns the last result.
fn status_until(
    sb: &Sandbox,
    extra: &[&str],
    secs: u64,
    ok: impl Fn(i32, &str) -> bool,
) -> (i32, String, BTreeMap<String, f64>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = status(sb, extra);
        if ok(r.0, &r.1) || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_broker_and_the_spool() {
    let sb = Sandbox::new();
    let proxy = Proxy::start().await;
    sb.write_config(&proxy.url(), &sb.exchange.clone(), "");
    let mut c = Consumer::new(&sb.exchange).await;
    let d = sb.start();
    // Up, one message published: OK with the last publish.
    write_job(&sb.queue, 1, &job_version(1, "v1-queued"));
    c.next(Duration::from_secs(10)).await.expect("published");
    let (code, line, m) = status_until(&sb, &[], 10, |_, l| l.contains("last publish"));
    assert_eq!(code, 0, "{line}\n{}", sb.log_text());
    assert!(
        line.starts_with(
            "EVENTD OK - master, broker connected, spool 0 entries 0 B, last publish "
        ),
        "{line}"
    );
    assert!(
        line.contains(" | spool_entries=0;100;1000;0 spool_bytes=0B "),
        "{line}"
    );
    assert_eq!(m["hostkit_eventd_up"], 1.0);
    assert_eq!(m["hostkit_eventd_master"], 1.0);
    assert_eq!(m["hostkit_eventd_broker_connected"], 1.0);
    assert_eq!(m["hostkit_eventd_check_state"], 0.0);
    assert!(m["hostkit_eventd_messages_confirmed_total"] >= 1.0);
    // Broker away, jobs changing: the spool grows; WARNING for the broker, then
    // CRITICAL once the spool passes --crit-spool.
    proxy.cut();
    for id in 2..=7u64 {
        write_job(&sb.queue, id, &job_version(id, "v1-queued"));
        wait_recorded(&sb, id..=id, "queued");
    }
    let (code, line, m) = status_until(&sb, &[], 20, |_, l| l.contains("broker disconnected"));
    assert_eq!(code, 1, "{line}\n{}", sb.log_text());
    assert!(
        line.starts_with("EVENTD WARNING - broker disconnected, master, "),
        "{line}"
    );
    let entries = sb.spool_entries() as u64;
    assert!(entries >= 2, "{entries} entries");
    assert!(
        line.contains(&format!("spool {entries} entries ")),
        "{line}"
    );
    assert_eq!(m["hostkit_eventd_spool_entries"], entries as f64);
    assert!(m["hostkit_eventd_spool_bytes"] > 0.0);
    assert_eq!(m["hostkit_eventd_broker_connected"], 0.0);
    assert_eq!(m["hostkit_eventd_check_state"], 1.0);
    let crit = (entries - 1).to_string();
    let (code, line, _) = status(&sb, &["--warn-spool", "0", "--crit-spool", &crit]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!("spool_entries={entries};0;{crit};0")),
        "{line}"
    );
    // The oldest message's age by --warn-age / --crit-age.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, line, m) = status(&sb, &["--warn-age", "0", "--crit-age", "3600"]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("oldest unconfirmed "), "{line}");
    assert!(m["hostkit_eventd_oldest_message_age_seconds"] >= 1.0);
    let (code, line, _) = status(&sb, &["--warn-age", "0", "--crit-age", "0"]);
    assert_eq!(code, 2, "{line}");
    // Broker back: the spool drains and the check is OK again.
    proxy.restore();
    let (code, line, m) = status_until(&sb, &[], 60, |code, _| code == 0);
    assert_eq!(code, 0, "{line}\n{}", sb.log_text());
    assert!(
        line.contains("broker connected, spool 0 entries 0 B"),
        "{line}"
    );
    assert_eq!(m["hostkit_eventd_spool_entries"], 0.0);
    // Contradictory thresholds are UNKNOWN, on the one line.
    let (code, line, _) = status(&sb, &["--warn-spool", "10", "--crit-spool", "5"]);
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with("EVENTD UNKNOWN - --warn-spool/--crit-spool: "),
        "{line}"
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_a_node_that_is_not_the_master_is_ok() {
    let sb = Sandbox::new();
    fs::write(sb.data.join("ssconf_master_node"), "node2.example.test\n").unwrap();
    let d = sb.start();
    let (code, line, m) = status(&sb, &[]);
    assert_eq!(code, 0, "{line}\n{}", sb.log_text());
    assert!(
        line.starts_with("EVENTD OK - not the master, broker "),
        "{line}"
    );
    assert_eq!(m["hostkit_eventd_master"], 0.0);
    // Failover to this node is in the status within a couple of seconds, without a job.
    fs::write(sb.data.join("ssconf_master_node"), format!("{NODE}\n")).unwrap();
    let (code, line, m) = status_until(&sb, &[], 10, |_, l| l.starts_with("EVENTD OK - master,"));
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("EVENTD OK - master, "), "{line}");
    assert_eq!(m["hostkit_eventd_master"], 1.0);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_daemon_that_is_not_running_is_critical() {
    let sb = Sandbox::new();
    let proxy = Proxy::start().await;
    sb.write_config(&proxy.url(), &sb.exchange.clone(), "");
    // Never started.
    let (code, line, m) = status(&sb, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("EVENTD CRITICAL - not running, spool 0 entries 0 B |"),
        "{line}"
    );
    assert_eq!(m["hostkit_eventd_up"], 0.0);
    assert_eq!(m["hostkit_eventd_check_state"], 2.0);
    // Killed with messages spooled: still CRITICAL, and the spool counted from disk.
    proxy.cut();
    let d = sb.start();
    write_job(&sb.queue, 1, &job_version(1, "v1-queued"));
    wait_recorded(&sb, 1..=1, "queued");
    d.kill9();
    let (code, line, m) = status(&sb, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("EVENTD CRITICAL - not running, spool 1 entries "),
        "{line}"
    );
    assert_eq!(m["hostkit_eventd_spool_entries"], 1.0);
    // A daemon whose status file stopped being written (hung) is CRITICAL too.
    proxy.restore();
    let d = sb.start();
    let (code, line, _) = status_until(&sb, &[], 30, |code, _| code == 0);
    assert_eq!(code, 0, "{line}");
    d.signal(Signal::SIGSTOP);
    let file = sb.spool.join("eventd.status");
    let mut s: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    s["written"] = json!(s["written"].as_u64().unwrap() - 16);
    fs::write(&file, serde_json::to_vec(&s).unwrap()).unwrap();
    let (code, line, m) = status(&sb, &[]);
    d.signal(Signal::SIGCONT);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("old: the daemon is hung"), "{line}");
    assert_eq!(m["hostkit_eventd_up"], 0.0);
    assert!(d.stop().success());
}
