//! pacha: a host's configuration under version control — capture, history, roll back,
//! rebuild from the master store (issue 12).
//!
//! [`repo`] keeps the history (git, work tree `/`), [`meta`] the metadata git cannot
//! keep, [`restore`] puts recorded objects back atomically, [`push`] sends the history
//! to the master store over ssh, [`rebuild`] builds a host again from it, [`watch`] is
//! the daemon, [`apt`] the package-manager hooks.

pub mod config;
pub mod error;
pub mod ignore;
pub mod meta;
pub mod nodes;
pub mod repo;
pub mod restore;

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
    match name {
        n if nodes::handles(n) => nodes::run(n, sub, &cfg).map_err(coded),
        _ => run_core(name, sub, &cfg).map_err(coded),
    }
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
            match repo::commit(cfg, &msg)? {
                Some(rev) => println!("committed {rev}"),
                None => println!("nothing changed"),
            }
            Ok(ExitCode::SUCCESS)
        }
        "status" => {
            for l in repo::status(cfg)? {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        "log" => {
            let mut c = repo::git(cfg);
            c.args(["log", "--date=iso", "--format=%H %ad %s"]);
            if let Some(p) = m.get_one::<PathBuf>("path") {
                let a = repo::absolute(p)?;
                if repo::tracked_root(cfg, &a)?.is_none() {
                    return Err(PachaError::NotTracked(a));
                }
                c.arg("--").arg(repo::rel(&a));
            }
            if repo::head(cfg)?.is_none() {
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", String::from_utf8_lossy(&repo::run(&c, "log")?.stdout));
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

/// Keep ArgAction in use for subcommands added by other parts.
#[allow(dead_code)]
fn flag(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .help(help)
        .action(ArgAction::SetTrue)
}
