//! Logging for every hostkit program: stderr, a log file (reopened on SIGHUP so logrotate
//! works), or syslog with a configurable ident and facility. Programs log through the
//! `log` facade; this module owns the one global sink and lets a reload swap it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File(PathBuf),
    Syslog {
        ident: String,
        facility: String,
        /// The syslog socket; `None` means the system's (/dev/log).
        socket: Option<PathBuf>,
    },
}

impl Target {
    /// `-` means stderr, anything else is a file path (the convention of `-l/--log`).
    pub fn from_arg(arg: &str) -> Target {
        if arg == "-" {
            Target::Stderr
        } else {
            Target::File(PathBuf::from(arg))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    // The io::Error is a detail of this line, not a source (see crate::cli).
    #[error("cannot open log file {path}: {err}")]
    File { path: PathBuf, err: std::io::Error },
    #[error("unknown syslog facility {0:?} (use daemon, user, local0 .. local7, ...)")]
    Facility(String),
    #[error("cannot connect to syslog{}: {reason}", .socket.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default())]
    Syslog {
        socket: Option<PathBuf>,
        reason: String,
    },
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Sink {
    Stderr,
    File { path: PathBuf, file: File },
    Syslog(Box<SyslogLogger>),
}

struct Logger {
    program: String,
    level: Mutex<LevelFilter>,
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Append-only, never through a symlink, only a regular file (or /dev/null): a log
/// directory other users can write must not let them redirect root's log lines.
fn open_file(path: &Path) -> Result<File, LogError> {
    crate::fsutil::open_regular_nofollow(
        path,
        OpenOptions::new().append(true).create(true).mode(0o640),
        true,
    )
    .map_err(|err| LogError::File {
        path: path.to_path_buf(),
        err,
    })
}

fn open_sink(target: &Target, program: &str) -> Result<Sink, LogError> {
    Ok(match target {
        Target::Stderr => Sink::Stderr,
        Target::File(path) => Sink::File {
            path: path.clone(),
            file: open_file(path)?,
        },
        Target::Syslog {
            ident,
            facility,
            socket,
        } => {
            let facility = syslog::Facility::from_str(facility)
                .map_err(|_| LogError::Facility(facility.clone()))?;
            let formatter = syslog::Formatter3164 {
                facility,
                hostname: None,
                process: if ident.is_empty() {
                    program.to_string()
                } else {
                    ident.clone()
                },
                pid: std::process::id(),
            };
            let logger = match socket {
                Some(p) => syslog::unix_custom(formatter, p),
                None => syslog::unix(formatter),
            }
            .map_err(|e| LogError::Syslog {
                socket: socket.clone(),
                reason: e.to_string(),
            })?;
            Sink::Syslog(Box::new(logger))
        }
    })
}

/// Install (first call) or reconfigure (later calls, e.g. on SIGHUP) the process logger.
/// A failure leaves the previous sink in place.
pub fn init(program: &str, target: &Target, level: LevelFilter) -> Result<(), LogError> {
    let sink = open_sink(target, program)?;
    let mut fresh = false;
    let logger = LOGGER.get_or_init(|| {
        fresh = true;
        Logger {
            program: program.to_string(),
            level: Mutex::new(level),
            sink: Mutex::new(Sink::Stderr),
        }
    });
    *logger.sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    *logger.level.lock().unwrap_or_else(|e| e.into_inner()) = level;
    if fresh {
        // Only fails if another logger was installed first, which we never do.
        let _ = log::set_logger(logger);
        install_panic_hook();
    }
    log::set_max_level(level);
    Ok(())
}

/// A panic in a detached daemon (or in a tokio task, which survives it) would otherwise
/// print to a closed stderr and leave no trace: log it too, then run the default hook.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !logs_to_stderr_now() {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            log::error!("BUG: thread {name} panicked{at}: {what}");
        }
        default(info);
    }));
}

/// Like [`logs_to_stderr`], but never waits on the sink lock: a panic raised while a
/// log line was being written must not deadlock its own hook (it then skips the log).
fn logs_to_stderr_now() -> bool {
    match LOGGER.get() {
        None => true,
        Some(l) => match l.sink.try_lock() {
            Ok(s) => matches!(*s, Sink::Stderr),
            Err(std::sync::TryLockError::Poisoned(p)) => matches!(*p.into_inner(), Sink::Stderr),
            Err(std::sync::TryLockError::WouldBlock) => true,
        },
    }
}

