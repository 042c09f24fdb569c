//! Filesystems (statvfs of every mounted one) and block-device I/O rates.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::sample::{Sampling, Summary};
use super::{parse_err, read, InfoError};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Filesystem {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Free to an unprivileged user (what `df` calls Avail).
    pub available_bytes: u64,
    /// used / (used + available), as `df` rounds it, in percent.
    pub percent: f64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// Every mounted filesystem with blocks (pseudo filesystems such as proc and cgroup have
/// none and are left out), each mount point once.
// statvfs' counts are u64 here but narrower on some 32-bit targets, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub fn disk() -> Result<Vec<Filesystem>, InfoError> {
    const P: &str = "/proc/self/mounts";
    let mounts = read(P)?;
    let mut out: Vec<Filesystem> = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            return Err(parse_err(P, format!("short line {line:?}")));
        }
        let mountpoint = unescape_mount(f[1]);
        if out.iter().any(|m| m.mountpoint == mountpoint) {
            continue;
        }
        // A mount we may not stat (another user's FUSE mount, a dead NFS server) is not
        // an error of the whole item: it is simply not listed.
        let Ok(st) = nix::sys::statvfs::statvfs(Path::new(&mountpoint)) else {
            continue;
        };
        if st.blocks() == 0 {
            continue;
        }
        let frag = st.fragment_size() as u64;
        let total = st.blocks() as u64 * frag;
        let free = st.blocks_free() as u64 * frag;
        let avail = st.blocks_available() as u64 * frag;
        let used = total.saturating_sub(free);
        let percent = if used + avail == 0 {
            0.0
        } else {
            (used as f64 * 100.0 / (used + avail) as f64 * 10.0).round() / 10.0
        };
        out.push(Filesystem {
            device: unescape_mount(f[0]),
            mountpoint,
            fstype: f[2].to_string(),
            total_bytes: total,
            used_bytes: used,
            available_bytes: avail,
            percent,
            inodes_total: st.files() as u64,
            inodes_free: st.files_free() as u64,
        });
    }
    Ok(out)
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes (\040).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Block-device throughput over the sampling window, summed over the physical disks
/// (those in /sys/block with a `device` link: not loop, ram, zram or device-mapper
/// devices, which would count the same I/O twice).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Iostat {
    pub devices: Vec<String>,
    /// Keys: read_bytes_per_s, write_bytes_per_s, reads_per_s, writes_per_s,
    /// busy_percent (time with I/O in flight, of the busiest disk).
    #[serde(flatten)]
    pub summary: Summary,
}

pub fn iostat(sampling: &Sampling) -> Result<Iostat, InfoError> {
    let mut probe = IostatProbe::new()?;
    let summary = super::sample::run(&mut [&mut probe], sampling)
        .pop()
        .expect("one probe, one result")?;
    Ok(probe.finish(summary))
}

#[derive(Debug, Clone, Copy, Default)]
struct DiskCounters {
    reads: u64,
    read_sectors: u64,
    writes: u64,
    write_sectors: u64,
    io_ms: u64,
}

pub(super) struct IostatProbe {
    devices: Vec<String>,
    last: Option<(std::time::Instant, BTreeMap<String, DiskCounters>)>,
}

impl IostatProbe {
    pub(super) fn new() -> Result<IostatProbe, InfoError> {
        const B: &str = "/sys/block";
        let mut devices: Vec<String> = std::fs::read_dir(B)
            .map_err(|error| InfoError::Read {
                path: B.into(),
                error,
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("device").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        devices.sort();
        Ok(IostatProbe {
            devices,
            last: None,
        })
    }

    pub(super) fn finish(self, summary: Summary) -> Iostat {
        Iostat {
            devices: self.devices,
            summary,
        }
    }

    fn counters(&self) -> Result<BTreeMap<String, DiskCounters>, InfoError> {
        const P: &str = "/proc/diskstats";
        let text = read(P)?;
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 13 || !self.devices.iter().any(|d| d == f[2]) {
                continue;
            }
            let n = |i: usize| -> Result<u64, InfoError> {
                f[i].parse()
                    .map_err(|_| parse_err(P, format!("field {} of {:?}", i + 1, line)))
            };
            out.insert(
                f[2].to_string(),
                DiskCounters {
                    reads: n(3)?,
                    read_sectors: n(5)?,
                    writes: n(7)?,
                    write_sectors: n(9)?,
                    io_ms: n(12)?,
                },
            );
        }
        Ok(out)
    }
}

impl super::sample::Probe for IostatProbe {
    fn read(&mut self) -> Result<Option<BTreeMap<&'static str, f64>>, InfoError> {
        let now = std::time::Instant::now();
        let cur = self.counters()?;
        let prev = self.last.replace((now, cur.clone()));
        let Some((then, prev)) = prev else {
            return Ok(None);
        };
        let secs = now.duration_since(then).as_secs_f64().max(1e-6);
        let mut sum = DiskCounters::default();
        let mut busiest = 0u64;
        for (name, c) in &cur {
            let p = prev.get(name).copied().unwrap_or(*c);
            sum.reads += c.reads.saturating_sub(p.reads);
            sum.read_sectors += c.read_sectors.saturating_sub(p.read_sectors);
            sum.writes += c.writes.saturating_sub(p.writes);
            sum.write_sectors += c.write_sectors.saturating_sub(p.write_sectors);
            busiest = busiest.max(c.io_ms.saturating_sub(p.io_ms));
        }
        // diskstats counts 512-byte sectors whatever the device's own sector size.
        Ok(Some(BTreeMap::from([
            ("read_bytes_per_s", sum.read_sectors as f64 * 512.0 / secs),
            ("write_bytes_per_s", sum.write_sectors as f64 * 512.0 / secs),
            ("reads_per_s", sum.reads as f64 / secs),
            ("writes_per_s", sum.writes as f64 / secs),
            ("busy_percent", (busiest as f64 / 10.0 / secs).min(100.0)),
        ])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_filesystem_is_listed_with_consistent_sizes() {
        let d = disk().unwrap();
        let root = d
            .iter()
            .find(|f| f.mountpoint == "/")
            .expect("/ is mounted");
        assert!(root.total_bytes > 0);
        assert!(root.used_bytes <= root.total_bytes);
        assert!(root.available_bytes <= root.total_bytes);
        assert!((0.0..=100.0).contains(&root.percent));
        assert!(d.iter().all(|f| f.fstype != "proc" && f.fstype != "sysfs"));
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }

    #[test]
    fn iostat_rates_are_non_negative() {
        let s = Sampling::new(
            std::time::Duration::from_millis(300),
            std::time::Duration::from_millis(100),
        );
        let io = iostat(&s).unwrap();
        assert!(io.summary.samples >= 2, "{io:?}");
        for (k, v) in &io.summary.average {
            assert!(*v >= 0.0, "{k} = {v}");
            assert!(io.summary.minimum[k] <= *v + 1e-9 && *v <= io.summary.maximum[k] + 1e-9);
        }
        assert!(io.summary.average.contains_key("write_bytes_per_s"));
    }
}
