//! inotify on Ganeti's job queue and its archive, as a tokio stream of changes.
//!
//! Ganeti only ever renames finished files onto `job-<id>` (IN_MOVED_TO); archiving is a
//! rename into `archive/<id / 10000>/`, a directory created on first use. A new
//! directory gets its watch first and is listed second, so a file renamed into it in
//! between is seen either way. A queue overflow asks the caller for a full rescan.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use futures_util::{FutureExt, StreamExt};
use inotify::{Event, EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

use super::processor::{list_names, Location};
use crate::ganeti::jobfile::job_id_from_name;

/// Events taken per wake-up at most (one batch, one spool entry).
const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queue,
    ArchiveRoot,
    ArchiveSub,
}

/// What the queue watcher saw.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// These jobs were (re)written or archived.
    Jobs(BTreeMap<u64, Location>),
    /// Events were lost (IN_Q_OVERFLOW) or a watched directory vanished.
    Rescan,
}

pub struct QueueWatch {
    queue_dir: PathBuf,
    stream: EventStream<Vec<u8>>,
    kinds: HashMap<WatchDescriptor, Kind>,
}

impl QueueWatch {
    pub fn new(queue_dir: &Path) -> std::io::Result<QueueWatch> {
        let inotify = Inotify::init()?;
        let stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
        let mut w = QueueWatch {
            queue_dir: queue_dir.to_path_buf(),
            stream,
            kinds: HashMap::new(),
        };
        w.add(queue_dir, Kind::Queue)?;
        let mut ignored = BTreeMap::new();
        w.add_archive_root(&mut ignored);
        Ok(w)
    }

    fn add(&mut self, dir: &Path, kind: Kind) -> std::io::Result<()> {
        let mask = match kind {
            Kind::Queue | Kind::ArchiveRoot => {
                WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::ONLYDIR
            }
            Kind::ArchiveSub => WatchMask::MOVED_TO | WatchMask::ONLYDIR,
        };
        let wd = self.stream.watches().add(dir, mask)?;
        self.kinds.insert(wd, kind);
        Ok(())
    }

    /// Watch `archive/` (if it exists) and each subdirectory, collecting their jobs.
    fn add_archive_root(&mut self, jobs: &mut BTreeMap<u64, Location>) {
        let root = self.queue_dir.join("archive");
        if !root.is_dir() {
            return;
        }
        if let Err(e) = self.add(&root, Kind::ArchiveRoot) {
            log::error!("cannot watch {}: {e}", root.display());
            return;
        }
        for sub in list_names(&root).unwrap_or_default() {
            self.add_archive_sub(&root.join(sub), jobs);
        }
    }

    fn add_archive_sub(&mut self, dir: &Path, jobs: &mut BTreeMap<u64, Location>) {
        if !dir.is_dir() {
            return;
        }
        if let Err(e) = self.add(dir, Kind::ArchiveSub) {
            log::error!("cannot watch {}: {e}", dir.display());
            return;
        }
        for name in list_names(dir).unwrap_or_default() {
            if let Some(id) = job_id_from_name(&name) {
                jobs.insert(id, Location::Archive);
            }
        }
    }

    /// Wait for the next change; events already queued are merged into one batch.
    pub async fn next(&mut self) -> std::io::Result<Change> {
        let first = match self.stream.next().await {
            Some(ev) => ev?,
            None => return Err(std::io::Error::other("inotify stream ended")),
        };
        let mut events = vec![first];
        while events.len() < MAX_BATCH {
            match self.stream.next().now_or_never() {
                Some(Some(ev)) => events.push(ev?),
                _ => break,
            }
        }
        let mut jobs = BTreeMap::new();
        let mut rescan = false;
        for ev in events {
            rescan |= self.handle(ev, &mut jobs);
        }
        Ok(if rescan {
            Change::Rescan
        } else {
            Change::Jobs(jobs)
        })
    }

    /// Fold one event into `jobs`; true if a full rescan is needed.
    fn handle(&mut self, ev: Event<OsString>, jobs: &mut BTreeMap<u64, Location>) -> bool {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            log::warn!(
                "inotify queue overflowed: rescanning {}",
                self.queue_dir.display()
            );
            return true;
        }
        let Some(kind) = self.kinds.get(&ev.wd).copied() else {
            return false;
        };
        if ev.mask.contains(EventMask::IGNORED) {
            self.kinds.remove(&ev.wd);
            if kind == Kind::Queue {
                log::error!("queue directory {} was removed", self.queue_dir.display());
            }
            return kind != Kind::ArchiveSub;
        }
        let name = ev
            .name
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_dir = ev.mask.contains(EventMask::ISDIR);
        match kind {
            Kind::Queue if is_dir && name == "archive" => self.add_archive_root(jobs),
            Kind::ArchiveRoot if is_dir => {
                let dir = self.queue_dir.join("archive").join(&name);
                self.add_archive_sub(&dir, jobs);
            }
            Kind::Queue if ev.mask.contains(EventMask::MOVED_TO) => {
                if let Some(id) = job_id_from_name(&name) {
                    // An archive event in the same batch wins: that is where it is now.
                    jobs.entry(id).or_insert(Location::Queue);
                }
            }
            Kind::ArchiveSub => {
                if let Some(id) = job_id_from_name(&name) {
                    jobs.insert(id, Location::Archive);
                }
            }
            _ => {}
        }
        false
    }
}
