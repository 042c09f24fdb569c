//! Turns job files into messages: read, parse, diff against [`State`], build messages.
//!
//! Synchronous and free of network I/O so it can be driven by tests directly. Changes
//! to the state are returned as a [`Batch`] and applied only after the batch's messages
//! are durably spooled: a batch that cannot be spooled leaves the state untouched and
//! the same jobs are simply read again later.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

pub use super::state::Update;
use super::state::{marks, State};
use crate::amqp::Message;
use crate::ganeti::configdata::ClusterConfig;
use crate::ganeti::jobfile::{self, job_id_from_name};
use crate::ganeti::messages::op_message;
use crate::ganeti::ssconf::Ssconf;

/// Where a job file was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    Queue,
    Archive,
}

/// What one job contributes to a batch: its messages and the state they move it to.
/// The unit of commit: a job's messages are spooled together or not at all.
#[derive(Debug, Default)]
pub struct JobChange {
    pub messages: Vec<Message>,
    pub updates: Vec<Update>,
}

impl JobChange {
    /// Approximate spooled size, for splitting a batch into entries.
    pub fn size(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.body.get().len() + m.routing_key.len() + m.exchange.len() + 64)
            .sum()
    }
}

#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<JobChange>,
    /// Set by a full rescan: ids present on disk, for pruning the state.
    pub present: Option<BTreeSet<u64>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.present.is_none()
    }

    /// All messages, in commit order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.changes.iter().flat_map(|c| c.messages.iter())
    }
}

/// Path of job `id` in the queue or in the archive (`archive/<id / 10000>/job-<id>`).
pub fn job_path(queue_dir: &Path, id: u64, loc: Location) -> PathBuf {
    match loc {
        Location::Queue => queue_dir.join(format!("job-{id}")),
        Location::Archive => queue_dir
            .join("archive")
            .join((id / 10000).to_string())
            .join(format!("job-{id}")),
    }
}

pub struct Processor {
    queue_dir: PathBuf,
    exchange: String,
    node: String,
    ssconf: Ssconf,
    cluster: ClusterConfig,
    state: State,
    /// No checkpoint existed at start: archived history is taken as already published.
    first_run: bool,
    master: Option<bool>,
    /// Job files larger than this are skipped with a warning (see [`JOB_FILE_MAX`]).
    job_file_max: u64,
}

/// The largest job file eventd reads (64 MiB): Ganeti's biggest real jobs are a few
/// MiB; anything larger is skipped with a warning rather than read into memory whole.
pub const JOB_FILE_MAX: u64 = 64 << 20;

/// Read at most `max` bytes of `path`; a larger file is an `InvalidData` error that
/// names the cap (checked on the open file and while reading, so a file that grows
/// after the check is still bounded).
fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if max % (1 << 20) == 0 {
                format!("larger than the {} MiB cap on job files", max >> 20)
            } else {
                format!("larger than the {max}-byte cap on job files")
            },
        )
    };
    let f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(too_big());
    }
    let mut data = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_big());
    }
    Ok(data)
}

impl Processor {
    pub fn new(
        queue_dir: &Path,
        data_dir: &Path,
        exchange: &str,
        node: &str,
        state: Option<State>,
    ) -> Processor {
        Processor {
            queue_dir: queue_dir.to_path_buf(),
            exchange: exchange.to_string(),
            node: node.to_string(),
            ssconf: Ssconf::new(data_dir),
            cluster: ClusterConfig::new(data_dir),
            first_run: state.is_none(),
            state: state.unwrap_or_default(),
            master: None,
            job_file_max: JOB_FILE_MAX,
        }
    }

    pub fn set_exchange(&mut self, exchange: &str) {
        self.exchange = exchange.to_string();
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue_dir
    }

    /// Read ssconf again (logging a change): is this node the master now?
    pub fn refresh_master(&mut self) -> bool {
        self.is_master()
    }

    /// Is this node the master right now? Logged when the answer changes.
    fn is_master(&mut self) -> bool {
        let (now, why) = match self.ssconf.master_node() {
            Ok(m) if m == self.node => (true, format!("this node ({}) is the master", self.node)),
            Ok(m) => (
                false,
                format!("master is {m}, this node is {}: not publishing", self.node),
            ),
            Err(e) => (
                false,
                format!(
                    "cannot read {}/ssconf_master_node ({e}): not publishing",
                    self.ssconf.data_dir().display()
                ),
            ),
        };
        if self.master != Some(now) {
            if now {
                log::info!("{why}");
            } else {
                log::warn!("{why}");
            }
            self.master = Some(now);
        }
        now
    }

