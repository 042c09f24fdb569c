//! Every PostgreSQL cluster on this host, from every place one shows itself, merged.
//!
//! postgresql-common only knows the clusters under `/etc/postgresql`; a cluster made by
//! hand with initdb, or one whose configuration was removed, is invisible to it. So the
//! sources are, in order: the socket lock files (`.s.PGSQL.<port>.lock`) in the socket
//! directories, Debian's `/etc/postgresql/<ver>/<name>/` (clusters that are down
//! included), `pg_lsclusters` when installed, the running postmasters found in /proc
//! (`sources`), and the clusters reported before whose data directory is still there
//! (ele_report's cache: a stopped hand-made cluster shows itself nowhere else). Each
//! names a data directory; clusters are merged by it (by port where a source has none),
//! and each cluster records which sources saw it.
//!
//! Then the files of each data directory (`datadir`) and, for a running one, the
//! server (`server`) say the rest. What could not be read is kept with the cluster as
//! a problem, so a caller can report the others and still fail.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::pg::cluster::{Layout, DEFAULT_CONF_ROOT};
use crate::pg::conf::Settings;
use crate::pg::lsn::Lsn;

mod datadir;
mod primary;
mod server;
mod sources;

pub use primary::master_of;

/// Both programs read it: ele_report all of it, ele_ctl `[Discovery]` and the cache
/// directory.
pub const DEFAULT_CONFIG: &str = "/etc/ele_tools/report.ini";

/// This host's name, as the upstream knows its servers.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The section of report.ini these settings are read from.
pub const SECTION: &str = "Discovery";
const KEYS: &[&str] = &[
    "socket_dirs",
    "conf_root",
    "pg_lsclusters",
    "proc",
    "ports",
    "connect_timeout",
];
/// Where PostgreSQL puts sockets: its compiled-in /tmp and Debian's directory.
const SOCKET_DIRS: &str = "/tmp /var/run/postgresql";
/// A value of `pg_lsclusters` or `proc` that turns the source off.
const OFF: &str = "none";

/// Where a cluster was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A `.s.PGSQL.<port>.lock` file in a socket directory.
    SocketLock,
    /// `<conf_root>/<version>/<name>/postgresql.conf`.
    Debian,
    /// A line of `pg_lsclusters`.
    PgLsclusters,
    /// A running postmaster in /proc.
    Postmaster,
    /// Reported before (ele_report's cache), its data directory still there: how a
    /// stopped cluster made outside postgresql-common is still found.
    Remembered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
}

/// Where discovery looks, from `[Discovery]` (every path injectable for tests).
#[derive(Debug, Clone)]
pub struct Discovery {
    pub socket_dirs: Vec<PathBuf>,
    /// postgresql-common's PG_CLUSTER_CONF_ROOT.
    pub conf_root: PathBuf,
    /// The pg_lsclusters program; None to not run it.
    pub pg_lsclusters: Option<PathBuf>,
    /// The proc file system; None to not look for postmasters.
    pub proc: Option<PathBuf>,
    /// Only clusters on these ports (empty: all).
    pub ports: Vec<u16>,
    pub connect_timeout: Duration,
}

impl Default for Discovery {
    fn default() -> Discovery {
        Discovery {
            socket_dirs: crate::config::split_list(SOCKET_DIRS)
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            conf_root: PathBuf::from(DEFAULT_CONF_ROOT),
            pg_lsclusters: Some(PathBuf::from("pg_lsclusters")),
            proc: Some(PathBuf::from("/proc")),
            ports: Vec::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Discovery {
    /// `[Discovery]` of `cfg` (all keys optional).
    pub fn from_config(cfg: &Config) -> Result<Discovery, ConfigError> {
        let s = cfg.section(SECTION);
        s.reject_unknown(KEYS)?;
        let d = Discovery::default();
        let off = |v: Option<PathBuf>, default: Option<PathBuf>| match v {
            Some(p) if p.as_os_str() == OFF => None,
            Some(p) => Some(p),
            None => default,
        };
        let socket_dirs = match s.string("socket_dirs")? {
            None => d.socket_dirs,
            Some(v) => crate::config::split_list(&v)
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        };
        let mut ports = Vec::new();
        for p in s.list("ports")? {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(s.bad_value("ports", &p, "not a port number")),
            }
        }
        Ok(Discovery {
            socket_dirs,
            conf_root: s.path_or("conf_root", DEFAULT_CONF_ROOT)?,
            pg_lsclusters: off(s.path("pg_lsclusters")?, d.pg_lsclusters),
            proc: off(s.path("proc")?, d.proc),
            ports,
            connect_timeout: s.duration(
                "connect_timeout",
                d.connect_timeout,
                Duration::from_millis(100)..=Duration::from_secs(600),
            )?,
        })
    }

    /// The Debian layout these settings describe.
    pub fn layout(&self) -> Layout {
        Layout::default().with_conf_root(&self.conf_root)
    }

    /// Whether the Debian configuration is somewhere else than postgresql-common's
    /// default (then its tools are told with PG_CLUSTER_CONF_ROOT).
    pub fn custom_conf_root(&self) -> bool {
        self.conf_root != Path::new(DEFAULT_CONF_ROOT)
    }
}

/// What is known about one cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    /// The herd name: the Debian cluster name, else `cluster_name`, else the data
    /// directory's last component.
    pub name: String,
    pub port: u16,
    /// `<version>/<name>` when postgresql-common knows the cluster.
    pub debian: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub conf_dir: Option<PathBuf>,
    pub socket_dir: Option<PathBuf>,
    /// `PG_VERSION`.
    pub version: Option<String>,
    /// The running server's version (`15.10`).
    pub server_version: Option<String>,
    pub online: bool,
    pub pid: Option<i32>,
    pub role: Option<Role>,
    /// The master a replica streams from, `host` or `host:port` (when it listens on
    /// another port than the replica), the local host named by its host name.
    pub master_host: Option<String>,
    /// pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a replica; the
    /// last checkpoint's when the server is down.
    pub wal_lsn: Option<Lsn>,
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub seen_by: BTreeSet<Source>,
    /// What could not be read about this cluster.
    pub problems: Vec<String>,
    #[serde(skip)]
    pub(crate) settings: Option<Settings>,
    #[serde(skip)]
    pub(crate) cluster_name: Option<String>,
}

impl Facts {
    /// `15/main`, or `main on port 5433`: how an operator names it.
    pub fn label(&self) -> String {
        match &self.debian {
            Some(d) => d.clone(),
            None => format!("{} on port {}", self.name, self.port),
        }
    }

