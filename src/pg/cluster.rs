//! Cluster discovery as Debian lays clusters out (what pg_lsclusters shows):
//! `/etc/postgresql/<version>/<name>/postgresql.conf` (with its includes and the data
//! directory's postgresql.auto.conf), `PG_VERSION`, `postmaster.pid`, and the socket
//! lock files `.s.PGSQL.<port>.lock`. Pure parsing is separate from reading, and every
//! path is taken under a root directory, so tests run against a temporary tree.

use std::path::{Path, PathBuf};

use super::conf::{parse_conf, Settings};
use crate::fsutil::PathError;

/// Debian's compiled-in socket directory (unix_socket_directories' default).
pub const DEFAULT_SOCKET_DIR: &str = super::conninfo::DEFAULT_SOCKET_DIR;
/// Where postgresql-common keeps `<version>/<name>/` unless PG_CLUSTER_CONF_ROOT says.
pub const DEFAULT_CONF_ROOT: &str = "/etc/postgresql";
/// PostgreSQL gives up on include nesting deeper than this (CONF_FILE_MAX_DEPTH).
const MAX_INCLUDE_DEPTH: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{path}: line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn read(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|e| PathError::new("read", path, e).into())
}

/// Paths as the host sees them, found under `root` (`/` in production).
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// Where `<version>/<name>/` are (a host path): postgresql-common's
    /// PG_CLUSTER_CONF_ROOT, `/etc/postgresql` unless set.
    conf_root: PathBuf,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout::new("/")
    }
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout {
            root: root.into(),
            conf_root: PathBuf::from(DEFAULT_CONF_ROOT),
        }
    }

    /// The same layout with the clusters' configuration directories under `dir` (a
    /// host path), as postgresql-common reads PG_CLUSTER_CONF_ROOT.
    pub fn with_conf_root(mut self, dir: impl Into<PathBuf>) -> Layout {
        self.conf_root = dir.into();
        self
    }

    /// Where the clusters' configuration directories are (a host path).
    pub fn conf_root(&self) -> &Path {
        &self.conf_root
    }

    /// Where the host path `p` (absolute) is under the root.
    pub fn at(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Read a configuration file and the files it includes into `into`. `path` is a
    /// host path; relative includes are relative to the including file's directory.
    pub fn read_conf(&self, path: &Path, into: &mut Settings) -> Result<(), ClusterError> {
        self.read_conf_at(path, into, 0)
    }

    fn read_conf_at(
        &self,
        path: &Path,
        into: &mut Settings,
        depth: usize,
    ) -> Result<(), ClusterError> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(ClusterError::Corrupt {
                path: path.to_path_buf(),
                reason: "configuration files nested too deeply (an include loop?)".into(),
            });
        }
        let text = read(&self.at(path))?;
        let lines = parse_conf(&text).map_err(|(line, reason)| ClusterError::Syntax {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        for l in lines {
            let target = || dir.join(&l.value);
            match l.name.as_str() {
                "include" => self.read_conf_at(&target(), into, depth + 1)?,
                "include_if_exists" => {
                    if self.at(&target()).exists() {
                        self.read_conf_at(&target(), into, depth + 1)?;
                    }
                }
                "include_dir" => {
                    let d = target();
                    let mut names: Vec<String> = std::fs::read_dir(self.at(&d))
                        .map_err(|e| PathError::new("read directory", &d, e))?
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".conf") && !n.starts_with('.'))
                        .collect();
                    names.sort();
                    for n in names {
                        self.read_conf_at(&d.join(n), into, depth + 1)?;
                    }
                }
                _ => {
                    into.set(l.name, l.value);
                }
            }
        }
        Ok(())
    }

    /// Every cluster under `/etc/postgresql/<version>/<name>/` (the conf root), by
    /// version then name.
    pub fn clusters(&self) -> Result<Vec<Cluster>, ClusterError> {
        let etc = self.conf_root.as_path();
        let mut out = Vec::new();
        for ver in sorted_dirs(&self.at(etc))? {
            for name in sorted_dirs(&self.at(&etc.join(&ver)))? {
                if self
                    .at(&etc.join(&ver).join(&name).join("postgresql.conf"))
                    .is_file()
                {
                    out.push(self.cluster(&ver, &name)?);
                }
            }
        }
        Ok(out)
    }

    /// One cluster's settings as its configuration gives them, Debian's defaults for
    /// what it leaves out.
    pub fn cluster(&self, version: &str, name: &str) -> Result<Cluster, ClusterError> {
        let conf_dir = self.conf_root.join(version).join(name);
        let conf = conf_dir.join("postgresql.conf");
        let mut s = Settings::default();
        self.read_conf(&conf, &mut s)?;
        let data_directory = match s.get("data_directory") {
            Some(d) => Some(PathBuf::from(d)),
            // pg_createcluster's link for a data directory named elsewhere.
            None => std::fs::read_link(self.at(&conf_dir.join("pgdata"))).ok(),
        };
        // ALTER SYSTEM's settings are read after postgresql.conf.
        if let Some(d) = &data_directory {
            let auto = d.join("postgresql.auto.conf");
            if self.at(&auto).is_file() {
                self.read_conf(&auto, &mut s)?;
            }
        }
        let port = match s.get("port") {
            None => 5432,
            Some(p) => p.parse().map_err(|_| ClusterError::Corrupt {
                path: conf.clone(),
                reason: format!("port = {p:?}: not a port number"),
            })?,
        };
        let sockets = s
            .get("unix_socket_directories")
            .or(s.get("unix_socket_directory"))
            .unwrap_or(DEFAULT_SOCKET_DIR);
        Ok(Cluster {
            version: version.to_string(),
            name: name.to_string(),
            conf_dir,
            data_directory,
            port,
            socket_dirs: split_dirs(sockets),
            external_pid_file: s
                .get("external_pid_file")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            settings: s,
        })
    }

    /// The data directory's `postmaster.pid`, or None when there is none (stopped).
    pub fn postmaster_pid(&self, data_dir: &Path) -> Result<Option<PidFile>, ClusterError> {
        let p = data_dir.join("postmaster.pid");
        match std::fs::read_to_string(self.at(&p)) {
            Ok(t) => parse_pid_file(&t)
                .map(Some)
                .map_err(|reason| ClusterError::Corrupt { path: p, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PathError::new("read", &p, e).into()),
        }
    }

    /// The pid of a live postmaster on `data_dir`, from the first line of its
    /// postmaster.pid alone, so that a file caught half-rewritten still counts as
    /// running (for guards such as "do not restore over a running server").
    pub fn running_postmaster(&self, data_dir: &Path) -> Option<i32> {
        let text = std::fs::read_to_string(self.at(&data_dir.join("postmaster.pid"))).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        crate::daemon::pid_alive(pid.abs()).then_some(pid.abs())
    }

    /// The socket lock files `.s.PGSQL.<port>.lock` in `dirs` (host paths), by
    /// directory then port. A missing directory has none.
    pub fn socket_locks(&self, dirs: &[PathBuf]) -> Result<Vec<SocketLock>, ClusterError> {
        let mut out = Vec::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(self.at(dir)) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PathError::new("read directory", dir, e).into()),
            };
            let mut found = Vec::new();
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(port) = lock_port(&name) else {
                    continue;
                };
                let p = dir.join(&name);
                let lock = parse_pid_file(&read(&self.at(&p))?).map_err(|reason| {
                    ClusterError::Corrupt {
                        path: p.clone(),
                        reason,
                    }
                })?;
                found.push(SocketLock {
                    dir: dir.clone(),
                    port,
                    lock,
                });
            }
            found.sort_by_key(|l| l.port);
            out.extend(found);
        }
        Ok(out)
    }
}

