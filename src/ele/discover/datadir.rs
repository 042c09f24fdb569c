//! What a data directory says without a server: version, running postmaster, recovery,
//! the configuration's primary_conninfo and cluster_name, global/pg_control.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Facts, Role};
use crate::pg::cluster::{self, Layout};
use crate::pg::conf::Settings;
use crate::pg::lsn::Lsn;

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// What the data directory says without a server.
pub(super) fn read_files(c: &mut Facts) {
    let Some(data) = c.data_dir.clone() else {
        c.problems.push("no data directory known".into());
        return;
    };
    let lay = Layout::default();
    match cluster::data_version(&data) {
        Ok(v) => c.version = Some(v.to_string()),
        // Not a data directory, or not ours to read: nothing else there will be.
        Err(e) => return c.problems.push(e.to_string()),
    }
    match lay.postmaster_pid(&data) {
        Ok(Some(p)) if p.alive() => {
            c.online = true;
            c.pid = Some(p.pid);
            c.port = p.port;
            if p.socket_dir.is_some() {
                c.socket_dir = p.socket_dir.clone();
            }
            if c.socket_dir.is_none() {
                // No Unix socket: the first TCP address.
                c.socket_dir = p
                    .listen_addr
                    .as_deref()
                    .map(|a| if a == "*" { "127.0.0.1" } else { a })
                    .map(PathBuf::from);
            }
        }
        Ok(_) => c.online = false,
        Err(e) => c.problems.push(e.to_string()),
    }
    let major = c
        .version
        .as_deref()
        .and_then(cluster::PgVersion::parse)
        .map(|v| v.major());
    let in_recovery = if major.is_some_and(|m| m < 12) {
        exists(&data.join("recovery.conf"))
    } else {
        exists(&data.join("standby.signal")) || exists(&data.join("recovery.signal"))
    };
    c.role = Some(if in_recovery {
        Role::Replica
    } else {
        Role::Primary
    });
    // The configuration as the server reads it: Debian's (which took the data
    // directory's postgresql.auto.conf in), else the data directory's own.
    let mut settings = c.settings.take();
    if settings.is_none() {
        let mut s = Settings::default();
        let conf = data.join("postgresql.conf");
        let r = lay.read_conf(&conf, &mut s).and_then(|_| {
            let auto = data.join("postgresql.auto.conf");
            if auto.is_file() {
                lay.read_conf(&auto, &mut s)?;
            }
            if major.is_some_and(|m| m < 12) && data.join("recovery.conf").is_file() {
                lay.read_conf(&data.join("recovery.conf"), &mut s)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => settings = Some(s),
            Err(e) => c.problems.push(e.to_string()),
        }
    }
    if let Some(s) = &settings {
        c.cluster_name = s.get("cluster_name").map(str::to_string);
        if in_recovery {
            c.master_host = s.get("primary_conninfo").map(str::to_string);
        }
    }
    c.settings = settings;
    if major.is_some_and(|m| m >= 11) {
        match fs::read(data.join("global/pg_control")) {
            Ok(b) => {
                if let Some(ctl) = ControlFile::parse(&b) {
                    c.system_identifier = Some(ctl.system_identifier.to_string());
                    c.timeline = Some(ctl.timeline);
                    c.wal_lsn = Some(Lsn(ctl.checkpoint));
                }
            }
            Err(e) => c.problems.push(format!(
                "cannot read {}: {e}",
                data.join("global/pg_control").display()
            )),
        }
    }
}

/// The part of `global/pg_control` (ControlFileData, PostgreSQL 11 and later, this
/// machine's byte order) that says which system and where its last checkpoint is.
#[derive(Debug, PartialEq, Eq)]
struct ControlFile {
    system_identifier: u64,
    checkpoint: u64,
    timeline: u32,
}

impl ControlFile {
    fn parse(b: &[u8]) -> Option<ControlFile> {
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        // system_identifier, pg_control_version, catalog_version_no, state, time,
        // checkPoint, then checkPointCopy (redo, ThisTimeLineID, ...).
        Some(ControlFile {
            system_identifier: u64_at(0)?,
            checkpoint: u64_at(32)?,
            timeline: u32_at(48)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_fields() {
        let mut b = vec![0u8; 296];
        b[0..8].copy_from_slice(&7_311_111_111_111_111_111u64.to_ne_bytes());
        b[32..40].copy_from_slice(&0x1_0000_0028u64.to_ne_bytes());
        b[48..52].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            ControlFile::parse(&b),
            Some(ControlFile {
                system_identifier: 7_311_111_111_111_111_111,
                checkpoint: 0x1_0000_0028,
                timeline: 3
            })
        );
        assert_eq!(ControlFile::parse(&b[..40]), None);
    }
}
