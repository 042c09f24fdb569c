//! pacha's errors: one line each, naming the path, key or revision, with an exit code
//! per kind (pacha(1) EXIT STATUS).

use std::path::PathBuf;

use crate::cli::ExitError;
use crate::config::ConfigError;
use crate::fsutil::PathError;

/// Exit status: the configuration is wrong (a bad key or value, a missing file).
pub const EXIT_CONFIG: u8 = 3;
/// Exit status: a path, revision or argument given is not usable.
pub const EXIT_USAGE: u8 = 4;
/// Exit status: reading or writing a tracked path failed.
pub const EXIT_IO: u8 = 5;
/// Exit status: git failed.
pub const EXIT_GIT: u8 = 6;
/// Exit status: the commit was made but pushing it to the master failed (kept, retried).
pub const EXIT_PUSH: u8 = 7;
/// Exit status: a pacha_pre / pacha_post hook failed.
pub const EXIT_HOOK: u8 = 8;
/// Exit status: the daemon could not start (pidfile, detach, logging, inotify).
pub const EXIT_DAEMON: u8 = 9;

#[derive(Debug, thiserror::Error)]
pub enum PachaError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A value the INI reader accepted but pacha cannot use.
    #[error("{path}: {reason}")]
    Setting { path: PathBuf, reason: String },
    #[error("{0}: not tracked (pacha track adds it)")]
    NotTracked(PathBuf),
    #[error("unknown revision {0:?}")]
    UnknownRev(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Path(#[from] PathError),
    /// A tracked path whose metadata cannot be read or restored.
    #[error("{path}: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error("git {what}: {detail}")]
    Git { what: String, detail: String },
    #[error("push to {url} failed (kept, retried at the next commit): {detail}")]
    Push { url: String, detail: String },
    #[error("hook {path} failed: {detail}")]
    Hook { path: PathBuf, detail: String },
    #[error("{0}")]
    Daemon(String),
}

impl PachaError {
    pub fn meta(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> PachaError {
        PachaError::Meta {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl ExitError for PachaError {
    fn code(&self) -> u8 {
        match self {
            PachaError::Config(_) | PachaError::Setting { .. } => EXIT_CONFIG,
            PachaError::NotTracked(_) | PachaError::UnknownRev(_) | PachaError::Usage(_) => {
                EXIT_USAGE
            }
            PachaError::Path(_) | PachaError::Meta { .. } => EXIT_IO,
            PachaError::Git { .. } => EXIT_GIT,
            PachaError::Push { .. } => EXIT_PUSH,
            PachaError::Hook { .. } => EXIT_HOOK,
            PachaError::Daemon(_) => EXIT_DAEMON,
        }
    }
}

impl From<crate::daemon::DaemonError> for PachaError {
    fn from(e: crate::daemon::DaemonError) -> Self {
        PachaError::Daemon(e.to_string())
    }
}

impl From<crate::logging::LogError> for PachaError {
    fn from(e: crate::logging::LogError) -> Self {
        PachaError::Daemon(e.to_string())
    }
}
