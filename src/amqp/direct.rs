//! Publish now, or spool: for short-lived producers (the Ganeti hook, the progress
//! monitor) that must not block and must not lose a message.
//!
//! Messages are published with confirms while the broker answers in time. On the first
//! failure or timeout, every unconfirmed message and every later one goes to the
//! durable spool instead, in order, for snf-ganeti-eventd to deliver; a message whose
//! confirm was lost may then arrive twice, never out of order.
//!
//! A TLS failure (certificate not trusted, client certificate refused) is spooled the
//! same way, so nothing is lost, but [`Direct::finish`] then fails: it is a
//! configuration error the operator must see, not a broker that is briefly away.

use std::collections::VecDeque;
use std::time::Duration;

use lapin::{Confirmation, PublisherConfirm};
use tokio::time::Instant;

use super::broker::{Broker, BrokerConfig, BrokerError};
use super::spool::{Spool, SpoolError};
use super::Message;

/// At most this many unconfirmed messages before `send` waits for the oldest.
const WINDOW: usize = 256;
/// While spooling, messages are gathered into one entry (one fsync) of at most this
/// many messages or bytes; [`Direct::flush`] writes a partial batch (the progress
/// monitor calls it before it waits for more input, so nothing read sits unsynced).
const BATCH_MESSAGES: usize = 1000;
const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("cannot spool message after the broker failed ({broker}): {spool}")]
    Spool { broker: String, spool: SpoolError },
    #[error("{why}; {spooled} message(s) spooled for snf-ganeti-eventd, which needs the same fix")]
    Tls { why: String, spooled: usize },
}

/// What happened to the messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub confirmed: usize,
    pub spooled: usize,
}

pub struct Direct {
    broker: Broker,
    spool: Spool,
    origin: String,
    inflight: VecDeque<(Message, PublisherConfirm)>,
    /// Set after the first failure: everything from then on is spooled.
    failed: Option<String>,
    /// Messages to spool as the next entry, and their body bytes.
    pending: Vec<Message>,
    pending_bytes: usize,
    /// Set when the failure was TLS: `finish` reports it.
    tls_failed: Option<String>,
    outcome: Outcome,
}

impl Direct {
    pub fn new(cfg: BrokerConfig, spool: Spool, origin: &str) -> Direct {
        Direct {
            broker: Broker::new(cfg),
            spool,
            origin: origin.to_string(),
            inflight: VecDeque::new(),
            failed: None,
            pending: Vec::new(),
            pending_bytes: 0,
            tls_failed: None,
            outcome: Outcome::default(),
        }
    }

    /// True once the broker failed and messages go to the spool.
    pub fn spooling(&self) -> bool {
        self.failed.is_some()
    }

    /// Publish `msg`, giving the broker until `deadline`; spool it (and everything
    /// unconfirmed) otherwise.
    pub async fn send(&mut self, msg: Message, deadline: Instant) -> Result<(), DirectError> {
        if self.failed.is_none() && self.inflight.len() >= WINDOW {
            self.confirm_front(deadline).await;
        }
        if self.failed.is_none() && !self.broker.is_connected() {
            match tokio::time::timeout_at(deadline, self.broker.reachable()).await {
                Ok(true) => {}
                Ok(false) => self.fail("no broker accepts connections".into()),
                Err(_) => self.fail("no answer in time".into()),
            }
        }
        if self.failed.is_none() {
            match tokio::time::timeout_at(deadline, self.broker.publish(&msg)).await {
                Ok(Ok(confirm)) => {
                    self.inflight.push_back((msg, confirm));
                    return Ok(());
                }
                Ok(Err(e)) => {
                    if matches!(e, BrokerError::Tls(_)) {
                        self.tls_failed = Some(e.to_string());
                    }
                    self.fail(e.to_string())
                }
                Err(_) => self.fail("no answer in time".into()),
            }
        }
        if !self.inflight.is_empty() {
            // The failure just happened: what was in flight goes first, with this one.
            return self.spool_all(vec![msg]);
        }
        self.pending_bytes += msg.body.get().len();
        self.pending.push(msg);
        if self.pending.len() >= BATCH_MESSAGES || self.pending_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Spool the messages gathered since the broker failed (one entry, one fsync).
    pub fn flush(&mut self) -> Result<(), DirectError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.spool_all(batch)
    }

    async fn confirm_front(&mut self, deadline: Instant) {
        let Some((_, confirm)) = self.inflight.front_mut() else {
            return;
        };
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Nack(_))) => self.fail("broker refused (nack) a message".into()),
            Ok(Ok(_)) => {
                self.inflight.pop_front();
                self.outcome.confirmed += 1;
            }
            Ok(Err(e)) => self.fail(format!("waiting for confirm: {e}")),
            Err(_) => self.fail("no confirm in time".into()),
        }
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            log::warn!("AMQP: {why}; spooling for snf-ganeti-eventd to deliver");
            self.failed = Some(why);
            self.broker.reset();
        }
    }

    /// Spool the unconfirmed messages, then `more`, as one entry (one fsync).
    fn spool_all(&mut self, more: Vec<Message>) -> Result<(), DirectError> {
        let mut msgs: Vec<Message> = self.inflight.drain(..).map(|(m, _)| m).collect();
        msgs.extend(more);
        if msgs.is_empty() {
            return Ok(());
        }
        let n = msgs.len();
        self.spool
            .append(&self.origin, &msgs)
            .map_err(|spool| DirectError::Spool {
                broker: self.failed.clone().unwrap_or_default(),
                spool,
            })?;
        self.outcome.spooled += n;
        Ok(())
    }

    /// Wait until `deadline` for every confirm; spool whatever is still unconfirmed.
    pub async fn finish(mut self, deadline: Instant) -> Result<Outcome, DirectError> {
        while !self.inflight.is_empty() && self.failed.is_none() {
            self.confirm_front(deadline).await;
        }
        if !self.inflight.is_empty() || !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.spool_all(batch)?;
        }
        if self.failed.is_none() {
            self.broker.close().await;
        }
        if let Some(why) = self.tls_failed {
            return Err(DirectError::Tls {
                why,
                spooled: self.outcome.spooled,
            });
        }
        Ok(self.outcome)
    }
}

/// A deadline `d` from now.
pub fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d
}
