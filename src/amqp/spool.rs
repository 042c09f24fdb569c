//! The durable on-disk spool between producers and the broker.
//!
//! One entry is one file holding a batch of messages, written with
//! [`crate::fsutil::write_atomic`], so an entry is either wholly there or absent. Several
//! processes may add entries at once (the daemon, hooks run by Ganeti): names are
//! `<20-digit sequence>-<origin>.msgs`, unique per origin, and the drain publishes them
//! in name order. A producer's sequence never goes below what is already spooled, so a
//! clock step backwards cannot reorder one producer's messages.
//!
//! Format (inspectable with `cat`): a header line `{"hostkit_spool":1,"count":N}`, then
//! N lines, one [`Message`] each.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Message;
use crate::fsutil::{self, PathError, TEMP_PREFIX};

const SUFFIX: &str = ".msgs";
const BAD_DIR: &str = "bad";
/// Temp files older than this belong to a producer that died mid-write.
const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir} is full: {used} bytes used, cap is {cap} (spool_max_bytes)")]
    Full { dir: PathBuf, used: u64, cap: u64 },
    #[error("spool {dir} holds {count} entries, cap is {cap} (spool_max_entries)")]
    TooManyEntries { dir: PathBuf, count: u64, cap: u64 },
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("spool entry {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl SpoolError {
    /// The spool cannot take more right now (cap reached or disk full): retry later.
    pub fn is_full(&self) -> bool {
        match self {
            SpoolError::Full { .. } | SpoolError::TooManyEntries { .. } => true,
            SpoolError::Io(e) => e.is_disk_full(),
            SpoolError::Corrupt { .. } => false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    hostkit_spool: u32,
    count: usize,
}

/// What a spool directory holds, read from disk alone (for `--status`: right even when
/// no process has the spool open, and without creating or cleaning anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    pub entries: u64,
    pub bytes: u64,
    /// Modification time of the oldest entry: its messages have waited since then.
    pub oldest: Option<SystemTime>,
}

/// Count the committed entries of the spool at `dir` (none if it does not exist).
pub fn figures(dir: &Path) -> Result<Figures, SpoolError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Figures::default()),
        Err(e) => return Err(PathError::new("read directory", dir, e).into()),
    };
    let mut f = Figures::default();
    for entry in rd {
        let entry = entry.map_err(|e| PathError::new("read directory", dir, e))?;
        if !is_entry(&entry.file_name().to_string_lossy()) {
            continue;
        }
        // An entry the drain removed meanwhile is simply not counted.
        let Ok(m) = entry.metadata() else { continue };
        f.entries += 1;
        f.bytes += m.len();
        if let Ok(t) = m.modified() {
            f.oldest = Some(f.oldest.map_or(t, |o| o.min(t)));
        }
    }
    Ok(f)
}

/// A spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    cap: u64,
    used: AtomicU64,
    /// Cap on the number of entries (0 = none) and the count as last known.
    max_entries: u64,
    entries: AtomicU64,
    last_seq: Mutex<u64>,
}

fn seq_of(name: &str) -> Option<u64> {
    name.split_once('-').and_then(|(s, _)| s.parse().ok())
}

fn is_entry(name: &str) -> bool {
    name.ends_with(SUFFIX) && seq_of(name).is_some()
}

