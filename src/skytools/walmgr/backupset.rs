//! Base backup sets in `full_backup`: staging, commit, listing, rotation.
//!
//! ```text
//! <full_backup>/<set>/base.tar[.gz|.zst]   the uncompressed tar stream, compressed
//! <full_backup>/<set>/backup_label         from pg_backup_stop (also the tar's last entries)
//! <full_backup>/<set>/tablespace_map       only when the cluster has tablespaces
//! <full_backup>/<set>/backup.json          BackupInfo; written last: a set is committed
//!                                           iff its directory has a non-dot name
//! <full_backup>/.tmp-<set>.<pid>/          staging (the receiver's pid: stale once dead)
//! ```
//!
//! One receiver serves local and remote backups: it reads the uncompressed tar stream,
//! hashes and compresses it into `base.tar*`, and parses it on the way to pick up
//! `backup_label` and `tablespace_map`. The sender appends those two as the last tar
//! entries (they only exist after pg_backup_stop), so the stream alone carries everything
//! and no second channel is needed. The sender's sha256 of what it sent is compared with
//! the receiver's before the set is committed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec::Compression;
use super::error::{io_err, Result, WalmgrError};
use super::s3sets::S3Sets;
use crate::digest::{HashReader, HashWriter};
use crate::fsutil::{self, PathError, TEMP_PREFIX};
use crate::pg::lsn::Lsn;

pub const BASE: &str = "base.tar";
pub const LABEL: &str = "backup_label";
pub const TABLESPACE_MAP: &str = "tablespace_map";
pub const INFO: &str = "backup.json";
/// Written into a remote staging dir by `xreceive-backup`, read by `xcommit-backup`.
const RECEIVED: &str = "received.json";
/// A received, uncommitted remote set is waited for this long before `cleanup` may
/// remove it (the commit follows the receive within seconds).
const RECEIVED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// backup_label and tablespace_map are small; anything bigger is not theirs.
const MAX_LABEL: u64 = 1 << 20;

/// backup.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub set: SetName,
    pub start_lsn: Lsn,
    /// First WAL segment the backup needs ("START WAL LOCATION: ... (file <seg>)").
    pub start_segment: String,
    pub stop_lsn: Lsn,
    pub started_at: String,
    pub finished_at: String,
    pub compression: Compression,
    /// `base.tar` + the compression's suffix.
    pub file: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    /// The uncompressed tar stream.
    pub size: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    #[serde(default)]
    pub tablespaces: bool,
    /// sha256 of the set's `tablespace_map` (restore creates directories where it
    /// says, so it is checked before anything is created). Absent in older sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map_sha256: Option<String>,
}

/// A set's backup.json for unit tests elsewhere.
#[cfg(test)]
pub fn tests_info() -> BackupInfo {
    BackupInfo {
        set: SetName::parse("20261122T200000Z").unwrap(),
        start_lsn: Lsn::default(),
        start_segment: "000000010000000000000002".into(),
        stop_lsn: Lsn::default(),
        started_at: "2026-11-22T20:00:00Z".into(),
        finished_at: "2026-11-22T20:00:01Z".into(),
        compression: Compression::None,
        file: "base.tar".into(),
        stored_size: 0,
        stored_sha256: String::new(),
        size: 0,
        sha256: String::new(),
        pg_version: None,
        system_identifier: None,
        tablespaces: false,
        tablespace_map_sha256: None,
    }
}

/// What the sender knows that the stream does not.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub stop_lsn: Lsn,
    pub started_at: String,
    pub pg_version: Option<String>,
    pub system_identifier: Option<String>,
}

/// What the receiver saw in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub sha256: String,
    pub bytes: u64,
    pub stored_sha256: String,
    pub stored_size: u64,
    pub label: String,
    #[serde(default)]
    pub tablespace_map: Option<String>,
}

/// A backup set's name: `YYYYmmddTHHMMSSZ` (UTC), optionally `-<n>` when a second set
/// starts in the same second. Checked once where it enters walmgr (the command line, an
/// ssh answer, backup.json), so it can be joined to a path anywhere after: it has no
/// separators and no dots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SetName(String);

impl SetName {
    pub fn parse(s: &str) -> Result<SetName> {
        if valid_set_name(s) {
            Ok(SetName(s.to_string()))
        } else {
            Err(WalmgrError::BadSetName(s.to_string()))
        }
    }

