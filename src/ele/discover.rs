//! Every PostgreSQL cluster on this host, from every place one shows itself, merged.
//!
//! postgresql-common only knows the clusters under `/etc/postgresql`; a cluster made by
//! hand with initdb, or one whose configuration was removed, is invisible to it. So the
//! sources are, in order: the socket lock files (`.s.PGSQL.<port>.lock`) in the socket
//! directories, Debian's `/etc/postgresql/<ver>/<name>/` (clusters that are down
//! included), `pg_lsclusters` when installed, and the running postmasters found in
//! /proc. Each names a data directory; clusters are merged by it (by port where a
//! source has none), and each cluster records which sources saw it.
//!
//! Then the files of each data directory say what they can without a server
//! (`PG_VERSION`, `standby.signal`, `primary_conninfo`, `global/pg_control`), and a
//! running one is asked over its socket (version, recovery, WAL position, timeline).
//! What could not be read is kept with the cluster as a problem, so a caller can
//! report the others and still fail.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::pg::cluster::{self, Layout, Settings, DEFAULT_CONF_ROOT};
use crate::pg::lsn::Lsn;

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
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    debian: Option<(String, String)>,
    conf_dir: Option<PathBuf>,
    socket_dir: Option<PathBuf>,
    pub(crate) settings: Option<Settings>,
}

/// Find every cluster and read what can be read about it. `host` is this host's name
/// (a master on the local host is named by it); `remembered` are the data directories
/// and ports of clusters seen before.
pub async fn discover(d: &Discovery, host: &str, remembered: &[(PathBuf, u16)]) -> Found {
    let mut found = Found::default();
    let mut sightings: Vec<(Source, Sighting)> = Vec::new();
    socket_locks(d, &mut sightings, &mut found.problems);
    debian(d, &mut sightings, &mut found.problems);
    if let Some(prog) = &d.pg_lsclusters {
        pg_lsclusters(d, prog, &mut sightings, &mut found.problems);
    }
    if let Some(proc) = &d.proc {
        postmasters(proc, &mut sightings, &mut found.problems);
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
        read_files(c);
        if c.online {
            query_server(c, d.connect_timeout).await;
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

fn socket_locks(d: &Discovery, out: &mut Vec<(Source, Sighting)>, problems: &mut Vec<String>) {
    let lay = Layout::default();
    for dir in &d.socket_dirs {
        match lay.socket_locks(std::slice::from_ref(dir)) {
            Ok(locks) => {
                for l in locks {
                    out.push((
                        Source::SocketLock,
                        Sighting {
                            data_dir: Some(l.lock.data_dir.clone()),
                            port: Some(l.port),
                            socket_dir: Some(l.dir.clone()),
                            ..Sighting::default()
                        },
                    ));
                }
            }
            Err(e) => problems.push(format!("socket directory {}: {e}", dir.display())),
        }
    }
}

fn sorted_subdirs(p: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = match fs::read_dir(p) {
        Ok(e) => e
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    v.sort();
    Ok(v)
}

fn debian(d: &Discovery, out: &mut Vec<(Source, Sighting)>, problems: &mut Vec<String>) {
    let lay = d.layout();
    let root = &d.conf_root;
    let versions = match sorted_subdirs(root) {
        Ok(v) => v,
        Err(e) => return problems.push(format!("{}: {e}", root.display())),
    };
    for ver in versions {
        let names = match sorted_subdirs(&root.join(&ver)) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{}: {e}", root.join(&ver).display()));
                continue;
            }
        };
        for name in names {
            if !root
                .join(&ver)
                .join(&name)
                .join("postgresql.conf")
                .is_file()
            {
                continue;
            }
            match lay.cluster(&ver, &name) {
                Ok(c) => out.push((
                    Source::Debian,
                    Sighting {
                        data_dir: c.data_directory.clone(),
                        port: Some(c.port),
                        debian: Some((ver.clone(), name.clone())),
                        conf_dir: Some(c.conf_dir.clone()),
                        socket_dir: c.socket_dirs.first().cloned(),
                        settings: Some(c.settings),
                    },
                )),
                Err(e) => problems.push(format!("cluster {ver}/{name}: {e}")),
            }
        }
    }
}

/// One line of `pg_lsclusters --no-header`: Ver Cluster Port Status Owner
/// Data-directory Log-file.
fn parse_lsclusters_line(line: &str) -> Option<(String, String, u16, PathBuf)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 {
        return None;
    }
    Some((
        f[0].to_string(),
        f[1].to_string(),
        f[2].parse().ok()?,
        PathBuf::from(f[5]),
    ))
}

fn pg_lsclusters(
    d: &Discovery,
    prog: &Path,
    out: &mut Vec<(Source, Sighting)>,
    problems: &mut Vec<String>,
) {
    let mut cmd = crate::proc::Cmd::new(prog);
    cmd.arg("--no-header").timeout(Duration::from_secs(30));
    if d.custom_conf_root() {
        cmd.env("PG_CLUSTER_CONF_ROOT", &d.conf_root);
    }
    let o = match cmd.run() {
        Ok(o) => o,
        // postgresql-common is not installed: nothing to ask.
        Err(crate::proc::Error::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return
        }
        Err(e) => return problems.push(e.detail()),
    };
    if !o.success() {
        return problems.push(format!(
            "{} {}: {}",
            cmd.display(),
            o.describe(),
            o.stderr_line()
        ));
    }
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_lsclusters_line(line) {
            Some((ver, name, port, data)) => out.push((
                Source::PgLsclusters,
                Sighting {
                    data_dir: Some(data),
                    port: Some(port),
                    debian: Some((ver, name)),
                    ..Sighting::default()
                },
            )),
            None => problems.push(format!("pg_lsclusters: cannot parse {line:?}")),
        }
    }
}

