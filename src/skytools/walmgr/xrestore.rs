//! `xrestore %f %p [%r]` (PostgreSQL's restore_command) as a small state machine: each
//! poll observes the store and the control files, [`decide`] says what to do, and the
//! loop only performs it. In standby mode a missing segment is waited for (Skytools'
//! behaviour); `PAUSE` holds replay; `STOP` ends the wait (delivering a partial segment
//! when there is one) so recovery can finish. Both are files in the data directory
//! being recovered (the working directory PostgreSQL runs restore_command in; see
//! [`super::control`]), never in the store several recoveries share.

use std::path::Path;

use super::backupset;
use super::config::StoreSettings;
use super::control;
use super::error::{Result, WalmgrError};
use super::prefetch;
use super::store::{self, WalStore};
use super::walname::{Kind, WalName};
use crate::fsutil::PathError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    pub stored: bool,
    pub partial: bool,
    pub stop: bool,
    pub pause: bool,
    pub standby: bool,
    pub history: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Deliver,
    DeliverPartial,
    /// Exit non-zero now (PostgreSQL takes it as "not available").
    Fail(&'static str),
    Wait(&'static str),
}

pub fn decide(o: &Observation) -> Step {
    if o.stop {
        return if o.stored {
            Step::Deliver
        } else if o.partial && !o.history {
            Step::DeliverPartial
        } else {
            Step::Fail("not in the archive and STOP is set")
        };
    }
    if o.history && !o.stored {
        // Asked for every timeline PostgreSQL might switch to: never worth waiting for.
        return Step::Fail("not in the archive");
    }
    if o.pause {
        return Step::Wait("PAUSE is set");
    }
    if o.stored {
        return Step::Deliver;
    }
    if o.standby {
        Step::Wait("waiting for it to be archived")
    } else {
        Step::Fail("not in the archive")
    }
}

/// Where a partial segment for `name` may be: archived by PostgreSQL as `<name>.partial`,
/// or left in partial_wals.
fn partial_source(store: &WalStore, name: &str) -> Result<Option<PartialSource>> {
    let archived = format!("{name}.partial");
    if let Some(m) = store.lookup(&archived)? {
        return Ok(Some(PartialSource::Archived(m)));
    }
    for cand in [
        store.partial_dir.join(name),
        store.partial_dir.join(&archived),
    ] {
        if cand.is_file() {
            return Ok(Some(PartialSource::Raw(cand)));
        }
    }
    Ok(None)
}

enum PartialSource {
    Archived(store::Meta),
    Raw(std::path::PathBuf),
}

pub fn xrestore(
    st: &StoreSettings,
    wait: std::time::Duration,
    name: &str,
    dst: &Path,
    restartpoint: Option<&str>,
    prefetch: Option<&Path>,
) -> Result<()> {
    let wal = WalName::parse(name)?;
    let store = WalStore::new(&st.paths);
    // restore_command runs in the data directory.
    let standby = Path::new("standby.signal").exists();
    let mut last_reason = "";
    for old in ["PAUSE", "STOP"] {
        let p = store.dir.join(old);
        if p.exists() {
            log::warn!(
                "{}: ignored (PAUSE and STOP now belong to the data directory: \
                 `walmgr <ini> pause|continue|boot [<data dir>]`); remove it",
                p.display()
            );
        }
    }
    // A segment the prefetcher holds is delivered without asking the store (unless
    // PAUSE or STOP asks for the store's rules).
    if let (Some(ini), Kind::Segment) = (prefetch, wal.kind) {
        if !Path::new(control::PAUSE).exists()
            && !Path::new(control::STOP).exists()
            && from_spool(ini, name, dst)
        {
            if let Some(r) = restartpoint {
                cleanup_before(st, &store, r)?;
            }
            return Ok(());
        }
    }
    loop {
        let meta = store.lookup(name)?;
        let legacy = if meta.is_none() {
            store.legacy(name)
        } else {
            None
        };
        let found = meta.is_some() || legacy.is_some();
        let stop = Path::new(control::STOP).exists();
        let partial = if stop && !found {
            partial_source(&store, name)?
        } else {
            None
        };
        let o = Observation {
            stored: found,
            partial: partial.is_some(),
            stop,
            pause: Path::new(control::PAUSE).exists(),
            standby,
            history: wal.kind == Kind::History,
        };
        match decide(&o) {
            Step::Deliver => {
                match (&meta, legacy) {
                    (Some(m), _) => deliver(&store, m, dst, prefetch)?,
                    (None, Some(p)) => deliver_unchecked(&p, &wal, dst)?,
                    (None, None) => unreachable!("decide delivers only what was found"),
                }
                log::debug!("{name}: restored to {}", dst.display());
                if let Some(r) = restartpoint {
                    cleanup_before(st, &store, r)?;
                }
                return Ok(());
            }
            Step::DeliverPartial => {
                match partial.expect("partial") {
                    PartialSource::Archived(m) => store.fetch(&m, dst)?,
                    PartialSource::Raw(p) => deliver_unchecked(&p, &wal, dst)?,
                }
                log::info!("{name}: STOP set; restored its partial segment");
                return Ok(());
            }
            Step::Fail(reason) => {
                return Err(WalmgrError::Missing {
                    name: name.to_string(),
                    reason: reason.to_string(),
                    dir: store.dir.clone(),
                })
            }
            Step::Wait(reason) => {
                // PostgreSQL signals our process group at shutdown; should we miss it,
                // being re-parented means the startup process is gone: stop waiting.
                if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
                    return Err(WalmgrError::Internal(format!(
                        "{name}: the process that asked for it is gone; giving up"
                    )));
                }
                if reason != last_reason {
                    log::info!("{name}: {reason}");
                    last_reason = reason;
                }
                std::thread::sleep(wait);
            }
        }
    }
}