    /// The name for a set started at `t`.
    pub fn stamp(t: std::time::SystemTime) -> SetName {
        SetName(stamp_text(t))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `n`th set of the same second: `<stamp>-<n>`.
    pub(crate) fn nth(&self, n: u32) -> SetName {
        let base = self.0.split_once('-').map_or(self.0.as_str(), |(b, _)| b);
        SetName(format!("{base}-{n}"))
    }

    /// Sort key: the stamp, then the numeric suffix (`-10` after `-9`).
    fn order_key(&self) -> (&str, u32) {
        match self.0.split_once('-') {
            Some((b, n)) => (b, n.parse().unwrap_or(0)),
            None => (&self.0, 0),
        }
    }
}

impl Ord for SetName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl PartialOrd for SetName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::str::FromStr for SetName {
    type Err = WalmgrError;
    fn from_str(s: &str) -> Result<SetName> {
        SetName::parse(s)
    }
}

impl TryFrom<String> for SetName {
    type Error = WalmgrError;
    fn try_from(s: String) -> Result<SetName> {
        SetName::parse(&s)
    }
}

impl From<SetName> for String {
    fn from(s: SetName) -> String {
        s.0
    }
}

impl std::fmt::Display for SetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for SetName {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl PartialEq<str> for SetName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for SetName {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<&str> for SetName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// `YYYYmmddTHHMMSSZ` (UTC) of `t`.
pub fn stamp(t: std::time::SystemTime) -> SetName {
    SetName::stamp(t)
}

fn stamp_text(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// A set name as this module makes them: a stamp, optionally `-<n>`. Anything else
/// (path separators, dots) is refused before it is joined to a path.
pub fn valid_set_name(set: &str) -> bool {
    let (base, n) = match set.split_once('-') {
        Some((b, n)) => (b, Some(n)),
        None => (set, None),
    };
    let b = base.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && n.is_none_or(|n| !n.is_empty() && n.len() < 6 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)" → (lsn, segment)
pub fn parse_label(label: &str) -> Option<(Lsn, String)> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))?;
    let mut words = line.split_whitespace();
    let lsn = words.next()?.parse().ok()?;
    let seg = line
        .split_once("(file ")?
        .1
        .split(')')
        .next()?
        .trim()
        .to_string();
    super::walname::WalName::parse(&seg).ok()?;
    Some((lsn, seg))
}

/// A set being received: removed on drop unless committed or parked for a remote commit.
pub struct Staging {
    pub full_backup: PathBuf,
    pub set: SetName,
    /// The staging directory; in S3, the set's own location (objects are written in
    /// place and backup.json, last, commits them).
    pub dir: PathBuf,
    compression: Compression,
    level: i32,
    keep: bool,
    s3: Option<Arc<S3Sets>>,
    /// S3: the objects written so far (the claim first), removed unless committed.
    written: Vec<String>,
}

impl Staging {
    /// Stage `set` (or the next free `set-<n>`) in `full_backup`.
    pub fn create(
        full_backup: &Path,
        set: &SetName,
        compression: Compression,
        level: i32,
    ) -> Result<Staging> {
        fsutil::ensure_dir(full_backup, 0o700)?;
        let mut name = set.clone();
        let mut n = 1;
        while full_backup.join(&name).exists() {
            n += 1;
            name = set.nth(n);
        }
        let dir = full_backup.join(format!("{TEMP_PREFIX}{name}.{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create directory", &dir))?;
        Ok(Staging {
            full_backup: full_backup.to_path_buf(),
            set: name,
            dir,
            compression,
            level,
            keep: false,
            s3: None,
            written: Vec::new(),
        })
    }

    /// Stage `set` (or the next free name) in an S3 store: claimed by its
    /// `staging.json`.
    pub fn create_s3(
        sets: &Arc<S3Sets>,
        full_backup: &Path,
        set: &SetName,
        compression: Compression,
        level: i32,
    ) -> Result<Staging> {
        let (name, claim) = sets.claim(set)?;
        Ok(Staging {
            full_backup: full_backup.to_path_buf(),
            dir: sets.shown(&name),
            set: name,
            compression,
            level,
            keep: false,
            s3: Some(sets.clone()),
            written: vec![claim],
        })
    }

    fn base_name(&self) -> String {
        format!("{BASE}{}", self.compression.ext())
    }

    fn base_path(&self) -> PathBuf {
        self.dir.join(self.base_name())
    }

