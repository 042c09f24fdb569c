//! The history: a bare git repository (`state_dir/repo.git`, 0700) whose work tree is
//! `/`, the tracked paths being its pathspecs — nothing is copied and git's stat cache
//! keeps a commit of a 2,000-file tree cheap. The metadata data file
//! ([`super::meta`]) is written straight into the index as a blob.
//!
//! git runs with no system or global configuration (`GIT_CONFIG_NOSYSTEM`,
//! `GIT_CONFIG_GLOBAL=/dev/null`), no hooks, literal pathspecs, a fixed committer,
//! `LC_ALL=C`: nobody's `~/.gitconfig` changes what pacha records.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::proc::{Cmd, Outcome};

use super::config::Config;
use super::error::PachaError;
use super::ignore::Ignore;
use super::meta::{self, Entry, META_PATH};

/// The branch every host's history is on (also in the master store).
pub const BRANCH: &str = "master";
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// A `git` command for this repository, work tree `/`, run from `/`.
pub fn git(cfg: &Config) -> Cmd {
    let mut c = Cmd::new("git");
    c.current_dir("/")
        .env("GIT_DIR", &cfg.repository)
        .env("GIT_WORK_TREE", "/")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_LITERAL_PATHSPECS", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_AUTHOR_NAME", &cfg.committer_name)
        .env("GIT_AUTHOR_EMAIL", &cfg.committer_email)
        .env("GIT_COMMITTER_NAME", &cfg.committer_name)
        .env("GIT_COMMITTER_EMAIL", &cfg.committer_email)
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_SSH")
        .env_remove("GIT_SSH_COMMAND")
        .args([
            "-c",
            "core.fileMode=true",
            "-c",
            "core.symlinks=true",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.quotePath=false",
            "-c",
            "safe.directory=*",
            "-c",
            "core.autocrlf=false",
            "-c",
            "gc.auto=0",
            "-c",
            "commit.gpgSign=false",
        ])
        .timeout(GIT_TIMEOUT);
    c
}

/// Run a git command; its failure is one line naming what was asked.
pub fn run(c: &Cmd, what: &str) -> Result<Outcome, PachaError> {
    let o = c.run().map_err(|e| PachaError::Git {
        what: what.into(),
        detail: e.detail(),
    })?;
    if !o.success() {
        let line = o.stderr_line();
        return Err(PachaError::Git {
            what: what.into(),
            detail: if line.is_empty() { o.describe() } else { line },
        });
    }
    Ok(o)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_input(c: &Cmd, what: &str, input: &[u8]) -> Result<Outcome, PachaError> {
    let o = c
        .run_feeding(|w| w.write_all(input))
        .map_err(|e| PachaError::Git {
            what: what.into(),
            detail: e.detail(),
        })?;
    if !o.success() {
        return Err(PachaError::Git {
            what: what.into(),
            detail: o.stderr_line(),
        });
    }
    Ok(o)
}

fn stdout(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

/// Held while the index is used: the daemon, the apt hook and a command never interleave.
pub struct Lock(#[allow(dead_code)] Flock<File>);

pub fn lock(cfg: &Config) -> Result<Lock, PachaError> {
    init(cfg)?;
    let p = cfg.state_dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| PachaError::meta(&p, e))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| PachaError::meta(&p, format!("flock: {e}")))
}

/// Create the state directory and repository (both 0700) if they are not there.
pub fn init(cfg: &Config) -> Result<(), PachaError> {
    crate::fsutil::ensure_dir(&cfg.state_dir, 0o700)?;
    if cfg.repository.join("HEAD").exists() {
        return Ok(());
    }
    crate::fsutil::ensure_dir(&cfg.repository, 0o700)?;
    let mut c = git(cfg);
    c.env_remove("GIT_WORK_TREE")
        .args(["init", "-q", "--bare", "-b", BRANCH]);
    run(&c, "init")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg.repository, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| PachaError::meta(&cfg.repository, e))?;
    Ok(())
}

/// `/etc/x` → `etc/x` (the pathspec in the work tree `/`).
pub fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

/// The tracked paths: the INI's `paths` and those `pacha track` added.
pub fn tracked(cfg: &Config) -> Result<Vec<PathBuf>, PachaError> {
    let mut v = cfg.paths.clone();
    let f = cfg.tracked_file();
    match std::fs::read_to_string(&f) {
        Ok(t) => v.extend(
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .map(PathBuf::from),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PachaError::meta(&f, e)),
    }
    v.sort();
    v.dedup();
    Ok(v)
}

