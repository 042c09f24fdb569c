//! pacha: a host's configuration under version control — capture, history, roll back,
//! rebuild from the master store (issue 12).
//!
//! [`repo`] keeps the history (git, work tree `/`), [`meta`] the metadata git cannot
//! keep, [`restore`] puts recorded objects back atomically, [`push`] sends the history
//! to the master store over ssh, [`rebuild`] builds a host again from it, [`watch`] is
//! the daemon, [`apt`] the package-manager hooks.

pub mod apt;
pub mod config;
pub mod error;
pub mod ignore;
pub mod meta;
pub mod nodes;
pub mod push;
pub mod rebuild;
pub mod repo;
pub mod restore;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::cli::coded;
pub use config::Config;
pub use error::PachaError;

pub const PROGRAM: &str = "pacha";

fn paths_arg(required: bool) -> Arg {
    Arg::new("paths")
        .value_name("PATH")
        .num_args(1..)
        .required(required)
        .value_parser(clap::value_parser!(PathBuf))
}

/// The subcommands of issue 12's capture, history and rebuild part.
fn core_subcommands() -> Vec<Command> {
    vec![
        Command::new("track")
            .about("Track files or whole directories")
            .arg(paths_arg(true)),
        Command::new("untrack")
            .about("Stop tracking paths added with track (their history is kept)")
            .arg(paths_arg(true)),
        Command::new("commit")
            .about("Record the tracked paths now (and push to the master)")
            .arg(
                Arg::new("message")
                    .short('m')
                    .long("message")
                    .value_name("MSG"),
            ),
        Command::new("status").about("What changed since the last commit"),
        Command::new("log")
            .about("History (of one tracked path)")
            .arg(
                Arg::new("path")
                    .value_name("PATH")
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
        Command::new("diff")
            .about("Changes since REV (default: the last commit), content and metadata")
            .arg(Arg::new("rev").value_name("REV")),
        Command::new("daemon")
            .about("Watch the tracked paths and commit changes as they settle")
            .arg(flag(
                "run-once",
                "Commit (and push) once, then exit (for cron)",
            ))
            .arg(flag("daemonize", "Detach (needs a pidfile)"))
            .arg(flag(
                "check",
                "Check the configuration and the repository, then exit",
            ))
            .arg(
                Arg::new("pidfile")
                    .long("pidfile")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("log")
                    .long("log")
                    .value_name("FILE")
                    .help("Log to FILE (- for stderr) instead of [pacha] log"),
            ),
        Command::new("rebuild")
            .about("Build HOST again from its history in the master store")
            .arg(Arg::new("host").value_name("HOST").required(true))
            .arg(Arg::new("rev").long("rev").value_name("REV"))
            .arg(
                Arg::new("root")
                    .long("root")
                    .value_name("DIR")
                    .default_value("/")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(flag("yes", "Apply (without it: show what would change)")),
        Command::new("apt-pre")
            .about("apt DPkg::Pre-Invoke hook: commit pending changes, note the packages"),
        Command::new("apt-post")
            .about("apt DPkg::Post-Invoke hook: commit with the package changes listed"),
        Command::new("rollback")
            .about("Restore paths, content and metadata, as they were at REV")
            .arg(paths_arg(true))
            .arg(Arg::new("to").long("to").value_name("REV").required(true)),
    ]
}

/// The command line (`pacha --help`, the man page's synopsis).
pub fn command() -> Command {
    let c = Command::new(PROGRAM)
        .version(env!("CARGO_PKG_VERSION"))
        .about("Versioned host configuration: capture, roll back, rebuild")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            Arg::new("config")
                .short('c')
                .long("config")
                .value_name("FILE")
                .global(true)
                .env("PACHA_CONFIG")
                .default_value(config::DEFAULT_CONFIG)
                .value_parser(clap::value_parser!(PathBuf)),
        )
        .subcommands(core_subcommands());
    c.subcommands(nodes::subcommands())
}

pub fn main() -> ExitCode {
    let m = command().get_matches();
    crate::cli::finish(PROGRAM, run(&m))
}

pub fn run(m: &ArgMatches) -> anyhow::Result<ExitCode> {
    let path = m.get_one::<PathBuf>("config").expect("has a default");
    let cfg = Config::load(path).map_err(coded)?;
    let (name, sub) = m.subcommand().expect("subcommand_required");
    if name != "daemon" {
        crate::logging::init(
            PROGRAM,
            &crate::logging::Target::Stderr,
            log::LevelFilter::Warn,
        )?;
    }
    if nodes::handles(name) {
        return nodes::run(name, sub, &cfg).map_err(coded);
    }
    run_core(name, sub, &cfg).map_err(coded)
}

fn paths(m: &ArgMatches) -> Vec<PathBuf> {
    m.get_many::<PathBuf>("paths")
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
}

fn run_core(name: &str, m: &ArgMatches, cfg: &Config) -> Result<ExitCode, PachaError> {
    match name {
        "track" => {
            for p in repo::track(cfg, &paths(m))? {
                println!("tracking {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        "untrack" => {
            repo::untrack(cfg, &paths(m))?;
            Ok(ExitCode::SUCCESS)
        }
        "commit" => {
            let msg = m
                .get_one::<String>("message")
                .cloned()
                .unwrap_or_else(|| format!("pacha commit on {}", cfg.host));
            let rev = repo::commit(cfg, &msg)?;
            match &rev {
                Some(rev) => println!("committed {rev}"),
                None => println!("nothing changed"),
            }
            if rev.is_some() || push::pending(cfg).is_some() {
                push::push(cfg)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        "status" => {
            for l in repo::status(cfg)? {
                println!("{l}");
            }
            if let Some(p) = push::pending(cfg) {
                println!("push pending: {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        "log" => {
            let path = match m.get_one::<PathBuf>("path") {
                Some(p) => {
                    let a = repo::absolute(p)?;
                    if repo::tracked_root(cfg, &a)?.is_none() {
                        return Err(PachaError::NotTracked(a));
                    }
                    Some(a)
                }
                None => None,
            };
            if repo::head(cfg)?.is_none() {
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", repo::log(cfg, path.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        "diff" => {
            let rev = match m.get_one::<String>("rev") {
                Some(r) => repo::resolve(cfg, r)?,
                None => match repo::head(cfg)? {
                    Some(h) => h,
                    None => return Err(PachaError::Usage("no commit yet".into())),
                },
            };
            print!("{}", restore::diff(cfg, &rev)?);
            Ok(ExitCode::SUCCESS)
        }
        "daemon" => {
            if m.get_flag("check") {
                repo::init(cfg)?;
                repo::tracked(cfg)?;
                return Ok(ExitCode::SUCCESS);
            }
            if m.get_flag("run-once") {
                return match watch::run_once(cfg)? {
                    Some(rev) => {
                        println!("committed {rev}");
                        Ok(ExitCode::SUCCESS)
                    }
                    None => Ok(ExitCode::SUCCESS),
                };
            }
            watch::daemon(
                cfg.clone(),
                watch::DaemonArgs {
                    daemonize: m.get_flag("daemonize"),
                    pidfile: m.get_one::<PathBuf>("pidfile").cloned(),
                    log: m.get_one::<String>("log").cloned(),
                },
            )
        }
        "rebuild" => rebuild::rebuild(
            cfg,
            &rebuild::Args {
                host: m.get_one::<String>("host").cloned().expect("required"),
                rev: m.get_one::<String>("rev").cloned(),
                root: m.get_one::<PathBuf>("root").cloned().expect("default"),
                yes: m.get_flag("yes"),
            },
        ),
        "apt-pre" | "apt-post" => {
            let rev = if name == "apt-pre" {
                apt::pre(cfg)?
            } else {
                apt::post(cfg)?
            };
            if let Some(rev) = rev {
                println!("pacha: committed {rev}");
            }
            Ok(ExitCode::SUCCESS)
        }
        "rollback" => {
            let to = m.get_one::<String>("to").expect("required");
            for w in restore::rollback(cfg, &paths(m), to)? {
                eprintln!("{PROGRAM}: warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(PachaError::Usage(format!("unknown command {other}"))),
    }
}

fn flag(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .help(help)
        .action(ArgAction::SetTrue)
}
