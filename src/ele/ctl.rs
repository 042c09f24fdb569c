//! ele_ctl: start, stop, restart, reload, promote or show one PostgreSQL cluster of
//! this host, named as discovery finds it (name, `<version>/<name>` or port), or list
//! them all.
//!
//! A cluster postgresql-common knows is driven with `pg_ctlcluster` when that is
//! installed (it keeps Debian's log file, external pid file and start.conf); any other
//! cluster, or any cluster on a host without postgresql-common, with `pg_ctl -D`. An
//! admin system calls this over SSH as the database owner, so every outcome a caller
//! must tell apart has its own exit status (EXIT STATUS in ele_ctl(8)).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, ValueEnum};

use super::checkin::Cache;
use super::discover::{self, Discovery, Facts, Role, Source};
use crate::cli::ExitError;
use crate::config::{Config, ConfigError};
use crate::pg::cluster::{Layout, PmStatus};
use crate::proc::Cmd;

pub const PROGRAM: &str = "ele_ctl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Reload,
    Promote,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Smart,
    Fast,
    Immediate,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Smart => "smart",
            Mode::Fast => "fast",
            Mode::Immediate => "immediate",
        }
    }
}

/// Control a PostgreSQL cluster of this host with pg_ctlcluster or pg_ctl.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// Configuration file ([Discovery] is read; missing is fine unless given)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The cluster: its name, <version>/<name> or port; or `list`
    pub cluster: String,
    /// What to do
    pub action: Option<Action>,
    /// Shutdown mode for stop and restart
    #[arg(short = 'm', long = "mode", value_enum, default_value = "fast")]
    pub mode: Mode,
    /// Seconds to wait for start, stop or promote
    #[arg(short = 't', long = "timeout", value_name = "SECONDS", default_value = "60",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// If stop times out: stop immediately, then kill the postmaster
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(&args).map_err(crate::cli::coded))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Config {} does not exist!", .0.display())]
    NoConfig(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}: no action given (start, stop, restart, reload, promote or status)")]
    NoAction(String),
    #[error("cluster {0} is already running")]
    AlreadyRunning(String),
    #[error("cluster {0} is not running")]
    NotRunning(String),
    #[error("unknown cluster {what}; clusters here: {known}")]
    Unknown { what: String, known: String },
    #[error("cluster {what} is ambiguous: {matches}; name it by port")]
    Ambiguous { what: String, matches: String },
    #[error("cluster {label}: {action} did not finish within {secs}s")]
    Timeout {
        label: String,
        action: &'static str,
        secs: u64,
    },
    #[error("cluster {0} is not a replica (nothing to promote)")]
    NotReplica(String),
    #[error("cluster {label}: {action} failed: {detail}")]
    Failed {
        label: String,
        action: &'static str,
        detail: String,
    },
}

impl ExitError for Error {
    fn code(&self) -> u8 {
        match self {
            Error::NoConfig(_) | Error::Config(_) | Error::Failed { .. } => 1,
            Error::NoAction(_) => 2,
            Error::AlreadyRunning(_) => 3,
            Error::NotRunning(_) => 4,
            Error::Unknown { .. } | Error::Ambiguous { .. } => 5,
            Error::Timeout { .. } => 6,
            Error::NotReplica(_) => 7,
        }
    }
}

