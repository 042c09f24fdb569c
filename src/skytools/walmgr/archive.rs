//! `xarchive %p %f` (PostgreSQL's archive_command) and its remote counterpart
//! `xreceive-wal`. Exit 0 means the segment is durably stored: PostgreSQL recycles it
//! right after.

use std::path::Path;

use super::codec::Compression;
use super::config::{Master, Slave, SlaveLocation};
use super::error::{Result, WalmgrError};
use super::store::{Incoming, Meta, PutOutcome, WalStore};
use super::walheader;
use super::walname::WalName;
use crate::fsutil::PathError;

pub fn xarchive(m: &Master, path: &Path, name: &str) -> Result<()> {
    WalName::parse(name)?;
    if m.push.enabled {
        return super::pusher::xarchive_async(m, path, name);
    }
    store_segment(m, path, name).map(|_| ())
}

/// Store one WAL file: read `path`, check a segment's header against this cluster, build
/// its meta (compressing), and put it into the store, local or remote. Ok means the store
/// acknowledged it (durable there). archive_command and the background pusher both
/// store through here, so both give the same guarantees.
pub fn store_segment(m: &Master, path: &Path, name: &str) -> Result<Meta> {
    let wal = WalName::parse(name)?;
    let check_header = wal.is_segment() && m.check_wal_header;
    let sysid = match check_header {
        true => Some(walheader::cluster_sysid(&m.master_data)?),
        false => None,
    };
    if let (SlaveLocation::Local(_), Compression::None) = (&m.slave, m.compression) {
        let store = WalStore::new(&m.store.paths);
        if !store.is_s3() {
            return store_streamed(&store, path, &wal, sysid);
        }
    }
    let mut f = std::fs::File::open(path).map_err(|e| PathError::new("open", path, e))?;
    let (meta, stored) = Meta::build_from_file(
        name,
        path,
        &mut f,
        m.compression,
        m.compression_level,
        m.compression_threads,
        |start, len| match check_header {
            true => walheader::check_start(path, start, len, &wal, sysid).map(|_| ()),
            false => Ok(()),
        },
        sysid,
    )?;
    let outcome = match &m.slave {
        SlaveLocation::Local(_) => {
            WalStore::new(&m.store.paths).put(&meta, Incoming::Local(&stored))?
        }
        SlaveLocation::Remote { .. } => {
            let remote = m.remote().expect("remote slave");
            let size = meta.size.to_string();
            let stored_size = meta.stored_size.to_string();
            let sysid = meta
                .system_identifier
                .map(|s| s.to_string())
                .unwrap_or_default();
            let out = remote.run(
                &[
                    "xreceive-wal",
                    name,
                    &size,
                    &meta.sha256,
                    meta.compression.name(),
                    &stored_size,
                    &meta.stored_sha256,
                    &sysid,
                ],
                &mut &stored[..],
            )?;
            parse_outcome(&out).ok_or_else(|| {
                WalmgrError::command(
                    format!("ssh {} {} xreceive-wal {name}", remote.host, remote.walmgr),
                    format!(
                        "unexpected answer {:?} (is remote_walmgr this walmgr?); not archived",
                        out.trim()
                    ),
                )
            })?
        }
    };
    report(name, outcome, &meta);
    Ok(meta)
}

/// An uncompressed segment into a local store: one streaming pass ([`WalStore::put_streamed`]).
fn store_streamed(
    store: &WalStore,
    path: &Path,
    wal: &WalName,
    sysid: Option<u64>,
) -> Result<Meta> {
    let mut f = std::fs::File::open(path).map_err(|e| PathError::new("open", path, e))?;
    let (meta, outcome) = store.put_streamed(
        &wal.name,
        path,
        &mut f,
        |start, len| match sysid {
            Some(_) => walheader::check_start(path, start, len, wal, sysid).map(|_| ()),
            None => Ok(()),
        },
        sysid,
    )?;
    report(&wal.name, outcome, &meta);
    Ok(meta)
}

