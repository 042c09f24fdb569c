//! `restore [set [dst]]` and `listbackups`.
//!
//! The set is extracted into `<dst>.tmp-restore` while both checksums (stored file and
//! tar stream) are computed, and renamed to `<dst>` only when everything checked out,
//! so `<dst>` is either the old directory or a complete restore. Tablespaces go to their
//! original paths (which must be absent or empty) or `<tablespace_dir>/<oid>`, linked from
//! `pg_tblspc/<oid>`; `tablespace_map` is not restored because the links already exist
//! (PostgreSQL would otherwise remove and recreate them from the map).
//!
//! The restored cluster gets `archive_mode = 'off'` in postgresql.auto.conf: it carries
//! the master's archive_command (`walmgr master.ini xarchive`), and a promoted copy must
//! not archive its new timeline into the master's store. Run `walmgr setup` with an ini
//! of its own once it is to be a master. A standby also gets `recovery_prefetch = 'off'`
//! (see `recovery_settings`).
//!
//! Run as root, the restore does its file work as another user ([`RunAs`]): `restore_user`,
//! else the owner of the store's `full_backup` directory, else the owner of the
//! destination's parent (whichever is not root first). Whoever can write the store
//! decides what the tar and `tablespace_map` say; with root's rights that would let them
//! create, fill and chown directories anywhere, or swap a symlink into
//! `<dst>.tmp-restore`'s parent mid-extraction. As that user they can only do what they
//! could do anyway, and the restored files belong to it. Only `slave_stop_cmd` and
//! `slave_start_cmd` run as root. On top of that: tablespace targets must lie under
//! `tablespace_dir` or one of `tablespace_roots`; `tablespace_map` must match the sha256
//! recorded in backup.json and the copy inside the tar; the staging directory is created
//! fresh (0700), checked with lstat, and checked again before it is renamed into place.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::backupset::{self, Backups, Set, SetName};
use super::config::{Slave, StoreSettings};
use super::control::{self, running_postmaster};
use super::error::{check_digest, io_err, Result, WalmgrError};
use super::pitr::Pitr;
use crate::digest::HashReader;
use crate::fsutil::{self, PathError};
use crate::pg::quote::conf_value;

/// `walmgr <ini> listbackups` (the store is local here).
pub fn listbackups(st: &StoreSettings) -> Result<()> {
    let sets = Backups::new(&st.paths).list()?;
    if sets.is_empty() {
        println!("no backups in {}", st.paths.full_backup.display());
        return Ok(());
    }
    for s in sets {
        let i = &s.info;
        println!(
            "{}  started {}  start WAL {}  stop LSN {}  {} bytes stored ({} raw)  {}{}",
            i.set,
            i.started_at,
            i.start_segment,
            i.stop_lsn,
            i.stored_size,
            i.size,
            i.compression.name(),
            if i.tablespaces {
                "  with tablespaces"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// tablespace_map: `<oid> <path>` per line (the path may contain spaces).
pub fn parse_tablespace_map(text: &str, path: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line
            .split_once(' ')
            .and_then(|(oid, p)| Some((oid.parse::<u32>().ok()?, PathBuf::from(p))));
        match parsed {
            Some((oid, p)) if p.is_absolute() => v.push((oid, p)),
            _ => {
                return Err(WalmgrError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("bad line {line:?}"),
                })
            }
        }
    }
    Ok(v)
}

/// Where a restore started as root does its file work: the effective uid/gid and groups
/// of `user` (real and saved uid stay 0, so the stop/start commands can run as root).
/// Nothing else is spawned while switched: a child would inherit the saved uid 0.
struct RunAs {
    user: nix::unistd::User,
    groups: Vec<nix::unistd::Gid>,
    root_groups: Vec<nix::unistd::Gid>,
}

impl RunAs {
    /// `None` when not root, or when everything involved is root's.
    fn resolve(s: &Slave, dst: &Path) -> Result<Option<RunAs>> {
        use nix::unistd::User;
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let refused = |m: String| WalmgrError::Refused(format!("restore: {m}"));
        let user = match &s.restore_user {
            Some(name) => Some(
                User::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| refused(format!("restore_user {name}: no such user")))?,
            ),
            None => {
                let owner = |p: &Path| fs::metadata(p).ok().map(|m| m.uid()).filter(|&u| u != 0);
                owner(&s.store.paths.full_backup)
                    .or_else(|| owner(fsutil::parent_dir(dst)))
                    .map(|uid| {
                        User::from_uid(nix::unistd::Uid::from_raw(uid))
                            .ok()
                            .flatten()
                            .ok_or_else(|| refused(format!("uid {uid} owns the store but has no user name; set restore_user")))
                    })
                    .transpose()?
            }
        };
        let Some(user) = user else {
            return Ok(None);
        };
        if user.uid.is_root() {
            return Ok(None);
        }
        let cname = std::ffi::CString::new(user.name.as_str())
            .map_err(|_| refused(format!("user name {:?}", user.name)))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| refused(format!("groups of {}: {e}", user.name)))?;
        let root_groups =
            nix::unistd::getgroups().map_err(|e| refused(format!("getgroups: {e}")))?;
        Ok(Some(RunAs {
            user,
            groups,
            root_groups,
        }))
    }

    /// Groups, then gid, then uid (each later step gives up the right to the earlier).
    fn enter(&self) -> Result<()> {
        let e = |what: &str, err: nix::errno::Errno| {
            WalmgrError::Refused(format!(
                "restore: cannot switch to user {} ({what}: {err})",
                self.user.name
            ))
        };
        nix::unistd::setgroups(&self.groups).map_err(|err| e("setgroups", err))?;
        nix::unistd::setegid(self.user.gid).map_err(|err| e("setegid", err))?;
        nix::unistd::seteuid(self.user.uid).map_err(|err| e("seteuid", err))?;
        log::info!(
            "restore: running as {} (uid {}), not root: the store's owner decides what \
             is restored",
            self.user.name,
            self.user.uid
        );
        Ok(())
    }

    fn leave(&self) -> Result<()> {
        let e = |what: &str, err: nix::errno::Errno| {
            WalmgrError::Internal(format!(
                "restore: cannot switch back to root ({what}: {err})"
            ))
        };
        nix::unistd::seteuid(nix::unistd::Uid::from_raw(0)).map_err(|err| e("seteuid", err))?;
        nix::unistd::setegid(nix::unistd::Gid::from_raw(0)).map_err(|err| e("setegid", err))?;
        nix::unistd::setgroups(&self.root_groups).map_err(|err| e("setgroups", err))?;
        Ok(())
    }
}

