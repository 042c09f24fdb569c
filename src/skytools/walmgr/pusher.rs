//! Asynchronous, parallel archiving (`archive_async = yes`, `parallel = N`).
//!
//! PostgreSQL's archiver calls archive_command once per segment, one at a time; each call
//! costs a process start, a read, compression, a store round trip and an fsync. Here a
//! background pusher (one per `spool_dir`, under its flock) stores the segments
//! PostgreSQL has marked ready (`pg_wal/archive_status/*.ready`) before it asks, N at a
//! time in WAL order, through the same [`archive::store_segment`] as the synchronous
//! path, and records each one in the spool only after the store acknowledged it. An
//! archive_command call then finds its segment done and exits 0 at once; otherwise it
//! makes sure the pusher runs, waits for it (`archive_async_wait`), and else stores the
//! segment itself. No path returns 0 for a segment the store has not acknowledged, and
//! nothing is ever dropped: past `archive_queue_max` waiting segments every call warns,
//! and PostgreSQL keeps the WAL in pg_wal until it is stored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::archive;
use super::config::Master;
use super::error::{io_err, Result};
use super::spool::{self, FileIdent, Spool};

/// The pusher exits after this long without a ready segment to store.
const IDLE: Duration = Duration::from_secs(10);
/// And after this many rounds in a row in which every push failed (the store is down):
/// the next archive_command call starts it again.
const MAX_FAILED_ROUNDS: u32 = 10;
const POLL: Duration = Duration::from_millis(20);

/// What a waiting archive_command does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The pusher stored it: exit 0.
    Done,
    Wait,
    /// Store it here and now (the pusher is gone, or took too long).
    PushHere,
}

/// One look at the spool while archive_command waits for its segment.
pub fn next(done: bool, pusher_running: bool, waited: Duration, wait: Duration) -> Next {
    if done {
        Next::Done
    } else if !pusher_running || waited >= wait {
        Next::PushHere
    } else {
        Next::Wait
    }
}

/// Segments marked ready in `<data>/pg_wal/archive_status`, in WAL order (names sort so:
/// a timeline's history file before its segments, timelines in turn), with the mtime of
/// the oldest `.ready` mark.
pub fn ready(data: &Path) -> Result<(BTreeSet<String>, Option<std::time::SystemTime>)> {
    let dir = data.join("pg_wal/archive_status");
    let rd = std::fs::read_dir(&dir).map_err(io_err("list", &dir))?;
    let mut out = BTreeSet::new();
    let mut oldest: Option<std::time::SystemTime> = None;
    for e in rd {
        let e = e.map_err(io_err("list", &dir))?;
        let f = e.file_name();
        let Some(name) = f.to_str().and_then(|s| s.strip_suffix(".ready")) else {
            continue;
        };
        if super::walname::WalName::parse(name).is_err() {
            continue;
        }
        if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
        out.insert(name.to_string());
    }
    Ok((out, oldest))
}

/// Ready segments that have no done record for the file now in pg_wal, in WAL order.
pub fn pending(data: &Path, spool: &Spool, ready: &BTreeSet<String>) -> Vec<String> {
    ready
        .iter()
        .filter(|n| !spool.stored(n, &data.join("pg_wal").join(n)))
        .cloned()
        .collect()
}

/// archive_command in async mode.
pub fn xarchive_async(m: &Master, path: &Path, name: &str) -> Result<()> {
    let spool = match Spool::open(&m.push.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("{e}; archive_async off for {name}: storing it now");
            return archive::store_segment(m, path, name).map(|_| ());
        }
    };
    if spool.stored(name, path) {
        log::debug!("{name}: stored by the background pusher");
        return Ok(());
    }
    let mut child = ensure_running(m, &spool);
    if let Ok((ready, _)) = ready(&m.master_data) {
        let waiting = pending(&m.master_data, &spool, &ready).len() as u64;
        if waiting > m.push.queue_max {
            log::warn!(
                "ARCHIVE QUEUE FULL: {waiting} segments wait to be archived \
                 (archive_queue_max = {}); the store is not keeping up. Nothing is dropped: \
                 PostgreSQL keeps them in pg_wal, which grows until they are stored",
                m.push.queue_max
            );
        }
    }
    let started = Instant::now();
    loop {
        let running = spool::held(&spool.lock_path())
            || child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        match next(
            spool.stored(name, path),
            running,
            started.elapsed(),
            m.push.wait,
        ) {
            Next::Done => {
                log::debug!("{name}: stored by the background pusher");
                return Ok(());
            }
            Next::Wait => std::thread::sleep(POLL),
            Next::PushHere => break,
        }
    }
    log::debug!("{name}: not stored by the pusher yet; storing it here");
    archive::store_segment(m, path, name).map(|_| ())
}

