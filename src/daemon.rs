//! Daemon life cycle shared by every long-running hostkit program.
//!
//! - Foreground by default, so `start-stop-daemon --background` and supervisors own the
//!   process; [`detach`] on request (double fork + setsid with `nix`, before any thread or
//!   tokio runtime exists, because fork only copies the calling thread).
//! - The parent of a detached daemon waits on a pipe until the daemon says it is ready,
//!   so a startup error (bad config, pidfile held) still gives the caller's shell a
//!   non-zero exit and the error line on its terminal.
//! - A pidfile held with `flock` for the life of the process: a held lock means a live
//!   instance; a file whose lock is free is stale (its writer died) and is taken over.
//! - Signals arrive as a tokio stream of [`Signal`] values.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::{ForkResult, Pid};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    // The io::Error is a detail of this line, not a source (see crate::cli).
    #[error("pidfile {path}: {op}: {err}")]
    Pidfile {
        path: PathBuf,
        op: &'static str,
        err: std::io::Error,
    },
    #[error("already running as pid {pid} (pidfile {path} is locked)")]
    Running { path: PathBuf, pid: i32 },
    #[error("already running as pid {pid} (pidfile {path}); stop it first")]
    RunningUnlocked { path: PathBuf, pid: i32 },
    #[error("cannot detach: {0}")]
    Detach(String),
}

/// True if a process with this pid is running (EPERM counts: it exists, just not
/// ours). A zombie is not running: a daemon that exited stays one until its parent, or
/// init, reaps it, and some inits never do.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let exists = match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    };
    exists && !is_zombie(pid)
}

/// State Z (zombie) or X (dead) in /proc/<pid>/stat; the state follows the
/// parenthesised command name, which may itself contain spaces or parentheses.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().chars().next()))
        .flatten()
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// Open a pidfile or lock file: never through a symlink, only a regular file.
fn open_pidfile(path: &Path, opts: &mut OpenOptions) -> std::io::Result<File> {
    crate::fsutil::open_regular_nofollow(path, opts, false)
}

fn parse_pid(path: &Path, s: &str) -> Result<Option<i32>, DaemonError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<i32>()
        .map(Some)
        .map_err(|_| DaemonError::Pidfile {
            path: path.to_path_buf(),
            op: "parse",
            err: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("content {s:?} is not a pid"),
            ),
        })
}

/// Read the pid recorded in a pidfile; `Ok(None)` if the file is missing or empty.
pub fn read_pid(path: &Path) -> Result<Option<i32>, DaemonError> {
    Ok(read_pid_locked(path)?.and_then(|(pid, _)| pid))
}

/// The pid in the pidfile and whether another process holds its lock (`None` if the
/// file is missing). The lock is probed with a non-blocking shared flock that is
/// released at once.
fn read_pid_locked(path: &Path) -> Result<Option<(Option<i32>, bool)>, DaemonError> {
    let err = |op, err| DaemonError::Pidfile {
        path: path.to_path_buf(),
        op,
        err,
    };
    let mut file = match open_pidfile(path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("open", e)),
    };
    let mut s = String::new();
    file.read_to_string(&mut s).map_err(|e| err("read", e))?;
    let held = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_probe) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err((_, e)) => return Err(err("lock", e.into())),
    };
    Ok(Some((parse_pid(path, &s)?, held)))
}

/// The running instance recorded in `path`.
///
/// A pid only counts while the pidfile's lock is held (every hostkit daemon holds it for
/// its life, see [`Pidfile`]): a free lock means the writer is gone and the pid may have
/// been recycled by an unrelated process, which must never be signalled.
pub fn running_pid(path: &Path) -> Result<Option<i32>, DaemonError> {
    running_pid_of(path, None)
}

/// Like [`running_pid`], for pidfiles written by programs that do not lock them (the
/// Python Skytools scripts scriptmgr runs): with a free lock the pid still counts if
/// that process is ours to signal (EPERM is not "alive") and its command line carries
/// `arg` (the job's config file, which scriptmgr passes to every script it starts).
pub fn running_pid_of(path: &Path, arg: Option<&Path>) -> Result<Option<i32>, DaemonError> {
    let Some((Some(pid), held)) = read_pid_locked(path)? else {
        return Ok(None);
    };
    if !pid_alive(pid) {
        return Ok(None);
    }
    if held {
        return Ok(Some(pid));
    }
    let Some(arg) = arg else {
        log::debug!(
            "pidfile {}: pid {pid} exists but the lock is free: stale",
            path.display()
        );
        return Ok(None);
    };
    let signallable = kill(Pid::from_raw(pid), None).is_ok();
    Ok((signallable && cmdline_has(pid, arg)).then_some(pid))
}

