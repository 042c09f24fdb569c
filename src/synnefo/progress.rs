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
use crate::amqp::spool::Spool;
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

/// Splits a byte stream of concatenated JSON objects, resynchronising after garbage.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
}

impl Splitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete item, or None if more input is needed (`eof` false) or the
    /// stream is exhausted (`eof` true).
    pub fn next(&mut self, eof: bool) -> Option<Item> {
        let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
        let Some(start) = start else {
            self.consume(self.buf.len());
            return None;
        };
        self.consume(start);
        if self.buf[0] != b'{' {
            return Some(self.skip_garbage(1, "not the start of a JSON object".into()));
        }
        let mut it =
            serde_json::Deserializer::from_slice(&self.buf).into_iter::<Map<String, Value>>();
        match it.next() {
            Some(Ok(obj)) => {
                let used = it.byte_offset();
                self.consume(used);
                Some(Item::Object(obj))
            }
            Some(Err(e)) if e.is_eof() && !eof => None,
            Some(Err(e)) if e.is_eof() => {
                let offset = self.base;
                self.consume(self.buf.len());
                Some(Item::Garbage {
                    offset,
                    reason: "stream ended inside an object".into(),
                })
            }
            Some(Err(e)) => Some(self.skip_garbage(1, e.to_string())),
            None => None,
        }
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

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.base += n as u64;
    }
}

pub fn run(args: &Args, mut input: impl Read) -> anyhow::Result<ExitCode> {
    let cfg = gtools::load(args.config.as_deref())?;
    let sec = cfg.section(SECTION);
    sec.reject_unknown(&["confirm_wait"])?;
    let g = Gtools::from_config(&cfg, &Overrides::default())?;
    let wait = sec.duration(
        "confirm_wait",
        Duration::from_secs(10),
        Duration::from_millis(100)..=Duration::from_secs(600),
    )?;
    if let Some(w) = g.tls_warning() {
        eprintln!("{PROGRAM}: warning: {w}");
    }
    let routing_key = format!("ganeti.{}.event.progress", prefix(&args.instance));
    let spool = Spool::open(&g.spool_dir, g.spool_max_bytes)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut direct = Direct::new(
        g.broker_config(),
        spool,
        &format!("progress-{}", std::process::id()),
    );
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stderr = std::io::stderr();
    loop {
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
}
