//! The ssh transport to a remote slave: every remote operation is
//! `<ssh...> <host> <remote_walmgr> <slave.ini> <command> <args...>`, so the far side runs
//! the same code with its own ini, and its exit status and one-line error come back.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::proc::{Cmd, Outcome};

use super::error::{Result, WalmgrError};

#[derive(Debug, Clone)]
pub struct Remote {
    pub ssh: Vec<String>,
    pub host: String,
    pub walmgr: String,
    pub ini: PathBuf,
}

impl Remote {
    /// The local ssh command that runs `walmgr <ini> <args>` on the slave. ssh joins its
    /// arguments into one string for the remote shell, so each is quoted.
    pub fn command(&self, args: &[&str]) -> Cmd {
        let mut c = Cmd::new(&self.ssh[0]);
        c.args(&self.ssh[1..]).arg(&self.host).arg("--");
        let ini = self.ini.to_string_lossy();
        let words = [self.walmgr.as_str(), ini.as_ref()]
            .into_iter()
            .chain(args.iter().copied());
        let line: Vec<String> = words
            .map(|w| {
                shlex::try_quote(w)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| w.replace('\0', ""))
            })
            .collect();
        c.arg(line.join(" "));
        c
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
            .command(args)
            .run_feeding(fill)
            .map_err(|e| WalmgrError::command(&what, e.detail()))?;
        Self::outcome(&what, out)
    }

    fn outcome(what: &str, out: Outcome) -> Result<String> {
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

    #[test]
    fn remote_words_are_quoted_for_the_far_shell() {
        let r = Remote {
            ssh: vec!["ssh".into(), "-p".into(), "2222".into()],
            host: "standby".into(),
            walmgr: "/usr/bin/walmgr".into(),
            ini: "/etc/my wal.ini".into(),
        };
        let c = r.command(&["xreceive-wal", "0000000100000000000000A1", "$(reboot)"]);
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-p",
                "2222",
                "standby",
                "--",
                "/usr/bin/walmgr '/etc/my wal.ini' xreceive-wal 0000000100000000000000A1 '$(reboot)'"
            ]
        );
    }
}