    /// Read the given jobs and build the batch of messages and state updates.
    pub fn collect(&mut self, jobs: &BTreeMap<u64, Location>) -> Batch {
        let master = self.is_master();
        let cluster_name = self.ssconf.cluster_name();
        let mut batch = Batch::default();
        for (&id, &loc) in jobs {
            if loc == Location::Archive && self.state.is_done(id) {
                continue;
            }
            let Some((job, loc)) = self.read_job(id, loc) else {
                continue;
            };
            let now = marks(&job);
            let changed = self.state.changed_ops(id, &now);
            let mut change = JobChange::default();
            if master {
                for i in &changed {
                    if let Some(m) = op_message(&job, *i, &cluster_name, &mut self.cluster) {
                        match Message::new(&self.exchange, &m.routing_key, &m.body) {
                            Ok(msg) => change.messages.push(msg),
                            Err(e) => log::error!("job {id} op {i}: cannot encode message: {e}"),
                        }
                    }
                }
            }
            if !changed.is_empty() {
                change.updates.push(Update::Record(id, now.clone()));
            }
            if loc == Location::Archive && now.iter().all(|(s, _)| s.is_finalized()) {
                change.updates.push(Update::Done(id));
            }
            if !change.updates.is_empty() {
                batch.changes.push(change);
            }
        }
        batch
    }

