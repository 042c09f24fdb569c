//! snf-ganeti-eventd: Ganeti job queue → AMQP, with nothing lost.
//!
//! Life of an update: Ganeti renames a job file → inotify → [`processor`] reads it and
//! diffs it against the [`state`] → the messages are appended to the spool (fsync) →
//! the state change is journaled (fdatasync) → the drain publishes with confirms and
//! removes the spool entry. At start (and after an inotify overflow, or once a full spool has room
//! again) the whole queue and archive are rescanned, so updates made while the daemon
//! was down or paused are published too.

pub mod processor;
pub mod state;
pub mod status;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tokio::sync::{mpsc, watch as tokio_watch};

use crate::amqp::broker::Broker;
use crate::amqp::drain::{Drain, DrainCommand, DrainConfig};
use crate::amqp::spool::Spool;
use crate::amqp::Message;
use crate::daemon::{self, Pidfile, Signal, Signals, Startup};
use crate::synnefo::gtools::{self, Gtools, Overrides};
use processor::{Batch, Processor};
use state::{StateStore, Update};
use watch::{Change, QueueWatch};

pub const PROGRAM: &str = "snf-ganeti-eventd";
pub const SECTION: &str = "eventd";
const DEFAULT_QUEUE_DIR: &str = "/var/lib/ganeti/queue";
const DEFAULT_PID_FILE: &str = "/var/run/snf-ganeti-eventd.pid";
const DEFAULT_LOG_FILE: &str = "/var/log/snf-ganeti-eventd.log";
/// How often a paused daemon (spool full, disk full) tries again.
const RETRY: Duration = Duration::from_secs(5);

const SECTION_KEYS: &[&str] = &["queue_dir", "pid_file"];

/// Watch Ganeti's job queue and publish every op status change to AMQP.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// Configuration file [default: /etc/synnefo/gtools.conf, if present]
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Ganeti's job queue directory [default: /var/lib/ganeti/queue]
    #[arg(long, value_name = "DIR")]
    pub queue_dir: Option<PathBuf>,
    /// Ganeti's data directory, for ssconf_* and config.data [default: /var/lib/ganeti]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Durable spool for messages not yet confirmed by the broker
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Broker URL; repeat for fallbacks tried in turn (overrides amqp_hosts)
    #[arg(long = "amqp", value_name = "URL")]
    pub amqp: Vec<String>,
    /// Topic exchange to publish to (overrides exchange_ganeti)
    #[arg(long, value_name = "NAME")]
    pub exchange: Option<String>,
    /// This node's name as Ganeti knows it [default: the host's FQDN]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Pidfile [default: /var/run/snf-ganeti-eventd.pid]
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Log file, or - for stderr [default: /var/log/snf-ganeti-eventd.log]
    #[arg(short = 'l', long = "log", value_name = "FILE")]
    pub log: Option<String>,
    /// Log debug messages
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Detach from the terminal (the default is to stay in the foreground)
    #[arg(long)]
    pub daemonize: bool,
    /// Check the configuration and directories, print what would be used, and exit
    #[arg(long)]
    pub check: bool,
    /// Nagios-style check of the running daemon: one line, exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN
    #[arg(long, conflicts_with_all = ["check", "daemonize"])]
    pub status: bool,
    /// --status: WARNING above this many spool entries [default: 100]
    #[arg(long, value_name = "N", requires = "status")]
    pub warn_spool: Option<u64>,
    /// --status: CRITICAL above this many spool entries [default: 1000]
    #[arg(long, value_name = "N", requires = "status")]
    pub crit_spool: Option<u64>,
    /// --status: WARNING when the oldest unconfirmed message is older [default: 300]
    #[arg(long, value_name = "SECS", requires = "status")]
    pub warn_age: Option<u64>,
    /// --status: CRITICAL when the oldest unconfirmed message is older [default: 1800]
    #[arg(long, value_name = "SECS", requires = "status")]
    pub crit_age: Option<u64>,
    /// --status: also write the figures to FILE as a node_exporter textfile
    #[arg(long, value_name = "FILE", requires = "status")]
    pub prometheus: Option<PathBuf>,
}

/// The clap command (for man pages and completions).
pub fn command() -> clap::Command {
    Args::command()
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gtools: Gtools,
    pub queue_dir: PathBuf,
    pub pid_file: PathBuf,
    pub log: crate::logging::Target,
    pub level: log::LevelFilter,
}

