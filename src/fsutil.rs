//! Durable file writes: the one place that knows the temp + fsync + rename + fsync-dir rule.
//!
//! Anything hostkit accepts (a spooled message, a checkpoint, a WAL segment) is written
//! through here, so a crash at any instant leaves either the old file or the new one
//! under the final name, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file hostkit writes; readers skip names that start with it.
pub const TEMP_PREFIX: &str = ".tmp-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An I/O failure together with the path it happened on, so the one-line error an
/// operator sees always names the file. The io::Error is printed as part of this line
/// and is therefore not also its `source()` (the rule in crate::cli).
#[derive(Debug)]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for PathError {}

impl PathError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PathError {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the failure was the disk (or quota) being full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(e) if e == nix::libc::ENOSPC || e == nix::libc::EDQUOT
        )
    }
}

/// fsync a directory so a rename or unlink inside it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PathError::new("fsync directory", dir, e))
}

/// The directory a path lives in ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary name beside `path`, unique within this host (pid + counter).
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_dir(path).join(format!("{TEMP_PREFIX}{name}.{}.{n}", std::process::id()))
}

/// Write `data` to `path` durably: temp file in the same directory, fsync, rename, fsync dir.
/// On any failure the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PathError> {
    write_atomic_with(path, mode, true, |f| f.write_all(data))
}

/// Like [`write_atomic`] but the caller streams the content; `sync_parent` may be false
/// when the caller will fsync the directory once for several renames.
pub fn write_atomic_with<F>(
    path: &Path,
    mode: u32,
    sync_parent: bool,
    fill: F,
) -> Result<(), PathError>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    replace_with(path, mode, true, fill)?;
    if sync_parent {
        sync_dir(parent_dir(path))?;
    }
    Ok(())
}

/// Temp file + rename, without fsync: a reader never sees a partial file under `path`,
/// but after a crash the file may be missing or empty. Only for a consumer that makes
/// the file durable itself or asks again after a crash: PostgreSQL does both with what
/// restore_command leaves at `%p` (it reads it, then keeps a segment with its own
/// fsync-and-rename, and after a crash restarts recovery and asks again).
pub fn publish_with<F>(path: &Path, mode: u32, fill: F) -> Result<(), PathError>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    replace_with(path, mode, false, fill)
}

fn replace_with<F>(path: &Path, mode: u32, fsync: bool, fill: F) -> Result<(), PathError>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    stage(path, mode, fsync, fill)?.0.commit()
}

/// A temp file beside its destination, written (and fsynced) but not yet renamed into
/// place: [`Staged::commit`] renames it, dropping it removes it. For a writer that must
/// look at what it wrote (a checksum) before deciding whether it replaces anything.
#[must_use = "a staged file is removed unless committed"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Rename into place; the caller fsyncs the directory (once for several renames).
    pub fn commit(mut self) -> Result<(), PathError> {
        fs::rename(&self.tmp, &self.path)
            .map_err(|e| PathError::new("rename into", &self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Fill a new temp file beside `path` and fsync it: the file's data is durable, its name
/// not yet. What `fill` returns comes back with the [`Staged`] file.
pub fn stage_durable<F, T>(path: &Path, mode: u32, fill: F) -> Result<(Staged, T), PathError>
where
    F: FnOnce(&mut File) -> io::Result<T>,
{
    stage(path, mode, true, fill)
}

fn stage<F, T>(path: &Path, mode: u32, fsync: bool, fill: F) -> Result<(Staged, T), PathError>
where
    F: FnOnce(&mut File) -> io::Result<T>,
{
    let tmp = temp_path_for(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| PathError::new("create", &tmp, e))?;
    // From here on a failure removes the temp file (Staged's Drop).
    let staged = Staged {
        tmp,
        path: path.to_path_buf(),
        committed: false,
    };
    let v = fill(&mut f).map_err(|e| PathError::new("write", &staged.tmp, e))?;
    if fsync {
        f.sync_all()
            .map_err(|e| PathError::new("fsync", &staged.tmp, e))?;
    }
    Ok((staged, v))
}

/// A file writer that starts the kernel's writeback of every full megabyte as soon as it
/// is written, so the fsync that makes the file durable has little left to wait for and
/// the disk works while the caller computes the next megabyte (decompression, say).
pub struct EarlyWriteback<'a> {
    file: &'a mut File,
    written: u64,
    started: u64,
}

impl<'a> EarlyWriteback<'a> {
    const CHUNK: u64 = 1 << 20;

    pub fn new(file: &'a mut File) -> Self {
        EarlyWriteback {
            file,
            written: 0,
            started: 0,
        }
    }

    /// fsync the file.
    pub fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= Self::CHUNK {
            use std::os::fd::AsRawFd;
            let len = self.written - self.started;
            // SAFETY: a plain syscall on a descriptor we own, with no memory passed. It is
            // only a hint (the later fsync is what makes the data durable), so its result
            // is ignored; nix has no wrapper for it.
            unsafe {
                nix::libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as i64,
                    len as i64,
                    nix::libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Open `path` without following a symlink in its last component (`O_NOFOLLOW`) and
/// refuse anything but a regular file (`allow_dev_null` also accepts `/dev/null`).
/// For pidfiles, lock files and log files, which root or a daemon user opens in
/// directories other users may write: a symlink planted there must not redirect the
/// write to a victim file. The error reads "is a symbolic link" / "is not a regular
/// file" so the operator sees what was refused.
pub fn open_regular_nofollow(
    path: &Path,
    opts: &mut fs::OpenOptions,
    allow_dev_null: bool,
) -> io::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let file = opts
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a symbolic link (refused: it could point anywhere)",
                )
            } else {
                e
            }
        })?;
    let ft = file.metadata()?.file_type();
    let dev_null = allow_dev_null && ft.is_char_device() && path == Path::new("/dev/null");
    if !ft.is_file() && !dev_null {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file (refused)",
        ));
    }
    Ok(file)
}

/// Create a directory (and parents) with `mode` if missing.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), PathError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| PathError::new("create directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failed_fill_keeps_old_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"old", 0o600).unwrap();
        let err =
            write_atomic_with(&p, 0o600, true, |_| Err(io::Error::other("boom"))).unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn publish_replaces_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("RECOVERYXLOG");
        publish_with(&p, 0o600, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        let err = publish_with(&p, 0o600, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn error_names_the_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"", 0o600).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/"), "{err}");
    }

    #[test]
    fn nofollow_open_refuses_symlinks_and_fifos() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = open_regular_nofollow(
            &link,
            fs::OpenOptions::new().append(true).create(true),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_regular_nofollow(&fifo, fs::OpenOptions::new().read(true), false).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = open_regular_nofollow(
            Path::new("/dev/null"),
            fs::OpenOptions::new().append(true),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        open_regular_nofollow(
            Path::new("/dev/null"),
            fs::OpenOptions::new().append(true),
            true,
        )
        .unwrap();
        open_regular_nofollow(&victim, fs::OpenOptions::new().read(true), false).unwrap();
    }
}
