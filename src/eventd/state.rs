//! What eventd last published for each job, and its durable checkpoint.
//!
//! Per live job: each op's (status, number of log entries) as of the last spooled
//! message. A new version of a job file produces one message per op whose pair changed.
//! Jobs that are archived with every op final move to a compact set of done ids, so a
//! restart rescans the archive without re-reading (or re-publishing) old jobs.
//!
//! The checkpoint is written after the spool entry it reflects, so after a crash the
//! state is never ahead of what was spooled: the worst case is re-deriving (and sending
//! again) the batch that was being committed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, PathError};
use crate::ganeti::jobfile::{Job, OpStatus};

const FORMAT: u32 = 1;

/// (status, log entries) of one op.
pub type OpMark = (OpStatus, usize);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    format: u32,
    jobs: BTreeMap<u64, Vec<OpMark>>,
    done: RangeInclusiveSet<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("checkpoint {path} is unreadable ({reason}); move it aside to start afresh")]
    Corrupt { path: PathBuf, reason: String },
}

/// The marks a job file shows now.
pub fn marks(job: &Job) -> Vec<OpMark> {
    job.ops.iter().map(|o| (o.status, o.log.len())).collect()
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
        let before = self.jobs.get(&id);
        now.iter()
            .enumerate()
            .filter(|(i, m)| before.and_then(|b| b.get(*i)) != Some(m))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn record(&mut self, id: u64, now: Vec<OpMark>) {
        self.jobs.insert(id, now);
    }

    pub fn is_done(&self, id: u64) -> bool {
        self.done.contains(&id)
    }

    /// The job is archived and final: forget its ops, remember only its id.
    pub fn mark_done(&mut self, id: u64) {
        self.jobs.remove(&id);
        self.done.insert(id..=id);
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
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::new("read", path, e).into()),
        };
        let state: State = serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
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
        let data = serde_json::to_vec(self).expect("state serializes");
        fsutil::write_atomic(path, &data, 0o640)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