impl Spool {
    /// Open (creating if needed) a spool with a size cap in bytes (0 = no cap).
    pub fn open(dir: &Path, cap: u64) -> Result<Spool, SpoolError> {
        fsutil::ensure_dir(dir, 0o750)?;
        let spool = Spool {
            dir: dir.to_path_buf(),
            cap,
            used: AtomicU64::new(0),
            max_entries: 0,
            entries: AtomicU64::new(0),
            last_seq: Mutex::new(0),
        };
        let mut last = 0;
        let now = SystemTime::now();
        for entry in fs::read_dir(dir).map_err(|e| PathError::new("read directory", dir, e))? {
            let entry = entry.map_err(|e| PathError::new("read directory", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|m| now.duration_since(m).unwrap_or_default() > STALE_TEMP)
                    .unwrap_or(false);
                if old {
                    let _ = fs::remove_file(entry.path());
                }
            } else if let Some(seq) = seq_of(&name).filter(|_| is_entry(&name)) {
                last = last.max(seq);
            }
        }
        *spool.last_seq.lock().unwrap_or_else(|e| e.into_inner()) = last;
        spool.recount()?;
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes currently spooled (as last counted or tracked).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Refuse appends once the spool holds `n` entries (0 = no cap), as
    /// [`SpoolError::TooManyEntries`], which counts as full.
    pub fn with_max_entries(mut self, n: u64) -> Spool {
        self.max_entries = n;
        self
    }

    /// Entries as last counted or tracked.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Recount the bytes on disk (other processes add entries too); returns the
    /// committed entries, oldest first, found while counting.
    pub fn recount(&self) -> Result<Vec<String>, SpoolError> {
        let names = self.list()?;
        let mut total = 0;
        for name in &names {
            if let Ok(m) = fs::metadata(self.dir.join(name)) {
                total += m.len();
            }
        }
        self.used.store(total, Ordering::Relaxed);
        self.entries.store(names.len() as u64, Ordering::Relaxed);
        Ok(names)
    }

    fn next_seq(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mut last = self.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        *last
    }

    /// Durably add one entry holding `messages`; returns its name. Nothing is written
    /// when the cap would be exceeded.
    pub fn append<'a, I>(&self, origin: &str, messages: I) -> Result<String, SpoolError>
    where
        I: IntoIterator<Item = &'a Message>,
        I::IntoIter: ExactSizeIterator,
    {
        let messages = messages.into_iter();
        let mut buf = serde_json::to_vec(&Header {
            hostkit_spool: 1,
            count: messages.len(),
        })
        .expect("header serializes");
        buf.push(b'\n');
        for m in messages {
            serde_json::to_writer(&mut buf, m).expect("message serializes");
            buf.push(b'\n');
        }
        let used = self.used();
        if self.cap > 0 && used + buf.len() as u64 > self.cap {
            return Err(SpoolError::Full {
                dir: self.dir.clone(),
                used,
                cap: self.cap,
            });
        }
        let count = self.entries();
        if self.max_entries > 0 && count >= self.max_entries {
            return Err(SpoolError::TooManyEntries {
                dir: self.dir.clone(),
                count,
                cap: self.max_entries,
            });
        }
        let name = format!("{:020}-{origin}{SUFFIX}", self.next_seq());
        fsutil::write_atomic_with(&self.dir.join(&name), 0o640, true, |f| f.write_all(&buf))?;
        self.used.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        Ok(name)
    }

    /// Committed entries, oldest first.
    pub fn list(&self) -> Result<Vec<String>, SpoolError> {
        let mut names = Vec::new();
        for entry in
            fs::read_dir(&self.dir).map_err(|e| PathError::new("read directory", &self.dir, e))?
        {
            let entry = entry.map_err(|e| PathError::new("read directory", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_entry(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Read one entry's messages.
    pub fn read(&self, name: &str) -> Result<Vec<Message>, SpoolError> {
        let path = self.dir.join(name);
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file = fs::File::open(&path).map_err(|e| PathError::new("open", &path, e))?;
        let mut lines = BufReader::new(file).lines();
        let header: Header = match lines.next() {
            Some(Ok(l)) => serde_json::from_str(&l).map_err(|e| corrupt(format!("header: {e}")))?,
            Some(Err(e)) => return Err(PathError::new("read", &path, e).into()),
            None => return Err(corrupt("empty file".into())),
        };
        if header.hostkit_spool != 1 {
            return Err(corrupt(format!("unknown version {}", header.hostkit_spool)));
        }
        // The count comes from the file: a flipped bit must end as Corrupt (quarantine),
        // not as an allocation failure that aborts the daemon.
        let mut messages = Vec::with_capacity(header.count.min(1024));
        for (i, line) in lines.enumerate() {
            let line = line.map_err(|e| PathError::new("read", &path, e))?;
            let m: Message = serde_json::from_str(&line)
                .map_err(|e| corrupt(format!("message {}: {e}", i + 1)))?;
            m.check()
                .map_err(|e| corrupt(format!("message {}: {e}", i + 1)))?;
            messages.push(m);
        }
        if messages.len() != header.count {
            return Err(corrupt(format!(
                "header says {} messages, found {}",
                header.count,
                messages.len()
            )));
        }
        Ok(messages)
    }

    /// Remove a fully confirmed entry.
    pub fn remove(&self, name: &str) -> Result<(), SpoolError> {
        let path = self.dir.join(name);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = self
                    .entries
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PathError::new("remove", &path, e).into()),
        }
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(len))
            });
        Ok(())
    }

    /// Move an unreadable entry aside into `bad/` so it stops blocking the queue but
    /// is kept for the operator. Returns where it went.
    pub fn quarantine(&self, name: &str) -> Result<PathBuf, SpoolError> {
        let bad = self.dir.join(BAD_DIR);
        fsutil::ensure_dir(&bad, 0o750)?;
        let to = bad.join(name);
        fs::rename(self.dir.join(name), &to)
            .map_err(|e| PathError::new("move aside", self.dir.join(name), e))?;
        fsutil::sync_dir(&self.dir)?;
        let _ = self.recount();
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Message {
        Message::new(
            "ganeti",
            "ganeti.snf.event.op",
            &serde_json::json!({ "n": n }),
        )
        .unwrap()
    }

    #[test]
    fn append_list_read_remove_in_order() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 0).unwrap();
        let a = s.append("eventd", &[msg(1), msg(2)]).unwrap();
        let b = s.append("eventd", &[msg(3)]).unwrap();
        assert!(a < b);
        assert_eq!(s.list().unwrap(), vec![a.clone(), b.clone()]);
        let got = s.read(&a).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].body.get(), r#"{"n":2}"#);
        assert!(s.used() > 0);
        s.remove(&a).unwrap();
        s.remove(&b).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn figures_come_from_disk_alone() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(figures(&d.path().join("none")).unwrap(), Figures::default());
        let s = Spool::open(d.path(), 0).unwrap();
        let a = s.append("eventd", &[msg(1), msg(2)]).unwrap();
        s.append("hook", &[msg(3)]).unwrap();
        fs::write(d.path().join("eventd.status"), "{}").unwrap();
        let old = SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(d.path().join(&a))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let f = figures(d.path()).unwrap();
        assert_eq!(f.entries, 2);
        assert_eq!(f.bytes, s.used());
        assert_eq!(f.oldest, Some(old));
    }

    #[test]
    fn reopened_spool_never_issues_a_smaller_sequence() {
        let d = tempfile::tempdir().unwrap();
        // An entry from "the future" (clock stepped back since).
        let future = format!("{:020}-eventd{SUFFIX}", u64::MAX / 2);
        fs::write(
            d.path().join(&future),
            "{\"hostkit_spool\":1,\"count\":0}\n",
        )
        .unwrap();
        let s = Spool::open(d.path(), 0).unwrap();
        let n = s.append("eventd", &[msg(1)]).unwrap();
        assert!(n > future, "{n} <= {future}");
    }

    #[test]
    fn the_entry_cap_refuses_without_writing_and_counts_as_full() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 0).unwrap().with_max_entries(2);
        let a = s.append("p", &[msg(1)]).unwrap();
        s.append("p", &[msg(2)]).unwrap();
        let e = s.append("p", &[msg(3)]).unwrap_err();
        assert!(e.is_full());
        assert!(
            e.to_string()
                .contains("holds 2 entries, cap is 2 (spool_max_entries)"),
            "{e}"
        );
        assert_eq!(s.list().unwrap().len(), 2);
        s.remove(&a).unwrap();
        s.append("p", &[msg(3)]).unwrap();
        // Counted from disk on open.
        let s = Spool::open(d.path(), 0).unwrap().with_max_entries(2);
        assert_eq!(s.entries(), 2);
        assert!(s.append("p", &[msg(4)]).is_err());
    }

    #[test]
    fn cap_refuses_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 200).unwrap();
        s.append("eventd", &[msg(1)]).unwrap();
        let e = s.append("eventd", &[msg(2), msg(3), msg(4)]).unwrap_err();
        assert!(e.is_full(), "{e}");
        assert!(e.to_string().contains("spool_max_bytes"), "{e}");
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_entries_are_named_and_quarantined() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 0).unwrap();
        let name = format!("{:020}-hook-1{SUFFIX}", 5);
        fs::write(
            d.path().join(&name),
            "{\"hostkit_spool\":1,\"count\":2}\n{}\n",
        )
        .unwrap();
        let e = s.read(&name).unwrap_err().to_string();
        assert!(e.contains(&name) && e.contains("message 1"), "{e}");
        let to = s.quarantine(&name).unwrap();
        assert!(to.exists());
        assert!(s.list().unwrap().is_empty());
        let trunc = format!("{:020}-hook-1{SUFFIX}", 6);
        fs::write(
            d.path().join(&trunc),
            format!(
                "{{\"hostkit_spool\":1,\"count\":2}}\n{}\n",
                serde_json::to_string(&msg(1)).unwrap()
            ),
        )
        .unwrap();
        let e = s.read(&trunc).unwrap_err().to_string();
        assert!(e.contains("header says 2 messages, found 1"), "{e}");
        let huge = format!("{:020}-hook-1{SUFFIX}", 7);
        fs::write(
            d.path().join(&huge),
            format!("{{\"hostkit_spool\":1,\"count\":{}}}\n", usize::MAX / 2),
        )
        .unwrap();
        let e = s.read(&huge).unwrap_err();
        assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn unpublishable_messages_read_back_as_corrupt() {
        // Written by an older build that did not check names: must be quarantined, not
        // handed to the broker (where it panicked the drain on every start).
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 0).unwrap();
        let mut m = msg(1);
        m.routing_key = "k".repeat(300);
        let name = s.append("eventd", &[m]).unwrap();
        let e = s.read(&name).unwrap_err();
        assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("routing key is 300 bytes"), "{e}");
    }

    #[test]
    fn temp_files_and_foreign_names_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(".tmp-x.msgs.1.0"), "partial").unwrap();
        fs::write(d.path().join("README"), "x").unwrap();
        let s = Spool::open(d.path(), 0).unwrap();
        assert!(s.list().unwrap().is_empty());
        // A fresh temp file (a producer mid-write) must survive open.
        assert!(d.path().join(".tmp-x.msgs.1.0").exists());
    }
}
