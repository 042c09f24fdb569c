//! The one way hostkit runs another program: an operator's command line (`sh -c`), a
//! daemon's start script, `pg_ctl`, ssh.
//!
//! [`Cmd`] says what to run (program and arguments, or a shell line), with which
//! environment changes, in which directory, as which user (uid, gid and that user's
//! supplementary groups, as `initgroups` sets them), whether output is captured or goes to
//! our stdout/stderr, and how long it may take. stdin is /dev/null unless the caller feeds
//! it ([`Cmd::run_feeding`]).
//!
//! A timeout ends the whole process tree, not only the direct child: a command with a
//! timeout runs in its own process group, and at the deadline the group gets SIGTERM, then
//! SIGKILL after a grace period. (`sh -c 'sleep 600'` otherwise leaves the sleep behind
//! holding our pipes.) Without a timeout the child stays in our process group, so a Ctrl-C
//! at the terminal reaches it as it reaches us.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{Gid, Pid, Uid};

/// What writes a command's stdin (`run_feeding`).
type Fill<'a> = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + 'a>;

/// How long a timed-out command gets between SIGTERM and SIGKILL, unless set.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such user {0}")]
    NoUser(String),
    #[error("user {user}")]
    User {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {program}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The message with its cause, for callers that report a plain string.
    pub fn detail(&self) -> String {
        match std::error::Error::source(self) {
            Some(s) => format!("{self}: {s}"),
            None => self.to_string(),
        }
    }
}

/// Where the child's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Collected into [`Outcome::stdout`] / [`Outcome::stderr`].
    Capture,
    /// Our own stdout and stderr.
    Inherit,
    /// /dev/null.
    Discard,
}

/// A command to run. Build it, then [`Cmd::run`] (any number of times).
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    user: Option<String>,
    output: Output,
    /// With [`Output::Capture`]: keep only the last this many bytes of each output.
    tail_cap: Option<usize>,
    timeout: Option<Duration>,
    grace: Duration,
}

/// How a command ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Empty unless output was captured.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes cut from the head of stdout / stderr as they were read
    /// ([`Cmd::capture_tail`]); 0 without a cap.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    /// The timeout expired and the process group was signalled.
    pub timed_out: bool,
    pub duration: Duration,
    /// Feeding stdin failed (`run_feeding`), e.g. the command exited without reading it.
    pub input_error: Option<std::io::Error>,
}

