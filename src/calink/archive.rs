//! The `.tar.gz`, written as it is collected: every member goes straight from memory
//! into tar and gzip and onto the disk, so the only disk space calink uses is the
//! archive's own (sos copies the whole tree to /tmp first, sos #873).
//!
//! The archive is written under a temporary name in the output directory, fsynced and
//! renamed (fsutil's durable-write rule): a full disk, a leak found by the obfuscation
//! scan or any other failure leaves nothing under the final name.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::obfuscate::{LeakScan, Tap};
use crate::fsutil::{self, EarlyWriteback, PathError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: disk full, no archive written: {error}")]
    DiskFull { path: String, error: io::Error },
    #[error(transparent)]
    Io(PathError),
    #[error("{path}: not written: the archive still holds the host's {}: {}", if .found.len() == 1 { "name or address" } else { "names or addresses" }, .found.join(", "))]
    Leak { path: String, found: Vec<String> },
}

/// Members are written under `<top>/`.
pub struct Archive<'a> {
    tar: tar::Builder<Tap<GzEncoder<EarlyWriteback<'a>>>>,
    top: String,
    mtime: u64,
}

impl Archive<'_> {
    /// The member name for `rel` (a path relative to the archive's top directory).
    pub fn name(&self, rel: &str) -> String {
        format!("{}/{}", self.top, rel.trim_start_matches('/'))
    }

    /// Add a regular file; returns its member name.
    pub fn add(
        &mut self,
        rel: &str,
        data: &[u8],
        mode: u32,
        mtime: Option<u64>,
    ) -> io::Result<String> {
        let name = self.name(rel);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode & 0o777);
        h.set_mtime(mtime.unwrap_or(self.mtime));
        h.set_size(data.len() as u64);
        self.tar.append_data(&mut h, &name, data)?;
        Ok(name)
    }

    /// Add a symbolic link (never followed: its target is stored as text).
    pub fn add_symlink(
        &mut self,
        rel: &str,
        target: &Path,
        mtime: Option<u64>,
    ) -> io::Result<String> {
        let name = self.name(rel);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_mtime(mtime.unwrap_or(self.mtime));
        h.set_size(0);
        self.tar.append_link(&mut h, &name, target)?;
        Ok(name)
    }
}

/// Write the archive at `path` with `fill`, durably; `scan`, when given, reads the
/// uncompressed stream and any host name or address it finds fails the write.
pub fn write(
    path: &Path,
    top: &str,
    mtime: u64,
    scan: Option<LeakScan>,
    fill: impl FnOnce(&mut Archive<'_>) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    let mut leaks: Vec<String> = Vec::new();
    let result = fsutil::write_atomic_with(path, 0o600, true, |file: &mut File| {
        let gz = GzEncoder::new(EarlyWriteback::new(file), Compression::default());
        let mut a = Archive {
            tar: tar::Builder::new(Tap { inner: gz, scan }),
            top: top.to_string(),
            mtime,
        };
        a.tar.mode(tar::HeaderMode::Complete);
        fill(&mut a)?;
        let tap = a.tar.into_inner()?;
        let mut w = tap.inner.finish()?;
        w.flush()?;
        if let Some(s) = tap.scan {
            leaks = s.finish().into_iter().collect();
            if !leaks.is_empty() {
                return Err(io::Error::other("leak"));
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(()),
        Err(_) if !leaks.is_empty() => Err(ArchiveError::Leak {
            path: path.display().to_string(),
            found: leaks,
        }),
        Err(e) if e.is_disk_full() => Err(ArchiveError::DiskFull {
            path: path.display().to_string(),
            error: e.source,
        }),
        Err(e) => Err(ArchiveError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn members_round_trip_and_a_failure_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.tar.gz");
        write(&p, "top", 1_700_000_000, None, |a| {
            a.add("/etc/x", b"hello", 0o644, Some(5))?;
            a.add_symlink("/etc/l", Path::new("../x"), None)?;
            Ok(())
        })
        .unwrap();
        let mut t = tar::Archive::new(flate2::read::GzDecoder::new(File::open(&p).unwrap()));
        let mut seen = Vec::new();
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((name, body, link));
        }
        assert_eq!(
            seen,
            [
                ("top/etc/x".to_string(), b"hello".to_vec(), None),
                ("top/etc/l".to_string(), vec![], Some("../x".to_string()))
            ]
        );
        let q = d.path().join("b.tar.gz");
        let e = write(&q, "top", 0, None, |_| Err(io::Error::other("boom"))).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(!q.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_leak_found_by_the_scan_leaves_nothing() {
        use crate::calink::obfuscate::{HostFacts, Kind, Obfuscator};
        let d = tempfile::tempdir().unwrap();
        let mut o = Obfuscator::load(&d.path().join("map/m.json")).unwrap();
        o.learn(&HostFacts {
            names: vec![(Kind::Host, "web1".into()), (Kind::Ipv4, "10.1.2.3".into())],
        });
        let p = d.path().join("a.tar.gz");
        let e = write(&p, "top", 0, Some(o.scanner()), |a| {
            a.add(
                "/etc/clean",
                o.apply_str("web1 at 10.1.2.3").as_bytes(),
                0o644,
                None,
            )?;
            a.add("/etc/web1.conf", b"x", 0o644, None)?;
            a.add("/etc/y", b"abc-10.1.2.3", 0o644, None)?;
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, ArchiveError::Leak { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("names or addresses: 10.1.2.3, web1"),
            "{e}"
        );
        assert!(!p.exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "only the map directory"
        );
    }
}
