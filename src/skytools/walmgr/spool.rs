//! The archive side's spool (`spool_dir`, outside the data directory): one "done" record
//! per segment the background pusher has stored, the pusher's lock, and the helper that
//! starts a detached walmgr (pusher or prefetcher).
//!
//! A done record is written only after the store acknowledged the segment (its `put`
//! returned, the store's directory fsynced, or the remote receiver answered), and it
//! names the very file that was read: device, inode, size and mtime of `pg_wal/<name>`.
//! archive_command trusts a record only while `%p` still has that identity, so a record
//! left over from another cluster at the same path (initdb anew, a restored copy), or for
//! a recycled segment file, is never taken for "stored".

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{io_err, Result};
use super::store::Meta;
use crate::fsutil::{self, TEMP_PREFIX};

const DONE_EXT: &str = ".done";
const LOCK: &str = "pusher.lock";

/// What identifies the file a segment was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdent {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdent {
    pub fn of(path: &Path) -> io::Result<FileIdent> {
        let m = fs::metadata(path)?;
        Ok(FileIdent {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

/// One segment the pusher stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub file: FileIdent,
}

#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Spool> {
        fsutil::ensure_dir(dir, 0o700)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    fn done_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{DONE_EXT}"))
    }

    /// Record that `meta` (read from a file of identity `file`) is stored. Durable (temp,
    /// fsync, rename, fsync dir): the caller only calls this once the store said so.
    pub fn record(&self, meta: &Meta, file: FileIdent) -> Result<()> {
        let d = Done {
            name: meta.name.clone(),
            sha256: meta.sha256.clone(),
            size: meta.size,
            file,
        };
        let json = serde_json::to_vec(&d).expect("done record serializes");
        fsutil::write_atomic(&self.done_path(&meta.name), &json, 0o600)?;
        Ok(())
    }

    /// The done record of `name`, if one parses.
    pub fn done(&self, name: &str) -> Option<Done> {
        let text = fs::read(self.done_path(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// True when the pusher stored `name` from the file now at `path` (same identity).
    pub fn stored(&self, name: &str, path: &Path) -> bool {
        match (self.done(name), FileIdent::of(path)) {
            (Some(d), Ok(id)) => d.name == name && d.file == id && d.size == id.size,
            _ => false,
        }
    }

    /// Remove the records of segments PostgreSQL no longer has ready (archived, recycled),
    /// and temp files whose writer is gone.
    pub fn prune(&self, ready: &std::collections::BTreeSet<String>) -> Result<()> {
        let rd = fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for e in rd {
            let e = e.map_err(io_err("list", &self.dir))?;
            let f = e.file_name().to_string_lossy().into_owned();
            let gone = match f.strip_suffix(DONE_EXT) {
                Some(n) if !n.starts_with(TEMP_PREFIX) => !ready.contains(n),
                _ => f.starts_with(TEMP_PREFIX) && super::store::temp_writer_gone(&f),
            };
            if gone {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK)
    }
}

/// Take `path`'s flock without waiting: None while another process holds it. The holder
/// writes its pid into the file (for operators and tests; the flock is what counts).
pub fn try_lock(path: &Path) -> Result<Option<nix::fcntl::Flock<File>>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io_err("lock", path)(e.into())),
    }
}

/// True while some process holds `path`'s flock.
pub fn held(path: &Path) -> bool {
    matches!(try_lock(path), Ok(None))
}

/// Write our pid into a lock file we hold.
pub fn write_pid(lock: &mut File) {
    use std::io::{Seek, Write};
    let _ = lock.set_len(0);
    let _ = lock.seek(io::SeekFrom::Start(0));
    let _ = writeln!(lock, "{}", std::process::id());
}

/// Start `walmgr <ini> <args...>` detached: its own session (setsid, so PostgreSQL's
/// signals to the archiver's or startup process's group do not reach it), stdio on
/// /dev/null (it logs to the ini's logfile), cwd `cwd`. It is this very binary
/// (/proc/self/exe), even if the file was replaced since. Returns the child, which the
/// caller may poll while it waits and otherwise leaves to init.
pub fn spawn_self(ini: &Path, args: &[&str], cwd: &Path) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new("/proc/self/exe");
    c.arg0(super::PROGRAM);
    if log::max_level() >= log::LevelFilter::Debug {
        c.arg("-v");
    }
    c.arg(ini)
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
    }
    c.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skytools::walmgr::codec::Compression;

    #[test]
    fn a_record_counts_only_for_the_file_it_was_made_from() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(&d.path().join("spool")).unwrap();
        let seg = d.path().join("000000010000000000000003");
        fs::write(&seg, b"one").unwrap();
        let name = "000000010000000000000003";
        assert!(!s.stored(name, &seg), "no record yet");
        let (meta, _) = Meta::build(name, b"one", Compression::None, 0, 1, None).unwrap();
        s.record(&meta, FileIdent::of(&seg).unwrap()).unwrap();
        assert!(s.stored(name, &seg));
        // Another file under the same name (a new cluster, a recycled segment): not stored.
        fs::remove_file(&seg).unwrap();
        fs::write(&seg, b"two").unwrap();
        assert!(!s.stored(name, &seg));
        // Records of segments no longer ready go.
        s.prune(&Default::default()).unwrap();
        assert!(s.done(name).is_none());
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let held_here = try_lock(&p).unwrap().unwrap();
        // flock locks belong to the open file description: a second open conflicts
        // even within one process.
        assert!(try_lock(&p).unwrap().is_none());
        assert!(held(&p));
        drop(held_here);
        assert!(!held(&p));
    }
}
