//! The WAL half of the store in S3: the same rules as the directory store
//! ([`super::store`]), with the service's conditional writes in place of the flock.
//!
//! ```text
//! <completed_wals>/<name>.<stored sha256>[.gz|.zst]   the stored bytes (content-addressed)
//! <completed_wals>/<name>.meta                         the same JSON as the local .meta
//! ```
//! A data object is named by its own sha256, so it is never replaced by other bytes:
//! written with `If-None-Match: *`, an answer "exists" means these very bytes are
//! there (checked by HEAD). The `.meta` is the commit, written last with
//! `If-None-Match: *`: of two writers only one commits, and the other compares. A
//! segment counts as stored iff its `.meta` parses and the object it names has
//! `stored_size` bytes. The service checks the Content-MD5 and x-amz-checksum-sha256 it
//! is sent before answering 200; the data object's PUT answer (ETag = md5 of what was
//! stored, the sha256 where echoed) must be what was sent before the meta is written,
//! and so must the meta's. Where the answer cannot tell (SSE-KMS, no ETag), a HEAD
//! (size, the sha256 sent as `x-amz-meta-sha256` and `x-amz-checksum-sha256`) checks
//! the data object and the meta is read back. Services without conditional writes
//! (`s3_conditional_put = no`) get the HEAD/GET comparison before each write instead,
//! which leaves a window between two writers of different contents: there, archive
//! from one master only.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::codec::Compression;
use super::error::{Result, WalmgrError};
use super::store::{Incoming, Meta, PutOutcome, META_EXT};
use super::walname::{Kind, WalName};
use crate::s3::{self, Client, Put, PutOptions};

/// A data object of a name with no `.meta` older than this is a leftover of a push
/// that never committed (or lost to another writer): `cleanup` removes it.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug)]
pub struct S3Wal {
    client: Client,
    /// Key prefix of `completed_wals`, without the trailing `/`.
    prefix: String,
}

impl S3Wal {
    /// `completed_wals` is `s3://bucket/prefix` (config.rs made it so).
    pub fn new(cfg: &s3::Config, completed_wals: &Path) -> S3Wal {
        let url = completed_wals.to_string_lossy();
        let prefix = match s3::Url::parse(&url) {
            Some(Ok(u)) => u.prefix,
            _ => String::new(),
        };
        S3Wal {
            client: Client::new(cfg.clone()),
            prefix,
        }
    }

    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() || rel.is_empty() {
            if rel.is_empty() {
                self.prefix.clone()
            } else {
                rel.to_string()
            }
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn meta_key(&self, name: &str) -> String {
        self.key(&format!("{name}{META_EXT}"))
    }

    fn data_key(&self, meta: &Meta) -> String {
        self.key(&self.data_rel(meta))
    }

    /// For messages: the object as a path-like `s3://bucket/key`.
    pub fn shown(&self, key: &str) -> PathBuf {
        PathBuf::from(self.client.object(key))
    }

    /// Every object beside the metas, by its name under the prefix, from one listing:
    /// what incremental `verify` compares with what it recorded.
    pub fn entries(&self) -> Result<std::collections::HashMap<String, s3::Entry>> {
        Ok(self.keys()?.into_iter().collect())
    }

    /// The data object's name under the prefix (as [`Self::entries`] has it).
    pub fn data_rel(&self, meta: &Meta) -> String {
        format!(
            "{}.{}{}",
            meta.name,
            meta.stored_sha256,
            meta.compression.ext()
        )
    }

    /// A small object of walmgr's own under the prefix (not a WAL name, so `list` and
    /// `cleanup` never take it for one): its bytes, if it exists.
    pub fn read_own(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.client.get_bytes(&self.key(rel), limit)?)
    }

    /// Write (or replace) such an object (unconditional: never answered "exists").
    pub fn write_own(&self, rel: &str, body: &[u8]) -> Result<()> {
        let sha = crate::digest::sha256_hex(body);
        let opts = PutOptions {
            if_none_match: false,
            meta: &[],
        };
        self.client.put(&self.key(rel), body, &sha, &opts)?;
        Ok(())
    }