/// The tracked root `p` is under (None: not tracked).
pub fn tracked_root(cfg: &Config, p: &Path) -> Result<Option<PathBuf>, PachaError> {
    Ok(tracked(cfg)?.into_iter().find(|r| p.starts_with(r)))
}

/// An absolute, normalized form of a path given on the command line (its parent
/// resolved; the last component kept, so a symlink is tracked as a symlink).
pub fn absolute(p: &Path) -> Result<PathBuf, PachaError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| PachaError::meta(".", e))?
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return Ok(out);
    };
    match std::fs::canonicalize(parent) {
        Ok(p) => Ok(p.join(name)),
        Err(_) => Ok(out),
    }
}

fn write_tracked(cfg: &Config, added: &[PathBuf]) -> Result<(), PachaError> {
    let mut s = String::new();
    for p in added {
        s.push_str(&p.to_string_lossy());
        s.push('\n');
    }
    crate::fsutil::write_atomic(&cfg.tracked_file(), s.as_bytes(), 0o600)?;
    Ok(())
}

fn added(cfg: &Config) -> Result<Vec<PathBuf>, PachaError> {
    let all = tracked(cfg)?;
    Ok(all.into_iter().filter(|p| !cfg.paths.contains(p)).collect())
}

/// `pacha track`: add paths (they must exist and be readable, outside the state dir).
pub fn track(cfg: &Config, paths: &[PathBuf]) -> Result<Vec<PathBuf>, PachaError> {
    init(cfg)?;
    let mut add = added(cfg)?;
    let mut new = Vec::new();
    for p in paths {
        let a = absolute(p)?;
        if a == Path::new("/") {
            return Err(PachaError::Usage(
                "refusing to track / (name the trees you mean)".into(),
            ));
        }
        let md = std::fs::symlink_metadata(&a).map_err(|e| PachaError::meta(&a, e))?;
        if md.is_dir() {
            std::fs::read_dir(&a).map_err(|e| PachaError::meta(&a, e))?;
        } else if md.is_file() {
            File::open(&a).map_err(|e| PachaError::meta(&a, e))?;
        }
        if cfg.state_dir.starts_with(&a) || a.starts_with(&cfg.state_dir) {
            return Err(PachaError::Usage(format!(
                "{}: holds pacha's own state ({}), cannot be tracked",
                a.display(),
                cfg.state_dir.display()
            )));
        }
        if !tracked(cfg)?.contains(&a) && !add.contains(&a) {
            add.push(a.clone());
            new.push(a);
        }
    }
    add.sort();
    write_tracked(cfg, &add)?;
    Ok(new)
}

/// `pacha untrack`: stop tracking (the history keeps what was recorded).
pub fn untrack(cfg: &Config, paths: &[PathBuf]) -> Result<(), PachaError> {
    let mut add = added(cfg)?;
    for p in paths {
        let a = absolute(p)?;
        if cfg.paths.contains(&a) {
            return Err(PachaError::Usage(format!(
                "{}: listed in {} [pacha] paths; remove it there",
                a.display(),
                cfg.path.display()
            )));
        }
        let before = add.len();
        add.retain(|x| x != &a);
        if add.len() == before {
            return Err(PachaError::NotTracked(a));
        }
    }
    write_tracked(cfg, &add)?;
    let _lock = lock(cfg)?;
    for p in paths {
        let mut c = git(cfg);
        c.args(["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--"])
            .arg(rel(&absolute(p)?));
        run(&c, "rm --cached")?;
    }
    Ok(())
}

/// The ignore rules in force.
pub fn ignore(cfg: &Config) -> Ignore {
    Ignore::new(&cfg.ignore)
}

/// Scan the tracked paths' metadata now.
pub fn scan_now(cfg: &Config) -> Result<meta::Scan, PachaError> {
    meta::scan(
        &tracked(cfg)?,
        &ignore(cfg),
        std::slice::from_ref(&cfg.state_dir),
    )
}

