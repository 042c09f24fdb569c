//! The environment Ganeti gives an instance hook, validated.
//!
//! Post hooks get every variable twice: `GANETI_INSTANCE_*` (before the op) and
//! `GANETI_POST_INSTANCE_*` (after it). The state after the op is what a post hook
//! reports, so when any `GANETI_POST_INSTANCE_*` variable exists that namespace is used
//! alone (mixing would resurrect a NIC the op removed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use super::configdata::firewall;

/// Most NICs an instance hook may describe.
pub const MAX_NICS: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookEnvError {
    #[error("missing environment variable {0}")]
    Missing(String),
    #[error("{var}={value:?}: {reason}")]
    Bad {
        var: String,
        value: String,
        reason: String,
    },
    #[error("NIC variables name indexes {found:?}, but {count_var}={count} (expected 0..{count})")]
    NicIndexes {
        found: Vec<usize>,
        count_var: String,
        count: usize,
    },
}

/// One NIC as the hook reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookNic {
    pub index: usize,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub link: Option<String>,
    pub network: Option<String>,
    pub ipv6: Option<String>,
    pub firewall: Option<String>,
}

/// GANETI_HOOKS_PHASE: Ganeti runs `<hook>-pre.d` before the op (a failing pre hook
/// aborts it) and `<hook>-post.d` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    Pre,
    Post,
}

impl HookPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::Pre => "pre",
            HookPhase::Post => "post",
        }
    }
}

impl std::fmt::Display for HookPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance hook invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHook {
    /// e.g. `instance-start`
    pub path: String,
    pub phase: HookPhase,
    pub master: String,
    pub instance: String,
    pub nics: Vec<HookNic>,
}

struct View<'a> {
    vars: &'a BTreeMap<String, String>,
    prefix: &'static str,
}

impl View<'_> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value, with Ganeti's empty string for "none" mapped to None.
    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(&self.name(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn require(&self, key: &str) -> Result<&str, HookEnvError> {
        self.get(key)
            .ok_or_else(|| HookEnvError::Missing(self.name(key)))
    }
}

fn require<'a>(vars: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, HookEnvError> {
    vars.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| HookEnvError::Missing(key.to_string()))
}

