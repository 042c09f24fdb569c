//! walmgr: WAL archiving, base backups and standby restore — Skytools' walmgr with its
//! commands and ini files, rebuilt for PostgreSQL 12+ (pg_wal, signal files instead of
//! recovery.conf, non-exclusive backups) and for the rules modern archivers follow:
//! checksummed, compressed, durable before exit 0, never overwriting different contents.
//! doc/walmgr-design.md is the contract.

pub mod archive;
pub mod backup;
pub mod backupset;
pub mod basebackup;
pub mod codec;
pub mod config;
pub mod control;
pub mod error;
pub mod pg;
pub mod remote;
pub mod restore;
pub mod setup;
pub mod store;
pub mod verify;
pub mod walheader;
pub mod walname;
pub mod xrestore;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use log::LevelFilter;

use config::{Master, Slave};
pub use config::{Settings, StoreSettings};
use error::{Result, WalmgrError};

pub const PROGRAM: &str = "walmgr";

const COMMANDS: &str = "\
Master commands (ini with master_data):
  setup                        turn archiving on (archive_mode, archive_command), create the store
  stop                         turn archiving off
  backup                       base backup into the store
  xarchive <%p> <%f>           archive_command: store one WAL file
Slave commands (ini without master_data):
  setup                        create the store directories
  restore [<set> [<dst>]]      lay out a base backup as a standby (-r: replay to the end)
  xrestore <%f> <%p> [<%r>]    restore_command: fetch one WAL file
  pause | continue             hold / resume replay at the next segment
  boot                         end recovery: STOP, and promote a running standby
Either (the store must be local, or the master forwards over ssh):
  listbackups                  list base backups
  verify                       check every stored file and the WAL sequence
  cleanup                      remove interrupted writes and WAL older than the oldest backup";

/// WAL archiving, base backups and standby restore for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None, after_help = COMMANDS)]
pub struct Args {
    /// More logging (debug)
    #[arg(short, long)]
    pub verbose: bool,
    /// Only errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Show what setup, stop and cleanup would do; change nothing
    #[arg(short = 'n', long = "not-really")]
    pub not_really: bool,
    /// restore: write recovery.signal (replay to the end, then promote) instead of standby.signal
    #[arg(short = 'r', long)]
    pub recovery: bool,
    /// walmgr ini (master or slave)
    pub ini: PathBuf,
    /// Command (see below)
    pub command: String,
    /// Command arguments
    #[arg(allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let result = run(&args);
    let fatal = matches!(&result, Err(e) if restore_must_abort(&args.command, e));
    let code = crate::cli::finish(PROGRAM, result.map_err(anyhow::Error::from));
    if fatal {
        ExitCode::from(RESTORE_ABORT)
    } else {
        code
    }
}

/// restore_command's exit status for "stop recovery": PostgreSQL takes exit 1 as "no such
/// file" (and, replaying an archive to its end, promotes right there), but an exit status
/// above 125 as fatal.
pub const RESTORE_ABORT: u8 = 255;

/// xrestore failures other than "not in the archive" (a corrupt stored file, an I/O error,
/// a full disk under %p) must not look like the end of the archive.
pub fn restore_must_abort(command: &str, e: &WalmgrError) -> bool {
    command == "xrestore" && !matches!(e, WalmgrError::Missing { .. })
}

fn level(args: &Args) -> LevelFilter {
    if args.verbose {
        LevelFilter::Debug
    } else if args.quiet {
        LevelFilter::Error
    } else {
        LevelFilter::Info
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    // Until the ini is read, log to stderr (PostgreSQL's log for archive/restore commands).
    let _ = crate::logging::init(PROGRAM, &crate::logging::Target::Stderr, level(args));
    let settings = Settings::load(&args.ini)?;
    if let Some(f) = settings.logfile() {
        let file = crate::logging::Target::File(f.to_path_buf());
        if let Err(e) = crate::logging::init(PROGRAM, &file, level(args)) {
            // An unwritable log (say, created by a run as root) must not stop archiving
            // and fill pg_wal: PostgreSQL's log gets the messages instead.
            log::warn!("{e}; logging to stderr");
        }
    }
    dispatch(args, &settings)?;
    Ok(ExitCode::SUCCESS)
}

/// The command line PostgreSQL runs to call back into walmgr (archive_command,
/// restore_command): this binary and this ini by absolute path, quoted for sh.
pub fn self_command(ini: &Path, tail: &str) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| PROGRAM.into());
    // PostgreSQL substitutes every %x in the command, so a literal % is written %%.
    let q = |w: &str| {
        shlex::try_quote(w)
            .map(|c| c.replace('%', "%%"))
            .unwrap_or_default()
    };
    format!("{} {} {tail}", q(&exe), q(&ini.to_string_lossy()))
}

fn arg<'a>(args: &'a [String], i: usize, what: &str, cmd: &str) -> Result<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| WalmgrError::Other(format!("{cmd}: missing argument <{what}>")))
}

