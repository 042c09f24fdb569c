//! inotify on Ganeti's job queue and its archive, as a tokio stream of changes.
//!
//! Ganeti only ever renames finished files onto `job-<id>` (IN_MOVED_TO); archiving is a
//! rename into `archive/<id / 10000>/`, a directory created on first use. A new
//! directory gets its watch first and is listed second, so a file renamed into it in
//! between is seen either way. A queue overflow asks the caller for a full rescan.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use inotify::{Event, EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

use super::processor::{list_names, Location};
use crate::ganeti::jobfile::job_id_from_name;

/// Events taken per wake-up at most (one batch, one spool entry).
const MAX_BATCH: usize = 4096;
/// While the queue directory is gone: first and longest wait between looks for it.
const REWATCH_FIRST: Duration = Duration::from_millis(100);
const REWATCH_MAX: Duration = Duration::from_secs(5);

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
    /// The queue directory is watched (false after it was removed, moved away or
    /// unmounted, until it is back).
    queue_watched: bool,
    rewatch_wait: Duration,
}

impl QueueWatch {
    pub fn new(queue_dir: &Path) -> std::io::Result<QueueWatch> {
        let inotify = Inotify::init()?;
        let stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
        let mut w = QueueWatch {
            queue_dir: queue_dir.to_path_buf(),
            stream,
            kinds: HashMap::new(),
            queue_watched: false,
            rewatch_wait: REWATCH_FIRST,
        };
        w.add(queue_dir, Kind::Queue)?;
        w.queue_watched = true;
        let mut ignored = BTreeMap::new();
        w.add_archive_root(&mut ignored);
        Ok(w)
    }

    fn add(&mut self, dir: &Path, kind: Kind) -> std::io::Result<()> {
        let mask = match kind {
            Kind::Queue => {
                WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::MOVE_SELF | WatchMask::ONLYDIR
            }
            Kind::ArchiveRoot => WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::ONLYDIR,
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

    /// The queue directory is gone: look for it again; true once it is watched.
    fn rewatch_queue(&mut self) -> bool {
        let dir = self.queue_dir.clone();
        if !dir.is_dir() {
            self.rewatch_wait = (self.rewatch_wait * 2).min(REWATCH_MAX);
            return false;
        }
        if let Err(e) = self.add(&dir, Kind::Queue) {
            log::error!("cannot watch {} again: {e}", dir.display());
            self.rewatch_wait = (self.rewatch_wait * 2).min(REWATCH_MAX);
            return false;
        }
        self.queue_watched = true;
        self.rewatch_wait = REWATCH_FIRST;
        log::warn!(
            "queue directory {} is back: watching it again",
            dir.display()
        );
        let mut jobs = BTreeMap::new();
        self.add_archive_root(&mut jobs);
        true
    }

    /// The queue directory's watch is gone (removed, moved away, unmounted).
    fn lost_queue(&mut self) {
        if self.queue_watched {
            self.queue_watched = false;
            self.rewatch_wait = REWATCH_FIRST;
            log::error!(
                "queue directory {} was removed or moved away: watching for it to come back",
                self.queue_dir.display()
            );
        }
    }

    /// Wait for the next change; events already queued are merged into one batch.
    /// While the queue directory is gone, it is looked for with a growing wait (up to
    /// 5 s); once it is back and watched, the change is a full rescan.
    pub async fn next(&mut self) -> std::io::Result<Change> {
        let first = loop {
            let ev = if self.queue_watched {
                self.stream.next().await
            } else {
                tokio::select! {
                    ev = self.stream.next() => ev,
                    _ = tokio::time::sleep(self.rewatch_wait) => {
                        if self.rewatch_queue() {
                            return Ok(Change::Rescan);
                        }
                        continue;
                    }
                }
            };
            match ev {
                Some(ev) => break ev?,
                None => return Err(std::io::Error::other("inotify stream ended")),
            }
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
                self.lost_queue();
            }
            return kind != Kind::ArchiveSub;
        }
        if ev.mask.contains(EventMask::MOVE_SELF) && kind == Kind::Queue {
            // Renamed away: the watches would follow the old tree, not the path.
            for (wd, _) in self.kinds.drain() {
                let _ = self.stream.watches().remove(wd);
            }
            self.lost_queue();
            return true;
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
