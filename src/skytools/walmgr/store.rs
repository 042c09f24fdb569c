//! The WAL half of the store: `completed_wals/<name>[.gz|.zst]` plus `<name>.meta`.
//!
//! A file counts as archived only when its `.meta` exists and the data file beside it
//! has the size the meta records. The data file is renamed into place first and the
//! meta second, and the directory is fsynced once after both, before anyone is told
//! "stored": a crash at any point leaves either a complete, acknowledged pair, or
//! something that is not acknowledged and may be written again.
//!
//! The same store may live in S3 (`slave = s3://bucket/prefix`): [`WalStore`] then
//! hands each call to [`super::s3store`], which keeps these rules with the service's
//! conditional writes; callers do not tell the two apart.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::codec::Compression;
use super::error::{check_digest, check_sum, io_err, Result, WalmgrError};
use super::s3store::S3Wal;
use super::walname::{Kind, WalName};
use crate::digest::{copy_hashing_aside, Algo, HashReader, HashWriter, Sums};
use crate::fsutil::{self, TEMP_PREFIX};

pub const META_EXT: &str = ".meta";

/// How much of a stored file's reading is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Both SHA-256 sums (verify).
    Both,
    /// The stored bytes' SHA-256; the decompressed ones by the codec's checksum where
    /// it has one, else by SHA-256 too (handing a segment to PostgreSQL).
    Delivery,
}

/// What the store records beside each stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    /// Uncompressed size and sha256: the identity of the file PostgreSQL archived.
    pub size: u64,
    pub sha256: String,
    pub compression: Compression,
    /// Size and sha256 of the stored (compressed) file.
    pub stored_size: u64,
    pub stored_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<u64>,
    pub archived_at: String,
    /// XXH3-64 of the original bytes, recorded when an uncompressed file is archived:
    /// delivery checks it instead of the SHA-256 (a tenth of the cost for 16 MiB;
    /// compressed files are checked by their codec's checksum); `verify` checks the
    /// SHA-256. Metas written before it (or by a remote receiver) have none and are
    /// checked by SHA-256. The prefetcher records it for every copy it spools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
}

impl Meta {
    /// Compress `data` (on `threads` workers: [`Compression::compress`]) and describe it;
    /// returns the meta and the bytes to store.
    pub fn build<'a>(
        name: &str,
        data: &'a [u8],
        compression: Compression,
        level: i32,
        threads: u32,
        system_identifier: Option<u64>,
    ) -> io::Result<(Meta, Cow<'a, [u8]>)> {
        let stored = compression.compress(level, threads, data)?;
        let sums = Sums::of(data, compression == Compression::None);
        let compressed = match &stored {
            Cow::Borrowed(_) => None,
            Cow::Owned(z) => Some(&z[..]),
        };
        let meta = Meta::describe(name, sums, compression, compressed, system_identifier);
        Ok((meta, stored))
    }

    /// [`Meta::build`] from a file, in one pass through reused buffers: each chunk goes
    /// to the compressor, whose zstd workers compress earlier chunks while this thread
    /// reads the next, and to a hashing thread ([`copy_hashing_aside`]; reading the whole
    /// segment first cost a fresh 16 MiB of page faults, and hashing on this thread
    /// left the second core idle). `check` sees the first chunk and the file's length.
    #[allow(clippy::too_many_arguments)]
    pub fn build_from_file(
        name: &str,
        path: &Path,
        src: &mut File,
        compression: Compression,
        level: i32,
        threads: u32,
        check: impl FnOnce(&[u8], u64) -> Result<()>,
        system_identifier: Option<u64>,
    ) -> Result<(Meta, Vec<u8>)> {
        let (len, buf, first) = read_start(src, path, 1 << 20, check)?;
        let compressing = |e: io::Error| WalmgrError::Internal(format!("{name}: compressing: {e}"));
        let cap = match compression {
            Compression::None => len as usize,
            _ => (len / 4) as usize,
        };
        let mut enc = compression
            .encoder(level, threads, Vec::with_capacity(cap))
            .map_err(compressing)?;
        let mut read_failed = false;
        let sums = copy_hashing_aside(
            buf,
            first,
            |b| read_retrying(src, b).inspect_err(|_| read_failed = true),
            &mut enc,
            |_| Ok(()),
            compression == Compression::None,
        )
        .map_err(|e| match read_failed {
            true => io_err("read", path)(e),
            false => compressing(e),
        })?;
        if sums.bytes != len {
            return Err(changed_while_read(path, len, sums.bytes));
        }
        let stored = enc.finish().map_err(compressing)?;
        let compressed = (compression != Compression::None).then_some(&stored[..]);
        let meta = Meta::describe(name, sums, compression, compressed, system_identifier);
        Ok((meta, stored))
    }

    /// The meta of a file whose original bytes have `sums`, stored as `compressed` (None:
    /// stored as they are).
    fn describe(
        name: &str,
        sums: Sums,
        compression: Compression,
        compressed: Option<&[u8]>,
        system_identifier: Option<u64>,
    ) -> Meta {
        let (stored_size, stored_sha256) = match compressed {
            None => (sums.bytes, sums.sha256.clone()),
            Some(z) => (z.len() as u64, crate::digest::sha256_hex(z)),
        };
        Meta {
            name: name.to_string(),
            size: sums.bytes,
            sha256: sums.sha256,
            compression,
            stored_size,
            stored_sha256,
            system_identifier,
            archived_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            xxh3: sums.xxh3,
        }
    }
}

