//! The machine-readable status pgqd writes every stats_period (atomically), and
//! `pgqd --status` that prints it: per database the ticker's state (a [`DbState`]
//! name), last successful tick, and the last error with its time, kept apart from the
//! state. The original only logged, so a ticker that was alive but stuck on one
//! database could not be told from a healthy one.
//!
//! `--status` is a Nagios plugin (see [`crate::monitor`]): one summary line, the table
//! as long output, exit 0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN. A database that has
//! ticked is judged by the age of its last tick (a stuck ticker: `pgq.ticker()` blocked,
//! the connection lost); one that never ticked is fine without pgq and WARNING with any
//! other error; pgqd gone or its file older than three stats periods is CRITICAL.
//!
//! The reader takes the state as plain text and every newer field as optional, so
//! `--status` also reads the file of a pgqd from before the state enum (whose state
//! was free text) during an upgrade, and older readers ignore the fields added since.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::db::{DbStatus, StatusMap};
#[cfg(doc)]
use super::state::DbState;
use super::state::NO_PGQ;
use crate::fsutil::{self, PathError};
use crate::monitor::{self, Check, Metrics, State, Thresholds};

/// Seconds since a database's last tick: more than 60 is WARNING, more than 300 CRITICAL.
pub const TICK_AGE: Thresholds = Thresholds::new(60, 300);

#[derive(Debug, Serialize)]
pub struct StatusFile {
    pub pid: u32,
    /// Unix time this file was written.
    pub written: u64,
    pub databases: BTreeMap<String, DbStatus>,
}

/// A status file as `--status` reads it: any pgqd's, old or new.
#[derive(Debug, Deserialize)]
struct ShownFile {
    pid: u32,
    written: u64,
    databases: BTreeMap<String, ShownDb>,
}

#[derive(Debug, Deserialize)]
struct ShownDb {
    state: String,
    last_tick: Option<u64>,
    last_error: Option<String>,
    #[serde(default)]
    last_error_at: Option<u64>,
    #[serde(default)]
    ticks: u64,
}

/// `5s ago`, or `never`.
fn ago(t: Option<u64>, now: u64) -> String {
    t.map_or("never".to_string(), |t| {
        format!("{}s ago", now.saturating_sub(t))
    })
}

