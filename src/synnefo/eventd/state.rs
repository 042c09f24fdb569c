//! What eventd last published for each job, and its durable checkpoint.
//!
//! Per live job: each op's (status, number of log entries) as of the last spooled
//! message. A new version of a job file produces one message per op whose pair changed.
//! Jobs that are archived with every op final move to a compact set of done ids, so a
//! restart rescans the archive without re-reading (or re-publishing) old jobs.
//!
//! Durability ([`StateStore`]): a snapshot (`eventd.checkpoint`) plus an append-only
//! journal (`eventd.journal`) with one fdatasync'd line per committed batch, so the cost
//! of a commit does not grow with the number of live jobs. The journal line is written
//! after the spool entry it reflects, so after a crash the state is never ahead of what
//! was spooled: the worst case is re-deriving (and sending again) the batch that was
//! being committed. The snapshot is rewritten and the journal emptied from time to time;
//! replaying a journal over a snapshot that already holds it ends in the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, PathError};
use crate::ganeti::jobfile::{Job, OpStatus};

const FORMAT: u32 = 1;

/// (status, log entries) of one op. A u32 count keeps the pair at 8 bytes (a job's op
/// has at most a few thousand log entries; more saturate, which still compares as a change).
pub type OpMark = (OpStatus, u32);

/// One live job's marks as kept in memory: nearly every job eventd sees has one op, kept
/// inline; more go to the heap. With tens of thousands of live jobs this is the daemon's
/// largest state: 16 bytes in the map's node instead of a Vec's 24 plus an allocation
/// of its own. Serialized as the plain list it stands for (the checkpoint's format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<OpMark>", into = "Vec<OpMark>")]
enum Marks {
    One(OpMark),
    Many(Box<[OpMark]>),
}

impl From<Vec<OpMark>> for Marks {
    fn from(v: Vec<OpMark>) -> Marks {
        match v.as_slice() {
            [one] => Marks::One(*one),
            _ => Marks::Many(v.into_boxed_slice()),
        }
    }
}

impl From<Marks> for Vec<OpMark> {
    fn from(m: Marks) -> Vec<OpMark> {
        m.as_slice().to_vec()
    }
}

impl Marks {
    fn as_slice(&self) -> &[OpMark] {
        match self {
            Marks::One(m) => std::slice::from_ref(m),
            Marks::Many(b) => b,
        }
    }
}

/// One change to the state, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// The job's ops now stand at these marks.
    Record(u64, Vec<OpMark>),
    /// The job is archived and final.
    Done(u64),
}

pub const SNAPSHOT: &str = "eventd.checkpoint";
pub const JOURNAL: &str = "eventd.journal";
/// Compact when the journal grows past this...
const JOURNAL_MAX: u64 = 4 << 20;
/// ...or when it has anything and the last compaction is this old.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    format: u32,
    jobs: BTreeMap<u64, Marks>,
    done: RangeInclusiveSet<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("state file {path} is unreadable ({reason}); move it aside to start afresh")]
    Corrupt { path: PathBuf, reason: String },
}

/// The marks a job file shows now.
pub fn marks(job: &Job) -> Vec<OpMark> {
    job.ops
        .iter()
        .map(|o| (o.status, u32::try_from(o.log.len()).unwrap_or(u32::MAX)))
        .collect()
}

