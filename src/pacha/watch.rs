//! `pacha daemon`: inotify on the tracked paths, a debounced commit after changes
//! settle (in-place edits included: IN_MODIFY / IN_CLOSE_WRITE / IN_ATTRIB are watched,
//! not a directory's mtime), a full check and push retry every `interval`.
//!
//! The loop is the [`Machine`] below (no I/O, unit-tested) fed by inotify, timers and
//! signals: SIGHUP reloads the configuration and the watches, SIGTERM/SIGINT commit what
//! is pending and stop.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

use crate::daemon::{self, Pidfile, Signal, Signals, Startup};
use crate::logging::Target;

use super::config::{Config, LogTo};
use super::error::PachaError;
use super::ignore::Ignore;
use super::{push, repo, PROGRAM};

/// Longest a stream of changes may postpone its commit.
const MAX_SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    /// Changes seen; commit at `deadline` unless more come.
    Settling {
        first: Instant,
        deadline: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A tracked path changed.
    Change,
    /// The settle deadline passed.
    Timer,
    /// The periodic full check.
    Interval,
    Hup,
    Term,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Commit,
    /// Retry a pending push (the periodic check).
    Check,
    Reload,
    Stop,
}

#[derive(Debug)]
pub struct Machine {
    pub state: State,
    pub debounce: Duration,
}

impl Machine {
    pub fn new(debounce: Duration) -> Machine {
        Machine {
            state: State::Idle,
            debounce,
        }
    }

    /// When the loop must wake up for [`Input::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Idle => None,
            State::Settling { deadline, .. } => Some(deadline),
        }
    }

    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match (self.state, input) {
            (State::Idle, Input::Change) => {
                self.state = State::Settling {
                    first: now,
                    deadline: now + self.debounce,
                };
                vec![]
            }
            (State::Settling { first, .. }, Input::Change) => {
                self.state = State::Settling {
                    first,
                    deadline: (now + self.debounce).min(first + MAX_SETTLE.max(self.debounce)),
                };
                vec![]
            }
            (State::Settling { deadline, .. }, Input::Timer) if now >= deadline => {
                self.state = State::Idle;
                vec![Action::Commit]
            }
            (_, Input::Timer) => vec![],
            (_, Input::Interval) => {
                self.state = State::Idle;
                vec![Action::Commit, Action::Check]
            }
            (_, Input::Hup) => {
                self.state = State::Idle;
                vec![Action::Reload, Action::Commit]
            }
            (State::Settling { .. }, Input::Term) => {
                self.state = State::Idle;
                vec![Action::Commit, Action::Stop]
            }
            (State::Idle, Input::Term) => vec![Action::Stop],
        }
    }
}

const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DONT_FOLLOW);

/// One watched directory: all of it, or only some names (a tracked file's parent).
struct Watched {
    dir: PathBuf,
    only: Option<HashSet<OsString>>,
}

/// The inotify watches of the tracked paths.
pub struct Watcher {
    stream: EventStream<Vec<u8>>,
    dirs: HashMap<WatchDescriptor, Watched>,
    ignore: Ignore,
    exclude: PathBuf,
    /// Paths seen changing since the last commit (for its message).
    pub changed: std::collections::BTreeSet<PathBuf>,
}

impl Watcher {
    pub fn new(cfg: &Config) -> Result<Watcher, PachaError> {
        let e = |x: std::io::Error| PachaError::Daemon(format!("inotify: {x}"));
        let stream = Inotify::init()
            .map_err(e)?
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(e)?;
        let mut w = Watcher {
            stream,
            dirs: HashMap::new(),
            ignore: repo::ignore(cfg),
            exclude: cfg.state_dir.clone(),
            changed: Default::default(),
        };
        for root in repo::tracked(cfg)? {
            match std::fs::symlink_metadata(&root) {
                Ok(m) if m.is_dir() => w.add_tree(&root),
                _ => {
                    // A file (or a path not there yet): its directory, that name only.
                    if let (Some(dir), Some(name)) = (root.parent(), root.file_name()) {
                        w.add(dir, Some(name.to_os_string()));
                    }
                }
            }
        }
        Ok(w)
    }

    fn add(&mut self, dir: &Path, only: Option<OsString>) {
        match self.stream.watches().add(dir, MASK) {
            Ok(wd) => {
                let slot = self.dirs.entry(wd).or_insert_with(|| Watched {
                    dir: dir.to_path_buf(),
                    only: Some(HashSet::new()),
                });
                match (only, &mut slot.only) {
                    (None, o) => *o = None,
                    (Some(n), Some(set)) => {
                        set.insert(n);
                    }
                    (Some(_), None) => {}
                }
            }
            Err(e) => log::warn!("cannot watch {}: {e}", dir.display()),
        }
    }

