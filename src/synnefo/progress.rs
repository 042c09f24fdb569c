//! snf-progress-monitor: snf-image's progress stream (concatenated JSON objects on
//! stdin) → AMQP, one message per object on `ganeti.<prefix>.event.progress`.
//!
//! The stream has no separators and arrives in arbitrary chunks. Garbage is reported
//! with its byte offset and skipped up to the next `{`; the monitor never dies on it.
//! At EOF (also when the writer is killed) every object read is confirmed or spooled
//! before the monitor exits 0.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use serde_json::{json, Map, Value};

use crate::amqp::direct::{deadline_in, Direct};
use crate::amqp::Message;
use crate::ganeti::messages::{now, prefix};
use crate::synnefo::gtools::{self, Gtools, Overrides};

pub const PROGRAM: &str = "snf-progress-monitor";
pub const SECTION: &str = "progress-monitor";

/// Publish snf-image's progress messages (JSON objects on stdin) for an instance.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// The instance being deployed (its name prefix picks the routing key)
    pub instance: String,
    /// Configuration file [default: /etc/synnefo/gtools.conf, if present]
    #[arg(short = 'c', long, value_name = "FILE", env = "SNF_GTOOLS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest JSON object accepted, in bytes; a larger one is reported and skipped
    /// [default: [progress-monitor] max_object_bytes, else 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_object_bytes: Option<usize>,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(&args, std::io::stdin().lock()))
}

/// What the splitter found in the stream.
#[derive(Debug, PartialEq)]
pub enum Item {
    Object(Map<String, Value>),
    /// Bytes that are not a JSON object, starting at this stream offset.
    Garbage {
        offset: u64,
        reason: String,
    },
}

/// The default cap on one object (`--max-object-bytes`, `[progress-monitor]
/// max_object_bytes`): snf-image's messages are a few hundred bytes.
pub const DEFAULT_MAX_OBJECT: usize = 1 << 20;

/// Brace and string aware scan of one object, resumable chunk by chunk: it finds where
/// an object ends without parsing it, so each byte is looked at once however the
/// stream is chunked.
#[derive(Debug, Default, Clone)]
struct Scan {
    depth: u32,
    in_str: bool,
    esc: bool,
}

impl Scan {
    /// Feed bytes; the index just past the object's closing brace, if it is in `bytes`.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                } else if b == b'\\' {
                    self.esc = true;
                } else if b == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Splits a byte stream of concatenated JSON objects, resynchronising after garbage.
///
/// Incremental: the pending object's bytes are scanned once ([`Scan`]) and parsed when
/// the scan finds its end, or when the buffer has doubled since the last attempt (so a
/// syntax error early in an object that never balances is still found, at a cost that
/// stays linear). An object over `max` bytes is reported and skipped to its end
/// without being kept: memory stays under `max` plus one chunk.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    max: usize,
    /// Scan state of the object at `buf[0]`, and how far into `buf` it got.
    scan: Scan,
    scanned: usize,
    /// Where the object at `buf[0]` ends, once the scan found it.
    end: Option<usize>,
    /// Parse the pending object again once `buf` is this long.
    retry_at: usize,
    /// Skipping an oversized object: its scan state (no bytes kept).
    discarding: Option<Scan>,
}

impl Default for Splitter {
    fn default() -> Splitter {
        Splitter::new(DEFAULT_MAX_OBJECT)
    }
}

