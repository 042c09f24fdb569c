//! `[commands]`: each command line run by /bin/sh -c through [`crate::proc`] (whose
//! timeout ends the command's whole process group, so a hung command cannot outlive
//! its time, sos #3583), and the commands log: per command its label, command line,
//! exit code, duration, whether it timed out, its stdout and its stderr.

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::proc::{Cmd, Output};

/// How one command went.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    pub label: String,
    pub line: String,
    /// None when it could not be started (then `error` says why) or died of a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration: Duration,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes the command wrote to stdout and stderr; what is not kept of them was
    /// dropped as it was read (only the last `cap` bytes are ever held).
    pub stdout_size: u64,
    pub stderr_size: u64,
    pub error: Option<String>,
}

impl Ran {
    pub fn truncated(&self) -> bool {
        self.stdout_dropped() > 0 || self.stderr_dropped() > 0
    }

    /// Bytes cut from the head of stdout.
    pub fn stdout_dropped(&self) -> u64 {
        self.stdout_size.saturating_sub(self.stdout.len() as u64)
    }

    pub fn stderr_dropped(&self) -> u64 {
        self.stderr_size.saturating_sub(self.stderr.len() as u64)
    }

    pub fn describe(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        if self.timed_out {
            return format!(
                "timed out after {:.1} s, its process group killed",
                self.duration.as_secs_f64()
            );
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "ended".into(),
        }
    }
}

/// Run `line` with a time limit, keeping at most the last `cap` bytes of each output
/// (bounded while it runs: the rest is dropped as it is read, and counted).
pub fn run(label: &str, line: &str, timeout: Duration, cap: u64) -> Ran {
    let start = std::time::Instant::now();
    let mut cmd = Cmd::shell(line);
    cmd.output(Output::Capture)
        .capture_tail(cap)
        .timeout(timeout)
        .grace(Duration::from_secs(2));
    let mut ran = Ran {
        label: label.to_string(),
        line: line.to_string(),
        exit_code: None,
        signal: None,
        duration: Duration::ZERO,
        timed_out: false,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_size: 0,
        stderr_size: 0,
        error: None,
    };
    match cmd.run() {
        Ok(o) => {
            ran.exit_code = o.status.code();
            ran.signal = o.status.signal();
            ran.duration = o.duration;
            ran.timed_out = o.timed_out;
            ran.stdout_size = o.stdout.len() as u64 + o.stdout_dropped;
            ran.stderr_size = o.stderr.len() as u64 + o.stderr_dropped;
            ran.stdout = o.stdout;
            ran.stderr = o.stderr;
        }
        Err(e) => {
            ran.duration = start.elapsed();
            ran.error = Some(e.detail());
        }
    }
    ran
}

/// The commands log entry of `r` (its outputs as given, i.e. already scrubbed).
pub fn log_entry(r: &Ran, stdout: &[u8], stderr: &[u8]) -> Vec<u8> {
    let mut head = String::new();
    let _ = writeln!(head, "==== {} ====", r.label);
    let _ = writeln!(head, "command: {}", r.line);
    let _ = writeln!(
        head,
        "exit code: {}",
        match (r.exit_code, r.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("none (killed by signal {s})"),
            _ => "none".into(),
        }
    );
    let _ = writeln!(head, "duration: {:.3} s", r.duration.as_secs_f64());
    let _ = writeln!(
        head,
        "timed out: {}",
        if r.timed_out { "yes" } else { "no" }
    );
    if let Some(e) = &r.error {
        let _ = writeln!(head, "error: {e}");
    }
    for (what, size, kept) in [
        ("stdout", r.stdout_size, r.stdout.len()),
        ("stderr", r.stderr_size, r.stderr.len()),
    ] {
        if size > kept as u64 {
            let _ = writeln!(
                head,
                "truncated: {what}, last {kept} of {size} bytes kept, {} dropped",
                size - kept as u64
            );
        }
    }
    let mut out = head.into_bytes();
    for (what, data) in [("stdout", stdout), ("stderr", stderr)] {
        out.extend_from_slice(format!("--- {what} ---\n").as_bytes());
        out.extend_from_slice(data);
        if !data.is_empty() && !data.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_exit_code_and_log_entry() {
        let r = run(
            "t",
            "echo out; echo err >&2; exit 4",
            Duration::from_secs(10),
            1 << 20,
        );
        assert_eq!(r.exit_code, Some(4));
        assert!(!r.timed_out && !r.truncated() && r.error.is_none());
        let log = String::from_utf8(log_entry(&r, &r.stdout, &r.stderr)).unwrap();
        assert!(
            log.starts_with(
                "==== t ====\ncommand: echo out; echo err >&2; exit 4\nexit code: 4\nduration: "
            ),
            "{log}"
        );
        assert!(
            log.contains("timed out: no\n--- stdout ---\nout\n--- stderr ---\nerr\n"),
            "{log}"
        );
    }

    #[test]
    fn output_is_cut_to_its_tail() {
        let r = run("t", "seq 1 1000", Duration::from_secs(10), 9);
        assert_eq!(r.stdout, b"999\n1000\n");
        assert!(r.truncated() && r.stdout_size > 3000);
        let log = String::from_utf8(log_entry(&r, &r.stdout, &r.stderr)).unwrap();
        assert!(
            log.contains("truncated: stdout, last 9 of 3893 bytes kept, 3884 dropped"),
            "{log}"
        );
    }

    #[test]
    fn a_missing_program_is_an_exit_code_not_an_error() {
        let r = run("t", "no-such-program-calink", Duration::from_secs(10), 100);
        assert_eq!(r.exit_code, Some(127));
        assert!(String::from_utf8_lossy(&r.stderr).contains("not found"));
    }
}
