//! Instance facts from Ganeti's cluster configuration (`<data_dir>/config.data`).
//!
//! The original asked the master daemon (LUXI) for `nic.*`, `disk.*` and two hv params;
//! the same facts are in config.data, which the master keeps current and which is a
//! plain JSON read (no socket, no locks). The file is re-parsed only when it changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::messages::{InstanceInfo, InstanceLookup};

/// The hv params Synnefo reported.
const HV_FIELDS: [&str; 2] = ["boot_order", "cdrom_image_path"];

#[derive(Debug)]
pub struct ClusterConfig {
    path: PathBuf,
    stamp: Option<(u64, u64, i64, i64, u64)>,
    data: Value,
}

impl ClusterConfig {
    pub fn new(data_dir: &Path) -> ClusterConfig {
        ClusterConfig {
            path: data_dir.join("config.data"),
            stamp: None,
            data: Value::Null,
        }
    }

    fn refresh(&mut self) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                if self.stamp.is_some() {
                    log::warn!("{}: {e}", self.path.display());
                }
                self.stamp = None;
                self.data = Value::Null;
                return;
            }
        };
        let stamp = (
            meta.dev(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.len(),
        );
        if self.stamp == Some(stamp) {
            return;
        }
        match std::fs::read(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => {
                self.data = v;
                self.stamp = Some(stamp);
            }
            Err(e) => {
                log::warn!(
                    "{}: cannot read cluster configuration: {e}",
                    self.path.display()
                );
                self.data = Value::Null;
                self.stamp = None;
            }
        }
    }
}

impl InstanceLookup for ClusterConfig {
    fn instance_info(&mut self, name: &str) -> Option<InstanceInfo> {
        self.refresh();
        instance_info(&self.data, name)
    }
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// `defaults` overlaid with `own` (Ganeti's FillDict).
fn fill(defaults: &Value, own: &Value) -> Map<String, Value> {
    let mut m = obj(defaults);
    for (k, v) in obj(own) {
        m.insert(k, v);
    }
    m
}

/// The facts for instance `name` out of a parsed config.data.
pub fn instance_info(config: &Value, name: &str) -> Option<InstanceInfo> {
    let inst = config
        .get("instances")?
        .as_object()?
        .values()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(name))?;
    let cluster = config.get("cluster").cloned().unwrap_or(Value::Null);
    let networks = config.get("networks").cloned().unwrap_or(Value::Null);
    let tags: Vec<&str> = inst
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();

    let nic_defaults = cluster
        .pointer("/nicparams/default")
        .cloned()
        .unwrap_or(Value::Null);
    let mut nics = Vec::new();
    for (index, nic) in inst
        .get("nics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let params = fill(&nic_defaults, nic.get("nicparams").unwrap_or(&Value::Null));
        let network = nic
            .get("network")
            .and_then(Value::as_str)
            .map(|uuid| {
                networks
                    .get(uuid)
                    .and_then(|n| n.get("name"))
                    .cloned()
                    .unwrap_or_else(|| json!(uuid))
            })
            .unwrap_or(Value::Null);
        let nic_name = nic.get("name").cloned().unwrap_or(Value::Null);
        let mut out = Map::new();
        out.insert("name".into(), nic_name.clone());
        out.insert("network".into(), network);
        out.insert("ip".into(), nic.get("ip").cloned().unwrap_or(Value::Null));
        out.insert("mac".into(), nic.get("mac").cloned().unwrap_or(Value::Null));
        out.insert(
            "mode".into(),
            params.get("mode").cloned().unwrap_or(Value::Null),
        );
        out.insert(
            "link".into(),
            params.get("link").cloned().unwrap_or(Value::Null),
        );
        out.insert(
            "uuid".into(),
            nic.get("uuid").cloned().unwrap_or(Value::Null),
        );
        if let Some(fw) = firewall(&tags, nic_name.as_str(), index) {
            out.insert("firewall".into(), json!(fw));
        }
        nics.push(Value::Object(out));
    }