/// Run `f` as root when the restore runs as another user.
fn as_root<T>(run_as: Option<&RunAs>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(r) = run_as {
        r.leave()?;
        let out = f();
        r.enter()?;
        out
    } else {
        f()
    }
}

/// A tablespace path from tablespace_map is restored in place only under an allowed
/// root, lexically (no `..`) and after resolving symlinks in the part that exists.
fn allowed_tablespace_path(p: &Path, roots: &[PathBuf]) -> bool {
    if !p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return false;
    }
    let resolved = {
        let mut existing = p;
        loop {
            if let Ok(c) = fs::canonicalize(existing) {
                break c.join(p.strip_prefix(existing).unwrap_or(Path::new("")));
            }
            match existing.parent() {
                Some(up) => existing = up,
                None => break p.to_path_buf(),
            }
        }
    };
    roots.iter().any(|r| {
        let rr = fs::canonicalize(r).unwrap_or_else(|_| r.clone());
        p.starts_with(r) && p != r.as_path() && resolved.starts_with(&rr)
    })
}

/// The set's tablespace_map, checked against the sha256 backup.json recorded.
fn read_tablespace_map(set: &Set) -> Result<Option<String>> {
    let path = set.dir.join(backupset::TABLESPACE_MAP);
    let corrupt = |reason: String| WalmgrError::Corrupt {
        path: path.clone(),
        reason,
    };
    let text = match set.read_file(backupset::TABLESPACE_MAP)? {
        Some(b) => String::from_utf8(b).map_err(|_| corrupt("not UTF-8".into()))?,
        None => {
            if set.info.tablespaces {
                return Err(corrupt(
                    "missing, but backup.json records tablespaces".into(),
                ));
            }
            return Ok(None);
        }
    };
    if !set.info.tablespaces {
        return Err(corrupt(
            "present, but backup.json records no tablespaces; refusing it".into(),
        ));
    }
    match &set.info.tablespace_map_sha256 {
        Some(want) => {
            let got = crate::digest::sha256_hex(text.as_bytes());
            if &got != want {
                return Err(corrupt(format!(
                    "sha256 {got}, backup.json recorded {want}; refusing it"
                )));
            }
        }
        None => log::warn!(
            "{}: no sha256 in backup.json (an older set); checked against the tar's copy only",
            path.display()
        ),
    }
    Ok(Some(text))
}

fn is_empty_dir(p: &Path) -> Result<Option<bool>> {
    match fs::read_dir(p) {
        Ok(mut rd) => Ok(Some(rd.next().is_none())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PathError::new("list", p, e).into()),
    }
}

/// Where a restore puts one tablespace's files, and whether this restore created the
/// directory (for the cleanup).
pub struct TsTarget {
    oid: u32,
    dir: PathBuf,
    created: bool,
}

impl TsTarget {
    /// Tablespace `oid` restored into `dir` (an existing directory).
    pub fn new(oid: u32, dir: PathBuf) -> TsTarget {
        TsTarget {
            oid,
            dir,
            created: false,
        }
    }
}

