//! `/etc/pacha/pacha.ini`, read once into a [`Config`] (through [`crate::config`]).
//!
//! ```ini
//! [pacha]
//! paths = /etc                  ; tracked trees (pacha track adds more, kept in state_dir)
//! state_dir = /var/lib/pacha    ; repository, tracked list, push and apt state
//! ignore = *.bak                ; added to the built-in ignore list
//! master =                      ; host holding the master store (empty: no push)
//! hosts_path = /opt/pacha/hosts ; the master store, one bare repository per host
//! debounce = 0.1                ; daemon: quiet time after a change before committing
//! [ssh]
//! user = root
//! port = 22
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config as Ini;

use super::error::PachaError;

pub const DEFAULT_CONFIG: &str = "/etc/pacha/pacha.ini";

const PACHA_KEYS: &[&str] = &[
    "paths",
    "state_dir",
    "repository",
    "ignore",
    "host",
    "master",
    "hosts_path",
    "debounce",
    "interval",
    "hooks_dir",
    "committer_name",
    "committer_email",
    "pidfile",
    "log",
    "syslog_facility",
];
const SSH_KEYS: &[&str] = &[
    "user",
    "port",
    "connect_timeout",
    "options",
    "identity",
    "known_hosts",
];

/// Where the daemon logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTo {
    Syslog,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    pub connect_timeout: u32,
    /// Extra ssh arguments (`-i key`, `-o UserKnownHostsFile=...`), shell-split.
    pub options: Vec<String>,
    /// `-i` (push and pull of nodes).
    pub identity: Option<PathBuf>,
    /// `-o UserKnownHostsFile=` (push and pull of nodes).
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    /// Tracked paths from the INI (absolute); `pacha track` keeps more in `state_dir`.
    pub paths: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub repository: PathBuf,
    /// Extra ignore patterns (after the built-in ones).
    pub ignore: Vec<String>,
    /// This host's name in the master store and in commits.
    pub host: String,
    pub master: Option<String>,
    pub hosts_path: PathBuf,
    pub debounce: Duration,
    /// Daemon: full check (and push retry) at least this often.
    pub interval: Duration,
    /// Holds `pacha_pre/` and `pacha_post/` (rebuild hooks).
    pub hooks_dir: PathBuf,
    pub committer_name: String,
    pub committer_email: String,
    pub pidfile: Option<PathBuf>,
    pub log: LogTo,
    pub syslog_facility: String,
    pub ssh: Ssh,
    /// `[nodes]`: templates, nodes, push and pull.
    pub nodes: super::nodes::Settings,
}