/// A postmaster's command line: argv[0] is the postgres binary (a backend rewrites its
/// title to `postgres: ...`). Returns the `-D` argument, if any.
fn postmaster_cmdline(cmdline: &[u8]) -> Option<Option<PathBuf>> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let argv0 = args.first()?;
    if argv0.contains(':') {
        return None;
    }
    let base = Path::new(argv0).file_name()?.to_string_lossy().into_owned();
    if base != "postgres" && base != "postmaster" {
        return None;
    }
    let mut data = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-D" {
            data = it.next().map(PathBuf::from);
        } else if let Some(d) = a.strip_prefix("-D") {
            data = Some(PathBuf::from(d));
        }
    }
    Some(data)
}

fn postmasters(proc: &Path, out: &mut Vec<(Source, Sighting)>, problems: &mut Vec<String>) {
    let entries = match fs::read_dir(proc) {
        Ok(e) => e,
        Err(e) => return problems.push(format!("{}: {e}", proc.display())),
    };
    let lay = Layout::default();
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let Some(dash_d) = postmaster_cmdline(&cmdline) else {
            continue;
        };
        // The postmaster works in its data directory; -D may be relative or absent.
        let data = fs::read_link(e.path().join("cwd")).ok().or(dash_d);
        let Some(data) = data else {
            problems.push(format!(
                "postmaster {pid}: cannot tell its data directory (no -D, cwd unreadable)"
            ));
            continue;
        };
        let pidfile = match lay.postmaster_pid(&data) {
            Ok(Some(p)) if p.pid == pid => p,
            // A single-user backend or a postmaster on its way out: not a server.
            Ok(_) => continue,
            Err(e) => {
                problems.push(format!("postmaster {pid}: {e}"));
                continue;
            }
        };
        out.push((
            Source::Postmaster,
            Sighting {
                data_dir: Some(data),
                port: Some(pidfile.port),
                socket_dir: pidfile.socket_dir.clone(),
                ..Sighting::default()
            },
        ));
    }
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

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// What the data directory says without a server.
fn read_files(c: &mut Facts) {
    let Some(data) = c.data_dir.clone() else {
        c.problems.push("no data directory known".into());
        return;
    };
    let lay = Layout::default();
    match cluster::data_version(&data) {
        Ok(v) => c.version = Some(v.to_string()),
        // Not a data directory, or not ours to read: nothing else there will be.
        Err(e) => return c.problems.push(e.to_string()),
    }
    match lay.postmaster_pid(&data) {
        Ok(Some(p)) if p.alive() => {
            c.online = true;
            c.pid = Some(p.pid);
            c.port = p.port;
            if p.socket_dir.is_some() {
                c.socket_dir = p.socket_dir.clone();
            }
            if c.socket_dir.is_none() {
                // No Unix socket: the first TCP address.
                c.socket_dir = p
                    .listen_addr
                    .as_deref()
                    .map(|a| if a == "*" { "127.0.0.1" } else { a })
                    .map(PathBuf::from);
            }
        }
        Ok(_) => c.online = false,
        Err(e) => c.problems.push(e.to_string()),
    }
    let major = c
        .version
        .as_deref()
        .and_then(cluster::PgVersion::parse)
        .map(|v| v.major());
    let in_recovery = if major.is_some_and(|m| m < 12) {
        exists(&data.join("recovery.conf"))
    } else {
        exists(&data.join("standby.signal")) || exists(&data.join("recovery.signal"))
    };
    c.role = Some(if in_recovery {
        Role::Replica
    } else {
        Role::Primary
    });
    // The configuration as the server reads it: Debian's (which took the data
    // directory's postgresql.auto.conf in), else the data directory's own.
    let mut settings = c.settings.take();
    if settings.is_none() {
        let mut s = Settings::default();
        let conf = data.join("postgresql.conf");
        let r = lay.read_conf(&conf, &mut s).and_then(|_| {
            let auto = data.join("postgresql.auto.conf");
            if auto.is_file() {
                lay.read_conf(&auto, &mut s)?;
            }
            if major.is_some_and(|m| m < 12) && data.join("recovery.conf").is_file() {
                lay.read_conf(&data.join("recovery.conf"), &mut s)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => settings = Some(s),
            Err(e) => c.problems.push(e.to_string()),
        }
    }
    if let Some(s) = &settings {
        c.cluster_name = s.get("cluster_name").map(str::to_string);
        if in_recovery {
            c.master_host = s.get("primary_conninfo").map(str::to_string);
        }
    }
    c.settings = settings;
    if major.is_some_and(|m| m >= 11) {
        match fs::read(data.join("global/pg_control")) {
            Ok(b) => {
                if let Some(ctl) = ControlFile::parse(&b) {
                    c.system_identifier = Some(ctl.system_identifier.to_string());
                    c.timeline = Some(ctl.timeline);
                    c.wal_lsn = Some(Lsn(ctl.checkpoint));
                }
            }
            Err(e) => c.problems.push(format!(
                "cannot read {}: {e}",
                data.join("global/pg_control").display()
            )),
        }
    }
}

/// The part of `global/pg_control` (ControlFileData, PostgreSQL 11 and later, this
/// machine's byte order) that says which system and where its last checkpoint is.
#[derive(Debug, PartialEq, Eq)]
struct ControlFile {
    system_identifier: u64,
    checkpoint: u64,
    timeline: u32,
}

impl ControlFile {
    fn parse(b: &[u8]) -> Option<ControlFile> {
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        // system_identifier, pg_control_version, catalog_version_no, state, time,
        // checkPoint, then checkPointCopy (redo, ThisTimeLineID, ...).
        Some(ControlFile {
            system_identifier: u64_at(0)?,
            checkpoint: u64_at(32)?,
            timeline: u32_at(48)?,
        })
    }
}

const SERVER_QUERY: &str = "
SELECT current_setting('server_version_num')::int,
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
            ELSE pg_current_wal_lsn()::text END,
       (SELECT system_identifier FROM pg_control_system())::text,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       current_setting('cluster_name'),
       CASE WHEN pg_is_in_recovery() THEN current_setting('primary_conninfo') END";

/// Ask the running server; a failure is a problem of this cluster, what the files
/// said stays.
async fn query_server(c: &mut Facts, timeout: Duration) {
    let Some(sock) = c.socket_dir.clone() else {
        c.problems
            .push("running, but listens on no socket or address".into());
        return;
    };
    let conninfo = format!(
        "host='{}' port={} dbname=postgres application_name=ele_tools connect_timeout={}",
        sock.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'"),
        c.port,
        timeout.as_secs().max(1)
    );
    let client = match tokio::time::timeout(timeout, crate::pg::connect(&conninfo)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return c
                .problems
                .push(format!("cannot connect to {}: {}", e.target(), e.detail()))
        }
        Err(_) => {
            return c
                .problems
                .push(format!("{}: no answer within {timeout:?}", sock.display()))
        }
    };
    let row = match client.query_one(SERVER_QUERY, &[]).await {
        Ok(r) => r,
        Err(e) => {
            return c.problems.push(format!(
                "{} port {}: {}",
                sock.display(),
                c.port,
                crate::pg::one_line(&e)
            ));
        }
    };
    let num: i32 = row.get(0);
    c.server_version = Some(if num >= 100000 {
        format!("{}.{}", num / 10000, num % 10000)
    } else {
        format!("{}.{}.{}", num / 10000, num / 100 % 100, num % 100)
    });
    let recovery: bool = row.get(1);
    c.role = Some(if recovery {
        Role::Replica
    } else {
        Role::Primary
    });
    c.wal_lsn = row
        .get::<_, Option<String>>(2)
        .and_then(|l| l.parse().ok())
        .or(if recovery { c.wal_lsn } else { None });
    c.system_identifier = row.get(3);
    c.timeline = row.get::<_, Option<i32>>(4).map(|t| t as u32);
    let name: String = row.get(5);
    if !name.is_empty() {
        c.cluster_name = Some(name);
    }
    c.master_host = if recovery { row.get(6) } else { None };
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

/// `host` or `host:port` of the master a `primary_conninfo` names. A socket directory,
/// `localhost` or a loopback address is this host; a port left out is libpq's 5432.
pub fn master_of(conninfo: &str, host: &str, own_port: u16) -> Option<String> {
    let kv = parse_conninfo(conninfo);
    if kv.is_empty() {
        return None;
    }
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().to_string();
    let h = get("host")
        .map(first)
        .filter(|h| !h.is_empty())
        .or_else(|| get("hostaddr").map(first))
        .unwrap_or_default();
    let local = h.is_empty()
        || h.starts_with('/')
        || h.starts_with('@')
        || h == "localhost"
        || h.starts_with("127.")
        || h == "::1";
    let name = if local { host.to_string() } else { h };
    let port = get("port")
        .map(first)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(crate::pg::conninfo::DEFAULT_PORT);
    Some(if port == own_port {
        name
    } else {
        format!("{name}:{port}")
    })
}

/// `key=value` pairs of a libpq keyword/value conninfo (values quoted with `'`, `\`
/// escapes), or of a `postgresql://` URI's host and port. What does not parse is
/// left out: only host and port are wanted.
fn parse_conninfo(s: &str) -> Vec<(String, String)> {
    let s = s.trim();
    if let Some(rest) = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
    {
        let auth_host = rest.split(['/', '?']).next().unwrap_or("");
        let hostport = auth_host.rsplit('@').next().unwrap_or("");
        let mut out = Vec::new();
        let (h, p) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.bytes().all(|b| b.is_ascii_digit()) => {
                (h, Some(p))
            }
            _ => (hostport, None),
        };
        out.push(("host".into(), h.trim_matches(['[', ']']).to_string()));
        if let Some(p) = p {
            out.push(("port".into(), p.to_string()));
        }
        return out;
    }
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        if key.is_empty() {
            break;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            break;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut val = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            while let Some(c) = it.next() {
                match c {
                    '\\' => {
                        if let Some(n) = it.next() {
                            val.push(n);
                        }
                    }
                    '\'' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    if let Some(n) = it.next() {
                        val.push(n);
                    }
                } else {
                    val.push(c);
                }
            }
        }
        out.push((key, val));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_from_primary_conninfo() {
        // What pg_basebackup -R writes, through a socket directory.
        let ci = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
                  host='/tmp/hk sock' port=5433 sslmode=prefer target_session_attrs=any";
        assert_eq!(master_of(ci, "db1", 5434).as_deref(), Some("db1:5433"));
        assert_eq!(master_of(ci, "db1", 5433).as_deref(), Some("db1"));
        assert_eq!(
            master_of("host=db0.example.com user=rep", "db1", 5432).as_deref(),
            Some("db0.example.com")
        );
        assert_eq!(
            master_of("host = 'it\\'s' port = 6000", "db1", 5432).as_deref(),
            Some("it's:6000")
        );
        assert_eq!(
            master_of("hostaddr=127.0.0.1", "db1", 5432).as_deref(),
            Some("db1")
        );
        assert_eq!(
            master_of(
                "postgresql://rep:pw@db0:5444/x?sslmode=require",
                "db1",
                5432
            )
            .as_deref(),
            Some("db0:5444")
        );
        assert_eq!(master_of("", "db1", 5432), None);
    }

    #[test]
    fn postmasters_by_command_line() {
        let pm = b"/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib/postgresql/15/main\0-c\0config_file=/etc/postgresql/15/main/postgresql.conf\0";
        assert_eq!(
            postmaster_cmdline(pm),
            Some(Some(PathBuf::from("/var/lib/postgresql/15/main")))
        );
        assert_eq!(
            postmaster_cmdline(b"postgres\0-D/srv/pg\0"),
            Some(Some(PathBuf::from("/srv/pg")))
        );
        assert_eq!(postmaster_cmdline(b"/usr/bin/postgres\0"), Some(None));
        assert_eq!(
            postmaster_cmdline(b"postgres: 15/main: checkpointer \0"),
            None
        );
        assert_eq!(postmaster_cmdline(b"/bin/bash\0-c\0postgres\0"), None);
        assert_eq!(postmaster_cmdline(b""), None);
    }

    #[test]
    fn lsclusters_lines() {
        let l = "15  main    5432 online,recovery postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log";
        assert_eq!(
            parse_lsclusters_line(l),
            Some((
                "15".into(),
                "main".into(),
                5432,
                PathBuf::from("/var/lib/postgresql/15/main")
            ))
        );
        assert_eq!(parse_lsclusters_line("15 main x down postgres /d /l"), None);
        assert_eq!(parse_lsclusters_line("15 main"), None);
    }

    #[test]
    fn control_file_fields() {
        let mut b = vec![0u8; 296];
        b[0..8].copy_from_slice(&7_311_111_111_111_111_111u64.to_ne_bytes());
        b[32..40].copy_from_slice(&0x1_0000_0028u64.to_ne_bytes());
        b[48..52].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            ControlFile::parse(&b),
            Some(ControlFile {
                system_identifier: 7_311_111_111_111_111_111,
                checkpoint: 0x1_0000_0028,
                timeline: 3
            })
        );
        assert_eq!(ControlFile::parse(&b[..40]), None);
    }

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