/// The prefetched copy of `name` into `dst`, checked against the meta spooled with it;
/// false when there is none (or it is not right: removed), to ask the store instead.
fn from_spool(ini: &Path, name: &str, dst: &Path) -> bool {
    let Ok(data) = std::env::current_dir() else {
        return false;
    };
    let Ok(spool) = prefetch::Prefetch::open(&data) else {
        return false;
    };
    match spool.take_spooled(name, dst) {
        Ok(true) => {
            prefetch::kick(ini, &data, name);
            log::info!("{name}: restored from the prefetch spool");
            true
        }
        Ok(false) => false,
        Err(e) => {
            log::warn!("prefetch: {e}; fetching from the store");
            false
        }
    }
}

/// Deliver a stored file: from the prefetch spool when it holds exactly that file, else
/// from the store. With prefetch on, each segment asked for moves the prefetcher's window.
fn deliver(store: &WalStore, m: &store::Meta, dst: &Path, prefetch: Option<&Path>) -> Result<()> {
    let wal = WalName::parse(&m.name)?;
    if let (Some(ini), Kind::Segment) = (prefetch, wal.kind) {
        // restore_command runs in the data directory being recovered.
        let data = std::env::current_dir().map_err(|e| PathError::new("getcwd", ".", e))?;
        // No spool (a directory we may not write): fetch as without prefetch.
        let spool = match prefetch::Prefetch::open(&data) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("prefetch: {e}");
                return store.fetch(m, dst);
            }
        };
        // A spool that cannot be read is only a missed shortcut.
        let taken = spool.take(m, dst).unwrap_or_else(|e| {
            log::warn!("prefetch: {e}; fetching from the store");
            false
        });
        if !taken {
            store.fetch(m, dst)?;
        }
        // After the delivery: the window moves past this segment.
        prefetch::kick(ini, &data, &m.name);
        if taken {
            log::info!("{}: restored from the prefetch spool", m.name);
        }
        return Ok(());
    }
    store.fetch(m, dst)
}

