//! Facts about the live host, one function per CaLink item, each returning plain
//! serde-serialisable data. This is a library API: calink calls it, and so may any other
//! program that wants a host's load, memory or disks as values rather than text.
//!
//! Everything is read from /proc, /sys and statvfs(2) directly (no `ps`, `df` or
//! `iostat` child processes), so an item costs microseconds, except the sampled ones
//! (cpu, vmem, smem, iostat), which watch the host over a window; [`gather`] samples all
//! of those together so a run pays for one window, not four.

mod disk;
mod ps;
mod sample;
mod system;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use disk::{disk, iostat, Filesystem, Iostat};
pub use ps::{ps, Process};
pub use sample::{cpu, smem, vmem, Cpu, Sampling, Smem, Summary, Vmem};
pub use system::{fqdn, host, loadavg, os, uptime, version, Host, Loadavg, Os, Uptime, Version};

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("unknown info item {0:?} (known: uptime, loadavg, disk, ps, cpu, vmem, smem, iostat, host, os, version)")]
    UnknownItem(String),
}

pub(crate) fn read(path: impl AsRef<Path>) -> Result<String, InfoError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|error| InfoError::Read {
        path: path.to_path_buf(),
        error,
    })
}

pub(crate) fn parse_err(path: impl AsRef<Path>, reason: impl Into<String>) -> InfoError {
    InfoError::Parse {
        path: path.as_ref().to_path_buf(),
        reason: reason.into(),
    }
}

/// The items CaLink's `[info]` section can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Item {
    Uptime,
    Loadavg,
    Disk,
    Ps,
    Cpu,
    Vmem,
    Smem,
    Iostat,
    Host,
    Os,
    Version,
}

impl Item {
    pub const ALL: [Item; 11] = [
        Item::Uptime,
        Item::Loadavg,
        Item::Disk,
        Item::Ps,
        Item::Cpu,
        Item::Vmem,
        Item::Smem,
        Item::Iostat,
        Item::Host,
        Item::Os,
        Item::Version,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Item::Uptime => "uptime",
            Item::Loadavg => "loadavg",
            Item::Disk => "disk",
            Item::Ps => "ps",
            Item::Cpu => "cpu",
            Item::Vmem => "vmem",
            Item::Smem => "smem",
            Item::Iostat => "iostat",
            Item::Host => "host",
            Item::Os => "os",
            Item::Version => "version",
        }
    }

    /// True for the items watched over the sampling window.
    pub fn is_sampled(self) -> bool {
        matches!(self, Item::Cpu | Item::Vmem | Item::Smem | Item::Iostat)
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Item {
    type Err = InfoError;
    fn from_str(s: &str) -> Result<Item, InfoError> {
        Item::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_lowercase())
            .ok_or_else(|| InfoError::UnknownItem(s.to_string()))
    }
}

fn to_value<T: serde::Serialize>(v: Result<T, InfoError>) -> Result<serde_json::Value, InfoError> {
    // Our structs serialise infallibly (no maps with non-string keys, no NaN: serde_json
    // writes non-finite floats as null).
    v.map(|v| serde_json::to_value(v).expect("info data serialises"))
}

/// Every item in `items` (each once, in the order given) as JSON, the sampled ones
/// watched together over one `sampling` window.
pub fn gather(
    items: &[Item],
    sampling: &Sampling,
) -> Vec<(Item, Result<serde_json::Value, InfoError>)> {
    let mut wanted: Vec<Item> = Vec::new();
    for i in items {
        if !wanted.contains(i) {
            wanted.push(*i);
        }
    }
    let sampled: Vec<Item> = wanted.iter().copied().filter(|i| i.is_sampled()).collect();
    let mut sampled_results = sample::sample_items(&sampled, sampling);
    wanted
        .into_iter()
        .map(|item| {
            let v = match item {
                Item::Uptime => to_value(uptime()),
                Item::Loadavg => to_value(loadavg()),
                Item::Disk => to_value(disk()),
                Item::Ps => to_value(ps()),
                Item::Host => to_value(host()),
                Item::Os => to_value(os()),
                Item::Version => to_value(Ok(version())),
                Item::Cpu | Item::Vmem | Item::Smem | Item::Iostat => sampled_results
                    .remove(&item)
                    .expect("every sampled item has a result"),
            };
            (item, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_names_round_trip_and_unknown_is_named() {
        for i in Item::ALL {
            assert_eq!(i.name().parse::<Item>().unwrap(), i);
        }
        assert_eq!(" LoadAvg ".parse::<Item>().unwrap(), Item::Loadavg);
        let e = "loadavrg".parse::<Item>().unwrap_err().to_string();
        assert!(e.contains("\"loadavrg\""), "{e}");
    }

    #[test]
    fn gather_returns_every_item_once_in_order() {
        let s = Sampling::new(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_millis(100),
        );
        let items = [Item::Os, Item::Cpu, Item::Os, Item::Loadavg, Item::Vmem];
        let got = gather(&items, &s);
        let names: Vec<_> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(names, [Item::Os, Item::Cpu, Item::Loadavg, Item::Vmem]);
        for (i, v) in got {
            assert!(v.is_ok(), "{i}: {v:?}");
        }
    }
}