    /// Read the whole uncompressed tar stream from `input` into `base.tar*` (fsynced;
    /// in S3, one multipart upload the service has completed).
    pub fn receive(&mut self, input: &mut dyn Read) -> Result<Received> {
        let path = self.base_path();
        if let Some(sets) = self.s3.clone() {
            let key = sets.key(&self.set, &self.base_name());
            let up = crate::s3::upload::Upload::start(sets.client(), &key, sets.part_size())?;
            let failure = up.failure();
            let pumped = pump(self.compression, self.level, input, up, &path).map_err(|e| {
                // The service's own error says more than the writer's copy of it.
                match failure.lock().ok().and_then(|mut f| f.take()) {
                    Some(s3) => s3.into(),
                    None => e,
                }
            });
            let (r, up) = pumped?;
            self.written.push(key);
            up.finish()?;
            return Ok(r);
        }
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let (r, bw) = pump(
            self.compression,
            self.level,
            input,
            io::BufWriter::with_capacity(1 << 20, f),
            &path,
        )?;
        let f = bw
            .into_inner()
            .map_err(|e| PathError::new("write", &path, e.into_error()))?;
        f.sync_all().map_err(io_err("fsync", &path))?;
        Ok(r)
    }

    /// Remote protocol: keep the received set for `xcommit-backup` (another process).
    pub fn park(mut self, r: &Received) -> Result<()> {
        let json = serde_json::to_vec(r).expect("serializes");
        fsutil::write_atomic(&self.dir.join(RECEIVED), &json, 0o600)?;
        self.keep = true;
        Ok(())
    }

    /// Find the parked staging dir of `set`.
    pub fn resume(full_backup: &Path, set: &SetName) -> Result<(Staging, Received)> {
        let prefix = format!("{TEMP_PREFIX}{set}.");
        let rd = fs::read_dir(full_backup).map_err(io_err("list", full_backup))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if pid.parse::<u32>().is_err() {
                continue;
            }
            let rp = e.path().join(RECEIVED);
            let Ok(text) = fs::read(&rp) else { continue };
            let r: Received =
                serde_json::from_slice(&text).map_err(|err| WalmgrError::Corrupt {
                    path: rp.clone(),
                    reason: err.to_string(),
                })?;
            let compression = [Compression::None, Compression::Gzip, Compression::Zstd]
                .into_iter()
                .find(|c| e.path().join(format!("{BASE}{}", c.ext())).exists())
                .ok_or_else(|| WalmgrError::Corrupt {
                    path: e.path(),
                    reason: format!("no {BASE} file"),
                })?;
            return Ok((
                Staging {
                    full_backup: full_backup.to_path_buf(),
                    set: set.clone(),
                    dir: e.path(),
                    compression,
                    level: 0,
                    keep: false,
                    s3: None,
                    written: Vec::new(),
                },
                r,
            ));
        }
        Err(WalmgrError::NoBackup(format!(
            "{}: no received backup {set} to commit",
            full_backup.display()
        )))
    }

    /// Write the small files, fsync, and rename the staging dir to its final name (in
    /// S3: write them, backup.json last and only if absent, then drop the claim).
    pub fn commit(mut self, r: &Received, c: &CommitInfo) -> Result<BackupInfo> {
        let (start_lsn, start_segment) =
            parse_label(&r.label).ok_or_else(|| WalmgrError::Corrupt {
                path: self.dir.join(LABEL),
                reason: "no START WAL LOCATION line with a segment name".into(),
            })?;
        let map = r.tablespace_map.as_deref().filter(|m| !m.trim().is_empty());
        let info = BackupInfo {
            set: self.set.clone(),
            start_lsn,
            start_segment,
            stop_lsn: c.stop_lsn,
            started_at: c.started_at.clone(),
            finished_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            compression: self.compression,
            file: self.base_name(),
            stored_size: r.stored_size,
            stored_sha256: r.stored_sha256.clone(),
            size: r.bytes,
            sha256: r.sha256.clone(),
            pg_version: c.pg_version.clone(),
            system_identifier: c.system_identifier.clone(),
            tablespaces: map.is_some(),
            tablespace_map_sha256: map.map(|m| crate::digest::sha256_hex(m.as_bytes())),
        };
        let json = serde_json::to_vec_pretty(&info).expect("serializes");
        if let Some(sets) = self.s3.clone() {
            let mut files = vec![(LABEL, r.label.as_bytes())];
            files.extend(map.map(|m| (TABLESPACE_MAP, m.as_bytes())));
            for (name, body) in files {
                let key = sets.key(&self.set, name);
                self.written.push(key.clone());
                sets.put_file(&key, body, false)?;
            }
            let key = sets.key(&self.set, INFO);
            if !sets.put_file(&key, &json, true)? {
                return Err(WalmgrError::Refused(format!(
                    "{}: already exists; backup not committed",
                    self.dir.join(INFO).display()
                )));
            }
            self.keep = true;
            let claim = self.written.first().cloned().expect("the claim");
            if let Err(e) = sets.client().delete(&claim) {
                log::warn!("{e}: the committed set keeps its claim");
            }
            return Ok(info);
        }
        fsutil::write_atomic_with(&self.dir.join(LABEL), 0o600, false, |f| {
            f.write_all(r.label.as_bytes())
        })?;
        if let Some(map) = map {
            fsutil::write_atomic_with(&self.dir.join(TABLESPACE_MAP), 0o600, false, |f| {
                f.write_all(map.as_bytes())
            })?;
        }
        let _ = fs::remove_file(self.dir.join(RECEIVED));
        fsutil::write_atomic_with(&self.dir.join(INFO), 0o600, false, |f| f.write_all(&json))?;
        fsutil::sync_dir(&self.dir)?;
        let dst = self.full_backup.join(&self.set);
        if dst.exists() {
            return Err(WalmgrError::Refused(format!(
                "{}: already exists; backup not committed",
                dst.display()
            )));
        }
        fs::rename(&self.dir, &dst).map_err(io_err("rename into", &dst))?;
        self.keep = true;
        fsutil::sync_dir(&self.full_backup)?;
        Ok(info)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let (false, Some(sets)) = (self.keep, &self.s3) {
            for key in self.written.iter().rev() {
                if let Err(e) = sets.client().delete(key) {
                    log::warn!("{e}: left for `walmgr cleanup`");
                }
            }
            return;
        }
        if !self.keep {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("{}: cannot remove: {e}", self.dir.display());
                }
            }
        }
    }
}

