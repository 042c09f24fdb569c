//! `walmgr <ini> status`: a Nagios-style check of the archive (see [`crate::monitor`]).
//!
//! Read from the store alone, with either ini: the newest archived segment and its age
//! (its `.meta` was written when `xarchive` committed it: the file's mtime in a
//! directory, the meta's `archived_at` in S3), the newest base backup
//! and its age (its `backup.json` is written at commit), and — with a master ini whose
//! data directory is readable — the archive lag: segments PostgreSQL has ready
//! (`pg_wal/archive_status/*.ready`) that the store does not hold yet. A master whose
//! store is on another host reports the lag only (run `status` there with the slave ini
//! for the store).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::backupset::{self, Backups};
use super::config::{SlaveLocation, StoreSettings};
use super::store::WalStore;
use super::walname::WalName;
use super::Settings;
use crate::monitor::{self, Check, Metrics, State, Thresholds};

/// Age of the newest archived segment: 1 h WARNING, 6 h CRITICAL (set `archive_timeout`
/// on a quiet master so that segments keep coming).
pub const WAL_AGE: Thresholds = Thresholds::new(3600, 21600);
/// Age of the newest base backup: 26 h WARNING, 50 h CRITICAL (a nightly backup missed
/// once, twice).
pub const BACKUP_AGE: Thresholds = Thresholds::new(93600, 180000);
/// Segments ready in pg_wal and not stored: 10 WARNING, 100 CRITICAL.
pub const READY: Thresholds = Thresholds::new(10, 100);
/// Age of the oldest segment ready and not stored: 10 min WARNING, 1 h CRITICAL.
pub const READY_AGE: Thresholds = Thresholds::new(600, 3600);

/// `status` options, part of walmgr's command line (they may come after the command
/// word, as the restore targets do).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusArgs {
    /// WARNING when the newest archived segment is older [default: 3600]
    #[arg(long, value_name = "SECS")]
    pub warn_wal_age: Option<u64>,
    /// CRITICAL when the newest archived segment is older [default: 21600]
    #[arg(long, value_name = "SECS")]
    pub crit_wal_age: Option<u64>,
    /// WARNING when the newest base backup is older [default: 93600]
    #[arg(long, value_name = "SECS")]
    pub warn_backup_age: Option<u64>,
    /// CRITICAL when the newest base backup is older [default: 180000]
    #[arg(long, value_name = "SECS")]
    pub crit_backup_age: Option<u64>,
    /// WARNING above this many segments ready and not stored [default: 10]
    #[arg(long, value_name = "N")]
    pub warn_ready: Option<u64>,
    /// CRITICAL above this many segments ready and not stored [default: 100]
    #[arg(long, value_name = "N")]
    pub crit_ready: Option<u64>,
    /// WARNING when the oldest segment ready and not stored is older [default: 600]
    #[arg(long, value_name = "SECS")]
    pub warn_ready_age: Option<u64>,
    /// CRITICAL when the oldest segment ready and not stored is older [default: 3600]
    #[arg(long, value_name = "SECS")]
    pub crit_ready_age: Option<u64>,
    /// Also write the figures to FILE as a node_exporter textfile
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub wal_age: Thresholds,
    pub backup_age: Thresholds,
    pub ready: Thresholds,
    pub ready_age: Thresholds,
}

impl StatusArgs {
    fn options(&self) -> Result<Options, String> {
        Ok(Options {
            wal_age: WAL_AGE.with(
                self.warn_wal_age,
                self.crit_wal_age,
                "--warn-wal-age/--crit-wal-age",
            )?,
            backup_age: BACKUP_AGE.with(
                self.warn_backup_age,
                self.crit_backup_age,
                "--warn-backup-age/--crit-backup-age",
            )?,
            ready: READY.with(
                self.warn_ready,
                self.crit_ready,
                "--warn-ready/--crit-ready",
            )?,
            ready_age: READY_AGE.with(
                self.warn_ready_age,
                self.crit_ready_age,
                "--warn-ready-age/--crit-ready-age",
            )?,
        })
    }
}

/// What the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFigures {
    pub segments: u64,
    /// The newest segment and the age of its commit.
    pub last_segment: Option<(String, u64)>,
    pub backups: u64,
    /// The newest set and the age of its commit.
    pub newest_backup: Option<(String, u64)>,
}