fn changed_while_read(path: &Path, len: u64, n: u64) -> WalmgrError {
    WalmgrError::BadWal {
        path: path.to_path_buf(),
        reason: format!("changed while it was read ({len} bytes, then {n}); not archived"),
    }
}

/// The read size of [`WalStore::put_streamed`]: small enough that the hashing thread
/// is never far behind the copy (it finishes soon after the last write; 1 MiB reads
/// left it up to 4 MiB to catch up on), large enough for the header check.
const STREAM_CHUNK: usize = 256 << 10;

/// One read, retried on EINTR.
fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The start of reading a file to store: its length and a buffer of `chunk` bytes
/// holding its first ones (how many: the third value), which `check` has seen with the
/// length.
fn read_start(
    src: &mut File,
    path: &Path,
    chunk: usize,
    check: impl FnOnce(&[u8], u64) -> Result<()>,
) -> Result<(u64, Vec<u8>, usize)> {
    let len = src.metadata().map_err(io_err("stat", path))?.len();
    let mut buf = vec![0u8; chunk];
    let first = read_full(src, &mut buf).map_err(io_err("read", path))?;
    check(&buf[..first], len)?;
    Ok((len, buf, first))
}

/// Read until `buf` is full or the file ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The bytes to store: built in this process by [`Meta::build`] (already hashed), or
/// arriving from elsewhere (hashed on the way in and checked against the meta).
pub enum Incoming<'a> {
    Local(&'a [u8]),
    Remote(&'a mut dyn Read),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The same contents were already stored (a retry after a crash): nothing written.
    AlreadyStored,
    /// The same contents were stored but the stored file was damaged: rewritten.
    Repaired,
}

#[derive(Debug, Clone)]
pub struct WalStore {
    /// The directory (for an S3 store: its `s3://bucket/prefix`, for messages).
    pub dir: PathBuf,
    pub partial_dir: PathBuf,
    s3: Option<std::sync::Arc<S3Wal>>,
}

impl WalStore {
    pub fn new(paths: &super::config::StorePaths) -> WalStore {
        WalStore {
            dir: paths.completed_wals.clone(),
            partial_dir: paths.partial_wals.clone(),
            s3: paths
                .s3
                .as_ref()
                .map(|c| std::sync::Arc::new(S3Wal::new(c, &paths.completed_wals))),
        }
    }

    /// A directory store at `dir` (tests, tools).
    pub fn local(dir: PathBuf, partial_dir: PathBuf) -> WalStore {
        WalStore {
            dir,
            partial_dir,
            s3: None,
        }
    }

    pub fn is_s3(&self) -> bool {
        self.s3.is_some()
    }

    pub fn data_path(&self, name: &str, c: Compression) -> PathBuf {
        self.dir.join(format!("{name}{}", c.ext()))
    }

    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{META_EXT}"))
    }

    /// The committed meta of `name`, if it is stored. A meta whose data file is missing or
    /// short was never acknowledged (crash between the renames and the directory fsync).
    pub fn lookup(&self, name: &str) -> Result<Option<Meta>> {
        if let Some(s3) = &self.s3 {
            return s3.lookup(name);
        }
        let mp = self.meta_path(name);
        let text = match fs::read(&mp) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &mp)(e)),
        };
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| WalmgrError::Corrupt {
            path: mp.clone(),
            reason: format!("unreadable meta: {e}"),
        })?;
        let dp = self.data_path(name, meta.compression);
        match fs::metadata(&dp) {
            Ok(m) if m.len() == meta.stored_size => Ok(Some(meta)),
            Ok(m) => {
                log::warn!(
                    "{}: {} bytes, meta says {}: not counted as archived",
                    dp.display(),
                    m.len(),
                    meta.stored_size
                );
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::warn!(
                    "{}: missing, meta without data: not counted as archived",
                    dp.display()
                );
                Ok(None)
            }
            Err(e) => Err(io_err("stat", &dp)(e)),
        }
    }

    /// Create the directories; for an S3 store, check that the bucket answers.
    pub fn ensure_dirs(&self) -> Result<()> {
        if let Some(s3) = &self.s3 {
            return s3.ensure();
        }
        fsutil::ensure_dir(&self.dir, 0o700)?;
        fsutil::ensure_dir(&self.partial_dir, 0o700)?;
        Ok(())
    }

    /// The S3 side of a store in S3.
    pub fn s3(&self) -> Option<&S3Wal> {
        self.s3.as_deref()
    }

    /// Does the store hold `name` archived (a meta and its data)? A directory store
    /// answers from the meta's presence, as xarchive's commit makes it; S3 from the
    /// meta and a HEAD of its data ([`S3Wal::lookup`]).
    pub fn holds(&self, name: &str) -> Result<bool> {
        match &self.s3 {
            Some(s3) => Ok(s3.lookup(name)?.is_some()),
            None => Ok(self.meta_path(name).exists()),
        }
    }

    /// When `name` was committed: its meta's mtime in a directory store; in S3 the
    /// meta's own `archived_at` (an object's Last-Modified is the service's clock and is
    /// not read here). None when the store does not hold it.
    pub fn committed_at(&self, name: &str) -> Result<Option<std::time::SystemTime>> {
        if let Some(s3) = &self.s3 {
            let Some(meta) = s3.lookup(name)? else {
                return Ok(None);
            };
            return humantime::parse_rfc3339(&meta.archived_at)
                .map(Some)
                .map_err(|e| WalmgrError::Corrupt {
                    path: self.meta_path(name),
                    reason: format!("archived_at {:?}: {e}", meta.archived_at),
                });
        }
        match fs::metadata(self.meta_path(name)).and_then(|m| m.modified()) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &self.meta_path(name))(e)),
        }
    }

    /// Store `stored` (already compressed as `meta` says). Refuses to replace different
    /// contents; verifies the bytes received against the meta before committing.
    pub fn put(&self, meta: &Meta, stored: Incoming) -> Result<PutOutcome> {
        if let Some(s3) = &self.s3 {
            return s3.put(meta, stored);
        }
        WalName::parse(&meta.name)?;
        // From the check to the commit nobody else may write or remove this name (two
        // archivers sharing a store, a hung remote receiver beside its retry, a purge).
        let _lock = self.lock()?;
        let outcome = self.against_stored(meta)?;
        if outcome == PutOutcome::AlreadyStored {
            if let Incoming::Remote(r) = stored {
                io::copy(r, &mut io::sink()).ok();
            }
            return Ok(outcome);
        }
        if !self.dir.is_dir() {
            return Err(io_err("open store directory", &self.dir)(io::Error::from(
                io::ErrorKind::NotFound,
            )));
        }
        let dp = self.data_path(&meta.name, meta.compression);
        let mut received = None;
        fsutil::write_atomic_with(&dp, 0o600, false, |f| {
            let r = match stored {
                Incoming::Local(bytes) => return fsutil::EarlyWriteback::new(f).write_all(bytes),
                Incoming::Remote(r) => r,
            };
            let mut w = HashWriter::new(io::BufWriter::with_capacity(
                1 << 20,
                fsutil::EarlyWriteback::new(f),
            ));
            io::copy(r, &mut w)?;
            let (sha, n, mut inner) = w.finish();
            inner.flush()?;
            if sha != meta.stored_sha256 || n != meta.stored_size {
                received = Some((sha, n));
                return Err(io::Error::other(
                    "received data does not match its checksum",
                ));
            }
            Ok(())
        })
        .map_err(|e| match received.take() {
            Some((sha, n)) => WalmgrError::Corrupt {
                path: dp.clone(),
                reason: format!(
                    "received {n} bytes with sha256 {sha}, sender said {} bytes with sha256 {}",
                    meta.stored_size, meta.stored_sha256
                ),
            },
            None => e.into(),
        })?;
        self.commit_meta(meta)?;
        Ok(outcome)
    }

    /// Under the store lock: what storing `meta` would be, given what the store holds
    /// under its name (a different file is refused, never overwritten).
    fn against_stored(&self, meta: &Meta) -> Result<PutOutcome> {
        let Some(old) = self.lookup(&meta.name)? else {
            return Ok(PutOutcome::Stored);
        };
        if old.sha256 != meta.sha256 || old.size != meta.size {
            return Err(WalmgrError::Conflict {
                name: meta.name.clone(),
                stored: old.sha256,
                stored_size: old.size,
                new: meta.sha256.clone(),
                new_size: meta.size,
            });
        }
        match self.check_stored(&old) {
            Ok(()) => Ok(PutOutcome::AlreadyStored),
            Err(e) => {
                log::warn!("{e}; rewriting it from the identical new copy");
                Ok(PutOutcome::Repaired)
            }
        }
    }

    /// The commit of a put, once the data file is in place: the meta, then one fsync of
    /// the directory for both renames.
    fn commit_meta(&self, meta: &Meta) -> Result<()> {
        let mp = self.meta_path(&meta.name);
        let json = serde_json::to_vec(meta).expect("meta serializes");
        fsutil::write_atomic_with(&mp, 0o600, false, |f| f.write_all(&json))?;
        fsutil::sync_dir(&self.dir)?;
        Ok(())
    }

    /// Store an uncompressed WAL file into a local store in one streaming pass: `src` is
    /// copied in [`STREAM_CHUNK`]s into a staged file in the store, whose writeback
    /// starts at once, through a few reused buffers (reading a 16 MiB segment into a
    /// fresh buffer first cost more in page faults than hashing it) and hashed on a
    /// second thread as it goes ([`copy_hashing_aside`]). `check`
    /// sees the first chunk and the file's length before anything is written; the
    /// meta is built from the hash; then the same check against the stored copy and
    /// commit as [`Self::put`].
    pub fn put_streamed(
        &self,
        name: &str,
        path: &Path,
        src: &mut File,
        check: impl FnOnce(&[u8], u64) -> Result<()>,
        system_identifier: Option<u64>,
    ) -> Result<(Meta, PutOutcome)> {
        debug_assert!(self.s3.is_none(), "put_streamed is for a local store");
        WalName::parse(name)?;
        let (len, buf, first) = read_start(src, path, STREAM_CHUNK, check)?;
        if !self.dir.is_dir() {
            return Err(io_err("open store directory", &self.dir)(io::Error::from(
                io::ErrorKind::NotFound,
            )));
        }
        let dp = self.data_path(name, Compression::None);
        // A failed read of `src` surfaces as a write error on the temp file: say which.
        let mut read_failed = false;
        let staged = fsutil::stage_durable(&dp, 0o600, |f| {
            let mut out = fsutil::EarlyWriteback::new(f);
            let read = |b: &mut [u8]| read_retrying(src, b).inspect_err(|_| read_failed = true);
            // The fsync overlaps the end of the hashing (stage_durable's own is then
            // cheap: nothing is left to write).
            copy_hashing_aside(buf, first, read, &mut out, |o| o.sync_all(), true)
        });
        let (staged, sums) = match staged {
            Err(e) if read_failed => return Err(io_err("read", path)(e.source)),
            r => r?,
        };
        if sums.bytes != len {
            return Err(changed_while_read(path, len, sums.bytes));
        }
        let meta = Meta::describe(name, sums, Compression::None, None, system_identifier);
        let _lock = self.lock()?;
        let outcome = self.against_stored(&meta)?;
        if outcome == PutOutcome::AlreadyStored {
            return Ok((meta, outcome));
        }
        staged.commit()?;
        self.commit_meta(&meta)?;
        Ok((meta, outcome))
    }

    /// The store's writer lock: an exclusive flock on the directory itself.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<File>> {
        let d = File::open(&self.dir).map_err(io_err("open store directory", &self.dir))?;
        nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("lock", &self.dir)(e.into()))
    }

    /// Check the stored file's own checksum (cheap: the compressed bytes).
    /// For an S3 store: what the service says it holds (size and checksums).
    pub fn check_stored(&self, meta: &Meta) -> Result<()> {
        if let Some(s3) = &self.s3 {
            return s3.check_stored(meta);
        }
        let dp = self.data_path(&meta.name, meta.compression);
        let mut w = HashWriter::new(io::sink());
        let mut f = File::open(&dp).map_err(io_err("open", &dp))?;
        io::copy(&mut f, &mut w).map_err(io_err("read", &dp))?;
        let (sha, n, _) = w.finish();
        check_digest(
            &dp,
            "stored file",
            (&sha, n),
            "its meta",
            (&meta.stored_sha256, meta.stored_size),
        )
    }

    /// Decompress a stored file into `out`, checking both checksums. One streaming
    /// pass in small buffers: the stored bytes are hashed as they are read, the original
    /// ones as they are written, and the caller discards `out` unless this returns Ok.
    pub fn read_verified(&self, meta: &Meta, out: &mut dyn Write) -> Result<()> {
        self.read_checked(meta, out, Check::Both)
    }

    /// As [`Self::read_verified`]; `Check::Delivery` leaves the SHA-256 of the
    /// decompressed bytes to the codec's own content checksum where it has one (gzip's
    /// CRC-32, a zstd frame's XXH64) and checks their size: the stored bytes' SHA-256
    /// already proves they are the ones the archiver compressed from the original.
    pub fn read_checked(&self, meta: &Meta, out: &mut dyn Write, check: Check) -> Result<()> {
        let (dp, f): (PathBuf, Box<dyn Read + Send>) = match &self.s3 {
            Some(s3) => s3.open(meta)?,
            None => {
                let dp = self.data_path(&meta.name, meta.compression);
                let f = File::open(&dp).map_err(io_err("open", &dp))?;
                (dp, Box::new(f))
            }
        };
        let mut reader = io::BufReader::with_capacity(1 << 18, f);
        // An uncompressed file is delivered checked by its XXH3 where its meta has one.
        let (algo, want_stored) = match (check, meta.compression, &meta.xxh3) {
            (Check::Delivery, Compression::None, Some(x)) => (Algo::Xxh3, x),
            _ => (Algo::Sha256, &meta.stored_sha256),
        };
        let by_codec = check == Check::Delivery
            && io::BufRead::fill_buf(&mut reader)
                .is_ok_and(|head| meta.compression.checks_content(head));
        let mut stored = HashReader::with(algo, reader);
        let mut out = TrackWrites {
            inner: out,
            failed: false,
        };
        let mut w = HashWriter::new(&mut out);
        let mut written = 0u64;
        let copied = match meta.compression {
            // The stored bytes are the original ones: hashing them once is enough.
            Compression::None => io::copy(&mut stored, w.inner_mut()).map(|_| ()),
            c if by_codec => c
                .decoder(&mut stored)
                .and_then(|mut dec| io::copy(&mut dec, w.inner_mut()))
                .map(|n| written = n),
            c => c
                .decoder(&mut stored)
                .and_then(|mut dec| io::copy(&mut dec, &mut w))
                .map(|_| ()),
        };
        let (stored_sum, stored_n) = stored.finish();
        let (mut sha, mut n, _) = w.finish();
        if meta.compression == Compression::None {
            // The same bytes: their SHA-256 is the stored one (an XXH3 check has none).
            sha = match algo {
                Algo::Sha256 => stored_sum.clone(),
                Algo::Xxh3 => meta.sha256.clone(),
            };
            n = stored_n;
        } else if by_codec {
            // The decoder checked the content; the size is checked here.
            (sha, n) = (meta.sha256.clone(), written);
        }
        if let Err(e) = copied {
            if out.failed {
                return Err(WalmgrError::Output {
                    what: format!("{}: writing the restored file", meta.name),
                    err: e,
                });
            }
            return Err(WalmgrError::Corrupt {
                path: dp,
                reason: format!("cannot read or decompress it: {e}"),
            });
        }
        check_sum(
            &dp,
            "stored file",
            algo,
            (&stored_sum, stored_n),
            "its meta",
            (want_stored, meta.stored_size),
        )?;
        check_digest(
            &dp,
            "decompressed data",
            (&sha, n),
            "its meta",
            (&meta.sha256, meta.size),
        )
    }

    /// Write `name`'s original bytes to `dst`; nothing appears under `dst` unless every
    /// check passed. `dst` is restore_command's `%p`: published whole (temp + rename) but not fsynced,
    /// as PostgreSQL fsyncs a segment it keeps and asks again after a crash
    /// (fsutil::publish_with); pgBackRest's archive-get does not fsync either.
    pub fn fetch(&self, meta: &Meta, dst: &Path) -> Result<()> {
        self.fetch_hashing(meta, dst, false).map(|_| ())
    }

    /// [`Self::fetch`], and the XXH3-64 of the bytes delivered: the meta's own where it
    /// records one, else computed as they are written (the prefetcher notes it beside
    /// its copy, which xrestore then checks at a tenth of a SHA-256's cost).
    pub fn fetch_with_xxh3(&self, meta: &Meta, dst: &Path) -> Result<String> {
        self.fetch_hashing(meta, dst, meta.xxh3.is_none())
            .map(|sum| sum.or_else(|| meta.xxh3.clone()).expect("one of the two"))
    }

    fn fetch_hashing(&self, meta: &Meta, dst: &Path, xxh3: bool) -> Result<Option<String>> {
        let (mut failure, mut sum) = (None, None);
        let r = fsutil::publish_with(dst, 0o600, |f| {
            let bw = io::BufWriter::with_capacity(1 << 20, f);
            let mut w = HashWriter::with(Algo::Xxh3, bw);
            let out: &mut dyn Write = match xxh3 {
                true => &mut w,
                false => w.inner_mut(),
            };
            if let Err(e) = self.read_checked(meta, out, Check::Delivery) {
                failure = Some(e);
                return Err(io::Error::other("verification failed"));
            }
            let (x, _, mut bw) = w.finish();
            sum = xxh3.then_some(x);
            bw.flush()
        });
        match (r, failure) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(sum),
        }
    }

    /// An uncompressed file under `name` with no meta: a Skytools archive taken over by
    /// walmgr (or a write of ours interrupted before its meta, complete since it was fsynced
    /// before its rename). Served without a checksum.
    pub fn legacy(&self, name: &str) -> Option<PathBuf> {
        if self.s3.is_some() {
            return None;
        }
        let p = self.data_path(name, Compression::None);
        (p.is_file() && !self.meta_path(name).exists()).then_some(p)
    }

    /// WAL-named files without a meta, sorted.
    pub fn list_legacy(&self) -> Result<Vec<String>> {
        if self.s3.is_some() {
            return Ok(Vec::new());
        }
        let names = self.file_names()?;
        let mut out: Vec<String> = names
            .iter()
            .filter(|n| WalName::parse(n).is_ok())
            .filter(|n| !names.contains(&format!("{n}{META_EXT}")))
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }

    /// Names with a `.meta` (committed or not: `lookup` decides), sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        if let Some(s3) = &self.s3 {
            return s3.list();
        }
        let mut out: Vec<String> = self
            .file_names()?
            .iter()
            .filter_map(|f| f.strip_suffix(META_EXT))
            .filter(|n| !n.starts_with(TEMP_PREFIX))
            .map(str::to_string)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every name in the store directory (none when it does not exist yet).
    fn file_names(&self) -> Result<std::collections::HashSet<String>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(io_err("list", &self.dir)(e)),
        };
        rd.map(|ent| {
            ent.map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(io_err("list", &self.dir))
        })
        .collect()
    }

    /// Remove every file older than `cutoff` (segments, partials, backup history files;
    /// never timeline history files, which recovery needs to follow timelines). The meta
    /// goes first, so an interrupted purge leaves files that are simply not archived.
    pub fn purge_before(&self, cutoff: &WalName) -> Result<usize> {
        if let Some(s3) = &self.s3 {
            return s3.purge_before(cutoff);
        }
        let _lock = self.lock()?;
        let mut removed = 0;
        for name in self.list()? {
            let Ok(w) = WalName::parse(&name) else {
                continue;
            };
            if w.kind == Kind::History || w.position() >= cutoff.position() {
                continue;
            }
            self.remove(&name)?;
            removed += 1;
        }
        if removed > 0 {
            fsutil::sync_dir(&self.dir)?;
            log::info!(
                "removed {removed} archived files older than {}",
                cutoff.name
            );
        }
        Ok(removed)
    }

    fn remove(&self, name: &str) -> Result<()> {
        let mp = self.meta_path(name);
        let rm = |p: &Path| match fs::remove_file(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", p)(e)),
        };
        rm(&mp)?;
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            rm(&self.data_path(name, c))?;
        }
        Ok(())
    }

    /// Leftovers: temp files whose writer is gone. Files without a meta stay: they may be
    /// a Skytools archive walmgr took over (xrestore still serves those).
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        if let Some(s3) = &self.s3 {
            return s3.cleanup();
        }
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        for dir in [&self.dir, &self.partial_dir] {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", dir)(e)),
            };
            for ent in rd {
                let ent = ent.map_err(io_err("list", dir))?;
                let fname = ent.file_name().to_string_lossy().into_owned();
                let path = ent.path();
                let stale = fname.starts_with(TEMP_PREFIX) && temp_writer_gone(&fname);
                if stale {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    removed.push(path);
                }
            }
            if !removed.is_empty() {
                fsutil::sync_dir(dir)?;
            }
        }
        Ok(removed)
    }
}

