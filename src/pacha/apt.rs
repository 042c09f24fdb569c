//! The package-manager hooks, as etckeeper's: `/etc/apt/apt.conf.d/05pacha` runs
//! `pacha apt-pre` as `DPkg::Pre-Invoke` (commit what is pending, remember the installed
//! packages) and `pacha apt-post` as `DPkg::Post-Invoke` (commit what dpkg changed, the
//! message listing the packages installed, upgraded and removed).
//!
//! A failed commit in apt-pre exits non-zero, which stops the apt run (as etckeeper
//! does) rather than mixing a package's changes into an unrecorded state. A failed push
//! is reported and kept pending (retried later); it does not fail the hook.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::proc::Cmd;

use super::config::Config;
use super::error::PachaError;
use super::{push, repo};

fn state_file(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("dpkg-before")
}

/// `package:arch` → version, for every installed package.
pub fn installed() -> Result<BTreeMap<String, String>, PachaError> {
    let mut c = Cmd::new("dpkg-query");
    c.args([
        "-W",
        "-f",
        "${db:Status-Abbrev} ${binary:Package} ${Version}\\n",
    ])
    .env("LC_ALL", "C")
    .timeout(Duration::from_secs(120));
    let o = c
        .run()
        .map_err(|e| PachaError::Usage(format!("dpkg-query: {}", e.detail())))?;
    if !o.success() {
        return Err(PachaError::Usage(format!(
            "dpkg-query: {}",
            o.stderr_line()
        )));
    }
    Ok(parse(&String::from_utf8_lossy(&o.stdout)))
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let status = w.next()?;
            // "ii " installed; "rc" (config files only) and others are not installed.
            if status.as_bytes().get(..2) != Some(b"ii".as_slice()) {
                return None;
            }
            Some((w.next()?.to_string(), w.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// The "Package changes:" lines between two package lists.
pub fn changes(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, v) in before {
        match after.get(p) {
            None => out.push(format!("-{p} {v}")),
            Some(n) if n != v => {
                out.push(format!("-{p} {v}"));
                out.push(format!("+{p} {n}"));
            }
            _ => {}
        }
    }
    for (p, v) in after {
        if !before.contains_key(p) {
            out.push(format!("+{p} {v}"));
        }
    }
    out.sort_by(|a, b| a[1..].cmp(&b[1..]).then(a.cmp(b)));
    out
}

fn write_list(cfg: &Config, list: &BTreeMap<String, String>) -> Result<(), PachaError> {
    let mut s = String::new();
    for (p, v) in list {
        s.push_str(&format!("ii {p} {v}\n"));
    }
    crate::fsutil::write_atomic(&state_file(cfg), s.as_bytes(), 0o600)?;
    Ok(())
}

fn push_reported(cfg: &Config) {
    if let Err(e) = push::push(cfg) {
        eprintln!("{}: {e}", super::PROGRAM);
    }
}

/// `pacha apt-pre`.
pub fn pre(cfg: &Config) -> Result<Option<String>, PachaError> {
    let rev = repo::commit(
        cfg,
        "saving uncommitted changes in tracked paths before package run",
    )?;
    write_list(cfg, &installed()?)?;
    if rev.is_some() || push::pending(cfg).is_some() {
        push_reported(cfg);
    }
    Ok(rev)
}

/// `pacha apt-post`.
pub fn post(cfg: &Config) -> Result<Option<String>, PachaError> {
    let after = installed()?;
    let before = std::fs::read_to_string(state_file(cfg))
        .ok()
        .map(|t| parse(&t));
    let mut msg = String::from("committing changes in tracked paths made by the package run\n\n");
    match &before {
        Some(b) => {
            let ch = changes(b, &after);
            msg.push_str("Package changes:\n");
            for l in &ch {
                msg.push_str(l);
                msg.push('\n');
            }
            if ch.is_empty() {
                msg.push_str("(none)\n");
            }
        }
        None => msg.push_str("Package changes: unknown (apt-pre did not run)\n"),
    }
    let rev = repo::commit(cfg, &msg)?;
    let _ = std::fs::remove_file(state_file(cfg));
    if rev.is_some() || push::pending(cfg).is_some() {
        push_reported(cfg);
    }
    Ok(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_changes() {
        let b = parse("ii  a:amd64 1\nii  b:all 2\nrc  gone:amd64 1\nii  c:amd64 1\n");
        assert_eq!(b.len(), 3);
        let a = parse("ii  a:amd64 1\nii  b:all 3\nii  d:all 1\n");
        assert_eq!(
            changes(&b, &a),
            ["-b:all 2", "+b:all 3", "-c:amd64 1", "+d:all 1"]
        );
    }
}
