//! ele_report: tell the ElepHaaS admin database about every PostgreSQL cluster on this
//! host. Run from cron: silent when all went well; otherwise one line per problem on
//! stderr and an exit status that says the worst (EXIT STATUS in ele_report(8)).
//! Clusters that could be read are reported even when others could not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use log::LevelFilter;

use super::checkin::{self, Cache, CacheError, Checkin};
use super::discover::{self, Discovery};
use crate::cli::ExitError;
use crate::config::{Config, ConfigError};
use crate::pg::PgError;

pub const PROGRAM: &str = "ele_report";

/// Transmit this host's PostgreSQL instances to the ElepHaaS admin database.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// Configuration file
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = discover::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log what is found and sent
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Log to this file instead of stderr
    #[arg(short = 'L', long = "log", value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Print as JSON what would be sent, and send nothing
    #[arg(long = "dry-run", conflicts_with = "json")]
    pub dry_run: bool,
    /// Print the discovered clusters as JSON, and send nothing
    #[arg(long = "json")]
    pub json: bool,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(&args).map_err(crate::cli::coded))
}

/// ele_report's failures; the exit status is the code of the worst one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The original's message, word for word.
    #[error("Config {} does not exist!", .0.display())]
    NoConfig(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: unknown section [{section}] (known: [Upstream], [Report], [Discovery])")]
    UnknownSection { path: PathBuf, section: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Log(#[from] crate::logging::LogError),
    #[error("cannot write the cache: {0}")]
    SaveCache(#[source] crate::fsutil::PathError),
    /// Down, refused, or no (right) password: `detail` says which, never the password.
    #[error("cannot connect to {target}: {detail}")]
    Upstream { target: String, detail: String },
    #[error("{target}: {what}: {detail}")]
    UpstreamCall {
        target: String,
        what: String,
        detail: String,
    },
    #[error("cluster {label}: {detail}")]
    Unreadable { label: String, detail: String },
    #[error("{0}")]
    Discovery(String),
    #[error("{0}")]
    Ignored(String),
}

impl ExitError for Error {
    fn code(&self) -> u8 {
        match self {
            Error::NoConfig(_)
            | Error::Config(_)
            | Error::UnknownSection { .. }
            | Error::Cache(_)
            | Error::Log(_)
            | Error::SaveCache(_) => 1,
            Error::Upstream { .. } | Error::UpstreamCall { .. } => 3,
            Error::Unreadable { .. } | Error::Discovery(_) => 4,
            Error::Ignored(_) => 5,
        }
    }
}

const UPSTREAM: &str = "Upstream";
const UPSTREAM_KEYS: &[&str] = &[
    "db_host",
    "db_port",
    "db_user",
    "db_name",
    "connect_timeout",
];
const REPORT: &str = "Report";
const REPORT_KEYS: &[&str] = &["cache_dir", "resend_after"];

/// report.ini, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub db_host: String,
    pub db_port: u16,
    pub db_user: String,
    pub db_name: String,
    pub connect_timeout: Duration,
    pub cache_dir: PathBuf,
    /// An unchanged report is sent again after this long (the upstream may have lost
    /// it: a restored admin database, an instance deleted by hand).
    pub resend_after: Duration,
    pub discovery: Discovery,
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, Error> {
        if !path.exists() {
            return Err(Error::NoConfig(path.to_path_buf()));
        }
        let cfg = Config::load(path)?;
        for s in cfg.sections() {
            if ![UPSTREAM, REPORT, discover::SECTION].contains(&s) {
                return Err(Error::UnknownSection {
                    path: path.to_path_buf(),
                    section: s.to_string(),
                });
            }
        }
        let up = cfg.section(UPSTREAM);
        up.reject_unknown(UPSTREAM_KEYS)?;
        let rep = cfg.section(REPORT);
        rep.reject_unknown(REPORT_KEYS)?;
        Ok(Settings {
            db_host: up.string_or("db_host", "")?,
            db_port: up.number("db_port", 5432u16, 1..)?,
            db_user: up.string_or("db_user", "util_user")?,
            db_name: up.string_or("db_name", "admin")?,
            connect_timeout: up.duration(
                "connect_timeout",
                Duration::from_secs(10),
                Duration::from_secs(1)..=Duration::from_secs(600),
            )?,
            cache_dir: checkin::cache_dir(&cfg)?,
            resend_after: rep.duration(
                "resend_after",
                Duration::from_secs(86400),
                Duration::ZERO..,
            )?,
            discovery: Discovery::from_config(&cfg)?,
        })
    }

    /// How the admin database is named in messages.
    pub fn label(&self) -> String {
        let host = if self.db_host.is_empty() {
            "the local socket"
        } else {
            &self.db_host
        };
        format!(
            "admin database {} on {host} port {} as {}",
            self.db_name, self.db_port, self.db_user
        )
    }

    /// libpq conninfo of the admin database; the password comes from ~/.pgpass.
    pub fn conninfo(&self) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = String::new();
        if !self.db_host.is_empty() {
            s.push_str(&format!("host={} ", q(&self.db_host)));
        }
        s.push_str(&format!(
            "port={} user={} dbname={} application_name=ele_report connect_timeout={}",
            self.db_port,
            q(&self.db_user),
            q(&self.db_name),
            self.connect_timeout.as_secs()
        ));
        s
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let level = if args.debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Warn
    };
    let target = match &args.log {
        Some(f) => crate::logging::Target::File(f.clone()),
        None => crate::logging::Target::Stderr,
    };
    crate::logging::init(PROGRAM, &target, level)?;
    let settings = Settings::load(&args.config)?;
    crate::pg::block_on(report(args, &settings))
}

async fn report(args: &Args, s: &Settings) -> Result<ExitCode, Error> {
    let host = discover::hostname();
    let mut cache = if args.dry_run || args.json {
        Cache::peek(&s.cache_dir)
    } else {
        Cache::open(&s.cache_dir)?
    };
    let found = discover::discover(&s.discovery, &host, &cache.remembered()).await;
    let mut problems: Vec<Error> = found
        .problems
        .iter()
        .map(|p| Error::Discovery(p.clone()))
        .collect();
    for c in &found.clusters {
        log::debug!(
            "found {} (port {}, seen by {:?}): online {}, {:?}, master {:?}, WAL {:?}",
            c.label(),
            c.port,
            c.seen_by,
            c.online,
            c.role,
            c.master_host,
            c.wal_lsn
        );
        for p in &c.problems {
            problems.push(Error::Unreadable {
                label: c.label(),
                detail: p.clone(),
            });
        }
    }
    if args.json {
        print_json(&found.clusters);
        return finish(problems);
    }
    let checkins: Vec<Checkin> = found
        .clusters
        .iter()
        .filter_map(|c| Checkin::from_facts(c, &host))
        .collect();
    let (fresh, due): (Vec<&Checkin>, Vec<&Checkin>) = checkins
        .iter()
        .partition(|c| cache.fresh(c, s.resend_after));
    for c in &fresh {
        log::debug!("{} unchanged since it was last sent", c.key());
    }
    if args.dry_run {
        print_json(&due);
        return finish(problems);
    }
    if !due.is_empty() {
        send_all(s, &host, &due, &mut cache, &mut problems).await;
    }
    let present: BTreeSet<String> = checkins.iter().map(Checkin::key).collect();
    cache.retain(&present);
    if let Err(e) = cache.save(&s.cache_dir) {
        problems.push(Error::SaveCache(e));
    }
    finish(problems)
}

async fn send_all(
    s: &Settings,
    host: &str,
    due: &[&Checkin],
    cache: &mut Cache,
    problems: &mut Vec<Error>,
) {
    let conninfo = s.conninfo();
    let target = s.label();
    log::debug!("sending {} instance(s) to {target}", due.len());
    let client = match crate::pg::connect(&conninfo).await {
        Ok(c) => c,
        Err(e) => {
            return problems.push(Error::Upstream {
                target,
                detail: PgError::detail(&e),
            })
        }
    };
    let mut sent = Vec::new();
    for c in due {
        log::debug!("sending {}", serde_json::to_string(c).unwrap_or_default());
        match checkin::send(&client, c).await {
            Ok(()) => sent.push(*c),
            Err(e) => problems.push(Error::UpstreamCall {
                target: target.clone(),
                what: format!("check-in of {}", c.key()),
                detail: crate::pg::one_line(&e),
            }),
        }
    }
    let held = match checkin::held(&client, host).await {
        Ok(h) => h,
        Err(e) => {
            // Without the read-back nothing is known to be stored: send again next time.
            return problems.push(Error::UpstreamCall {
                target,
                what: "reading utility.v_flat_instance".into(),
                detail: crate::pg::one_line(&e),
            });
        }
    };
    for c in sent {
        let accepted = held.contains(&(c.s_herd.to_lowercase(), c.n_port));
        cache.record(c, accepted);
        if !accepted {
            problems.push(Error::Ignored(checkin::why_ignored(&client, c).await));
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("facts serialize")
    );
}

/// Every problem but the worst as a line of its own; the worst is the error (its line
/// and its exit status).
fn finish(mut problems: Vec<Error>) -> Result<ExitCode, Error> {
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    problems.sort_by_key(|p| p.code());
    let worst = problems.remove(0);
    for p in problems {
        let line = crate::cli::one_line(&anyhow::Error::new(p));
        if !crate::logging::logs_to_stderr() {
            log::error!("{line}");
        }
        eprintln!("{PROGRAM}: {line}");
    }
    Err(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, Error> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report.ini");
        std::fs::write(&p, text).unwrap();
        Settings::load(&p)
    }

    #[test]
    fn defaults_are_the_originals() {
        let s = load("[Upstream]\n").unwrap();
        assert_eq!(
            (
                s.db_host.as_str(),
                s.db_port,
                s.db_user.as_str(),
                s.db_name.as_str()
            ),
            ("", 5432, "util_user", "admin")
        );
        assert_eq!(s.cache_dir, PathBuf::from("/var/cache/ele_tools"));
        assert_eq!(
            s.conninfo(),
            "port=5432 user='util_user' dbname='admin' application_name=ele_report connect_timeout=10"
        );
        let s = load("[Upstream]\ndb_host = admin.example.com\ndb_user = o'brien\n").unwrap();
        assert!(s
            .conninfo()
            .starts_with("host='admin.example.com' port=5432 user='o\\'brien'"));
        assert_eq!(
            s.label(),
            "admin database admin on admin.example.com port 5432 as o'brien"
        );
    }

    #[test]
    fn bad_config_names_file_key_value() {
        let e = load("[Upstream]\ndb_port = x\n").unwrap_err();
        assert!(e.to_string().contains("[Upstream] db_port = \"x\""), "{e}");
        assert_eq!(e.code(), 1);
        let e = load("[Upstream]\ndb_password = x\n").unwrap_err();
        assert!(e.to_string().contains("db_password: unknown key"), "{e}");
        let e = load("[Upstrem]\n").unwrap_err();
        assert!(e.to_string().contains("[Upstrem]"), "{e}");
        let e = Settings::load(Path::new("/nonexistent/report.ini")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Config /nonexistent/report.ini does not exist!"
        );
    }

    #[test]
    fn the_worst_problem_decides() {
        let e = finish(vec![
            Error::Ignored("x".into()),
            Error::Unreadable {
                label: "15/main".into(),
                detail: "y".into(),
            },
        ])
        .unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(finish(vec![]).is_ok());
    }
}
