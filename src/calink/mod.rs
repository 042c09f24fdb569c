//! calink: one command gathers a host's facts, command output and files into one
//! archive (CaLink's job, with sos' bounds and without its temporary copy).
//!
//! `run` turns the command line and the CaLink INI into one [`config::Settings`] value,
//! then [`collect`] streams everything into the archive. The info items are a library
//! API of their own ([`info`]).

pub mod archive;
pub mod collect;
pub mod commands;
pub mod config;
pub mod info;
pub mod manifest;
pub mod obfuscate;
pub mod plan;
pub mod priority;
pub mod scrub;
pub mod walk;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{coded, ExitError};

pub const PROGRAM: &str = "calink";

/// Exit status: the archive was written but something was skipped, truncated or timed
/// out (the manifest says what).
pub const EXIT_INCOMPLETE: u8 = 3;

/// Gather the host's facts, command output and files into one archive.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// CaLink configuration
    #[arg(short = 'c', long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory CaLink's `<dir>_dirs` / `<dir>_files` keys are relative to
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub prefix: PathBuf,
    /// Where the archive is written
    #[arg(
        short = 'o',
        long = "output-dir",
        value_name = "DIR",
        default_value = "."
    )]
    pub output_dir: PathBuf,
    /// List what would be collected, collect nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run at the lowest CPU priority and in the idle I/O class
    #[arg(long)]
    pub low_priority: bool,
    /// Do not mask passwords, URL credentials, .pgpass passwords and private keys
    #[arg(long)]
    pub no_scrub: bool,
    /// Replace host names, domains, IP and MAC addresses and user names by tokens
    #[arg(long)]
    pub obfuscate: bool,
    /// The persistent original-to-token map (root-only, kept outside the archive)
    #[arg(long, value_name = "FILE", default_value = obfuscate::DEFAULT_MAP)]
    pub obfuscation_map: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::SettingsError),
    #[error("output directory {path}: {reason}")]
    OutputDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Obfuscate(#[from] obfuscate::ObfuscateError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
}

impl ExitError for Error {
    /// 1 for a bad setup, 4 for a full disk, 5 for a failed obfuscation check; 2 is
    /// clap's (bad command line) and 3 [`EXIT_INCOMPLETE`].
    fn code(&self) -> u8 {
        match self {
            Error::Archive(archive::ArchiveError::DiskFull { .. }) => 4,
            Error::Archive(archive::ArchiveError::Leak { .. }) => 5,
            _ => 1,
        }
    }
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(&args).map_err(coded))
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let started = collect::now();
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut obfuscator = if args.obfuscate {
        let mut o = obfuscate::Obfuscator::load(&args.obfuscation_map)?;
        o.learn(&obfuscate::HostFacts::learn());
        Some(o)
    } else {
        None
    };
    let host_shown = match &obfuscator {
        Some(o) => o
            .token(obfuscate::Kind::Host, &hostname)
            .unwrap_or("obfhost")
            .to_string(),
        None => hostname.clone(),
    };
    let settings = config::load(&args.config, &args.prefix, &host_shown, started)?;
    let outdir = output_dir(&args.output_dir)?;
    let archive_name = match &obfuscator {
        Some(o) => o.apply_str(&settings.output.archive_file()),
        None => settings.output.archive_file(),
    };
    let archive = outdir.join(archive_name);
    let mut exclude = vec![archive.clone()];
    if let Some(o) = &obfuscator {
        exclude.push(std::fs::canonicalize(o.path()).unwrap_or_else(|_| o.path().to_path_buf()));
    }
    if args.dry_run {
        print!(
            "{}",
            plan::plan(&settings, &archive, &|p: &Path| exclude
                .iter()
                .any(|x| x == p))
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.low_priority {
        if let Err(e) = priority::lower() {
            eprintln!("{PROGRAM}: warning: --low-priority: {e}");
        }
    }
    if let Some(o) = obfuscator.as_mut() {
        o.save().map_err(obfuscate::ObfuscateError::from)?;
    }
    let opts = collect::Options {
        settings: &settings,
        archive: archive.clone(),
        scrub: !args.no_scrub,
        obfuscator: obfuscator.as_ref(),
        progress: std::io::stderr().is_terminal(),
        started,
        exclude,
    };
    let manifest = collect::collect(&opts)?;
    println!("{}", archive.display());
    Ok(if manifest.incomplete {
        ExitCode::from(EXIT_INCOMPLETE)
    } else {
        ExitCode::SUCCESS
    })
}

/// The output directory, absolute, if it is a directory we can write in.
fn output_dir(dir: &Path) -> Result<PathBuf, Error> {
    let err = |reason: String| Error::OutputDir {
        path: dir.to_path_buf(),
        reason,
    };
    let abs = std::fs::canonicalize(dir).map_err(|e| err(e.to_string()))?;
    if !abs.is_dir() {
        return Err(err("not a directory".into()));
    }
    nix::unistd::access(
        &abs,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| err(format!("not writable: {}", e.desc())))?;
    Ok(abs)
}