fn sorted_dirs(p: &Path) -> Result<Vec<String>, ClusterError> {
    let entries = match std::fs::read_dir(p) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PathError::new("read directory", p, e).into()),
    };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// unix_socket_directories: comma-separated, each trimmed, `"..."` allowed; an empty
/// list means no Unix socket.
fn split_dirs(v: &str) -> Vec<PathBuf> {
    v.split(',')
        .map(|d| d.trim().trim_matches('"'))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// `.s.PGSQL.5432.lock` → 5432.
fn lock_port(name: &str) -> Option<u16> {
    name.strip_prefix(".s.PGSQL.")?
        .strip_suffix(".lock")?
        .parse()
        .ok()
}

/// A cluster as its configuration describes it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub version: String,
    pub name: String,
    /// `/etc/postgresql/<version>/<name>` (a host path).
    pub conf_dir: PathBuf,
    pub data_directory: Option<PathBuf>,
    pub port: u16,
    /// Empty when the cluster listens on no Unix socket.
    pub socket_dirs: Vec<PathBuf>,
    pub external_pid_file: Option<PathBuf>,
    /// Everything read, for settings not named above.
    pub settings: Settings,
}

// ---- PG_VERSION -------------------------------------------------------------

/// A data directory's `PG_VERSION`: `15`, or `9.6` before PostgreSQL 10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgVersion(String);

