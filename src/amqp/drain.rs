//! Publishes spool entries in order, with confirms, and removes them once confirmed.
//!
//! State per entry: how many of its messages were sent and how many confirmed. Any
//! failure (publish error, nack, a confirm not arriving in time, a lost connection)
//! rewinds every entry to its first unconfirmed message and reconnects with backoff, so
//! the broker sees each producer's messages in spool order; only messages that were in
//! flight can arrive twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::broker::Broker;
use super::spool::{Spool, SpoolError};
use super::Message;

/// Tuning of the drain loop.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Unconfirmed messages allowed on the wire.
    pub window: usize,
    /// A confirm slower than this means the connection is treated as dead.
    pub confirm_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often an idle drain lists the spool for entries other processes added.
    pub rescan_every: Duration,
    /// On shutdown, how long to wait for confirms already in flight.
    pub shutdown_grace: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            window: 256,
            confirm_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            rescan_every: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Requests to a running drain.
#[derive(Debug)]
pub enum DrainCommand {
    /// A producer in this process committed this entry, holding these messages (handed
    /// over in memory so the entry need not be read back; the file stays the durable
    /// copy).
    Added(String, Vec<Message>),
    /// New broker URLs and TLS settings (configuration reload).
    SetBroker(super::broker::BrokerConfig),
}

/// Counters other parts of the daemon (and tests) can read.
#[derive(Debug, Default)]
pub struct DrainStats {
    pub confirmed: AtomicU64,
    pub connected: AtomicBool,
    /// Unix time of the last confirm (0 = none yet).
    pub last_confirm: AtomicU64,
}

struct Pending {
    msgs: Vec<Message>,
    next: usize,
    confirmed: usize,
}

/// Messages handed over in memory beyond this many bytes are dropped and read back from
/// their spool entry when their turn comes: a burst of thousands of jobs is bounded by
/// the spool on disk, not held twice in memory while the broker catches up.
const HELD_MAX: usize = 2 << 20;

fn held_bytes(msgs: &[Message]) -> usize {
    msgs.iter()
        .map(|m| m.body.get().len() + m.routing_key.len() + m.exchange.len() + 64)
        .sum()
}

struct InFlight {
    name: String,
    sent_at: Instant,
    confirm: PublisherConfirm,
}

enum Event {
    Confirm(Box<Result<Confirmation, lapin::Error>>),
    ConfirmTimeout,
    Command(Option<DrainCommand>),
    Tick,
    Shutdown,
}

async fn next_command(
    rx: &mut Option<mpsc::UnboundedReceiver<DrainCommand>>,
) -> Option<DrainCommand> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