    /// `dir` and every directory below it (not ignored).
    fn add_tree(&mut self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if d.starts_with(&self.exclude) || (d != dir && self.ignore.ignored(&d)) {
                continue;
            }
            self.add(&d, None);
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
    }

    /// Wait for events; true if one of them is a change worth a commit.
    pub async fn next(&mut self) -> Result<bool, PachaError> {
        let first = match self.stream.next().await {
            Some(ev) => ev.map_err(|e| PachaError::Daemon(format!("inotify: {e}")))?,
            None => return Err(PachaError::Daemon("inotify stream ended".into())),
        };
        let mut events = vec![first];
        while let Some(Some(Ok(ev))) = futures_util::FutureExt::now_or_never(self.stream.next()) {
            events.push(ev);
            if events.len() > 4096 {
                break;
            }
        }
        let mut change = false;
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                change = true;
                continue;
            }
            if ev.mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&ev.wd);
                continue;
            }
            let Some(w) = self.dirs.get(&ev.wd) else {
                continue;
            };
            let path = match &ev.name {
                Some(n) => {
                    if let Some(only) = &w.only {
                        if !only.contains(n) {
                            continue;
                        }
                    }
                    w.dir.join(n)
                }
                None => w.dir.clone(),
            };
            if path.starts_with(&self.exclude) || self.ignore.ignored(&path) {
                continue;
            }
            let new_dir = ev.mask.contains(EventMask::ISDIR)
                && (ev.mask.contains(EventMask::CREATE) || ev.mask.contains(EventMask::MOVED_TO));
            let whole = w.only.is_none();
            if new_dir && whole {
                self.add_tree(&path);
            }
            self.changed.insert(path);
            change = true;
        }
        Ok(change)
    }
}

/// Commit (with the changed paths in the message) and push; errors are logged, the
/// daemon goes on (a failed push stays pending and is retried).
fn do_commit(cfg: &Config, changed: &mut std::collections::BTreeSet<PathBuf>) {
    let mut names: Vec<String> = changed
        .iter()
        .take(10)
        .map(|p| p.display().to_string())
        .collect();
    if changed.len() > 10 {
        names.push(format!("and {} more", changed.len() - 10));
    }
    let msg = if names.is_empty() {
        format!("pacha daemon on {}: periodic commit", cfg.host)
    } else {
        format!("pacha daemon on {}: {}", cfg.host, names.join(", "))
    };
    changed.clear();
    let t = Instant::now();
    match repo::commit(cfg, &msg) {
        Ok(Some(rev)) => {
            log::info!("committed {rev} in {:.0?}", t.elapsed());
            let _ = push::push(cfg);
        }
        Ok(None) => {}
        Err(e) => log::error!("commit failed: {e}"),
    }
}

/// `pacha daemon --run-once`: one commit and push (retry), for cron.
pub fn run_once(cfg: &Config) -> Result<Option<String>, PachaError> {
    push::commit_and_push(cfg, &format!("pacha on {}: periodic commit", cfg.host))
}

pub struct DaemonArgs {
    pub daemonize: bool,
    pub pidfile: Option<PathBuf>,
    pub log: Option<String>,
}

fn log_target(cfg: &Config, args: &DaemonArgs) -> Target {
    if let Some(l) = &args.log {
        return Target::from_arg(l);
    }
    match &cfg.log {
        LogTo::Stderr if !args.daemonize => Target::Stderr,
        LogTo::File(f) => Target::File(f.clone()),
        _ => Target::Syslog {
            ident: PROGRAM.into(),
            facility: cfg.syslog_facility.clone(),
            socket: None,
        },
    }
}