/// `walmgr slave.ini restore [set [dst]]`; `recovery` = recovery.signal instead of
/// standby.signal, as is a recovery target (`pitr`).
pub fn restore(
    s: &Slave,
    set: Option<&SetName>,
    dst: Option<&str>,
    recovery: bool,
    pitr: Option<&Pitr>,
) -> Result<()> {
    let recovery = recovery || pitr.is_some();
    let dst = match dst {
        Some(d) => std::path::absolute(d).map_err(io_err("resolve", Path::new(d)))?,
        None => s.require_data()?.to_path_buf(),
    };
    if dst.file_name().is_none() {
        return Err(WalmgrError::Usage(format!(
            "restore: {}: not a directory name to restore into",
            dst.display()
        )));
    }
    if nix::unistd::geteuid().is_root() {
        // The staging directory and the moved-aside copy are made in the parent: it must
        // be the directory it names, not a link someone can point elsewhere.
        let parent = fsutil::parent_dir(&dst);
        if fs::symlink_metadata(parent).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(WalmgrError::Refused(format!(
                "restore: {} is a symbolic link; give the destination by its real path",
                parent.display()
            )));
        }
    }
    let run_as = RunAs::resolve(s, &dst)?;
    if let Some(r) = &run_as {
        r.enter()?;
    }
    let result = restore_into(s, set, dst, recovery, pitr, run_as.as_ref());
    if let Some(r) = &run_as {
        r.leave()?;
    }
    result
}

/// The set to restore: the one named, else the newest (that ends before the target).
fn choose_set<'a>(
    sets: &'a [Set],
    name: Option<&SetName>,
    pitr: Option<&Pitr>,
    fb: &Path,
) -> Result<&'a Set> {
    if let Some(name) = name {
        let set = sets.iter().find(|x| x.info.set == *name).ok_or_else(|| {
            WalmgrError::NoBackup(format!(
                "restore: no backup set {:?} in {}",
                name.as_str(),
                fb.display()
            ))
        })?;
        if let Some(p) = pitr {
            if p.ends_before(&set.info) == Some(false) {
                return Err(WalmgrError::TargetBeforeSets(format!(
                    "restore: backup set {} ({}) ends after the recovery target; name an \
                     older set or a later target",
                    set.info.set,
                    p.set_end(&set.info)
                )));
            }
        }
        return Ok(set);
    }
    let newest = sets
        .last()
        .ok_or_else(|| WalmgrError::NoBackup(format!("restore: no backups in {}", fb.display())))?;
    let Some(p) = pitr.filter(|p| p.target.is_some()) else {
        return Ok(newest);
    };
    if !p.comparable() {
        if matches!(p.target, Some(super::pitr::Target::Time { .. })) {
            return Err(WalmgrError::Usage(
                "restore: --target-time without a time zone: walmgr cannot tell which \
                 backup set ends before it; add a zone (+00, Z) or name the set"
                    .into(),
            ));
        }
        log::warn!(
            "restore: the store does not say where an xid or a restore point lies; using \
             the newest set {} (if PostgreSQL says the target is before the consistent \
             recovery point, name an older set)",
            newest.info.set
        );
        return Ok(newest);
    }
    sets.iter()
        .rev()
        .find(|x| p.ends_before(&x.info) == Some(true))
        .ok_or_else(|| {
            WalmgrError::TargetBeforeSets(format!(
                "restore: the recovery target is before the end of every backup set in {} \
                 (the oldest, {}, {})",
                fb.display(),
                sets[0].info.set,
                p.set_end(&sets[0].info)
            ))
        })
}

