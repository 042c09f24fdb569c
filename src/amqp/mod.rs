//! AMQP publishing fronted by a durable spool.
//!
//! A message counts as produced once it is in the [`spool`] (fsynced). The [`drain`]
//! loop publishes spooled messages in order with publisher confirms through a
//! [`broker::Broker`] (a list of URLs tried in turn) and removes a spool entry only
//! after the broker confirmed every message in it.

pub mod broker;
pub mod direct;
pub mod drain;
pub mod spool;
pub mod tls;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One message to publish: where it goes and its JSON body, byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub body: Box<RawValue>,
}

/// AMQP carries exchange names and routing keys as "short strings": at most 255 bytes.
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("cannot encode message body: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{what} is {len} bytes, AMQP allows at most {MAX_NAME_BYTES}: {start}...")]
    TooLong {
        what: &'static str,
        len: usize,
        /// The first bytes, so the operator can tell which instance or network it was.
        start: String,
    },
}

impl Message {
    /// Serialize `body` once; the spool and the wire carry exactly these bytes.
    pub fn new<T: Serialize>(
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<Message, MessageError> {
        let m = Message {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            body: serde_json::value::to_raw_value(body)?,
        };
        m.check()?;
        Ok(m)
    }

    /// Whether the broker can take this message's names at all. Checked where a
    /// message is built and again where one is read back from the spool, so an
    /// unpublishable message is refused or quarantined instead of reaching lapin
    /// (whose short-string conversion panics).
    pub fn check(&self) -> Result<(), MessageError> {
        for (what, v) in [
            ("exchange", &self.exchange),
            ("routing key", &self.routing_key),
        ] {
            if v.len() > MAX_NAME_BYTES {
                let mut cut = 40;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                return Err(MessageError::TooLong {
                    what,
                    len: v.len(),
                    start: v[..cut].to_string(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad AMQP URL {url}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Check an AMQP URL at startup so a typo is one clear line, not a reconnect loop.
pub fn validate_url(url: &str) -> Result<(), UrlError> {
    let err = |reason: &str| UrlError {
        url: redact(url),
        reason: reason.to_string(),
    };
    if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
        return Err(err("must start with amqp:// or amqps://"));
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| err(&e))
}

/// A URL whose path is just `/` names the vhost "" (RFC-style AMQP URIs put the vhost,
/// percent-encoded, after the slash), which no broker has by default: RabbitMQ then
/// answers "vhost  not found". This says so, and how to write the default vhost `/`.
pub fn empty_vhost_hint(url: &str) -> Option<String> {
    let uri = url.parse::<lapin::uri::AMQPUri>().ok()?;
    uri.vhost.is_empty().then(|| {
        format!(
            "vhost '' (the URL ends in '/'); write the default vhost '/' as %2f, \
             e.g. amqp://{}:{}/%2f",
            uri.authority.host, uri.authority.port
        )
    })
}

/// The URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return url.to_string();
    };
    let scheme = &url[..url.len() - rest.len()];
    // The last '@' ends the userinfo even when a raw '/' in the password would make
    // the authority look shorter.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        validate_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        validate_url("amqp://localhost").unwrap();
        let e = validate_url("http://x").unwrap_err().to_string();
        assert_eq!(
            e,
            "bad AMQP URL http://x: must start with amqp:// or amqps://"
        );
        validate_url("amqps://u:secret@h/%2f").unwrap();
        let e = validate_url("amqps://u:secret@h:x/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(validate_url("amqp://h:notaport/").is_err());
        assert_eq!(redact("amqp://u:pw@h:1/v"), "amqp://u:***@h:1/v");
        assert_eq!(redact("amqp://h/v"), "amqp://h/v");
        assert_eq!(redact("amqp://u:p/w@h/v"), "amqp://u:***@h/v");
    }

    #[test]
    fn a_url_ending_in_a_slash_is_the_empty_vhost() {
        let hint = empty_vhost_hint("amqp://u:secret@h:5672/").unwrap();
        assert_eq!(
            hint,
            "vhost '' (the URL ends in '/'); write the default vhost '/' as %2f, \
             e.g. amqp://h:5672/%2f"
        );
        assert_eq!(empty_vhost_hint("amqp://h:5672/%2f"), None);
        assert_eq!(
            empty_vhost_hint("amqp://h"),
            None,
            "no path: the default vhost"
        );
        assert_eq!(empty_vhost_hint("amqp://h/prod"), None);
    }

    #[test]
    fn names_longer_than_a_short_string_are_refused() {
        let long = "x".repeat(256);
        let e = Message::new("ganeti", &long, &1).unwrap_err().to_string();
        assert!(e.starts_with("routing key is 256 bytes"), "{e}");
        assert!(Message::new(&long, "k", &1).is_err());
        Message::new("ganeti", &"x".repeat(255), &1).unwrap();
        // A multi-byte character straddling the excerpt's end must not panic either.
        let e = Message::new("ganeti", &"é".repeat(200), &1).unwrap_err();
        assert!(matches!(e, MessageError::TooLong { len: 400, .. }));
    }

    #[test]
    fn message_body_is_exact_json() {
        let m = Message::new("ganeti", "k", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(m.body.get(), r#"{"a":1}"#);
    }
}
