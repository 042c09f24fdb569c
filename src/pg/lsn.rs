//! A WAL position (PostgreSQL's `pg_lsn`): 64 bits, written `X/Y` (two hex numbers of
//! up to 8 digits, the high and low 32 bits), as the server prints and parses it.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: not an LSN (X/Y, hexadecimal)")]
pub struct LsnError(pub String);

impl Lsn {
    /// The WAL segment number holding this position, for `segment_size` bytes a segment.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

impl FromStr for Lsn {
    type Err = LsnError;

    /// The server's rule (pg_lsn_in): 1 to 8 hex digits, '/', 1 to 8 hex digits.
    fn from_str(s: &str) -> Result<Lsn, LsnError> {
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(h, 16).ok()
        };
        let (hi, lo) = s.split_once('/').ok_or_else(|| LsnError(s.to_string()))?;
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn((u64::from(hi) << 32) | u64::from(lo))),
            _ => Err(LsnError(s.to_string())),
        }
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Stored as the text PostgreSQL prints, so files stay readable and comparable with
/// what `pg_backup_stop()` and `backup_label` say.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip() {
        for s in ["0/0", "0/2000028", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let l: Lsn = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        // Lower case and leading zeros are accepted, printed as the server does.
        assert_eq!("0a/00ff".parse::<Lsn>().unwrap().to_string(), "A/FF");
    }

    #[test]
    fn bad_text_is_named() {
        for s in [
            "",
            "0",
            "/1",
            "1/",
            "1/2/3",
            "G/0",
            "123456789/0",
            " 0/1",
            "-1/0",
        ] {
            let e = s.parse::<Lsn>().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("{s:?}: not an LSN (X/Y, hexadecimal)")
            );
        }
    }

    #[test]
    fn order_is_wal_order_not_text_order() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        let c: Lsn = "0/9".parse().unwrap();
        let d: Lsn = "0/10".parse().unwrap();
        assert!(a < b && c < d && d < a);
        assert!("0/9" > "0/10", "which text comparison gets wrong");
        assert_eq!(b.segment(16 << 20), 256);
    }

    #[test]
    fn serde_as_text() {
        let l: Lsn = "0/2000138".parse().unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"0/2000138\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"0/2000138\"").unwrap(), l);
        assert!(serde_json::from_str::<Lsn>("\"x\"").is_err());
    }
}
