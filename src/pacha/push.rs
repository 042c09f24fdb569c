//! The host's history to the master store: `git push` over ssh to
//! `<master>:<hosts_path>/<host>` (a bare repository, created 0700 on first push).
//!
//! ssh runs with `BatchMode=yes`, a bounded `ConnectTimeout` and
//! `StrictHostKeyChecking=yes`: an unknown or changed host key is refused. A failed push
//! is logged and left in `state_dir/push-pending`, the command exits non-zero, and the
//! next commit (or daemon cycle) pushes again — nothing is dropped: git sends every
//! commit the master lacks.

use std::path::PathBuf;

use super::config::Config;
use super::error::PachaError;
use super::repo;

/// The ssh command line git uses (also for fetching in rebuild).
pub fn ssh_command(cfg: &Config) -> String {
    let mut w = vec![
        "ssh".to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={}", cfg.ssh.connect_timeout),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
    ];
    w.extend(cfg.ssh.options.iter().cloned());
    w.iter()
        .map(|a| {
            shlex::try_quote(a)
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| a.clone())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a failed git-over-ssh said that matters: ssh's own complaint (an unknown host
/// key, a refused connection) rather than git's closing "Could not read from remote".
pub fn ssh_detail(o: &crate::proc::Outcome) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("Host key verification failed")
        || err.contains("No ED25519 host key is known")
        || err.contains("host key for") && err.contains("is not known")
    {
        return "host key verification failed: the master's host key is not in known_hosts (pacha never accepts an unknown key)".into();
    }
    let lines: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.contains("Could not read from remote repository")
                && !l.contains("correct access rights")
                && !l.contains("and the repository exists")
        })
        .collect();
    match lines.first() {
        Some(l) => l.trim_start_matches("fatal: ").to_string(),
        None => o.describe(),
    }
}

/// `ssh://user@master:port/<hosts_path>/<host>`.
pub fn url(cfg: &Config, master: &str, host: &str) -> String {
    format!(
        "ssh://{}@{}:{}{}/{}",
        cfg.ssh.user,
        master,
        cfg.ssh.port,
        cfg.hosts_path.display(),
        host
    )
}

/// Where a failed push is remembered.
pub fn pending_file(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("push-pending")
}

/// The failure of the last push, if it has not been retried successfully since.
pub fn pending(cfg: &Config) -> Option<String> {
    std::fs::read_to_string(pending_file(cfg))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Push the whole history to the master (nothing to do without `master` or commits).
pub fn push(cfg: &Config) -> Result<bool, PachaError> {
    let Some(master) = cfg.master.as_deref() else {
        return Ok(false);
    };
    if repo::head(cfg)?.is_none() {
        return Ok(false);
    }
    let url = url(cfg, master, &cfg.host);
    // The master's repository is made on first use, private (the history holds secrets).
    let receive = "sh -c 'umask 077; [ -d \"$1\" ] || git init -q --bare \"$1\" >/dev/null 2>&1; exec git-receive-pack \"$1\"' pacha-receive";
    let mut c = repo::git(cfg);
    c.env("GIT_SSH_COMMAND", ssh_command(cfg))
        .env("GIT_SSH_VARIANT", "ssh")
        .args(["push", "--quiet", "--porcelain"])
        .arg(format!("--receive-pack={receive}"))
        .arg(&url)
        .arg(format!("refs/heads/{b}:refs/heads/{b}", b = repo::BRANCH));
    let result = match c.run() {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(ssh_detail(&o)),
        Err(e) => Err(e.detail()),
    };
    match result {
        Ok(()) => {
            let _ = std::fs::remove_file(pending_file(cfg));
            Ok(true)
        }
        Err(detail) => {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            let _ = crate::fsutil::write_atomic(
                &pending_file(cfg),
                format!("{now} {url}: {detail}\n").as_bytes(),
                0o600,
            );
            log::error!("push to {url} failed (kept, retried at the next commit): {detail}");
            Err(PachaError::Push { url, detail })
        }
    }
}

/// Commit, then push when there is something new or a push is pending.
pub fn commit_and_push(cfg: &Config, message: &str) -> Result<Option<String>, PachaError> {
    let rev = repo::commit(cfg, message)?;
    if rev.is_some() || pending(cfg).is_some() {
        push(cfg)?;
    }
    Ok(rev)
}