fn restore_into(
    s: &Slave,
    set: Option<&SetName>,
    dst: PathBuf,
    recovery: bool,
    pitr: Option<&Pitr>,
    run_as: Option<&RunAs>,
) -> Result<()> {
    let fb = &s.store.paths.full_backup;
    let sets = Backups::new(&s.store.paths).list()?;
    let set = choose_set(&sets, set, pitr, fb)?;
    let is_slave_data = s.slave_data.as_deref() == Some(dst.as_path());
    if running_postmaster(&dst).is_some() && is_slave_data {
        // Skytools' restore stopped the standby with slave_stop_cmd first.
        if let Some(cmd) = &s.slave_stop_cmd {
            as_root(run_as, || super::setup::run_shell("slave_stop_cmd", cmd))?;
        }
    }
    if let Some(pid) = running_postmaster(&dst) {
        return Err(WalmgrError::Refused(format!(
            "restore: {}: PostgreSQL (pid {pid}) is running there; stop it first (or set slave_stop_cmd)",
            dst.display()
        )));
    }
    let move_aside = match is_empty_dir(&dst) {
        Ok(Some(false)) => {
            if !s.backup_datadir {
                return Err(WalmgrError::Refused(format!(
                    "restore: {} is not empty (backup_datadir = no)",
                    dst.display()
                )));
            }
            true
        }
        Ok(_) => false,
        // Not a directory (a file): treat it like a non-empty destination.
        Err(_) if dst.exists() && s.backup_datadir => true,
        Err(e) => return Err(e),
    };

    let mut targets = Vec::new();
    let map_path = set.dir.join(backupset::TABLESPACE_MAP);
    let map_text = read_tablespace_map(set)?;
    if let Some(text) = &map_text {
        for (oid, orig) in parse_tablespace_map(text, &map_path)? {
            let dir = match &s.tablespace_dir {
                Some(d) => d.join(oid.to_string()),
                None if allowed_tablespace_path(&orig, &s.tablespace_roots) => orig,
                None => {
                    let roots: Vec<String> = s
                        .tablespace_roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect();
                    return Err(WalmgrError::Refused(format!(
                        "restore: tablespace {oid}: {} (from tablespace_map) is not under \
                         tablespace_roots ({}); set tablespace_dir, or list its parent in \
                         tablespace_roots",
                        orig.display(),
                        if roots.is_empty() {
                            "none set".to_string()
                        } else {
                            roots.join(", ")
                        }
                    )));
                }
            };
            let created = match is_empty_dir(&dir)? {
                None => true,
                Some(true) => false,
                Some(false) => {
                    return Err(WalmgrError::Refused(format!(
                        "restore: tablespace {oid}: {} is not empty",
                        dir.display()
                    )))
                }
            };
            targets.push(TsTarget { oid, dir, created });
        }
    }

    let tmp = sibling(&dst, ".tmp-restore");
    if tmp.symlink_metadata().is_ok() {
        log::warn!(
            "{}: left over from an interrupted restore, removing it",
            tmp.display()
        );
        fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
    }
    let r = make_private_dir(&tmp).and_then(|id| {
        lay_out(s, set, &tmp, &targets, recovery, pitr, map_text.as_deref())?;
        check_private_dir(&tmp, id)
    });
    if let Err(e) = r {
        let _ = fs::remove_dir_all(&tmp);
        for t in &targets {
            if t.created {
                let _ = fs::remove_dir_all(&t.dir);
            } else if let Ok(rd) = fs::read_dir(&t.dir) {
                for e in rd.flatten() {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        return Err(e);
    }

    if move_aside {
        let stamp = backupset::stamp(std::time::SystemTime::now());
        let aside = sibling(&dst, &format!(".{}", stamp.as_str().trim_end_matches('Z')));
        fs::rename(&dst, &aside).map_err(io_err("move aside", &dst))?;
        log::info!("moved the old {} to {}", dst.display(), aside.display());
    }
    fs::rename(&tmp, &dst).map_err(io_err("rename into", &dst))?;
    fsutil::sync_dir(fsutil::parent_dir(&dst))?;
    log::info!(
        "{}: restore_command set, archive_mode = 'off' (the master's archive_command must not run here)",
        dst.join("postgresql.auto.conf").display()
    );

    if is_slave_data {
        if let Some(cmd) = &s.slave_start_cmd {
            as_root(run_as, || super::setup::run_shell("slave_start_cmd", cmd))?;
        }
    }
    println!(
        "restored {} into {} ({}); start it to {}",
        set.info.set,
        dst.display(),
        if recovery {
            "recovery.signal"
        } else {
            "standby.signal"
        },
        match (recovery, pitr) {
            (true, Some(p)) => p.describe(),
            (true, None) => "replay the archive and promote".into(),
            (false, _) => "run as a standby following the archive".into(),
        }
    );
    Ok(())
}

fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    p.with_file_name(name)
}

/// Create `p` fresh (never an existing one), 0700, and check with lstat that it is the
/// directory just made: (device, inode) to check it again before it is renamed.
fn make_private_dir(p: &Path) -> Result<(u64, u64)> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(p)
        .map_err(|e| PathError::new("create directory", p, e))?;
    let md = fs::symlink_metadata(p).map_err(io_err("stat", p))?;
    if !md.file_type().is_dir() || md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(WalmgrError::Refused(format!(
            "restore: {} was replaced right after it was created; refusing it",
            p.display()
        )));
    }
    Ok((md.dev(), md.ino()))
}

fn check_private_dir(p: &Path, id: (u64, u64)) -> Result<()> {
    let md = fs::symlink_metadata(p).map_err(io_err("stat", p))?;
    if !md.file_type().is_dir() || (md.dev(), md.ino()) != id {
        return Err(WalmgrError::Refused(format!(
            "restore: {} is no longer the directory the restore made; refusing it",
            p.display()
        )));
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(PathError::new("create directory", p, e).into()),
    }
}

