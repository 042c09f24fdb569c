//! Prefetch on restore (`restore_prefetch = N`): while PostgreSQL replays one segment, a
//! background prefetcher started by xrestore fetches, checks (sha256 against the store's
//! meta) and decompresses the next N into `<data dir>/walmgr_prefetch/`, so the next
//! xrestore renames a ready file into place instead of fetching: replay and fetch no
//! longer take turns.
//!
//! Nothing in the spool is trusted: before a file is delivered xrestore hashes it and
//! compares its name, size and checksum with the meta the prefetcher spooled beside it
//! (or the store's meta of that name): the XXH3 the prefetcher noted of the bytes it had
//! checked, else the SHA-256. It removes the file on any mismatch (then fetches from the
//! store as without prefetch). The prefetcher keeps
//! only the window after the segment last asked for, on its timeline; a timeline switch
//! or a restart from an older point makes the rest stale, and it is removed.
//!
//! The spool belongs to the data directory being recovered (restore_command's working
//! directory), as PAUSE and STOP do: two recoveries from one store never share it. One
//! prefetcher per data directory (flock on `walmgr_prefetch/lock`); it exits when idle,
//! or when the server that asked (postmaster.pid, else xrestore's parent) is gone.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{io_err, Result};
use super::spool;
use super::store::{Meta, WalStore, META_EXT};
use super::walname::{Kind, WalName};
use crate::digest::{Algo, HashWriter};
use crate::fsutil::{self, TEMP_PREFIX};

/// The spool directory, relative to the data directory (restore_command's cwd).
pub const DIR: &str = "walmgr_prefetch";
const ASKED: &str = "asked";
const LOCK: &str = "lock";
const PURGED: &str = "purged-before";
/// The prefetcher exits after this long with nothing new asked and nothing to fetch.
const IDLE: Duration = Duration::from_secs(10);
/// How long xrestore waits for a segment the prefetcher is writing.
const IN_PROGRESS_WAIT: Duration = Duration::from_secs(5);
/// Segments fetched at once.
const THREADS: usize = 2;

/// The names the prefetcher should hold after `asked` (a segment of `seg_size` bytes):
/// the next `n` segments on its timeline.
pub fn window(asked: &WalName, n: usize, seg_size: u64) -> Vec<String> {
    if asked.kind != Kind::Segment || seg_size == 0 || asked.start_address(seg_size).is_none() {
        return Vec::new();
    }
    let first = asked.segno(seg_size);
    (1..=n as u64)
        .map(|i| WalName::segment_name(asked.tli, first + i, seg_size))
        .collect()
}

/// A spool entry that no longer belongs: neither the segment asked for (xrestore may be
/// taking it right now) nor in the window after it (so: delivered, before the point
/// PostgreSQL restarted from, on another timeline).
pub fn stale(entry: &str, asked: &str, window: &[String]) -> bool {
    entry != asked && !window.iter().any(|w| w == entry)
}

pub struct Prefetch {
    pub dir: PathBuf,
}

impl Prefetch {
    /// The spool in `data` (created if missing).
    pub fn open(data: &Path) -> Result<Prefetch> {
        let dir = data.join(DIR);
        fsutil::ensure_dir(&dir, 0o700)?;
        Ok(Prefetch { dir })
    }

    /// Tell the prefetcher which segment PostgreSQL asked for last.
    pub fn set_asked(&self, name: &str) -> Result<()> {
        fsutil::publish_with(&self.dir.join(ASKED), 0o600, |f| {
            io::Write::write_all(f, name.as_bytes())
        })?;
        Ok(())
    }

    fn asked(&self) -> Option<String> {
        let s = fs::read_to_string(self.dir.join(ASKED)).ok()?;
        WalName::parse(s.trim()).ok().map(|w| w.name)
    }