impl Default for State {
    fn default() -> State {
        State {
            format: FORMAT,
            jobs: BTreeMap::new(),
            done: RangeInclusiveSet::new(),
        }
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Indexes of ops whose mark differs from what was last recorded.
    pub fn changed_ops(&self, id: u64, now: &[OpMark]) -> Vec<usize> {
        let before = self.jobs.get(&id).map(Marks::as_slice);
        now.iter()
            .enumerate()
            .filter(|(i, m)| before.and_then(|b| b.get(*i)) != Some(m))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn record(&mut self, id: u64, now: Vec<OpMark>) {
        self.jobs.insert(id, Marks::from(now));
    }

    pub fn is_done(&self, id: u64) -> bool {
        self.done.contains(&id)
    }

    /// The job is archived and final: forget its ops, remember only its id.
    pub fn mark_done(&mut self, id: u64) {
        self.jobs.remove(&id);
        self.done.insert(id..=id);
    }

    pub fn apply(&mut self, u: &Update) {
        match u {
            Update::Record(id, m) => self.record(*id, m.clone()),
            Update::Done(id) => self.mark_done(*id),
        }
    }

    /// The marks recorded for a live job.
    pub fn job_marks(&self, id: u64) -> Option<&[OpMark]> {
        self.jobs.get(&id).map(Marks::as_slice)
    }

    pub fn live_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// After a full rescan: forget jobs that exist neither in the queue nor the archive
    /// (a destroyed cluster, Ganeti's cleaner), so the state cannot grow without bound.
    pub fn prune(&mut self, present: &BTreeSet<u64>) {
        self.jobs.retain(|id, _| present.contains(id));
        let mut done = RangeInclusiveSet::new();
        for r in self.done.iter() {
            for id in present.range(r.clone()) {
                done.insert(*id..=*id);
            }
        }
        self.done = done;
    }

    /// Load the checkpoint; `Ok(None)` when there is none yet (first run).
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::new("read", path, e).into()),
        };
        let reader = BufReader::with_capacity(64 * 1024, file);
        let state: State = serde_json::from_reader(reader).map_err(|e| {
            if e.is_io() {
                StateError::Io(PathError::new("read", path, std::io::Error::other(e)))
            } else {
                StateError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })?;
        if state.format != FORMAT {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("format {} (this version reads {FORMAT})", state.format),
            });
        }
        Ok(Some(state))
    }

    /// Write the checkpoint durably.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        // Streamed: with tens of thousands of live jobs a serialized copy in memory
        // would be the daemon's largest allocation.
        fsutil::write_atomic_with(path, 0o640, true, |f| {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
            serde_json::to_writer(&mut w, self).map_err(std::io::Error::other)?;
            w.flush()
        })?;
        Ok(())
    }
}

/// The snapshot + journal pair in a directory.
#[derive(Debug)]
pub struct StateStore {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    journal_bytes: u64,
    /// The journal may hold bytes past `journal_bytes` (a failed append).
    torn: bool,
    last_compaction: Instant,
}

