//! SHA-256 as hostkit records it: lower-case hex, of whole buffers or of what streams
//! through a reader or writer (with the byte count), so every program that stores or
//! checks a checksum computes it the same way.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// XXH3-64 in hex, for checking bytes against accidental change where a SHA-256 of
/// them is recorded too and checked elsewhere (walmgr's delivery of a segment).
pub struct Xxh3(twox_hash::XxHash3_64);

impl Xxh3 {
    pub fn new() -> Self {
        Xxh3(twox_hash::XxHash3_64::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        std::hash::Hasher::write(&mut self.0, data);
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", std::hash::Hasher::finish(&self.0))
    }

    pub fn of(data: &[u8]) -> String {
        format!("{:016x}", twox_hash::XxHash3_64::oneshot(data))
    }
}

impl Default for Xxh3 {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts and hashes what passes through on the way to `inner`.
pub struct HashWriter<W> {
    pub inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// (sha256 hex, byte count, inner writer)
    pub fn finish(self) -> (String, u64, W) {
        (hex(&self.hasher.finalize()), self.bytes, self.inner)
    }

    /// The wrapped writer, bypassing the hash (for bytes hashed elsewhere).
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Counts and hashes what is read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// (sha256 hex, byte count)
    pub fn finish(self) -> (String, u64) {
        (hex(&self.hasher.finalize()), self.bytes)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_value() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (h, n, v) = w.finish();
        assert_eq!(
            (h.as_str(), n, v.as_slice()),
            (sha256_hex(b"abc").as_str(), 3, &b"abc"[..])
        );
    }

    #[test]
    fn reader_hashes_what_it_reads() {
        let mut r = HashReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.finish(), (sha256_hex(b"abc"), 3));
    }
}
