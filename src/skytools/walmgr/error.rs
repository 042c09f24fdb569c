//! walmgr's error type: every variant names the file, key, segment or command it is about,
//! so the one line an operator (or PostgreSQL's log) shows is enough to act on.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::digest::Algo;
use crate::fsutil::PathError;

/// Every way walmgr fails, each with its exit status (man/walmgr.1, EXIT STATUS).
/// Codes stay at or below 125 (PostgreSQL takes a higher archive_command status as
/// fatal for the archiver), except [`WalmgrError::Undeliverable`]'s 255, which exists
/// to be exactly that for restore_command.
#[derive(Debug, thiserror::Error)]
pub enum WalmgrError {
    /// The command line: unknown command, wrong arguments, an ini of the wrong kind.
    #[error("{0}")]
    Usage(String),
    /// One of Skytools' commands this walmgr does not provide (exit 1, as before).
    #[error("{command}: not supported by this walmgr ({hint})")]
    Unsupported {
        command: &'static str,
        hint: &'static str,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{0}: not a WAL segment, .partial, .backup or .history file name")]
    BadName(String),
    #[error("{0:?}: not a backup set name (YYYYmmddTHHMMSSZ)")]
    BadSetName(String),
    #[error("{name}: already archived with different contents (stored sha256 {stored}, size {stored_size}; new sha256 {new}, size {new_size}); not overwritten")]
    Conflict {
        name: String,
        stored: String,
        stored_size: u64,
        new: String,
        new_size: u64,
    },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadWal { path: PathBuf, reason: String },
    /// What was sent and what the store received differ, or the server's answer lacks
    /// what a backup needs: nothing is committed.
    #[error("{0}")]
    Transfer(String),
    /// Not in the store: a WAL file (restore_command's "no such file"), a backup set.
    #[error("{name}: {reason} ({dir})")]
    Missing {
        name: String,
        reason: String,
        dir: PathBuf,
    },
    #[error("{0}")]
    NoBackup(String),
    /// What is on disk forbids the command: a non-empty target, a running PostgreSQL,
    /// a set that already exists, an unreadable set that blocks WAL removal.
    #[error("{0}")]
    Refused(String),
    /// Another backup holds the backup lock.
    #[error("{0}")]
    Busy(String),
    /// Writing what walmgr produces (a restored file at %p, a backup stream) failed.
    #[error("{what}: {err}")]
    Output { what: String, err: std::io::Error },
    #[error("{what}: {reason}")]
    Command { what: String, reason: String },
    #[error("PostgreSQL ({conninfo}): {reason}")]
    Pg { conninfo: String, reason: String },
    /// verify found problems (each was printed).
    #[error("{0}")]
    Verify(String),
    /// restore: the recovery target lies before the end of every backup set (or of the
    /// set named): PostgreSQL could not reach it from there.
    #[error("{0}")]
    TargetBeforeSets(String),
    /// The S3 service refused a request or could not be reached.
    #[error(transparent)]
    S3(#[from] crate::s3::Error),
    /// A failure inside walmgr itself: a pipe, a thread, a tar stream writer.
    #[error("{0}")]
    Internal(String),
    /// restore_command must not deliver: any failure but "not in the archive". Shown
    /// as the failure it wraps.
    #[error(transparent)]
    Undeliverable(Box<WalmgrError>),
}

impl WalmgrError {
    pub fn command(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        WalmgrError::Command {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// For restore_command: "not in the archive" stays itself (exit 1: PostgreSQL tries
    /// the next source, or ends an archive recovery); anything else becomes
    /// [`WalmgrError::Undeliverable`] (exit 255: PostgreSQL stops instead of taking a
    /// corrupt file or a full disk for the end of the archive).
    pub fn undeliverable(self) -> Self {
        match self {
            e @ (WalmgrError::Missing { .. } | WalmgrError::Undeliverable(_)) => e,
            e => WalmgrError::Undeliverable(Box::new(e)),
        }
    }
}

/// restore_command's exit status for "stop recovery": PostgreSQL takes exit 1 as "no such
/// file", but an exit status above 125 as fatal.
pub const RESTORE_ABORT: u8 = 255;

impl crate::cli::ExitError for WalmgrError {
    fn code(&self) -> u8 {
        match self {
            WalmgrError::Missing { .. } | WalmgrError::NoBackup(_) => 1,
            WalmgrError::Unsupported { .. } => 1,
            WalmgrError::Usage(_) | WalmgrError::BadName(_) | WalmgrError::BadSetName(_) => 2,
            WalmgrError::Config(_) => 3,
            WalmgrError::Io(_) | WalmgrError::Output { .. } => 4,
            WalmgrError::Conflict { .. } => 5,
            WalmgrError::Corrupt { .. } | WalmgrError::BadWal { .. } => 6,
            WalmgrError::Transfer(_) => 7,
            WalmgrError::Command { .. } => 8,
            WalmgrError::Pg { .. } => 9,
            WalmgrError::Refused(_) => 10,
            WalmgrError::Busy(_) => 11,
            WalmgrError::Verify(_) => 12,
            WalmgrError::Internal(_) => 13,
            WalmgrError::TargetBeforeSets(_) => 14,
            WalmgrError::S3(_) => 15,
            WalmgrError::Undeliverable(_) => RESTORE_ABORT,
        }
    }
}

pub type Result<T, E = WalmgrError> = std::result::Result<T, E>;

/// `map_err` adapter: an I/O error on `path` during `op`.
pub fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> WalmgrError + 'a {
    move |e| PathError::new(op, path, e).into()
}

/// The checksum comparison: `what` (at `path`) hashed to `got` = (sha256, bytes),
/// `recorded_in` says it must be `want`.
pub fn check_digest(
    path: &std::path::Path,
    what: &str,
    got: (&str, u64),
    recorded_in: &str,
    want: (&str, u64),
) -> Result<()> {
    check_sum(path, what, Algo::Sha256, got, recorded_in, want)
}

/// [`check_digest`] by another checksum.
pub fn check_sum(
    path: &std::path::Path,
    what: &str,
    algo: Algo,
    got: (&str, u64),
    recorded_in: &str,
    want: (&str, u64),
) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let algo = algo.name();
    Err(WalmgrError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "{what} has {algo} {} ({} bytes), {recorded_in} says {} ({} bytes)",
            got.0, got.1, want.0, want.1
        ),
    })
}
