//! WAL file names as PostgreSQL hands them to archive_command / restore_command, and the
//! order that decides what is older (timeline ignored, as pg_archivecleanup does: a
//! segment position is the same stretch of WAL whatever timeline it was written on).

use super::error::{Result, WalmgrError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Segment,
    Partial,
    /// Backup history file `<segment>.<offset>.backup`.
    Backup,
    History,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub kind: Kind,
    pub tli: u32,
    /// (log, seg) from the name; (0, 0) for history files.
    pub log: u32,
    pub seg: u32,
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn hex32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or(0)
}

impl WalName {
    pub fn parse(name: &str) -> Result<WalName> {
        let bad = || WalmgrError::BadName(name.to_string());
        let seg_part = |s: &str, kind| {
            if !is_hex(s, 24) {
                return Err(bad());
            }
            Ok(WalName {
                name: name.to_string(),
                kind,
                tli: hex32(&s[0..8]),
                log: hex32(&s[8..16]),
                seg: hex32(&s[16..24]),
            })
        };
        if let Some(tli) = name.strip_suffix(".history") {
            if !is_hex(tli, 8) {
                return Err(bad());
            }
            return Ok(WalName {
                name: name.to_string(),
                kind: Kind::History,
                tli: hex32(tli),
                log: 0,
                seg: 0,
            });
        }
        if let Some(s) = name.strip_suffix(".partial") {
            return seg_part(s, Kind::Partial);
        }
        if let Some(s) = name.strip_suffix(".backup") {
            let (seg, off) = s.split_once('.').ok_or_else(bad)?;
            if !is_hex(off, 8) {
                return Err(bad());
            }
            return seg_part(seg, Kind::Backup);
        }
        seg_part(name, Kind::Segment)
    }

    /// Position in the WAL stream, for "older than" comparisons.
    pub fn position(&self) -> (u32, u32) {
        (self.log, self.seg)
    }

    /// Segment number for a given segment size (pageaddr / seg_size).
    pub fn segno(&self, seg_size: u64) -> u64 {
        let per_log = 0x1_0000_0000u64 / seg_size;
        self.log as u64 * per_log + self.seg as u64
    }

    /// Where this segment starts in the WAL stream, or None when the name cannot be a
    /// segment of that size (its segment field too large).
    pub fn start_address(&self, seg_size: u64) -> Option<u64> {
        let per_log = 0x1_0000_0000u64.checked_div(seg_size)?;
        if self.seg as u64 >= per_log {
            return None;
        }
        self.segno(seg_size).checked_mul(seg_size)
    }

    /// True for names whose content is a whole WAL segment with a long page header.
    pub fn is_segment(&self) -> bool {
        self.kind == Kind::Segment
    }

    /// Name of the segment at `segno` on timeline `tli`.
    pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
        let per_log = 0x1_0000_0000u64 / seg_size;
        format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_postgres_hands_us() {
        let s = WalName::parse("00000001000000020000003F").unwrap();
        assert_eq!((s.kind, s.tli, s.log, s.seg), (Kind::Segment, 1, 2, 0x3F));
        assert_eq!(s.segno(16 << 20), 2 * 256 + 0x3F);
        assert_eq!(WalName::segment_name(1, 2 * 256 + 0x3F, 16 << 20), s.name);
        assert_eq!(s.start_address(16 << 20), Some((2 << 32) + (0x3F << 24)));
        // 16 MiB segments number 0..=0xFF within a log file.
        let too_far = WalName::parse("000000010000000000000100").unwrap();
        assert_eq!(too_far.start_address(16 << 20), None);
        assert_eq!(s.start_address(0), None);
        assert_eq!(
            WalName::parse("00000002.history").unwrap().kind,
            Kind::History
        );
        assert_eq!(
            WalName::parse("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind,
            Kind::Backup
        );
        assert_eq!(
            WalName::parse("000000010000000000000005.partial")
                .unwrap()
                .position(),
            (0, 5)
        );
        for bad in [
            "",
            "RECOVERYXLOG",
            "0000000100000000000000ab",
            "00000001000000000000000",
            "../00000001000000000000000A",
            "00000001000000000000000A.gz",
            "0000001.history",
            "000000010000000000000002.0000028.backup",
        ] {
            assert!(WalName::parse(bad).is_err(), "{bad}");
        }
    }
}
