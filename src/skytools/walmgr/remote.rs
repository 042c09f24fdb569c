//! The ssh transport to a remote slave: every remote operation is
//! `<ssh...> <host> <remote_walmgr> <slave.ini> <command> <args...>`, so the far side runs
//! the same code with its own ini, and its exit status and one-line error come back.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proc::{Cmd, Outcome};

use super::error::{Result, WalmgrError};

#[derive(Debug, Clone)]
pub struct Remote {
    pub ssh: Vec<String>,
    /// `-o ConnectTimeout=`, `-o ServerAliveInterval=`, `-o ServerAliveCountMax=`, added
    /// when the transport is ssh itself (after the configured words: ssh takes the first
    /// value given, so an explicit `-o` in `ssh` wins).
    pub connect_timeout: Duration,
    pub alive_interval: Duration,
    pub alive_count: u32,
    /// The whole call, ssh included (`None`: the base backup stream).
    pub timeout: Option<Duration>,
    pub host: String,
    pub walmgr: String,
    pub ini: PathBuf,
}

impl Remote {
    /// The local ssh command that runs `walmgr <ini> <args>` on the slave. ssh joins its
    /// arguments into one string for the remote shell, so each is quoted; a word that
    /// cannot be quoted (a NUL byte) is an error, never sent as it is.
    pub fn command(&self, args: &[&str]) -> Result<Cmd> {
        let mut c = Cmd::new(&self.ssh[0]);
        c.args(&self.ssh[1..]);
        if Path::new(&self.ssh[0])
            .file_name()
            .is_some_and(|n| n == "ssh")
        {
            let secs = |d: Duration| d.as_secs_f64().ceil().max(1.0) as u64;
            c.args([
                "-o".to_string(),
                format!("ConnectTimeout={}", secs(self.connect_timeout)),
                "-o".to_string(),
                format!("ServerAliveInterval={}", secs(self.alive_interval)),
                "-o".to_string(),
                format!("ServerAliveCountMax={}", self.alive_count),
            ]);
        }
        c.arg(&self.host).arg("--");
        if let Some(t) = self.timeout {
            c.timeout(t);
        }
        let ini = self.ini.to_string_lossy();
        let words = [self.walmgr.as_str(), ini.as_ref()]
            .into_iter()
            .chain(args.iter().copied());
        let mut line = Vec::new();
        for w in words {
            let q = shlex::try_quote(w).map_err(|e| {
                WalmgrError::command(
                    self.describe(args),
                    format!("cannot pass {w:?} to the remote shell: {e}"),
                )
            })?;
            line.push(q.into_owned());
        }
        c.arg(line.join(" "));
        Ok(c)
    }

    fn describe(&self, args: &[&str]) -> String {
        // The command and its first argument (the segment or set it is about).
        let what: Vec<&str> = args.iter().take(2).copied().collect();
        format!("ssh {} {} {}", self.host, self.walmgr, what.join(" "))
    }

    /// Run a remote command feeding `input` to its stdin; its stdout on success, its last
    /// stderr line as the error otherwise.
    pub fn run(&self, args: &[&str], input: &mut dyn Read) -> Result<String> {
        self.run_with(args, |w| std::io::copy(input, w).map(|_| ()))
    }

    /// Run a remote command whose stdin is written by `fill` (streaming).
    pub fn run_with<F>(&self, args: &[&str], fill: F) -> Result<String>
    where
        F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
    {
        let what = self.describe(args);
        let out = self
            .command(args)?
            .run_feeding(fill)
            .map_err(|e| WalmgrError::command(&what, e.detail()))?;
        Self::outcome(&what, out)
    }

    fn outcome(what: &str, out: Outcome) -> Result<String> {
        if out.timed_out {
            return Err(WalmgrError::command(
                what,
                format!(
                    "no answer within {:.0?} (remote_timeout): ssh stopped; is the link or \
                     the slave hung?",
                    out.duration
                ),
            ));
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no error output")
                .trim()
                .to_string();
            return Err(WalmgrError::command(
                what,
                format!("{} ({})", line, out.status),
            ));
        }
        if let Some(e) = out.input_error {
            return Err(WalmgrError::command(what, format!("sending data: {e}")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(ssh: Vec<String>) -> Remote {
        Remote {
            ssh,
            connect_timeout: Duration::from_millis(6500),
            alive_interval: Duration::from_secs(5),
            alive_count: 3,
            timeout: Some(Duration::from_secs(60)),
            host: "standby".into(),
            walmgr: "/usr/bin/walmgr".into(),
            ini: "/etc/my wal.ini".into(),
        }
    }

    #[test]
    fn a_word_that_cannot_be_quoted_is_an_error_not_sent() {
        let r = remote(vec!["ssh".into()]);
        let e = r
            .command(&["xreceive-wal", "0000000100000000000000A1\0; reboot"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot pass") && e.contains("remote shell"),
            "{e}"
        );
        // A transport that is not ssh itself gets no ssh options.
        let r = remote(vec!["/usr/local/bin/my-tunnel".into(), "-x".into()]);
        let c = r.command(&["listbackups"]).unwrap();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..3], ["-x", "standby", "--"]);
    }

    #[test]
    fn remote_words_are_quoted_for_the_far_shell() {
        let r = remote(vec!["ssh".into(), "-p".into(), "2222".into()]);
        let c = r
            .command(&["xreceive-wal", "0000000100000000000000A1", "$(reboot)"])
            .unwrap();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-p",
                "2222",
                "-o",
                "ConnectTimeout=7",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "standby",
                "--",
                "/usr/bin/walmgr '/etc/my wal.ini' xreceive-wal 0000000100000000000000A1 '$(reboot)'"
            ]
        );
    }
}
