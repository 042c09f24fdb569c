//! The process table, read from /proc/<pid>/{stat,cmdline}.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::{read, InfoError};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The user name, or the uid as text when it has none.
    pub user: String,
    /// R, S, D, Z, T... as in /proc/<pid>/stat.
    pub state: String,
    /// The kernel's short name (comm).
    pub name: String,
    /// Arguments joined by spaces; empty for kernel threads.
    pub cmdline: String,
    pub threads: u32,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    /// User + system CPU time so far.
    pub cpu_seconds: f64,
    /// Seconds after boot the process started.
    pub start_seconds: f64,
}

/// Every process visible in /proc, by pid. One that exits while being read is left out.
pub fn ps() -> Result<Vec<Process>, InfoError> {
    let dir = std::fs::read_dir("/proc").map_err(|error| InfoError::Read {
        path: "/proc".into(),
        error,
    })?;
    let tick = clock_ticks();
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut users: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = Vec::new();
    for e in dir.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        let Ok(stat) = read(e.path().join("stat")) else {
            continue;
        };
        let Some(mut p) = parse_stat(pid, &stat, tick, page) else {
            continue;
        };
        p.uid = meta.uid();
        p.user = users
            .entry(p.uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(p.uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| p.uid.to_string())
            })
            .clone();
        p.cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| {
                let s = String::from_utf8_lossy(&b);
                s.trim_end_matches('\0').replace('\0', " ")
            })
            .unwrap_or_default();
        out.push(p);
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64
}

/// /proc/<pid>/stat: the name is in parentheses and may itself hold spaces and
/// parentheses, so the fields after it are found from the last ')'.
fn parse_stat(pid: u32, stat: &str, tick: f64, page: u64) -> Option<Process> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // f[0] is field 3 (state) of proc(5).
    let n = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(Process {
        pid,
        ppid: n(4)? as u32,
        uid: 0,
        user: String::new(),
        state: f.first()?.to_string(),
        name,
        cmdline: String::new(),
        threads: n(20)? as u32,
        rss_bytes: n(24)? * page,
        vsize_bytes: n(23)?,
        cpu_seconds: (n(14)? + n(15)?) as f64 / tick,
        start_seconds: n(22)? as f64 / tick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_listed_with_its_parent() {
        let all = ps().unwrap();
        let me = std::process::id();
        let p = all.iter().find(|p| p.pid == me).expect("own pid in ps");
        assert_eq!(p.ppid, std::os::unix::process::parent_id());
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert!(p.rss_bytes > 0 && p.threads >= 1);
        assert!(!p.cmdline.is_empty());
        assert!(all.iter().any(|p| p.pid == 1));
        assert!(all.windows(2).all(|w| w[0].pid < w[1].pid));
    }

    #[test]
    fn stat_with_parentheses_in_the_name() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 500 1000 25 18446744073709551615";
        let p = parse_stat(42, line, 100.0, 4096).unwrap();
        assert_eq!(p.name, "a (b) c");
        assert_eq!((p.state.as_str(), p.ppid, p.threads), ("S", 1, 3));
        assert_eq!(p.cpu_seconds, 2.0);
        assert_eq!(p.rss_bytes, 25 * 4096);
        assert!(parse_stat(1, "garbage", 100.0, 4096).is_none());
    }
}