/// True while log records go to stderr (or no logger is installed yet), so a caller that
/// also prints an error to stderr does not print it twice.
pub fn logs_to_stderr() -> bool {
    LOGGER.get().is_none_or(|l| {
        matches!(
            *l.sink.lock().unwrap_or_else(|e| e.into_inner()),
            Sink::Stderr
        )
    })
}

/// Reopen a log file after logrotate moved it away (no-op for stderr and syslog).
pub fn reopen() -> Result<(), LogError> {
    if let Some(logger) = LOGGER.get() {
        let mut sink = logger.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Sink::File { path, file } = &mut *sink {
            *file = open_file(path)?;
        }
    }
    Ok(())
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= *self.level.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let msg = record.args();
        match &mut *sink {
            Sink::Stderr | Sink::File { .. } => {
                let line = format!(
                    "{} {}[{}] {}: {}\n",
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                    self.program,
                    std::process::id(),
                    record.level(),
                    msg
                );
                // A logger cannot report its own failure anywhere better than stderr.
                let _ = match &mut *sink {
                    Sink::File { file, .. } => file.write_all(line.as_bytes()),
                    _ => std::io::stderr().write_all(line.as_bytes()),
                };
            }
            Sink::Syslog(l) => {
                let _ = match record.level() {
                    Level::Error => l.err(msg),
                    Level::Warn => l.warning(msg),
                    Level::Info => l.info(msg),
                    Level::Debug | Level::Trace => l.debug(msg),
                };
            }
        }
    }

    fn flush(&self) {
        if let Sink::File { file, .. } = &mut *self.sink.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = file.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_arg() {
        assert_eq!(Target::from_arg("-"), Target::Stderr);
        assert_eq!(
            Target::from_arg("/var/log/x.log"),
            Target::File("/var/log/x.log".into())
        );
    }

    #[test]
    fn bad_facility_and_unwritable_file_are_named() {
        let t = Target::Syslog {
            ident: "x".into(),
            facility: "nonsense".into(),
            socket: None,
        };
        let e = open_sink(&t, "p").err().unwrap().to_string();
        assert!(e.contains("\"nonsense\""), "{e}");
        let e = open_sink(&Target::File("/nonexistent/dir/x.log".into()), "p")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/dir/x.log"), "{e}");
    }

    #[test]
    fn a_symlinked_log_file_is_refused_and_the_victim_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("shadow");
        std::fs::write(&victim, "root:x:0:0\n").unwrap();
        let log = d.path().join("p.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let e = open_sink(&Target::File(log.clone()), "p")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("p.log") && e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:x:0:0\n");
        // /dev/null (pgqd's sink when it has nowhere to log) is still accepted.
        open_sink(&Target::File("/dev/null".into()), "p").unwrap();
    }

    #[test]
    fn panics_are_logged_to_the_configured_sink() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.log");
        init("prog", &Target::File(path.clone()), LevelFilter::Info).unwrap();
        let r = std::thread::Builder::new()
            .name("drainer".into())
            .spawn(|| panic!("boom {}", 42))
            .unwrap()
            .join();
        assert!(r.is_err());
        init("prog", &Target::Stderr, LevelFilter::Info).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("BUG: thread drainer panicked at src/logging.rs:")
                && text.contains(": boom 42"),
            "{text}"
        );
    }

    #[test]
    fn syslog_lines_reach_the_socket_with_ident_and_facility() {
        let d = tempfile::tempdir().unwrap();
        let sock_path = d.path().join("log.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        let t = Target::Syslog {
            ident: "hk-test".into(),
            facility: "local3".into(),
            socket: Some(sock_path),
        };
        let Sink::Syslog(mut l) = open_sink(&t, "prog").unwrap() else {
            panic!("not a syslog sink")
        };
        l.warning("hello syslog").unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]);
        // local3 (19) * 8 + warning (4) = 156
        assert!(line.starts_with("<156>"), "{line}");
        assert!(line.contains("hk-test["), "{line}");
        assert!(line.ends_with("hello syslog"), "{line}");
    }
}