impl Outcome {
    /// Exited 0 within its time.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// The last non-empty stderr line, trimmed (what a failing command says last).
    pub fn stderr_line(&self) -> String {
        String::from_utf8_lossy(&self.stderr)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// "exited with status 3", "killed by signal 9", "timed out after 5s".
    pub fn describe(&self) -> String {
        if self.timed_out {
            format!("timed out after {:.1?}", self.duration)
        } else if let Some(sig) = self.status.signal() {
            format!("killed by signal {sig}")
        } else {
            format!("exited with {}", self.status)
        }
    }
}

impl Cmd {
    /// `program` with arguments to come. A name without `/` is looked up in PATH.
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            output: Output::Capture,
            tail_cap: None,
            timeout: None,
            grace: DEFAULT_GRACE,
        }
    }

    /// An operator's command line, run by `/bin/sh -c`.
    pub fn shell(line: impl AsRef<OsStr>) -> Cmd {
        let mut c = Cmd::new("/bin/sh");
        c.arg("-c").arg(line);
        c
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Cmd {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Cmd {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Cmd {
        self.env
            .push((k.as_ref().to_owned(), Some(v.as_ref().to_owned())));
        self
    }

    pub fn env_remove(&mut self, k: impl AsRef<OsStr>) -> &mut Cmd {
        self.env.push((k.as_ref().to_owned(), None));
        self
    }

    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Cmd {
        self.cwd = Some(dir.into());
        self
    }

    /// Run as this user: its uid, primary gid and supplementary groups (needs root).
    pub fn user(&mut self, name: impl Into<String>) -> &mut Cmd {
        self.user = Some(name.into());
        self
    }

    pub fn output(&mut self, o: Output) -> &mut Cmd {
        self.output = o;
        self
    }

    /// Capture at most the last `cap` bytes of stdout and of stderr: what comes before is
    /// dropped as it is read (and counted), so a command that writes without end costs
    /// `cap` bytes of memory per stream, not its output's size.
    pub fn capture_tail(&mut self, cap: u64) -> &mut Cmd {
        self.tail_cap = Some(usize::try_from(cap).unwrap_or(usize::MAX));
        self
    }

    /// End the command's process group if it runs longer than `t`.
    pub fn timeout(&mut self, t: Duration) -> &mut Cmd {
        self.timeout = Some(t);
        self
    }

    /// Between SIGTERM and SIGKILL at a timeout ([`DEFAULT_GRACE`] unless set).
    pub fn grace(&mut self, g: Duration) -> &mut Cmd {
        self.grace = g;
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> impl Iterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// The program and its arguments, shell-quoted, for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| {
                let w = w.to_string_lossy();
                shlex::try_quote(&w)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| w.replace('\0', ""))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run with stdin from /dev/null and wait for it to end.
    pub fn run(&self) -> Result<Outcome, Error> {
        self.spawn_and_wait(None)
    }

    /// Run with stdin written by `fill` (in this thread; the pipe is closed after it), and
    /// wait for it to end. A timeout also ends a `fill` blocked on a command that stopped
    /// reading: the write fails once the command is gone.
    pub fn run_feeding(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Outcome, Error> {
        self.spawn_and_wait(Some(Box::new(fill)))
    }

    fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    fn command(&self) -> Result<Command, Error> {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        // An ignored signal stays ignored across exec: started from a shell's `&` (no job
        // control) we would pass on SIGINT ignored, and scriptmgr's stop (SIGINT, as
        // Skytools') could never stop a service. The child starts with the defaults.
        // SAFETY: signal(2) with SIG_DFL is async-signal-safe and touches no memory.
        unsafe {
            c.pre_exec(|| {
                use nix::sys::signal::{signal, SigHandler};
                signal(Signal::SIGINT, SigHandler::SigDfl).map_err(std::io::Error::from)?;
                signal(Signal::SIGQUIT, SigHandler::SigDfl).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let (out, err) = match self.output {
            Output::Capture => (Stdio::piped(), Stdio::piped()),
            Output::Inherit => (Stdio::inherit(), Stdio::inherit()),
            Output::Discard => (Stdio::null(), Stdio::null()),
        };
        c.stdout(out).stderr(err);
        if self.timeout.is_some() {
            c.process_group(0);
        }
        if let Some(name) = &self.user {
            let u = nix::unistd::User::from_name(name)
                .map_err(|source| Error::User {
                    user: name.clone(),
                    source,
                })?
                .ok_or_else(|| Error::NoUser(name.clone()))?;
            let cname = CString::new(name.as_str()).map_err(|_| Error::NoUser(name.clone()))?;
            let groups =
                nix::unistd::getgrouplist(&cname, u.gid).map_err(|source| Error::User {
                    user: name.clone(),
                    source,
                })?;
            // The user's identity in the environment too (as su/runuser set it), so the
            // child does not read root's ~/.pgpass or write into root's home; what the
            // caller set explicitly wins.
            for (k, v) in [
                ("HOME", u.dir.as_os_str()),
                ("USER", OsStr::new(name)),
                ("LOGNAME", OsStr::new(name)),
            ] {
                if !self.env.iter().any(|(ek, _)| ek == k) {
                    c.env(k, v);
                }
            }
            let (uid, gid): (Uid, Gid) = (u.uid, u.gid);
            // Groups first, then gid, then uid: each later step gives up the right to the
            // earlier ones. std's uid()/gid() would drop the supplementary groups, and a
            // pre_exec hook runs after them, too late to set groups. Only syscalls here:
            // this runs between fork and exec.
            // SAFETY: the hook only makes async-signal-safe syscalls on data moved in.
            unsafe {
                c.pre_exec(move || {
                    nix::unistd::setgroups(&groups)?;
                    nix::unistd::setgid(gid)?;
                    nix::unistd::setuid(uid)?;
                    Ok(())
                });
            }
        }
        Ok(c)
    }

    fn spawn_and_wait(&self, fill: Option<Fill<'_>>) -> Result<Outcome, Error> {
        let mut c = self.command()?;
        c.stdin(if fill.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let start = Instant::now();
        let mut child = c.spawn().map_err(|source| Error::Spawn {
            program: self.program_name(),
            source,
        })?;
        let pid = Pid::from_raw(child.id() as i32);
        let stdout = child.stdout.take().map(|p| collect(p, self.tail_cap));
        let stderr = child.stderr.take().map(|p| collect(p, self.tail_cap));

        let timed_out = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let watchdog = self.timeout.map(|timeout| {
            let (grace, timed_out) = (self.grace, timed_out.clone());
            std::thread::spawn(move || {
                if done_rx.recv_timeout(timeout) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                timed_out.store(true, Ordering::SeqCst);
                let _ = killpg(pid, Signal::SIGTERM);
                if done_rx.recv_timeout(grace) == Err(mpsc::RecvTimeoutError::Timeout) {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
            })
        });

        let input_error = match (fill, child.stdin.take()) {
            (Some(fill), Some(mut stdin)) => fill(&mut stdin).and_then(|_| stdin.flush()).err(),
            _ => None,
        };

        // Wait for the exit without reaping: until we reap, the pid (= the process group
        // id) cannot be reused, so the watchdog never signals a stranger's group.
        let waited = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r,
            }
        };
        // What is left in the group may still hold the pipes: with a timeout, wait for it
        // only until the watchdog's SIGKILL has had its effect.
        let limit = self
            .timeout
            .map(|t| start + t + self.grace + Duration::from_secs(1));
        let (stdout, stdout_dropped) = stdout.map(|r| r.finish(limit)).unwrap_or_default();
        let (stderr, stderr_dropped) = stderr.map(|r| r.finish(limit)).unwrap_or_default();
        drop(done_tx);
        if let Some(w) = watchdog {
            let _ = w.join();
        }
        let status = child.wait();
        let duration = start.elapsed();
        if let Err(e) = waited {
            return Err(Error::Wait {
                program: self.program_name(),
                source: e.into(),
            });
        }
        let status = status.map_err(|source| Error::Wait {
            program: self.program_name(),
            source,
        })?;
        Ok(Outcome {
            status,
            stdout,
            stderr,
            stdout_dropped,
            stderr_dropped,
            timed_out: timed_out.load(Ordering::SeqCst),
            duration,
            input_error,
        })
    }
}

/// What a pipe gave: everything, or with a cap its last `cap` bytes in a ring and the
/// count of those dropped before them.
#[derive(Default)]
struct Captured {
    ring: VecDeque<u8>,
    cap: Option<usize>,
    dropped: u64,
}

impl Captured {
    fn push(&mut self, chunk: &[u8]) {
        let Some(cap) = self.cap else {
            return self.ring.extend(chunk);
        };
        if chunk.len() >= cap {
            self.dropped += (self.ring.len() + chunk.len() - cap) as u64;
            self.ring.clear();
            self.ring.extend(&chunk[chunk.len() - cap..]);
            return;
        }
        let over = (self.ring.len() + chunk.len()).saturating_sub(cap);
        if over > 0 {
            self.ring.drain(..over);
            self.dropped += over as u64;
        }
        self.ring.extend(chunk);
    }
}

/// A pipe read to its end in a thread of its own (a blocked reader must not hold up the
/// wait or the other pipe).
struct Reader {
    buf: Arc<Mutex<Captured>>,
    eof: mpsc::Receiver<()>,
}

fn collect(mut pipe: impl Read + Send + 'static, cap: Option<usize>) -> Reader {
    let buf = Arc::new(Mutex::new(Captured {
        cap,
        ..Captured::default()
    }));
    let (tx, eof) = mpsc::channel();
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => b
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    Reader { buf, eof }
}

impl Reader {
    /// What was kept and how many bytes were dropped, once the pipe is closed or
    /// `limit` has passed.
    fn finish(self, limit: Option<Instant>) -> (Vec<u8>, u64) {
        match limit {
            Some(l) => {
                let _ = self
                    .eof
                    .recv_timeout(l.saturating_duration_since(Instant::now()));
            }
            None => {
                let _ = self.eof.recv();
            }
        }
        let c = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
        (Vec::from(c.ring), c.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        crate::daemon::pid_alive(pid)
    }

    #[test]
    fn exit_code_and_output_are_captured() {
        let o = Cmd::shell("echo out; echo err >&2; exit 3").run().unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert!(!o.success() && !o.timed_out);
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
        assert_eq!(o.stderr_line(), "err");
        assert_eq!(o.describe(), "exited with exit status: 3");
        let o = Cmd::new("true").run().unwrap();
        assert!(o.success());
    }

    #[test]
    fn a_tail_cap_keeps_the_end_and_counts_what_it_dropped() {
        // 3 MB in 8 KiB reads and larger: only the last 10 bytes are ever kept.
        let o = Cmd::shell("head -c 3000000 /dev/zero; printf 0123456789; printf e >&2")
            .capture_tail(10)
            .run()
            .unwrap();
        assert!(o.success(), "{o:?}");
        assert_eq!(o.stdout, b"0123456789");
        assert_eq!(o.stdout_dropped, 3_000_000);
        assert_eq!((o.stderr.as_slice(), o.stderr_dropped), (&b"e"[..], 0));
        let mut c = Captured {
            cap: Some(4),
            ..Captured::default()
        };
        for chunk in [&b"ab"[..], b"cde", b"", b"fghijk", b"l"] {
            c.push(chunk);
        }
        assert_eq!((Vec::from(c.ring), c.dropped), (b"ijkl".to_vec(), 8));
    }

    #[test]
    fn arguments_reach_the_program_unsplit() {
        let o = Cmd::new("printf")
            .args(["%s|", "a b", "$HOME", ""])
            .run()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "a b|$HOME||");
    }

    #[test]
    fn environment_is_set_and_removed() {
        // PATH is in every test's environment (setting a variable of our own here would
        // race with other tests' threads); env(1) prints what it got, adding nothing.
        assert!(std::env::var_os("PATH").is_some());
        let o = Cmd::new("/usr/bin/env")
            .env("HK_PROC_SET", "v 1")
            .env_remove("PATH")
            .run()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let vars: Vec<&str> = text.lines().collect();
        assert!(vars.contains(&"HK_PROC_SET=v 1"), "{vars:?}");
        assert!(!vars.iter().any(|v| v.starts_with("PATH=")), "{vars:?}");
        assert!(
            vars.iter()
                .any(|v| v.starts_with("HOME=") || v.starts_with("CARGO")),
            "inherited: {vars:?}"
        );
    }

    #[test]
    fn working_directory_and_stdin() {
        let d = tempfile::tempdir().unwrap();
        let o = Cmd::new("pwd").current_dir(d.path()).run().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            d.path().canonicalize().unwrap().to_str().unwrap()
        );
        // stdin is /dev/null: a reader sees EOF at once.
        let o = Cmd::new("cat")
            .timeout(Duration::from_secs(10))
            .run()
            .unwrap();
        assert!(o.success() && o.stdout.is_empty(), "{o:?}");
        let o = Cmd::new("tr")
            .args(["a-z", "A-Z"])
            .run_feeding(|w| w.write_all(b"fed\n"))
            .unwrap();
        assert_eq!(o.stdout, b"FED\n");
        assert!(o.input_error.is_none());
    }

    #[test]
    fn a_timeout_ends_the_child_and_its_grandchildren() {
        let d = tempfile::tempdir().unwrap();
        let pidf = d.path().join("grandchild");
        // The shell forks a sleeping grandchild that ignores nothing, records its pid, and
        // waits on it; killing only the shell would leave the sleep holding our pipes.
        let line = format!("sleep 60 & echo $! > {}; wait", pidf.display());
        let t0 = Instant::now();
        let o = Cmd::shell(&line)
            .timeout(Duration::from_millis(500))
            .grace(Duration::from_secs(2))
            .run()
            .unwrap();
        assert!(o.timed_out && !o.success(), "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            o.describe().starts_with("timed out after"),
            "{}",
            o.describe()
        );
        let gc: i32 = std::fs::read_to_string(&pidf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(gc) || is_zombie(gc)
        });
        assert!(gone, "grandchild {gc} survived the timeout");
    }

    #[test]
    fn sigterm_ignored_means_sigkill_after_the_grace() {
        let t0 = Instant::now();
        let o = Cmd::shell("trap '' TERM; sleep 60 & wait; sleep 60")
            .timeout(Duration::from_millis(300))
            .grace(Duration::from_millis(300))
            .run()
            .unwrap();
        assert!(o.timed_out, "{o:?}");
        assert_eq!(o.status.signal(), Some(9), "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_quick_command_is_not_touched_by_its_timeout() {
        let o = Cmd::shell("echo fast")
            .timeout(Duration::from_secs(30))
            .run()
            .unwrap();
        assert!(o.success() && !o.timed_out);
        assert!(o.duration < Duration::from_secs(5));
        assert_eq!(o.stdout, b"fast\n");
    }

    #[test]
    fn output_can_be_discarded_or_inherited() {
        let o = Cmd::shell("echo x; echo y >&2")
            .output(Output::Discard)
            .run()
            .unwrap();
        assert!(o.success() && o.stdout.is_empty() && o.stderr.is_empty());
        let o = Cmd::new("true").output(Output::Inherit).run().unwrap();
        assert!(o.success());
    }

    #[test]
    fn failures_to_start_name_the_program() {
        let e = Cmd::new("/nonexistent/hk-proc").run().unwrap_err();
        assert_eq!(e.to_string(), "cannot run /nonexistent/hk-proc");
        assert!(e.detail().contains("No such file"), "{}", e.detail());
        let e = Cmd::new("true").user("hk-no-such-user").run().unwrap_err();
        assert_eq!(e.to_string(), "no such user hk-no-such-user");
    }

    #[test]
    fn runs_as_a_user_with_its_groups() {
        if !Uid::effective().is_root() {
            return; // switching users needs root; the suite runs as root
        }
        let Ok(Some(u)) = nix::unistd::User::from_name("nobody") else {
            return;
        };
        let o = Cmd::shell("id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"")
            .user("nobody")
            .run()
            .unwrap();
        assert!(o.success(), "{o:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], u.uid.to_string());
        assert_eq!(lines[1], u.gid.to_string());
        let cname = CString::new("nobody").unwrap();
        let mut want: Vec<String> = nix::unistd::getgrouplist(&cname, u.gid)
            .unwrap()
            .iter()
            .map(|g| g.to_string())
            .collect();
        let mut got: Vec<String> = lines[2].split_whitespace().map(String::from).collect();
        want.sort();
        want.dedup();
        got.sort();
        assert_eq!(got, want, "supplementary groups are the user's, not root's");
        assert_eq!(
            lines[3],
            format!("{} nobody nobody", u.dir.display()),
            "HOME, USER and LOGNAME are the user's"
        );
        // An explicit setting wins.
        let o = Cmd::shell("echo \"$HOME\"")
            .user("nobody")
            .env("HOME", "/elsewhere")
            .run()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "/elsewhere");
    }

    #[test]
    fn display_quotes_for_a_shell() {
        let mut c = Cmd::new("pg_ctl");
        c.args(["-D", "/var/lib/my data", "promote"]);
        assert_eq!(c.display(), "pg_ctl -D '/var/lib/my data' promote");
        assert_eq!(
            c.get_args().collect::<Vec<_>>(),
            ["-D", "/var/lib/my data", "promote"]
        );
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }
}