fn mtime_age(p: &Path) -> Option<u64> {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .map(monitor::secs_since)
}

pub fn store_figures(st: &StoreSettings) -> Result<StoreFigures, String> {
    let wal = WalStore::new(&st.paths);
    let names = wal.list().map_err(|e| e.to_string())?;
    let segments: Vec<&String> = names
        .iter()
        .filter(|n| WalName::parse(n).is_ok_and(|w| w.is_segment()))
        .collect();
    let last_segment = match segments.last() {
        Some(n) => {
            let at = wal.committed_at(n).map_err(|e| e.to_string())?;
            Some((n.to_string(), at.map_or(0, monitor::secs_since)))
        }
        None => None,
    };
    let sets = Backups::new(&st.paths).list().map_err(|e| e.to_string())?;
    let newest_backup = sets.last().map(|s| {
        // An object's time is what backup.json says (a local set's, its mtime).
        let age = match &s.s3 {
            Some(_) => humantime::parse_rfc3339_weak(&s.info.finished_at)
                .ok()
                .map(monitor::secs_since),
            None => mtime_age(&s.dir.join(backupset::INFO)),
        }
        .unwrap_or(0);
        (s.info.set.to_string(), age)
    });
    Ok(StoreFigures {
        segments: segments.len() as u64,
        last_segment,
        backups: sets.len() as u64,
        newest_backup,
    })
}

/// The archive lag: segments PostgreSQL has ready and the store lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub waiting: u64,
    /// Age of the oldest one's `.ready` mark (when it was complete).
    pub oldest_age: Option<u64>,
}

/// Segments in `<data>/pg_wal/archive_status` marked `.ready` for which `stored` is
/// false.
pub fn ready_not_stored(data: &Path, stored: impl Fn(&str) -> bool) -> Result<Lag, String> {
    let dir = data.join("pg_wal/archive_status");
    let rd = fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut lag = Lag {
        waiting: 0,
        oldest_age: None,
    };
    for e in rd {
        let e = e.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = e.file_name();
        let Some(seg) = name.to_str().and_then(|s| s.strip_suffix(".ready")) else {
            continue;
        };
        if !stored(seg) {
            lag.waiting += 1;
            if let Some(age) = mtime_age(&e.path()) {
                lag.oldest_age = Some(lag.oldest_age.map_or(age, |a| a.max(age)));
            }
        }
    }
    Ok(lag)
}

/// What was observed.
#[derive(Debug, Clone)]
pub struct Observed {
    pub job: String,
    /// The store's figures, or where it is when it is not local.
    pub store: Result<StoreFigures, String>,
    /// Lag, when there is a master data directory to look at.
    pub ready: Option<Result<Lag, String>>,
}

pub fn observe(s: &Settings) -> Observed {
    let (job, master_data, remote) = match s {
        Settings::Master(m) => (
            m.job_name.clone(),
            Some(m.master_data.clone()),
            match &m.slave {
                SlaveLocation::Remote { host, .. } => Some(host.clone()),
                SlaveLocation::Local(_) => None,
            },
        ),
        Settings::Slave(sl) => (sl.job_name.clone(), None, None),
    };
    let local = s.local_store();
    let store = match (local, &remote) {
        (Some(st), _) => store_figures(st),
        (None, host) => Err(format!(
            "store on {}: run status there with the slave ini",
            host.as_deref().unwrap_or("another host")
        )),
    };
    // With archive_async, a segment the pusher stored (its done record) is not lag
    // either, wherever the store is.
    let spool = match s {
        Settings::Master(m) if m.push.enabled => Some(super::spool::Spool {
            dir: m.push.spool_dir.clone(),
        }),
        _ => None,
    };
    let wal = local.map(|st| WalStore::new(&st.paths));
    let ready = master_data.map(|d| {
        ready_not_stored(&d, |seg| {
            // A store that cannot be asked counts the segment as waiting: the store's
            // own error is reported above.
            let in_store = wal.as_ref().is_some_and(|w| w.holds(seg).unwrap_or(false));
            in_store
                || spool
                    .as_ref()
                    .is_some_and(|sp| sp.stored(seg, &d.join("pg_wal").join(seg)))
        })
    });
    Observed { job, store, ready }
}