    /// Read job `id`, looking in the other place if it moved meanwhile. Unreadable or
    /// invalid files are logged with their path and skipped: the next rename of the
    /// file brings it back.
    fn read_job(&self, id: u64, loc: Location) -> Option<(jobfile::Job, Location)> {
        let other = match loc {
            Location::Queue => Location::Archive,
            Location::Archive => Location::Queue,
        };
        for l in [loc, other] {
            let path = job_path(&self.queue_dir, id, l);
            match read_capped(&path, self.job_file_max) {
                Ok(data) => {
                    return match jobfile::parse(&data, Some(id)) {
                        Ok(job) => Some((job, l)),
                        Err(e) => {
                            log::warn!("skipping job file {}: {e}", path.display());
                            None
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    log::warn!("skipping job file {}: {e}", path.display());
                    return None;
                }
            }
        }
        None
    }

    /// List every job file in the queue and the archive and build a batch for what
    /// changed since the state was recorded.
    pub fn rescan(&mut self) -> std::io::Result<Batch> {
        let mut jobs = BTreeMap::new();
        let mut present = BTreeSet::new();
        let mut baseline = Vec::new();
        for name in list_names(&self.queue_dir)? {
            if let Some(id) = job_id_from_name(&name) {
                jobs.insert(id, Location::Queue);
                present.insert(id);
            }
        }
        let archive = self.queue_dir.join("archive");
        for sub in list_names(&archive).unwrap_or_default() {
            let dir = archive.join(&sub);
            if !dir.is_dir() {
                continue;
            }
            for name in list_names(&dir).unwrap_or_default() {
                if let Some(id) = job_id_from_name(&name) {
                    present.insert(id);
                    if self.first_run {
                        baseline.push(id);
                    } else {
                        jobs.entry(id).or_insert(Location::Archive);
                    }
                }
            }
        }
        let mut batch = self.collect(&jobs);
        if self.first_run && !baseline.is_empty() {
            log::info!(
                "no checkpoint yet: taking {} archived jobs as already published",
                baseline.len()
            );
        }
        if !baseline.is_empty() {
            batch.changes.push(JobChange {
                messages: Vec::new(),
                updates: baseline.into_iter().map(Update::Done).collect(),
            });
        }
        batch.present = Some(present);
        Ok(batch)
    }

    /// These changes were spooled: make their updates the recorded state.
    pub fn apply(&mut self, changes: Vec<JobChange>) {
        for u in changes.iter().flat_map(|c| c.updates.iter()) {
            self.state.apply(u);
        }
    }

    /// A whole rescan was committed: prune jobs no longer on disk.
    pub fn finish_rescan(&mut self, present: &BTreeSet<u64>) {
        self.state.prune(present);
        self.first_run = false;
    }

    /// Apply a whole batch (tests, and callers that spool it in one piece).
    pub fn apply_batch(&mut self, batch: Batch) {
        self.apply(batch.changes);
        if let Some(p) = batch.present {
            self.finish_rescan(&p);
        }
    }
}

/// Names in a directory (error if it cannot be listed).
pub fn list_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        out.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VERSIONS: [&str; 6] = [
        "v1-queued",
        "v2-queued",
        "v3-queued",
        "v4-waiting",
        "v5-running",
        "v6-success",
    ];

    fn version(v: &str) -> Vec<u8> {
        let p = format!(
            "{}/tests/fixtures/ganeti/job-versions/job-6-instance-startup-{v}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        fs::read(p).unwrap()
    }

    struct Env {
        _d: tempfile::TempDir,
        queue: PathBuf,
        data: PathBuf,
    }

    fn env(master: &str) -> Env {
        let d = tempfile::tempdir().unwrap();
        let queue = d.path().join("queue");
        let data = d.path().join("data");
        fs::create_dir_all(&queue).unwrap();
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("ssconf_master_node"), format!("{master}\n")).unwrap();
        fs::write(data.join("ssconf_cluster_name"), "cluster.example.test\n").unwrap();
        Env { _d: d, queue, data }
    }

    fn statuses(b: &Batch) -> Vec<String> {
        b.messages()
            .map(|m| {
                let v: Value = serde_json::from_str(m.body.get()).unwrap();
                v["status"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn each_version_publishes_only_what_changed() {
        let e = env("node1");
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        let jobs = BTreeMap::from([(6, Location::Queue)]);
        let mut seen = Vec::new();
        for v in VERSIONS {
            fs::write(e.queue.join("job-6"), version(v)).unwrap();
            let b = p.collect(&jobs);
            seen.extend(statuses(&b));
            p.apply_batch(b);
        }
        // v2/v3 change nothing eventd reports (only livelock).
        assert_eq!(seen, vec!["queued", "waiting", "running", "success"]);
    }

    #[test]
    fn a_slow_reader_skips_states_but_not_the_last() {
        let e = env("node1");
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        fs::write(e.queue.join("job-6"), version("v6-success")).unwrap();
        let b = p.collect(&BTreeMap::from([(6, Location::Queue)]));
        assert_eq!(statuses(&b), vec!["success"]);
    }

    #[test]
    fn unapplied_batch_is_rebuilt() {
        let e = env("node1");
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        fs::write(e.queue.join("job-6"), version("v4-waiting")).unwrap();
        let jobs = BTreeMap::from([(6, Location::Queue)]);
        let b1 = p.collect(&jobs);
        drop(b1); // spooling failed
        let b2 = p.collect(&jobs);
        assert_eq!(statuses(&b2), vec!["waiting"]);
    }

    #[test]
    fn non_master_records_but_sends_nothing() {
        let e = env("node2");
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        fs::write(e.queue.join("job-6"), version("v4-waiting")).unwrap();
        let jobs = BTreeMap::from([(6, Location::Queue)]);
        let b = p.collect(&jobs);
        assert_eq!(b.messages().count(), 0);
        p.apply_batch(b);
        // Becoming master later publishes only later changes.
        fs::write(e.data.join("ssconf_master_node"), "node1\n").unwrap();
        fs::write(e.queue.join("job-6"), version("v5-running")).unwrap();
        assert_eq!(statuses(&p.collect(&jobs)), vec!["running"]);
    }

    #[test]
    fn bad_files_are_skipped() {
        let e = env("node1");
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        fs::write(e.queue.join("job-6"), &version("v6-success")[..100]).unwrap();
        fs::write(e.queue.join("job-7"), "[]").unwrap();
        let b = p.collect(&BTreeMap::from([
            (6, Location::Queue),
            (7, Location::Queue),
            (8, Location::Queue),
        ]));
        assert!(b.is_empty());
    }

    #[test]
    fn an_oversized_job_file_is_skipped_and_named() {
        let e = env("node1");
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        // A valid job padded past the cap (a small cap here; 64 MiB by default).
        let mut data = version("v5-running");
        p.job_file_max = data.len() as u64 + 10;
        data.extend(std::iter::repeat_n(b' ', 11));
        fs::write(e.queue.join("job-6"), &data).unwrap();
        let jobs = BTreeMap::from([(6, Location::Queue)]);
        assert!(p.collect(&jobs).is_empty());
        let err = read_capped(&e.queue.join("job-6"), p.job_file_max).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let want = format!("larger than the {}-byte cap on job files", p.job_file_max);
        assert!(err.to_string().contains(&want), "{err}");
        let err = read_capped(&e.queue.join("job-6"), 0).unwrap_err();
        assert!(err.to_string().contains("the 0 MiB cap"), "{err}");
        // At the cap exactly it is read.
        data.pop();
        fs::write(e.queue.join("job-6"), &data).unwrap();
        assert_eq!(statuses(&p.collect(&jobs)), vec!["running"]);
    }

    #[test]
    fn rescan_finds_moved_jobs_and_baselines_archive_on_first_run() {
        let e = env("node1");
        let arch = e.queue.join("archive/0");
        fs::create_dir_all(&arch).unwrap();
        fs::write(
            arch.join("job-5"),
            version("v6-success")
                .iter()
                .map(|_| b' ')
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let mut p = Processor::new(&e.queue, &e.data, "ganeti", "node1", None);
        fs::write(e.queue.join("job-6"), version("v4-waiting")).unwrap();
        let b = p.rescan().unwrap();
        // job-5 (unparseable, but archived history) is never read on a first run.
        assert_eq!(statuses(&b), vec!["waiting"]);
        assert!(b
            .changes
            .iter()
            .any(|c| c.updates.contains(&Update::Done(5))));
        p.apply_batch(b);
        assert!(p.state().is_done(5));
        // Job 6 finishes and is archived while we are not looking.
        fs::write(arch.join("job-6"), version("v6-success")).unwrap();
        fs::remove_file(e.queue.join("job-6")).unwrap();
        let b = p.rescan().unwrap();
        assert_eq!(statuses(&b), vec!["success"]);
        assert!(b
            .changes
            .iter()
            .any(|c| c.updates.contains(&Update::Done(6))));
        p.apply_batch(b);
        assert_eq!(p.state().live_jobs(), 0);
        assert_eq!(p.rescan().unwrap().messages().count(), 0);
    }
}