impl Settings {
    pub fn load(args: &Args) -> anyhow::Result<Settings> {
        let cfg = gtools::load(args.config.as_deref())?;
        let sec = cfg.section(SECTION);
        let mut known: Vec<&str> = SECTION_KEYS.to_vec();
        known.extend_from_slice(gtools::LOG_KEYS);
        sec.reject_unknown(&known)?;
        let o = Overrides {
            amqp: args.amqp.clone(),
            exchange: args.exchange.clone(),
            spool_dir: args.spool_dir.clone(),
            data_dir: args.data_dir.clone(),
            node_name: args.node_name.clone(),
        };
        let gtools = Gtools::from_config(&cfg, &o)?;
        let queue_dir = match &args.queue_dir {
            Some(p) => p.clone(),
            None => sec.path_or("queue_dir", DEFAULT_QUEUE_DIR)?,
        };
        let pid_file = match &args.pid_file {
            Some(p) => p.clone(),
            None => sec.path_or("pid_file", DEFAULT_PID_FILE)?,
        };
        let (log, level) = gtools::log_settings(
            &cfg,
            SECTION,
            args.log.as_deref(),
            args.debug,
            DEFAULT_LOG_FILE,
        )?;
        Ok(Settings {
            queue_dir,
            pid_file,
            gtools,
            log,
            level,
        })
    }
}

/// Entry point of the `snf-ganeti-eventd` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(args))
}