impl StateStore {
    /// Open the store in `dir`, returning the recovered state (`None`: first run).
    ///
    /// A torn last journal line (a crash or a full disk mid-append) is cut off here, so
    /// the next append starts on a line of its own instead of gluing onto the fragment
    /// (which would make the journal unreadable at the start after).
    pub fn open(dir: &Path) -> Result<(StateStore, Option<State>), StateError> {
        let (state, journal_bytes, torn) = Self::recover(dir)?;
        let journal_path = dir.join(JOURNAL);
        let journal = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&journal_path)
            .map_err(|e| PathError::new("open", &journal_path, e))?;
        let mut store = StateStore {
            snapshot: dir.join(SNAPSHOT),
            journal_path,
            journal,
            journal_bytes,
            torn,
            last_compaction: Instant::now(),
        };
        if torn {
            log::warn!(
                "{}: cutting an incomplete last line (a batch being committed when the \
                 journal write stopped; it is derived and sent again)",
                store.journal_path.display()
            );
            store.cut_torn()?;
        }
        Ok((store, state))
    }

    /// Read the state a store in `dir` holds, without opening it for writing.
    pub fn peek(dir: &Path) -> Result<Option<State>, StateError> {
        Self::recover(dir).map(|(s, _, _)| s)
    }

    /// The state, the length of the journal's good prefix (whole, newline-terminated
    /// lines), and whether something follows it (a torn last line).
    fn recover(dir: &Path) -> Result<(Option<State>, u64, bool), StateError> {
        let mut state = State::load(&dir.join(SNAPSHOT))?;
        let path = dir.join(JOURNAL);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((state, 0, false)),
            Err(e) => return Err(PathError::new("open", &path, e).into()),
        };
        let mut reader = BufReader::new(file);
        let mut good = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| PathError::new("read", &path, e))?;
            if n == 0 {
                return Ok((state, good, false));
            }
            let parsed = if line.last() == Some(&b'\n') {
                serde_json::from_slice::<Vec<Update>>(&line[..n - 1])
            } else {
                // No newline: the write did not finish (even if the JSON is whole).
                return Ok((state, good, true));
            };
            match parsed {
                Ok(updates) => {
                    let s = state.get_or_insert_with(State::new);
                    for u in &updates {
                        s.apply(u);
                    }
                    good += n as u64;
                }
                // A garbled last line is a batch whose journal write did not finish: its
                // spool entry may exist, and re-deriving it only repeats messages.
                Err(_) if reader.fill_buf().map(|b| b.is_empty()).unwrap_or(false) => {
                    return Ok((state, good, true));
                }
                Err(e) => {
                    return Err(StateError::Corrupt {
                        path: path.clone(),
                        reason: format!("at byte {good}: {e}"),
                    })
                }
            }
        }
    }

    /// Truncate the journal back to its last good line.
    fn cut_torn(&mut self) -> Result<(), StateError> {
        self.journal
            .set_len(self.journal_bytes)
            .and_then(|()| self.journal.sync_all())
            .map_err(|e| PathError::new("truncate", &self.journal_path, e))?;
        self.torn = false;
        Ok(())
    }

    /// Durably record one committed batch's updates. A failed write (disk full) may
    /// leave part of the line behind: it is cut off at once, or before the next append
    /// if that fails too.
    pub fn append(&mut self, updates: &[Update]) -> Result<(), StateError> {
        if updates.is_empty() {
            return Ok(());
        }
        if self.torn {
            self.cut_torn()?;
        }
        let mut line = serde_json::to_vec(updates).expect("updates serialize");
        line.push(b'\n');
        if let Err(e) = self
            .journal
            .write_all(&line)
            .and_then(|()| self.journal.sync_data())
        {
            self.torn = true;
            let _ = self.cut_torn();
            return Err(PathError::new("append to", &self.journal_path, e).into());
        }
        self.journal_bytes += line.len() as u64;
        Ok(())
    }

    pub fn wants_compaction(&self) -> bool {
        self.journal_bytes >= JOURNAL_MAX
            || (self.journal_bytes > 0 && self.last_compaction.elapsed() >= COMPACT_EVERY)
    }

    /// Write `state` as the snapshot, then empty the journal.
    pub fn compact(&mut self, state: &State) -> Result<(), StateError> {
        state.save(&self.snapshot)?;
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_all())
            .map_err(|e| PathError::new("truncate", &self.journal_path, e))?;
        self.journal_bytes = 0;
        self.torn = false;
        self.last_compaction = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_job_costs_sixteen_bytes_and_keeps_its_format() {
        assert_eq!(std::mem::size_of::<Marks>(), 16);
        for v in [
            vec![],
            vec![(OpStatus::Running, 3)],
            vec![(OpStatus::Success, 1), (OpStatus::Queued, 0)],
        ] {
            let m = Marks::from(v.clone());
            assert_eq!(m.as_slice(), v.as_slice());
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, serde_json::to_string(&v).unwrap());
            assert_eq!(serde_json::from_str::<Marks>(&json).unwrap(), m);
        }
    }
    use OpStatus::*;

    #[test]
    fn changes_are_per_op_status_or_log() {
        let mut s = State::new();
        assert_eq!(s.changed_ops(1, &[(Queued, 0), (Queued, 0)]), vec![0, 1]);
        s.record(1, vec![(Queued, 0), (Queued, 0)]);
        assert!(s.changed_ops(1, &[(Queued, 0), (Queued, 0)]).is_empty());
        assert_eq!(s.changed_ops(1, &[(Running, 0), (Queued, 0)]), vec![0]);
        assert_eq!(s.changed_ops(1, &[(Queued, 1), (Queued, 0)]), vec![0]);
    }

    #[test]
    fn done_set_and_prune() {
        let mut s = State::new();
        for id in 1..=1000 {
            s.record(id, vec![(Success, 0)]);
            s.mark_done(id);
        }
        s.record(2000, vec![(Running, 0)]);
        assert!(s.is_done(500));
        assert_eq!(s.live_jobs(), 1);
        // Stored compactly: one range, not a thousand ids.
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.len() < 200, "{json}");
        let present: BTreeSet<u64> = (500..=600).chain([2000]).collect();
        s.prune(&present);
        assert!(!s.is_done(400));
        assert!(s.is_done(550));
        assert_eq!(s.live_jobs(), 1);
        s.prune(&BTreeSet::new());
        assert_eq!(s.live_jobs(), 0);
    }

    #[test]
    fn journal_replays_over_snapshot_and_survives_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let (mut store, s) = StateStore::open(d.path()).unwrap();
        assert_eq!(s, None, "first run");
        let mut state = State::new();
        let batch1 = vec![
            Update::Record(1, vec![(Queued, 0)]),
            Update::Record(2, vec![(Running, 1)]),
        ];
        store.append(&batch1).unwrap();
        batch1.iter().for_each(|u| state.apply(u));
        store.compact(&state).unwrap();
        let batch2 = vec![Update::Record(1, vec![(Success, 0)]), Update::Done(2)];
        store.append(&batch2).unwrap();
        batch2.iter().for_each(|u| state.apply(u));
        drop(store);
        assert_eq!(StateStore::peek(d.path()).unwrap().as_ref(), Some(&state));
        // A crash mid-append leaves a partial line: ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"[{\"Record\":[3,").unwrap();
        let (mut store, recovered) = StateStore::open(d.path()).unwrap();
        assert_eq!(recovered, Some(state.clone()));
        // The fragment is cut, so the next batch is a line of its own and the start
        // after reads it (before, it was glued onto the fragment: Corrupt).
        let batch3 = vec![Update::Record(4, vec![(Running, 2)])];
        store.append(&batch3).unwrap();
        batch3.iter().for_each(|u| state.apply(u));
        drop(store);
        let (_, recovered) = StateStore::open(d.path()).unwrap();
        assert_eq!(recovered, Some(state.clone()));
        // A whole JSON line without its newline, and plain garbage, are torn too.
        let batch4 = vec![Update::Done(4)];
        for tail in [&b"[{\"Done\":9}]"[..], b"\x00\x00garbage\n"] {
            let mut f = OpenOptions::new()
                .append(true)
                .open(d.path().join(JOURNAL))
                .unwrap();
            f.write_all(tail).unwrap();
            let (mut store, recovered) = StateStore::open(d.path()).unwrap();
            assert_eq!(recovered, Some(state.clone()));
            store.append(&batch4).unwrap();
            batch4.iter().for_each(|u| state.apply(u));
        }
        let (_, recovered) = StateStore::open(d.path()).unwrap();
        assert_eq!(recovered, Some(state.clone()));
        // Garbage in the middle is corruption, named with its offset.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"garbage\n[]\n").unwrap();
        let e = StateStore::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("eventd.journal") && e.contains("at byte"), "{e}");
        std::fs::remove_file(d.path().join(JOURNAL)).unwrap();
        state.save(&d.path().join(SNAPSHOT)).unwrap();
        // Replaying a journal over a snapshot that already holds it changes nothing.
        let (mut store, _) = StateStore::open(d.path()).unwrap();
        state.save(&d.path().join(SNAPSHOT)).unwrap();
        drop(store.journal.set_len(0));
        store.append(&batch2).unwrap();
        assert_eq!(StateStore::peek(d.path()).unwrap(), Some(state));
    }

    #[test]
    fn checkpoint_roundtrip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("eventd.checkpoint");
        assert_eq!(State::load(&p).unwrap(), None);
        let mut s = State::new();
        s.record(7, vec![(Waiting, 2)]);
        s.mark_done(3);
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), Some(s));
        std::fs::write(&p, "{").unwrap();
        let e = State::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("eventd.checkpoint") && e.contains("unreadable"),
            "{e}"
        );
    }
}
