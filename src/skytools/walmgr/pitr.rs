//! Point-in-time recovery: `restore --target-time | --target-lsn | --target-xid |
//! --target-name` checked here, written as PostgreSQL's `recovery_target_*` settings,
//! and used to choose the backup set to restore from.
//!
//! Which set: the newest one that ends before the target. A set ends at its stop LSN
//! (backup.json), and, for a time, at `finished_at` (backup.json: when walmgr committed
//! the set, just after `pg_backup_stop`, so never earlier than the real end; written to
//! the second, so taken as the next second). For an xid
//! or a restore point's name nothing in the store says where it lies: the newest set is
//! used, and walmgr says so (name an older set if PostgreSQL answers that the target is
//! before the consistent recovery point).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::backupset::BackupInfo;
use super::error::{Result, WalmgrError};
use crate::pg::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// As given (passed through to PostgreSQL) and the instant it names, when it has a
    /// time zone walmgr can read.
    Time {
        text: String,
        at: Option<SystemTime>,
    },
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Pause,
    Promote,
    Shutdown,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Promote => "promote",
            Action::Shutdown => "shutdown",
        }
    }
}

/// What `restore` is asked to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pitr {
    pub target: Option<Target>,
    pub exclusive: bool,
    pub timeline: Option<String>,
    pub action: Option<Action>,
}

fn usage(m: String) -> WalmgrError {
    WalmgrError::Usage(format!("restore: {m}"))
}

/// The five target options, as the command line gave them.
#[derive(Debug, Default, Clone)]
pub struct TargetArgs {
    pub time: Option<String>,
    pub lsn: Option<String>,
    pub xid: Option<String>,
    pub name: Option<String>,
    pub exclusive: bool,
    pub timeline: Option<String>,
    pub action: Option<Action>,
}

impl TargetArgs {
    pub fn any(&self) -> bool {
        self.time.is_some()
            || self.lsn.is_some()
            || self.xid.is_some()
            || self.name.is_some()
            || self.exclusive
            || self.timeline.is_some()
            || self.action.is_some()
    }

    /// Check every value; `None` when no target option was given.
    pub fn parse(&self) -> Result<Option<Pitr>> {
        if !self.any() {
            return Ok(None);
        }
        let target = match (&self.time, &self.lsn, &self.xid, &self.name) {
            (Some(t), None, None, None) => Some(Target::Time {
                text: t.clone(),
                at: parse_time(t)?,
            }),
            (None, Some(l), None, None) => Some(Target::Lsn(
                l.parse()
                    .map_err(|e: crate::pg::lsn::LsnError| usage(format!("--target-lsn: {e}")))?,
            )),
            (None, None, Some(x), None) => {
                let ok = !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit());
                match x.parse::<u64>() {
                    Ok(n) if ok => Some(Target::Xid(n)),
                    _ => {
                        return Err(usage(format!(
                            "--target-xid {x:?}: not a transaction id (decimal digits)"
                        )))
                    }
                }
            }
            (None, None, None, Some(n)) => {
                if n.is_empty() || n.len() > 63 {
                    return Err(usage(format!(
                        "--target-name {n:?}: a restore point name is 1 to 63 bytes"
                    )));
                }
                crate::pg::quote::conf_value(n)
                    .map_err(|e| usage(format!("--target-name: {e}")))?;
                Some(Target::Name(n.clone()))
            }
            (None, None, None, None) => None,
            _ => {
                return Err(usage(
                    "give one of --target-time, --target-lsn, --target-xid, --target-name".into(),
                ))
            }
        };
        if target.is_none() && (self.exclusive || self.action.is_some()) {
            return Err(usage(
                "--target-exclusive and --target-action need a --target-time, --target-lsn, \
                 --target-xid or --target-name"
                    .into(),
            ));
        }
        let timeline = match self.timeline.as_deref() {
            None => None,
            Some(t @ ("latest" | "current")) => Some(t.to_string()),
            Some(t) => match t.parse::<u32>() {
                Ok(n) if n > 0 && t.bytes().all(|b| b.is_ascii_digit()) => Some(n.to_string()),
                _ => {
                    return Err(usage(format!(
                        "--target-timeline {t:?}: 'latest', 'current' or a timeline number"
                    )))
                }
            },
        };
        Ok(Some(Pitr {
            target,
            exclusive: self.exclusive,
            timeline,
            action: self.action,
        }))
    }
}