    let all_disks = config.get("disks").cloned().unwrap_or(Value::Null);
    let mut disks = Vec::new();
    for d in inst
        .get("disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // Ganeti >= 2.16 keeps disks top-level and lists their UUIDs in the instance.
        let disk = match d {
            Value::String(uuid) => all_disks.get(uuid).cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        disks.push(json!({
            "name": disk.get("name").cloned().unwrap_or(Value::Null),
            "size": disk.get("size").cloned().unwrap_or(Value::Null),
            "uuid": disk.get("uuid").cloned().unwrap_or(Value::Null),
        }));
    }

    let hv = inst.get("hypervisor").and_then(Value::as_str).unwrap_or("");
    let hv_all = fill(
        cluster
            .pointer(&format!("/hvparams/{hv}"))
            .unwrap_or(&Value::Null),
        inst.get("hvparams").unwrap_or(&Value::Null),
    );
    let hvparams: Map<String, Value> = HV_FIELDS
        .iter()
        .map(|k| {
            (
                k.to_string(),
                hv_all.get(*k).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();

    Some(InstanceInfo {
        nics,
        disks,
        hvparams: Value::Object(hvparams),
    })
}

/// The firewall profile a `synnefo:network:<nic>:<profile>` tag sets for a NIC, matched
/// by NIC name (current Synnefo) or by index (older tags); the first matching tag wins.
pub fn firewall(tags: &[&str], nic_name: Option<&str>, index: usize) -> Option<String> {
    tags.iter().find_map(|t| {
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() != 4 || parts[0] != "synnefo" || parts[1] != "network" {
            return None;
        }
        let by_name = nic_name.is_some_and(|n| n == parts[2]);
        let by_index = parts[2].parse::<usize>().ok() == Some(index);
        (by_name || by_index).then(|| parts[3].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "cluster": {
                "nicparams": {"default": {"mode": "bridged", "link": "br0", "vlan": ""}},
                "hvparams": {"fake": {"boot_order": "disk", "migration_mode": "live"}}
            },
            "networks": {"net-uuid": {"name": "snf-net-1", "network": "10.0.0.0/24"}},
            "disks": {"d-uuid": {"name": "disk0", "size": 1024, "uuid": "d-uuid", "dev_type": "file"}},
            "instances": {
                "i-uuid": {
                    "name": "snf-1", "hypervisor": "fake",
                    "hvparams": {"cdrom_image_path": "/x.iso"},
                    "tags": ["synnefo:network:nic-a:protected", "other"],
                    "nics": [
                        {"mac": "aa:00:00:11:22:33", "ip": "10.0.0.5", "nicparams": {"link": "br1"}, "network": "net-uuid", "uuid": "n1", "name": "nic-a"},
                        {"mac": "aa:00:00:11:22:34", "ip": null, "nicparams": {}, "network": null, "uuid": "n2", "name": null}
                    ],
                    "disks": ["d-uuid"]
                }
            }
        })
    }

    #[test]
    fn instance_facts_are_filled_from_cluster_defaults() {
        let info = instance_info(&sample(), "snf-1").unwrap();
        assert_eq!(
            info.nics[0],
            json!({"name": "nic-a", "network": "snf-net-1", "ip": "10.0.0.5", "mac": "aa:00:00:11:22:33",
                   "mode": "bridged", "link": "br1", "uuid": "n1", "firewall": "protected"})
        );
        assert_eq!(info.nics[1]["link"], "br0");
        assert_eq!(info.nics[1]["network"], Value::Null);
        assert!(info.nics[1].get("firewall").is_none());
        assert_eq!(
            info.disks,
            vec![json!({"name": "disk0", "size": 1024, "uuid": "d-uuid"})]
        );
        assert_eq!(
            info.hvparams,
            json!({"boot_order": "disk", "cdrom_image_path": "/x.iso"})
        );
        assert_eq!(instance_info(&sample(), "nope"), None);
    }

    #[test]
    fn firewall_tags_by_name_or_index() {
        assert_eq!(
            firewall(&["synnefo:network:1:limited"], None, 1).as_deref(),
            Some("limited")
        );
        assert_eq!(firewall(&["synnefo:network:1:limited"], None, 0), None);
        assert_eq!(firewall(&["synnefo:network:a:b:c"], Some("a"), 0), None);
        assert_eq!(
            firewall(
                &["synnefo:network:x:one", "synnefo:network:x:two"],
                Some("x"),
                3
            )
            .as_deref(),
            Some("one")
        );
    }

    #[test]
    fn reads_and_caches_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.data"), sample().to_string()).unwrap();
        let mut c = ClusterConfig::new(d.path());
        assert!(c.instance_info("snf-1").is_some());
        std::fs::write(d.path().join("config.data"), "{\"instances\": {}}").unwrap();
        assert!(c.instance_info("snf-1").is_none());
        std::fs::write(d.path().join("config.data"), "garbage").unwrap();
        assert!(c.instance_info("snf-1").is_none());
    }
}