impl Splitter {
    pub fn new(max: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            base: 0,
            max,
            scan: Scan::default(),
            scanned: 0,
            end: None,
            retry_at: 0,
            discarding: None,
        }
    }

    /// Bytes held (for tests: bounded by the cap plus one chunk).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let mut chunk = chunk;
        if let Some(scan) = &mut self.discarding {
            match scan.feed(chunk) {
                Some(end) => {
                    self.base += end as u64;
                    chunk = &chunk[end..];
                    self.discarding = None;
                }
                None => {
                    self.base += chunk.len() as u64;
                    return;
                }
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete item, or None if more input is needed (`eof` false) or the
    /// stream is exhausted (`eof` true).
    pub fn next(&mut self, eof: bool) -> Option<Item> {
        if self.discarding.is_some() {
            return None;
        }
        let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
        let Some(start) = start else {
            self.consume(self.buf.len());
            return None;
        };
        self.consume(start);
        if self.buf[0] != b'{' {
            return Some(self.skip_garbage(1, "not the start of a JSON object".into()));
        }
        if self.end.is_none() {
            if let Some(e) = self.scan.feed(&self.buf[self.scanned..]) {
                self.end = Some(self.scanned + e);
            }
            self.scanned = self.end.unwrap_or(self.buf.len());
        }
        let len = self.end.unwrap_or(self.buf.len());
        if len > self.max {
            return Some(self.oversized());
        }
        if self.end.is_none() && !eof && self.buf.len() < self.retry_at {
            return None;
        }
        let mut it = serde_json::Deserializer::from_slice(&self.buf[..len])
            .into_iter::<Map<String, Value>>();
        match it.next() {
            Some(Ok(obj)) => {
                let used = it.byte_offset();
                self.consume(used);
                Some(Item::Object(obj))
            }
            Some(Err(e)) if e.is_eof() && !eof && self.end.is_none() => {
                self.retry_at = self.buf.len() * 2;
                None
            }
            Some(Err(e)) if e.is_eof() => {
                let offset = self.base;
                let n = self.end.unwrap_or(self.buf.len());
                self.consume(n);
                Some(Item::Garbage {
                    offset,
                    reason: if eof && self.buf.is_empty() {
                        "stream ended inside an object".into()
                    } else {
                        e.to_string()
                    },
                })
            }
            Some(Err(e)) => Some(self.skip_garbage(1, e.to_string())),
            None => None,
        }
    }

    /// The object at `buf[0]` is over the cap: report it and skip it to its end (if it
    /// has one in the buffer), keeping only its scan state.
    fn oversized(&mut self) -> Item {
        let offset = self.base;
        let reason = format!("object larger than max_object_bytes ({} bytes)", self.max);
        match self.end {
            Some(end) => self.consume(end),
            None => {
                let scan = std::mem::take(&mut self.scan);
                self.consume(self.buf.len());
                self.discarding = Some(scan);
            }
        }
        Item::Garbage { offset, reason }
    }

    /// Drop at least `min` bytes and everything up to the next `{`.
    fn skip_garbage(&mut self, min: usize, reason: String) -> Item {
        let offset = self.base;
        let next = self.buf[min.min(self.buf.len())..]
            .iter()
            .position(|&b| b == b'{')
            .map_or(self.buf.len(), |p| p + min);
        self.consume(next);
        Item::Garbage { offset, reason }
    }

    /// Drop `n` bytes from the front; the next object starts a fresh scan.
    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.buf.drain(..n);
        self.base += n as u64;
        self.scan = Scan::default();
        self.scanned = 0;
        self.end = None;
        self.retry_at = 0;
    }
}