/// Stream `input` through the hash and the compressor into `out`, reading the tar on
/// the way: what [`Staging::receive`] records, and `out` back (flushed).
fn pump<W: Write>(
    c: Compression,
    level: i32,
    input: &mut dyn Read,
    out: W,
    path: &Path,
) -> Result<(Received, W)> {
    let stored = HashWriter::new(out);
    let enc = c
        .encoder(level, 1, stored)
        .map_err(io_err("create", path))?;
    let mut tee = Tee {
        input: HashReader::new(input),
        out: enc,
        write_err: None,
    };
    let parsed = scan_tar(&mut tee);
    if let Some(e) = tee.write_err.take() {
        return Err(PathError::new("write", path, e).into());
    }
    let (label, tablespace_map) = parsed.map_err(|reason| WalmgrError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("received tar stream: {reason}"),
    })?;
    let (sha256, bytes) = tee.input.finish();
    let stored = tee.out.finish().map_err(io_err("write", path))?;
    let (stored_sha256, stored_size, mut out) = stored.finish();
    out.flush().map_err(io_err("write", path))?;
    let label = label.ok_or_else(|| WalmgrError::Corrupt {
        path: path.to_path_buf(),
        reason: "received tar stream has no backup_label (the sender did not finish)".into(),
    })?;
    Ok((
        Received {
            sha256,
            bytes,
            stored_sha256,
            stored_size,
            label,
            tablespace_map,
        },
        out,
    ))
}

/// Passes the input through to the compressor and the hash; a write failure is kept
/// aside so it is reported as the store's error, not as a bad stream.
struct Tee<'a, W: Write> {
    /// Hashes the stream as it is read.
    input: HashReader<&'a mut dyn Read>,
    out: W,
    write_err: Option<io::Error>,
}

impl<W: Write> Read for Tee<'_, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let msg = e.to_string();
            self.write_err = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

/// Walk the tar stream to its end (consuming everything, padding included) and return
/// the top-level backup_label and tablespace_map.
fn scan_tar(input: &mut dyn Read) -> std::result::Result<(Option<String>, Option<String>), String> {
    let mut label = None;
    let mut map = None;
    {
        let mut a = tar::Archive::new(&mut *input);
        let entries = a.entries().map_err(|e| e.to_string())?;
        for e in entries {
            let mut e = e.map_err(|e| e.to_string())?;
            let path = e.path().map_err(|e| e.to_string())?.into_owned();
            let slot = match path.to_str() {
                Some(LABEL) => &mut label,
                Some(TABLESPACE_MAP) => &mut map,
                _ => continue,
            };
            if e.size() > MAX_LABEL {
                return Err(format!("{} of {} bytes", path.display(), e.size()));
            }
            let mut s = String::new();
            e.read_to_string(&mut s)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            *slot = Some(s);
        }
    }
    // Whatever follows the end-of-archive blocks is part of the stream too.
    io::copy(input, &mut io::sink()).map_err(|e| e.to_string())?;
    Ok((label, map))
}

/// A committed set.
#[derive(Debug, Clone)]
pub struct Set {
    /// Its directory (in S3: its location, `s3://bucket/prefix/<set>`).
    pub dir: PathBuf,
    pub info: BackupInfo,
    /// In S3: the store it is in, and its base file as listed (size, Last-Modified).
    pub s3: Option<Arc<S3Sets>>,
    pub stored: Option<crate::s3::Entry>,
}