/// PostgreSQL's timestamp input, the forms walmgr reads: `YYYY-MM-DD`, then optionally
/// `T` or a space and `HH:MM[:SS[.fraction]]`, then optionally a zone (`Z`, `UTC`,
/// `GMT`, `+HH`, `+HHMM`, `+HH:MM`, or `-`). Without a zone PostgreSQL reads the time in
/// its `timezone` setting, which walmgr cannot know: the value is passed through and the
/// instant is `None`. Anything else (zone names, `now`, `epoch`) is refused here.
pub fn parse_time(s: &str) -> Result<Option<SystemTime>> {
    let bad = |why: &str| {
        usage(format!(
            "--target-time {s:?}: {why} (expected YYYY-MM-DD[ HH:MM[:SS[.ffffff]]][+HH[:MM]|Z])"
        ))
    };
    let t = s.trim();
    let b = t.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = t.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad("no date"));
    }
    let (y, mo, d) = match (num(0, 4), num(5, 2), num(8, 2)) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err(bad("no date")),
    };
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return Err(bad("no such date"));
    }
    let mut i = 10;
    let (mut h, mut mi, mut sec, mut nanos) = (0, 0, 0, 0u32);
    if i < b.len() && (b[i] == b'T' || b[i] == b' ') && b.get(i + 3) == Some(&b':') {
        i += 1;
        h = num(i, 2).ok_or_else(|| bad("bad hour"))?;
        mi = num(i + 3, 2).ok_or_else(|| bad("bad minute"))?;
        i += 5;
        if b.get(i) == Some(&b':') {
            sec = num(i + 1, 2).ok_or_else(|| bad("bad second"))?;
            i += 3;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                if end == start {
                    return Err(bad("bad fraction of a second"));
                }
                let digits = &t[start..end.min(start + 9)];
                nanos = format!("{digits:0<9}")
                    .parse()
                    .map_err(|_| bad("bad fraction"))?;
                i = end;
            }
        }
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad("no such time of day"));
        }
    }
    let zone = t[i..].trim_start();
    let offset: Option<i64> = match zone {
        "" => None,
        "Z" | "z" | "UTC" | "utc" | "GMT" | "gmt" | "+00" | "-00" => Some(0),
        z if z.starts_with('+') || z.starts_with('-') => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let rest = z[1..].replace(':', "");
            if !(rest.len() == 2 || rest.len() == 4) || !rest.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("bad time zone offset"));
            }
            let zh: i64 = rest[..2].parse().expect("digits");
            let zm: i64 = if rest.len() == 4 {
                rest[2..].parse().expect("digits")
            } else {
                0
            };
            if zh > 15 || zm > 59 {
                return Err(bad("bad time zone offset"));
            }
            Some(sign * (zh * 3600 + zm * 60))
        }
        _ => {
            return Err(bad(
                "unknown time zone (give a numeric offset such as +02:00, or Z)",
            ))
        }
    };
    let Some(offset) = offset else {
        return Ok(None);
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86400 + i64::from(h * 3600 + mi * 60 + sec) - offset;
    let secs = u64::try_from(secs).map_err(|_| bad("before 1970"))?;
    Ok(Some(UNIX_EPOCH + Duration::new(secs, nanos)))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

impl Pitr {
    /// The lines for postgresql.auto.conf (values quoted for it).
    pub fn settings(&self) -> Result<String> {
        let q = |v: &str| {
            crate::pg::quote::conf_value(v).map_err(|e| usage(format!("recovery target: {e}")))
        };
        let mut out = String::new();
        match &self.target {
            Some(Target::Time { text, .. }) => {
                out.push_str(&format!("recovery_target_time = {}\n", q(text.trim())?))
            }
            Some(Target::Lsn(l)) => {
                out.push_str(&format!("recovery_target_lsn = {}\n", q(&l.to_string())?))
            }
            Some(Target::Xid(x)) => {
                out.push_str(&format!("recovery_target_xid = {}\n", q(&x.to_string())?))
            }
            Some(Target::Name(n)) => out.push_str(&format!("recovery_target_name = {}\n", q(n)?)),
            None => {}
        }
        if self.target.is_some() {
            out.push_str(&format!(
                "recovery_target_inclusive = '{}'\n",
                if self.exclusive { "off" } else { "on" }
            ));
            out.push_str(&format!(
                "recovery_target_action = '{}'\n",
                self.action.unwrap_or(Action::Pause).name()
            ));
        }
        if let Some(t) = &self.timeline {
            out.push_str(&format!("recovery_target_timeline = {}\n", q(t)?));
        }
        Ok(out)
    }

    /// For the summary line.
    pub fn describe(&self) -> String {
        let what = match &self.target {
            Some(Target::Time { text, .. }) => format!("time {text}"),
            Some(Target::Lsn(l)) => format!("LSN {l}"),
            Some(Target::Xid(x)) => format!("xid {x}"),
            Some(Target::Name(n)) => format!("restore point {n:?}"),
            None => "the end of the archive".into(),
        };
        match (&self.target, self.action) {
            (Some(_), a) => format!(
                "replay the archive to {what}, then {}",
                a.unwrap_or(Action::Pause).name()
            ),
            (None, _) => format!("replay {what} and promote"),
        }
    }

    /// Whether `set` ends before the target: `None` when walmgr cannot tell (xid, name,
    /// a time without a zone, a set whose finished_at does not parse).
    pub fn ends_before(&self, set: &BackupInfo) -> Option<bool> {
        match &self.target {
            Some(Target::Lsn(l)) => Some(if self.exclusive {
                set.stop_lsn < *l
            } else {
                set.stop_lsn <= *l
            }),
            Some(Target::Time { at: Some(at), .. }) => {
                // finished_at is truncated to the second: round it up.
                let end = humantime::parse_rfc3339(&set.finished_at).ok()?;
                Some(end + Duration::from_secs(1) <= *at)
            }
            _ => None,
        }
    }

    /// Where the set ends, as `ends_before` compared it.
    pub fn set_end(&self, set: &BackupInfo) -> String {
        match &self.target {
            Some(Target::Lsn(_)) => format!("stop LSN {}", set.stop_lsn),
            _ => format!("finished {}", set.finished_at),
        }
    }

    /// Whether the target says where it lies (LSN, time with a zone).
    pub fn comparable(&self) -> bool {
        matches!(
            &self.target,
            Some(Target::Lsn(_)) | Some(Target::Time { at: Some(_), .. })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> u64 {
        parse_time(s)
            .unwrap()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn times_postgres_accepts() {
        assert_eq!(at("1970-01-01 00:00:00+00"), 0);
        assert_eq!(at("2026-12-02T13:23:22Z"), 1_796_217_802);
        assert_eq!(at("2026-12-02 15:23:22+02"), 1_796_217_802);
        assert_eq!(at("2026-12-02 15:23:22 +02:00"), 1_796_217_802);
        assert_eq!(at("2026-12-02 08:53:22-0430"), 1_796_217_802);
        assert_eq!(at("2026-12-02 13:23:22.123456 UTC"), 1_796_217_802);
        assert_eq!(at("2024-02-29Z"), 1_709_164_800);
        let t = parse_time("2026-12-02 13:23:22.5Z").unwrap().unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().subsec_millis(), 500);
        assert_eq!(parse_time("2026-12-02 13:23:22").unwrap(), None);
        for bad in [
            "",
            "now",
            "epoch",
            "2026-13-01 00:00:00Z",
            "2026-02-30Z",
            "2026-12-02 25:00:00Z",
            "2026-12-02 13:23:22 Europe/Athens",
            "2026-12-02 13:23:22+2",
            "2026/12/02 13:23:22Z",
        ] {
            let e = parse_time(bad).unwrap_err().to_string();
            assert!(e.contains("--target-time"), "{bad}: {e}");
        }
    }

    fn args(f: impl FnOnce(&mut TargetArgs)) -> Result<Option<Pitr>> {
        let mut a = TargetArgs::default();
        f(&mut a);
        a.parse()
    }

    #[test]
    fn targets_are_checked_and_written_quoted() {
        assert_eq!(args(|_| {}).unwrap(), None);
        let p = args(|a| {
            a.name = Some("it's here".into());
            a.exclusive = true;
            a.timeline = Some("latest".into());
            a.action = Some(Action::Promote);
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            p.settings().unwrap(),
            "recovery_target_name = 'it''s here'\nrecovery_target_inclusive = 'off'\n\
             recovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n"
        );
        let p = args(|a| a.lsn = Some("0/3000028".into())).unwrap().unwrap();
        assert!(p
            .settings()
            .unwrap()
            .starts_with("recovery_target_lsn = '0/3000028'\nrecovery_target_inclusive = 'on'\nrecovery_target_action = 'pause'\n"));
        let p = args(|a| a.xid = Some("4294967300".into()))
            .unwrap()
            .unwrap();
        assert!(p
            .settings()
            .unwrap()
            .contains("recovery_target_xid = '4294967300'"));
        for f in [
            (|a: &mut TargetArgs| a.lsn = Some("0/XYZ".into())) as fn(&mut TargetArgs),
            |a| a.xid = Some("-1".into()),
            |a| a.xid = Some("12a".into()),
            |a| a.name = Some(String::new()),
            |a| a.name = Some("x".repeat(64)),
            |a| a.name = Some("a\nb".into()),
            |a| a.timeline = Some("0".into()),
            |a| a.timeline = Some("newest".into()),
            |a| a.action = Some(Action::Promote),
            |a| {
                a.lsn = Some("0/1".into());
                a.xid = Some("5".into())
            },
        ] {
            let e = args(f).unwrap_err();
            assert_eq!(crate::cli::ExitError::code(&e), 2, "{e}");
            assert!(e.to_string().starts_with("restore: "), "{e}");
        }
        assert!(args(|a| a.name = Some("x".repeat(63))).is_ok());
        assert!(args(|a| a.timeline = Some("3".into())).unwrap().is_some());
    }

    #[test]
    fn which_sets_end_before() {
        let info = |lsn: &str, fin: &str| BackupInfo {
            stop_lsn: lsn.parse().unwrap(),
            finished_at: fin.into(),
            ..crate::skytools::walmgr::backupset::tests_info()
        };
        let s = info("0/5000000", "2026-12-02T10:00:00Z");
        let lsn = |l: &str, ex: bool| Pitr {
            target: Some(Target::Lsn(l.parse().unwrap())),
            exclusive: ex,
            timeline: None,
            action: None,
        };
        assert_eq!(lsn("0/5000000", false).ends_before(&s), Some(true));
        assert_eq!(lsn("0/5000000", true).ends_before(&s), Some(false));
        assert_eq!(lsn("0/4FFFFFF", false).ends_before(&s), Some(false));
        let time = |t: &str| Pitr {
            target: Some(Target::Time {
                text: t.into(),
                at: parse_time(t).unwrap(),
            }),
            exclusive: false,
            timeline: None,
            action: None,
        };
        assert_eq!(time("2026-12-02 12:00:01+02").ends_before(&s), Some(true));
        assert_eq!(time("2026-12-02 11:59:59+02").ends_before(&s), Some(false));
        assert_eq!(time("2026-12-02 12:00:00").ends_before(&s), None);
        let name = Pitr {
            target: Some(Target::Name("x".into())),
            exclusive: false,
            timeline: None,
            action: None,
        };
        assert_eq!(name.ends_before(&s), None);
    }
}
