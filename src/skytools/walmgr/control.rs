//! Recovery control on the slave: `pause`, `continue` (PAUSE file), `boot` (STOP file,
//! promotion of a running standby or of a recovery paused at its target).
//!
//! PAUSE and STOP belong to the data directory being recovered: they are the files
//! `walmgr.PAUSE` and `walmgr.STOP` in it (xrestore runs with the data directory as its
//! working directory, PostgreSQL guarantees it). So a copy restored from the store a
//! standby follows is never paused or ended by that standby's controls, nor the other way
//! round. (walmgr before 2026-12 kept them in the store's completed_wals; files left
//! there are ignored.)

use std::path::{Path, PathBuf};

use super::config::Slave;
use super::error::{io_err, Result, WalmgrError};
use crate::fsutil::{self, PathError};

pub const PAUSE: &str = "walmgr.PAUSE";
pub const STOP: &str = "walmgr.STOP";

/// The data directory a control command is about: the one given, else slave_data.
fn data_dir(s: &Slave, dir: Option<&str>) -> Result<PathBuf> {
    let d = match dir {
        Some(d) => std::path::absolute(d).map_err(io_err("resolve", Path::new(d)))?,
        None => s.require_data()?.to_path_buf(),
    };
    if !d.join("PG_VERSION").is_file() {
        return Err(WalmgrError::Refused(format!(
            "{}: not a PostgreSQL data directory (no PG_VERSION)",
            d.display()
        )));
    }
    Ok(d)
}

pub fn pause(s: &Slave, dir: Option<&str>) -> Result<()> {
    let d = data_dir(s, dir)?;
    fsutil::write_atomic(&d.join(PAUSE), b"", 0o600)?;
    println!(
        "replay of {} paused: restore_command holds at the next segment",
        d.display()
    );
    Ok(())
}

pub fn resume(s: &Slave, dir: Option<&str>) -> Result<()> {
    let d = data_dir(s, dir)?;
    remove_control(&d, PAUSE)?;
    println!("replay of {} continues", d.display());
    Ok(())
}

/// Remove `<dir>/<which>` if it is there.
pub fn remove_control(dir: &Path, which: &str) -> Result<()> {
    let p = dir.join(which);
    match std::fs::remove_file(&p) {
        Ok(()) => fsutil::sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PathError::new("remove", &p, e).into()),
    }
    Ok(())
}

/// The pid in `<data>/postmaster.pid` if that process is alive.
pub fn running_postmaster(data: &Path) -> Option<i32> {
    crate::pg::cluster::Layout::default().running_postmaster(data)
}

pub fn boot(s: &Slave, dir: Option<&str>) -> Result<()> {
    let data = data_dir(s, dir)?;
    fsutil::write_atomic(&data.join(STOP), b"", 0o600)?;
    remove_control(&data, PAUSE)?;
    let running = running_postmaster(&data).is_some();
    if running && data.join("standby.signal").exists() {
        // In standby mode a failing restore_command never ends recovery: promote.
        let pg_ctl = s.bin_dir()?.join("pg_ctl");
        let out = crate::proc::Cmd::new(&pg_ctl)
            .arg("promote")
            .arg("-w")
            .arg("-D")
            .arg(&data)
            .run()
            .map_err(|e| WalmgrError::command(pg_ctl.display().to_string(), e.detail()))?;
        if !out.status.success() {
            return Err(WalmgrError::command(
                format!("{} promote -D {}", pg_ctl.display(), data.display()),
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', " "),
            ));
        }
        println!("standby promoted");
    } else if running && data.join("recovery.signal").exists() && promote_if_paused(&data)? {
        println!("recovery was paused at its target: promoted");
    } else {
        println!("STOP set: recovery ends at the end of the archive");
    }
    Ok(())
}

/// A recovery (recovery.signal) that reached its target with recovery_target_action =
/// pause waits there for ever: STOP no longer matters (no more WAL is asked for).
/// Asked over the server's socket (from postmaster.pid): paused → `pg_promote()`.
fn promote_if_paused(data: &Path) -> Result<bool> {
    let pid = crate::pg::cluster::Layout::default()
        .postmaster_pid(data)
        .map_err(super::pg::cluster_error)?;
    let Some(pid) = pid else {
        return Ok(false);
    };
    let host = pid
        .socket_dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "localhost".into());
    let conninfo = format!("host='{host}' port={} dbname=template1", pid.port);
    let major = crate::pg::cluster::data_version(data)
        .map(|v| v.major())
        .unwrap_or(15);
    super::pg::block_on(async {
        // Without hot_standby nobody may connect during recovery, and such a recovery
        // never waits paused (PostgreSQL shuts down instead): nothing to end here.
        let c = match super::pg::connect(&conninfo).await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("{e}; cannot ask whether its recovery is paused");
                return Ok(false);
            }
        };
        let q = if major >= 14 {
            "SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'"
        } else {
            "SELECT pg_is_in_recovery() AND pg_is_wal_replay_paused()"
        };
        let paused: bool = c
            .query_one(q, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| super::pg::error(&conninfo, &e))?;
        if !paused {
            return Ok(false);
        }
        let done: bool = c
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| super::pg::error(&conninfo, &e))?;
        if !done {
            return Err(WalmgrError::command(
                format!("pg_promote() on {}", data.display()),
                "did not finish within 60 s",
            ));
        }
        Ok(true)
    })
}