/// Everything under `tmp` (and the tablespace dirs) up to, not including, the rename.
fn lay_out(
    s: &Slave,
    set: &Set,
    tmp: &Path,
    targets: &[TsTarget],
    recovery: bool,
    pitr: Option<&Pitr>,
    map: Option<&str>,
) -> Result<()> {
    for t in targets {
        fsutil::ensure_dir(&t.dir, 0o700)?;
    }
    extract(set, tmp, targets, map)?;

    let label = tmp.join(backupset::LABEL);
    if !label.exists() {
        let from = set.dir.join(backupset::LABEL);
        let text = set
            .read_file(backupset::LABEL)?
            .ok_or_else(|| WalmgrError::Corrupt {
                path: from,
                reason: "missing, and the set's tar has none".into(),
            })?;
        fs::write(&label, text).map_err(io_err("write", &label))?;
    }
    let _ = fs::remove_file(tmp.join(backupset::TABLESPACE_MAP));
    for d in ["pg_wal", "pg_wal/archive_status", "pg_tblspc"] {
        mkdir(&tmp.join(d))?;
    }
    for t in targets {
        let link = tmp.join("pg_tblspc").join(t.oid.to_string());
        if link.symlink_metadata().is_ok() {
            fs::remove_dir_all(&link)
                .or_else(|_| fs::remove_file(&link))
                .map_err(io_err("remove", &link))?;
        }
        std::os::unix::fs::symlink(&t.dir, &link).map_err(io_err("symlink", &link))?;
        fs::set_permissions(&t.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &t.dir))?;
    }
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", tmp))?;

    let (signal, other) = if recovery {
        ("recovery.signal", "standby.signal")
    } else {
        ("standby.signal", "recovery.signal")
    };
    // A backup of a standby carries its signal file; only the one asked for may remain.
    let _ = fs::remove_file(tmp.join(other));
    // A backup of a paused or booted copy carries its controls: this one starts clean.
    for c in [control::PAUSE, control::STOP] {
        let _ = fs::remove_file(tmp.join(c));
    }
    fs::write(tmp.join(signal), b"").map_err(io_err("write", &tmp.join(signal)))?;

    let auto = tmp.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(io_err("open", &auto))?;
    // recovery_prefetch is new in 15: an unknown setting would stop an older server.
    let pg_major = crate::pg::cluster::data_version(tmp)
        .map(|v| v.major())
        .unwrap_or(15);
    let mut settings = recovery_settings(s, &set.info.set, recovery, pg_major)?;
    if let Some(p) = pitr {
        settings.push_str(&p.settings()?);
    }
    f.write_all(settings.as_bytes())
        .map_err(io_err("write", &auto))?;
    drop(f);

    // One syncfs per file system instead of an fsync per restored file.
    for d in std::iter::once(tmp).chain(targets.iter().map(|t| t.dir.as_path())) {
        let f = File::open(d).map_err(io_err("open", d))?;
        nix::unistd::syncfs(&f).map_err(|e| PathError::new("syncfs", d, e.into()))?;
    }
    Ok(())
}

/// The settings a restore appends to postgresql.auto.conf. A value PostgreSQL cannot
/// hold (a newline, from a continued ini line) is refused, naming its key.
fn recovery_settings(s: &Slave, set: &SetName, recovery: bool, pg_major: u32) -> Result<String> {
    let restore_command = match &s.restore_command {
        Some(c) => c.clone(),
        None => super::self_command(&s.ini, s.walmgr_path.as_deref(), "xrestore %f %p %r"),
    };
    let quote = |key: &str, v: &str| {
        conf_value(v).map_err(|e| {
            WalmgrError::Config(crate::config::ConfigError::BadValue {
                path: s.ini.clone(),
                section: "walmgr".into(),
                key: key.into(),
                value: crate::pg::redact(v),
                reason: e.to_string(),
            })
        })
    };
    let mut out = format!(
        "\n# walmgr restore of backup {set}\nrestore_command = {}\n",
        quote("restore_command", &restore_command)?
    );
    if let Some(pc) = &s.primary_conninfo {
        out.push_str(&format!(
            "primary_conninfo = {}\n",
            quote("primary_conninfo", pc)?
        ));
    }
    out.push_str("archive_mode = 'off'\n");
    if !recovery && pg_major >= 15 {
        // A standby's xrestore waits for the next segment; PostgreSQL 15 decodes ahead
        // (recovery_prefetch) and would not replay the records it already has, the end
        // of the previous segment included, until that wait ends.
        out.push_str("recovery_prefetch = 'off'\n");
    }
    Ok(out)
}

/// Unpack the set's tar into `tmp` and the tablespace dirs, then check both checksums
/// over every byte of the stored file.
fn extract(set: &Set, tmp: &Path, targets: &[TsTarget], map: Option<&str>) -> Result<()> {
    let base = set.base_path();
    let corrupt = |reason: String| WalmgrError::Corrupt {
        path: base.clone(),
        reason,
    };
    let mut stored = HashReader::new(BufReader::with_capacity(1 << 20, set.open_base()?));
    let (raw_sha, raw_bytes) = {
        let dec = set
            .info
            .compression
            .decoder(&mut stored)
            .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
        let raw = HashReader::new(dec);
        let mut raw = unpack_tar(raw, tmp, targets, map).map_err(corrupt)?;
        io::copy(&mut raw, &mut io::sink())
            .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
        raw.finish()
    };
    io::copy(&mut stored, &mut io::sink()).map_err(io_err("read", &base))?;
    let (stored_sha, stored_bytes) = stored.finish();
    let i = &set.info;
    check_digest(
        &base,
        "stored file",
        (&stored_sha, stored_bytes),
        "backup.json",
        (&i.stored_sha256, i.stored_size),
    )?;
    check_digest(
        &base,
        "tar stream",
        (&raw_sha, raw_bytes),
        "backup.json",
        (&i.sha256, i.size),
    )
}

