//! Ganeti's simple-store files (`<data_dir>/ssconf_*`) and this node's name.
//!
//! Only the master publishes; which node that is can change at any time (master
//! failover), so callers re-read `ssconf_master_node` before each publish.

use std::path::{Path, PathBuf};

/// Ganeti's default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ganeti";

#[derive(Debug, Clone)]
pub struct Ssconf {
    data_dir: PathBuf,
}

impl Ssconf {
    pub fn new(data_dir: &Path) -> Ssconf {
        Ssconf {
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn read(&self, key: &str) -> std::io::Result<String> {
        let p = self.data_dir.join(format!("ssconf_{key}"));
        std::fs::read_to_string(&p).map(|s| s.trim().to_string())
    }

    /// The master node's name, or the error reading it.
    pub fn master_node(&self) -> std::io::Result<String> {
        self.read("master_node")
    }

    /// The cluster's name (empty if unknown, as a message field).
    pub fn cluster_name(&self) -> String {
        self.read("cluster_name").unwrap_or_default()
    }
}

/// This host's fully qualified name, as Python's `socket.getfqdn()` (which Ganeti and
/// Synnefo use) would give it: the hostname if it already has a dot, else its canonical
/// name from the resolver.
pub fn fqdn() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    if host.contains('.') {
        return host;
    }
    let hints = dns_lookup::AddrInfoHints {
        flags: nix::libc::AI_CANONNAME,
        ..dns_lookup::AddrInfoHints::default()
    };
    if let Ok(mut it) = dns_lookup::getaddrinfo(Some(&host), None, Some(hints)) {
        if let Some(Ok(ai)) = it.next() {
            if let Some(c) = ai.canonname.filter(|c| c.contains('.')) {
                return c;
            }
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trimmed_values() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ssconf_master_node"), "node1.example.test\n").unwrap();
        std::fs::write(d.path().join("ssconf_cluster_name"), "c.example.test\n").unwrap();
        let s = Ssconf::new(d.path());
        assert_eq!(s.master_node().unwrap(), "node1.example.test");
        assert_eq!(s.cluster_name(), "c.example.test");
        assert!(Ssconf::new(Path::new("/nonexistent"))
            .master_node()
            .is_err());
    }

    #[test]
    fn fqdn_is_not_empty() {
        assert!(!fqdn().is_empty());
    }
}
