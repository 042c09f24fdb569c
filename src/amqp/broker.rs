//! One confirmed-publishing channel to the first reachable broker of a URL list.
//!
//! Exchanges are declared (topic, durable) on first use per connection, as Synnefo
//! did, so a fresh broker needs no setup. Messages are persistent (delivery mode 2)
//! and tagged `application/json`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{AsyncTcpStream, PublisherConfirm};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::tls::{is_tls_failure, Tls};
use super::{redact, Message};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no broker reachable ({0})")]
    Unreachable(String),
    /// A TLS handshake failed (certificate not trusted, name mismatch, client
    /// certificate refused): a configuration error, not a broker that is down.
    #[error("TLS with the broker failed, check the broker's certificate and amqp_tls_* ({0})")]
    Tls(String),
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
    /// For `amqps://` URLs; None when no URL needs it.
    pub tls: Option<Tls>,
}

/// Why one URL could not be opened.
/// The frame size we offer the broker (AMQP's minimum is 4 KiB).
pub const FRAME_MAX: u32 = 16 * 1024;

struct OpenError {
    tls: bool,
    reason: String,
}

/// Open an AMQP connection; `amqps://` runs TLS with `tls` (which validation made sure
/// exists for such a URL).
async fn connect(url: &str, tls: Option<&Tls>) -> Result<Connection, OpenError> {
    let failed = |e: lapin::Error| OpenError {
        tls: is_tls_failure(&e),
        reason: format!("connect: {e}"),
    };
    let mut uri: AMQPUri = url.parse().map_err(|e: String| OpenError {
        tls: false,
        reason: e,
    })?;
    // lapin keeps send and receive buffers of 32 frames each; at RabbitMQ's default
    // frame_max (128 KiB) that is 8 MiB written into per connection, most of an idle
    // daemon's memory and a good part of a one-shot hook's run. Our messages are a few
    // KiB (bigger bodies are split into frames), so we offer a smaller frame unless the
    // URL asks for one.
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    let props = ConnectionProperties::default();
    if uri.scheme == AMQPScheme::AMQP {
        return Connection::connect_uri(uri, props).await.map_err(failed);
    }
    let Some(tls) = tls else {
        return Err(OpenError {
            tls: true,
            reason: "amqps:// without TLS settings".into(),
        });
    };
    let connector = tls.connector().clone();
    let handshake_done = Arc::new(AtomicBool::new(false));
    let done = handshake_done.clone();
    let runtime = lapin::runtime::default_runtime().map_err(failed)?;
    let result = Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), uri.authority.port))
                    .await?
                    .collect();
            let plain = AsyncTcpStream::connect(&runtime, addrs).await?;
            let stream = plain.into_rustls(&connector, &host).await?;
            done.store(true, Ordering::SeqCst);
            Ok(stream)
        },
        props,
    )
    .await;
    result.map_err(|e| {
        let mut err = failed(e.clone());
        // With TLS 1.3 the client's side of the handshake is complete before the broker
        // has checked the client certificate; its refusal (an alert, then a close)
        // often reaches lapin as a reset connection instead of the alert.
        if !err.tls
            && handshake_done.load(Ordering::SeqCst)
            && matches!(e.kind(), lapin::ErrorKind::IOError(_))
        {
            err.tls = true;
            err.reason += " (the broker closed the connection right after the TLS handshake: \
                            does it require a client certificate, amqp_tls_cert_file, or \
                            refuse this one?)";
        }
        err
    })
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

    /// Replace the settings (SIGHUP); the current connection is kept if its URL stays
    /// and the TLS settings did not change.
    pub fn set_config(&mut self, cfg: BrokerConfig) {
        if let Some(l) = &self.live {
            if !cfg.urls.contains(&l.url) || cfg.tls != self.cfg.tls {
                self.reset();
            }
        }
        self.cfg = cfg;
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

    async fn open(url: &str, tls: Option<&Tls>, timeout: Duration) -> Result<Live, OpenError> {
        let work = async {
            let failed = |op: &str, e: lapin::Error| OpenError {
                tls: is_tls_failure(&e),
                reason: format!("{op}: {e}"),
            };
            let conn = connect(url, tls).await.map_err(|mut e| {
                if let Some(hint) = super::empty_vhost_hint(url) {
                    e.reason = format!("{} ({hint})", e.reason);
                }
                e
            })?;
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| failed("open channel", e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| failed("enable confirms", e))?;
            Ok::<_, OpenError>(Live {
                url: url.to_string(),
                conn,
                channel,
                declared: HashSet::new(),
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(OpenError {
                tls: false,
                reason: format!("no answer within {timeout:?}"),
            }),
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
        let mut tls_failed = false;
        for i in 0..n {
            let idx = (self.next + i) % n;
            let url = self.cfg.urls[idx].clone();
            match Broker::open(&url, self.cfg.tls.as_ref(), self.cfg.connect_timeout).await {
                Ok(live) => {
                    log::info!("connected to AMQP broker {}", redact(&url));
                    self.next = idx;
                    self.live = Some(live);
                    return Ok(());
                }
                Err(e) => {
                    tls_failed |= e.tls;
                    errors.push(format!("{}: {}", redact(&url), e.reason));
                }
            }
        }
        self.next = (self.next + 1) % n.max(1);
        if tls_failed {
            return Err(BrokerError::Tls(errors.join("; ")));
        }
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
