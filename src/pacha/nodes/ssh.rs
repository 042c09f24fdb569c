//! The ssh transport: `ssh <options> host -- <pacha command> <subcommand> <args>`, so the
//! far side runs this same program (the node applies, the master renders).
//!
//! Always `-o BatchMode=yes` (never a password prompt), `-o StrictHostKeyChecking=yes`
//! (an unknown or changed host key is refused, never accepted), `-o ConnectTimeout=N`
//! and a bound on the whole command; identity, known_hosts, user and port from
//! pacha.ini (a node file may set its own user and port).

use std::path::PathBuf;
use std::time::Duration;

use crate::proc::{Cmd, Outcome};

use super::NodesError;

#[derive(Debug, Clone, PartialEq)]
pub struct SshSettings {
    /// The ssh client.
    pub program: String,
    pub user: String,
    pub port: u16,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The whole remote command (transfer and apply).
    pub timeout: Duration,
    /// More ssh arguments (pacha.ini's `[ssh] options`), after ours: ssh keeps the first
    /// value of an option, so none of them can turn host key checking off.
    pub extra: Vec<String>,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            program: "ssh".into(),
            user: "root".into(),
            port: 22,
            identity: None,
            known_hosts: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            extra: Vec::new(),
        }
    }
}

/// Where to run what.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// The pacha command line there (a shell fragment: `pacha`, `/usr/bin/pacha -c x`).
    pub command: String,
}

impl Remote {
    pub fn describe(&self, s: &SshSettings) -> String {
        let port = self.port.unwrap_or(s.port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

fn quote(w: &str) -> String {
    shlex::try_quote(w)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| w.replace('\0', ""))
}

/// The ssh command line running `<remote.command> <args>` on `remote`.
pub fn command(s: &SshSettings, remote: &Remote, args: &[&str]) -> Cmd {
    let mut c = Cmd::new(&s.program);
    c.args([
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!(
        "ConnectTimeout={}",
        s.connect_timeout.as_secs().max(1)
    ))
    .arg("-p")
    .arg(remote.port.unwrap_or(s.port).to_string())
    .arg("-l")
    .arg(remote.user.as_deref().unwrap_or(&s.user));
    if let Some(k) = &s.known_hosts {
        c.arg("-o")
            .arg(format!("UserKnownHostsFile={}", k.display()));
    }
    if let Some(i) = &s.identity {
        c.arg("-i").arg(i).args(["-o", "IdentitiesOnly=yes"]);
    }
    c.args(&s.extra);
    let mut line = remote.command.clone();
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    c.arg(&remote.host).arg("--").arg(line);
    c.timeout(s.timeout);
    c
}

/// Run `args` on `remote`, feeding `input`. Ok when the remote command ran (whatever its
/// exit status); the transport's own failures (status 255) are errors.
pub fn run(
    s: &SshSettings,
    remote: &Remote,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<Outcome, NodesError> {
    let c = command(s, remote, args);
    let out = match input {
        Some(data) => c.run_feeding(|w| w.write_all(data)),
        None => c.run(),
    }
    .map_err(|e| NodesError::Ssh {
        host: remote.describe(s),
        line: e.detail(),
    })?;
    if out.timed_out {
        return Err(NodesError::Ssh {
            host: remote.describe(s),
            line: out.describe(),
        });
    }
    if out.status.code() == Some(255) {
        let text = String::from_utf8_lossy(&out.stderr);
        let key_line = text.lines().find(|l| {
            let l = l.to_lowercase();
            l.contains("host key verification failed")
                || l.contains("host key is known")
                || l.contains("remote host identification has changed")
        });
        let detail = text
            .lines()
            .find(|l| l.contains("host key is known") || l.contains("HAS CHANGED"))
            .or(key_line)
            .map(|l| l.trim().trim_matches('@').trim().to_string());
        return Err(match detail {
            Some(line) => NodesError::HostKey {
                host: remote.describe(s),
                known_hosts: s
                    .known_hosts
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.ssh/known_hosts".into()),
                line,
            },
            None => NodesError::Ssh {
                host: remote.describe(s),
                line: out.stderr_line(),
            },
        });
    }
    Ok(out)
}

/// The remote pacha's failure: its one-line error without the `pacha: ` prefix, and
/// its exit status (1 when it has none).
pub fn remote_error(remote: &Remote, s: &SshSettings, out: &Outcome) -> NodesError {
    let line = out.stderr_line();
    let line = line.strip_prefix("pacha: ").unwrap_or(&line).to_string();
    NodesError::Remote {
        host: remote.describe(s),
        line: if line.is_empty() {
            format!("remote pacha {}", out.describe())
        } else {
            line
        },
        code: out
            .status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_checks_host_keys_and_quotes_the_far_words() {
        let s = SshSettings {
            extra: vec!["-o".into(), "StrictHostKeyChecking=no".into()],
            identity: Some("/etc/pacha/id".into()),
            known_hosts: Some("/etc/pacha/known_hosts".into()),
            ..SshSettings::default()
        };
        let r = Remote {
            host: "web1".into(),
            port: Some(2222),
            user: None,
            command: "/usr/bin/pacha -c /etc/pacha/pacha.ini".into(),
        };
        let c = command(&s, &r, &["render", "web 1", "$(x)"]);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-o StrictHostKeyChecking=yes"), "{joined}");
        assert!(joined.contains("-o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -p 2222 -l root"), "{joined}");
        assert!(joined.contains("-o UserKnownHostsFile=/etc/pacha/known_hosts -i /etc/pacha/id -o IdentitiesOnly=yes"), "{joined}");
        // Ours come first, and ssh keeps the first value of an option.
        let ours = joined.find("StrictHostKeyChecking=yes").unwrap();
        assert!(
            ours < joined.find("StrictHostKeyChecking=no").unwrap(),
            "{joined}"
        );
        assert_eq!(
            args[args.len() - 3..],
            [
                "web1",
                "--",
                "/usr/bin/pacha -c /etc/pacha/pacha.ini render 'web 1' '$(x)'"
            ]
        );
    }
}
