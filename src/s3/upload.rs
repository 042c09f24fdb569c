//! A multipart upload as a `Write`: bytes are gathered into parts and each full part is
//! sent (with its Content-MD5 and sha256, retried as any request) before more is taken,
//! so memory stays at one part whatever the object's size. Nothing is visible under
//! the key until [`Upload::finish`] completes the upload; an upload dropped unfinished
//! is aborted, so the service keeps no parts of it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use md5::Digest;

use super::{Client, Error, Head, Result};

/// S3 refuses more parts than this in one upload.
const MAX_PARTS: u32 = 10_000;
/// Parts grow every this many, so an upload of unknown size fits in [`MAX_PARTS`]:
/// at 16 MiB, 2000 parts each of 16, 32, 64, 128 and 256 MiB hold about 1 TiB.
const PARTS_PER_STEP: u32 = 2000;

pub struct Upload<'a> {
    client: &'a Client,
    key: String,
    id: String,
    base_part: usize,
    buf: Vec<u8>,
    etags: Vec<String>,
    sent: u64,
    /// md5 over the parts' binary md5s: what a completed upload's ETag is built from.
    md5s: md5::Md5,
    /// The service's error behind an `io::Error` handed to the writer (shared: the
    /// writer may sit deep inside an encoder when the caller wants it).
    failed: Arc<Mutex<Option<Error>>>,
    done: bool,
}

impl<'a> Upload<'a> {
    /// Start an upload of `key` in parts of `part_size` bytes (the first
    /// [`PARTS_PER_STEP`]; later parts are larger).
    pub fn start(client: &'a Client, key: &str, part_size: usize) -> Result<Upload<'a>> {
        let id = client.multipart_start(key)?;
        Ok(Upload {
            client,
            key: key.to_string(),
            id,
            base_part: part_size,
            buf: Vec::with_capacity(part_size),
            etags: Vec::new(),
            sent: 0,
            md5s: md5::Md5::new(),
            failed: Arc::default(),
            done: false,
        })
    }

    fn part_size(&self) -> usize {
        let step = (self.etags.len() as u32 / PARTS_PER_STEP).min(4);
        self.base_part << step
    }

    fn send_part(&mut self) -> Result<()> {
        let n = self.etags.len() as u32 + 1;
        if n > MAX_PARTS {
            return Err(Error::Protocol {
                method: "PUT",
                object: self.client.object(&self.key),
                reason: format!("more than {MAX_PARTS} parts: the object is too large"),
            });
        }
        let etag = self
            .client
            .multipart_part(&self.key, &self.id, n, &self.buf)?;
        self.md5s.update(md5::Md5::digest(&self.buf));
        self.etags.push(etag);
        self.sent += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Where the error that makes a write fail is kept.
    pub fn failure(&self) -> Arc<Mutex<Option<Error>>> {
        self.failed.clone()
    }

    fn failed(&self) -> bool {
        self.failed.lock().is_ok_and(|f| f.is_some())
    }

    /// Send the last part and complete the upload. The service's ETag of the whole
    /// (md5 of the parts' md5s, `-<parts>`) is checked where it is computed so (not
    /// under SSE-KMS), and the size by HEAD.
    pub fn finish(mut self) -> Result<Head> {
        if let Some(e) = self.failed.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        // An empty object is one empty part; otherwise no empty last part.
        if !self.buf.is_empty() || self.etags.is_empty() {
            self.send_part()?;
        }
        let total = self.sent;
        let head = self
            .client
            .multipart_complete(&self.key, &self.id, &self.etags)?;
        self.done = true;
        let want = format!(
            "{}-{}",
            crate::digest::hex(&self.md5s.clone().finalize()),
            self.etags.len()
        );
        let kms = matches!(self.client.cfg.sse, Some(super::Sse::Kms { .. }));
        if let Some(got) = head.etag.as_deref().filter(|_| !kms) {
            if got.contains('-') && got != want {
                return Err(self.protocol(format!(
                    "the completed upload's ETag is {got}, the parts sent make {want}"
                )));
            }
        }
        let stored = self
            .client
            .head(&self.key)?
            .ok_or_else(|| self.protocol("missing right after its upload completed".into()))?;
        if stored.size != total {
            return Err(self.protocol(format!(
                "the service holds {} bytes, {total} were sent",
                stored.size
            )));
        }
        Ok(stored)
    }

    fn protocol(&self, reason: String) -> Error {
        Error::Protocol {
            method: "POST",
            object: self.client.object(&self.key),
            reason,
        }
    }
}

impl Write for Upload<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed() {
            return Err(io::Error::other("the upload failed already"));
        }
        let room = self.part_size() - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part_size() {
            if let Err(e) = self.send_part() {
                let msg = e.to_string();
                if let Ok(mut f) = self.failed.lock() {
                    *f = Some(e);
                }
                return Err(io::Error::other(msg));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.client.multipart_abort(&self.key, &self.id) {
                log::warn!(
                    "{e}: the incomplete upload stays until the bucket's lifecycle rule removes it"
                );
            }
        }
    }
}