/// Start the pusher unless one holds the spool's lock. A failure to start it is only
/// logged: this call then stores its segment itself.
fn ensure_running(m: &Master, spool: &Spool) -> Option<std::process::Child> {
    if spool::held(&spool.lock_path()) {
        return None;
    }
    match spool::spawn_self(&m.ini, &["xpush"], &m.master_data) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("cannot start the background pusher: {e}");
            None
        }
    }
}

/// `walmgr <master.ini> xpush`: the background pusher. Returns at once if another one
/// runs; else pushes until idle.
pub fn run(m: &Master) -> Result<()> {
    let spool = Spool::open(&m.push.spool_dir)?;
    let Some(mut lock) = spool::try_lock(&spool.lock_path())? else {
        return Ok(());
    };
    spool::write_pid(&mut lock);
    log::debug!(
        "pusher: started ({} at a time, spool {})",
        m.push.parallel,
        spool.dir.display()
    );
    let mut last_work = Instant::now();
    let mut failed_rounds = 0;
    let mut warned_full = false;
    let mut stored = 0;
    loop {
        let (ready, _) = ready(&m.master_data)?;
        spool.prune(&ready)?;
        let todo = pending(&m.master_data, &spool, &ready);
        if todo.is_empty() {
            if last_work.elapsed() >= IDLE {
                log::info!("pusher: idle, exiting ({stored} segments stored)");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let full = todo.len() as u64 > m.push.queue_max;
        if full && !warned_full {
            log::warn!(
                "pusher: {} segments wait to be archived (archive_queue_max = {}); \
                 nothing is dropped, pg_wal grows until they are stored",
                todo.len(),
                m.push.queue_max
            );
        }
        warned_full = full;
        let (ok, failed) = round(m, &spool, &todo);
        stored += ok;
        last_work = Instant::now();
        if ok == 0 && failed > 0 {
            failed_rounds += 1;
            if failed_rounds >= MAX_FAILED_ROUNDS {
                log::warn!(
                    "pusher: {failed_rounds} rounds without storing anything; exiting \
                     (archive_command stores its segments itself and restarts the pusher)"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(u64::from(failed_rounds.min(5))));
        } else {
            failed_rounds = 0;
        }
    }
}

/// Push `todo` with `parallel` threads, each taking the oldest segment not yet taken.
/// Returns (stored, failed).
fn round(m: &Master, spool: &Spool, todo: &[String]) -> (usize, usize) {
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let workers = m.push.parallel.min(todo.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = todo.get(i) else { break };
                match push_one(m, spool, name) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        log::warn!("pusher: {name}: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            });
        }
    });
    (ok.into_inner(), failed.into_inner())
}

/// Store one segment and record it, provided the file was the same before and after it
/// was read (a segment marked ready is never written again; if it changed, it was
/// recycled and is not ours to record).
fn push_one(m: &Master, spool: &Spool, name: &str) -> Result<()> {
    let path: PathBuf = m.master_data.join("pg_wal").join(name);
    let before = match FileIdent::of(&path) {
        Ok(i) => i,
        // Archived meanwhile by archive_command itself and recycled: nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", &path)(e)),
    };
    let meta = archive::store_segment(m, &path, name)?;
    match FileIdent::of(&path) {
        Ok(after) if after == before && after.size == meta.size => spool.record(&meta, after),
        _ => {
            log::debug!("pusher: {name}: file changed while it was stored; not recorded");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_command_never_returns_before_the_store_said_so() {
        let w = Duration::from_secs(30);
        let s = Duration::from_secs(1);
        assert_eq!(next(true, true, s, w), Next::Done);
        assert_eq!(next(true, false, w, w), Next::Done);
        assert_eq!(next(false, true, s, w), Next::Wait);
        // No pusher (it died, or never started): store it here, do not wait.
        assert_eq!(next(false, false, Duration::ZERO, w), Next::PushHere);
        // A pusher that takes too long: store it here.
        assert_eq!(next(false, true, w, w), Next::PushHere);
        // archive_async_wait = 0: never wait.
        assert_eq!(
            next(false, true, Duration::ZERO, Duration::ZERO),
            Next::PushHere
        );
    }

    #[test]
    fn ready_lists_wal_names_in_order() {
        let d = tempfile::tempdir().unwrap();
        let st = d.path().join("pg_wal/archive_status");
        std::fs::create_dir_all(&st).unwrap();
        for f in [
            "000000020000000000000004.ready",
            "00000002.history.ready",
            "000000010000000000000003.ready",
            "000000010000000000000002.done",
            "junk.ready",
        ] {
            std::fs::write(st.join(f), b"").unwrap();
        }
        let (r, oldest) = ready(d.path()).unwrap();
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            [
                "000000010000000000000003",
                "00000002.history",
                "000000020000000000000004"
            ]
        );
        assert!(oldest.is_some());
    }
}