    /// The WAL position as a byte count (what the upstream stores).
    pub fn wal_position(&self) -> Option<u64> {
        self.wal_lsn.map(|l| l.0)
    }
}

/// Everything found: the clusters, and the problems of sources that could not be read.
#[derive(Debug, Default)]
pub struct Found {
    pub clusters: Vec<Facts>,
    pub problems: Vec<String>,
}

/// One source's sighting of a cluster.
#[derive(Debug, Default)]
struct Sighting {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) port: Option<u16>,
    pub(super) debian: Option<(String, String)>,
    pub(super) conf_dir: Option<PathBuf>,
    pub(super) socket_dir: Option<PathBuf>,
    pub(crate) settings: Option<Settings>,
}

/// Find every cluster and read what can be read about it. `host` is this host's name
/// (a master on the local host is named by it); `remembered` are the data directories
/// and ports of clusters seen before.
pub async fn discover(d: &Discovery, host: &str, remembered: &[(PathBuf, u16)]) -> Found {
    let mut found = Found::default();
    let mut sightings: Vec<(Source, Sighting)> = Vec::new();
    sources::socket_locks(d, &mut sightings, &mut found.problems);
    sources::debian(d, &mut sightings, &mut found.problems);
    if let Some(prog) = &d.pg_lsclusters {
        sources::pg_lsclusters(d, prog, &mut sightings, &mut found.problems);
    }
    if let Some(proc) = &d.proc {
        sources::postmasters(proc, &mut sightings, &mut found.problems);
    }
    for (data, port) in remembered {
        // A data directory removed since: the cluster is gone, not unreadable.
        if data.join("PG_VERSION").exists() {
            sightings.push((
                Source::Remembered,
                Sighting {
                    data_dir: Some(data.clone()),
                    port: Some(*port),
                    ..Sighting::default()
                },
            ));
        }
    }
    let mut clusters = merge(sightings);
    if !d.ports.is_empty() {
        clusters.retain(|c| d.ports.contains(&c.port));
    }
    for c in &mut clusters {
        datadir::read_files(c);
        if c.online {
            server::query_server(c, d.connect_timeout).await;
        }
        finish(c, host);
    }
    clusters.sort_by(|a, b| (a.port, &a.data_dir).cmp(&(b.port, &b.data_dir)));
    found.clusters = clusters;
    found
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// One cluster per data directory (per port for sightings without one).
fn merge(sightings: Vec<(Source, Sighting)>) -> Vec<Facts> {
    let mut out: Vec<Facts> = Vec::new();
    for (source, s) in sightings {
        let data = s.data_dir.as_deref().map(canonical);
        let i = out.iter().position(|c| match (&data, &c.data_dir) {
            (Some(a), Some(b)) => a == b,
            _ => s.port.is_some() && Some(c.port) == s.port,
        });
        let c = match i {
            Some(i) => &mut out[i],
            None => {
                out.push(Facts::default());
                out.last_mut().unwrap()
            }
        };
        c.seen_by.insert(source);
        if c.data_dir.is_none() {
            c.data_dir = data;
        }
        // A running server's own word (lock file, postmaster.pid) beats configuration.
        if let Some(p) = s.port {
            if c.port == 0 || matches!(source, Source::SocketLock | Source::Postmaster) {
                c.port = p;
            }
        }
        if let Some((v, n)) = s.debian {
            c.debian = Some(format!("{v}/{n}"));
            c.name = n;
        }
        if s.conf_dir.is_some() {
            c.conf_dir = s.conf_dir;
        }
        if c.socket_dir.is_none() || source == Source::SocketLock {
            c.socket_dir = s.socket_dir.or(c.socket_dir.take());
        }
        if s.settings.is_some() {
            c.settings = s.settings;
        }
    }
    out
}

/// The name, and the master named as the upstream wants it.
fn finish(c: &mut Facts, host: &str) {
    if c.name.is_empty() {
        // cluster_name is often `<version>/<name>` (Debian's); the herd is the name.
        let from_setting = c
            .cluster_name
            .as_deref()
            .map(|n| n.rsplit('/').next().unwrap_or(n).trim().to_string())
            .filter(|n| !n.is_empty());
        let from_dir = c
            .data_dir
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        c.name = from_setting
            .or(from_dir)
            .unwrap_or_else(|| format!("port{}", c.port));
    }
    if c.role != Some(Role::Replica) {
        c.master_host = None;
    }
    c.master_host = c
        .master_host
        .take()
        .and_then(|ci| master_of(&ci, host, c.port));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// Sockets, Debian and a down cluster merged by data directory, with what the files
    /// say; no server runs, so nothing is online.
    #[tokio::test]
    async fn merged_from_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let data = r.join("data/15/main");
        let conf = r.join("etc/postgresql");
        write(
            &conf.join("15/main/postgresql.conf"),
            &format!(
                "data_directory = '{}'\nport = 5444\ncluster_name = '15/main'\n",
                data.display()
            ),
        );
        write(&data.join("PG_VERSION"), "15\n");
        write(&data.join("standby.signal"), "");
        write(
            &data.join("postgresql.auto.conf"),
            "primary_conninfo = 'host=db0 port=5432'\n",
        );
        // A stale lock (pid 0x7fffffff is not alive) naming the same data directory.
        write(
            &r.join("sock/.s.PGSQL.5444.lock"),
            &format!(
                "2147483647\n{}\n1\n5444\n{}\n",
                data.display(),
                r.join("sock").display()
            ),
        );
        // A hand-made cluster's directory seen only through its lock file.
        let other = r.join("handmade");
        write(&other.join("PG_VERSION"), "15\n");
        write(&other.join("postgresql.conf"), "port = 5999\n");
        write(
            &r.join("sock/.s.PGSQL.5999.lock"),
            &format!("2147483647\n{}\n1\n5999\n\n", other.display()),
        );
        let disc = Discovery {
            socket_dirs: vec![r.join("sock"), r.join("nosuch")],
            conf_root: conf.clone(),
            pg_lsclusters: None,
            proc: None,
            ports: vec![],
            connect_timeout: Duration::from_secs(1),
        };
        let found = discover(&disc, "db1", &[]).await;
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        assert_eq!(found.clusters.len(), 2, "{:?}", found.clusters);
        let c = &found.clusters[0];
        assert_eq!(c.name, "main");
        assert_eq!(c.port, 5444);
        assert_eq!(c.debian.as_deref(), Some("15/main"));
        assert_eq!(
            c.seen_by,
            BTreeSet::from([Source::SocketLock, Source::Debian])
        );
        assert_eq!((c.online, c.role), (false, Some(Role::Replica)));
        assert_eq!(c.master_host.as_deref(), Some("db0:5432"));
        assert_eq!(c.version.as_deref(), Some("15"));
        // No pg_control in this fake data directory: said, not hidden.
        assert!(c.problems.iter().any(|p| p.contains("pg_control")), "{c:?}");
        let h = &found.clusters[1];
        assert_eq!((h.name.as_str(), h.port), ("handmade", 5999));
        assert_eq!(h.seen_by, BTreeSet::from([Source::SocketLock]));
        assert_eq!((h.role, &h.master_host), (Some(Role::Primary), &None));

        let only = Discovery {
            ports: vec![5999],
            ..disc
        };
        let found = discover(
            &only,
            "db1",
            &[(other.clone(), 5999), (r.join("gone"), 6000)],
        )
        .await;
        assert_eq!(found.clusters.len(), 1, "the gone one is not reported");
        assert_eq!(found.clusters[0].port, 5999);
        assert_eq!(
            found.clusters[0].seen_by,
            BTreeSet::from([Source::SocketLock, Source::Remembered])
        );
    }

    #[test]
    fn settings_from_config() {
        let cfg = Config::parse(
            "[Discovery]\nsocket_dirs = /a, /b\npg_lsclusters = none\nports = 5432 5433\n",
            Path::new("r.ini"),
        )
        .unwrap();
        let d = Discovery::from_config(&cfg).unwrap();
        assert_eq!(d.socket_dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(d.pg_lsclusters, None);
        assert_eq!(d.proc, Some(PathBuf::from("/proc")));
        assert_eq!(d.ports, [5432, 5433]);
        let bad = Config::parse("[Discovery]\nports = 5432 x\n", Path::new("r.ini")).unwrap();
        assert_eq!(
            Discovery::from_config(&bad).unwrap_err().to_string(),
            "r.ini: [Discovery] ports = \"x\": not a port number"
        );
        let unknown = Config::parse("[Discovery]\nport = 1\n", Path::new("r.ini")).unwrap();
        assert!(Discovery::from_config(&unknown).is_err());
    }
}