    /// Can the bucket be listed with these credentials? (`setup`.)
    pub fn ensure(&self) -> Result<()> {
        Ok(self.client.check_bucket(&self.key(""))?)
    }

    /// The meta object, committed or not.
    fn read_meta(&self, name: &str) -> Result<Option<Meta>> {
        let key = self.meta_key(name);
        let Some(bytes) = self.client.get_bytes(&key, 1 << 20)? else {
            return Ok(None);
        };
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| WalmgrError::Corrupt {
            path: self.shown(&key),
            reason: format!("unreadable meta: {e}"),
        })?;
        if meta.name != name {
            return Err(WalmgrError::Corrupt {
                path: self.shown(&key),
                reason: format!("meta of {:?} stored under {name}", meta.name),
            });
        }
        Ok(Some(meta))
    }

    pub fn lookup(&self, name: &str) -> Result<Option<Meta>> {
        let Some(meta) = self.read_meta(name)? else {
            return Ok(None);
        };
        let dk = self.data_key(&meta);
        match self.client.head(&dk)? {
            Some(h) if h.size == meta.stored_size => Ok(Some(meta)),
            Some(h) => {
                log::warn!(
                    "{}: {} bytes, meta says {}: not counted as archived",
                    self.client.object(&dk),
                    h.size,
                    meta.stored_size
                );
                Ok(None)
            }
            None => {
                log::warn!(
                    "{}: missing, meta without data: not counted as archived",
                    self.client.object(&dk)
                );
                Ok(None)
            }
        }
    }

    /// What the service says it holds for `meta`'s data object, against the meta.
    pub fn check_stored(&self, meta: &Meta) -> Result<()> {
        let dk = self.data_key(meta);
        let corrupt = |reason: String| WalmgrError::Corrupt {
            path: self.shown(&dk),
            reason,
        };
        let h = self
            .client
            .head(&dk)?
            .ok_or_else(|| corrupt("missing".into()))?;
        if h.size != meta.stored_size {
            return Err(corrupt(format!(
                "{} bytes, its meta says {}",
                h.size, meta.stored_size
            )));
        }
        if let Some(sha) = h.meta("sha256") {
            if sha != meta.stored_sha256 {
                return Err(corrupt(format!(
                    "recorded sha256 {sha}, its meta says {}",
                    meta.stored_sha256
                )));
            }
        }
        if let (Some(c), Some(want)) = (
            &h.checksum_sha256,
            s3::sha256_hex_to_b64(&meta.stored_sha256),
        ) {
            if *c != want {
                return Err(corrupt(format!(
                    "the service's sha256 {c} (base64), its meta says {want}"
                )));
            }
        }
        Ok(())
    }

    /// The stored bytes of `meta`, streaming; the caller checks them.
    pub fn open(&self, meta: &Meta) -> Result<(PathBuf, Box<dyn Read + Send>)> {
        let dk = self.data_key(meta);
        match self.client.get(&dk)? {
            Some((_, r)) => Ok((self.shown(&dk), r)),
            None => Err(WalmgrError::Corrupt {
                path: self.shown(&dk),
                reason: "missing (its meta is there)".into(),
            }),
        }
    }

    pub fn put(&self, meta: &Meta, stored: Incoming) -> Result<PutOutcome> {
        WalName::parse(&meta.name)?;
        let bytes: Cow<[u8]> = match stored {
            Incoming::Local(b) => Cow::Borrowed(b),
            Incoming::Remote(r) => {
                let mut v = Vec::with_capacity(meta.stored_size.min(1 << 30) as usize);
                r.read_to_end(&mut v)
                    .map_err(|e| WalmgrError::Transfer(format!("{}: receiving: {e}", meta.name)))?;
                let sha = crate::digest::sha256_hex(&v);
                if sha != meta.stored_sha256 || v.len() as u64 != meta.stored_size {
                    return Err(WalmgrError::Corrupt {
                        path: self.shown(&self.data_key(meta)),
                        reason: format!(
                            "received {} bytes with sha256 {sha}, sender said {} bytes with sha256 {}",
                            v.len(),
                            meta.stored_size,
                            meta.stored_sha256
                        ),
                    });
                }
                Cow::Owned(v)
            }
        };
        let mut outcome = PutOutcome::Stored;
        if let Some(old) = self.read_meta(&meta.name)? {
            if old.sha256 != meta.sha256 || old.size != meta.size {
                return Err(conflict(&old, meta));
            }
            match self.check_stored(&old) {
                Ok(()) => return Ok(PutOutcome::AlreadyStored),
                Err(e) => {
                    log::warn!("{e}; rewriting it from the identical new copy");
                    outcome = PutOutcome::Repaired;
                }
            }
        }
        self.put_data(meta, &bytes)?;
        // The commit. A repair replaces the meta (same contents, maybe another
        // compression); anything else must not replace one.
        let mk = self.meta_key(&meta.name);
        let json = serde_json::to_vec(meta).expect("meta serializes");
        let sha = crate::digest::sha256_hex(&json);
        let opts = PutOptions {
            if_none_match: outcome != PutOutcome::Repaired,
            meta: &[],
        };
        match self.client.put(&mk, &json, &sha, &opts)? {
            // With conditional writes a 200 makes this writer the one that committed.
            Put::Written(h)
                if opts.if_none_match
                    && self.client.config().conditional_put
                    && matches!(self.acknowledged(&h, &json, &sha), Ack::Whole) =>
            {
                return Ok(outcome)
            }
            Put::Written(_) => {}
            Put::Exists => {
                // Another writer committed first: the same segment, or not.
                return match self.read_meta(&meta.name)? {
                    Some(old) if old.sha256 == meta.sha256 && old.size == meta.size => {
                        Ok(PutOutcome::AlreadyStored)
                    }
                    Some(old) => Err(conflict(&old, meta)),
                    None => Err(WalmgrError::Transfer(format!(
                        "{}: the service says it exists, then that it does not; not archived",
                        self.client.object(&mk)
                    ))),
                };
            }
        }
        match self.client.get_bytes(&mk, 1 << 20)? {
            Some(back) if back == json => Ok(outcome),
            Some(back) => match serde_json::from_slice::<Meta>(&back) {
                // A writer without conditional puts got there between our two calls.
                Ok(old) if old.sha256 == meta.sha256 && old.size == meta.size => {
                    Ok(PutOutcome::AlreadyStored)
                }
                Ok(old) => Err(conflict(&old, meta)),
                Err(_) => Err(WalmgrError::Transfer(format!(
                    "{}: read back differs from what was written; not archived",
                    self.client.object(&mk)
                ))),
            },
            None => Err(WalmgrError::Transfer(format!(
                "{}: written, then not found; not archived",
                self.client.object(&mk)
            ))),
        }
    }

    /// Store the data object and check that the service holds exactly it.
    fn put_data(&self, meta: &Meta, bytes: &[u8]) -> Result<()> {
        let dk = self.data_key(meta);
        let opts = PutOptions {
            if_none_match: true,
            meta: &[("sha256", meta.stored_sha256.as_str())],
        };
        let written = self.client.put(&dk, bytes, &meta.stored_sha256, &opts)?;
        if let Put::Written(h) = &written {
            match self.acknowledged(h, bytes, &meta.stored_sha256) {
                Ack::Whole => return Ok(()),
                Ack::Unknown => {}
                Ack::Differs(what) => {
                    return Err(WalmgrError::Transfer(format!(
                        "{}: {what}; not archived",
                        self.client.object(&dk)
                    )))
                }
            }
        }
        match self.check_stored(meta) {
            Ok(()) => Ok(()),
            // The object under our content address is not whole (an upload cut short on
            // a service that keeps partial objects): replace it with the real bytes.
            Err(e) if matches!(written, Put::Exists) => {
                log::warn!("{e}; writing it again");
                let opts = PutOptions {
                    if_none_match: false,
                    meta: opts.meta,
                };
                self.client.put(&dk, bytes, &meta.stored_sha256, &opts)?;
                self.check_stored(meta)
            }
            Err(e) => Err(WalmgrError::Transfer(format!("{e}; not archived"))),
        }
    }

    /// What a PUT's answer says of the object it stored. The service checked the
    /// Content-MD5 and x-amz-checksum-sha256 it was sent before answering 200 (a
    /// mismatch is a 400), and a single-part ETag is the object's md5 (except under
    /// SSE-KMS): an ETag equal to the md5 of what was sent, and the sha256 echoed where
    /// the service echoes it, acknowledge these very bytes, and no HEAD or read-back is
    /// needed. Without an ETag to compare (SSE-KMS, a service that omits it) the caller
    /// asks the service (HEAD, or reads the object back).
    fn acknowledged(&self, h: &s3::Head, sent: &[u8], sha256_hex: &str) -> Ack {
        let kms = matches!(self.client.config().sse, Some(s3::Sse::Kms { .. }));
        let Some(etag) = h.etag.as_deref().filter(|e| e.len() == 32 && !kms) else {
            return Ack::Unknown;
        };
        let md5 = s3::md5_hex(sent);
        if etag != md5 {
            return Ack::Differs(format!("the service stored md5 {etag}, walmgr sent {md5}"));
        }
        match (&h.checksum_sha256, s3::sha256_hex_to_b64(sha256_hex)) {
            (Some(got), Some(want)) if *got != want => Ack::Differs(format!(
                "the service computed sha256 {got} (base64), walmgr sent {want}"
            )),
            _ => Ack::Whole,
        }
    }

    /// Every key under completed_wals, relative to it, with its age in seconds.
    fn keys(&self) -> Result<Vec<(String, s3::Entry)>> {
        let pfx = self.key("");
        let pfx = if pfx.is_empty() {
            pfx
        } else {
            format!("{pfx}/")
        };
        Ok(self
            .client
            .list(&pfx)?
            .into_iter()
            .filter_map(|e| Some((e.key.strip_prefix(&pfx)?.to_string(), e)))
            .filter(|(rel, _)| !rel.contains('/'))
            .collect())
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .keys()?
            .into_iter()
            .filter_map(|(rel, _)| rel.strip_suffix(META_EXT).map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn purge_before(&self, cutoff: &WalName) -> Result<usize> {
        let keys = self.keys()?;
        let old = |name: &str| {
            WalName::parse(name)
                .is_ok_and(|w| w.kind != Kind::History && w.position() < cutoff.position())
        };
        let mut removed = 0;
        // Metas first: an interrupted purge leaves data objects that are simply not
        // archived (cleanup's orphans).
        for (rel, e) in &keys {
            if let Some(name) = rel.strip_suffix(META_EXT) {
                if old(name) {
                    self.client.delete(&e.key)?;
                    removed += 1;
                }
            }
        }
        for (rel, e) in &keys {
            if data_name(rel).is_some_and(old) {
                self.client.delete(&e.key)?;
            }
        }
        if removed > 0 {
            log::info!(
                "removed {removed} archived files older than {}",
                cutoff.name
            );
        }
        Ok(removed)
    }

    /// Data objects no meta names, older than an hour: pushes that never committed.
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        let keys = self.keys()?;
        let metas: std::collections::HashSet<&str> = keys
            .iter()
            .filter_map(|(rel, _)| rel.strip_suffix(META_EXT))
            .collect();
        let mut by_name: std::collections::BTreeMap<&str, Vec<&s3::Entry>> = Default::default();
        for (rel, e) in &keys {
            if let Some(n) = data_name(rel) {
                by_name.entry(n).or_default().push(e);
            }
        }
        let now = std::time::SystemTime::now();
        let aged = |e: &s3::Entry| {
            humantime::parse_rfc3339_weak(&e.last_modified)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > ORPHAN_AGE)
        };
        let mut removed = Vec::new();
        for (name, entries) in by_name {
            let keep = if metas.contains(name) {
                if entries.len() < 2 {
                    continue;
                }
                // More than one copy: keep the one the meta names.
                match self.read_meta(name)? {
                    Some(m) => Some(self.data_key(&m)),
                    None => continue,
                }
            } else {
                None
            };
            for e in entries {
                if Some(&e.key) != keep.as_ref() && aged(e) {
                    self.client.delete(&e.key)?;
                    removed.push(self.shown(&e.key));
                }
            }
        }
        Ok(removed)
    }
}

