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
pub mod status;
pub mod store;
pub mod verify;
pub mod walheader;
pub mod walname;
pub mod xrestore;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use log::LevelFilter;

use backupset::SetName;
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
  status [options]             Nagios-style check: last segment, newest backup, archive lag
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
    #[arg(value_enum, hide_possible_values = true)]
    pub command: Cmd,
    /// Command arguments
    #[arg(allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn command() -> clap::Command {
    Args::command()
}

/// walmgr's commands, with Skytools' spellings. Parsed once, by clap; an unknown word
/// is a usage error (exit 2) listing the valid ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cmd {
    Setup,
    Stop,
    Xarchive,
    XreceiveWal,
    Xrestore,
    Backup,
    XreceiveBackup,
    XcommitBackup,
    Listbackups,
    Restore,
    Pause,
    Continue,
    Boot,
    Verify,
    Cleanup,
    Status,
    // Skytools' commands for record-based shipping and its slave-side loop: accepted so
    // the answer is "not supported, use streaming" rather than "unknown command".
    #[value(hide = true)]
    Sync,
    #[value(hide = true)]
    Syncdaemon,
    #[value(hide = true)]
    Periodic,
    #[value(hide = true)]
    Createslave,
    #[value(hide = true)]
    Xlock,
    #[value(hide = true)]
    Xrelease,
    #[value(hide = true)]
    Xrotate,
    #[value(hide = true)]
    Xpurgewals,
    #[value(hide = true)]
    Xpartialsync,
}

impl Cmd {
    /// The command as typed (clap's kebab-case of the variant; a unit test checks).
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Setup => "setup",
            Cmd::Stop => "stop",
            Cmd::Xarchive => "xarchive",
            Cmd::XreceiveWal => "xreceive-wal",
            Cmd::Xrestore => "xrestore",
            Cmd::Backup => "backup",
            Cmd::XreceiveBackup => "xreceive-backup",
            Cmd::XcommitBackup => "xcommit-backup",
            Cmd::Listbackups => "listbackups",
            Cmd::Restore => "restore",
            Cmd::Pause => "pause",
            Cmd::Continue => "continue",
            Cmd::Boot => "boot",
            Cmd::Verify => "verify",
            Cmd::Cleanup => "cleanup",
            Cmd::Status => "status",
            Cmd::Sync => "sync",
            Cmd::Syncdaemon => "syncdaemon",
            Cmd::Periodic => "periodic",
            Cmd::Createslave => "createslave",
            Cmd::Xlock => "xlock",
            Cmd::Xrelease => "xrelease",
            Cmd::Xrotate => "xrotate",
            Cmd::Xpurgewals => "xpurgewals",
            Cmd::Xpartialsync => "xpartialsync",
        }
    }

    /// What a failure of this command turns into: restore_command's contract is that
    /// only "not in the archive" may look like it (exit 1).
    fn failure(self, e: WalmgrError) -> WalmgrError {
        match self {
            Cmd::Xrestore => e.undeliverable(),
            _ => e,
        }
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(&args).map_err(crate::cli::coded))
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
    if args.command == Cmd::Status {
        // A plugin: one line on stdout and exit 0-3, whatever happens.
        return Ok(status::run(&args.ini, &args.args));
    }
    load_and_dispatch(args).map_err(|e| args.command.failure(e))
}

fn load_and_dispatch(args: &Args) -> Result<ExitCode> {
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
        .ok_or_else(|| WalmgrError::Usage(format!("{cmd}: missing argument <{what}>")))
}

fn set_arg(args: &[String], i: usize, cmd: &str) -> Result<SetName> {
    SetName::parse(arg(args, i, "set", cmd)?)
}

fn max_args(args: &[String], n: usize, cmd: &str) -> Result<()> {
    if args.len() > n {
        return Err(WalmgrError::Usage(format!(
            "{cmd}: unexpected argument {:?}",
            args[n]
        )));
    }
    Ok(())
}

fn master<'a>(s: &'a Settings, cmd: &str) -> Result<&'a Master> {
    match s {
        Settings::Master(m) => Ok(m),
        Settings::Slave(_) => Err(WalmgrError::Usage(format!(
            "{cmd}: needs a master ini (with master_data); {} is a slave ini",
            s.ini().display()
        ))),
    }
}