/// One database's line of `--status`.
fn line(db: &str, s: &ShownDb, now: u64) -> String {
    let error = match (&s.last_error, s.last_error_at) {
        (None, _) => "-".to_string(),
        (Some(e), None) => e.clone(),
        (Some(e), at) => format!("{e} ({})", ago(at, now)),
    };
    format!(
        "{db:<30} {:<13} {:>10}  {error}",
        s.state,
        ago(s.last_tick, now)
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub fn write(path: &Path, status: &StatusMap) -> Result<(), PathError> {
    let file = StatusFile {
        pid: std::process::id(),
        written: now(),
        databases: status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(db, cell)| (db.clone(), cell.get()))
            .collect(),
    };
    let data = serde_json::to_vec_pretty(&file).expect("status serializes");
    fsutil::write_atomic(path, &data, 0o644)
}

/// `--status` options.
#[derive(Debug, Clone)]
pub struct Options {
    pub tick_age: Thresholds,
    pub prometheus: Option<std::path::PathBuf>,
}

/// Judge a status file read at `now`; `alive` is whether its pid still runs.
fn judge(
    file: &ShownFile,
    alive: bool,
    now: u64,
    stats_period: Duration,
    opts: &Options,
) -> (Check, Metrics) {
    let mut c = Check::new("PGQD");
    let mut m = Metrics::new("hostkit_pgqd_");
    let age = now.saturating_sub(file.written);
    let limit = 3 * stats_period.as_secs().max(1);
    if !alive {
        c.fail(State::Critical, format!("pid {} is not running", file.pid));
    } else if age > limit {
        c.fail(
            State::Critical,
            format!("status file {} old: pgqd is stuck", monitor::age(age)),
        );
    }
    let up = alive && age <= limit;
    m.gauge(
        "up",
        "1 when pgqd runs and its status file is fresh",
        &[],
        f64::from(u8::from(up)),
    );
    m.gauge(
        "status_age_seconds",
        "Seconds since pgqd last wrote its status file",
        &[],
        age as f64,
    );
    let (mut ticking, mut without_pgq, mut oldest) = (0, 0, None::<u64>);
    c.detail(format!(
        "{:<30} {:<13} {:>10}  last error",
        "database", "state", "last tick"
    ));
    for (db, s) in &file.databases {
        c.detail(line(db, s, now));
        let labels = [("database", db.as_str())];
        m.gauge(
            "database_state",
            "The ticker's state of each database (1 for the current one)",
            &[("database", db), ("state", &s.state)],
            1.0,
        );
        m.counter(
            "ticks_total",
            "Successful pgq.ticker() calls since pgqd started",
            &labels,
            s.ticks as f64,
        );
        if let Some(at) = s.last_error_at {
            m.gauge(
                "last_error_timestamp_seconds",
                "Unix time of the database's last error",
                &labels,
                at as f64,
            );
        }
        if s.state == "ticking" {
            ticking += 1;
        }
        match s.last_tick {
            Some(t) => {
                let a = now.saturating_sub(t);
                oldest = Some(oldest.map_or(a, |o| o.max(a)));
                m.gauge(
                    "last_tick_age_seconds",
                    "Seconds since the database's last successful tick",
                    &labels,
                    a as f64,
                );
                let st = c.measure(&format!("tick_age_{db}"), a, "s", opts.tick_age);
                if st != State::Ok {
                    let why = match &s.last_error {
                        Some(e) if s.state != "ticking" => format!(", {e}"),
                        _ => String::new(),
                    };
                    c.fail(
                        st,
                        format!("{db}: no tick for {} ({}{why})", monitor::age(a), s.state),
                    );
                }
            }
            None if s.last_error.as_deref().is_some_and(|e| e.ends_with(NO_PGQ)) => {
                without_pgq += 1;
            }
            None => {
                if let Some(e) = &s.last_error {
                    c.fail(
                        State::Warning,
                        format!("{db}: never ticked ({}, {e})", s.state),
                    );
                }
            }
        }
    }
    let n = file.databases.len();
    c.say(format!("{ticking} of {n} databases ticking"));
    if let Some(a) = oldest {
        c.say(format!("oldest last tick {} ago", monitor::age(a)));
    }
    if without_pgq > 0 {
        c.say(format!("{without_pgq} without pgq"));
    }
    c.perf("databases", n as f64, "");
    c.perf("ticking", ticking as f64, "");
    m.gauge("databases", "Databases pgqd serves", &[], n as f64);
    (c, m)
}

/// Read the status file and judge it; every failure to read is UNKNOWN, except a
/// missing file (pgqd not running: CRITICAL).
pub fn check(path: &Path, stats_period: Duration, opts: &Options) -> ExitCode {
    let unknown = |why: String| {
        monitor::report(
            Check::unknown("PGQD", &why),
            Metrics::new("hostkit_pgqd_"),
            opts.prometheus.as_deref(),
        )
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut c = Check::new("PGQD");
            c.fail(
                State::Critical,
                format!("no status file {}: pgqd is not running", path.display()),
            );
            let mut m = Metrics::new("hostkit_pgqd_");
            m.gauge(
                "up",
                "1 when pgqd runs and its status file is fresh",
                &[],
                0.0,
            );
            return monitor::report(c, m, opts.prometheus.as_deref());
        }
        Err(e) => return unknown(PathError::new("read", path, e).to_string()),
    };
    let file: ShownFile = match serde_json::from_slice(&data) {
        Ok(f) => f,
        Err(e) => return unknown(format!("{}: not a pgqd status file: {e}", path.display())),
    };
    let alive = crate::daemon::pid_alive(file.pid as i32);
    let (c, m) = judge(&file, alive, now(), stats_period, opts);
    monitor::report(c, m, opts.prometheus.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skytools::pgqd::state::DbState;

    #[test]
    fn the_state_and_the_last_error_are_separate_fields() {
        let mut dbs = BTreeMap::new();
        dbs.insert(
            "app".to_string(),
            DbStatus {
                state: DbState::Ticking,
                last_tick: Some(95),
                last_error: Some("ticker: ticker failed: terminated".into()),
                last_error_at: Some(40),
                ticks: 7,
            },
        );
        let file = StatusFile {
            pid: 1,
            written: 100,
            databases: dbs,
        };
        let json: serde_json::Value = serde_json::to_value(&file).unwrap();
        assert_eq!(json["databases"]["app"]["state"], "ticking");
        assert_eq!(
            json["databases"]["app"]["last_error"],
            "ticker: ticker failed: terminated"
        );
        let shown: ShownFile = serde_json::from_value(json).unwrap();
        let l = line("app", &shown.databases["app"], 100);
        assert!(l.starts_with("app "), "{l}");
        assert!(l.contains(" ticking "), "{l}");
        assert!(l.contains("5s ago"), "{l}");
        assert!(
            l.ends_with("ticker: ticker failed: terminated (60s ago)"),
            "{l}"
        );
    }

    fn shown(dbs: &[(&str, &str, Option<u64>, Option<&str>)]) -> ShownFile {
        ShownFile {
            pid: 1,
            written: 1000,
            databases: dbs
                .iter()
                .map(|(db, state, tick, err)| {
                    (
                        db.to_string(),
                        ShownDb {
                            state: state.to_string(),
                            last_tick: *tick,
                            last_error: err.map(str::to_string),
                            last_error_at: err.map(|_| 900),
                            ticks: 3,
                        },
                    )
                })
                .collect(),
        }
    }

    fn opts() -> Options {
        Options {
            tick_age: TICK_AGE,
            prometheus: None,
        }
    }

    #[test]
    fn ticking_databases_and_ones_without_pgq_are_ok() {
        let f = shown(&[
            ("app", "ticking", Some(999), None),
            ("plain", "closed", None, Some("ticker: no pgq installed")),
        ]);
        let (c, m) = judge(&f, true, 1001, Duration::from_secs(1), &opts());
        assert_eq!(c.state(), State::Ok);
        assert_eq!(
            c.line(),
            "PGQD OK - 1 of 2 databases ticking, oldest last tick 2 s ago, 1 without pgq | \
             tick_age_app=2s;60;300;0 databases=2 ticking=1"
        );
        assert_eq!(c.text().lines().count(), 4, "{}", c.text());
        let text = m.render();
        assert!(text.contains("hostkit_pgqd_last_tick_age_seconds{database=\"app\"} 2\n"));
        assert!(
            text.contains("hostkit_pgqd_database_state{database=\"plain\",state=\"closed\"} 1\n")
        );
        monitor::parse_textfile(&text).unwrap();
    }

    #[test]
    fn a_stuck_ticker_a_failing_database_and_a_dead_pgqd() {
        let f = shown(&[
            ("app", "ticking", Some(600), None),
            (
                "lost",
                "closed",
                Some(950),
                Some("ticker: connection failed: refused"),
            ),
            (
                "new",
                "closed",
                None,
                Some("ticker: connection failed: no such database"),
            ),
        ]);
        let (c, _) = judge(&f, true, 1001, Duration::from_secs(1), &opts());
        assert_eq!(c.state(), State::Critical);
        assert!(
            c.line().starts_with(
                "PGQD CRITICAL - app: no tick for 6 min (ticking), new: never ticked (closed, \
                 ticker: connection failed: no such database), 1 of 3 databases ticking"
            ),
            "{}",
            c.line()
        );
        let (c, _) = judge(
            &f,
            true,
            1001,
            Duration::from_secs(1),
            &Options {
                tick_age: Thresholds::new(10, 1000),
                prometheus: None,
            },
        );
        assert_eq!(c.state(), State::Warning);
        assert!(
            c.line()
                .contains("lost: no tick for 51 s (closed, ticker: connection failed: refused)"),
            "{}",
            c.line()
        );
        let (c, m) = judge(&shown(&[]), false, 1001, Duration::from_secs(1), &opts());
        assert_eq!(c.state(), State::Critical);
        assert!(
            c.line().starts_with("PGQD CRITICAL - pid 1 is not running"),
            "{}",
            c.line()
        );
        assert!(m.render().contains("hostkit_pgqd_up 0\n"));
        let (c, _) = judge(&shown(&[]), true, 1004, Duration::from_secs(1), &opts());
        assert!(
            c.line()
                .starts_with("PGQD CRITICAL - status file 4 s old: pgqd is stuck"),
            "{}",
            c.line()
        );
    }

    #[test]
    fn a_status_file_from_before_the_state_enum_is_still_read() {
        let old = r#"{"pid": 1, "written": 100, "databases": {"app":
            {"state": "no pgq installed", "last_tick": null,
             "last_error": "no pgq installed", "ticks": 0}}}"#;
        let shown: ShownFile = serde_json::from_str(old).unwrap();
        let l = line("app", &shown.databases["app"], 100);
        assert!(l.contains("never"), "{l}");
        assert!(l.ends_with("no pgq installed"), "{l}");
    }
}