fn report(name: &str, outcome: PutOutcome, meta: &Meta) {
    match outcome {
        PutOutcome::Stored => log::debug!(
            "{name}: archived ({} bytes, {} {} bytes)",
            meta.size,
            meta.compression.name(),
            meta.stored_size
        ),
        PutOutcome::AlreadyStored => log::warn!(
            "{name}: already archived with the same contents (sha256 {}); nothing to do",
            meta.sha256
        ),
        PutOutcome::Repaired => log::warn!("{name}: stored copy was damaged; rewritten"),
    }
}

fn outcome_word(o: PutOutcome) -> &'static str {
    match o {
        PutOutcome::Stored => "stored",
        PutOutcome::AlreadyStored => "already-stored",
        PutOutcome::Repaired => "repaired",
    }
}

/// The receiver's last line; anything else means it was not our xreceive-wal.
pub fn parse_outcome(out: &str) -> Option<PutOutcome> {
    match out.lines().last().map(str::trim) {
        Some("stored") => Some(PutOutcome::Stored),
        Some("already-stored") => Some(PutOutcome::AlreadyStored),
        Some("repaired") => Some(PutOutcome::Repaired),
        _ => None,
    }
}

/// `xreceive-wal <name> <size> <sha256> <compression> <stored_size> <stored_sha256> [sysid]`,
/// stored bytes on stdin. Prints the outcome word for the sending side.
pub fn xreceive_wal(s: &Slave, args: &[String]) -> Result<()> {
    let usage = || {
        WalmgrError::Usage(
            "xreceive-wal: usage: <name> <size> <sha256> <compression> <stored_size> <stored_sha256> [sysid]"
                .into(),
        )
    };
    if args.len() < 6 {
        return Err(usage());
    }
    let num = |v: &str| v.parse::<u64>().map_err(|_| usage());
    let compression = Compression::parse(&args[3]).ok_or_else(usage)?;
    let meta = Meta {
        name: args[0].clone(),
        size: num(&args[1])?,
        sha256: args[2].clone(),
        compression,
        stored_size: num(&args[4])?,
        stored_sha256: args[5].clone(),
        system_identifier: args
            .get(6)
            .filter(|v| !v.is_empty())
            .map(|v| num(v))
            .transpose()?,
        archived_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        xxh3: None,
    };
    // What the sender announces bounds what is read: a segment is at most 1 GiB
    // (PostgreSQL's largest wal_segment_size), its stored form at most that plus what a
    // compressor adds to incompressible data, and stdin no more than announced.
    if meta.size > MAX_SEGMENT || meta.stored_size > meta.size + meta.size / 64 + (64 << 10) {
        return Err(WalmgrError::Refused(format!(
            "xreceive-wal {}: announced size {} (stored {}) is beyond a WAL segment \
             (at most {MAX_SEGMENT} bytes)",
            meta.name, meta.size, meta.stored_size
        )));
    }
    let store = WalStore::new(&s.store.paths);
    let mut stdin = Bounded {
        inner: std::io::stdin().lock(),
        left: meta.stored_size,
    };
    let outcome = store.put(&meta, Incoming::Remote(&mut stdin))?;
    report(&meta.name, outcome, &meta);
    println!("{}", outcome_word(outcome));
    Ok(())
}

/// PostgreSQL's largest `wal_segment_size`.
const MAX_SEGMENT: u64 = 1 << 30;

/// A reader that yields at most `left` bytes and fails if its source has more.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "more data on stdin than the sender announced (refused)",
                )),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_read_no_further_than_announced() {
        use std::io::Read;
        let data = [7u8; 100];
        let mut out = Vec::new();
        Bounded {
            inner: &data[..],
            left: 100,
        }
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out.len(), 100);
        let e = Bounded {
            inner: &data[..],
            left: 99,
        }
        .read_to_end(&mut Vec::new())
        .unwrap_err();
        assert!(e.to_string().contains("more data on stdin"), "{e}");
    }

    #[test]
    fn only_our_receivers_answers_count() {
        assert_eq!(parse_outcome("stored\n"), Some(PutOutcome::Stored));
        assert_eq!(
            parse_outcome("motd\nalready-stored\n"),
            Some(PutOutcome::AlreadyStored)
        );
        assert_eq!(parse_outcome(""), None);
        assert_eq!(parse_outcome("ok\n"), None);
    }
}
