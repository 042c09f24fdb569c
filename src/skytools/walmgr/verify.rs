//! `verify` (every stored file's checksums, every base backup's stored file, gaps in
//! the segment sequence) and `cleanup`.
//!
//! Incremental: what verify has checked is recorded in `<store>/verify-state.json`
//! (per segment and set: the sha256 its meta or backup.json records, and the stored
//! file's size and mtime when it was read). By default a file whose recorded sha256,
//! size and mtime are all unchanged is trusted without being read again; anything new
//! or changed is read. `--full` reads everything (a bit flipped in place, size and
//! mtime kept, is caught only then) and records the result afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::backupset::{self, Backups};
use super::config::StoreSettings;
use super::error::{check_digest, io_err, Result, WalmgrError};
use super::store::WalStore;
use super::walname::{Kind, WalName};
use crate::digest::HashWriter;

#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub bytes: u64,
    pub problems: Vec<String>,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Segments and sets read in this run / trusted from the state file.
    pub read: usize,
    pub trusted: usize,
    pub sets: usize,
}

pub const STATE: &str = "verify-state.json";

/// One checked file, as verify-state.json records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    sha256: String,
    size: u64,
    mtime_ns: i128,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Segment (and other archived file) names, and `set:<name>` for base backups.
    files: BTreeMap<String, Seen>,
}

fn state_path(st: &StoreSettings) -> PathBuf {
    st.paths.root.join(STATE)
}

fn load_state(p: &Path) -> State {
    match std::fs::read(p) {
        Ok(b) => parse_state(&b, p.display()),
        Err(_) => State::default(),
    }
}

/// [`load_state`] for an S3 store.
fn load_state_object(s3: &super::s3store::S3Wal) -> State {
    match s3.read_own(STATE, 256 << 20) {
        Ok(Some(b)) => parse_state(&b, format!("{STATE} in the bucket")),
        Ok(None) => State::default(),
        Err(e) => {
            log::warn!("{e}: reading every file");
            State::default()
        }
    }
}

/// An unreadable state is not an error: the run reads every file, as the first did.
fn parse_state(b: &[u8], what: impl std::fmt::Display) -> State {
    serde_json::from_slice(b).unwrap_or_else(|e| {
        log::warn!("{what}: unreadable ({e}); reading every file");
        State::default()
    })
}

/// The object as the listing has it now: its Last-Modified stands in for a file's
/// mtime (a data object is named by its sha256 and never replaced, so a change of
/// either means the service holds something else than what was read).
fn seen_object(e: &crate::s3::Entry, sha256: &str) -> Option<Seen> {
    let t = humantime::parse_rfc3339_weak(&e.last_modified).ok()?;
    let ns = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(Seen {
        sha256: sha256.to_string(),
        size: e.size,
        mtime_ns: i128::try_from(ns).ok()?,
    })
}