fn slave<'a>(s: &'a Settings, cmd: &str) -> Result<&'a Slave> {
    match s {
        Settings::Slave(sl) => Ok(sl),
        Settings::Master(_) => Err(WalmgrError::Usage(format!(
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
    let cmd = args.command.name();
    match args.command {
        Cmd::Setup => {
            max_args(a, 0, cmd)?;
            setup::setup(s, args.not_really)
        }
        Cmd::Stop => {
            max_args(a, 0, cmd)?;
            setup::stop(master(s, cmd)?, args.not_really)
        }
        Cmd::Xarchive => {
            max_args(a, 2, cmd)?;
            let path = arg(a, 0, "path", cmd)?;
            let name = arg(a, 1, "name", cmd)?;
            archive::xarchive(master(s, cmd)?, Path::new(path), name)
        }
        Cmd::XreceiveWal => archive::xreceive_wal(slave(s, cmd)?, a),
        Cmd::Xrestore => {
            max_args(a, 3, cmd)?;
            let name = arg(a, 0, "name", cmd)?;
            let path = arg(a, 1, "path", cmd)?;
            let (store, wait) = match s {
                Settings::Slave(sl) => (&sl.store, sl.standby_wait),
                Settings::Master(_) => (
                    s.local_store().ok_or_else(|| {
                        WalmgrError::Usage(format!(
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
        Cmd::Backup => {
            max_args(a, 0, cmd)?;
            backup::backup(master(s, cmd)?)
        }
        Cmd::XreceiveBackup => {
            let set = set_arg(a, 0, cmd)?;
            backup::xreceive_backup(slave(s, cmd)?, &set, &a[1..])
        }
        Cmd::XcommitBackup => {
            let set = set_arg(a, 0, cmd)?;
            backup::xcommit_backup(slave(s, cmd)?, &set, &a[1..])
        }
        Cmd::Listbackups => {
            max_args(a, 0, cmd)?;
            on_store(s, cmd, restore::listbackups)
        }
        Cmd::Restore => {
            max_args(a, 2, cmd)?;
            let set = a.first().map(|n| SetName::parse(n)).transpose()?;
            restore::restore(
                slave(s, cmd)?,
                set.as_ref(),
                a.get(1).map(String::as_str),
                args.recovery,
            )
        }
        Cmd::Pause => {
            max_args(a, 0, cmd)?;
            control::pause(slave(s, cmd)?)
        }
        Cmd::Continue => {
            max_args(a, 0, cmd)?;
            control::resume(slave(s, cmd)?)
        }
        Cmd::Boot => {
            max_args(a, 0, cmd)?;
            control::boot(slave(s, cmd)?)
        }
        Cmd::Verify => {
            max_args(a, 0, cmd)?;
            on_store(s, cmd, verify::verify_command)
        }
        Cmd::Cleanup => {
            max_args(a, 0, cmd)?;
            let dry = args.not_really;
            on_store(s, cmd, |st| verify::cleanup(st, dry))
        }
        Cmd::Status => unreachable!("run() answers status"),
        Cmd::Sync
        | Cmd::Syncdaemon
        | Cmd::Periodic
        | Cmd::Createslave
        | Cmd::Xlock
        | Cmd::Xrelease
        | Cmd::Xrotate
        | Cmd::Xpurgewals
        | Cmd::Xpartialsync => Err(WalmgrError::Unsupported {
            command: cmd,
            hint: "for a continuously updated standby use primary_conninfo streaming; \
                   the archive is kept by xarchive",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::Cmd;
    use clap::ValueEnum;

    #[test]
    fn clap_command_is_consistent() {
        super::command().debug_assert();
    }

    #[test]
    fn command_names_are_skytools_spellings() {
        for c in Cmd::value_variants() {
            let v = c.to_possible_value().unwrap();
            assert_eq!(v.get_name(), c.name());
            assert_eq!(Cmd::from_str(c.name(), false).unwrap(), *c);
        }
        assert!(Cmd::from_str("xreceive-wal", false).is_ok());
        assert!(
            Cmd::from_str("Setup", false).is_err(),
            "case matters, as in Skytools"
        );
        assert!(
            Cmd::from_str("sync", false).is_ok(),
            "refused later, with a hint"
        );
    }

    #[test]
    fn only_xrestore_turns_failures_undeliverable() {
        use super::error::WalmgrError;
        use crate::cli::ExitError;
        let missing = || WalmgrError::Missing {
            name: "000000010000000000000001".into(),
            reason: "not in the archive".into(),
            dir: "/ws".into(),
        };
        let corrupt = || WalmgrError::Corrupt {
            path: "/ws/x".into(),
            reason: "bad".into(),
        };
        assert_eq!(Cmd::Xrestore.failure(missing()).code(), 1);
        let e = Cmd::Xrestore.failure(corrupt());
        assert_eq!(e.code(), 255);
        assert_eq!(
            e.to_string(),
            corrupt().to_string(),
            "shown as what it wraps"
        );
        assert_eq!(Cmd::Xrestore.failure(e).code(), 255);
        assert_eq!(Cmd::Restore.failure(corrupt()).code(), 6);
        let e = Cmd::Xrestore.failure(WalmgrError::Usage("x".into()));
        assert_eq!(
            e.code(),
            255,
            "even a bad command line must not end recovery"
        );
    }
    #[test]
    fn percent_signs_in_paths_survive_postgres_substitution() {
        let c = super::self_command(std::path::Path::new("/etc/wal 100%.ini"), "xarchive %p %f");
        assert!(c.ends_with(" '/etc/wal 100%%.ini' xarchive %p %f"), "{c}");
    }
}