impl Set {
    /// The set's base.tar*, for messages.
    pub fn base_path(&self) -> PathBuf {
        self.dir.join(&self.info.file)
    }

    /// Open the base.tar* for reading, as stored.
    pub fn open_base(&self) -> Result<Box<dyn Read + Send>> {
        let p = self.base_path();
        match &self.s3 {
            None => Ok(Box::new(File::open(&p).map_err(io_err("open", &p))?)),
            Some(sets) => {
                let key = sets.key(&self.info.set, &self.info.file);
                match sets.client().get(&key)? {
                    Some((_, r)) => Ok(r),
                    None => Err(WalmgrError::Corrupt {
                        path: p,
                        reason: "missing, but backup.json names it".into(),
                    }),
                }
            }
        }
    }

    /// A small file of the set (backup_label, tablespace_map), if it has one.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.dir.join(name);
        match &self.s3 {
            Some(sets) => Ok(sets
                .client()
                .get_bytes(&sets.key(&self.info.set, name), MAX_LABEL)?),
            None => match fs::read(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(PathError::new("read", &p, e).into()),
            },
        }
    }
}

/// Where a store keeps its base backups: a directory, or a prefix in S3.
#[derive(Debug, Clone)]
pub enum Backups {
    Dir(PathBuf),
    S3 {
        location: PathBuf,
        sets: Arc<S3Sets>,
    },
}

impl Backups {
    pub fn new(paths: &super::config::StorePaths) -> Backups {
        match &paths.s3 {
            Some(cfg) if super::config::StorePaths::in_s3(&paths.full_backup) => Backups::S3 {
                location: paths.full_backup.clone(),
                sets: Arc::new(S3Sets::new(cfg, &paths.full_backup)),
            },
            _ => Backups::Dir(paths.full_backup.clone()),
        }
    }

    /// `full_backup` as the ini gave it.
    pub fn location(&self) -> &Path {
        match self {
            Backups::Dir(d) => d,
            Backups::S3 { location, .. } => location,
        }
    }

    /// Stage `set` (or the next free name) for [`Staging::receive`].
    pub fn stage(&self, set: &SetName, c: Compression, level: i32) -> Result<Staging> {
        match self {
            Backups::Dir(d) => Staging::create(d, set, c, level),
            Backups::S3 { location, sets } => Staging::create_s3(sets, location, set, c, level),
        }
    }

    pub fn scan(&self) -> Result<Scan> {
        match self {
            Backups::Dir(d) => scan(d),
            Backups::S3 { sets, .. } => sets.scan(),
        }
    }

    /// Committed sets, oldest first.
    pub fn list(&self) -> Result<Vec<Set>> {
        Ok(self.scan()?.sets)
    }

    /// See [`rotate`].
    pub fn rotate(&self, keep: usize, archive_command: Option<&str>) -> Result<Vec<SetName>> {
        match self {
            Backups::Dir(d) => rotate(d, keep, archive_command),
            Backups::S3 { sets, .. } => rotate_with(self.list()?, keep, archive_command, |s| {
                sets.remove(&s.info.set)
            }),
        }
    }

    /// At least one set, committed or not, or the store cannot tell.
    pub fn has_backups(&self) -> bool {
        match self {
            // One listing, no backup.json read: xrestore asks this per segment.
            Backups::S3 { sets, .. } => sets.any().unwrap_or(true),
            Backups::Dir(_) => self
                .scan()
                .map(|s| !s.sets.is_empty() || !s.unusable.is_empty() || s.staging)
                .unwrap_or(true),
        }
    }

    /// See [`oldest_start_segment`].
    pub fn oldest_start_segment(&self) -> Result<Option<String>> {
        oldest_of(self.scan()?)
    }

    pub fn newest_start_segment(&self) -> Result<Option<String>> {
        Ok(self.list()?.pop().map(|s| s.info.start_segment))
    }

    /// Sets left uncommitted by a writer that is gone.
    pub fn cleanup_staging(&self) -> Result<Vec<PathBuf>> {
        match self {
            Backups::Dir(d) => cleanup_staging(d),
            Backups::S3 { sets, .. } => sets.cleanup(),
        }
    }
}

/// Committed sets, oldest first. Directories without a readable backup.json are not
/// sets (logged), dot directories are staging.
pub fn list(full_backup: &Path) -> Result<Vec<Set>> {
    Ok(scan(full_backup)?.sets)
}

