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
pub mod pitr;
pub mod prefetch;
pub mod pusher;
pub mod remote;
pub mod restore;
pub mod s3sets;
pub mod s3store;
pub mod setup;
pub mod spool;
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
  restore [<set> [<dst>]]      lay out a base backup as a standby (-r: replay to the end;
                               --target-*: recover to a point in time)
  xrestore <%f> <%p> [<%r>]    restore_command: fetch one WAL file
  pause | continue [<data>]    hold / resume replay at the next segment
  boot [<data>]                end recovery: STOP, promote a running standby or a recovery
                               paused at its target
Either (the store must be local, or the master forwards over ssh):
  listbackups                  list base backups
  verify                       check new or changed stored files and the WAL sequence
                               (--full: re-read every file)
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
    /// restore: recover to this time (PostgreSQL timestamp with a zone, e.g. '2026-12-02 13:00:00+00')
    #[arg(long, value_name = "T", group = "target")]
    pub target_time: Option<String>,
    /// restore: recover to this WAL position (X/Y)
    #[arg(long, value_name = "L", group = "target")]
    pub target_lsn: Option<String>,
    /// restore: recover to this transaction id
    #[arg(long, value_name = "X", group = "target")]
    pub target_xid: Option<String>,
    /// restore: recover to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "N", group = "target")]
    pub target_name: Option<String>,
    /// restore: stop just before the target instead of just after it
    #[arg(long)]
    pub target_exclusive: bool,
    /// restore: the timeline to recover along (latest, current or a number)
    #[arg(long, value_name = "TL")]
    pub target_timeline: Option<String>,
    /// restore: what PostgreSQL does at the target (default pause)
    #[arg(long, value_enum, value_name = "ACTION")]
    pub target_action: Option<pitr::Action>,
    /// verify: re-read every stored file, not only new or changed ones
    #[arg(long)]
    pub full: bool,
    #[command(flatten, next_help_heading = "status options")]
    pub status: status::StatusArgs,
    /// walmgr ini (master or slave)
    pub ini: PathBuf,
    /// Command (see below)
    #[arg(value_enum, hide_possible_values = true)]
    pub command: Cmd,
    /// Command arguments (options such as --target-time may come after them; a value
    /// that starts with '-' goes after `--`)
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
    /// Internal: the background pusher (archive_async).
    #[value(hide = true)]
    Xpush,
    /// Internal: the restore prefetcher (restore_prefetch).
    #[value(hide = true)]
    Xprefetch,
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
            Cmd::Xpush => "xpush",
            Cmd::Xprefetch => "xprefetch",
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
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() && invoked_as_status() => return status::usage_error(&e),
        Err(e) => e.exit(),
    };
    crate::cli::finish(PROGRAM, run(&args).map_err(crate::cli::coded))
}

/// `walmgr [flags] <ini> status ...`: the second word that is not a flag.
fn invoked_as_status() -> bool {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .nth(1)
        .is_some_and(|w| w == "status")
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
        return Ok(status::run(&args.ini, &args.status, &args.args));
    }
    match load_and_dispatch(args) {
        // PostgreSQL asks for files it expects to miss (every *.history it might switch
        // to, the segment past the end of the archive): exit 1 is the answer, not an error.
        Err(e @ WalmgrError::Missing { .. }) if args.command == Cmd::Xrestore => {
            let history = args.args.first().is_some_and(|n| n.ends_with(".history"));
            if history {
                log::debug!("{e}");
            } else {
                log::info!("{e}");
            }
            Ok(ExitCode::from(1))
        }
        r => r.map_err(|e| args.command.failure(e)),
    }
}