impl PgVersion {
    pub fn parse(text: &str) -> Option<PgVersion> {
        let t = text.trim();
        let ok = !t.is_empty()
            && t.split('.').count() <= 2
            && t.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| PgVersion(t.to_string()))
    }

    /// As written: the directory name under /usr/lib/postgresql.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first number (15; 9 for 9.6): enough to compare with releases from 10 on.
    pub fn major(&self) -> u32 {
        self.0
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Display for PgVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read `<data_dir>/PG_VERSION` (a path as this process sees it).
pub fn data_version(data_dir: &Path) -> Result<PgVersion, ClusterError> {
    let p = data_dir.join("PG_VERSION");
    let text = read(&p)?;
    PgVersion::parse(&text).ok_or_else(|| ClusterError::Corrupt {
        path: p,
        reason: format!("{:?} is not a PostgreSQL version", text.trim()),
    })
}

// ---- postmaster.pid and socket lock files -------------------------------------

/// The postmaster's status line (line 8 of postmaster.pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmStatus {
    Starting,
    Stopping,
    Ready,
    Standby,
    Other(String),
}

/// `postmaster.pid`, or a socket lock file (which has the first five lines only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// Negative for a single-user backend, as PostgreSQL writes it.
    pub pid: i32,
    pub data_dir: PathBuf,
    /// Unix time the postmaster started.
    pub start_time: i64,
    pub port: u16,
    /// The first socket directory; None when the server has no Unix socket.
    pub socket_dir: Option<PathBuf>,
    /// The first listen address (`*` for all); None when it listens on no TCP address.
    pub listen_addr: Option<String>,
    /// System V shared memory key and id.
    pub shmem: Option<(u64, u64)>,
    pub status: Option<PmStatus>,
}

impl PidFile {
    /// Whether the process it names still exists.
    pub fn alive(&self) -> bool {
        crate::daemon::pid_alive(self.pid.abs())
    }
}

/// Parse a postmaster.pid / socket lock file's text.
pub fn parse_pid_file(text: &str) -> Result<PidFile, String> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 4 {
        return Err(format!("{} line(s), expected at least 4", lines.len()));
    }
    let num = |i: usize, what: &str| -> Result<i64, String> {
        lines[i]
            .trim()
            .parse()
            .map_err(|_| format!("line {}: {what} {:?} is not a number", i + 1, lines[i]))
    };
    let pid = i32::try_from(num(0, "pid")?).map_err(|_| "line 1: pid out of range".to_string())?;
    let port =
        u16::try_from(num(3, "port")?).map_err(|_| "line 4: port out of range".to_string())?;
    let opt = |i: usize| lines.get(i).map(|l| l.trim()).filter(|l| !l.is_empty());
    let shmem = match opt(6) {
        None => None,
        Some(l) => {
            let mut it = l.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(k)), Some(Ok(id))) => Some((k, id)),
                _ => return Err(format!("line 7: shared memory key {l:?}")),
            }
        }
    };
    let status = opt(7).map(|s| match s {
        "starting" => PmStatus::Starting,
        "stopping" => PmStatus::Stopping,
        "ready" => PmStatus::Ready,
        "standby" => PmStatus::Standby,
        other => PmStatus::Other(other.to_string()),
    });
    Ok(PidFile {
        pid,
        data_dir: PathBuf::from(lines[1]),
        start_time: num(2, "start time")?,
        port,
        socket_dir: opt(4).map(PathBuf::from),
        listen_addr: opt(5).map(str::to_string),
        shmem,
        status,
    })
}

