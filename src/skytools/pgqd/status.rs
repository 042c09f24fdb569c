//! The machine-readable status pgqd writes every stats_period (atomically), and
//! `pgqd --status` that prints it: per database the ticker's state (a [`DbState`]
//! name), last successful tick, and the last error with its time, kept apart from the
//! state. The original only logged, so a ticker that was alive but stuck on one
//! database could not be told from a healthy one.
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
use crate::fsutil::{self, PathError};

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
        databases: status.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    let data = serde_json::to_vec_pretty(&file).expect("status serializes");
    fsutil::write_atomic(path, &data, 0o644)
}

/// Print the status; exit 1 when it is missing, its pgqd is gone, or it is older than
/// three stats periods (pgqd is stuck).
pub fn print(path: &Path, stats_period: Duration) -> anyhow::Result<ExitCode> {
    let data = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (is pgqd running?)", path.display()))?;
    let file: ShownFile = serde_json::from_slice(&data)
        .map_err(|e| anyhow::anyhow!("{}: not a pgqd status file: {e}", path.display()))?;
    let now = now();
    let age = now.saturating_sub(file.written);
    println!("pgqd pid {} status written {age}s ago", file.pid);
    println!(
        "{:<30} {:<13} {:>10}  last error",
        "database", "state", "last tick"
    );
    for (db, s) in &file.databases {
        println!("{}", line(db, s, now));
    }
    if !crate::daemon::pid_alive(file.pid as i32) {
        eprintln!("pgqd: pid {} is not running", file.pid);
        return Ok(ExitCode::FAILURE);
    }
    let stale = age > 3 * stats_period.as_secs().max(1);
    if stale {
        eprintln!("pgqd: status is stale ({age}s old): pgqd is not running or is stuck");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
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
