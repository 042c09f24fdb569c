//! Putting recorded objects back: each file, symlink, FIFO or device is made beside its
//! destination (a temporary name in the same directory), given its metadata, then
//! renamed over the destination, so a reader sees the old or the new object, never a
//! half-written one. Directories are created first and get their metadata last
//! (deepest first), once nothing more is written into them.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::fsutil::{sync_dir, temp_path_for};

use super::config::Config;
use super::error::PachaError;
use super::meta::{self, Entry, Ids, Kind};
use super::repo;

/// Where `e` lands below `root`.
pub fn dest(root: &Path, e: &Entry) -> PathBuf {
    root.join(e.path.trim_start_matches('/'))
}

/// Content for a recorded file (a blob, a staged copy).
pub type Content<'a> = dyn FnMut(&Entry) -> Result<Vec<u8>, PachaError> + 'a;

/// Why `dest` is not what `e` records (empty: it is): "new", "content", field names.
pub fn differs(
    e: &Entry,
    dest: &Path,
    ids: &mut Ids,
    content: &mut Content,
) -> Result<Vec<&'static str>, PachaError> {
    // The ids the names resolve to here (a missing name is reported once).
    let (uid, gid) = (ids.uid(e), ids.gid(e));
    let Some(mut now) = meta::stat_entry(dest)? else {
        return Ok(vec!["new"]);
    };
    let mut want = e.clone();
    want.hardlink = None;
    now.path = want.path.clone();
    want.uid = uid;
    want.gid = gid;
    now.user = want.user.clone().filter(|_| now.uid == want.uid);
    now.group = want.group.clone().filter(|_| now.gid == want.gid);
    if want.user.is_some() && now.user.is_none() {
        now.user = Some(String::new());
    }
    if want.group.is_some() && now.group.is_none() {
        now.group = Some(String::new());
    }
    let mut ch = want.changes(&now);
    if e.kind == Kind::File && now.kind == Kind::File {
        let have = std::fs::read(dest).map_err(|er| PachaError::meta(dest, er))?;
        if have != content(e)? {
            ch.push("content");
        }
    }
    Ok(ch)
}

/// Create the object `e` records at `at` (which must not exist), content from `content`.
fn create(e: &Entry, at: &Path, content: &mut Content) -> Result<(), PachaError> {
    let err = |x: std::io::Error| PachaError::meta(at, x);
    match e.kind {
        Kind::File => {
            let data = content(e)?;
            let mut f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(at)
                .map_err(err)?;
            f.write_all(&data).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        Kind::Dir => std::fs::create_dir(at).map_err(err)?,
        Kind::Symlink => {
            let t = e
                .target
                .as_deref()
                .ok_or_else(|| PachaError::meta(at, "symlink without a recorded target"))?;
            std::os::unix::fs::symlink(t, at).map_err(err)?;
        }
        Kind::Fifo => nix::unistd::mkfifo(at, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|x| PachaError::meta(at, x))?,
        Kind::Char | Kind::Block => {
            let (ma, mi) = e.rdev.unwrap_or((0, 0));
            let kind = if e.kind == Kind::Char {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(
                at,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(ma, mi),
            )
            .map_err(|x| PachaError::meta(at, x))?;
        }
    }
    Ok(())
}

/// Move `p` out of the way: renamed to `p<suffix>` when kept, else removed.
fn aside(p: &Path, keep: Option<&str>) -> Result<(), PachaError> {
    let md = std::fs::symlink_metadata(p).map_err(|e| PachaError::meta(p, e))?;
    match keep {
        Some(sfx) => {
            let to = PathBuf::from(format!("{}{sfx}", p.display()));
            remove_any(&to)?;
            std::fs::rename(p, &to).map_err(|e| PachaError::meta(p, e))
        }
        None if md.is_dir() => std::fs::remove_dir_all(p).map_err(|e| PachaError::meta(p, e)),
        None => std::fs::remove_file(p).map_err(|e| PachaError::meta(p, e)),
    }
}

fn remove_any(p: &Path) -> Result<(), PachaError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(|e| PachaError::meta(p, e)),
        Ok(_) => std::fs::remove_file(p).map_err(|e| PachaError::meta(p, e)),
        Err(_) => Ok(()),
    }
}

/// Put `entries` (sorted, parents first) below `root`. With `keep`, every object
/// replaced is kept as `<path><keep>` (a hard link made before the atomic rename, so the
/// destination never disappears). Only entries that differ are touched; returns them.
pub fn place(
    entries: &[Entry],
    root: &Path,
    keep: Option<&str>,
    ids: &mut Ids,
    content: &mut Content,
) -> Result<Vec<String>, PachaError> {
    let mut changed = Vec::new();
    let mut dirs = Vec::new();
    let mut touched_dirs = BTreeSet::new();
    for e in entries {
        let d = dest(root, e);
        let why = differs(e, &d, ids, content)?;
        // A tracked root's parents (a fresh --root): plain directories.
        let parent = crate::fsutil::parent_dir(&d);
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|x| PachaError::meta(parent, x))?;
        }
        if e.kind == Kind::Dir {
            let is_dir = std::fs::symlink_metadata(&d)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if !is_dir {
                if std::fs::symlink_metadata(&d).is_ok() {
                    aside(&d, keep)?;
                }
                create(e, &d, content)?;
            }
            if !why.is_empty() {
                changed.push(e.path.clone());
            }
            dirs.push((e, d));
            continue;
        }
        if why.is_empty() {
            continue;
        }
        let tmp = temp_path_for(&d);
        let r = (|| {
            create(e, &tmp, content)?;
            meta::apply(e, &tmp, ids)?;
            match std::fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => aside(&d, keep)?,
                Ok(_) => {
                    if let Some(sfx) = keep {
                        let to = PathBuf::from(format!("{}{sfx}", d.display()));
                        remove_any(&to)?;
                        std::fs::hard_link(&d, &to).map_err(|x| PachaError::meta(&d, x))?;
                    }
                }
                Err(_) => {}
            }
            std::fs::rename(&tmp, &d).map_err(|x| PachaError::meta(&d, x))
        })();
        if r.is_err() {
            let _ = remove_any(&tmp);
            return r.map(|_| changed);
        }
        touched_dirs.insert(crate::fsutil::parent_dir(&d).to_path_buf());
        changed.push(e.path.clone());
    }
    for dir in &touched_dirs {
        sync_dir(dir)?;
    }
    for (e, d) in dirs.iter().rev() {
        meta::apply(e, d, ids)?;
    }
    Ok(changed)
}

