//! One confirmed-publishing channel to the first reachable broker of a URL list.
//!
//! Exchanges are declared (topic, durable) on first use per connection, as Synnefo
//! did, so a fresh broker needs no setup. Messages are persistent (delivery mode 2)
//! and tagged `application/json`.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{redact, Message};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no broker reachable ({0})")]
    Unreachable(String),
    #[error("broker {url}: {op}: {reason}")]
    Failed {
        url: String,
        op: &'static str,
        reason: String,
    },
}

struct Live {
    url: String,
    conn: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

/// Broker connection settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub urls: Vec<String>,
    /// Per connection attempt (TCP + AMQP handshake).
    pub connect_timeout: Duration,
}

/// A lazily (re)connected publishing channel.
pub struct Broker {
    cfg: BrokerConfig,
    /// Where the next connection attempt starts (round-robin after failures).
    next: usize,
    live: Option<Live>,
}

impl Broker {
    pub fn new(cfg: BrokerConfig) -> Broker {
        Broker {
            cfg,
            next: 0,
            live: None,
        }
    }

    /// Replace the URL list (SIGHUP); the current connection is kept if its URL stays.
    pub fn set_urls(&mut self, urls: Vec<String>) {
        if let Some(l) = &self.live {
            if !urls.contains(&l.url) {
                self.reset();
            }
        }
        self.cfg.urls = urls;
        self.next = 0;
    }

    pub fn is_connected(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.conn.status().connected() && l.channel.status().connected())
    }

    /// The URL (redacted) of the live connection.
    pub fn current(&self) -> Option<String> {
        self.live.as_ref().map(|l| redact(&l.url))
    }

    /// Drop the connection after an error; the next call reconnects.
    pub fn reset(&mut self) {
        if let Some(l) = self.live.take() {
            // Closing politely would wait on a possibly dead socket; dropping is enough.
            drop(l);
        }
    }

    /// Close politely (clean shutdown).
    pub async fn close(&mut self) {
        if let Some(l) = self.live.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), l.conn.close(200, "shutdown".into()))
                    .await;
        }
    }

    async fn open(url: &str, timeout: Duration) -> Result<Live, String> {
        let work = async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .map_err(|e| match super::empty_vhost_hint(url) {
                    Some(hint) => format!("connect: {e} ({hint})"),
                    None => format!("connect: {e}"),
                })?;
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| format!("open channel: {e}"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("enable confirms: {e}"))?;
            Ok::<_, String>(Live {
                url: url.to_string(),
                conn,
                channel,
                declared: HashSet::new(),
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// True if some broker accepts a TCP connection. A refused connection is known in
    /// microseconds, while a full AMQP connect attempt costs milliseconds: one-shot
    /// producers (the hook) use this to go straight to the spool when no broker is up.
    pub async fn reachable(&self) -> bool {
        for url in &self.cfg.urls {
            let Ok(uri) = url.parse::<lapin::uri::AMQPUri>() else {
                continue;
            };
            let addr = (uri.authority.host.as_str(), uri.authority.port);
            let attempt = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(_)) = tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
                return true;
            }
        }
        false
    }

    /// Make sure a channel is open, trying every URL once, in turn.
    pub async fn connect(&mut self) -> Result<(), BrokerError> {
        if self.is_connected() {
            return Ok(());
        }
        self.reset();
        let n = self.cfg.urls.len();
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (self.next + i) % n;
            let url = self.cfg.urls[idx].clone();
            match Broker::open(&url, self.cfg.connect_timeout).await {
                Ok(live) => {
                    log::info!("connected to AMQP broker {}", redact(&url));
                    self.next = idx;
                    self.live = Some(live);
                    return Ok(());
                }
                Err(e) => errors.push(format!("{}: {e}", redact(&url))),
            }
        }
        self.next = (self.next + 1) % n.max(1);
        Err(BrokerError::Unreachable(errors.join("; ")))
    }

    /// Publish one message; the returned future resolves when the broker confirms.
    pub async fn publish(&mut self, msg: &Message) -> Result<PublisherConfirm, BrokerError> {
        // Message::check runs where messages are built and read back; this is the last
        // line before lapin, whose short-string conversion panics on long names.
        msg.check().map_err(|e| BrokerError::Failed {
            url: String::new(),
            op: "check message",
            reason: e.to_string(),
        })?;
        self.connect().await?;
        let live = self.live.as_mut().expect("connected");
        let fail = |op, e: lapin::Error| BrokerError::Failed {
            url: redact(&live.url),
            op,
            reason: e.to_string(),
        };
        if !live.declared.contains(&msg.exchange) {
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            live.channel
                .exchange_declare(
                    msg.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    opts,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| fail("declare exchange", e))?;
            live.declared.insert(msg.exchange.clone());
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        live.channel
            .basic_publish(
                msg.exchange.as_str().into(),
                msg.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                msg.body.get().as_bytes(),
                props,
            )
            .await
            .map_err(|e| fail("publish", e))
    }
}
