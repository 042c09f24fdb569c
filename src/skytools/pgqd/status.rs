//! The machine-readable status pgqd writes every stats_period (atomically), and
//! `pgqd --status` that prints it: per database its state, last successful tick and
//! last error. The original only logged, so a ticker that was alive but stuck on one
//! database could not be told from a healthy one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::db::{DbStatus, StatusMap};
use crate::fsutil::{self, PathError};

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    /// Unix time this file was written.
    pub written: u64,
    pub databases: BTreeMap<String, DbStatus>,
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
    let file: StatusFile = serde_json::from_slice(&data)
        .map_err(|e| anyhow::anyhow!("{}: not a pgqd status file: {e}", path.display()))?;
    let age = now().saturating_sub(file.written);
    println!("pgqd pid {} status written {age}s ago", file.pid);
    println!(
        "{:<30} {:<12} {:>10}  last error",
        "database", "state", "last tick"
    );
    for (db, s) in &file.databases {
        let tick = s.last_tick.map_or("never".to_string(), |t| {
            format!("{}s ago", now().saturating_sub(t))
        });
        println!(
            "{db:<30} {:<12} {tick:>10}  {}",
            s.state,
            s.last_error.as_deref().unwrap_or("-")
        );
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
