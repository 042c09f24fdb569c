//! The messages Synnefo's snf-ganeti-eventd published, field for field, because
//! Synnefo's dispatcher (and anything else bound to the `ganeti` exchange) parses them.
//!
//! One message per op; the routing key's prefix is the object name up to its first `-`.

use serde_json::{json, Map, Value};

use super::jobfile::{Job, Op, OpStatus};

/// Live facts about an instance that some messages carry (`instance_nics`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceInfo {
    pub nics: Vec<Value>,
    pub disks: Vec<Value>,
    pub hvparams: Value,
}

/// Where `instance_nics`/`instance_disks`/`instance_hvparams` come from.
pub trait InstanceLookup {
    fn instance_info(&mut self, name: &str) -> Option<InstanceInfo>;
}

/// No cluster configuration available: those fields are left out.
pub struct NoLookup;

impl InstanceLookup for NoLookup {
    fn instance_info(&mut self, _name: &str) -> Option<InstanceInfo> {
        None
    }
}

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMessage {
    pub routing_key: String,
    pub body: Map<String, Value>,
}

/// The part of a name before its first `-` (`snf-123` → `snf`).
pub fn prefix(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

/// `event_time` for a message about something happening now: `[sec, usec]`.
pub fn now() -> Value {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    json!([d.as_secs(), d.subsec_micros()])
}

/// The message's `event_time`: the timestamp of the transition the op just made.
pub fn event_time(job: &Job, op: &Op) -> Value {
    let ts = match op.status {
        OpStatus::Queued => job.received_timestamp,
        OpStatus::Waiting | OpStatus::Canceling => op.start_timestamp.or(job.end_timestamp),
        OpStatus::Running => op.exec_timestamp.or(job.end_timestamp),
        OpStatus::Success | OpStatus::Error | OpStatus::Canceled => {
            op.end_timestamp.or(job.end_timestamp)
        }
    };
    ts.map_or(Value::Null, |t| json!(t))
}

/// The message for op `index` of `job`, or `None` for ops eventd does not report.
pub fn op_message(
    job: &Job,
    index: usize,
    cluster: &str,
    lookup: &mut dyn InstanceLookup,
) -> Option<OpMessage> {
    let op = job.ops.get(index)?;
    let op_id = op.op_id();
    let family = op_id.split('_').nth(1).unwrap_or("");
    let (routing_key, mut body) = match family {
        "INSTANCE" => instance_op(op, lookup)?,
        "NETWORK" => network_op(op)?,
        "CLUSTER" if op_id == "OP_CLUSTER_SET_PARAMS" => (
            "ganeti.event.cluster".to_string(),
            fields([("type", json!("ganeti-cluster-status"))]),
        ),
        "TAGS" => tags_op(op)?,
        _ => return None,
    };
    body.insert("operation".into(), json!(op_id));
    body.insert("status".into(), json!(op.status.as_str()));
    body.insert("jobId".into(), json!(job.id));
    body.insert("logmsg".into(), op.logmsg());
    body.insert("result".into(), op.result.clone());
    body.insert("event_time".into(), event_time(job, op));
    body.insert("cluster".into(), json!(cluster));
    Some(OpMessage { routing_key, body })
}

fn fields<const N: usize>(kv: [(&str, Value); N]) -> Map<String, Value> {
    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn instance_name(op: &Op) -> Option<String> {
    if let Some(n) = op.input_str("instance_name") {
        return Some(n.to_string());
    }
    match op.input.get("instances") {
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().map(str::to_string),
        _ => None,
    }
}

fn instance_op(op: &Op, lookup: &mut dyn InstanceLookup) -> Option<(String, Map<String, Value>)> {
    let name = instance_name(op)?;
    let op_id = op.op_id();
    let job_fields = match op_id {
        "OP_INSTANCE_CREATE" if op.status == OpStatus::Error => Value::Object(op.input.clone()),
        "OP_INSTANCE_CREATE" | "OP_INSTANCE_SET_PARAMS" => json!({
            "nics": op.input_field("nics"),
            "disks": op.input_field("disks"),
            "hvparams": op.input_field("hvparams"),
            "beparams": op.input_field("beparams"),
        }),
        "OP_INSTANCE_SNAPSHOT" => snapshot_fields(op),
        _ => json!({}),
    };
    let tags = match op.input.get("tags") {
        Some(Value::Array(t)) => Value::Array(t.clone()),
        _ => json!([]),
    };
    let mut body = fields([
        ("type", json!("ganeti-op-status")),
        ("instance", json!(name)),
        ("job_fields", job_fields),
        ("tags", tags),
    ]);
    // The original compared against "cancelled" and so never matched a canceled op;
    // a canceled modify can still have changed the instance, so it is included here.
    let wants_info = match op_id {
        "OP_INSTANCE_CREATE" | "OP_INSTANCE_STARTUP" => op.status == OpStatus::Success,
        "OP_INSTANCE_SET_PARAMS" | "OP_INSTANCE_GROW_DISK" => op.status.is_finalized(),
        _ => false,
    };
    if wants_info {
        match lookup.instance_info(&name) {
            Some(info) => {
                body.insert("instance_nics".into(), Value::Array(info.nics));
                body.insert("instance_disks".into(), Value::Array(info.disks));
                body.insert("instance_hvparams".into(), info.hvparams);
            }
            None => log::debug!("instance {name} not in the cluster configuration"),
        }
    }
    Some((format!("ganeti.{}.event.op", prefix(&name)), body))
}

/// Synnefo's snapshot op carries the snapshot id as the user reason of the job.
fn snapshot_fields(op: &Op) -> Value {
    let mut disks = op.input_field("disks");
    let non_empty = disks.as_array().is_some_and(|d| !d.is_empty());
    if !non_empty {
        return json!({});
    }
    let reason = op
        .input
        .get("reason")
        .and_then(|r| r.get(0))
        .filter(|r| r.get(0).and_then(Value::as_str) == Some("gnt:user"))
        .and_then(|r| r.get(1))
        .cloned();
    match (reason, disks.get_mut(0).and_then(|d| d.get_mut(1))) {
        (Some(id), Some(Value::Object(params))) => {
            params.insert("snapshot_info".into(), id);
        }
        _ => log::warn!("Malformed snapshot job"),
    }
    json!({ "disks": disks })
}

fn network_op(op: &Op) -> Option<(String, Map<String, Value>)> {
    let name = op.input_str("network_name")?.to_string();
    let body = fields([
        ("type", json!("ganeti-network-status")),
        ("network", json!(name)),
        (
            "job_fields",
            json!({
                "subnet": op.input_field("network"),
                "gateway": op.input_field("gateway"),
                "add_reserved_ips": op.input_field("add_reserved_ips"),
                "remove_reserved_ips": op.input_field("remove_reserved_ips"),
                "group_name": op.input_field("group_name"),
            }),
        ),
    ]);
    Some((format!("ganeti.{}.event.network", prefix(&name)), body))
}

fn tags_op(op: &Op) -> Option<(String, Map<String, Value>)> {
    match op.input_str("kind") {
        Some("instance") if op.status.is_finalized() => {
            let name = op.input_str("name")?.to_string();
            let body = fields([
                ("type", json!("ganeti-op-status")),
                ("instance", json!(name)),
                ("tags", op.input_field("tags")),
                (
                    "job_fields",
                    json!({ "dry_run": op.input_field("dry_run") }),
                ),
            ]);
            Some((format!("ganeti.{}.event.op", prefix(&name)), body))
        }
        Some("cluster") if is_heartbeat(op) => Some((
            "eventd.heartbeat".to_string(),
            fields([("type", json!("eventd-heartbeat"))]),
        )),
        _ => None,
    }
}

/// Synnefo's dispatcher probes eventd by setting the cluster tag
/// `snf:eventd:heartbeat:<host>:<pid>` with dry_run; eventd answers when it sees the op
/// waiting.
fn is_heartbeat(op: &Op) -> bool {
    op.op_id() == "OP_TAGS_SET"
        && op.status == OpStatus::Waiting
        && op.input.get("dry_run").and_then(Value::as_bool) == Some(true)
        && op
            .input
            .get("tags")
            .and_then(|t| t.get(0))
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("snf:eventd:heartbeat"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ganeti::jobfile::parse;

    fn job(text: &str) -> Job {
        parse(text.as_bytes(), None).unwrap()
    }

    fn fixture(name: &str) -> Job {
        let p = format!(
            "{}/tests/fixtures/ganeti/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        parse(&std::fs::read(p).unwrap(), None).unwrap()
    }

    struct Fixed(Option<InstanceInfo>, Vec<String>);
    impl InstanceLookup for Fixed {
        fn instance_info(&mut self, name: &str) -> Option<InstanceInfo> {
            self.1.push(name.to_string());
            self.0.clone()
        }
    }

    #[test]
    fn startup_versions_have_the_right_event_time_and_key() {
        let dir = "job-versions/job-6-instance-startup";
        let expect = [
            ("v1-queued", "queued", json!([1795370262, 734074])),
            ("v4-waiting", "waiting", json!([1795370263, 9132])),
            ("v5-running", "running", json!([1795370263, 18440])),
            ("v6-success", "success", json!([1795370263, 391693])),
        ];
        for (v, status, t) in expect {
            let j = fixture(&format!("{dir}-{v}.json"));
            let m = op_message(&j, 0, "cluster.example.test", &mut NoLookup).unwrap();
            assert_eq!(m.routing_key, "ganeti.inst1.example.test.event.op");
            assert_eq!(m.body["type"], "ganeti-op-status");
            assert_eq!(m.body["status"], status);
            assert_eq!(m.body["event_time"], t, "{v}");
            assert_eq!(m.body["jobId"], 6);
            assert_eq!(m.body["instance"], "inst1.example.test");
            assert_eq!(m.body["operation"], "OP_INSTANCE_STARTUP");
            assert_eq!(m.body["cluster"], "cluster.example.test");
            assert_eq!(m.body["job_fields"], json!({}));
            assert_eq!(m.body["tags"], json!([]));
            assert_eq!(m.body["logmsg"], Value::Null);
        }
    }

    #[test]
    fn create_success_carries_job_fields_and_instance_info() {
        let j = fixture("job-4.raw.json");
        let info = InstanceInfo {
            nics: vec![json!({"mac": "aa:00:00:00:00:01"})],
            disks: vec![],
            hvparams: json!({"boot_order": null, "cdrom_image_path": null}),
        };
        let mut lookup = Fixed(Some(info), vec![]);
        let m = op_message(&j, 0, "c", &mut lookup).unwrap();
        assert_eq!(lookup.1, vec!["inst1.example.test".to_string()]);
        assert_eq!(
            m.body["job_fields"]["nics"],
            json!([{"mode": "bridged", "link": "ganeti0"}])
        );
        assert_eq!(m.body["job_fields"]["beparams"]["maxmem"], 128);
        assert_eq!(m.body["instance_nics"][0]["mac"], "aa:00:00:00:00:01");
        assert!(m.body.contains_key("instance_hvparams"));
        assert_eq!(m.body["result"], json!(["node1.example.test"]));
        assert_eq!(m.body["logmsg"], j.ops[0].log.last().unwrap()[3]);
    }

    #[test]
    fn failed_create_sends_the_whole_input() {
        let j = fixture("job-9.raw.json");
        let m = op_message(&j, 0, "c", &mut NoLookup).unwrap();
        assert_eq!(m.body["status"], "error");
        assert_eq!(m.body["job_fields"]["OP_ID"], "OP_INSTANCE_CREATE");
        assert!(!m.body.contains_key("instance_nics"));
    }

    #[test]
    fn non_reported_ops_give_nothing() {
        for f in ["job-13.raw.json", "job-14.raw.json"] {
            assert_eq!(op_message(&fixture(f), 0, "c", &mut NoLookup), None, "{f}");
        }
        let j = job(
            r#"{"id":1,"ops":[{"input":{"OP_ID":"OP_INSTANCE_REBOOT","instances":["a","b"]},"status":"queued"}]}"#,
        );
        assert_eq!(op_message(&j, 0, "c", &mut NoLookup), None);
        let j =
            job(r#"{"id":1,"ops":[{"input":{"OP_ID":"OP_CLUSTER_VERIFY"},"status":"queued"}]}"#);
        assert_eq!(op_message(&j, 0, "c", &mut NoLookup), None);
    }

    #[test]
    fn instance_from_single_instances_list_and_prefix() {
        let j = job(
            r#"{"id":3,"ops":[{"input":{"OP_ID":"OP_INSTANCE_SHUTDOWN","instances":["snf-42"]},"status":"running","exec_timestamp":null}],"end_timestamp":[9,9]}"#,
        );
        let m = op_message(&j, 0, "c", &mut NoLookup).unwrap();
        assert_eq!(m.routing_key, "ganeti.snf.event.op");
        assert_eq!(m.body["instance"], "snf-42");
        // running without exec_timestamp falls back to the job's end_timestamp
        assert_eq!(m.body["event_time"], json!([9, 9]));
    }

    #[test]
    fn network_cluster_and_tags() {
        let j = job(r#"{"id":5,"ops":[
            {"input":{"OP_ID":"OP_NETWORK_ADD","network_name":"snf-net-1","network":"10.0.0.0/24","gateway":"10.0.0.1"},"status":"success","end_timestamp":[1,2]},
            {"input":{"OP_ID":"OP_CLUSTER_SET_PARAMS"},"status":"queued"},
            {"input":{"OP_ID":"OP_TAGS_SET","kind":"instance","name":"snf-7","tags":["a"],"dry_run":false},"status":"success"},
            {"input":{"OP_ID":"OP_TAGS_SET","kind":"cluster","tags":["snf:eventd:heartbeat:h:1"],"dry_run":true},"status":"waiting"},
            {"input":{"OP_ID":"OP_TAGS_SET","kind":"cluster","tags":["snf:eventd:heartbeat:h:1"],"dry_run":false},"status":"waiting"},
            {"input":{"OP_ID":"OP_TAGS_SET","kind":"instance","name":"snf-7","tags":["a"]},"status":"running"}
        ],"received_timestamp":[1,1]}"#);
        let n = op_message(&j, 0, "c", &mut NoLookup).unwrap();
        assert_eq!(n.routing_key, "ganeti.snf.event.network");
        assert_eq!(n.body["type"], "ganeti-network-status");
        assert_eq!(n.body["network"], "snf-net-1");
        assert_eq!(n.body["job_fields"]["subnet"], "10.0.0.0/24");
        assert_eq!(n.body["job_fields"]["group_name"], Value::Null);
        let c = op_message(&j, 1, "c", &mut NoLookup).unwrap();
        assert_eq!(c.routing_key, "ganeti.event.cluster");
        assert_eq!(c.body["type"], "ganeti-cluster-status");
        assert_eq!(c.body["event_time"], json!([1, 1]));
        let t = op_message(&j, 2, "c", &mut NoLookup).unwrap();
        assert_eq!(t.routing_key, "ganeti.snf.event.op");
        assert_eq!(t.body["tags"], json!(["a"]));
        assert_eq!(t.body["job_fields"], json!({"dry_run": false}));
        let h = op_message(&j, 3, "c", &mut NoLookup).unwrap();
        assert_eq!(h.routing_key, "eventd.heartbeat");
        assert_eq!(h.body["type"], "eventd-heartbeat");
        assert_eq!(h.body["cluster"], "c");
        assert_eq!(op_message(&j, 4, "c", &mut NoLookup), None);
        assert_eq!(op_message(&j, 5, "c", &mut NoLookup), None);
    }

    #[test]
    fn snapshot_reason_becomes_snapshot_info() {
        let j = job(
            r#"{"id":8,"ops":[{"input":{"OP_ID":"OP_INSTANCE_SNAPSHOT","instance_name":"snf-1","disks":[[0,{"name":"s"}]],"reason":[["gnt:user","uuid-1",1]]},"status":"queued"}]}"#,
        );
        let m = op_message(&j, 0, "c", &mut NoLookup).unwrap();
        assert_eq!(
            m.body["job_fields"],
            json!({"disks": [[0, {"name": "s", "snapshot_info": "uuid-1"}]]})
        );
    }
}