pub struct Drain {
    spool: Arc<Spool>,
    broker: Broker,
    cfg: DrainConfig,
    stats: Arc<DrainStats>,
    names: BTreeSet<String>,
    loaded: BTreeMap<String, Pending>,
    /// [`held_bytes`] of every entry in `loaded`.
    held: usize,
    inflight: VecDeque<InFlight>,
    failures: u32,
    down_since: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Drain {
    pub fn new(spool: Arc<Spool>, broker: Broker, cfg: DrainConfig) -> Drain {
        Drain {
            spool,
            broker,
            cfg,
            stats: Arc::new(DrainStats::default()),
            names: BTreeSet::new(),
            loaded: BTreeMap::new(),
            held: 0,
            inflight: VecDeque::new(),
            failures: 0,
            down_since: None,
            last_warning: None,
        }
    }

    pub fn stats(&self) -> Arc<DrainStats> {
        self.stats.clone()
    }

    fn rescan(&mut self) {
        // One directory listing both finds new entries and refreshes the byte count.
        match self.spool.recount() {
            Ok(names) => self.names.extend(names),
            Err(e) => log::error!("{e}"),
        }
    }

    fn absorb(&mut self, cmd: DrainCommand) {
        match cmd {
            DrainCommand::Added(name, msgs) => {
                let bytes = held_bytes(&msgs);
                if self.held + bytes <= HELD_MAX && !self.loaded.contains_key(&name) {
                    self.held += bytes;
                    self.loaded.insert(
                        name.clone(),
                        Pending {
                            msgs,
                            next: 0,
                            confirmed: 0,
                        },
                    );
                }
                self.names.insert(name);
            }
            DrainCommand::SetBroker(cfg) => self.broker.set_config(cfg),
        }
    }

    /// The first message not yet sent, loading entries as needed.
    fn next_unsent(&mut self) -> Option<(String, usize)> {
        let mut dead = Vec::new();
        let mut found = None;
        for name in &self.names {
            if !self.loaded.contains_key(name) {
                match self.spool.read(name) {
                    Ok(msgs) => {
                        self.held += held_bytes(&msgs);
                        self.loaded.insert(
                            name.clone(),
                            Pending {
                                msgs,
                                next: 0,
                                confirmed: 0,
                            },
                        );
                    }
                    Err(SpoolError::Corrupt { path, reason }) => {
                        match self.spool.quarantine(name) {
                            Ok(to) => log::error!(
                                "spool entry {} is corrupt ({reason}); moved to {}",
                                path.display(),
                                to.display()
                            ),
                            Err(e) => log::error!("spool entry {}: {reason}; {e}", path.display()),
                        }
                        dead.push(name.clone());
                        continue;
                    }
                    Err(SpoolError::Io(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
                        dead.push(name.clone());
                        continue;
                    }
                    Err(e) => {
                        // Unreadable for now (permissions, I/O): keep it and stop here so
                        // nothing after it overtakes it.
                        log::error!("{e}");
                        break;
                    }
                }
            }
            let p = self.loaded.get(name).expect("loaded above");
            if p.msgs.is_empty() {
                dead.push(name.clone());
                continue;
            }
            if p.next < p.msgs.len() {
                found = Some((name.clone(), p.next));
                break;
            }
        }
        for name in dead {
            if self.loaded.get(&name).is_some_and(|p| p.msgs.is_empty()) {
                let _ = self.spool.remove(&name);
            }
            self.names.remove(&name);
            self.unload(&name);
        }
        found
    }

    fn unload(&mut self, name: &str) {
        if let Some(p) = self.loaded.remove(name) {
            self.held = self.held.saturating_sub(held_bytes(&p.msgs));
        }
    }

    fn rewind(&mut self) {
        self.inflight.clear();
        for p in self.loaded.values_mut() {
            p.next = p.confirmed;
        }
    }

    fn confirmed(&mut self, name: &str) {
        self.stats.confirmed.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_confirm
            .store(crate::monitor::unix_now(), Ordering::Relaxed);
        let Some(p) = self.loaded.get_mut(name) else {
            return;
        };
        p.confirmed += 1;
        if p.confirmed == p.msgs.len() {
            if let Err(e) = self.spool.remove(name) {
                log::error!("{e}");
            }
            self.unload(name);
            self.names.remove(name);
        }
    }

    fn mark_up(&mut self) {
        if let Some(since) = self.down_since.take() {
            log::warn!(
                "AMQP broker {} reachable again after {:.0?}; draining {} spooled entries",
                self.broker.current().unwrap_or_default(),
                since.elapsed(),
                self.names.len()
            );
        }
        self.failures = 0;
        self.stats.connected.store(true, Ordering::Relaxed);
    }

    /// Record a failure; returns how long to wait before trying again.
    fn mark_down(&mut self, why: &str) -> Duration {
        self.broker.reset();
        self.rewind();
        self.stats.connected.store(false, Ordering::Relaxed);
        let now = Instant::now();
        let since = *self.down_since.get_or_insert(now);
        let loud = self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if loud {
            self.last_warning = Some(now);
            log::warn!(
                "AMQP publishing stalled for {:.0?}: {why}; {} entries ({} bytes) spooled in {}",
                now.duration_since(since),
                self.names.len(),
                self.spool.used(),
                self.spool.dir().display()
            );
        } else {
            log::debug!("AMQP: {why}");
        }
        let exp = self
            .cfg
            .backoff_min
            .saturating_mul(1 << self.failures.min(16));
        self.failures += 1;
        exp.min(self.cfg.backoff_max)
    }

    /// Run until `shutdown` becomes true; then wait briefly for in-flight confirms.
    pub async fn run(
        mut self,
        rx: mpsc::UnboundedReceiver<DrainCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut rx = Some(rx);
        self.rescan();
        // Connect now rather than on the first message, so the first event after a
        // quiet start is not delayed by the handshake (failure is retried below).
        match self.broker.connect().await {
            Ok(()) => self.stats.connected.store(true, Ordering::Relaxed),
            Err(e @ super::broker::BrokerError::Tls(_)) => log::error!("AMQP: {e}"),
            Err(e) => log::warn!("AMQP: {e}"),
        }
        let mut tick = tokio::time::interval(self.cfg.rescan_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'outer: loop {
            while let Some(cmd) = rx.as_mut().and_then(|r| r.try_recv().ok()) {
                self.absorb(cmd);
            }
            if *shutdown.borrow() {
                break;
            }
            let mut wait = None;
            while self.inflight.len() < self.cfg.window {
                let Some((name, idx)) = self.next_unsent() else {
                    break;
                };
                let msg = &self.loaded[&name].msgs[idx];
                match self.broker.publish(msg).await {
                    Ok(confirm) => {
                        self.mark_up();
                        self.loaded.get_mut(&name).expect("loaded").next += 1;
                        self.inflight.push_back(InFlight {
                            name,
                            sent_at: Instant::now(),
                            confirm,
                        });
                    }
                    Err(e) => {
                        if matches!(e, super::broker::BrokerError::Tls(_)) {
                            // A configuration error, not an outage: say so at every retry.
                            log::error!("AMQP: {e}");
                        }
                        wait = Some(self.mark_down(&e.to_string()));
                        break;
                    }
                }
            }
            if let Some(delay) = wait {
                let until = Instant::now() + delay;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => continue 'outer,
                        cmd = next_command(&mut rx) => match cmd {
                            Some(cmd) => self.absorb(cmd),
                            None => rx = None,
                        },
                        _ = shutdown.changed() => break 'outer,
                    }
                }
            }
            let event = match self.inflight.front_mut() {
                Some(f) => {
                    let deadline = f.sent_at + self.cfg.confirm_timeout;
                    tokio::select! {
                        r = &mut f.confirm => Event::Confirm(Box::new(r)),
                        _ = tokio::time::sleep_until(deadline) => Event::ConfirmTimeout,
                        cmd = next_command(&mut rx) => Event::Command(cmd),
                        // Entries other processes (hooks) spooled must not wait for idle.
                        _ = tick.tick() => Event::Tick,
                        _ = shutdown.changed() => Event::Shutdown,
                    }
                }
                None => tokio::select! {
                    cmd = next_command(&mut rx) => Event::Command(cmd),
                    _ = tick.tick() => Event::Tick,
                    _ = shutdown.changed() => Event::Shutdown,
                },
            };
            if matches!(event, Event::Command(None)) {
                // Every producer handle is gone: keep draining what is spooled.
                rx = None;
            }
            if let Some(delay) = self.handle(event) {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        self.finish().await;
    }

    fn handle(&mut self, event: Event) -> Option<Duration> {
        match event {
            Event::Confirm(r) => {
                let f = self.inflight.pop_front().expect("front exists");
                match *r {
                    Ok(Confirmation::Nack(_)) => {
                        Some(self.mark_down("broker refused (nack) a message"))
                    }
                    Ok(_) => {
                        self.confirmed(&f.name);
                        None
                    }
                    Err(e) => Some(self.mark_down(&format!("waiting for confirm: {e}"))),
                }
            }
            Event::ConfirmTimeout => {
                Some(self.mark_down(&format!("no confirm within {:?}", self.cfg.confirm_timeout)))
            }
            Event::Command(Some(cmd)) => {
                self.absorb(cmd);
                None
            }
            Event::Command(None) | Event::Shutdown => None,
            Event::Tick => {
                self.rescan();
                None
            }
        }
    }

    async fn finish(&mut self) {
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        while let Some(mut f) = self.inflight.pop_front() {
            match tokio::time::timeout_at(deadline, &mut f.confirm).await {
                Ok(Ok(c)) if !matches!(c, Confirmation::Nack(_)) => self.confirmed(&f.name),
                _ => break,
            }
        }
        self.broker.close().await;
    }
}