/// Bring the index to the state of the tracked paths: content through `git add -A`
/// (stat cache), metadata through the data file's blob. Returns the scan's warnings.
/// The caller holds [`lock`].
pub fn stage(cfg: &Config) -> Result<Vec<String>, PachaError> {
    let ig = ignore(cfg);
    let excl = cfg.repository.join("info");
    crate::fsutil::ensure_dir(&excl, 0o700)?;
    let mut x = ig.git_exclude();
    if let Ok(rel_state) = cfg.state_dir.strip_prefix("/") {
        x.push('/');
        x.push_str(&rel_state.to_string_lossy());
        x.push('\n');
    }
    let exclude = excl.join("exclude");
    if std::fs::read_to_string(&exclude).ok().as_deref() != Some(x.as_str()) {
        crate::fsutil::write_atomic(&exclude, x.as_bytes(), 0o600)?;
    }
    let tracked = tracked(cfg)?;
    let (present, gone): (Vec<&PathBuf>, Vec<&PathBuf>) = tracked
        .iter()
        .partition(|p| std::fs::symlink_metadata(p).is_ok());
    // Everything below a tracked path, the index included, whether present or not.
    let mut rm = git(cfg);
    rm.args(["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--"]);
    if !gone.is_empty() {
        rm.args(gone.iter().map(|p| rel(p)));
        run(&rm, "rm --cached")?;
    }
    if !present.is_empty() {
        let mut add = git(cfg);
        add.args(["add", "-A", "--"])
            .args(present.iter().map(|p| rel(p)));
        run(&add, "add")?;
    }
    // Whatever the index holds outside the tracked paths (untracked since) goes.
    let mut ls = git(cfg);
    ls.args(["ls-files", "-z"]);
    let o = run(&ls, "ls-files")?;
    let stray: Vec<String> = o
        .stdout
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| {
            n != META_PATH
                && !tracked
                    .iter()
                    .any(|t| Path::new("/").join(n).starts_with(t))
        })
        .collect();
    if !stray.is_empty() {
        let mut rm = git(cfg);
        rm.args(["rm", "-q", "--cached", "--"]).args(&stray);
        run(&rm, "rm --cached")?;
    }
    let scan = meta::scan(&tracked, &ig, std::slice::from_ref(&cfg.state_dir))?;
    let text = meta::serialize(&scan.entries);
    let mut h = git(cfg);
    h.args(["hash-object", "-w", "--stdin"]);
    let sha = stdout(&run_input(&h, "hash-object", text.as_bytes())?);
    let mut u = git(cfg);
    u.args(["update-index", "--add", "--cacheinfo"])
        .arg(format!("100644,{sha},{META_PATH}"));
    run(&u, "update-index")?;
    Ok(scan.warnings)
}

/// The commit id HEAD points to (None before the first commit).
pub fn head(cfg: &Config) -> Result<Option<String>, PachaError> {
    let mut c = git(cfg);
    c.args(["rev-parse", "-q", "--verify", "HEAD^{commit}"]);
    let o = c.run().map_err(|e| PachaError::Git {
        what: "rev-parse".into(),
        detail: e.detail(),
    })?;
    Ok(o.success().then(|| stdout(&o)))
}

/// Record the tracked paths as they are now. `Ok(None)`: nothing changed (no commit).
/// Does not push (see [`super::push`]); the caller decides.
pub fn commit(cfg: &Config, message: &str) -> Result<Option<String>, PachaError> {
    let _lock = lock(cfg)?;
    commit_locked(cfg, message)
}

/// [`commit`] for a caller already holding [`lock`].
pub fn commit_locked(cfg: &Config, message: &str) -> Result<Option<String>, PachaError> {
    for w in stage(cfg)? {
        log::warn!("{w}");
    }
    let head = head(cfg)?;
    if head.is_some() {
        let mut d = git(cfg);
        d.args(["diff", "--cached", "--quiet", "HEAD", "--"]);
        let o = d.run().map_err(|e| PachaError::Git {
            what: "diff".into(),
            detail: e.detail(),
        })?;
        if o.success() {
            return Ok(None);
        }
        if o.status.code() != Some(1) {
            return Err(PachaError::Git {
                what: "diff --cached".into(),
                detail: o.stderr_line(),
            });
        }
    }
    let mut c = git(cfg);
    c.args([
        "commit",
        "-q",
        "--no-verify",
        "--allow-empty-message",
        "-F",
        "-",
    ]);
    run_input(&c, "commit", message.as_bytes())?;
    self::head(cfg)
}

/// The full commit id of `rev`, or [`PachaError::UnknownRev`].
pub fn resolve(cfg: &Config, rev: &str) -> Result<String, PachaError> {
    if rev.starts_with('-') || rev.is_empty() {
        return Err(PachaError::UnknownRev(rev.into()));
    }
    let mut c = git(cfg);
    c.args(["rev-parse", "-q", "--verify", "--end-of-options"])
        .arg(format!("{rev}^{{commit}}"));
    let o = c.run().map_err(|e| PachaError::Git {
        what: "rev-parse".into(),
        detail: e.detail(),
    })?;
    if !o.success() {
        return Err(PachaError::UnknownRev(rev.into()));
    }
    Ok(stdout(&o))
}