impl Args {
    fn targets(&self) -> pitr::TargetArgs {
        pitr::TargetArgs {
            time: self.target_time.clone(),
            lsn: self.target_lsn.clone(),
            xid: self.target_xid.clone(),
            name: self.target_name.clone(),
            exclusive: self.target_exclusive,
            timeline: self.target_timeline.clone(),
            action: self.target_action,
        }
    }
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

/// Where Debian's package installs walmgr.
pub const PACKAGED: &str = "/usr/bin/walmgr";

/// The path PostgreSQL's archive_command / restore_command names walmgr by: one that
/// stays valid when this binary is replaced. `walmgr_path` from the ini when set; else
/// the packaged `/usr/bin/walmgr` when that is the running binary (the same file);
/// else the path the user ran (argv[0] made absolute, or found in PATH), symlinks kept
/// (not the resolved `current_exe`, which names whichever build ran `setup`).
pub fn stable_exe(walmgr_path: Option<&Path>) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if let Some(p) = walmgr_path {
        return p.to_path_buf();
    }
    let current = std::env::current_exe().ok();
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    };
    let packaged = Path::new(PACKAGED);
    if let Some(c) = &current {
        if c == packaged || same(c, packaged) {
            return packaged.to_path_buf();
        }
    }
    if let Some(a0) = std::env::args_os().next().map(PathBuf::from) {
        let invoked = if a0.components().count() > 1 {
            std::path::absolute(&a0).ok()
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(&a0))
                    .find(|p| p.is_file())
                    .and_then(|p| std::path::absolute(p).ok())
            })
        };
        // Only a path that is this very binary (a link to it, a hard link, itself).
        if let (Some(i), Some(c)) = (&invoked, &current) {
            if same(i, c) {
                return i.clone();
            }
        }
    }
    current.unwrap_or_else(|| PathBuf::from(PROGRAM))
}

/// The command line PostgreSQL runs to call back into walmgr (archive_command,
/// restore_command): walmgr by its [`stable_exe`] path and this ini by absolute path,
/// quoted for sh.
pub fn self_command(ini: &Path, walmgr_path: Option<&Path>, tail: &str) -> String {
    let exe = stable_exe(walmgr_path).to_string_lossy().into_owned();
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
    if args.targets().any() && args.command != Cmd::Restore {
        return Err(WalmgrError::Usage(format!(
            "{cmd}: the --target-* options are for restore"
        )));
    }
    if args.full && args.command != Cmd::Verify {
        return Err(WalmgrError::Usage(format!("{cmd}: --full is for verify")));
    }
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
            let (store, wait, prefetch) = match s {
                Settings::Slave(sl) => (
                    &sl.store,
                    sl.standby_wait,
                    (sl.restore_prefetch > 0).then_some(sl.ini.as_path()),
                ),
                Settings::Master(_) => (
                    s.local_store().ok_or_else(|| {
                        WalmgrError::Usage(format!(
                            "{cmd}: run it with the slave ini (this master's store is remote)"
                        ))
                    })?,
                    std::time::Duration::from_secs(1),
                    None,
                ),
            };
            xrestore::xrestore(
                store,
                wait,
                name,
                Path::new(path),
                a.get(2).map(String::as_str),
                prefetch,
            )
        }
        Cmd::Xpush => {
            max_args(a, 0, cmd)?;
            pusher::run(master(s, cmd)?)
        }
        Cmd::Xprefetch => {
            max_args(a, 1, cmd)?;
            let sl = slave(s, cmd)?;
            let pid = arg(a, 0, "pid", cmd)?
                .parse::<i32>()
                .map_err(|_| WalmgrError::Usage(format!("{cmd}: <pid> must be a number")))?;
            let data = std::env::current_dir()
                .map_err(|e| crate::fsutil::PathError::new("getcwd", ".", e))?;
            prefetch::run(
                &store::WalStore::new(&sl.store.paths),
                sl.restore_prefetch,
                &data,
                pid,
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
            let pitr = args.targets().parse()?;
            restore::restore(
                slave(s, cmd)?,
                set.as_ref(),
                a.get(1).map(String::as_str),
                args.recovery,
                pitr.as_ref(),
            )
        }
        Cmd::Pause => {
            max_args(a, 1, cmd)?;
            control::pause(slave(s, cmd)?, a.first().map(String::as_str))
        }
        Cmd::Continue => {
            max_args(a, 1, cmd)?;
            control::resume(slave(s, cmd)?, a.first().map(String::as_str))
        }
        Cmd::Boot => {
            max_args(a, 1, cmd)?;
            control::boot(slave(s, cmd)?, a.first().map(String::as_str))
        }
        Cmd::Verify => {
            max_args(a, 0, cmd)?;
            let full = args.full;
            match (s.local_store(), s) {
                (None, Settings::Master(m)) if full => {
                    let out = m
                        .remote()
                        .expect("remote store")
                        .run(&[cmd, "--full"], &mut std::io::empty())?;
                    print!("{out}");
                    Ok(())
                }
                _ => on_store(s, cmd, |st| verify::verify_command(st, full)),
            }
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
        let c = super::self_command(
            std::path::Path::new("/etc/wal 100%.ini"),
            None,
            "xarchive %p %f",
        );
        assert!(c.ends_with(" '/etc/wal 100%%.ini' xarchive %p %f"), "{c}");
    }
}