/// True if one argument of /proc/<pid>/cmdline is `arg` (compared as given and
/// canonicalised, since the process may have been started with a relative path).
fn cmdline_has(pid: i32, arg: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let canon = std::fs::canonicalize(arg).ok();
    raw.split(|&b| b == 0).any(|a| {
        let a = std::ffi::OsStr::from_bytes(a);
        Path::new(a) == arg || canon.as_deref().is_some_and(|c| Path::new(a) == c)
    })
}

fn exe_name(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// A pidfile this process holds; removed when released or dropped.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl Pidfile {
    /// Take the pidfile: fails if another live instance holds it.
    ///
    /// The lock decides: a held lock is a live instance. A free lock with a live pid in
    /// the file is only treated as running when that pid runs the same executable (an
    /// older, non-locking writer); any other content is stale and is overwritten.
    pub fn acquire(path: &Path) -> Result<Pidfile, DaemonError> {
        let err = |op, err| DaemonError::Pidfile {
            path: path.to_path_buf(),
            op,
            err,
        };
        let file = open_pidfile(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644),
        )
        .map_err(|e| err("open", e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = read_pid(path)?.unwrap_or(0);
                return Err(DaemonError::Running {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            Err((_, e)) => return Err(err("lock", e.into())),
        };
        let mut old = String::new();
        lock.read_to_string(&mut old).map_err(|e| err("read", e))?;
        if let Ok(pid) = old.trim().parse::<i32>() {
            let me = std::process::id() as i32;
            if pid != me && pid_alive(pid) && exe_name(pid) == exe_name(me) {
                return Err(DaemonError::RunningUnlocked {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            if pid != me {
                log::info!("pidfile {}: taking over stale pid {pid}", path.display());
            }
        }
        lock.set_len(0).map_err(|e| err("truncate", e))?;
        lock.rewind().map_err(|e| err("seek", e))?;
        writeln!(lock, "{}", std::process::id()).map_err(|e| err("write", e))?;
        lock.sync_all().map_err(|e| err("fsync", e))?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            lock: Some(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file, then drop the lock (in that order, so a starting instance never
    /// sees our pid with a free lock).
    pub fn release(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(&self.path);
            drop(lock);
        }
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Handle held by a detached daemon until its startup is complete.
pub struct Startup {
    ready: Option<OwnedFd>,
}

impl Startup {
    /// A foreground process: nothing to report to.
    pub fn foreground() -> Startup {
        Startup { ready: None }
    }

    /// Tell the waiting parent that startup succeeded and stop using the terminal.
    pub fn ready(&mut self) -> Result<(), DaemonError> {
        if let Some(fd) = self.ready.take() {
            let devnull = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| DaemonError::Detach(format!("open /dev/null: {e}")))?;
            nix::unistd::dup2_stdin(devnull.as_fd())
                .and_then(|_| nix::unistd::dup2_stdout(devnull.as_fd()))
                .and_then(|_| nix::unistd::dup2_stderr(devnull.as_fd()))
                .map_err(|e| DaemonError::Detach(format!("redirect stdio: {e}")))?;
            let mut f = File::from(fd);
            f.write_all(b"1")
                .map_err(|e| DaemonError::Detach(format!("notify parent: {e}")))?;
        }
        Ok(())
    }
}

/// Detach from the terminal: fork, setsid, fork again, chdir /, umask 022.
///
/// Returns only in the daemon (grandchild). The original process waits until the daemon
/// calls [`Startup::ready`] and exits 0, or exits 1 if the daemon dies first (the
/// daemon's stderr is still the terminal until ready, so its error line is seen).
/// Must be called before any thread is started.
pub fn detach() -> Result<Startup, DaemonError> {
    let (read_end, write_end) =
        nix::unistd::pipe().map_err(|e| DaemonError::Detach(format!("pipe: {e}")))?;
    // SAFETY: called before any other thread exists (documented contract of this fn).
    match unsafe { nix::unistd::fork() }.map_err(|e| DaemonError::Detach(format!("fork: {e}")))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut buf = [0u8; 1];
            let mut f = File::from(read_end);
            let ok = matches!(f.read(&mut buf), Ok(1));
            // Reap the intermediate child (it exits right after forking the daemon), so
            // no zombie is left for an init that does not reap.
            let _ = nix::sys::wait::waitpid(child, None);
            std::process::exit(if ok { 0 } else { 1 });
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    nix::unistd::setsid().map_err(|e| DaemonError::Detach(format!("setsid: {e}")))?;
    // SAFETY: still single-threaded.
    match unsafe { nix::unistd::fork() }.map_err(|e| DaemonError::Detach(format!("fork: {e}")))? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    nix::unistd::chdir("/").map_err(|e| DaemonError::Detach(format!("chdir /: {e}")))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    Ok(Startup {
        ready: Some(write_end),
    })
}

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload configuration, reopen logs.
    Hup,
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
}

/// SIGHUP, SIGTERM and SIGINT as one async source (needs a tokio runtime).
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Hup,
            _ = self.term.recv() => Signal::Term,
            _ = self.int.recv() => Signal::Int,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_and_release_removes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        let held = Pidfile::acquire(&p).unwrap();
        assert_eq!(read_pid(&p).unwrap(), Some(std::process::id() as i32));
        let e = Pidfile::acquire(&p).unwrap_err();
        assert!(matches!(e, DaemonError::Running { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()));
        held.release();
        assert!(!p.exists());
    }

    #[test]
    fn stale_pidfile_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        // A pid that cannot exist (above pid_max) and garbage both count as stale.
        std::fs::write(&p, "4194999\n").unwrap();
        let held = Pidfile::acquire(&p).unwrap();
        assert_eq!(read_pid(&p).unwrap(), Some(std::process::id() as i32));
        drop(held);
        std::fs::write(&p, "garbage").unwrap();
        assert!(read_pid(&p).is_err());
        let held = Pidfile::acquire(&p).unwrap();
        drop(held);
    }

    #[test]
    fn live_pid_of_another_program_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        // pid 1 is alive but is not this test binary.
        std::fs::write(&p, "1\n").unwrap();
        Pidfile::acquire(&p).unwrap();
    }

    #[test]
    fn pid_alive_basics() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-5));
        // An exited child not yet reaped is a zombie: not alive.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!pid_alive(pid), "zombie counts as dead");
        child.wait().unwrap();
    }

    /// A live process that is not the daemon (a recycled pid): `sleep` with the given
    /// arguments, killed on drop.
    struct Sleeper(std::process::Child);
    impl Sleeper {
        fn new() -> Sleeper {
            let s = Sleeper(
                std::process::Command::new("sleep")
                    .arg("600")
                    .spawn()
                    .unwrap(),
            );
            // spawn returns once exec is under way; the new command line appears a
            // moment later (the kernel sets it up after closing the CLOEXEC pipe).
            let cmdline = format!("/proc/{}/cmdline", s.pid());
            for _ in 0..500 {
                if std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sleep")) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            s
        }
        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }
    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_live_pid_counts_only_while_the_lock_is_held() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        let other = Sleeper::new();
        std::fs::write(&p, format!("{}\n", other.pid())).unwrap();
        assert_eq!(running_pid(&p).unwrap(), None, "free lock: stale");
        // The unlocked fallback needs the job's config on the command line.
        assert_eq!(
            running_pid_of(&p, Some(Path::new("/etc/x.ini"))).unwrap(),
            None
        );
        assert_eq!(
            running_pid_of(&p, Some(Path::new("600"))).unwrap(),
            Some(other.pid())
        );
        // Held by a live instance (this process): counts.
        let held = Pidfile::acquire(&p).unwrap();
        assert_eq!(running_pid(&p).unwrap(), Some(std::process::id() as i32));
        drop(held);
        assert_eq!(running_pid(&p).unwrap(), None);
    }

    #[test]
    fn a_symlinked_pidfile_is_refused_and_the_victim_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let p = d.path().join("x.pid");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        let e = Pidfile::acquire(&p).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("x.pid"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let e = running_pid(&p).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let fifo = d.path().join("f.pid");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Pidfile::acquire(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
