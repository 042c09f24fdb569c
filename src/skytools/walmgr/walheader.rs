//! The long page header at the start of every WAL segment, read to make sure a file
//! handed to xarchive belongs to this cluster and is the segment its name says.
//! Layout (XLogLongPageHeaderData, little-endian on every platform PostgreSQL
//! archives from here): magic u16 @0, info u16 @2, tli u32 @4, pageaddr u64 @8,
//! rem_len u32 @16, sysid u64 @24, seg_size u32 @32, blcksz u32 @36.

use std::path::Path;

use super::error::{Result, WalmgrError};
use super::walname::WalName;

const XLP_LONG_HEADER: u16 = 0x0002;
const HEADER_LEN: usize = 40;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u16,
    pub sysid: u64,
    pub seg_size: u32,
    pub pageaddr: u64,
}

pub fn parse(data: &[u8]) -> std::result::Result<Header, String> {
    if data.len() < HEADER_LEN {
        return Err(format!("{} bytes: too short for a WAL segment", data.len()));
    }
    if u16_at(data, 2) & XLP_LONG_HEADER == 0 {
        return Err("no long page header: not the start of a WAL segment".into());
    }
    let seg_size = u32_at(data, 32);
    if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
        return Err(format!(
            "segment size {seg_size} in its header is not valid"
        ));
    }
    Ok(Header {
        magic: u16_at(data, 0),
        sysid: u64_at(data, 24),
        seg_size,
        pageaddr: u64_at(data, 8),
    })
}

/// The cluster's system identifier: the first field of global/pg_control.
pub fn cluster_sysid(data_dir: &Path) -> Result<u64> {
    let p = data_dir.join("global/pg_control");
    let b = std::fs::read(&p).map_err(|e| crate::fsutil::PathError::new("read", &p, e))?;
    if b.len() < 8 {
        return Err(WalmgrError::BadWal {
            path: p,
            reason: "too short for pg_control".into(),
        });
    }
    Ok(u64_at(&b, 0))
}

/// Check a segment against its name and (when given) the cluster's system identifier.
pub fn check(path: &Path, data: &[u8], name: &WalName, sysid: Option<u64>) -> Result<Header> {
    check_start(path, data, data.len() as u64, name, sysid)
}

/// [`check`] from the segment's first bytes (at least the long header) and its length.
pub fn check_start(
    path: &Path,
    start: &[u8],
    len: u64,
    name: &WalName,
    sysid: Option<u64>,
) -> Result<Header> {
    let bad = |reason: String| WalmgrError::BadWal {
        path: path.to_path_buf(),
        reason,
    };
    let h = parse(start).map_err(bad)?;
    if len != h.seg_size as u64 {
        return Err(bad(format!(
            "{len} bytes but its header says segments are {} bytes (partial copy?)",
            h.seg_size
        )));
    }
    let want = name.start_address(h.seg_size as u64).ok_or_else(|| {
        bad(format!(
            "{} is not a segment name for {}-byte segments",
            name.name, h.seg_size
        ))
    })?;
    if h.pageaddr != want {
        return Err(bad(format!(
            "header address {:X}/{:X} is not where segment {} starts ({:X}/{:X})",
            h.pageaddr >> 32,
            h.pageaddr as u32,
            name.name,
            want >> 32,
            want as u32
        )));
    }
    if let Some(id) = sysid {
        if h.sysid != id {
            return Err(bad(format!(
                "belongs to database system {} but this cluster is {id}; not archived",
                h.sysid
            )));
        }
    }
    Ok(h)
}

#[cfg(test)]
pub fn fake_segment(sysid: u64, name: &WalName, seg_size: u32) -> Vec<u8> {
    let mut b = vec![0u8; seg_size as usize];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    b[4..8].copy_from_slice(&name.tli.to_le_bytes());
    let addr = name.segno(seg_size as u64) * seg_size as u64;
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&seg_size.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        let n = WalName::parse("000000010000000100000002").unwrap();
        let seg = fake_segment(42, &n, 1 << 20);
        let p = Path::new("pg_wal/000000010000000100000002");
        assert_eq!(check(p, &seg, &n, Some(42)).unwrap().seg_size, 1 << 20);
        let e = check(p, &seg, &n, Some(43)).unwrap_err().to_string();
        assert!(
            e.contains("database system 42") && e.contains(p.to_str().unwrap()),
            "{e}"
        );
        let other = WalName::parse("000000010000000100000003").unwrap();
        assert!(check(p, &seg, &other, None).is_err());
        assert!(check(p, &seg[..4096], &n, None).is_err());
        assert!(check(p, &[0u8; 8192], &n, None).is_err());
    }
}