    /// True while the prefetcher is writing `name` (its temp file, of a live writer).
    fn in_progress(&self, name: &str) -> bool {
        let prefix = format!("{TEMP_PREFIX}{name}.");
        fs::read_dir(&self.dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.starts_with(&prefix) && !super::store::temp_writer_gone(&f)
            })
        })
    }

    /// Deliver the spooled copy of `name` checked against the meta the prefetcher
    /// spooled beside it (what the store said when the copy was fetched), without
    /// asking the store: Ok(true) = delivered. A missing or unreadable meta is a miss.
    pub fn take_spooled(&self, name: &str, dst: &Path) -> Result<bool> {
        let mp = self.dir.join(format!("{name}{META_EXT}"));
        let until = Instant::now() + IN_PROGRESS_WAIT;
        while !mp.exists() && self.in_progress(name) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let Ok(text) = fs::read(&mp) else {
            return Ok(false);
        };
        let meta: Meta = match serde_json::from_slice(&text) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{}: unreadable ({e}): removed", mp.display());
                let _ = fs::remove_file(&mp);
                return Ok(false);
            }
        };
        if meta.name != name {
            let _ = fs::remove_file(&mp);
            return Ok(false);
        }
        let taken = self.take(&meta, dst)?;
        let _ = fs::remove_file(&mp);
        Ok(taken)
    }

    /// The restartpoint whose older WAL xrestore last purged from the store.
    pub fn purged_before(&self) -> Option<String> {
        fs::read_to_string(self.dir.join(PURGED)).ok()
    }

    pub fn set_purged_before(&self, name: &str) {
        let r = fsutil::publish_with(&self.dir.join(PURGED), 0o600, |f| {
            io::Write::write_all(f, name.as_bytes())
        });
        if let Err(e) = r {
            log::debug!("prefetch: {e}");
        }
    }

    /// Move the spooled copy of `meta` to `dst`, if there is one and it is exactly what
    /// the store holds (name, size, sha256); one being written is waited for (briefly:
    /// fetching it a second time would only slow both). A copy that is not right is
    /// removed and reported; the caller then fetches from the store. Ok(true) = delivered.
    pub fn take(&self, meta: &Meta, dst: &Path) -> Result<bool> {
        let p = self.dir.join(&meta.name);
        let until = Instant::now() + IN_PROGRESS_WAIT;
        while !p.exists() && self.in_progress(&meta.name) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("open", &p)(e)),
        };
        let (algo, want) = match &meta.xxh3 {
            Some(x) => (Algo::Xxh3, x),
            None => (Algo::Sha256, &meta.sha256),
        };
        let mut w = HashWriter::with(algo, io::sink());
        io::copy(&mut (&mut f).take(meta.size + 1), &mut w).map_err(io_err("read", &p))?;
        let (sum, n, _) = w.finish();
        if (&sum, n) != (want, meta.size) {
            let algo = algo.name();
            log::warn!(
                "{}: prefetched copy has {algo} {sum} ({n} bytes), its meta says {want} \
                 ({} bytes): removed, fetching from the store",
                p.display(),
                meta.size
            );
            let _ = fs::remove_file(&p);
            return Ok(false);
        }
        let ino = f.metadata().map_err(io_err("stat", &p))?.ino();
        match fs::rename(&p, dst) {
            Ok(()) => {}
            // Removed meanwhile (a prefetcher that saw it as stale): fetch instead.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            // pg_wal on another file system: copy what was checked.
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                use std::io::Seek;
                f.seek(io::SeekFrom::Start(0)).map_err(io_err("read", &p))?;
                fsutil::publish_with(dst, 0o600, |out| io::copy(&mut f, out).map(|_| ()))?;
                let _ = fs::remove_file(&p);
                return Ok(true);
            }
            Err(e) => return Err(io_err("rename", &p)(e)),
        }
        // Only the prefetcher writes there and never over an existing name; should the
        // file have been swapped between the check and the rename, do not deliver it.
        let got = fs::metadata(dst).map_err(io_err("stat", dst))?.ino();
        if got != ino {
            let _ = fs::remove_file(dst);
            log::warn!(
                "{}: replaced while being checked; fetching from the store",
                p.display()
            );
            return Ok(false);
        }
        Ok(true)
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK)
    }
}

/// Called by xrestore for each segment it is asked for: record it, and start the
/// prefetcher unless one runs. Failures are logged only: prefetch is an optimisation.
pub fn kick(ini: &Path, data: &Path, name: &str) {
    let r = (|| {
        let p = Prefetch::open(data)?;
        p.set_asked(name)?;
        if spool::held(&p.lock_path()) {
            return Ok(());
        }
        let asker = asker(data).to_string();
        spool::spawn_self(ini, &["xprefetch", &asker], data)
            .map_err(|e| io_err("start the prefetcher in", data)(e))?;
        Ok::<(), super::error::WalmgrError>(())
    })();
    if let Err(e) = r {
        log::warn!("prefetch: {e}");
    }
}

