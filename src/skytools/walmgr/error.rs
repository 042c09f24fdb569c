//! walmgr's error type: every variant names the file, key, segment or command it is about,
//! so the one line an operator (or PostgreSQL's log) shows is enough to act on.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::fsutil::PathError;

#[derive(Debug, thiserror::Error)]
pub enum WalmgrError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{0}: not a WAL segment, .partial, .backup or .history file name")]
    BadName(String),
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
    #[error("{name}: {reason} ({dir})")]
    Missing {
        name: String,
        reason: String,
        dir: PathBuf,
    },
    #[error("{what}: {reason}")]
    Command { what: String, reason: String },
    #[error("PostgreSQL ({conninfo}): {reason}")]
    Pg { conninfo: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl WalmgrError {
    pub fn command(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        WalmgrError::Command {
            what: what.into(),
            reason: reason.to_string(),
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

/// The one checksum comparison: `what` (at `path`) hashed to `got` = (sha256, bytes),
/// `recorded_in` says it must be `want`.
pub fn check_digest(
    path: &std::path::Path,
    what: &str,
    got: (&str, u64),
    recorded_in: &str,
    want: (&str, u64),
) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(WalmgrError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "{what} has sha256 {} ({} bytes), {recorded_in} says {} ({} bytes)",
            got.0, got.1, want.0, want.1
        ),
    })
}