pub fn judge(o: &Observed, opts: &Options) -> (Check, Metrics) {
    let mut c = Check::new("WALMGR");
    let mut m = Metrics::new("hostkit_walmgr_");
    let job = [("job", o.job.as_str())];
    match &o.store {
        Ok(f) => {
            match &f.last_segment {
                Some((seg, age)) => {
                    c.say(format!("last segment {seg} {} ago", monitor::age(*age)));
                    let st = c.measure("last_wal_age", *age, "s", opts.wal_age);
                    if st != State::Ok {
                        c.fail(
                            st,
                            format!("no segment archived for {}", monitor::age(*age)),
                        );
                    }
                    m.gauge(
                        "last_segment_age_seconds",
                        "Seconds since the newest archived segment was stored",
                        &[("job", &o.job), ("segment", seg)],
                        *age as f64,
                    );
                }
                None => c.fail(State::Warning, "no segment archived yet"),
            }
            match &f.newest_backup {
                Some((set, age)) => {
                    c.say(format!("newest backup {set} {} ago", monitor::age(*age)));
                    let st = c.measure("backup_age", *age, "s", opts.backup_age);
                    if st != State::Ok {
                        c.fail(st, format!("newest backup {} old", monitor::age(*age)));
                    }
                    m.gauge(
                        "newest_backup_age_seconds",
                        "Seconds since the newest base backup was committed",
                        &[("job", &o.job), ("set", set)],
                        *age as f64,
                    );
                }
                None => c.fail(State::Warning, "no base backup"),
            }
            c.perf("segments", f.segments as f64, "");
            c.perf("backups", f.backups as f64, "");
            m.gauge(
                "segments",
                "WAL segments in the store",
                &job,
                f.segments as f64,
            );
            m.gauge(
                "backups",
                "Base backups in the store",
                &job,
                f.backups as f64,
            );
        }
        Err(e) if o.ready.is_some() && e.starts_with("store on ") => c.say(e.clone()),
        Err(e) => c.fail(State::Unknown, e.clone()),
    }
    match &o.ready {
        Some(Ok(lag)) => {
            let n = lag.waiting;
            let st = c.measure("ready", n, "", opts.ready);
            if st != State::Ok {
                c.fail(st, format!("{n} segments waiting to be archived"));
            } else {
                c.say(format!("{n} segments waiting"));
            }
            m.gauge(
                "archive_ready_segments",
                "Segments PostgreSQL has ready (archive_status/*.ready) and the store lacks",
                &job,
                n as f64,
            );
            let age = lag.oldest_age.unwrap_or(0);
            let st = c.measure("ready_age", age, "s", opts.ready_age);
            if st != State::Ok {
                c.fail(
                    st,
                    format!("oldest segment waiting for {}", monitor::age(age)),
                );
            }
            m.gauge(
                "archive_ready_oldest_age_seconds",
                "Seconds since the oldest segment waiting to be archived was complete (0: none)",
                &job,
                age as f64,
            );
        }
        Some(Err(e)) => c.say(format!("archive lag unknown ({e})")),
        None => {}
    }
    (c, m)
}

/// `walmgr <ini> status [options]`: one line on stdout and exit 0-3, whatever happens.
pub fn run(ini: &Path, a: &StatusArgs, extra: &[String]) -> ExitCode {
    let prometheus = a.prometheus.as_deref();
    let unknown = |why: String| {
        monitor::report(
            Check::unknown("WALMGR", &why),
            Metrics::new("hostkit_walmgr_"),
            prometheus,
        )
    };
    if let Some(x) = extra.first() {
        return unknown(format!("status: unexpected argument {x:?}"));
    }
    let opts = match a.options() {
        Ok(o) => o,
        Err(e) => return unknown(e),
    };
    let settings = match Settings::load(ini) {
        Ok(s) => s,
        Err(e) => return unknown(e.to_string()),
    };
    let (c, m) = judge(&observe(&settings), &opts);
    monitor::report(c, m, prometheus)
}