/// Start-up order matters: everything that can fail on bad input is checked before
/// detaching (so the error reaches the terminal), and the tokio runtime is built only
/// after the fork.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.status {
        return Ok(status_check(&args));
    }
    let settings = Settings::load(&args)?;
    std::fs::read_dir(&settings.queue_dir).with_context(|| {
        format!(
            "cannot read queue directory {}",
            settings.queue_dir.display()
        )
    })?;
    if args.check {
        crate::fsutil::ensure_dir(&settings.gtools.spool_dir, 0o750)?;
        for w in settings.gtools.vhost_warnings() {
            eprintln!("{PROGRAM}: warning: {w}");
        }
        println!(
            "configuration OK: queue {}, spool {}, exchange {}, brokers {}",
            settings.queue_dir.display(),
            settings.gtools.spool_dir.display(),
            settings.gtools.exchange,
            settings.gtools.brokers_redacted()
        );
        if let Some(w) = settings.gtools.tls_warning() {
            eprintln!("{PROGRAM}: warning: {w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let startup = if args.daemonize {
        daemon::detach()?
    } else {
        Startup::foreground()
    };
    crate::logging::init(PROGRAM, &settings.log, settings.level)?;
    let pidfile = Pidfile::acquire(&settings.pid_file)?;
    let spool = settings.gtools.open_spool()?;
    let (store, state) = StateStore::open(&settings.gtools.spool_dir)?;
    // The watcher runs on the main thread (block_on) and the drain with lapin's I/O on
    // one worker, so publishing goes on while the watcher waits for an fsync; a second
    // worker only added cross-thread wake-ups.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(args, settings, spool, (store, state), startup));
    pidfile.release();
    result.map(|()| ExitCode::SUCCESS)
}

/// `--status`: whatever goes wrong is UNKNOWN, on the one line.
fn status_check(args: &Args) -> ExitCode {
    let opts = Settings::load(args).and_then(|s| {
        let o = status::Options {
            spool: status::SPOOL
                .with(
                    args.warn_spool,
                    args.crit_spool,
                    "--warn-spool/--crit-spool",
                )
                .map_err(anyhow::Error::msg)?,
            age: status::AGE
                .with(args.warn_age, args.crit_age, "--warn-age/--crit-age")
                .map_err(anyhow::Error::msg)?,
            prometheus: args.prometheus.clone(),
        };
        Ok((s, o))
    });
    match opts {
        Ok((s, o)) => status::run(&s.pid_file, &s.gtools.spool_dir, &o),
        Err(e) => crate::monitor::report(
            crate::monitor::Check::unknown("EVENTD", &crate::cli::one_line(&e)),
            crate::monitor::Metrics::new("hostkit_eventd_"),
            args.prometheus.as_deref(),
        ),
    }
}

struct Daemon {
    args: Args,
    settings: Settings,
    spool: Arc<Spool>,
    store: StateStore,
    processor: Processor,
    drain_tx: mpsc::UnboundedSender<DrainCommand>,
    /// A batch could not be spooled (cap or disk full): events are ignored until a
    /// rescan succeeds, because the rescan re-reads everything they would have named.
    paused: bool,
    /// The journal could not be written: the next chance, write a full snapshot.
    snapshot_due: bool,
    drain_stats: Arc<crate::amqp::drain::DrainStats>,
    /// What the status file says, and when it was written.
    status: Option<(status::Status, std::time::Instant)>,
}

async fn serve(
    args: Args,
    settings: Settings,
    spool: Spool,
    (store, state): (StateStore, Option<state::State>),
    mut startup: Startup,
) -> anyhow::Result<()> {
    let spool = Arc::new(spool);
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let node = settings.gtools.node_name();
    let mut watch = QueueWatch::new(&settings.queue_dir)
        .with_context(|| format!("cannot watch {}", settings.queue_dir.display()))?;
    let processor = Processor::new(
        &settings.queue_dir,
        &settings.gtools.data_dir,
        &settings.gtools.exchange,
        &node,
        state,
    );
    let (drain_tx, drain_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio_watch::channel(false);
    let drain = Drain::new(
        spool.clone(),
        Broker::new(settings.gtools.broker_config()),
        DrainConfig {
            confirm_timeout: settings.gtools.confirm_timeout,
            ..DrainConfig::default()
        },
    );
    let drain_stats = drain.stats();
    let mut drain_task = tokio::spawn(drain.run(drain_rx, stop_rx));
    log::info!(
        "{PROGRAM} {} started: queue {}, spool {}, node {node}, broker {}",
        env!("CARGO_PKG_VERSION"),
        settings.queue_dir.display(),
        settings.gtools.spool_dir.display(),
        settings.gtools.brokers_redacted()
    );
    for w in settings.gtools.vhost_warnings() {
        log::warn!("{w}");
    }
    if let Some(w) = settings.gtools.tls_warning() {
        log::warn!("{w}");
    }
    let mut d = Daemon {
        args,
        settings,
        spool,
        store,
        processor,
        drain_tx,
        paused: false,
        snapshot_due: false,
        drain_stats,
        status: None,
    };
    d.rescan();
    d.write_status();
    startup.ready()?;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Why the loop ended, if not by a signal: the daemon then exits non-zero so that
    // systemd's Restart=on-failure (and the operator) notices.
    let mut failure: Option<anyhow::Error> = None;
    let mut drain_ended = false;
    loop {
        tokio::select! {
            // The drain only returns after stop is sent; ending earlier (a panic) would
            // leave eventd spooling forever with nothing published.
            r = &mut drain_task => {
                drain_ended = true;
                let why = match r {
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(e) => format!("failed: {e}"),
                    Ok(_) => "ended unexpectedly".to_string(),
                };
                failure = Some(anyhow::anyhow!("the publishing task {why}; stopping"));
                break;
            }
            change = watch.next() => match change {
                Ok(Change::Rescan) => d.rescan(),
                Ok(Change::Jobs(jobs)) if !d.paused => {
                    let batch = d.processor.collect(&jobs);
                    d.commit(batch);
                }
                Ok(Change::Jobs(_)) => {}
                Err(e) => {
                    failure = Some(anyhow::anyhow!("watching {}: {e}", d.settings.queue_dir.display()));
                    break;
                }
            },
            sig = signals.recv() => match sig {
                Signal::Hup => d.reload(),
                Signal::Term | Signal::Int => {
                    log::info!("received {sig:?}: stopping");
                    break;
                }
            },
            _ = status_tick.tick() => d.write_status(),
            _ = retry.tick() => {
                if d.paused {
                    d.rescan();
                } else if d.snapshot_due || d.store.wants_compaction() {
                    d.compact();
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    if !drain_ended {
        let _ = drain_task.await;
    }
    d.compact();
    match failure {
        Some(e) => Err(e),
        None => {
            log::info!("{PROGRAM} stopped");
            Ok(())
        }
    }
}

impl Daemon {
    /// Write the status file when what it says changed, or every [`status::PERIOD`].
    fn write_status(&mut self) {
        use std::sync::atomic::Ordering;
        let last = self.drain_stats.last_confirm.load(Ordering::Relaxed);
        let now = status::Status {
            pid: std::process::id(),
            written: crate::monitor::unix_now(),
            period: status::PERIOD.as_secs(),
            node: self.settings.gtools.node_name(),
            master: Some(self.processor.refresh_master()),
            broker_connected: self.drain_stats.connected.load(Ordering::Relaxed),
            last_publish: (last > 0).then_some(last),
            confirmed: self.drain_stats.confirmed.load(Ordering::Relaxed),
            paused: self.paused,
        };
        if let Some((prev, at)) = &self.status {
            if prev.same_news(&now) && at.elapsed() < status::PERIOD {
                return;
            }
        }
        let file = status::path(&self.settings.gtools.spool_dir);
        if let Err(e) = status::write(&file, &now) {
            log::warn!("cannot write the status file: {e}");
        }
        // A failed write is tried again at the next change or period, not every second.
        self.status = Some((now, std::time::Instant::now()));
    }

    fn rescan(&mut self) {
        match self.processor.rescan() {
            Ok(batch) => {
                if self.commit(batch) && self.paused {
                    log::warn!("spool has room again: publishing resumed");
                    self.paused = false;
                }
            }
            Err(e) => {
                log::error!("cannot list {}: {e}", self.processor.queue_dir().display());
                self.paused = true;
            }
        }
    }

    /// Spool the batch's messages, then record its state and checkpoint it. The batch
    /// is spooled in entries of whole jobs no bigger than [`Self::chunk_bytes`], each
    /// recorded as soon as it is durable, so a backlog larger than the spool's room
    /// goes in as room frees up. Returns false (and pauses) if the spool was full.
    fn commit(&mut self, batch: Batch) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut limit = self.chunk_bytes();
        let mut changes: std::collections::VecDeque<_> = batch.changes.into();
        while !changes.is_empty() {
            let mut chunk = Vec::new();
            let mut size = 0;
            while let Some(c) = changes.pop_front() {
                if !chunk.is_empty() && size + c.size() > limit {
                    changes.push_front(c);
                    break;
                }
                size += c.size();
                chunk.push(c);
            }
            let refs: Vec<&Message> = chunk.iter().flat_map(|c| c.messages.iter()).collect();
            if !refs.is_empty() {
                match self.spool.append("eventd", refs.iter().copied()) {
                    Ok(name) => {
                        log::debug!("spooled {} messages as {name}", refs.len());
                        // Moved, not copied: a backlog's messages exist once in memory.
                        let messages: Vec<Message> = chunk
                            .iter_mut()
                            .flat_map(|c| std::mem::take(&mut c.messages))
                            .collect();
                        let _ = self.drain_tx.send(DrainCommand::Added(name, messages));
                    }
                    // A full disk may still take a smaller entry: halve down to one job.
                    Err(e) if e.is_full() && chunk.len() > 1 => {
                        limit = (size / 2).max(1);
                        for c in chunk.into_iter().rev() {
                            changes.push_front(c);
                        }
                        continue;
                    }
                    Err(e) => {
                        if !self.paused {
                            log::error!(
                                "cannot spool {} messages: {e}; pausing, the queue will be rescanned every {}s",
                                refs.len(),
                                RETRY.as_secs()
                            );
                        }
                        self.paused = true;
                        return false;
                    }
                }
            }
            let updates: Vec<Update> = chunk
                .iter()
                .flat_map(|c| c.updates.iter().cloned())
                .collect();
            if let Err(e) = self.store.append(&updates) {
                log::error!("cannot journal the state: {e}; a snapshot will be written instead");
                self.snapshot_due = true;
            }
            self.processor.apply(chunk);
        }
        if let Some(present) = batch.present {
            // Pruning is not journaled: make it durable with a snapshot.
            self.processor.finish_rescan(&present);
            self.snapshot_due = true;
            self.compact();
        }
        true
    }

    /// The largest spool entry a commit writes: big enough to amortize fsync, small
    /// enough that a capped spool can always take one.
    fn chunk_bytes(&self) -> usize {
        let cap = self.spool.cap();
        let by_cap = if cap == 0 {
            usize::MAX
        } else {
            (cap / 8) as usize
        };
        by_cap.clamp(1, 256 * 1024)
    }

    fn compact(&mut self) {
        match self.store.compact(self.processor.state()) {
            Ok(()) => self.snapshot_due = false,
            Err(e) => log::error!("cannot write the state snapshot: {e}"),
        }
    }

    /// SIGHUP: re-read the configuration, reopen the log. Directories and the pidfile
    /// are fixed for the life of the process.
    fn reload(&mut self) {
        let fresh = match Settings::load(&self.args) {
            Ok(s) => s,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: {e:#}");
                return;
            }
        };
        if let Err(e) = crate::logging::init(PROGRAM, &fresh.log, fresh.level) {
            log::error!("reload: {e}");
        }
        if fresh.queue_dir != self.settings.queue_dir
            || fresh.gtools.spool_dir != self.settings.gtools.spool_dir
            || fresh.pid_file != self.settings.pid_file
        {
            log::warn!("reload: queue_dir, spool_dir and pid_file changes take effect at restart");
        }
        self.processor.set_exchange(&fresh.gtools.exchange);
        let _ = self
            .drain_tx
            .send(DrainCommand::SetBroker(fresh.gtools.broker_config()));
        if let Some(w) = fresh.gtools.tls_warning() {
            log::warn!("{w}");
        }
        log::info!("configuration reloaded");
        self.settings.gtools = fresh.gtools;
        self.settings.log = fresh.log;
        self.settings.level = fresh.level;
    }
}