fn absolute(ini: &Ini, section: &str, key: &str, p: PathBuf) -> Result<PathBuf, PachaError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(ini
            .bad_value(
                section,
                key,
                &p.display().to_string(),
                "must be an absolute path".into(),
            )
            .into())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, PachaError> {
        let ini = Ini::load(path)?;
        Config::from_ini(&ini)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, PachaError> {
        Config::from_ini(&Ini::parse(text, path)?)
    }

    pub fn from_ini(ini: &Ini) -> Result<Config, PachaError> {
        for s in ini.sections() {
            if s != "pacha" && s != "ssh" && s != "nodes" {
                return Err(PachaError::Setting {
                    path: ini.path().to_path_buf(),
                    reason: format!(
                        "unknown section [{s}] (pacha reads [pacha], [ssh] and [nodes])"
                    ),
                });
            }
        }
        let p = ini.section("pacha");
        p.reject_unknown(PACHA_KEYS)?;
        let mut paths = Vec::new();
        for v in p.list("paths")? {
            paths.push(absolute(ini, "pacha", "paths", PathBuf::from(v))?);
        }
        let state_dir = absolute(
            ini,
            "pacha",
            "state_dir",
            p.path_or("state_dir", "/var/lib/pacha")?,
        )?;
        let repository = match p.path("repository")? {
            Some(r) => absolute(ini, "pacha", "repository", r)?,
            None => state_dir.join("repo.git"),
        };
        let host = match p.string("host")? {
            Some(h) => h,
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into()),
        };
        if host.is_empty() || host.contains('/') || host.starts_with('.') {
            return Err(p.bad_value("host", &host, "not a usable host name").into());
        }
        let hosts_path = absolute(
            ini,
            "pacha",
            "hosts_path",
            p.path_or("hosts_path", "/opt/pacha/hosts")?,
        )?;
        let debounce = p.duration(
            "debounce",
            Duration::from_millis(100),
            Duration::ZERO..=Duration::from_secs(3600),
        )?;
        let interval = p.duration(
            "interval",
            Duration::from_secs(60),
            Duration::from_millis(100)..=Duration::from_secs(86400),
        )?;
        let log = match p.string_or("log", "syslog")?.as_str() {
            "syslog" => LogTo::Syslog,
            "stderr" | "-" => LogTo::Stderr,
            f if f.starts_with('/') => LogTo::File(PathBuf::from(f)),
            other => {
                return Err(p
                    .bad_value("log", other, "use syslog, stderr or an absolute file path")
                    .into())
            }
        };
        let s = ini.section("ssh");
        s.reject_unknown(SSH_KEYS)?;
        let options = match s.string("options")? {
            None => Vec::new(),
            Some(o) => {
                shlex::split(&o).ok_or_else(|| s.bad_value("options", &o, "unbalanced quotes"))?
            }
        };
        for o in options.windows(2) {
            if o[0] == "-o"
                && o[1]
                    .to_ascii_lowercase()
                    .starts_with("stricthostkeychecking=")
            {
                return Err(s
                    .bad_value("options", &o.join(" "), "host keys are always checked")
                    .into());
            }
        }
        let ssh = Ssh {
            user: s.string_or("user", "root")?,
            port: s.number("port", 22u16, 1..)?,
            connect_timeout: s.number("connect_timeout", 10u32, 1..=600)?,
            options,
            identity: s.path("identity")?,
            known_hosts: s.path("known_hosts")?,
        };
        let nodes = super::nodes::Settings::from_section(&ini.section("nodes"))?;
        Ok(Config {
            path: ini.path().to_path_buf(),
            paths,
            repository,
            ignore: p.list("ignore")?,
            master: p.string("master")?,
            hosts_path,
            debounce,
            interval,
            hooks_dir: absolute(
                ini,
                "pacha",
                "hooks_dir",
                p.path_or("hooks_dir", "/etc/pacha")?,
            )?,
            committer_name: p.string_or("committer_name", "pacha")?,
            committer_email: p.string_or("committer_email", &format!("root@{host}"))?,
            pidfile: p.path("pidfile")?,
            log,
            syslog_facility: p.string_or("syslog_facility", "daemon")?,
            ssh,
            nodes,
            host,
            state_dir,
        })
    }

    /// The file `pacha track` / `untrack` keep the added paths in.
    pub fn tracked_file(&self) -> PathBuf {
        self.state_dir.join("tracked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_keys() {
        let c = Config::parse(
            "[pacha]\npaths = /etc /srv/x\nhost = h1\nmaster = m\n[ssh]\nport = 2222\noptions = -i /k -o UserKnownHostsFile=/kh\n",
            Path::new("p.ini"),
        )
        .unwrap();
        assert_eq!(
            c.paths,
            vec![PathBuf::from("/etc"), PathBuf::from("/srv/x")]
        );
        assert_eq!(c.repository, PathBuf::from("/var/lib/pacha/repo.git"));
        assert_eq!(c.ssh.port, 2222);
        assert_eq!(c.ssh.options, ["-i", "/k", "-o", "UserKnownHostsFile=/kh"]);
        assert_eq!(c.committer_email, "root@h1");
        assert_eq!(c.debounce, Duration::from_millis(100));
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Config::parse("[pacha]\npathz = /etc\n", Path::new("p.ini")).unwrap_err();
        assert_eq!(e.to_string(), "p.ini: [pacha] pathz: unknown key");
        let e = Config::parse("[pacha]\npaths = etc\n", Path::new("p.ini")).unwrap_err();
        assert!(e.to_string().contains("must be an absolute path"), "{e}");
        let e = Config::parse(
            "[ssh]\noptions = -o StrictHostKeyChecking=no\n",
            Path::new("p.ini"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("always checked"), "{e}");
        let e = Config::parse("[sssh]\n", Path::new("p.ini")).unwrap_err();
        assert!(e.to_string().contains("unknown section [sssh]"), "{e}");
    }
}