/// Unpack a base backup's (uncompressed) tar stream into `tmp`, each tablespace's
/// `pg_tblspc/<oid>/...` entries into its target: no entry outside, no links, plain
/// modes; the tar's tablespace_map must equal `map`, the set's (what the targets were
/// made from). Returns the reader, positioned after the tar's end-of-archive blocks.
pub fn unpack_tar<R: Read>(
    raw: R,
    tmp: &Path,
    targets: &[TsTarget],
    map: Option<&str>,
) -> std::result::Result<R, String> {
    let mut a = tar::Archive::new(raw);
    // Plain modes only: no setuid/setgid bits from a tar whoever can write the store made.
    a.set_preserve_permissions(false);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    a.set_unpack_xattrs(false);
    let mut map_check = MapCheck {
        want: map,
        seen: false,
    };
    for e in a.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        unpack_entry(&mut e, tmp, targets, &mut map_check)?;
    }
    if map.is_some() && !map_check.seen {
        return Err("the set has a tablespace_map but its tar has none".into());
    }
    Ok(a.into_inner())
}

/// The set's tablespace_map (what the targets were made from) against the tar's copy.
struct MapCheck<'a> {
    want: Option<&'a str>,
    seen: bool,
}

fn unpack_entry<R: Read>(
    e: &mut tar::Entry<R>,
    tmp: &Path,
    targets: &[TsTarget],
    map: &mut MapCheck,
) -> std::result::Result<(), String> {
    let path = e.path().map_err(|err| err.to_string())?.into_owned();
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "entry {} leaves the data directory",
                    path.display()
                ))
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    if parts.len() == 1 && parts[0] == backupset::TABLESPACE_MAP {
        let mut text = Vec::new();
        e.take(1 << 20)
            .read_to_end(&mut text)
            .map_err(|err| format!("reading tablespace_map from the tar: {err}"))?;
        map.seen = true;
        return match map.want {
            Some(want) if want.as_bytes() == text.as_slice() => Ok(()),
            _ if text.iter().all(u8::is_ascii_whitespace) && map.want.is_none() => Ok(()),
            _ => Err("the tar's tablespace_map differs from the set's; refusing it".into()),
        };
    }
    if parts.len() >= 2 && parts[0] == "pg_tblspc" {
        let oid = parts[1].to_str().and_then(|o| o.parse::<u32>().ok());
        if let Some(t) = oid.and_then(|o| targets.iter().find(|t| t.oid == o)) {
            if parts.len() == 2 {
                return Ok(());
            }
            let kind = e.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                return Err(format!(
                    "entry {}: unexpected {kind:?} in a tablespace",
                    path.display()
                ));
            }
            let mut target = t.dir.clone();
            target.extend(&parts[2..]);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
            }
            e.unpack(&target).map_err(|err| {
                format!(
                    "unpacking {} to {}: {err}",
                    path.display(),
                    target.display()
                )
            })?;
            return Ok(());
        }
    }
    let kind = e.header().entry_type();
    if !(kind.is_file() || kind.is_dir()) {
        // A link would let the tar (or whoever can write the store) aim our later writes
        // (standby.signal, postgresql.auto.conf), made as root perhaps, anywhere. A
        // pg_wal link (initdb -X) points at the master's disk: a plain directory instead.
        if parts.len() == 1 && parts[0] == "pg_wal" {
            return fs::create_dir_all(tmp.join("pg_wal"))
                .map_err(|err| format!("{}: {err}", tmp.join("pg_wal").display()));
        }
        log::warn!(
            "{}: {kind:?} entry in the backup not restored",
            path.display()
        );
        return Ok(());
    }
    match e.unpack_in(tmp) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "entry {} leaves the data directory",
            path.display()
        )),
        Err(err) => Err(format!("unpacking {}: {err}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skytools::walmgr::backupset::{CommitInfo, Staging};
    use crate::skytools::walmgr::basebackup::{Tablespace, TarWriter};
    use crate::skytools::walmgr::codec::Compression;
    use crate::skytools::walmgr::config::Settings;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n";

    fn slave(root: &Path, extra: &str) -> Slave {
        let text = format!(
            "[walmgr]\nslave = {}\nslave_data = {}\n{extra}",
            root.join("store").display(),
            root.join("data").display()
        );
        match Settings::parse(&text, &root.join("slave.ini")).unwrap() {
            Settings::Slave(s) => *s,
            _ => unreachable!(),
        }
    }

    /// A fake cluster with one tablespace, backed up into the slave's store.
    fn backup(root: &Path, s: &Slave, c: Compression) -> SetName {
        let src = root.join("src");
        let ts = root.join("ts-src");
        fs::create_dir_all(src.join("base/1")).unwrap();
        fs::create_dir_all(src.join("pg_wal")).unwrap();
        fs::write(src.join("PG_VERSION"), "15\n").unwrap();
        fs::write(src.join("base/1/1259"), vec![4u8; 50_000]).unwrap();
        fs::write(src.join("postgresql.auto.conf"), "archive_command = 'x'\n").unwrap();
        fs::write(src.join("standby.signal"), "").unwrap();
        fs::write(src.join(control::PAUSE), "").unwrap();
        fs::create_dir_all(ts.join("PG_15_1/5")).unwrap();
        fs::write(ts.join("PG_15_1/5/16385"), b"tablespace data").unwrap();
        fs::create_dir_all(src.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&ts, src.join("pg_tblspc/16400")).unwrap();
        let mut w = TarWriter::new(Vec::new());
        w.data_dir(
            &src,
            &[Tablespace {
                oid: 16400,
                location: ts.clone(),
            }],
        )
        .unwrap();
        w.add_bytes("backup_label", LABEL.as_bytes(), 0o600)
            .unwrap();
        let map = format!("16400 {}\n", ts.display());
        w.add_bytes("tablespace_map", map.as_bytes(), 0o600)
            .unwrap();
        let tar = w.finish().unwrap();
        let mut st = Staging::create(
            &s.store.paths.full_backup,
            &SetName::parse("20261122T200000Z").unwrap(),
            c,
            c.default_level(),
        )
        .unwrap();
        let r = st.receive(&mut &tar[..]).unwrap();
        st.commit(
            &r,
            &CommitInfo {
                stop_lsn: "0/3000000".parse().unwrap(),
                ..Default::default()
            },
        )
        .unwrap()
        .set
    }

    #[test]
    fn links_in_a_backup_tar_are_not_restored() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, target) in [("pg_wal", "/master/wal"), ("standby.signal", "/etc/passwd")] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let mut map = MapCheck {
            want: None,
            seen: false,
        };
        for e in a.entries().unwrap() {
            unpack_entry(&mut e.unwrap(), d.path(), &[], &mut map).unwrap();
        }
        let wal = fs::symlink_metadata(d.path().join("pg_wal")).unwrap();
        assert!(wal.is_dir(), "pg_wal link must become a directory");
        assert!(fs::symlink_metadata(d.path().join("standby.signal")).is_err());
    }

    #[test]
    fn restore_with_tablespace_dir_and_move_aside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let s = slave(
            root,
            &format!(
                "tablespace_dir = {}\nprimary_conninfo = host=m user='x'\n",
                root.join("tbs").display()
            ),
        );
        let set = backup(root, &s, Compression::Zstd);
        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("old"), "old").unwrap();
        restore(&s, None, None, true, None).unwrap();
        assert_eq!(
            fs::read(data.join("base/1/1259")).unwrap(),
            vec![4u8; 50_000]
        );
        assert_eq!(
            fs::read_to_string(data.join("backup_label")).unwrap(),
            LABEL
        );
        assert!(data.join("recovery.signal").exists() && !data.join("standby.signal").exists());
        assert!(!data.join("tablespace_map").exists());
        assert!(data.join("pg_wal/archive_status").is_dir());
        let link = fs::read_link(data.join("pg_tblspc/16400")).unwrap();
        assert_eq!(link, root.join("tbs/16400"));
        assert_eq!(
            fs::read(root.join("tbs/16400/PG_15_1/5/16385")).unwrap(),
            b"tablespace data"
        );
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
        assert!(auto.starts_with("archive_command = 'x'\n"), "{auto}");
        assert!(
            auto.contains(&format!("# walmgr restore of backup {set}")),
            "{auto}"
        );
        assert!(auto.contains(" xrestore %f %p %r'\n"), "{auto}");
        assert!(
            auto.contains("primary_conninfo = 'host=m user=''x'''\n"),
            "{auto}"
        );
        assert!(auto.ends_with("archive_mode = 'off'\n"), "{auto}");
        assert!(!auto.contains("recovery_prefetch"), "{auto}");
        let standby = recovery_settings(&s, &set, false, 15).unwrap();
        assert!(!recovery_settings(&s, &set, false, 14)
            .unwrap()
            .contains("recovery_prefetch"));
        assert!(
            standby.ends_with("recovery_prefetch = 'off'\n"),
            "{standby}"
        );
        // A continued ini line puts a newline in the value: refused, key named.
        let mut multi = s.clone();
        multi.primary_conninfo = Some("host=m password=hunter2\nuser=x".into());
        let e = recovery_settings(&multi, &set, false, 15)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("primary_conninfo") && e.contains("newline"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            !data.join(control::PAUSE).exists(),
            "controls are not restored"
        );
        let aside: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("data."))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            fs::read_to_string(root.join(&aside[0]).join("old")).unwrap(),
            "old"
        );
        assert!(!root.join("data.tmp-restore").exists());

        // Tablespace directory now not empty: refused before anything is touched.
        let e = restore(
            &s,
            Some(&set),
            Some(root.join("d2").to_str().unwrap()),
            false,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("16400") && e.to_string().contains("not empty"),
            "{e}"
        );
        assert!(!root.join("d2").exists());
    }

    #[test]
    fn refusals_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let s = slave(
            root,
            &format!(
                "backup_datadir = no\ntablespace_roots = {}\n",
                root.display()
            ),
        );
        assert!(restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string()
            .contains("no backups"));
        let set = backup(root, &s, Compression::Gzip);
        // As on another host: the original tablespace path exists, empty.
        fs::remove_dir_all(root.join("ts-src")).unwrap();
        fs::create_dir(root.join("ts-src")).unwrap();
        let e = restore(
            &s,
            Some(&SetName::parse("20261122T200000Z-9").unwrap()),
            None,
            false,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("20261122T200000Z-9"), "{e}");
        assert!(SetName::parse("../../etc").is_err());

        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("x"), "x").unwrap();
        let e = restore(&s, None, None, false, None).unwrap_err();
        assert!(e.to_string().contains("backup_datadir"), "{e}");

        // Flip a byte in the stored file: nothing may appear at the destination.
        let base = s.store.paths.full_backup.join(&set).join("base.tar.gz");
        let mut b = fs::read(&base).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x55;
        fs::write(&base, &b).unwrap();
        let dst = root.join("fresh");
        let e = restore(&s, None, Some(dst.to_str().unwrap()), false, None).unwrap_err();
        assert!(e.to_string().contains("base.tar.gz"), "{e}");
        assert!(!dst.exists() && !root.join("fresh.tmp-restore").exists());
        // The tablespace went back to its original path, which the failure emptied again.
        assert_eq!(fs::read_dir(root.join("ts-src")).unwrap().count(), 0);
    }

    /// Rewrite the set's tablespace_map (and, like an attacker who owns the store,
    /// backup.json's sha256 of it when `fix_sum`).
    fn tamper_map(s: &Slave, set: &SetName, map: &str, fix_sum: bool) {
        let dir = s.store.paths.full_backup.join(set.as_str());
        fs::write(dir.join(backupset::TABLESPACE_MAP), map).unwrap();
        if fix_sum {
            let p = dir.join(backupset::INFO);
            let mut info: backupset::BackupInfo =
                serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            info.tablespace_map_sha256 = Some(crate::digest::sha256_hex(map.as_bytes()));
            fs::write(&p, serde_json::to_vec(&info).unwrap()).unwrap();
        }
    }

    #[test]
    fn tablespace_map_is_checksummed_compared_and_confined() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let allowed = root.join("tsroot");
        let s = slave(root, &format!("tablespace_roots = {}\n", allowed.display()));
        let set = backup(root, &s, Compression::None);
        let info = &backupset::list(&s.store.paths.full_backup).unwrap()[0].info;
        assert_eq!(
            info.tablespace_map_sha256.as_deref(),
            Some(
                crate::digest::sha256_hex(
                    format!("16400 {}\n", root.join("ts-src").display()).as_bytes()
                )
                .as_str()
            ),
            "the map's sha256 is recorded at backup time"
        );
        let data = root.join("data");
        let victim = root.join("etc-cron.d");

        // The original path is outside tablespace_roots: refused, nothing created.
        let e = restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tablespace 16400") && e.contains("not under tablespace_roots"),
            "{e}"
        );
        // A map pointing elsewhere, its sha256 in backup.json rewritten to match.
        tamper_map(&s, &set, &format!("16400 {}\n", victim.display()), true);
        let e = restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not under tablespace_roots"), "{e}");
        // '..' out of an allowed root is outside too.
        tamper_map(
            &s,
            &set,
            &format!("16400 {}/../etc-cron.d\n", allowed.display()),
            true,
        );
        let e = restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not under tablespace_roots"), "{e}");
        assert!(!victim.exists() && !data.exists());
        // A map that does not match backup.json's sha256: refused.
        tamper_map(
            &s,
            &set,
            &format!("16400 {}/ts\n", allowed.display()),
            false,
        );
        let e = restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tablespace_map") && e.contains("sha256"), "{e}");
        assert!(!allowed.exists() && !data.exists());
        // Inside the roots and matching backup.json, but not the tar's copy: refused,
        // and what was made for it removed again.
        tamper_map(&s, &set, &format!("16400 {}/ts\n", allowed.display()), true);
        let e = restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("differs from the set's"), "{e}");
        assert!(!allowed.join("ts").exists() && !data.exists());
        assert!(!root.join("data.tmp-restore").exists());
        // A map added to a set without tablespaces is refused.
        let mut info: backupset::BackupInfo = serde_json::from_slice(
            &fs::read(
                s.store
                    .paths
                    .full_backup
                    .join(set.as_str())
                    .join(backupset::INFO),
            )
            .unwrap(),
        )
        .unwrap();
        info.tablespaces = false;
        fs::write(
            s.store
                .paths
                .full_backup
                .join(set.as_str())
                .join(backupset::INFO),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
        let e = restore(&s, None, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("records no tablespaces"), "{e}");
    }

    #[test]
    fn a_planted_staging_link_is_removed_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let s = slave(
            root,
            &format!("tablespace_dir = {}\n", root.join("tbs").display()),
        );
        backup(root, &s, Compression::None);
        let victim = root.join("victim");
        fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("data.tmp-restore")).unwrap();
        restore(&s, None, None, false, None).unwrap();
        assert!(root.join("data/base/1/1259").is_file());
        assert_eq!(
            fs::read_dir(&victim).unwrap().count(),
            0,
            "nothing written through the link"
        );
        // A symlinked parent of the destination is refused (as root).
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::symlink(root, root.join("alias")).unwrap();
            let e = restore(
                &s,
                None,
                Some(root.join("alias/d3").to_str().unwrap()),
                false,
                None,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("is a symbolic link"), "{e}");
        }
    }
}