/// `<name>.<64 hex>[.gz|.zst]` → `<name>`.
fn data_name(rel: &str) -> Option<&str> {
    let base = [Compression::Gzip, Compression::Zstd]
        .iter()
        .find_map(|c| rel.strip_suffix(c.ext()))
        .unwrap_or(rel);
    let (name, hash) = base.rsplit_once('.')?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
}

/// [`S3Wal::acknowledged`]'s verdict.
enum Ack {
    Whole,
    Unknown,
    Differs(String),
}

fn conflict(old: &Meta, new: &Meta) -> WalmgrError {
    WalmgrError::Conflict {
        name: new.name.clone(),
        stored: old.sha256.clone(),
        stored_size: old.size,
        new: new.sha256.clone(),
        new_size: new.size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(sse: Option<s3::Sse>) -> S3Wal {
        let cfg = s3::Config {
            scheme: "http".into(),
            host: "127.0.0.1:9".into(),
            region: "us-east-1".into(),
            addressing: s3::Addressing::Path,
            bucket: "b".into(),
            credentials: s3::Credentials {
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                session_token: None,
                source: "test".into(),
            },
            sse,
            conditional_put: true,
            timeout: std::time::Duration::from_secs(1),
            retries: 0,
            ca_file: None,
            part_size: 5 << 20,
        };
        S3Wal::new(&cfg, Path::new("s3://b/p/logs.complete"))
    }

    #[test]
    fn a_put_answer_acknowledges_only_the_bytes_sent() {
        let body = b"segment bytes";
        let sha = crate::digest::sha256_hex(body);
        let head = |etag: Option<String>, sum: Option<String>| s3::Head {
            etag,
            checksum_sha256: sum,
            ..Default::default()
        };
        let s = store(None);
        let md5 = s3::md5_hex(body);
        let b64 = s3::sha256_hex_to_b64(&sha);
        assert!(matches!(
            s.acknowledged(&head(Some(md5.clone()), None), body, &sha),
            Ack::Whole
        ));
        assert!(matches!(
            s.acknowledged(&head(Some(md5.clone()), b64.clone()), body, &sha),
            Ack::Whole
        ));
        assert!(matches!(
            s.acknowledged(&head(Some(s3::md5_hex(b"other")), None), body, &sha),
            Ack::Differs(_)
        ));
        let other = s3::sha256_hex_to_b64(&crate::digest::sha256_hex(b"other"));
        assert!(matches!(
            s.acknowledged(&head(Some(md5.clone()), other), body, &sha),
            Ack::Differs(_)
        ));
        // No ETag, or a multipart-style one: ask the service.
        assert!(matches!(
            s.acknowledged(&head(None, b64), body, &sha),
            Ack::Unknown
        ));
        assert!(matches!(
            s.acknowledged(&head(Some(format!("{md5}-2")), None), body, &sha),
            Ack::Unknown
        ));
        // Under SSE-KMS the ETag is not the md5.
        let kms = store(Some(s3::Sse::Kms { key_id: None }));
        assert!(matches!(
            kms.acknowledged(&head(Some(md5), None), body, &sha),
            Ack::Unknown
        ));
    }

    #[test]
    fn data_names() {
        let h = "a".repeat(64);
        assert_eq!(
            data_name(&format!("000000010000000000000003.{h}.zst")),
            Some("000000010000000000000003")
        );
        assert_eq!(
            data_name(&format!("000000010000000000000003.00000028.backup.{h}")),
            Some("000000010000000000000003.00000028.backup")
        );
        assert_eq!(data_name("000000010000000000000003.meta"), None);
        assert_eq!(data_name("00000002.history.abc"), None);
    }
}