/// Deliver a file the store has no checksum for; a whole segment must at least carry a
/// segment header matching its name and size.
fn deliver_unchecked(src: &Path, wal: &WalName, dst: &Path) -> Result<()> {
    let data = std::fs::read(src).map_err(|e| PathError::new("read", src, e))?;
    if wal.kind == Kind::Segment {
        super::walheader::check(src, &data, wal, None)?;
    }
    crate::fsutil::publish_with(dst, 0o600, |f| std::io::Write::write_all(f, &data))?;
    log::info!(
        "{}: restored from {} (no .meta: not checksummed)",
        wal.name,
        src.display()
    );
    Ok(())
}

/// After a restartpoint, WAL before `%r` is needed by nobody when the store keeps no
/// base backups (the archive only feeds this standby).
fn cleanup_before(st: &StoreSettings, store: &WalStore, restartpoint: &str) -> Result<()> {
    let Ok(r) = WalName::parse(restartpoint) else {
        return Ok(());
    };
    // PostgreSQL passes the same %r until its next restartpoint: done once per value
    // (remembered in the prefetch spool, when there is one), not once per segment —
    // on S3 it costs two listings.
    let spool = std::env::current_dir()
        .ok()
        .filter(|d| d.join(prefetch::DIR).is_dir())
        .and_then(|d| prefetch::Prefetch::open(&d).ok());
    if let Some(p) = &spool {
        if p.purged_before().as_deref() == Some(restartpoint) {
            return Ok(());
        }
    }
    if !backupset::Backups::new(&st.paths).has_backups() {
        store.purge_before(&r)?;
    }
    if let Some(p) = &spool {
        p.set_purged_before(restartpoint);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skytools::walmgr::config::StorePaths;

    #[test]
    fn files_without_meta_are_served_after_a_header_check() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        let st = StoreSettings {
            paths: StorePaths::under(&root),
            keep_backups: 0,
            archive_command: None,
        };
        std::fs::create_dir_all(&st.paths.completed_wals).unwrap();
        let wait = std::time::Duration::from_millis(10);
        // A Skytools archive: plain segments, no .meta.
        let good = WalName::parse("000000010000000000000004").unwrap();
        let seg = super::super::walheader::fake_segment(7, &good, 1 << 20);
        std::fs::write(st.paths.completed_wals.join(&good.name), &seg).unwrap();
        let dst = root.join("RECOVERYXLOG");
        xrestore(&st, wait, &good.name, &dst, None, None).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), seg);
        // One whose header is not that segment's is refused, and nothing is delivered.
        let bad = "000000010000000000000005";
        std::fs::write(st.paths.completed_wals.join(bad), &seg).unwrap();
        let dst2 = root.join("OTHER");
        let e = xrestore(&st, wait, bad, &dst2, None, None).unwrap_err();
        assert!(matches!(e, WalmgrError::BadWal { .. }), "{e}");
        assert!(!dst2.exists());
    }

    fn o(f: impl FnOnce(&mut Observation)) -> Observation {
        let mut o = Observation::default();
        f(&mut o);
        o
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&o(|o| o.stored = true)), Step::Deliver);
        assert!(matches!(decide(&o(|_| {})), Step::Fail(_)));
        assert!(matches!(decide(&o(|o| o.standby = true)), Step::Wait(_)));
        // History files are never waited for, even in standby mode.
        assert!(matches!(
            decide(&o(|o| {
                o.standby = true;
                o.history = true
            })),
            Step::Fail(_)
        ));
        // PAUSE holds even a segment that is there.
        assert!(matches!(
            decide(&o(|o| {
                o.stored = true;
                o.pause = true
            })),
            Step::Wait(_)
        ));
        // STOP wins over PAUSE, delivers what there is, else fails so recovery ends.
        assert_eq!(
            decide(&o(|o| {
                o.stop = true;
                o.pause = true;
                o.stored = true
            })),
            Step::Deliver
        );
        assert_eq!(
            decide(&o(|o| {
                o.stop = true;
                o.partial = true;
                o.standby = true
            })),
            Step::DeliverPartial
        );
        assert!(matches!(
            decide(&o(|o| {
                o.stop = true;
                o.standby = true
            })),
            Step::Fail(_)
        ));
    }
}
