//! `pacha rebuild HOST [--rev REV] [--root DIR] [--yes]`: a host built again from its
//! history in the master store.
//!
//! The history is fetched over ssh into `state_dir/rebuild/HOST.git`, REV is checked out
//! into a staging root (`state_dir/rebuild/HOST.stage`), and every recorded path is
//! compared with what is below `--root` (default `/`): that list is printed. Without
//! `--yes` nothing more happens. With it: the `pacha_pre/` hooks run (sorted; one failing
//! stops the rebuild with nothing changed), each path is swapped in atomically (the
//! current one kept as `<path>.pacha-old-<rev>`), metadata restored exactly, then the
//! `pacha_post/` hooks run.
//!
//! The hooks are the ones of the host doing the rebuild (`hooks_dir`, /etc/pacha by
//! default), not scripts from the history: the history may come from a host that was
//! broken into, and its content is data — it is never run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::proc::{Cmd, Output};

use super::config::Config;
use super::error::{PachaError, EXIT_HOOK};
use super::meta::{self, Entry, Ids, META_PATH};
use super::restore::{self, dest};
use super::{push, repo};

pub struct Args {
    pub host: String,
    pub rev: Option<String>,
    pub root: PathBuf,
    pub yes: bool,
}

const HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// git on the rebuild's own repository (not the host's history).
fn work_git(cfg: &Config, dir: &Path) -> Cmd {
    let mut c = repo::git(cfg);
    c.env("GIT_DIR", dir).env_remove("GIT_WORK_TREE");
    c
}

/// The hooks in `dir`, sorted (byte order), executable regular files only.
fn hooks(dir: &Path) -> Result<Vec<PathBuf>, PachaError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PachaError::meta(dir, e)),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|x| PachaError::meta(dir, x))?;
        let md = std::fs::metadata(e.path()).map_err(|x| PachaError::meta(e.path(), x))?;
        use std::os::unix::fs::PermissionsExt;
        if md.is_file() && md.permissions().mode() & 0o111 != 0 {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

fn run_hooks(dir: &Path, env: &[(&str, String)]) -> Result<(), PachaError> {
    for h in hooks(dir)? {
        let mut c = Cmd::new(&h);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output(Output::Inherit).timeout(HOOK_TIMEOUT);
        let o = c.run().map_err(|e| PachaError::Hook {
            path: h.clone(),
            detail: e.detail(),
        })?;
        if !o.success() {
            return Err(PachaError::Hook {
                path: h.clone(),
                detail: o.describe(),
            });
        }
    }
    Ok(())
}

pub fn rebuild(cfg: &Config, args: &Args) -> Result<ExitCode, PachaError> {
    let master = cfg.master.as_deref().ok_or_else(|| PachaError::Setting {
        path: cfg.path.clone(),
        reason: "[pacha] master is not set (rebuild fetches from the master store)".into(),
    })?;
    if args.host.is_empty() || args.host.contains('/') || args.host.starts_with('.') {
        return Err(PachaError::Usage(format!(
            "{:?}: not a host name",
            args.host
        )));
    }
    let base = cfg.state_dir.join("rebuild");
    crate::fsutil::ensure_dir(&cfg.state_dir, 0o700)?;
    crate::fsutil::ensure_dir(&base, 0o700)?;
    let work = base.join(format!("{}.git", args.host));
    if !work.join("HEAD").exists() {
        let mut c = work_git(cfg, &work);
        c.args(["init", "-q", "--bare", "-b", repo::BRANCH]);
        repo::run(&c, "init")?;
    }
    let url = push::url(cfg, master, &args.host);
    let mut f = work_git(cfg, &work);
    f.env("GIT_SSH_COMMAND", push::ssh_command(cfg))
        .env("GIT_SSH_VARIANT", "ssh")
        .args(["fetch", "--quiet", "--no-tags"])
        .arg(&url)
        .arg(format!("+refs/heads/{b}:refs/heads/{b}", b = repo::BRANCH));
    let o = f.run().map_err(|e| PachaError::Git {
        what: format!("fetch from {url}"),
        detail: e.detail(),
    })?;
    if !o.success() {
        return Err(PachaError::Git {
            what: format!("fetch from {url}"),
            detail: push::ssh_detail(&o),
        });
    }
    let want = args.rev.clone().unwrap_or_else(|| repo::BRANCH.to_string());
    let mut r = work_git(cfg, &work);
    r.args(["rev-parse", "-q", "--verify", "--end-of-options"])
        .arg(format!("{want}^{{commit}}"));
    let o = r.run().map_err(|e| PachaError::Git {
        what: "rev-parse".into(),
        detail: e.detail(),
    })?;
    if !o.success() || want.starts_with('-') {
        return Err(PachaError::UnknownRev(want));
    }
    let rev = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let short = rev[..12].to_string();

    // Stage: REV's files as git keeps them (content; metadata comes from the data file).
    let stage = base.join(format!("{}.stage", args.host));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| PachaError::meta(&stage, e))?;
    }
    crate::fsutil::ensure_dir(&stage, 0o700)?;
    let index = base.join(format!("{}.index", args.host));
    let mut rt = work_git(cfg, &work);
    rt.env("GIT_INDEX_FILE", &index).args(["read-tree", &rev]);
    repo::run(&rt, "read-tree")?;
    let mut co = work_git(cfg, &work);
    co.env("GIT_INDEX_FILE", &index)
        .env("GIT_WORK_TREE", &stage)
        .current_dir(&stage)
        .args(["checkout-index", "-a", "-f"]);
    repo::run(&co, "checkout-index")?;
    let _ = std::fs::remove_file(&index);
    let text = std::fs::read_to_string(stage.join(META_PATH))
        .map_err(|e| PachaError::meta(stage.join(META_PATH), e))?;
    let entries = meta::parse(&text, &short)?;

    let mut ids = Ids::default();
    let mut content = |e: &Entry| {
        let p = dest(&stage, e);
        std::fs::read(&p).map_err(|x| PachaError::meta(&p, x))
    };
    let mut plan = Vec::new();
    for e in &entries {
        let why = restore::differs(e, &dest(&args.root, e), &mut ids, &mut content)?;
        if !why.is_empty() {
            plan.push(format!(
                "{}: {}",
                dest(&args.root, e).display(),
                why.join(", ")
            ));
        }
    }
    for w in &ids.warnings {
        eprintln!("{}: warning: {w}", super::PROGRAM);
    }
    println!(
        "rebuild of {} at {short} into {}: {} of {} paths to change",
        args.host,
        args.root.display(),
        plan.len(),
        entries.len()
    );
    for p in &plan {
        println!("  {p}");
    }
    if !args.yes {
        if !plan.is_empty() {
            println!("nothing changed (run with --yes to apply)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let env = [
        ("PACHA_HOST", args.host.clone()),
        ("PACHA_REV", rev.clone()),
        ("PACHA_ROOT", args.root.display().to_string()),
        ("PACHA_STAGE", stage.display().to_string()),
    ];
    run_hooks(&cfg.hooks_dir.join("pacha_pre"), &env)?;
    let keep = format!(".pacha-old-{short}");
    let changed = restore::place(&entries, &args.root, Some(&keep), &mut ids, &mut content)?;
    println!(
        "{} paths changed (replaced ones kept as <path>{keep})",
        changed.len()
    );
    if let Err(e) = run_hooks(&cfg.hooks_dir.join("pacha_post"), &env) {
        eprintln!("{}: {e}", super::PROGRAM);
        return Ok(ExitCode::from(EXIT_HOOK));
    }
    Ok(ExitCode::SUCCESS)
}