/// The file as it is now, for the recorded sha256.
fn seen(path: &Path, sha256: &str) -> Option<Seen> {
    let m = std::fs::metadata(path).ok()?;
    Some(Seen {
        sha256: sha256.to_string(),
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Read a set's stored file and check it against backup.json.
fn check_set(set: &backupset::Set) -> Result<()> {
    let p = set.base_path();
    let mut f = set.open_base()?;
    let mut w = HashWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut w).map_err(io_err("read", &p))?;
    let (sha, n, _) = w.finish();
    check_digest(
        &p,
        "stored file",
        (&sha, n),
        "backup.json",
        (&set.info.stored_sha256, set.info.stored_size),
    )
}

/// Which files this run read or trusted, and what the state file will say.
struct Incremental {
    old: State,
    new: State,
    read: usize,
    trusted: usize,
}

impl Incremental {
    /// Trusted when `now` (the file's sha256, size and mtime) is what was recorded;
    /// else read with `check`.
    fn visit(
        &mut self,
        key: String,
        path: &Path,
        now: Option<Seen>,
        check: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        if let (Some(n), Some(o)) = (&now, self.old.files.get(&key)) {
            if n == o {
                self.trusted += 1;
                self.new.files.insert(key, n.clone());
                return Ok(());
            }
        }
        check()?;
        log::debug!("verify: read {}", path.display());
        self.read += 1;
        if let Some(n) = now {
            self.new.files.insert(key, n);
        }
        Ok(())
    }
}

pub fn verify(st: &StoreSettings, full: bool) -> Result<Report> {
    let store = WalStore::new(&st.paths);
    let mut r = Report::default();
    // The state lives beside what it describes: in the store's root directory, or as
    // an object of its own under an S3 store's completed_wals prefix.
    let state_file = state_path(st);
    // An S3 store with one listing of its objects (their sizes and Last-Modified).
    let objects = store
        .s3()
        .map(|s3| s3.entries().map(|o| (s3, o)))
        .transpose()?;
    let mut inc = Incremental {
        old: match (full, store.s3()) {
            (true, _) => State::default(),
            (false, None) => load_state(&state_file),
            (false, Some(s3)) => load_state_object(s3),
        },
        new: State::default(),
        read: 0,
        trusted: 0,
    };
    let backups = Backups::new(&st.paths);
    for set in backups.list()? {
        let p = set.base_path();
        let key = format!("set:{}", set.info.set);
        let now = match &set.stored {
            Some(e) => seen_object(e, &set.info.stored_sha256),
            None if set.s3.is_some() => None,
            None => seen(&p, &set.info.stored_sha256),
        };
        match inc.visit(key, &p, now, || check_set(&set)) {
            Ok(()) => r.sets += 1,
            Err(e) => r.problems.push(e.to_string()),
        }
    }
    // segno → seen, per segment size (a store serves one cluster, so one size).
    let mut segnos = BTreeSet::new();
    let mut seg_size = None;
    let mut tli_of = std::collections::BTreeMap::new();
    for name in store.list()? {
        let Ok(wal) = WalName::parse(&name) else {
            r.problems.push(format!(
                "{}: unexpected file name",
                store.meta_path(&name).display()
            ));
            continue;
        };
        let meta = match store.lookup(&name) {
            Ok(Some(m)) => m,
            Ok(None) => {
                r.problems.push(format!(
                    "{name}: meta without a complete data file (interrupted write; `walmgr cleanup` removes it)"
                ));
                continue;
            }
            Err(e) => {
                r.problems.push(e.to_string());
                continue;
            }
        };
        let dp = store.data_path(&name, meta.compression);
        let now = match &objects {
            Some((s3, o)) => o
                .get(&s3.data_rel(&meta))
                .and_then(|e| seen_object(e, &meta.stored_sha256)),
            None => seen(&dp, &meta.stored_sha256),
        };
        let checked = inc.visit(name.clone(), &dp, now, || {
            store.read_verified(&meta, &mut std::io::sink())
        });
        if let Err(e) = checked {
            r.problems.push(e.to_string());
            continue;
        }
        r.files += 1;
        r.bytes += meta.size;
        // PostgreSQL's segment sizes: powers of two from 1 MiB to 1 GiB.
        if wal.kind == Kind::Segment
            && meta.size.is_power_of_two()
            && (1 << 20..=1 << 30).contains(&meta.size)
            && wal.start_address(meta.size).is_some()
        {
            seg_size.get_or_insert(meta.size);
            let n = wal.segno(meta.size);
            segnos.insert(n);
            tli_of.entry(n).or_insert(wal.tli);
        }
    }
    if let Some(size) = seg_size {
        let from = match backups.newest_start_segment()? {
            Some(s) => WalName::parse(&s)?.segno(size),
            None => *segnos.first().expect("a segment"),
        };
        let last = *segnos.last().expect("a segment");
        let tli = |n: u64| *tli_of.range(..=n).next_back().map(|(_, t)| t).unwrap_or(&1);
        r.first = Some(WalName::segment_name(tli(from), from, size));
        r.last = Some(WalName::segment_name(tli(last), last, size));
        let mut gap_start = None;
        for n in from..=last + 1 {
            let have = n > last || segnos.contains(&n);
            match (have, gap_start) {
                (false, None) => gap_start = Some(n),
                (true, Some(g)) => {
                    r.problems.push(format!(
                        "gap: segments {} to {} are missing",
                        WalName::segment_name(tli(g), g, size),
                        WalName::segment_name(tli(g), n - 1, size)
                    ));
                    gap_start = None;
                }
                _ => {}
            }
        }
    }
    (r.read, r.trusted) = (inc.read, inc.trusted);
    let json = serde_json::to_vec_pretty(&inc.new).expect("state serializes");
    let saved = match store.s3() {
        Some(s3) => s3.write_own(STATE, &json),
        None => crate::fsutil::write_atomic(&state_file, &json, 0o600).map_err(Into::into),
    };
    if let Err(e) = saved {
        log::warn!("{e}: the next verify reads every file again");
    }
    Ok(r)
}

/// Run verify and print its report; an error when anything is wrong.
pub fn verify_command(st: &StoreSettings, full: bool) -> Result<()> {
    let r = verify(st, full)?;
    for p in &r.problems {
        eprintln!("walmgr: verify: {p}");
    }
    let range = match (&r.first, &r.last) {
        (Some(a), Some(b)) => format!(", segments {a} to {b}"),
        _ => String::new(),
    };
    println!("{} files, {} bytes verified{range}", r.files, r.bytes);
    println!(
        "{} base backup set(s); read {} file(s), {} unchanged since the last verify \
         (same sha256, size and mtime: not read again{})",
        r.sets,
        r.read,
        r.trusted,
        if full { "" } else { "; --full reads them" }
    );
    let legacy = WalStore::new(&st.paths).list_legacy()?;
    if let (Some(a), Some(b)) = (legacy.first(), legacy.last()) {
        println!(
            "{} files without .meta ({a} .. {b}): a Skytools archive or interrupted writes; \
             xrestore serves them after a header check, without a checksum",
            legacy.len()
        );
    }
    if r.problems.is_empty() {
        Ok(())
    } else {
        Err(WalmgrError::Verify(format!(
            "verify: {} problem(s) in {}",
            r.problems.len(),
            st.paths.completed_wals.display()
        )))
    }
}

pub fn cleanup(st: &StoreSettings, dry_run: bool) -> Result<()> {
    let store = WalStore::new(&st.paths);
    if dry_run {
        println!("would remove stale temp files, unacknowledged files and WAL older than the oldest backup");
        return Ok(());
    }
    for p in store.cleanup()? {
        println!("removed {}", p.display());
    }
    let backups = Backups::new(&st.paths);
    for p in backups.cleanup_staging()? {
        println!("removed {}", p.display());
    }
    if let Some(oldest) = backups.oldest_start_segment()? {
        let n = store.purge_before(&WalName::parse(&oldest)?)?;
        println!("removed {n} archived files older than {oldest}");
    }
    Ok(())
}
