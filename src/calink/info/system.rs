//! The unsampled one-file items: uptime, loadavg, host, os, version.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{parse_err, read, InfoError};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Uptime {
    /// Seconds since boot (/proc/uptime, first field).
    pub seconds: f64,
    /// Seconds the CPUs spent idle, summed over CPUs (second field).
    pub idle_seconds: f64,
    /// Unix time of the boot (`btime` in /proc/stat).
    pub boot_time: u64,
}

pub fn uptime() -> Result<Uptime, InfoError> {
    const P: &str = "/proc/uptime";
    let text = read(P)?;
    let mut f = text.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(seconds)), Some(Ok(idle_seconds))) = (f.next(), f.next()) else {
        return Err(parse_err(P, format!("expected two numbers, got {text:?}")));
    };
    const S: &str = "/proc/stat";
    let stat = read(S)?;
    let boot_time = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| parse_err(S, "no btime line"))?;
    Ok(Uptime {
        seconds,
        idle_seconds,
        boot_time,
    })
}

/// /proc/loadavg, shaped as CaLink wrote it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Loadavg {
    /// Keys "1", "5" and "15": the load averages over that many minutes.
    pub average: BTreeMap<String, f64>,
    pub entities: Entities,
    pub last_pid: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entities {
    /// Runnable scheduling entities (threads) now.
    pub current: u32,
    /// All scheduling entities.
    pub total: u32,
}

pub fn loadavg() -> Result<Loadavg, InfoError> {
    const P: &str = "/proc/loadavg";
    parse_loadavg(&read(P)?).ok_or_else(|| parse_err(P, "not in the form \"1 5 15 cur/total pid\""))
}

fn parse_loadavg(text: &str) -> Option<Loadavg> {
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() != 5 {
        return None;
    }
    let mut average = BTreeMap::new();
    for (k, v) in ["1", "5", "15"].iter().zip(&f[..3]) {
        average.insert(k.to_string(), v.parse().ok()?);
    }
    let (cur, total) = f[3].split_once('/')?;
    Some(Loadavg {
        average,
        entities: Entities {
            current: cur.parse().ok()?,
            total: total.parse().ok()?,
        },
        last_pid: f[4].parse().ok()?,
    })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Host {
    pub hostname: String,
    /// The canonical name the resolver gives the hostname (itself when it has none).
    pub fqdn: String,
    pub kernel: String,
    pub kernel_version: String,
    pub machine: String,
}

pub fn host() -> Result<Host, InfoError> {
    let u = nix::sys::utsname::uname().map_err(|e| InfoError::Read {
        path: "uname(2)".into(),
        error: e.into(),
    })?;
    let hostname = u.nodename().to_string_lossy().into_owned();
    Ok(Host {
        fqdn: fqdn(&hostname),
        hostname,
        kernel: u.release().to_string_lossy().into_owned(),
        kernel_version: u.version().to_string_lossy().into_owned(),
        machine: u.machine().to_string_lossy().into_owned(),
    })
}

/// `hostname -f`: the canonical name from getaddrinfo(AI_CANONNAME).
pub fn fqdn(hostname: &str) -> String {
    let hints = dns_lookup::AddrInfoHints {
        flags: nix::libc::AI_CANONNAME,
        ..Default::default()
    };
    dns_lookup::getaddrinfo(Some(hostname), None, Some(hints))
        .ok()
        .and_then(|mut it| it.find_map(|a| a.ok().and_then(|a| a.canonname)))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| hostname.to_string())
}

/// /etc/os-release (falling back to /usr/lib/os-release, as os-release(5) says).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Os {
    pub id: String,
    pub name: String,
    pub pretty_name: String,
    pub version_id: String,
    pub version_codename: String,
    /// /etc/debian_version, on Debian and its derivatives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debian_version: Option<String>,
}

pub fn os() -> Result<Os, InfoError> {
    let text = read("/etc/os-release").or_else(|_| read("/usr/lib/os-release"))?;
    let fields = parse_os_release(&text);
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    Ok(Os {
        id: get("ID"),
        name: get("NAME"),
        pretty_name: get("PRETTY_NAME"),
        version_id: get("VERSION_ID"),
        version_codename: get("VERSION_CODENAME"),
        debian_version: std::fs::read_to_string("/etc/debian_version")
            .ok()
            .map(|v| v.trim().to_string()),
    })
}

/// KEY=value lines, values optionally in single or double quotes (shell-like).
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = shlex::split(v)
                .and_then(|mut w| (w.len() == 1).then(|| w.remove(0)))
                .unwrap_or_else(|| v.to_string());
            (k.trim().to_string(), v)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Version {
    pub program: String,
    pub version: String,
}

/// The collector's own version (CaLink reported its own release here).
pub fn version() -> Version {
    Version {
        program: "calink".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_matches_proc_within_tolerance() {
        let l = loadavg().unwrap();
        let raw = std::fs::read_to_string("/proc/loadavg").unwrap();
        let f: Vec<f64> = raw
            .split_whitespace()
            .take(3)
            .map(|v| v.parse().unwrap())
            .collect();
        for (k, want) in ["1", "5", "15"].iter().zip(f) {
            // The kernel updates the averages every 5 s; a tick between the two reads
            // moves them by a fraction of a runnable task.
            assert!((l.average[*k] - want).abs() < 0.5, "{k}: {l:?} vs {raw}");
        }
        assert!(l.entities.total >= 1 && l.entities.current <= l.entities.total);
        assert!(l.last_pid > 0);
    }

    #[test]
    fn loadavg_parses_the_kernel_format_and_rejects_others() {
        let l = parse_loadavg("0.50 0.25 0.10 2/150 4242\n").unwrap();
        assert_eq!(l.average["5"], 0.25);
        assert_eq!(
            l.entities,
            Entities {
                current: 2,
                total: 150
            }
        );
        assert_eq!(l.last_pid, 4242);
        assert!(parse_loadavg("0.5 0.2 0.1 2-150 4242").is_none());
        assert!(parse_loadavg("").is_none());
    }

    #[test]
    fn uptime_is_plausible() {
        let u = uptime().unwrap();
        assert!(u.seconds > 0.0 && u.idle_seconds >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let boot_from_uptime = now as f64 - u.seconds;
        assert!((boot_from_uptime - u.boot_time as f64).abs() < 5.0, "{u:?}");
    }

    #[test]
    fn host_and_os_are_the_machine() {
        let h = host().unwrap();
        assert_eq!(
            h.hostname,
            nix::unistd::gethostname().unwrap().to_string_lossy()
        );
        assert!(!h.fqdn.is_empty());
        assert!(!h.kernel.is_empty() && !h.machine.is_empty());
        let o = os().unwrap();
        assert!(!o.id.is_empty() && !o.pretty_name.is_empty(), "{o:?}");
        assert_eq!(version().version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn os_release_quotes() {
        let f = parse_os_release("# c\nNAME=\"Debian GNU/Linux\"\nID=debian\nX='a b'\n");
        assert_eq!(f["NAME"], "Debian GNU/Linux");
        assert_eq!(f["ID"], "debian");
        assert_eq!(f["X"], "a b");
    }
}
