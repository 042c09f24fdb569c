//! pgqd: the PgQ ticker and maintenance daemon, a drop-in for Skytools' C `pgqd`.
//!
//! The supervisor finds the databases (`database_list`, else `pg_database` every
//! check_period), runs one [`db`] task for each — which drives the ticker's [`state`]
//! machine and starts retry and maintenance once pgq is there — and unregisters
//! databases that disappear. A reload keeps the tasks of databases still listed (their
//! sessions too, unless the connection string changed). Every stats_period it logs
//! `{ticks: N, maint: N, retry: N}` and writes the [`status`] file that
//! `pgqd --status` prints, so monitoring can tell a live but stuck ticker.

pub mod config;
pub mod db;
pub mod state;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{ArgAction, CommandFactory, Parser};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pg::conninfo::Env;

use crate::daemon::{self, Pidfile, Signal, Signals, Startup};
use crate::logging::Target;
use config::PgqdConfig;
use db::Shared;

pub const PROGRAM: &str = "pgqd";

/// PgQ ticker and maintenance daemon (drop-in for Skytools' pgqd).
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None, disable_version_flag = true)]
pub struct Args {
    /// Configuration file
    #[arg(value_name = "CONFIG", required_unless_present_any = ["ini", "version"])]
    pub config: Option<PathBuf>,
    /// No console output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// More verbose logging (repeatable)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Detach and run in the background (needs pidfile)
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Stop the running pgqd cleanly (SIGINT)
    #[arg(short = 's', long, group = "control")]
    pub stop: bool,
    /// Kill the running pgqd (SIGTERM)
    #[arg(short = 'k', long, group = "control")]
    pub kill: bool,
    /// Make the running pgqd reload its config (SIGHUP)
    #[arg(short = 'r', long, group = "control")]
    pub reload: bool,
    /// Print a sample configuration and exit
    #[arg(long)]
    pub ini: bool,
    /// Nagios-style check of the running pgqd: one line, the per-database table, exit
    /// 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    #[arg(long, group = "control")]
    pub status: bool,
    /// --status: WARNING when a database's last tick is older [default: 60]
    #[arg(long, value_name = "SECS", requires = "status")]
    pub warn_age: Option<u64>,
    /// --status: CRITICAL when a database's last tick is older [default: 300]
    #[arg(long, value_name = "SECS", requires = "status")]
    pub crit_age: Option<u64>,
    /// --status: also write the figures to FILE as a node_exporter textfile
    #[arg(long, value_name = "FILE", requires = "status")]
    pub prometheus: Option<PathBuf>,
    /// Print version
    #[arg(short = 'V', long, action = ArgAction::SetTrue)]
    pub version: bool,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(args))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.version {
        println!("{PROGRAM} {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    if args.ini {
        print!("{}", config::SAMPLE);
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.config.clone().expect("clap requires CONFIG");
    if args.status {
        return Ok(status_check(&args, &path));
    }
    let cfg = PgqdConfig::load(&path)?;
    let signal = if args.stop {
        Some((nix::sys::signal::Signal::SIGINT, "SIGINT"))
    } else if args.kill {
        Some((nix::sys::signal::Signal::SIGTERM, "SIGTERM"))
    } else if args.reload {
        Some((nix::sys::signal::Signal::SIGHUP, "SIGHUP"))
    } else {
        None
    };
    if let Some((sig, name)) = signal {
        return control(&cfg, sig, name);
    }
    if args.daemon && cfg.pidfile.is_none() {
        anyhow::bail!("{}: [pgqd] pidfile is required with -d", cfg.path.display());
    }
    let startup = if args.daemon {
        daemon::detach()?
    } else {
        Startup::foreground()
    };
    let (target, level) = log_target(&cfg, &args);
    crate::logging::init(PROGRAM, &target, level)?;
    let pidfile = match &cfg.pidfile {
        Some(p) => Some(Pidfile::acquire(p).map_err(|e| match e {
            daemon::DaemonError::Running { .. } | daemon::DaemonError::RunningUnlocked { .. } => {
                anyhow::anyhow!("pidfile exists, another instance running? ({e})")
            }
            other => other.into(),
        })?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(supervise(args, cfg, startup));
    // Tasks and sessions are gone before the pidfile: once it is, pgqd is.
    drop(runtime);
    drop(pidfile);
    code
}

/// `--status`: a configuration that cannot be read, or bad thresholds, are UNKNOWN.
fn status_check(args: &Args, path: &std::path::Path) -> ExitCode {
    let prepared = (|| {
        let cfg = PgqdConfig::load(path).map_err(|e| e.to_string())?;
        let file = cfg
            .status_file
            .clone()
            .ok_or_else(|| format!("{}: no status_file (or pidfile) in [pgqd]", path.display()))?;
        let tick_age =
            status::TICK_AGE.with(args.warn_age, args.crit_age, "--warn-age/--crit-age")?;
        Ok::<_, String>((cfg, file, tick_age))
    })();
    match prepared {
        Ok((cfg, file, tick_age)) => status::check(
            &file,
            cfg.stats_period,
            &status::Options {
                tick_age,
                prometheus: args.prometheus.clone(),
            },
        ),
        Err(e) => crate::monitor::report(
            crate::monitor::Check::unknown("PGQD", &e),
            crate::monitor::Metrics::new("hostkit_pgqd_"),
            args.prometheus.as_deref(),
        ),
    }
}

/// `-s/-k/-r`: signal the running daemon named by the pidfile.
fn control(
    cfg: &PgqdConfig,
    sig: nix::sys::signal::Signal,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let pidfile = cfg.pidfile.as_ref().with_context(|| {
        format!(
            "{}: [pgqd] pidfile is required with -s/-k/-r",
            cfg.path.display()
        )
    })?;
    match daemon::running_pid(pidfile)? {
        Some(pid) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .with_context(|| format!("cannot signal pid {pid}"))?;
            println!("{name} sent");
        }
        None => println!("Old process is not running"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Foreground without -q: stderr. Otherwise the logfile, else syslog (if enabled).
fn log_target(cfg: &PgqdConfig, args: &Args) -> (Target, log::LevelFilter) {
    let level = match args.verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let target = if !args.daemon && !args.quiet {
        Target::Stderr
    } else if let Some(f) = &cfg.logfile {
        Target::File(f.clone())
    } else if cfg.syslog {
        Target::Syslog {
            ident: cfg.syslog_ident.clone(),
            facility: cfg.syslog_facility.clone(),
            socket: None,
        }
    } else {
        Target::File(PathBuf::from("/dev/null"))
    };
    (target, level)
}

/// A registered database's task.
struct Database {
    task: JoinHandle<()>,
    /// What it connects with: a reload that changes it restarts the task.
    connstr: String,
}

impl Database {
    fn start(shared: &Shared, name: &str) -> Database {
        let cell = db::StatusCell::default();
        shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), cell.clone());
        let task = tokio::spawn(db::database(shared.clone(), name.to_string(), cell));
        Database {
            task,
            connstr: shared.cfg().connstr(name),
        }
    }

    /// End the task: dropped at its next await, its sessions (and the ticker lock)
    /// with it. The handle resolves once it is gone.
    fn stop(self) -> JoinHandle<()> {
        self.task.abort();
        self.task
    }
}

/// The databases to serve now: the configured list, or every one that allows
/// connections (asked through initial_database).
async fn discover(cfg: &PgqdConfig, env: &Env) -> Result<BTreeSet<String>, String> {
    if !cfg.database_list.is_empty() {
        return Ok(cfg.database_list.iter().cloned().collect());
    }
    let mut session = db::connect(cfg, env, &cfg.initial_database)
        .await
        .map_err(|e| format!("{}: connection failed: {e}", cfg.initial_database))?;
    let rows = session
        .rows("select datname::text from pg_catalog.pg_database where not datistemplate and datallowconn", 1)
        .await
        .map_err(|e| format!("{}: {e}", cfg.initial_database))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

async fn supervise(args: Args, cfg: PgqdConfig, mut startup: Startup) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let (cfg_tx, cfg_rx) = watch::channel(Arc::new(cfg));
    let shared = Shared {
        cfg: cfg_rx,
        env: Arc::new(Env::process()),
        stats: Arc::default(),
        status: Arc::new(Mutex::new(BTreeMap::new())),
    };
    let mut workers: BTreeMap<String, Database> = BTreeMap::new();
    log::info!("{PROGRAM} {} starting", env!("CARGO_PKG_VERSION"));
    startup.ready()?;
    let mut last_discovery_error: Option<String> = None;
    let mut check = tokio::time::interval(shared.cfg().check_period);
    let mut stats = tokio::time::interval(shared.cfg().stats_period);
    stats.tick().await;
    let code = loop {
        tokio::select! {
            _ = check.tick() => {
                match discover(&shared.cfg(), &shared.env).await {
                    Ok(dbs) => {
                        last_discovery_error = None;
                        for gone in workers.keys().filter(|d| !dbs.contains(*d)).cloned().collect::<Vec<_>>() {
                            log::info!("Unregister database {gone}");
                            if let Some(w) = workers.remove(&gone) {
                                w.stop();
                            }
                            shared.status.lock().unwrap_or_else(|e| e.into_inner()).remove(&gone);
                        }
                        for new in dbs {
                            if let std::collections::btree_map::Entry::Vacant(slot) = workers.entry(new) {
                                log::info!("Register database {}", slot.key());
                                let w = Database::start(&shared, slot.key());
                                slot.insert(w);
                            }
                        }
                    }
                    Err(e) => {
                        if last_discovery_error.as_deref() != Some(&e) {
                            log::warn!("database discovery failed: {e}");
                            last_discovery_error = Some(e);
                        }
                    }
                }
            }
            _ = stats.tick() => {
                let t = shared.stats.ticks.swap(0, Ordering::Relaxed);
                let m = shared.stats.maint.swap(0, Ordering::Relaxed);
                let r = shared.stats.retry.swap(0, Ordering::Relaxed);
                log::info!("{{ticks: {t}, maint: {m}, retry: {r}}}");
                if let Some(f) = &shared.cfg().status_file {
                    if let Err(e) = status::write(f, &shared.status) {
                        log::warn!("{e}");
                    }
                }
            }
            sig = signals.recv() => match sig {
                Signal::Hup => {
                    match PgqdConfig::load(&shared.cfg().path) {
                        Ok(fresh) => {
                            log::info!("configuration reloaded; rechecking databases");
                            // Databases still listed keep their tasks and sessions, unless
                            // the way to reach them changed; the recheck below starts
                            // those again and the new ones, and drops the ones gone.
                            let changed: Vec<String> = workers
                                .iter()
                                .filter(|(name, w)| fresh.connstr(name) != w.connstr)
                                .map(|(name, _)| name.clone())
                                .collect();
                            for name in changed {
                                log::info!("{name}: connection settings changed, reconnecting");
                                if let Some(w) = workers.remove(&name) {
                                    // Gone before its successor asks for the ticker lock.
                                    let _ = w.stop().await;
                                }
                            }
                            cfg_tx.send_replace(Arc::new(fresh));
                            check = tokio::time::interval(shared.cfg().check_period);
                            stats = tokio::time::interval(shared.cfg().stats_period);
                            stats.tick().await;
                            let _ = crate::logging::reopen();
                        }
                        Err(e) => log::error!("reload failed, keeping the running configuration: {e}"),
                    }
                }
                Signal::Int => {
                    log::info!("got SIGINT, shutting down");
                    let tasks: Vec<_> = std::mem::take(&mut workers).into_values().map(Database::stop).collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                    break ExitCode::SUCCESS;
                }
                Signal::Term => {
                    log::info!("got SIGTERM, exiting");
                    break ExitCode::SUCCESS;
                }
            }
        }
    };
    drop(args);
    Ok(code)
}