/// The process whose exit ends prefetching: the server recovering `data` (its
/// postmaster.pid), else whoever ran xrestore.
fn asker(data: &Path) -> i32 {
    // postmaster.pid: the pid on the first line, then the data directory, port, ...
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .unwrap_or_else(|| nix::unistd::getppid().as_raw())
}

/// `walmgr <slave.ini> xprefetch <pid>` in the data directory: keep the window after
/// the segment last asked for filled, until idle or `pid` is gone.
pub fn run(store: &WalStore, n: usize, data: &Path, asker: i32) -> Result<()> {
    let p = Prefetch::open(data)?;
    let Some(mut lock) = spool::try_lock(&p.lock_path())? else {
        return Ok(());
    };
    spool::write_pid(&mut lock);
    let mut last_change = Instant::now();
    let mut last_asked = None;
    let mut fetched = 0u64;
    loop {
        if !crate::daemon::pid_alive(asker) {
            log::debug!("prefetch: process {asker} is gone; exiting ({fetched} fetched)");
            break;
        }
        let asked = p.asked();
        if asked != last_asked {
            last_asked = asked.clone();
            last_change = Instant::now();
        }
        let mut did = false;
        if let Some(a) = asked.as_deref().and_then(|a| WalName::parse(a).ok()) {
            // The segment size: the asked segment's, from its meta.
            let seg_size = store.lookup(&a.name).ok().flatten().map_or(0, |m| m.size);
            let win = window(&a, n, seg_size);
            remove_stale(&p, &a.name, &win);
            // In WAL order, up to the first one not archived yet (nothing after it is
            // needed sooner).
            let mut todo = Vec::new();
            for name in &win {
                if p.dir.join(name).exists() {
                    continue;
                }
                match store.lookup(name) {
                    Ok(Some(meta)) => todo.push(meta),
                    _ => break,
                }
            }
            let n = fetch_all(store, &p, &todo);
            fetched += n;
            did = n > 0;
        }
        if did {
            last_change = Instant::now();
        } else if last_change.elapsed() >= IDLE {
            log::debug!("prefetch: idle; exiting ({fetched} fetched)");
            break;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // What is left is not needed any more (recovery ended) or is cheap to fetch again.
    remove_stale(&p, "", &[]);
    Ok(())
}

/// Fetch `todo` into the spool, THREADS at a time, oldest first. Returns how many.
fn fetch_all(store: &WalStore, p: &Prefetch, todo: &[Meta]) -> u64 {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS.min(todo.len()) {
            s.spawn(|| {
                while let Some(meta) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match fetch(store, meta, &p.dir.join(&meta.name)) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            log::debug!("prefetch: {} ready", meta.name);
                        }
                        Err(e) => {
                            log::warn!("prefetch: {}: {e}", meta.name);
                            break;
                        }
                    }
                }
            });
        }
    });
    done.into_inner()
}

fn fetch(store: &WalStore, meta: &Meta, dst: &Path) -> Result<()> {
    // Published whole (temp + rename) but not fsynced: every use hashes it first, so a
    // file torn by a crash is caught and refetched. Then the meta beside it, with the
    // copy's XXH3: xrestore checks the copy by that without asking the store again (a
    // copy without its meta yet is waited for, then fetched from the store).
    let xxh3 = store.fetch_with_xxh3(meta, dst)?;
    let spooled = Meta {
        xxh3: Some(xxh3),
        ..meta.clone()
    };
    let json = serde_json::to_vec(&spooled).expect("serializes");
    let mut mp = dst.as_os_str().to_owned();
    mp.push(META_EXT);
    fsutil::publish_with(Path::new(&mp), 0o600, |f| io::Write::write_all(f, &json))?;
    Ok(())
}