/// What `full_backup` holds, including what must stop WAL from being purged: sets whose
/// backup.json cannot be read, and backups still being written (staging).
pub struct Scan {
    pub sets: Vec<Set>,
    pub unusable: Vec<PathBuf>,
    pub staging: bool,
}

pub fn scan(full_backup: &Path) -> Result<Scan> {
    let mut out = Scan {
        sets: Vec::new(),
        unusable: Vec::new(),
        staging: false,
    };
    let rd = match fs::read_dir(full_backup) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(PathError::new("list", full_backup, e).into()),
    };
    let sets = &mut out.sets;
    for e in rd {
        let e = e.map_err(io_err("list", full_backup))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            out.staging = true;
            continue;
        }
        if name.starts_with('.') || !valid_set_name(&name) {
            continue;
        }
        let ip = e.path().join(INFO);
        let info = fs::read(&ip)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_slice::<BackupInfo>(&t).map_err(|e| e.to_string()));
        match info {
            Ok(info) => sets.push(Set {
                dir: e.path(),
                info,
                s3: None,
                stored: None,
            }),
            Err(err) => {
                log::warn!("{}: not a usable backup set: {err}", ip.display());
                out.unusable.push(ip);
            }
        }
    }
    sets.sort_by(|a, b| a.info.set.cmp(&b.info.set));
    Ok(out)
}

/// Keep the newest `keep` sets (0 = all). Each older set is offered to
/// `archive_command` first; if that fails, the set stays and the error is returned
/// after the others were handled. Returns the removed set names.
pub fn rotate(
    full_backup: &Path,
    keep: usize,
    archive_command: Option<&str>,
) -> Result<Vec<SetName>> {
    rotate_with(list(full_backup)?, keep, archive_command, |s| {
        // Rename first: a removal cut short leaves a stale staging name, not a broken set.
        let doomed = full_backup.join(format!(
            "{TEMP_PREFIX}{}.{}",
            s.info.set,
            std::process::id()
        ));
        fs::rename(&s.dir, &doomed).map_err(io_err("rename", &s.dir))?;
        fsutil::sync_dir(full_backup)?;
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
        Ok(())
    })
}

