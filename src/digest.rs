//! SHA-256 as hostkit records it: lower-case hex, of whole buffers or of what streams
//! through a reader or writer (with the byte count), so every program that stores or
//! checks a checksum computes it the same way.

use std::io::{self, Read, Write};
use std::sync::mpsc;

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

/// The checksums a [`HashReader`] or [`HashWriter`] can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha256,
    Xxh3,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Xxh3 => "xxh3",
        }
    }
}

enum AnyHasher {
    Sha256(Sha256),
    Xxh3(Box<Xxh3>),
}

impl AnyHasher {
    fn new(algo: Algo) -> Self {
        match algo {
            Algo::Sha256 => AnyHasher::Sha256(Sha256::new()),
            Algo::Xxh3 => AnyHasher::Xxh3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            AnyHasher::Sha256(h) => h.update(data),
            AnyHasher::Xxh3(x) => x.update(data),
        }
    }

    fn hex(self) -> String {
        match self {
            AnyHasher::Sha256(h) => hex(&h.finalize()),
            AnyHasher::Xxh3(x) => x.hex(),
        }
    }
}

/// Counts and hashes what passes through on the way to `inner`.
pub struct HashWriter<W> {
    pub inner: W,
    hasher: AnyHasher,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    /// SHA-256.
    pub fn new(inner: W) -> Self {
        Self::with(Algo::Sha256, inner)
    }

    pub fn with(algo: Algo, inner: W) -> Self {
        HashWriter {
            inner,
            hasher: AnyHasher::new(algo),
            bytes: 0,
        }
    }

    /// (hex of the checksum, byte count, inner writer)
    pub fn finish(self) -> (String, u64, W) {
        (self.hasher.hex(), self.bytes, self.inner)
    }

    /// The wrapped writer, bypassing the hash (for bytes hashed elsewhere).
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Counts and hashes what is read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: AnyHasher,
    bytes: u64,
}

impl<R: Read> HashReader<R> {
    /// SHA-256.
    pub fn new(inner: R) -> Self {
        Self::with(Algo::Sha256, inner)
    }

    pub fn with(algo: Algo, inner: R) -> Self {
        HashReader {
            inner,
            hasher: AnyHasher::new(algo),
            bytes: 0,
        }
    }

    /// (hex of the checksum, byte count)
    pub fn finish(self) -> (String, u64) {
        (self.hasher.hex(), self.bytes)
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

/// What [`copy_hashing_aside`] computed of the bytes it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    pub sha256: String,
    pub bytes: u64,
    pub xxh3: Option<String>,
}

impl Sums {
    pub fn of(data: &[u8], xxh3: bool) -> Sums {
        Sums {
            sha256: sha256_hex(data),
            bytes: data.len() as u64,
            xxh3: xxh3.then(|| Xxh3::of(data)),
        }
    }
}

/// Move a stream into `out` chunk by chunk while a second thread hashes each chunk
/// already written (SHA-256, and XXH3-64 when asked): the hashing of a 16 MiB WAL
/// segment costs as much CPU as reading and writing it, and on its own core it no
/// longer adds to the time. `buf` holds the first `first` bytes, already read; `read`
/// fills a buffer of `buf`'s size with the next ones (0 at the end). Buffers of that
/// size up to about [`ASIDE_BYTES`] are in flight. `finish` runs on `out` after the last write
/// while the hasher catches up (an fsync, say). An error of `read`, `out` or `finish`
/// is returned as it came.
pub fn copy_hashing_aside<W: Write>(
    buf: Vec<u8>,
    first: usize,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    out: &mut W,
    finish: impl FnOnce(&mut W) -> io::Result<()>,
    xxh3: bool,
) -> io::Result<Sums> {
    let size = buf.len();
    let buffers = (ASIDE_BYTES / size.max(1)).clamp(4, 16);
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(buffers);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut sha = Sha256::new();
            let mut x = xxh3.then(Xxh3::new);
            let mut bytes = 0u64;
            for (b, k) in full_rx {
                sha.update(&b[..k]);
                if let Some(x) = &mut x {
                    x.update(&b[..k]);
                }
                bytes += k as u64;
                // The mover may have stopped on an error: then nobody wants it back.
                let _ = free_tx.send(b);
            }
            Sums {
                sha256: hex(&sha.finalize()),
                bytes,
                xxh3: x.map(|x| x.hex()),
            }
        });
        let moved = (|| {
            let (mut buf, mut k, mut made) = (buf, first, 1);
            while k > 0 {
                out.write_all(&buf[..k])?;
                full_tx
                    .send((buf, k))
                    .map_err(|_| io::Error::other("hashing thread ended early"))?;
                buf = match free_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if made < buffers => {
                        made += 1;
                        vec![0u8; size]
                    }
                    Err(_) => free_rx
                        .recv()
                        .map_err(|_| io::Error::other("hashing thread ended early"))?,
                };
                k = read(&mut buf)?;
            }
            finish(out)
        })();
        drop(full_tx);
        let sums = hasher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        moved.map(|()| sums)
    })
}