fn remove_stale(p: &Prefetch, asked: &str, win: &[String]) {
    let Ok(rd) = fs::read_dir(&p.dir) else { return };
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let seg = f.strip_suffix(META_EXT).unwrap_or(&f);
        let remove = if f.starts_with(TEMP_PREFIX) {
            super::store::temp_writer_gone(&f)
        } else {
            WalName::parse(seg).is_ok() && stale(seg, asked, win)
        };
        if remove {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skytools::walmgr::codec::Compression;
    use crate::skytools::walmgr::store::Incoming;

    const MB16: u64 = 16 << 20;

    #[test]
    fn the_window_follows_the_asked_segment_on_its_timeline() {
        let a = WalName::parse("0000000200000001000000FE").unwrap();
        assert_eq!(
            window(&a, 3, MB16),
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        assert!(window(&a, 0, MB16).is_empty());
        assert!(window(&WalName::parse("00000002.history").unwrap(), 3, MB16).is_empty());
        // Unknown segment size: nothing.
        assert!(window(&a, 3, 0).is_empty());
        let w = window(&a, 2, MB16);
        let asked = "0000000200000001000000FE";
        assert!(!stale("0000000200000001000000FF", asked, &w));
        assert!(!stale(asked, asked, &w), "being taken");
        assert!(stale("0000000200000001000000FD", asked, &w), "delivered");
        assert!(
            stale("0000000300000001000000FF", asked, &w),
            "another timeline"
        );
        assert!(
            stale("000000020000000200000005", asked, &w),
            "beyond the window"
        );
    }

    #[test]
    fn only_a_copy_matching_the_store_is_delivered() {
        for c in [Compression::Zstd, Compression::None] {
            let d = tempfile::tempdir().unwrap();
            let store = WalStore::new(&crate::skytools::walmgr::config::StorePaths::under(
                d.path(),
            ));
            store.ensure_dirs().unwrap();
            let data = d.path().join("data");
            fs::create_dir_all(&data).unwrap();
            let p = Prefetch::open(&data).unwrap();
            let name = "000000010000000000000007";
            let seg = vec![9u8; 200_000];
            let (m, z) = Meta::build(name, &seg, c, c.default_level(), 1, None).unwrap();
            store.put(&m, Incoming::Local(&z)).unwrap();
            let dst = data.join("RECOVERYXLOG");
            assert!(!p.take(&m, &dst).unwrap(), "nothing spooled");
            // A damaged copy is removed, not delivered.
            let mut bad = seg.clone();
            bad[100] ^= 1;
            fs::write(p.dir.join(name), &bad).unwrap();
            assert!(!p.take(&m, &dst).unwrap());
            assert!(!dst.exists() && !p.dir.join(name).exists());
            // A good one (as the prefetcher writes it) is moved into place.
            fetch(&store, &m, &p.dir.join(name)).unwrap();
            assert!(p.take(&m, &dst).unwrap());
            assert_eq!(fs::read(&dst).unwrap(), seg);
            assert!(!p.dir.join(name).exists());

            // Without the store: against the meta spooled beside the copy.
            fs::remove_file(&dst).unwrap();
            assert!(!p.take_spooled(name, &dst).unwrap(), "nothing spooled");
            fetch(&store, &m, &p.dir.join(name)).unwrap();
            // Spooled with the XXH3 of the copy (a zstd store records none), checked by it.
            let spooled: Meta =
                serde_json::from_slice(&fs::read(p.dir.join(format!("{name}.meta"))).unwrap())
                    .unwrap();
            assert_eq!(m.xxh3.is_some(), c == Compression::None);
            assert_eq!(spooled.xxh3, Some(crate::digest::Xxh3::of(&seg)));
            assert_eq!(
                Meta {
                    xxh3: m.xxh3.clone(),
                    ..spooled
                },
                m
            );
            assert!(p.take_spooled(name, &dst).unwrap());
            assert_eq!(fs::read(&dst).unwrap(), seg);
            assert!(!p.dir.join(format!("{name}.meta")).exists());
            // A copy damaged after it was spooled is caught by its spooled meta.
            fs::remove_file(&dst).unwrap();
            fetch(&store, &m, &p.dir.join(name)).unwrap();
            fs::write(p.dir.join(name), &bad).unwrap();
            assert!(!p.take_spooled(name, &dst).unwrap());
            assert!(!dst.exists() && !p.dir.join(name).exists());
            // A meta naming another segment is not used.
            fetch(&store, &m, &p.dir.join(name)).unwrap();
            let other = "000000010000000000000008";
            fs::rename(
                p.dir.join(format!("{name}.meta")),
                p.dir.join(format!("{other}.meta")),
            )
            .unwrap();
            fs::rename(p.dir.join(name), p.dir.join(other)).unwrap();
            assert!(!p.take_spooled(other, &dst).unwrap());
            assert!(!dst.exists());
            // Stale metas go with their segments.
            fetch(&store, &m, &p.dir.join(name)).unwrap();
            remove_stale(&p, "", &[]);
            assert!(!p.dir.join(format!("{name}.meta")).exists() && !p.dir.join(name).exists());
        }
    }
}