/// A blob's bytes at `rev` (`path` relative to `/`).
pub fn blob(cfg: &Config, rev: &str, path: &str) -> Result<Vec<u8>, PachaError> {
    let mut c = git(cfg);
    c.args(["cat-file", "blob"]).arg(format!("{rev}:{path}"));
    Ok(run(&c, &format!("cat-file {path} at {rev}"))?.stdout)
}

/// The metadata recorded at `rev`.
pub fn metadata_at(cfg: &Config, rev: &str) -> Result<Vec<Entry>, PachaError> {
    let text = blob(cfg, rev, META_PATH)?;
    meta::parse(&String::from_utf8_lossy(&text), rev)
}

/// What changed since the last commit: git's view of the content, then metadata-only
/// changes.
pub fn status(cfg: &Config) -> Result<Vec<String>, PachaError> {
    let _lock = lock(cfg)?;
    stage(cfg)?;
    let mut lines = Vec::new();
    let Some(head) = head(cfg)? else {
        lines.push("no commit yet (pacha commit records the tracked paths)".into());
        return Ok(lines);
    };
    let mut d = git(cfg);
    d.args([
        "diff",
        "--cached",
        "--name-status",
        "-z",
        "--no-renames",
        "HEAD",
        "--",
    ]);
    let o = run(&d, "diff --cached")?;
    let parts: Vec<String> = o
        .stdout
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let mut content = std::collections::HashSet::new();
    for pair in parts.chunks(2) {
        if let [st, path] = pair {
            if path == META_PATH {
                continue;
            }
            let word = match st.as_str() {
                "A" => "new",
                "D" => "deleted",
                "T" => "type changed",
                _ => "modified",
            };
            content.insert(format!("/{path}"));
            lines.push(format!("{word}: /{path}"));
        }
    }
    let old = metadata_at(cfg, &head)?;
    let now = scan_now(cfg)?.entries;
    let oldm: std::collections::BTreeMap<&str, &Entry> =
        old.iter().map(|e| (e.path.as_str(), e)).collect();
    let nowm: std::collections::BTreeMap<&str, &Entry> =
        now.iter().map(|e| (e.path.as_str(), e)).collect();
    for (p, e) in &nowm {
        match oldm.get(p) {
            None if !content.contains(*p) => lines.push(format!(
                "new: {p} ({})",
                format!("{:?}", e.kind).to_lowercase()
            )),
            Some(o) => {
                let mut ch = o.changes(e);
                if content.contains(*p) {
                    ch.retain(|c| *c != "mtime");
                }
                if !ch.is_empty() {
                    lines.push(format!("metadata: {p} ({})", ch.join(", ")));
                }
            }
            _ => {}
        }
    }
    for p in oldm.keys() {
        if !nowm.contains_key(p) && !content.contains(*p) {
            lines.push(format!("deleted: {p}"));
        }
    }
    lines.sort_by(|a, b| {
        a.split_once(": ")
            .map(|x| x.1)
            .cmp(&b.split_once(": ").map(|x| x.1))
    });
    Ok(lines)
}

/// `pacha log [PATH]`: one line per commit (`<rev> <date> <subject>`); with PATH, the
/// commits that changed its content or its recorded metadata (below it too).
pub fn log(cfg: &Config, path: Option<&Path>) -> Result<String, PachaError> {
    let mut c = git(cfg);
    c.args(["log", "--date=iso", "--format=%H %ad %s"]);
    let all = stdout(&run(&c, "log")?);
    let Some(path) = path else {
        return Ok(if all.is_empty() { all } else { all + "\n" });
    };
    let mut keep = std::collections::HashSet::new();
    let mut content = git(cfg);
    content.args(["log", "--format=%H", "--"]).arg(rel(path));
    keep.extend(stdout(&run(&content, "log")?).lines().map(str::to_string));
    let quoted: String = path
        .to_string_lossy()
        .chars()
        .flat_map(|ch| {
            let special = ".[]()*+?{}|^$\\".contains(ch);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(ch))
        })
        .collect();
    let mut md = git(cfg);
    md.args(["log", "--format=%H", "--extended-regexp"])
        .arg(format!("-G\"path\":\"{quoted}(/[^\"]*)?\""))
        .args(["--", META_PATH]);
    keep.extend(stdout(&run(&md, "log")?).lines().map(str::to_string));
    let mut out = String::new();
    for l in all.lines() {
        if keep.contains(l.split(' ').next().unwrap_or("")) {
            out.push_str(l);
            out.push('\n');
        }
    }
    Ok(out)
}