/// Variables from an environment dump (`KEY=VALUE` lines, `#` comments), the form the
/// captured hook environments in the test fixtures have; handy for replaying a hook.
pub fn parse_env_dump(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parse a MAC `aa:bb:cc:dd:ee:ff` (any case) into bytes.
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// The EUI-64 address of `mac` in the /64 `subnet6` (`2001:db8::/64`).
pub fn eui64(subnet6: &str, mac: [u8; 6]) -> Result<Ipv6Addr, String> {
    let (addr, len) = subnet6
        .split_once('/')
        .ok_or_else(|| "not an IPv6 prefix (addr/len)".to_string())?;
    if len != "64" {
        return Err("EUI-64 needs a /64 prefix".into());
    }
    let prefix: Ipv6Addr = addr.parse().map_err(|e| format!("{e}"))?;
    let mut b = prefix.octets();
    let eui = [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    b[8..].copy_from_slice(&eui);
    Ok(Ipv6Addr::from(b))
}

/// Validate the hook environment. Every problem is one error naming the variable.
pub fn parse(vars: &BTreeMap<String, String>) -> Result<InstanceHook, HookEnvError> {
    let path = require(vars, "GANETI_HOOKS_PATH")?.to_string();
    let phase = match require(vars, "GANETI_HOOKS_PHASE")? {
        "pre" => HookPhase::Pre,
        "post" => HookPhase::Post,
        other => {
            return Err(HookEnvError::Bad {
                var: "GANETI_HOOKS_PHASE".into(),
                value: other.into(),
                reason: "expected pre or post".into(),
            })
        }
    };
    let master = require(vars, "GANETI_MASTER")?.to_string();
    let post = vars.keys().any(|k| k.starts_with("GANETI_POST_INSTANCE_"));
    let v = View {
        vars,
        prefix: if post {
            "GANETI_POST_INSTANCE_"
        } else {
            "GANETI_INSTANCE_"
        },
    };
    let instance = v.require("NAME")?.to_string();
    let count_raw = v.require("NIC_COUNT")?;
    let count: usize = count_raw.parse().map_err(|_| HookEnvError::Bad {
        var: v.name("NIC_COUNT"),
        value: count_raw.to_string(),
        reason: "not a number".into(),
    })?;
    // Ganeti itself allows 8 NICs (constants.MAX_NICS); the bound is generous but keeps
    // a hostile or broken count from allocating every index below it.
    if count > MAX_NICS {
        return Err(HookEnvError::Bad {
            var: v.name("NIC_COUNT"),
            value: count_raw.to_string(),
            reason: format!("more than {MAX_NICS} NICs"),
        });
    }
    let nic_prefix = format!("{}NIC", v.prefix);
    let found: BTreeSet<usize> = vars
        .keys()
        .filter_map(|k| k.strip_prefix(&nic_prefix))
        .filter_map(|rest| rest.split_once('_'))
        .filter_map(|(idx, _)| idx.parse::<usize>().ok())
        .collect();
    if found != (0..count).collect() {
        return Err(HookEnvError::NicIndexes {
            found: found.into_iter().collect(),
            count_var: v.name("NIC_COUNT"),
            count,
        });
    }
    let tags: Vec<&str> = v
        .get("TAGS")
        .map(|t| t.split_whitespace().collect())
        .unwrap_or_default();
    let mut nics = Vec::with_capacity(count);
    for index in 0..count {
        let key = |f: &str| format!("NIC{index}_{f}");
        let mac = v.get(&key("MAC")).map(str::to_string);
        let mac_bytes = match &mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| HookEnvError::Bad {
                var: v.name(&key("MAC")),
                value: m.clone(),
                reason: "not a MAC address (aa:bb:cc:dd:ee:ff)".into(),
            })?),
            None => None,
        };
        let ipv6 = match (v.get(&key("NETWORK_SUBNET6")), mac_bytes) {
            (Some(s6), Some(m)) => Some(
                eui64(s6, m)
                    .map_err(|reason| HookEnvError::Bad {
                        var: v.name(&key("NETWORK_SUBNET6")),
                        value: s6.to_string(),
                        reason,
                    })?
                    .to_string(),
            ),
            _ => None,
        };
        let name = v.get(&key("NAME"));
        nics.push(HookNic {
            index,
            mac,
            ip: v.get(&key("IP")).map(str::to_string),
            link: v
                .get(&key("LINK"))
                .or(v.get(&key("BRIDGE")))
                .map(str::to_string),
            network: v
                .get(&key("NETWORK_NAME"))
                .or(v.get(&key("NETWORK")))
                .map(str::to_string),
            ipv6,
            firewall: firewall(&tags, name, index),
        });
    }
    Ok(InstanceHook {
        path,
        phase,
        master,
        instance,
        nics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_file(name: &str) -> BTreeMap<String, String> {
        let p = format!(
            "{}/tests/fixtures/ganeti/hook-env/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        parse_env_dump(&std::fs::read_to_string(p).unwrap())
    }

    #[test]
    fn phase_is_pre_or_post() {
        let mut vars = env_file("instance-start-post-inst1-diskless.env");
        vars.insert("GANETI_HOOKS_PHASE".into(), "pre".into());
        assert_eq!(parse(&vars).unwrap().phase, HookPhase::Pre);
        vars.insert("GANETI_HOOKS_PHASE".into(), "Post".into());
        assert_eq!(
            parse(&vars).unwrap_err().to_string(),
            "GANETI_HOOKS_PHASE=\"Post\": expected pre or post"
        );
        vars.remove("GANETI_HOOKS_PHASE");
        assert_eq!(
            parse(&vars).unwrap_err(),
            HookEnvError::Missing("GANETI_HOOKS_PHASE".into())
        );
    }

    #[test]
    fn real_post_hook_env() {
        let h = parse(&env_file("instance-start-post-inst1-diskless.env")).unwrap();
        assert_eq!(h.path, "instance-start");
        assert_eq!(h.phase, HookPhase::Post);
        assert_eq!(h.master, "node1.example.test");
        assert_eq!(h.instance, "inst1.example.test");
        assert_eq!(
            h.nics,
            vec![HookNic {
                index: 0,
                mac: Some("aa:00:00:48:a9:5d".into()),
                ip: None,
                link: Some("ganeti0".into()),
                network: None,
                ipv6: None,
                firewall: None,
            }]
        );
    }

    #[test]
    fn post_values_win_and_are_not_mixed_with_pre() {
        let mut e = env_file("instance-start-post-inst1-diskless.env");
        // Before the op there were two NICs; after it, one.
        e.insert("GANETI_INSTANCE_NIC_COUNT".into(), "2".into());
        e.insert(
            "GANETI_INSTANCE_NIC1_MAC".into(),
            "aa:00:00:00:00:01".into(),
        );
        e.insert("GANETI_POST_INSTANCE_NIC0_IP".into(), "10.0.0.9".into());
        let h = parse(&e).unwrap();
        assert_eq!(h.nics.len(), 1);
        assert_eq!(h.nics[0].ip.as_deref(), Some("10.0.0.9"));
    }

    #[test]
    fn ipv6_and_firewall() {
        let mut e = env_file("instance-start-post-inst1-diskless.env");
        e.insert(
            "GANETI_POST_INSTANCE_NIC0_NETWORK_SUBNET6".into(),
            "2001:db8:1::/64".into(),
        );
        e.insert(
            "GANETI_POST_INSTANCE_NIC0_NETWORK_NAME".into(),
            "snf-net-1".into(),
        );
        e.insert(
            "GANETI_POST_INSTANCE_TAGS".into(),
            "foo synnefo:network:0:protected".into(),
        );
        let h = parse(&e).unwrap();
        // aa:00:00:48:a9:5d → a8:00:00:ff:fe:48:a9:5d
        assert_eq!(
            h.nics[0].ipv6.as_deref(),
            Some("2001:db8:1:0:a800:ff:fe48:a95d")
        );
        assert_eq!(h.nics[0].firewall.as_deref(), Some("protected"));
        assert_eq!(h.nics[0].network.as_deref(), Some("snf-net-1"));
    }

    #[test]
    fn invalid_environments_name_the_variable() {
        let base = env_file("instance-start-post-inst1-diskless.env");
        let mut e = base.clone();
        e.remove("GANETI_POST_INSTANCE_NAME");
        assert_eq!(
            parse(&e).unwrap_err(),
            HookEnvError::Missing("GANETI_POST_INSTANCE_NAME".into())
        );
        let mut e = base.clone();
        e.insert("GANETI_POST_INSTANCE_NIC0_MAC".into(), "zz:00".into());
        assert_eq!(
            parse(&e).unwrap_err().to_string(),
            "GANETI_POST_INSTANCE_NIC0_MAC=\"zz:00\": not a MAC address (aa:bb:cc:dd:ee:ff)"
        );
        let mut e = base.clone();
        e.insert(
            "GANETI_POST_INSTANCE_NIC2_MAC".into(),
            "aa:00:00:00:00:02".into(),
        );
        assert_eq!(
            parse(&e).unwrap_err().to_string(),
            "NIC variables name indexes [0, 2], but GANETI_POST_INSTANCE_NIC_COUNT=1 (expected 0..1)"
        );
        let mut e = base.clone();
        e.insert("GANETI_POST_INSTANCE_NIC_COUNT".into(), "x".into());
        assert!(parse(&e).unwrap_err().to_string().contains("not a number"));
        let mut e = base.clone();
        e.insert(
            "GANETI_POST_INSTANCE_NIC_COUNT".into(),
            usize::MAX.to_string(),
        );
        assert!(parse(&e)
            .unwrap_err()
            .to_string()
            .contains("more than 1024 NICs"));
        let mut e = base;
        e.insert(
            "GANETI_POST_INSTANCE_NIC0_NETWORK_SUBNET6".into(),
            "2001:db8::/48".into(),
        );
        assert!(parse(&e).unwrap_err().to_string().contains("needs a /64"));
        let e = BTreeMap::new();
        assert_eq!(
            parse(&e).unwrap_err(),
            HookEnvError::Missing("GANETI_HOOKS_PATH".into())
        );
    }
}