/// Remembers whether an error came from the destination (disk full) rather than from
/// reading or decompressing the stored file.
struct TrackWrites<'a> {
    inner: &'a mut dyn Write,
    failed: bool,
}

impl Write for TrackWrites<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed = true)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Temp names carry the writer's pid (`.tmp-<name>.<pid>.<n>`): stale once it is dead.
pub fn temp_writer_gone(fname: &str) -> bool {
    let mut parts = fname.rsplit('.');
    let _n = parts.next();
    match parts.next().and_then(|p| p.parse::<i32>().ok()) {
        Some(pid) => !crate::daemon::pid_alive(pid),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000003";

    fn store() -> (tempfile::TempDir, WalStore) {
        let d = tempfile::tempdir().unwrap();
        let s = WalStore::local(d.path().join("c"), d.path().join("p"));
        s.ensure_dirs().unwrap();
        (d, s)
    }

    fn put(s: &WalStore, name: &str, data: &[u8], c: Compression) -> Result<PutOutcome> {
        let (m, z) = Meta::build(name, data, c, c.default_level(), 1, None).unwrap();
        s.put(&m, Incoming::Local(&z))
    }

    #[test]
    fn a_file_built_in_one_pass_matches_the_buffer_built_meta() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(SEG);
        // Over two read chunks, compressible but not constant.
        let data: Vec<u8> = (0..2_500_000u32)
            .map(|i| ((i % 251) ^ (i / 4096)) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for threads in [1, 2] {
                let mut seen = None;
                let mut f = File::open(&path).unwrap();
                let (m, stored) = Meta::build_from_file(
                    SEG,
                    &path,
                    &mut f,
                    c,
                    c.default_level(),
                    threads,
                    |start, len| {
                        seen = Some((start.len(), len));
                        Ok(())
                    },
                    Some(7),
                )
                .unwrap();
                assert_eq!(seen, Some((1 << 20, data.len() as u64)), "{c:?}");
                let (want, _) = Meta::build(SEG, &data, c, c.default_level(), 1, Some(7)).unwrap();
                assert_eq!(
                    (m.size, &m.sha256, m.system_identifier),
                    (want.size, &want.sha256, Some(7))
                );
                assert_eq!(m.stored_size, stored.len() as u64);
                assert_eq!(m.stored_sha256, crate::digest::sha256_hex(&stored), "{c:?}");
                assert_eq!(
                    &*c.decompress(&stored, m.size).unwrap(),
                    &data[..],
                    "{c:?} x{threads}"
                );
                if c == Compression::Zstd {
                    assert!(c.checks_content(&stored));
                }
            }
        }
        // The header check's refusal is the build's.
        let mut f = File::open(&path).unwrap();
        let r = Meta::build_from_file(
            SEG,
            &path,
            &mut f,
            Compression::Zstd,
            3,
            2,
            |_, _| {
                Err(WalmgrError::BadWal {
                    path: path.clone(),
                    reason: "no".into(),
                })
            },
            None,
        );
        assert!(matches!(r, Err(WalmgrError::BadWal { .. })));
    }

    #[test]
    fn put_is_idempotent_and_refuses_different_contents() {
        let (_d, s) = store();
        let data = vec![5u8; 100_000];
        assert_eq!(
            put(&s, SEG, &data, Compression::Zstd).unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            put(&s, SEG, &data, Compression::Gzip).unwrap(),
            PutOutcome::AlreadyStored
        );
        let e = put(&s, SEG, &[6u8; 100_000], Compression::Zstd).unwrap_err();
        assert!(matches!(e, WalmgrError::Conflict { .. }), "{e}");
        let m = s.lookup(SEG).unwrap().unwrap();
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("RECOVERYXLOG");
        s.fetch(&m, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), data);
    }

    fn put_streamed(s: &WalStore, dir: &Path, data: &[u8]) -> Result<(Meta, PutOutcome)> {
        let src = dir.join("src");
        fs::write(&src, data).unwrap();
        let mut f = File::open(&src).unwrap();
        s.put_streamed(
            SEG,
            &src,
            &mut f,
            |start, len| {
                let chunk = STREAM_CHUNK as u64;
                assert_eq!((start.len() as u64).min(chunk), len.min(chunk));
                match start.first() {
                    Some(0xEE) => Err(WalmgrError::BadWal {
                        path: src.clone(),
                        reason: "refused by its header".into(),
                    }),
                    _ => Ok(()),
                }
            },
            Some(42),
        )
    }

    /// Names in the store directory other than the segment and its meta.
    fn strays(s: &WalStore) -> Vec<String> {
        fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != SEG && n != &format!("{SEG}{META_EXT}"))
            .collect()
    }

    #[test]
    fn streamed_put_stores_once_and_refuses_different_contents() {
        let (d, s) = store();
        // Over a megabyte, not a multiple of the buffer: the copy loop's edges.
        let data: Vec<u8> = (0..(3 << 20) + 4097).map(|i| (i % 253) as u8).collect();
        let (m, o) = put_streamed(&s, d.path(), &data).unwrap();
        assert_eq!(o, PutOutcome::Stored);
        assert_eq!(
            (m.size, m.sha256.as_str()),
            (data.len() as u64, crate::digest::sha256_hex(&data).as_str())
        );
        assert_eq!(
            (
                m.compression,
                m.stored_size,
                &m.stored_sha256,
                m.system_identifier
            ),
            (Compression::None, m.size, &m.sha256, Some(42))
        );
        assert_eq!(m.xxh3, Some(crate::digest::Xxh3::of(&data)));
        assert_eq!(s.lookup(SEG).unwrap().unwrap(), m);
        let out = d.path().join("restored");
        s.fetch(&m, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), data);
        // A retry after a crash: nothing written; the identical file by the buffered path too.
        assert_eq!(
            put_streamed(&s, d.path(), &data).unwrap().1,
            PutOutcome::AlreadyStored
        );
        assert_eq!(
            put(&s, SEG, &data, Compression::None).unwrap(),
            PutOutcome::AlreadyStored
        );
        let mut other = data.clone();
        other[5 << 19] ^= 1;
        let e = put_streamed(&s, d.path(), &other).unwrap_err();
        assert!(matches!(e, WalmgrError::Conflict { .. }), "{e}");
        assert_eq!(fs::read(s.data_path(SEG, Compression::None)).unwrap(), data);
        assert!(strays(&s).is_empty(), "{:?}", strays(&s));
        // A damaged stored copy is rewritten from the identical new one.
        fs::write(s.data_path(SEG, Compression::None), &other).unwrap();
        assert_eq!(
            put_streamed(&s, d.path(), &data).unwrap().1,
            PutOutcome::Repaired
        );
        assert_eq!(fs::read(s.data_path(SEG, Compression::None)).unwrap(), data);
    }

    #[test]
    fn streamed_put_refused_by_its_check_writes_nothing() {
        let (d, s) = store();
        let e = put_streamed(&s, d.path(), &[0xEE; 5000]).unwrap_err();
        assert!(e.to_string().contains("refused by its header"), "{e}");
        assert!(s.lookup(SEG).unwrap().is_none());
        assert!(strays(&s).is_empty(), "{:?}", strays(&s));
        // An empty file is stored as what it is (the header check is the caller's).
        assert_eq!(put_streamed(&s, d.path(), &[]).unwrap().0.size, 0);
    }

    #[test]
    fn corruption_is_detected_and_nothing_is_written() {
        // gzip (its CRC-32), an uncompressed file by its XXH3, and one whose meta has
        // none (written before it was recorded) by its SHA-256.
        for (c, xxh3) in [
            (Compression::Gzip, false),
            (Compression::None, true),
            (Compression::None, false),
        ] {
            let (_d, s) = store();
            put(&s, SEG, &[1u8; 50_000], c).unwrap();
            let mut m = s.lookup(SEG).unwrap().unwrap();
            assert_eq!(m.xxh3.is_some(), c == Compression::None, "{c:?}");
            if !xxh3 {
                m.xxh3 = None;
                fs::write(s.meta_path(SEG), serde_json::to_vec(&m).unwrap()).unwrap();
                assert_eq!(s.lookup(SEG).unwrap().unwrap(), m);
            }
            let out = tempfile::tempdir().unwrap();
            let dst = out.path().join("x");
            s.fetch(&m, &dst).unwrap();
            assert_eq!(fs::read(&dst).unwrap(), [1u8; 50_000], "{c:?}");
            fs::remove_file(&dst).unwrap();
            let dp = s.data_path(SEG, c);
            let mut bytes = fs::read(&dp).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(&dp, &bytes).unwrap();
            let e = s.fetch(&m, &dst).unwrap_err();
            assert!(matches!(e, WalmgrError::Corrupt { .. }), "{c:?}: {e}");
            let algo = if xxh3 { "xxh3" } else { "sha256" };
            assert!(e.to_string().contains(algo), "{c:?}: {e}");
            assert!(!dst.exists());
            assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
            // The identical segment archived again repairs the damaged copy.
            assert_eq!(
                put(&s, SEG, &[1u8; 50_000], c).unwrap(),
                PutOutcome::Repaired,
                "{c:?}"
            );
            s.fetch(&s.lookup(SEG).unwrap().unwrap(), &dst).unwrap();
            assert_eq!(fs::read(&dst).unwrap(), [1u8; 50_000], "{c:?}");
            fs::remove_file(&dst).unwrap();
            // A truncated copy is refused too.
            fs::write(&dp, &bytes[..mid]).unwrap();
            let e = s.fetch(&m, &dst).unwrap_err();
            assert!(matches!(e, WalmgrError::Corrupt { .. }), "{c:?}: {e}");
            assert!(!dst.exists());
        }
    }

    #[test]
    fn writers_wait_for_the_store_lock() {
        let (_d, s) = store();
        let held = s.lock().unwrap();
        let s2 = s.clone();
        let writer = std::thread::spawn(move || put(&s2, SEG, &[1u8; 100], Compression::None));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !s.meta_path(SEG).exists(),
            "put committed while another process held the store"
        );
        drop(held);
        assert_eq!(writer.join().unwrap().unwrap(), PutOutcome::Stored);
        assert!(s.lookup(SEG).unwrap().is_some());
    }

    #[test]
    fn a_failing_destination_is_not_called_corruption() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(nix::libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (_d, s) = store();
        for c in [Compression::None, Compression::Zstd] {
            put(&s, SEG, &[4u8; 70_000], c).unwrap();
            let m = s.lookup(SEG).unwrap().unwrap();
            let e = s.read_verified(&m, &mut Full).unwrap_err().to_string();
            assert!(
                e.contains("writing the restored file") && e.contains(SEG),
                "{e}"
            );
            s.remove(SEG).unwrap();
        }
    }

    #[test]
    fn bytes_that_do_not_match_the_sender_are_not_committed() {
        let (_d, s) = store();
        let (m, z) = Meta::build(SEG, &[3u8; 1000], Compression::None, 0, 1, None).unwrap();
        let mut z = z.into_owned();
        z[10] = 9;
        assert!(matches!(
            s.put(&m, Incoming::Remote(&mut &z[..])).unwrap_err(),
            WalmgrError::Corrupt { .. }
        ));
        assert!(s.lookup(SEG).unwrap().is_none());
        assert_eq!(fs::read_dir(&s.dir).unwrap().count(), 0);
    }

    #[test]
    fn meta_without_data_is_not_archived_and_may_be_rewritten() {
        let (_d, s) = store();
        put(&s, SEG, &[1u8; 1000], Compression::None).unwrap();
        fs::remove_file(s.data_path(SEG, Compression::None)).unwrap();
        assert!(s.lookup(SEG).unwrap().is_none());
        assert_eq!(
            put(&s, SEG, &[2u8; 1000], Compression::None).unwrap(),
            PutOutcome::Stored
        );
    }

    #[test]
    fn purge_keeps_history_and_newer() {
        let (_d, s) = store();
        for n in [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000020000000000000003",
            "00000002.history",
        ] {
            put(&s, n, n.as_bytes(), Compression::None).unwrap();
        }
        let cut = WalName::parse("000000020000000000000003").unwrap();
        assert_eq!(s.purge_before(&cut).unwrap(), 3);
        assert_eq!(
            s.list().unwrap(),
            ["00000002.history", "000000020000000000000003"]
        );
    }

    #[test]
    fn cleanup_removes_dead_temps_only() {
        let (_d, s) = store();
        put(&s, SEG, &[1u8; 10], Compression::None).unwrap();
        let legacy = s.dir.join("000000010000000000000009");
        fs::write(&legacy, b"x").unwrap();
        let dead = s.dir.join(".tmp-000000010000000000000004.999999999.0");
        fs::write(&dead, b"x").unwrap();
        let live = s.dir.join(format!(
            ".tmp-000000010000000000000005.{}.0",
            std::process::id()
        ));
        fs::write(&live, b"x").unwrap();
        let got = s.cleanup().unwrap();
        assert_eq!(got, vec![dead]);
        assert!(live.exists() && legacy.exists());
        assert!(s.lookup(SEG).unwrap().is_some());
    }
}