fn rotate_with(
    sets: Vec<Set>,
    keep: usize,
    archive_command: Option<&str>,
    remove: impl Fn(&Set) -> Result<()>,
) -> Result<Vec<SetName>> {
    if keep == 0 || sets.len() <= keep {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    let mut failed = None;
    for s in &sets[..sets.len() - keep] {
        if let Some(cmd) = archive_command {
            let st = crate::proc::Cmd::shell(cmd)
                .env("WALMGR_BACKUP", &s.dir)
                .output(crate::proc::Output::Inherit)
                .run()
                .map(|o| o.status);
            let why = match st {
                Ok(st) if st.success() => None,
                Ok(st) => Some(format!("exited with {st}")),
                Err(e) => Some(e.detail()),
            };
            if let Some(why) = why {
                log::error!("archive_command for {}: {why}; set kept", s.dir.display());
                failed.get_or_insert(WalmgrError::command(
                    format!(
                        "archive_command {cmd:?} (WALMGR_BACKUP={})",
                        s.dir.display()
                    ),
                    format!("{why}; set {} kept", s.info.set),
                ));
                continue;
            }
        }
        remove(s)?;
        log::info!("removed backup {} (keep_backups = {keep})", s.info.set);
        removed.push(s.info.set.clone());
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// True when `full_backup` holds at least one committed set.
pub fn has_backups(full_backup: &Path) -> bool {
    Backups::Dir(full_backup.to_path_buf()).has_backups()
}

/// The earliest start segment over every committed set (by WAL position, not by set name:
/// a clock step can make names lie), or an error when a set cannot be read, so that
/// nothing is purged on a partial view of what the backups need.
pub fn oldest_start_segment(full_backup: &Path) -> Result<Option<String>> {
    oldest_of(scan(full_backup)?)
}

fn oldest_of(s: Scan) -> Result<Option<String>> {
    if let Some(p) = s.unusable.first() {
        return Err(WalmgrError::Refused(format!(
            "{}: unreadable backup set; not removing any WAL until it is fixed or removed",
            p.display()
        )));
    }
    let mut best: Option<(super::walname::WalName, String)> = None;
    for set in s.sets {
        let seg = set.info.start_segment;
        let w = super::walname::WalName::parse(&seg)?;
        if best
            .as_ref()
            .is_none_or(|(b, _)| w.position() < b.position())
        {
            best = Some((w, seg));
        }
    }
    Ok(best.map(|(_, seg)| seg))
}

/// Remove staging directories of backups whose writer is gone (a parked remote set
/// only after [`RECEIVED_GRACE`]).
pub fn cleanup_staging(full_backup: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(full_backup) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PathError::new("list", full_backup, e).into()),
    };
    let mut removed = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("list", full_backup))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(TEMP_PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(pid) = name.rsplit('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if crate::daemon::pid_alive(pid) {
            continue;
        }
        let parked_recently = fs::metadata(e.path().join(RECEIVED))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < RECEIVED_GRACE);
        if parked_recently {
            continue;
        }
        fs::remove_dir_all(e.path()).map_err(io_err("remove", &e.path()))?;
        removed.push(e.path());
    }
    if !removed.is_empty() {
        fsutil::sync_dir(full_backup)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL_TEXT: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-11-22 20:00:00 UTC\nLABEL: walmgr\nSTART TIMELINE: 1\n";

    fn tar_stream(label: bool, map: Option<&str>) -> Vec<u8> {
        let mut w = super::super::basebackup::TarWriter::new(Vec::new());
        w.add_bytes("PG_VERSION", b"15\n", 0o600).unwrap();
        w.add_bytes("base/1/1259", &vec![9u8; 70_000], 0o600)
            .unwrap();
        if label {
            w.add_bytes(LABEL, LABEL_TEXT.as_bytes(), 0o600).unwrap();
        }
        if let Some(m) = map {
            w.add_bytes(TABLESPACE_MAP, m.as_bytes(), 0o600).unwrap();
        }
        w.finish().unwrap()
    }

    fn commit_one(fb: &Path, set: &str, c: Compression) -> BackupInfo {
        let tar = tar_stream(true, Some("16400 /srv/ts1\n"));
        let mut st =
            Staging::create(fb, &SetName::parse(set).unwrap(), c, c.default_level()).unwrap();
        let r = st.receive(&mut &tar[..]).unwrap();
        assert_eq!(r.sha256, crate::digest::sha256_hex(&tar));
        assert_eq!(r.bytes, tar.len() as u64);
        assert_eq!(r.tablespace_map.as_deref(), Some("16400 /srv/ts1\n"));
        st.commit(
            &r,
            &CommitInfo {
                stop_lsn: "0/2000138".parse().unwrap(),
                started_at: "2026-11-22T20:00:00Z".into(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn names_and_labels() {
        assert!(valid_set_name("20261122T205854Z"));
        assert!(valid_set_name("20261122T205854Z-12"));
        for bad in [
            "",
            "../x",
            "20261122T205854",
            "20261122T205854Z-",
            "2026112xT205854Z",
            "20261122T205854Z-1/",
        ] {
            assert!(!valid_set_name(bad), "{bad}");
        }
        assert_eq!(stamp(std::time::UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            parse_label(LABEL_TEXT),
            Some((
                "0/2000028".parse().unwrap(),
                "000000010000000000000002".into()
            ))
        );
        assert_eq!(parse_label("START WAL LOCATION: 0/1 (file ../../x)"), None);
    }

    #[test]
    fn receive_commit_list_and_duplicate_names() {
        let d = tempfile::tempdir().unwrap();
        let fb = d.path().join("full");
        let a = commit_one(&fb, "20261122T200000Z", Compression::Zstd);
        let b = commit_one(&fb, "20261122T200000Z", Compression::Gzip);
        assert_eq!(b.set, "20261122T200000Z-2");
        assert_eq!(a.start_segment, "000000010000000000000002");
        assert!(a.tablespaces);
        let sets = list(&fb).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].info, a);
        let dir = &sets[1].dir;
        assert!(dir.join("base.tar.gz").exists() && dir.join(LABEL).exists());
        assert_eq!(
            fs::read_to_string(dir.join(TABLESPACE_MAP)).unwrap(),
            "16400 /srv/ts1\n"
        );
        // The stored file decompresses to exactly the stream that was sent.
        let mut raw = Vec::new();
        Compression::Gzip
            .decoder(sets[1].open_base().unwrap())
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(crate::digest::sha256_hex(&raw), b.sha256);
        assert!(has_backups(&fb));
        assert_eq!(
            oldest_start_segment(&fb).unwrap().as_deref(),
            Some("000000010000000000000002")
        );
        // Nothing left in staging.
        let dots = fs::read_dir(&fb)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(dots, 0);
    }

    #[test]
    fn bad_streams_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let fb = d.path().join("full");
        for input in [
            tar_stream(false, None),
            b"not a tar at all, definitely not".repeat(40),
            tar_stream(true, None)[..700].to_vec(),
        ] {
            let mut st = Staging::create(
                &fb,
                &SetName::parse("20261122T200000Z").unwrap(),
                Compression::None,
                0,
            )
            .unwrap();
            let e = st.receive(&mut &input[..]).unwrap_err();
            assert!(e.to_string().contains("base.tar"), "{e}");
            drop(st);
        }
        assert_eq!(fs::read_dir(&fb).unwrap().count(), 0);
        assert!(!has_backups(&fb));
        assert!(SetName::parse("../etc").is_err());
    }

    #[test]
    fn park_and_resume_like_the_remote_protocol() {
        let d = tempfile::tempdir().unwrap();
        let fb = d.path().join("full");
        let tar = tar_stream(true, None);
        let mut st = Staging::create(
            &fb,
            &SetName::parse("20261122T200000Z").unwrap(),
            Compression::Zstd,
            3,
        )
        .unwrap();
        let r = st.receive(&mut &tar[..]).unwrap();
        st.park(&r).unwrap();
        // Our own pid is alive, and a parked set is kept for a grace period anyway.
        assert!(cleanup_staging(&fb).unwrap().is_empty());
        let (st, r2) = Staging::resume(&fb, &SetName::parse("20261122T200000Z").unwrap()).unwrap();
        assert_eq!(r, r2);
        let info = st.commit(&r2, &CommitInfo::default()).unwrap();
        assert_eq!(info.compression, Compression::Zstd);
        assert!(!info.tablespaces);
        assert_eq!(list(&fb).unwrap().len(), 1);
        assert!(Staging::resume(&fb, &SetName::parse("20261122T200000Z").unwrap()).is_err());
    }

    #[test]
    fn rotate_keeps_newest_and_respects_archive_command() {
        let d = tempfile::tempdir().unwrap();
        let fb = d.path().join("full");
        for s in [
            "20261122T200000Z",
            "20261122T200000Z-2",
            "20261122T200000Z-10",
            "20261123T000000Z",
        ] {
            commit_one(&fb, s, Compression::None);
        }
        let log = d.path().join("archived");
        let cmd = format!(
            "case \"$WALMGR_BACKUP\" in *-2) exit 3;; esac; echo \"$WALMGR_BACKUP\" >> {}",
            log.display()
        );
        let e = rotate(&fb, 1, Some(&cmd)).unwrap_err();
        assert!(e.to_string().contains("20261122T200000Z-2 kept"), "{e}");
        let left: Vec<String> = list(&fb)
            .unwrap()
            .into_iter()
            .map(|s| s.info.set.to_string())
            .collect();
        assert_eq!(left, ["20261122T200000Z-2", "20261123T000000Z"]);
        let archived = fs::read_to_string(&log).unwrap();
        assert!(
            archived.contains("20261122T200000Z\n") && archived.contains("-10\n"),
            "{archived}"
        );
        assert_eq!(rotate(&fb, 1, None).unwrap(), ["20261122T200000Z-2"]);
        assert_eq!(rotate(&fb, 0, None).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn what_keeps_wal_from_being_purged() {
        let d = tempfile::tempdir().unwrap();
        let fb = d.path().join("full");
        assert!(!has_backups(&fb));
        // A backup still being written counts: its WAL is needed once it commits.
        let staging = fb.join(".tmp-20261122T200000Z.1");
        fs::create_dir_all(&staging).unwrap();
        assert!(has_backups(&fb));
        fs::remove_dir(&staging).unwrap();
        commit_one(&fb, "20261122T200000Z", Compression::None);
        commit_one(&fb, "20261123T000000Z", Compression::None);
        // The later-named set starts earlier (a clock step): the WAL position decides.
        let info = fb.join("20261123T000000Z").join(INFO);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&info).unwrap()).unwrap();
        v["start_segment"] = "000000010000000000000001".into();
        fs::write(&info, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            oldest_start_segment(&fb).unwrap().as_deref(),
            Some("000000010000000000000001")
        );
        // An unreadable set stops purging rather than being ignored.
        fs::write(&info, b"{").unwrap();
        assert!(has_backups(&fb));
        let e = oldest_start_segment(&fb).unwrap_err().to_string();
        assert!(e.contains("20261123T000000Z"), "{e}");
    }

    #[test]
    fn dead_staging_is_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let fb = d.path().join("full");
        fs::create_dir_all(fb.join(".tmp-20261122T200000Z.999999999")).unwrap();
        fs::create_dir_all(fb.join(format!(".tmp-20261122T200001Z.{}", std::process::id())))
            .unwrap();
        let got = cleanup_staging(&fb).unwrap();
        assert_eq!(got, [fb.join(".tmp-20261122T200000Z.999999999")]);
        assert_eq!(fs::read_dir(&fb).unwrap().count(), 1);
    }
}