/// Bytes [`copy_hashing_aside`] keeps in flight (4 to 16 buffers): enough that neither
/// thread waits for the other while their speeds wobble, and little for the hasher to
/// catch up on after the last write. With 256 KiB buffers a 16 MiB push took 1.05-1.26x
/// the time of `dd conv=fsync`, with 1 MiB ones 1.14-1.35x (BENCHMARKS.md).
pub const ASIDE_BYTES: usize = 2 << 20;

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
    fn hashing_aside_sums_what_it_moves() {
        let all: Vec<u8> = (0..5_000_003u32).map(|i| (i * 7 / 3) as u8).collect();
        for (len, chunk) in [(10_007, 1usize), (all.len(), 4096), (all.len(), 1 << 20)] {
            let data = &all[..len];
            let mut src = data;
            let mut buf = vec![0u8; chunk];
            let first = src.read(&mut buf).unwrap();
            let mut out = Vec::new();
            let sums =
                copy_hashing_aside(buf, first, |b| src.read(b), &mut out, |_| Ok(()), chunk > 1)
                    .unwrap();
            assert_eq!(out, data);
            assert_eq!(sums, Sums::of(data, chunk > 1), "chunk {chunk}");
        }
        // Nothing at all.
        let nothing = |_: &mut Vec<u8>| Ok(());
        let sums = copy_hashing_aside(vec![0; 8], 0, |_| Ok(0), &mut Vec::new(), nothing, true);
        assert_eq!(sums.unwrap(), Sums::of(b"", true));
        let mut finished = Vec::new();
        let mut out = vec![9u8];
        copy_hashing_aside(
            vec![0; 8],
            0,
            |_| Ok(0),
            &mut out,
            |o| {
                finished.append(o);
                Ok(())
            },
            false,
        )
        .unwrap();
        assert_eq!(finished, [9]);
    }

    #[test]
    fn hashing_aside_returns_the_first_error() {
        let mut reads = 0;
        let e = copy_hashing_aside(
            vec![1; 64],
            64,
            |_| {
                reads += 1;
                match reads {
                    1..=5 => Ok(64),
                    _ => Err(io::Error::other("disk went away")),
                }
            },
            &mut Vec::new(),
            |_| panic!("finish after a failed read"),
            false,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "disk went away");
        // A destination with room for one chunk.
        let mut room = [0u8; 64];
        let mut out = &mut room[..];
        let e = copy_hashing_aside(vec![1; 64], 64, |_| Ok(64), &mut out, |_| Ok(()), false)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }

    #[test]
    fn reader_hashes_what_it_reads() {
        let mut r = HashReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.finish(), (sha256_hex(b"abc"), 3));
        let mut r = HashReader::with(Algo::Xxh3, &b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), (Xxh3::of(b"abc"), 3));
    }
}