/// A command line clap refused, when its command is `status`: the plugin's UNKNOWN
/// (exit 3) instead of a usage error (exit 2), as monitoring expects.
pub fn usage_error(e: &clap::Error) -> ExitCode {
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    monitor::report(
        Check::unknown("WALMGR", &format!("status: {first}")),
        Metrics::new("hostkit_walmgr_"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            wal_age: WAL_AGE,
            backup_age: BACKUP_AGE,
            ready: READY,
            ready_age: READY_AGE,
        }
    }

    fn observed(seg_age: u64, backup_age: Option<u64>, ready: Option<u64>) -> Observed {
        Observed {
            job: "wal-master".into(),
            store: Ok(StoreFigures {
                segments: 3,
                last_segment: Some(("000000010000000000000003".into(), seg_age)),
                backups: u64::from(backup_age.is_some()),
                newest_backup: backup_age.map(|a| ("20261202T101500".into(), a)),
            }),
            ready: ready.map(|n| {
                Ok(Lag {
                    waiting: n,
                    oldest_age: (n > 0).then_some(n * 60),
                })
            }),
        }
    }

    #[test]
    fn a_fresh_archive_is_ok() {
        let (c, m) = judge(&observed(30, Some(7200), Some(0)), &opts());
        assert_eq!(c.state(), State::Ok);
        assert_eq!(
            c.line(),
            "WALMGR OK - last segment 000000010000000000000003 30 s ago, newest backup \
             20261202T101500 2 h ago, 0 segments waiting | last_wal_age=30s;3600;21600;0 \
             backup_age=7200s;93600;180000;0 segments=3 backups=1 ready=0;10;100;0 \
             ready_age=0s;600;3600;0"
        );
        let text = m.render();
        assert!(text.contains(
            "hostkit_walmgr_newest_backup_age_seconds{job=\"wal-master\",set=\"20261202T101500\"} 7200\n"
        ));
        monitor::parse_textfile(&text).unwrap();
    }

    #[test]
    fn stale_segments_old_backups_and_lag_raise_the_state() {
        let (c, _) = judge(&observed(4000, Some(7200), None), &opts());
        assert_eq!(c.state(), State::Warning);
        assert!(c
            .line()
            .starts_with("WALMGR WARNING - no segment archived for 66 min, "));
        let (c, _) = judge(&observed(30, Some(200_000), None), &opts());
        assert_eq!(c.state(), State::Critical);
        assert!(c
            .line()
            .starts_with("WALMGR CRITICAL - newest backup 2 d old, "));
        let (c, _) = judge(&observed(30, None, None), &opts());
        assert_eq!(c.state(), State::Warning);
        assert!(c.line().starts_with("WALMGR WARNING - no base backup, "));
        let (c, _) = judge(&observed(30, Some(10), Some(11)), &opts());
        assert_eq!(c.state(), State::Warning);
        assert!(c
            .line()
            .starts_with("WALMGR WARNING - 11 segments waiting to be archived, "));
        let mut o = observed(30, Some(10), Some(1));
        o.ready = Some(Ok(Lag {
            waiting: 1,
            oldest_age: Some(4000),
        }));
        let (c, m) = judge(&o, &opts());
        assert_eq!(c.state(), State::Critical, "{}", c.line());
        assert!(
            c.line().contains("oldest segment waiting for 66 min"),
            "{}",
            c.line()
        );
        assert!(m.render().contains(
            "hostkit_walmgr_archive_ready_oldest_age_seconds{job=\"wal-master\"} 4000\n"
        ));
        let mut o = observed(30, Some(10), None);
        o.store = Err("cannot list /x".into());
        let (c, _) = judge(&o, &opts());
        assert_eq!(c.state(), State::Unknown);
    }

    #[test]
    fn options_parse_after_the_command_word() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let argv = ["walmgr", "x.ini", "status"].iter().chain(extra);
            super::super::Args::try_parse_from(argv).map(|a| a.status)
        };
        let a = parse(&["--warn-wal-age", "5", "--crit-ready", "70"]).unwrap();
        let o = a.options().unwrap();
        assert_eq!(o.wal_age, Thresholds::new(5, 21600));
        assert_eq!(o.ready, Thresholds::new(10, 70));
        let a = parse(&["--crit-ready", "7"]).unwrap();
        assert!(a
            .options()
            .unwrap_err()
            .starts_with("--warn-ready/--crit-ready: "));
        assert!(parse(&["--bogus"]).is_err());
    }
}