/// `pacha rollback PATH... --to REV`: commit the current state, then make each path
/// (recursively) what it was at REV — content, metadata, and no more (what was added
/// since is removed; it is in the commit just made). Returns warnings.
pub fn rollback(cfg: &Config, paths: &[PathBuf], to: &str) -> Result<Vec<String>, PachaError> {
    let rev = repo::resolve(cfg, to)?;
    let mut abs = Vec::new();
    for p in paths {
        let a = repo::absolute(p)?;
        if repo::tracked_root(cfg, &a)?.is_none() {
            return Err(PachaError::NotTracked(a));
        }
        abs.push(a);
    }
    let recorded = repo::metadata_at(cfg, &rev)?;
    let short = &rev[..12.min(rev.len())];
    let mut sets = Vec::new();
    for a in &abs {
        let sel: Vec<Entry> = recorded
            .iter()
            .filter(|e| Path::new(&e.path).starts_with(a))
            .cloned()
            .collect();
        if sel.is_empty() {
            return Err(PachaError::Usage(format!(
                "{}: not recorded at {short}",
                a.display()
            )));
        }
        sets.push((a, sel));
    }
    let _lock = repo::lock(cfg)?;
    let list = abs
        .iter()
        .map(|a| a.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    repo::commit_locked(
        cfg,
        &format!("pacha: state before rollback of {list} to {short}"),
    )?;
    let mut ids = Ids::default();
    for (a, sel) in &sets {
        let mut content = |e: &Entry| repo::blob(cfg, &rev, &repo::rel(Path::new(&e.path)));
        place(sel, Path::new("/"), None, &mut ids, &mut content)?;
        // What exists now below the path and was not there at REV goes, deepest first.
        let want: BTreeSet<&str> = sel.iter().map(|e| e.path.as_str()).collect();
        let now = meta::scan(
            std::slice::from_ref(a),
            &repo::ignore(cfg),
            std::slice::from_ref(&cfg.state_dir),
        )?;
        for e in now.entries.iter().rev() {
            if !want.contains(e.path.as_str()) {
                remove_any(Path::new(&e.path))?;
            }
        }
        // Removing changed directory mtimes? They carry none; their modes stay.
    }
    repo::commit_locked(cfg, &format!("pacha: rollback of {list} to {short}"))?;
    Ok(ids.warnings)
}

/// `pacha diff [REV]`: content changes (git's patch) and metadata changes since REV.
pub fn diff(cfg: &Config, rev: &str) -> Result<String, PachaError> {
    let _lock = repo::lock(cfg)?;
    let mut out = String::new();
    // The index as the tracked paths are now (what a commit would record), new files too.
    repo::stage(cfg)?;
    let mut c = repo::git(cfg);
    c.args(["diff", "--cached", "--no-color", "--no-renames", rev, "--"]);
    for t in repo::tracked(cfg)? {
        c.arg(repo::rel(&t));
    }
    out.push_str(&String::from_utf8_lossy(&repo::run(&c, "diff")?.stdout));
    let old = repo::metadata_at(cfg, rev)?;
    let now = repo::scan_now(cfg)?.entries;
    let oldm: std::collections::BTreeMap<&str, &Entry> =
        old.iter().map(|e| (e.path.as_str(), e)).collect();
    let nowm: std::collections::BTreeMap<&str, &Entry> =
        now.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut meta_lines = String::new();
    let keys: BTreeSet<&str> = oldm.keys().chain(nowm.keys()).copied().collect();
    for k in keys {
        match (oldm.get(k), nowm.get(k)) {
            (Some(o), Some(n)) if o != n => {
                meta_lines.push_str(&format!("-{}\n+{}\n", json(o), json(n)));
            }
            (Some(o), None) => meta_lines.push_str(&format!("-{}\n", json(o))),
            (None, Some(n)) => meta_lines.push_str(&format!("+{}\n", json(n))),
            _ => {}
        }
    }
    if !meta_lines.is_empty() {
        out.push_str(&format!(
            "--- metadata at {}\n+++ metadata now\n",
            &rev[..12.min(rev.len())]
        ));
        out.push_str(&meta_lines);
    }
    Ok(out)
}

fn json(e: &Entry) -> String {
    serde_json::to_string(e).expect("entry serializes")
}