pub fn run(args: &Args, mut input: impl Read) -> anyhow::Result<ExitCode> {
    let cfg = gtools::load(args.config.as_deref())?;
    let sec = cfg.section(SECTION);
    sec.reject_unknown(&["confirm_wait", "max_object_bytes"])?;
    let g = Gtools::from_config(&cfg, &Overrides::default())?;
    let wait = sec.duration(
        "confirm_wait",
        Duration::from_secs(10),
        Duration::from_millis(100)..=Duration::from_secs(600),
    )?;
    let max_object = match args.max_object_bytes {
        Some(n) if n >= 2 => n,
        Some(n) => anyhow::bail!("--max-object-bytes {n}: must be at least 2"),
        None => sec.number("max_object_bytes", DEFAULT_MAX_OBJECT, 2..=(1usize << 30))?,
    };
    if let Some(w) = g.tls_warning() {
        eprintln!("{PROGRAM}: warning: {w}");
    }
    let routing_key = format!("ganeti.{}.event.progress", prefix(&args.instance));
    let spool = g.open_spool()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut direct = Direct::new(
        g.broker_config(),
        spool,
        &format!("progress-{}", std::process::id()),
    );
    let mut splitter = Splitter::new(max_object);
    let mut buf = vec![0u8; 64 * 1024];
    let mut stderr = std::io::stderr();
    loop {
        // With the broker down, what was read so far is spooled as one entry (one
        // fsync) before waiting for more: durable, without an fsync per object.
        direct.flush()?;
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = writeln!(
                    stderr,
                    "{PROGRAM}: reading stdin: {e}; finishing with what was read"
                );
                0
            }
        };
        let eof = n == 0;
        splitter.push(&buf[..n]);
        while let Some(item) = splitter.next(eof) {
            match item {
                Item::Object(mut obj) => {
                    obj.insert("event_time".into(), now());
                    obj.insert("instance".into(), json!(args.instance));
                    let body = Value::Object(obj);
                    let _ = writeln!(stderr, "[MONITOR] {body}");
                    let msg = Message::new(&g.exchange, &routing_key, &body)?;
                    runtime.block_on(direct.send(msg, deadline_in(wait)))?;
                }
                Item::Garbage { offset, reason } => {
                    let _ = writeln!(
                        stderr,
                        "{PROGRAM}: skipping garbage at byte {offset}: {reason}"
                    );
                }
            }
        }
        if eof {
            break;
        }
    }
    let outcome = runtime.block_on(direct.finish(deadline_in(wait)))?;
    if outcome.spooled > 0 {
        let _ = writeln!(
            stderr,
            "{PROGRAM}: {} messages spooled for snf-ganeti-eventd to deliver",
            outcome.spooled
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<Item> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(i) = s.next(false) {
                out.push(i);
            }
        }
        while let Some(i) = s.next(true) {
            out.push(i);
        }
        out
    }

    fn obj(i: &Item) -> &Map<String, Value> {
        match i {
            Item::Object(o) => o,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn concatenated_objects_in_any_chunking() {
        let stream = br#"{"type":"image-info","messages":["a"]}{"type":"image-copy-progress","progress":50.5}  {"x":{"nested":"}{"}}"#;
        for size in [1, 2, 3, 7, stream.len()] {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let items = split_all(&chunks);
            assert_eq!(items.len(), 3, "chunk size {size}: {items:?}");
            assert_eq!(obj(&items[1])["progress"], 50.5);
            assert_eq!(obj(&items[2])["x"]["nested"], "}{");
        }
    }

    #[test]
    fn garbage_is_reported_with_offset_and_skipped() {
        let items = split_all(&[b"{\"a\":1}xx{\"b\":2}{oops}{\"c\":3}\n[1]{\"d\":"]);
        let kinds: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Object(o) => o.keys().next().unwrap().clone(),
                Item::Garbage { offset, .. } => format!("garbage@{offset}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "a",
                "garbage@7",
                "b",
                "garbage@16",
                "c",
                "garbage@30",
                "garbage@33"
            ]
        );
        match &items[6] {
            Item::Garbage { reason, .. } => assert!(reason.contains("ended inside")),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_never_closing_object_is_refused_past_the_cap_with_bounded_memory() {
        let cap = 64 * 1024;
        let mut s = Splitter::new(cap);
        let chunk = vec![b'x'; 8192];
        s.push(br#"{"type":"image-copy-progress","x":""#);
        let mut items = Vec::new();
        for _ in 0..2000 {
            // 16 MiB of one string that never ends
            s.push(&chunk);
            while let Some(i) = s.next(false) {
                items.push(i);
            }
            assert!(
                s.buffered() <= cap + chunk.len(),
                "{} buffered",
                s.buffered()
            );
        }
        assert_eq!(items.len(), 1, "{items:?}");
        match &items[0] {
            Item::Garbage { offset, reason } => {
                assert_eq!(*offset, 0);
                assert!(
                    reason.contains("max_object_bytes (65536 bytes)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The string and the object end: what follows is read again.
        s.push(br#""}{"after":1}"#);
        let next = s.next(false).unwrap();
        assert_eq!(obj(&next)["after"], 1);
        assert!(s.next(true).is_none());
    }

    #[test]
    fn an_unbalanced_brace_in_garbage_does_not_swallow_what_follows() {
        let mut stream = b"{garbage\n".to_vec();
        for i in 0..50 {
            stream.extend(format!("{{\"n\":{i}}}").as_bytes());
        }
        let items = split_all(&[&stream]);
        let objects = items
            .iter()
            .filter(|i| matches!(i, Item::Object(_)))
            .count();
        assert_eq!(objects, 50, "{items:?}");
        // Same in one-byte chunks (each object is scanned, not re-parsed per byte).
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let items = split_all(&chunks);
        let objects = items
            .iter()
            .filter(|i| matches!(i, Item::Object(_)))
            .count();
        assert_eq!(objects, 50, "{items:?}");
    }

    #[test]
    fn a_complete_object_over_the_cap_is_skipped_and_the_next_one_read() {
        let big = format!("{{\"a\":\"{}\"}}{{\"b\":2}}", "y".repeat(5000));
        let mut s = Splitter::new(1000);
        s.push(big.as_bytes());
        assert!(matches!(s.next(false), Some(Item::Garbage { .. })));
        assert_eq!(obj(&s.next(false).unwrap())["b"], 2);
    }
}
