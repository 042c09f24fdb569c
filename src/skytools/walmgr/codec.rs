//! Compression of stored files and the checksums recorded for them. The checksum is
//! always of the uncompressed bytes (what PostgreSQL handed us and gets back), plus one
//! of the stored bytes so `verify` can tell storage rot from a bad decompressor
//! (both computed with `crate::digest`). zstd frames also carry their own content
//! checksum (XXH64), as gzip carries CRC-32: see [`Compression::checks_content`].

use std::borrow::Cow;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// `none|gzip|zstd`, and Skytools' `0`/`1` (its rsync -z switch).
    pub fn parse(v: &str) -> Option<Compression> {
        match v.trim().to_ascii_lowercase().as_str() {
            "none" | "0" | "no" | "off" => Some(Compression::None),
            "gzip" | "gz" | "1" => Some(Compression::Gzip),
            "zstd" | "zst" => Some(Compression::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// File name suffix of a stored file.
    pub fn ext(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// pgBackRest's defaults, so the two compare at equal settings.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        }
    }

    pub fn level_range(self) -> (i32, i32) {
        match self {
            Compression::None => (0, 0),
            Compression::Gzip => (1, 9),
            Compression::Zstd => (1, 19),
        }
    }

    /// Compress a whole buffer (a WAL segment is at most 1 GiB and usually 16 MiB);
    /// `none` borrows it rather than copying 16 MiB. zstd runs on `threads` worker
    /// threads when above 1 (it cuts the input into jobs of a few window sizes; the
    /// output is the same for any number of workers and within a fraction of a percent
    /// of single-threaded); gzip ignores it.
    pub fn compress(self, level: i32, threads: u32, data: &[u8]) -> io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Owned(match self {
            Compression::None => return Ok(Cow::Borrowed(data)),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::new(level as u32),
                );
                e.write_all(data)?;
                e.finish()?
            }
            Compression::Zstd => {
                let mut z = zstd::bulk::Compressor::new(level)?;
                // The frame carries an XXH64 of its content, checked by every decoder.
                z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                if threads > 1 {
                    z.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(threads))?;
                    z.set_parameter(zstd::zstd_safe::CParameter::JobSize(zstd_job(level)))?;
                }
                z.compress(data)?
            }
        }))
    }

    /// Decompress a whole stored file whose uncompressed size is known.
    pub fn decompress(self, stored: &[u8], size: u64) -> io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Owned(match self {
            Compression::None => return Ok(Cow::Borrowed(stored)),
            Compression::Gzip => {
                let mut out = Vec::with_capacity(size as usize);
                flate2::read::GzDecoder::new(stored).read_to_end(&mut out)?;
                out
            }
            Compression::Zstd => zstd::bulk::decompress(stored, size as usize)?,
        }))
    }

    /// A writer that compresses into `out`; `finish` returns `out`. zstd on `threads`
    /// workers above 1: a worker takes each job as soon as its input is written, so the
    /// writer goes on reading and hashing while earlier input is compressed.
    pub fn encoder<W: Write>(self, level: i32, threads: u32, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::None(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(level as u32),
            )),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, level)?;
                e.include_checksum(true)?;
                if threads > 1 {
                    e.multithread(threads)?;
                    e.set_parameter(zstd::zstd_safe::CParameter::JobSize(zstd_job(level)))?;
                }
                Encoder::Zstd(e)
            }
        })
    }

    /// Does a decoder of these stored bytes (their start is enough) check the content
    /// it produces? gzip: always (CRC-32 and size in the trailer); zstd: when the frame
    /// header has the content-checksum flag (walmgr's frames do since it was set; older
    /// ones do not).
    pub fn checks_content(self, stored_head: &[u8]) -> bool {
        match self {
            Compression::None => false,
            Compression::Gzip => true,
            Compression::Zstd => {
                stored_head.len() >= 5
                    && stored_head[..4] == [0x28, 0xb5, 0x2f, 0xfd]
                    && stored_head[4] & 0x04 != 0
            }
        }
    }

    /// A reader of the uncompressed bytes of `input`.
    pub fn decoder<'a, R: Read + 'a>(self, input: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(input),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        })
    }
}

/// The input each zstd worker takes at a time (0: zstd's choice, four windows). At level
/// 3 that is 8 MiB: a 16 MiB segment was two jobs, the first starting only once half of
/// it was read, and the two cores stayed half idle. Up to level 7 zstd's window is
/// 2 MiB, and 2 MiB jobs cost almost nothing in size (one pgbench segment on two
/// workers, level 3: 40 -> 35 ms per push, 0.16% larger; levels 5-7: 77-94 -> 59-73 ms,
/// 0.1-0.3% larger). From level 8 the window is larger and a segment's long-distance
/// matches are lost across 2 MiB jobs (level 9: 41% larger): zstd's own size there.
fn zstd_job(level: i32) -> u32 {
    if level <= 7 {
        2 << 20
    } else {
        0
    }
}

pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_codec() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for threads in [1, 2] {
                let z = c.compress(c.default_level(), threads, &data).unwrap();
                let mut back = Vec::new();
                c.decoder(&z[..]).unwrap().read_to_end(&mut back).unwrap();
                assert_eq!(back, data, "{c:?} on {threads} thread(s)");
                assert_eq!(c.decompress(&z, data.len() as u64).unwrap(), &data[..]);
            }
            let mut enc = c.encoder(c.default_level(), 1, Vec::new()).unwrap();
            enc.write_all(&data).unwrap();
            let z2 = enc.finish().unwrap();
            let mut back = Vec::new();
            c.decoder(&z2[..]).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{c:?} stream");
        }
    }

    fn zstd_refuses(stored: &[u8]) -> bool {
        let mut out = Vec::new();
        Compression::Zstd
            .decoder(stored)
            .unwrap()
            .read_to_end(&mut out)
            .is_err()
    }

    #[test]
    fn zstd_frames_carry_a_content_checksum_that_is_checked() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        for threads in [1, 2] {
            let z = Compression::Zstd.compress(3, threads, &data).unwrap();
            assert!(Compression::Zstd.checks_content(&z), "{threads} thread(s)");
        }
        let mut enc = Compression::Zstd.encoder(3, 2, Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let z = enc.finish().unwrap();
        assert!(Compression::Zstd.checks_content(&z), "stream");
        // A frame without the flag (as written before it was set) does not count.
        let plain = zstd::bulk::compress(&data, 3).unwrap();
        assert!(!Compression::Zstd.checks_content(&plain));
        assert!(Compression::Gzip.checks_content(b""));
        assert!(!Compression::None.checks_content(&data));
        // The last 4 bytes are the checksum: flipping one fails the decoder.
        let mut bad = z.clone();
        let n = bad.len();
        bad[n - 2] ^= 0x10;
        assert!(zstd_refuses(&bad));
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let z = Compression::Zstd.compress(3, 1, &[7u8; 100_000]).unwrap();
        let mut bad = z.to_vec();
        bad.truncate(z.len() / 2);
        assert!(zstd_refuses(&bad));
    }
}