/// The daemon's life: detach if asked, log, pidfile, then [`supervise`].
pub fn daemon(cfg: Config, args: DaemonArgs) -> Result<std::process::ExitCode, PachaError> {
    let pidfile_path = args.pidfile.clone().or_else(|| cfg.pidfile.clone());
    if args.daemonize && pidfile_path.is_none() {
        return Err(PachaError::Usage(
            "--daemonize needs a pidfile (--pidfile or [pacha] pidfile)".into(),
        ));
    }
    repo::init(&cfg)?;
    let startup = if args.daemonize {
        daemon::detach()?
    } else {
        Startup::foreground()
    };
    crate::logging::init(PROGRAM, &log_target(&cfg, &args), log::LevelFilter::Info)?;
    let pidfile = match &pidfile_path {
        Some(p) => Some(Pidfile::acquire(p)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PachaError::Daemon(format!("cannot start the runtime: {e}")))?;
    let r = rt.block_on(supervise(cfg, startup));
    drop(rt);
    drop(pidfile);
    r
}

async fn supervise(
    mut cfg: Config,
    mut startup: Startup,
) -> Result<std::process::ExitCode, PachaError> {
    let mut signals = Signals::new()
        .map_err(|e| PachaError::Daemon(format!("cannot install signal handlers: {e}")))?;
    let mut watcher = Watcher::new(&cfg)?;
    // A change made while the daemon was down is committed at once (the watches are
    // already there: nothing made meanwhile is missed).
    do_commit(&cfg, &mut watcher.changed);
    log::info!(
        "{PROGRAM} {} watching {} path(s), {} directories",
        env!("CARGO_PKG_VERSION"),
        repo::tracked(&cfg)?.len(),
        watcher.dirs.len()
    );
    startup.ready()?;
    let mut m = Machine::new(cfg.debounce);
    let mut interval = tokio::time::interval(cfg.interval);
    interval.tick().await;
    loop {
        let sleep = async {
            match m.deadline() {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending::<()>().await,
            }
        };
        let input = tokio::select! {
            r = watcher.next() => match r {
                Ok(true) => Input::Change,
                Ok(false) => continue,
                Err(e) => {
                    log::error!("{e}");
                    return Err(e);
                }
            },
            _ = sleep => Input::Timer,
            _ = interval.tick() => Input::Interval,
            s = signals.recv() => match s {
                Signal::Hup => Input::Hup,
                Signal::Term | Signal::Int => Input::Term,
            },
        };
        for a in m.on(input, Instant::now()) {
            match a {
                Action::Commit => do_commit(&cfg, &mut watcher.changed),
                Action::Check => {
                    if push::pending(&cfg).is_some() {
                        let _ = push::push(&cfg);
                    }
                }
                Action::Reload => {
                    match Config::load(&cfg.path) {
                        Ok(fresh) => {
                            cfg = fresh;
                            m.debounce = cfg.debounce;
                            interval = tokio::time::interval(cfg.interval);
                            interval.tick().await;
                            log::info!("configuration reloaded");
                        }
                        Err(e) => {
                            log::error!("reload failed, keeping the running configuration: {e}")
                        }
                    }
                    // Paths tracked since start are watched from now on.
                    match Watcher::new(&cfg) {
                        Ok(w) => watcher = w,
                        Err(e) => log::error!("{e}"),
                    }
                    let _ = crate::logging::reopen();
                }
                Action::Stop => {
                    log::info!("stopping");
                    return Ok(std::process::ExitCode::SUCCESS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_then_commit() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Machine::new(ms(100));
        assert_eq!(m.on(Input::Change, t0), vec![]);
        assert_eq!(m.deadline(), Some(t0 + ms(100)));
        // More changes push the deadline out.
        assert_eq!(m.on(Input::Change, t0 + ms(50)), vec![]);
        assert_eq!(m.deadline(), Some(t0 + ms(150)));
        // An early wakeup does nothing.
        assert_eq!(m.on(Input::Timer, t0 + ms(120)), vec![]);
        assert_eq!(m.on(Input::Timer, t0 + ms(150)), vec![Action::Commit]);
        assert_eq!(m.state, State::Idle);
        assert_eq!(m.deadline(), None);
        assert_eq!(m.on(Input::Timer, t0 + ms(300)), vec![]);
    }

    #[test]
    fn endless_changes_still_commit() {
        let t0 = Instant::now();
        let mut m = Machine::new(Duration::from_millis(100));
        let mut t = t0;
        for _ in 0..1000 {
            m.on(Input::Change, t);
            t += Duration::from_millis(50);
        }
        assert!(m.deadline().unwrap() <= t0 + MAX_SETTLE);
    }

    #[test]
    fn signals_and_interval() {
        let t0 = Instant::now();
        let mut m = Machine::new(Duration::from_millis(100));
        assert_eq!(m.on(Input::Term, t0), vec![Action::Stop]);
        m.on(Input::Change, t0);
        // Stopping never loses a pending change.
        assert_eq!(m.on(Input::Term, t0), vec![Action::Commit, Action::Stop]);
        assert_eq!(m.on(Input::Hup, t0), vec![Action::Reload, Action::Commit]);
        assert_eq!(
            m.on(Input::Interval, t0),
            vec![Action::Commit, Action::Check]
        );
    }
}