/// `[Discovery]`, and the clusters ele_report has seen (so a stopped cluster made
/// outside postgresql-common can be started).
fn settings(args: &Args) -> Result<(Discovery, Vec<(PathBuf, u16)>), Error> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(discover::DEFAULT_CONFIG), false),
    };
    if !path.exists() {
        return if explicit {
            Err(Error::NoConfig(path))
        } else {
            let cache = Cache::peek(Path::new(super::checkin::DEFAULT_CACHE_DIR));
            Ok((Discovery::default(), cache.remembered()))
        };
    }
    let cfg = Config::load(&path)?;
    let cache = Cache::peek(&super::checkin::cache_dir(&cfg)?);
    Ok((Discovery::from_config(&cfg)?, cache.remembered()))
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let _ = crate::logging::init(
        PROGRAM,
        &crate::logging::Target::Stderr,
        log::LevelFilter::Warn,
    );
    let (d, remembered) = settings(args)?;
    let host = discover::hostname();
    let found = crate::pg::block_on(discover::discover(&d, &host, &remembered));
    if args.cluster == "list" && args.action.is_none() {
        println!(
            "{}",
            serde_json::to_string_pretty(&found.clusters).expect("facts serialize")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let action = args
        .action
        .ok_or_else(|| Error::NoAction(args.cluster.clone()))?;
    let c = pick(&found.clusters, &args.cluster)?;
    let ctl = Control {
        c,
        d: &d,
        timeout: Duration::from_secs(args.timeout),
        pg_ctlcluster: pg_ctlcluster_for(c),
    };
    match action {
        Action::Status => {
            println!(
                "{}",
                serde_json::to_string_pretty(c).expect("facts serialize")
            );
            if !c.online {
                return Err(Error::NotRunning(c.label()));
            }
        }
        Action::Start => {
            if c.online {
                return Err(Error::AlreadyRunning(c.label()));
            }
            ctl.start()?;
        }
        Action::Stop => {
            if !c.online {
                return Err(Error::NotRunning(c.label()));
            }
            ctl.stop(args.mode, args.force)?;
        }
        Action::Restart => {
            if c.online {
                ctl.stop(args.mode, args.force)?;
            }
            ctl.start()?;
        }
        Action::Reload => {
            if !c.online {
                return Err(Error::NotRunning(c.label()));
            }
            ctl.simple("reload")?;
        }
        Action::Promote => {
            if !c.online {
                return Err(Error::NotRunning(c.label()));
            }
            if c.role != Some(Role::Replica) {
                return Err(Error::NotReplica(c.label()));
            }
            ctl.promote()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster `what` names: a port, `<version>/<name>`, or a name.
pub fn pick<'a>(all: &'a [Facts], what: &str) -> Result<&'a Facts, Error> {
    let matches: Vec<&Facts> = if let Ok(port) = what.parse::<u16>() {
        let on_port: Vec<&Facts> = all.iter().filter(|c| c.port == port).collect();
        // Two clusters configured on one port: the running one is meant.
        let online: Vec<&Facts> = on_port.iter().copied().filter(|c| c.online).collect();
        if online.len() == 1 {
            online
        } else {
            on_port
        }
    } else if what.contains('/') {
        all.iter()
            .filter(|c| c.debian.as_deref() == Some(what))
            .collect()
    } else {
        all.iter().filter(|c| c.name == what).collect()
    };
    let describe = |cs: &[&Facts]| {
        let v: Vec<String> = cs
            .iter()
            .map(|c| match &c.debian {
                Some(d) => format!("{d} (port {})", c.port),
                None => c.label(),
            })
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    match matches.len() {
        1 => Ok(matches[0]),
        0 => Err(Error::Unknown {
            what: what.to_string(),
            known: describe(&all.iter().collect::<Vec<_>>()),
        }),
        _ => Err(Error::Ambiguous {
            what: what.to_string(),
            matches: describe(&matches),
        }),
    }
}

/// pg_ctlcluster, when it is installed and knows this cluster.
fn pg_ctlcluster_for(c: &Facts) -> Option<PathBuf> {
    if c.debian.is_none()
        || !(c.seen_by.contains(&Source::Debian) || c.seen_by.contains(&Source::PgLsclusters))
    {
        return None;
    }
    find_in_path("pg_ctlcluster")
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

struct Control<'a> {
    c: &'a Facts,
    d: &'a Discovery,
    timeout: Duration,
    pg_ctlcluster: Option<PathBuf>,
}

impl Control<'_> {
    fn data(&self) -> Result<&Path, Error> {
        self.c.data_dir.as_deref().ok_or_else(|| Error::Failed {
            label: self.c.label(),
            action: "control",
            detail: "its data directory is not known".into(),
        })
    }

    /// `pg_ctlcluster <version> <name> <action>` with pg_ctl options after `--`.
    fn cluster_cmd(&self, prog: &Path, pre: &[&str], action: &str, post: &[String]) -> Cmd {
        let deb = self.c.debian.as_deref().unwrap_or_default();
        let (ver, name) = deb.split_once('/').unwrap_or((deb, ""));
        let mut cmd = Cmd::new(prog);
        if self.d.custom_conf_root() {
            cmd.env("PG_CLUSTER_CONF_ROOT", &self.d.conf_root)
                .arg("--skip-systemctl-redirect");
        }
        cmd.args(pre).args([ver, name, action]);
        if !post.is_empty() {
            cmd.arg("--").args(post);
        }
        cmd
    }

    /// `pg_ctl -D <data> ...`, the cluster's own version's pg_ctl, run as the data
    /// directory's owner when we are root (pg_ctl refuses to run as root).
    fn pg_ctl(&self, args: &[String]) -> Result<Cmd, Error> {
        use std::os::unix::fs::MetadataExt;
        let data = self.data()?;
        let bin = self
            .c
            .version
            .as_deref()
            .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/pg_ctl")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("pg_ctl"));
        let mut cmd = Cmd::new(bin);
        cmd.arg("-D").arg(data).args(args);
        if nix::unistd::geteuid().is_root() {
            let uid = std::fs::metadata(data).map(|m| m.uid()).unwrap_or(0);
            if uid != 0 {
                let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .ok_or_else(|| Error::Failed {
                        label: self.c.label(),
                        action: "control",
                        detail: format!("the owner (uid {uid}) of {} has no name", data.display()),
                    })?;
                cmd.user(user.name).current_dir("/");
            }
        }
        Ok(cmd)
    }

    fn exec(&self, action: &'static str, mut cmd: Cmd) -> Result<(), Error> {
        // pg_ctl has its own timeout; this one only ends a command that hangs.
        cmd.timeout(self.timeout + Duration::from_secs(30));
        log::debug!("{}", cmd.display());
        let o = cmd.run().map_err(|e| Error::Failed {
            label: self.c.label(),
            action,
            detail: e.detail(),
        })?;
        if o.success() {
            return Ok(());
        }
        Err(Error::Failed {
            label: self.c.label(),
            action,
            detail: format!("{} {}: {}", cmd.display(), o.describe(), o.stderr_line()),
        })
    }

    fn secs(&self) -> String {
        self.timeout.as_secs().to_string()
    }

    fn pidfile(&self) -> Option<crate::pg::cluster::PidFile> {
        let data = self.c.data_dir.as_deref()?;
        Layout::default()
            .postmaster_pid(data)
            .ok()
            .flatten()
            .filter(|p| p.alive())
    }

    fn start(&self) -> Result<(), Error> {
        let r = match &self.pg_ctlcluster {
            Some(p) => self.exec("start", self.cluster_cmd(p, &[], "start", &[])),
            None => {
                let log = self.data()?.join("startup.log");
                let args = ["-w", "-t", &self.secs(), "-l"].map(String::from);
                let mut cmd = self.pg_ctl(&args)?;
                cmd.arg(&log).arg("start");
                self.exec("start", cmd).map_err(|e| match e {
                    Error::Failed {
                        label,
                        action,
                        detail,
                    } => Error::Failed {
                        label,
                        action,
                        detail: format!("{detail} (see {})", log.display()),
                    },
                    e => e,
                })
            }
        };
        if r.is_err()
            && self
                .pidfile()
                .is_some_and(|p| p.status == Some(PmStatus::Starting))
        {
            return Err(self.timed_out("start"));
        }
        r
    }

    fn timed_out(&self, action: &'static str) -> Error {
        Error::Timeout {
            label: self.c.label(),
            action,
            secs: self.timeout.as_secs(),
        }
    }

    fn stop_once(&self, mode: Mode, force: bool) -> Result<(), Error> {
        let post = ["-t".to_string(), self.secs()];
        match &self.pg_ctlcluster {
            Some(p) => {
                let mut pre = vec!["-m", mode.word()];
                if force {
                    pre.push("--force");
                }
                self.exec("stop", self.cluster_cmd(p, &pre, "stop", &post))
            }
            None => {
                let mut args = vec!["-w".to_string(), "-m".into(), mode.word().into()];
                args.extend(post);
                args.push("stop".into());
                self.exec("stop", self.pg_ctl(&args)?)
            }
        }
    }

    /// Stop in `mode`; with `force`, what does not stop in time is stopped immediately,
    /// then killed (pg_ctlcluster's escalation, and SIGKILL as its last word).
    fn stop(&self, mode: Mode, force: bool) -> Result<(), Error> {
        let first = self.stop_once(mode, force);
        if self.pidfile().is_none() {
            return Ok(());
        }
        if !force {
            return Err(match first {
                Err(Error::Failed { .. }) | Ok(()) => self.timed_out("stop"),
                Err(e) => e,
            });
        }
        if self.pg_ctlcluster.is_none() {
            let _ = self.stop_once(Mode::Immediate, false);
        }
        if let Some(p) = self.pidfile() {
            log::warn!(
                "cluster {}: still running after an immediate stop; killing postmaster {}",
                self.c.label(),
                p.pid
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid.abs()),
                nix::sys::signal::Signal::SIGKILL,
            );
            if !wait_until(self.timeout, || !crate::daemon::pid_alive(p.pid.abs())) {
                return Err(self.timed_out("stop"));
            }
        }
        Ok(())
    }

    fn simple(&self, action: &'static str) -> Result<(), Error> {
        match &self.pg_ctlcluster {
            Some(p) => self.exec(action, self.cluster_cmd(p, &[], action, &[])),
            None => self.exec(action, self.pg_ctl(&[action.to_string()])?),
        }
    }

    /// Promote, and return once the server has left recovery (its postmaster.pid says
    /// `ready`, no longer `standby`).
    fn promote(&self) -> Result<(), Error> {
        match &self.pg_ctlcluster {
            Some(p) => {
                let post = ["-t".to_string(), self.secs()];
                self.exec("promote", self.cluster_cmd(p, &[], "promote", &post))?
            }
            None => {
                let args = ["-w", "-t", &self.secs(), "promote"].map(String::from);
                self.exec("promote", self.pg_ctl(&args)?)?
            }
        }
        let out_of_recovery = || {
            let data = self.c.data_dir.as_deref();
            self.pidfile()
                .is_some_and(|p| p.status == Some(PmStatus::Ready))
                && data.is_some_and(|d| !d.join("standby.signal").exists())
        };
        if wait_until(self.timeout, out_of_recovery) {
            Ok(())
        } else {
            Err(self.timed_out("promote"))
        }
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn facts(name: &str, port: u16, debian: Option<&str>, online: bool) -> Facts {
        Facts {
            name: name.into(),
            port,
            debian: debian.map(str::to_string),
            online,
            seen_by: BTreeSet::from([Source::Postmaster]),
            ..Facts::default()
        }
    }

    #[test]
    fn clusters_by_name_version_name_or_port() {
        let all = [
            facts("main", 5432, Some("15/main"), true),
            facts("main", 5433, Some("13/main"), false),
            facts("pay", 5433, None, true),
        ];
        assert_eq!(pick(&all, "15/main").unwrap().port, 5432);
        assert_eq!(pick(&all, "pay").unwrap().port, 5433);
        // Port 5433: the running one.
        assert_eq!(pick(&all, "5433").unwrap().name, "pay");
        let e = pick(&all, "main").unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(
            e.to_string()
                .contains("15/main (port 5432), 13/main (port 5433)"),
            "{e}"
        );
        let e = pick(&all, "nosuch").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown cluster nosuch; clusters here: 15/main (port 5432), \
             13/main (port 5433), pay on port 5433"
        );
        assert_eq!(
            pick(&[], "x").unwrap_err().to_string(),
            "unknown cluster x; clusters here: none"
        );
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            Error::AlreadyRunning("x".into()).code(),
            Error::NotRunning("x".into()).code(),
            Error::Unknown {
                what: "x".into(),
                known: "y".into(),
            }
            .code(),
            Error::Timeout {
                label: "x".into(),
                action: "stop",
                secs: 1,
            }
            .code(),
            Error::NotReplica("x".into()).code(),
        ];
        assert_eq!(codes, [3, 4, 5, 6, 7]);
    }
}