/// A socket lock file: which server holds the socket for `port` in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLock {
    pub dir: PathBuf,
    pub port: u16,
    pub lock: PidFile,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::conf::DEBIAN_CONF;

    /// /var/lib/postgresql/15/main/postmaster.pid of a running Debian 12 server.
    const POSTMASTER_PID: &str = "2220\n/var/lib/postgresql/15/main\n1796194966\n5432\n\
        /var/run/postgresql\n127.0.0.1\n   729204         4\nready   \n";
    /// /var/run/postgresql/.s.PGSQL.5432.lock of the same server.
    const SOCKET_LOCK: &str =
        "2220\n/var/lib/postgresql/15/main\n1796194966\n5432\n/var/run/postgresql\n";

    #[test]
    fn pid_file_and_socket_lock() {
        let p = parse_pid_file(POSTMASTER_PID).unwrap();
        assert_eq!(
            p,
            PidFile {
                pid: 2220,
                data_dir: "/var/lib/postgresql/15/main".into(),
                start_time: 1796194966,
                port: 5432,
                socket_dir: Some("/var/run/postgresql".into()),
                listen_addr: Some("127.0.0.1".into()),
                shmem: Some((729204, 4)),
                status: Some(PmStatus::Ready),
            }
        );
        let l = parse_pid_file(SOCKET_LOCK).unwrap();
        assert_eq!(
            (l.pid, l.port, l.listen_addr, l.status),
            (2220, 5432, None, None)
        );
        // Listening on no TCP address, no socket: empty lines.
        let p = parse_pid_file("-77\n/d\n1\n5433\n\n\n        0         0\nstandby \n").unwrap();
        assert_eq!(
            (p.pid, p.socket_dir, p.listen_addr, p.status),
            (-77, None, None, Some(PmStatus::Standby))
        );
        assert!(parse_pid_file("2220\n/d\n").is_err());
        assert!(parse_pid_file("x\n/d\n1\n5432\n")
            .unwrap_err()
            .contains("pid"));
        assert!(parse_pid_file("1\n/d\n1\n99999\n").is_err());
    }

    fn write(root: &Path, p: &str, text: &str) {
        let f = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }

    #[test]
    fn clusters_with_includes_and_auto_conf() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "/etc/postgresql/15/main/postgresql.conf", DEBIAN_CONF);
        write(
            r,
            "/etc/postgresql/15/main/conf.d/10-port.conf",
            "port = 5434\n",
        );
        write(
            r,
            "/etc/postgresql/15/main/conf.d/.hidden.conf",
            "port = 1\n",
        );
        write(r, "/etc/postgresql/15/main/conf.d/notes.txt", "port = 2\n");
        write(r, "/var/lib/postgresql/15/main/PG_VERSION", "15\n");
        write(
            r,
            "/var/lib/postgresql/15/main/postgresql.auto.conf",
            "# Do not edit this file manually!\nunix_socket_directories = '/tmp, \"/run/pg x\"'\n",
        );
        write(
            r,
            "/var/lib/postgresql/15/main/postmaster.pid",
            POSTMASTER_PID,
        );
        write(r, "/var/run/postgresql/.s.PGSQL.5432.lock", SOCKET_LOCK);
        write(
            r,
            "/etc/postgresql/13/old/postgresql.conf",
            "include_if_exists = 'missing.conf'\ninclude = '/etc/pg-extra.conf'\n",
        );
        write(r, "/etc/pg-extra.conf", "external_pid_file = ''\n");
        std::fs::create_dir_all(r.join("etc/postgresql/13/notacluster")).unwrap();

        let lay = Layout::new(r);
        let all = lay.clusters().unwrap();
        let names: Vec<String> = all
            .iter()
            .map(|c| format!("{}/{}", c.version, c.name))
            .collect();
        assert_eq!(names, ["13/old", "15/main"]);
        let old = &all[0];
        assert_eq!(old.port, 5432);
        assert_eq!(old.socket_dirs, [PathBuf::from(DEFAULT_SOCKET_DIR)]);
        assert_eq!(
            (&old.data_directory, &old.external_pid_file),
            (&None, &None)
        );
        let main = &all[1];
        assert_eq!(
            main.port, 5434,
            "conf.d overrides; hidden and non-.conf files skipped"
        );
        assert_eq!(
            main.socket_dirs,
            [PathBuf::from("/tmp"), PathBuf::from("/run/pg x")],
            "postgresql.auto.conf is read last"
        );
        assert_eq!(
            main.external_pid_file,
            Some("/var/run/postgresql/15-main.pid".into())
        );
        assert_eq!(main.settings.get("cluster_name"), Some("15/main"));
        let data = main.data_directory.clone().unwrap();
        assert_eq!(data, PathBuf::from("/var/lib/postgresql/15/main"));
        assert_eq!(data_version(&lay.at(&data)).unwrap().as_str(), "15");
        let pid = lay.postmaster_pid(&data).unwrap().unwrap();
        assert_eq!((pid.pid, pid.status), (2220, Some(PmStatus::Ready)));
        assert_eq!(lay.postmaster_pid(Path::new("/nowhere")).unwrap(), None);
        // This test's own pid stands in for a live postmaster; a torn file still counts.
        let me = std::process::id() as i32;
        write(r, "/srv/pg/postmaster.pid", &format!("{me}\n/srv/pg\n"));
        assert_eq!(lay.running_postmaster(Path::new("/srv/pg")), Some(me));
        assert!(lay.postmaster_pid(Path::new("/srv/pg")).is_err());
        write(r, "/srv/pg/postmaster.pid", "999999999\n");
        assert_eq!(lay.running_postmaster(Path::new("/srv/pg")), None);
        assert_eq!(lay.running_postmaster(Path::new("/nowhere")), None);
        let locks = lay
            .socket_locks(&[PathBuf::from("/var/run/postgresql"), PathBuf::from("/none")])
            .unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!((locks[0].port, locks[0].lock.pid), (5432, 2220));

        // A syntax error names the file and line.
        write(
            r,
            "/etc/postgresql/15/main/conf.d/20-bad.conf",
            "\nport = 'x\n",
        );
        let e = lay.cluster("15", "main").unwrap_err().to_string();
        assert_eq!(e, "/etc/postgresql/15/main/conf.d/20-bad.conf: line 2: unterminated quoted string in \"port = 'x\"");
        // An include loop ends.
        write(
            r,
            "/etc/postgresql/15/loop/postgresql.conf",
            "include = 'postgresql.conf'\n",
        );
        assert!(lay
            .cluster("15", "loop")
            .unwrap_err()
            .to_string()
            .contains("nested too deeply"));
    }

    #[test]
    fn versions() {
        assert_eq!(PgVersion::parse("15\n").unwrap().major(), 15);
        assert_eq!(PgVersion::parse("9.6").unwrap().as_str(), "9.6");
        assert_eq!(PgVersion::parse("9.6").unwrap().major(), 9);
        for bad in ["", "x", "15.", "1.2.3", "15 beta"] {
            assert_eq!(PgVersion::parse(bad), None, "{bad:?}");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("PG_VERSION"), "garbage\n").unwrap();
        assert!(data_version(d.path())
            .unwrap_err()
            .to_string()
            .contains("not a PostgreSQL version"));
        assert!(data_version(&d.path().join("none")).is_err());
    }
}