fn max_args(args: &[String], n: usize, cmd: &str) -> Result<()> {
    if args.len() > n {
        return Err(WalmgrError::Other(format!(
            "{cmd}: unexpected argument {:?}",
            args[n]
        )));
    }
    Ok(())
}

fn master<'a>(s: &'a Settings, cmd: &str) -> Result<&'a Master> {
    match s {
        Settings::Master(m) => Ok(m),
        Settings::Slave(_) => Err(WalmgrError::Other(format!(
            "{cmd}: needs a master ini (with master_data); {} is a slave ini",
            s.ini().display()
        ))),
    }
}

fn slave<'a>(s: &'a Settings, cmd: &str) -> Result<&'a Slave> {
    match s {
        Settings::Slave(sl) => Ok(sl),
        Settings::Master(_) => Err(WalmgrError::Other(format!(
            "{cmd}: needs a slave ini (without master_data); {} is a master ini",
            s.ini().display()
        ))),
    }
}

/// Store commands run where the store is; a master with a remote store forwards them.
fn on_store(s: &Settings, cmd: &str, f: impl FnOnce(&StoreSettings) -> Result<()>) -> Result<()> {
    match (s.local_store(), s) {
        (Some(st), _) => f(st),
        (None, Settings::Master(m)) => {
            let out = m
                .remote()
                .expect("remote store")
                .run(&[cmd], &mut std::io::empty())?;
            print!("{out}");
            Ok(())
        }
        (None, Settings::Slave(_)) => unreachable!("a slave's store is local"),
    }
}

fn dispatch(args: &Args, s: &Settings) -> Result<()> {
    let a = &args.args;
    let cmd = args.command.as_str();
    match cmd {
        "setup" => {
            max_args(a, 0, cmd)?;
            setup::setup(s, args.not_really)
        }
        "stop" => {
            max_args(a, 0, cmd)?;
            setup::stop(master(s, cmd)?, args.not_really)
        }
        "xarchive" => {
            max_args(a, 2, cmd)?;
            let path = arg(a, 0, "path", cmd)?;
            let name = arg(a, 1, "name", cmd)?;
            archive::xarchive(master(s, cmd)?, Path::new(path), name)
        }
        "xreceive-wal" => archive::xreceive_wal(slave(s, cmd)?, a),
        "xrestore" => {
            max_args(a, 3, cmd)?;
            let name = arg(a, 0, "name", cmd)?;
            let path = arg(a, 1, "path", cmd)?;
            let (store, wait) = match s {
                Settings::Slave(sl) => (&sl.store, sl.standby_wait),
                Settings::Master(_) => (
                    s.local_store().ok_or_else(|| {
                        WalmgrError::Other(format!(
                            "{cmd}: run it with the slave ini (this master's store is remote)"
                        ))
                    })?,
                    std::time::Duration::from_secs(1),
                ),
            };
            xrestore::xrestore(
                store,
                wait,
                name,
                Path::new(path),
                a.get(2).map(String::as_str),
            )
        }
        "backup" => {
            max_args(a, 0, cmd)?;
            backup::backup(master(s, cmd)?)
        }
        "xreceive-backup" => {
            let set = arg(a, 0, "set", cmd)?;
            backup::xreceive_backup(slave(s, cmd)?, set, &a[1..])
        }
        "xcommit-backup" => {
            let set = arg(a, 0, "set", cmd)?;
            backup::xcommit_backup(slave(s, cmd)?, set, &a[1..])
        }
        "listbackups" => {
            max_args(a, 0, cmd)?;
            on_store(s, cmd, restore::listbackups)
        }
        "restore" => {
            max_args(a, 2, cmd)?;
            restore::restore(
                slave(s, cmd)?,
                a.first().map(String::as_str),
                a.get(1).map(String::as_str),
                args.recovery,
            )
        }
        "pause" => {
            max_args(a, 0, cmd)?;
            control::pause(slave(s, cmd)?)
        }
        "continue" => {
            max_args(a, 0, cmd)?;
            control::resume(slave(s, cmd)?)
        }
        "boot" => {
            max_args(a, 0, cmd)?;
            control::boot(slave(s, cmd)?)
        }
        "verify" => {
            max_args(a, 0, cmd)?;
            on_store(s, cmd, verify::verify_command)
        }
        "cleanup" => {
            max_args(a, 0, cmd)?;
            let dry = args.not_really;
            on_store(s, cmd, |st| verify::cleanup(st, dry))
        }
        "sync" | "syncdaemon" | "periodic" | "createslave" | "xlock" | "xrelease" | "xrotate"
        | "xpurgewals" | "xpartialsync" => Err(WalmgrError::Other(format!(
            "{cmd}: not supported by this walmgr (for a continuously updated standby use \
             primary_conninfo streaming; the archive is kept by xarchive)"
        ))),
        other => Err(WalmgrError::Other(format!(
            "unknown command {other:?} (see walmgr --help)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_signs_in_paths_survive_postgres_substitution() {
        let c = super::self_command(std::path::Path::new("/etc/wal 100%.ini"), "xarchive %p %f");
        assert!(c.ends_with(" '/etc/wal 100%%.ini' xarchive %p %f"), "{c}");
    }
}
