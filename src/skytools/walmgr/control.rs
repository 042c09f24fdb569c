//! Standby control on the slave: `pause`, `continue` (PAUSE file), `boot` (STOP file and
//! promotion of a running standby).

use std::path::Path;

use super::config::Slave;
use super::error::{Result, WalmgrError};
use super::store::{self, WalStore};
use crate::fsutil::{self, PathError};

pub fn pause(s: &Slave) -> Result<()> {
    let st = WalStore::new(&s.store.paths);
    fsutil::write_atomic(&st.control_path(store::PAUSE), b"", 0o600)?;
    println!("replay paused: restore_command holds at the next segment");
    Ok(())
}

pub fn resume(s: &Slave) -> Result<()> {
    let st = WalStore::new(&s.store.paths);
    remove_control(&st, store::PAUSE)?;
    println!("replay continues");
    Ok(())
}

pub fn remove_control(st: &WalStore, which: &str) -> Result<()> {
    let p = st.control_path(which);
    match std::fs::remove_file(&p) {
        Ok(()) => fsutil::sync_dir(&st.dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PathError::new("remove", &p, e).into()),
    }
    Ok(())
}

/// The pid in `<data>/postmaster.pid` if that process is alive.
pub fn running_postmaster(data: &Path) -> Option<i32> {
    crate::pg::cluster::Layout::default().running_postmaster(data)
}

pub fn boot(s: &Slave) -> Result<()> {
    let st = WalStore::new(&s.store.paths);
    fsutil::write_atomic(&st.control_path(store::STOP), b"", 0o600)?;
    remove_control(&st, store::PAUSE)?;
    let data = s.require_data()?;
    if data.join("standby.signal").exists() && running_postmaster(data).is_some() {
        // In standby mode a failing restore_command never ends recovery: promote.
        let pg_ctl = s.bin_dir()?.join("pg_ctl");
        let out = crate::proc::Cmd::new(&pg_ctl)
            .arg("promote")
            .arg("-w")
            .arg("-D")
            .arg(data)
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
    } else {
        println!("STOP set: recovery ends at the end of the archive");
    }
    Ok(())
}
