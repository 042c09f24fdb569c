//! `backup` on the master, and the store side of a remote backup.
//!
//! One session runs `pg_backup_start` … `pg_backup_stop` (non-exclusive: backup mode
//! ends when the session does, so a crash of walmgr never leaves the server in backup
//! mode). The tar stream is produced on a blocking thread while the session stays open;
//! it goes through a pipe to a receiver thread: the store's staging writer when the store
//! is local, `ssh … walmgr slave.ini xreceive-backup` when it is remote. backup_label and
//! tablespace_map only exist once pg_backup_stop returned, so they are the stream's last
//! entries and the receiver picks them up from it.
//!
//! Remote protocol (the slave's own ini decides paths, rotation and purging):
//! ```text
//! xreceive-backup <set> <compression> <level>   stdin: the tar stream
//!     stdout: "set <name>" (the name actually used) and "sha256 <hex> <bytes>"
//!     leaves <full_backup>/.tmp-<name>.<pid>/ with base.tar* and received.json
//! xcommit-backup <name> <sha256> <bytes> [stop_lsn=…] [started_at=…] [pg_version=…]
//!                [system_identifier=…]
//!     compares with received.json (mismatch: the staging is removed, exit 1), commits,
//!     rotates to keep_backups, purges WAL older than the oldest kept set
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::backupset::{self, Backups, CommitInfo, Received, SetName, Staging};
use super::basebackup::{Tablespace, TarWriter};
use super::codec::Compression;
use super::config::{Master, Slave, StorePaths, StoreSettings};
use super::error::{Result, WalmgrError};
use super::pg;
use super::store::WalStore;
use super::walname::WalName;
use crate::digest::HashWriter;
use crate::fsutil;
use crate::pg::lsn::Lsn;

type StreamWriter = HashWriter<BufWriter<File>>;

/// What the receiver thread hands back.
enum Receiver {
    Local(Box<(Staging, Received)>),
    /// (set name used, sha256, bytes) as the remote side printed them.
    Remote(SetName, String, u64),
}

/// What the session learned and produced.
struct Done {
    stop_lsn: Lsn,
    label: String,
    sent_sha256: String,
    sent_bytes: u64,
    receiver: Receiver,
    pg_version: Option<String>,
    system_identifier: Option<String>,
    config_files: Vec<PathBuf>,
}

/// `walmgr master.ini backup`
pub fn backup(m: &Master) -> Result<()> {
    let lock = crate::daemon::Pidfile::acquire(&m.backup_lock).map_err(|e| match e {
        crate::daemon::DaemonError::Running { .. }
        | crate::daemon::DaemonError::RunningUnlocked { .. } => {
            WalmgrError::Busy(format!("backup: {e}"))
        }
        e => WalmgrError::Internal(format!("backup: {e}")),
    })?;
    let started = SystemTime::now();
    let set = backupset::stamp(started);
    let started_at = humantime::format_rfc3339_seconds(started).to_string();
    let done = pg::block_on(session(m, &set))?;

    let commit = CommitInfo {
        stop_lsn: done.stop_lsn,
        started_at,
        pg_version: done.pg_version.clone(),
        system_identifier: done.system_identifier.clone(),
    };
    let (_, start_segment) = backupset::parse_label(&done.label).ok_or_else(|| {
        WalmgrError::Transfer(format!(
            "backup {set}: pg_backup_stop returned a backup_label without START WAL LOCATION"
        ))
    })?;
    let (name, result) = match done.receiver {
        Receiver::Local(b) => {
            let (staging, received) = *b;
            let name = staging.set.clone();
            check_same(
                &name,
                &done.sent_sha256,
                done.sent_bytes,
                &received.sha256,
                received.bytes,
            )?;
            staging.commit(&received, &commit)?;
            let r = after_commit(&m.store);
            let p = &m.store.paths;
            let r = r.and(save_config_files(
                &done.config_files,
                &p.config_backup,
                p.s3.as_ref(),
            ));
            (name, r)
        }
        Receiver::Remote(name, sha, bytes) => {
            let remote = m.remote().expect("remote store");
            let mut args = vec![
                "xcommit-backup".to_string(),
                name.to_string(),
                done.sent_sha256.clone(),
                done.sent_bytes.to_string(),
                format!("stop_lsn={}", commit.stop_lsn),
                format!("started_at={}", commit.started_at),
            ];
            if let Some(v) = &commit.pg_version {
                args.push(format!("pg_version={v}"));
            }
            if let Some(v) = &commit.system_identifier {
                args.push(format!("system_identifier={v}"));
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            // Sent even on a mismatch: the receiver compares too, refuses and cleans up.
            let out = remote.run(&argv, &mut io::empty());
            check_same(&name, &done.sent_sha256, done.sent_bytes, &sha, bytes)?;
            let out = out?;
            for l in out.lines().filter(|l| !l.trim().is_empty()) {
                log::info!("{}: {l}", remote.host);
            }
            if !done.config_files.is_empty() {
                log::info!(
                    "config files outside the data directory ({}) are not copied to a remote store",
                    done.config_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            (name, Ok(()))
        }
    };
    lock.release();
    println!(
        "backup {name}: {} bytes, start WAL {start_segment}, stop LSN {}",
        done.sent_bytes, done.stop_lsn
    );
    result
}

fn check_same(
    set: impl std::fmt::Display,
    sent: &str,
    sent_bytes: u64,
    got: &str,
    got_bytes: u64,
) -> Result<()> {
    if sent != got || sent_bytes != got_bytes {
        return Err(WalmgrError::Transfer(format!(
            "backup {set}: the store received {got_bytes} bytes with sha256 {got}, \
             {sent_bytes} bytes with sha256 {sent} were sent; not committed"
        )));
    }
    Ok(())
}

/// Rotation, then WAL older than the oldest kept set goes. A failed archive_command keeps
/// its set (and so its WAL) and is reported after the purge.
fn after_commit(st: &StoreSettings) -> Result<()> {
    let backups = Backups::new(&st.paths);
    let rotated = backups.rotate(st.keep_backups, st.archive_command.as_deref());
    if let Some(oldest) = backups.oldest_start_segment()? {
        WalStore::new(&st.paths).purge_before(&WalName::parse(&oldest)?)?;
    }
    rotated.map(|_| ())
}

/// Config files outside the data directory, into `config_backup` (a directory or an
/// S3 prefix).
fn save_config_files(files: &[PathBuf], dir: &Path, s3: Option<&crate::s3::Config>) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let s3 = s3.filter(|_| StorePaths::in_s3(dir));
    if s3.is_none() {
        fsutil::ensure_dir(dir, 0o700)?;
    }
    for f in files {
        let data = std::fs::read(f).map_err(|e| fsutil::PathError::new("read", f, e))?;
        let name = f.file_name().unwrap_or(f.as_os_str());
        match s3 {
            Some(cfg) => {
                super::s3sets::save_file(cfg, dir, &name.to_string_lossy(), &data)?;
            }
            None => fsutil::write_atomic(&dir.join(name), &data, 0o600)?,
        }
        log::info!("saved {} into {}", f.display(), dir.display());
    }
    Ok(())
}

/// The receiving end, running on its own thread while the session produces the stream.
fn start_receiver(
    m: &Master,
    set: &SetName,
    pipe_r: File,
) -> std::thread::JoinHandle<Result<Receiver>> {
    let set = set.clone();
    let (c, level) = (m.compression, m.compression_level);
    match m.remote() {
        None => {
            let backups = Backups::new(&m.store.paths);
            std::thread::spawn(move || {
                let mut st = backups.stage(&set, c, level)?;
                let r = st.receive(&mut BufReader::with_capacity(1 << 20, pipe_r))?;
                Ok(Receiver::Local(Box::new((st, r))))
            })
        }
        Some(mut remote) => std::thread::spawn(move || {
            // A base backup takes as long as it takes: ssh's keepalives, not
            // remote_timeout, end a dead link.
            remote.timeout = None;
            let mut pipe_r = pipe_r;
            let level = level.to_string();
            let out = remote.run_with(
                &["xreceive-backup", set.as_str(), c.name(), &level],
                |stdin| io::copy(&mut pipe_r, stdin).map(|_| ()),
            )?;
            parse_receipt(&out).ok_or_else(|| {
                WalmgrError::command(
                    format!("ssh {} walmgr xreceive-backup", remote.host),
                    format!("unexpected answer {:?}", out.trim()),
                )
            })
        }),
    }
}

/// "set <name>\nsha256 <hex> <bytes>\n"
fn parse_receipt(out: &str) -> Option<Receiver> {
    let mut set = None;
    let mut sum = None;
    for l in out.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["set", s] => set = SetName::parse(s).ok(),
            ["sha256", h, n] => sum = Some((h.to_string(), n.parse().ok()?)),
            _ => {}
        }
    }
    let (h, n) = sum?;
    Some(Receiver::Remote(set?, h, n))
}

async fn session(m: &Master, set: &SetName) -> Result<Done> {
    let ci = &m.master_db;
    let client = pg::connect(ci).await?;
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one("SELECT current_setting($1)", &[&name])
                .await
                .ok()
                .and_then(|r| r.try_get::<_, String>(0).ok())
        }
    };
    // Copying a directory that is not the server's would be a silent, useless backup.
    let data_dir = setting("data_directory").await;
    if let Some(dd) = &data_dir {
        let a = std::fs::canonicalize(dd).unwrap_or_else(|_| PathBuf::from(dd));
        let b = std::fs::canonicalize(&m.master_data).unwrap_or_else(|_| m.master_data.clone());
        if a != b {
            return Err(WalmgrError::Refused(format!(
                "backup: master_data {} is not the data directory of the server at {:?} ({dd})",
                m.master_data.display(),
                crate::pg::redact(ci)
            )));
        }
    }
    let pg_version = setting("server_version").await;
    let mut config_files = Vec::new();
    for key in ["config_file", "hba_file", "ident_file"] {
        if let Some(f) = setting(key).await {
            let p = PathBuf::from(f);
            let inside = data_dir.as_ref().is_some_and(|d| p.starts_with(d))
                || p.starts_with(&m.master_data);
            if !inside && p.is_absolute() {
                config_files.push(p);
            }
        }
    }
    let system_identifier = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.try_get::<_, String>(0).ok());
    let tablespaces: Vec<Tablespace> = client
        .query(
            "SELECT oid::int8, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE spcname NOT IN ('pg_default', 'pg_global')",
            &[],
        )
        .await
        .map_err(|e| pg::error(ci, &e))?
        .iter()
        .map(|r| Tablespace {
            oid: r.get::<_, i64>(0) as u32,
            location: PathBuf::from(r.get::<_, String>(1)),
        })
        .collect();

    // Close-on-exec: an ssh child holding the write end would never see the end of it.
    let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| WalmgrError::Internal(format!("backup: pipe: {e}")))?;
    let receiver = start_receiver(m, set, File::from(pipe_r));
    let writer: StreamWriter =
        HashWriter::new(BufWriter::with_capacity(1 << 20, File::from(pipe_w)));

    let label = format!("walmgr {set}");
    if let Err(e) = client
        .query_one("SELECT pg_backup_start($1, true)::text", &[&label])
        .await
    {
        drop(writer);
        let _ = receiver.join();
        return Err(pg::error(ci, &e));
    }
    log::info!(
        "backup {set}: pg_backup_start done, copying {}",
        m.master_data.display()
    );
    let streamed = stream(m, &client, writer, tablespaces).await;
    let streamed = match streamed {
        Ok(s) => s,
        Err(e) => {
            // Explicitly, rather than waiting for the session to end.
            if let Err(stop) = client.simple_query("SELECT pg_backup_stop(false)").await {
                log::debug!(
                    "pg_backup_stop(false) after failure: {}",
                    pg::error(ci, &stop)
                );
            }
            let recv = receiver.join();
            return Err(prefer_receiver_error(e, recv));
        }
    };
    let recv = receiver
        .join()
        .map_err(|_| WalmgrError::Internal(format!("backup {set}: receiver thread panicked")))??;
    let (stop_lsn, label, sent_sha256, sent_bytes) = streamed;
    Ok(Done {
        stop_lsn,
        label,
        sent_sha256,
        sent_bytes,
        receiver: recv,
        pg_version,
        system_identifier,
        config_files,
    })
}

/// A stream write failing is usually the receiver giving up (disk full, ssh gone):
/// its error is the one that says why.
fn prefer_receiver_error(
    sender: WalmgrError,
    recv: std::thread::Result<Result<Receiver>>,
) -> WalmgrError {
    match recv {
        Ok(Err(r)) if sender.to_string().contains("base backup stream") => r,
        _ => sender,
    }
}

/// Copy the data directory, pg_backup_stop, append backup_label and tablespace_map.
/// Returns (stop lsn, backup_label, sha256 and size of the stream sent).
async fn stream(
    m: &Master,
    client: &tokio_postgres::Client,
    writer: StreamWriter,
    tablespaces: Vec<Tablespace>,
) -> Result<(Lsn, String, String, u64)> {
    let data = m.master_data.clone();
    let tar = tokio::task::spawn_blocking(move || -> Result<TarWriter<StreamWriter>> {
        let mut w = TarWriter::new(writer);
        w.data_dir(&data, &tablespaces)?;
        Ok(w)
    })
    .await
    .map_err(|e| WalmgrError::Internal(format!("backup: copy thread: {e}")))??;
    log::info!(
        "copied {} files, {} bytes ({} changed during the copy); pg_backup_stop waits for the WAL to be archived",
        tar.stats.files,
        tar.stats.bytes,
        tar.stats.changed
    );
    let row = client
        .query_one(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)",
            &[],
        )
        .await
        .map_err(|e| pg::error(&m.master_db, &e))?;
    let lsn_text: String = row.get(0);
    let lsn: Lsn = lsn_text
        .parse()
        .map_err(|e| WalmgrError::Transfer(format!("backup: pg_backup_stop returned {e}")))?;
    let label: String = row.get(1);
    let map: Option<String> = row.get(2);
    let label2 = label.clone();
    let (sha, bytes) = tokio::task::spawn_blocking(move || -> Result<(String, u64)> {
        let mut tar = tar;
        tar.add_bytes(backupset::LABEL, label2.as_bytes(), 0o600)?;
        if let Some(map) = map.filter(|m| !m.trim().is_empty()) {
            tar.add_bytes(backupset::TABLESPACE_MAP, map.as_bytes(), 0o600)?;
        }
        let (sha, bytes, bw) = tar.finish()?.finish();
        bw.into_inner()
            .map_err(|e| WalmgrError::Transfer(format!("base backup stream: {}", e.error())))?;
        Ok((sha, bytes))
    })
    .await
    .map_err(|e| WalmgrError::Internal(format!("backup: copy thread: {e}")))??;
    Ok((lsn, label, sha, bytes))
}

/// The remote protocol stages on the store host's disk: an S3 store is written by the
/// master's `backup` itself.
fn refuse_s3(paths: &StorePaths, cmd: &str) -> Result<()> {
    if StorePaths::in_s3(&paths.full_backup) {
        return Err(WalmgrError::Refused(format!(
            "{cmd}: full_backup is in S3 ({}): the master's `backup` writes there itself",
            paths.full_backup.display()
        )));
    }
    Ok(())
}

/// `walmgr slave.ini xreceive-backup <set> <compression> <level>` (stdin: tar stream)
pub fn xreceive_backup(s: &Slave, set: &SetName, args: &[String]) -> Result<()> {
    let cmd = "xreceive-backup";
    if args.len() != 2 {
        return Err(WalmgrError::Usage(format!(
            "{cmd}: expected <set> <compression> <level>"
        )));
    }
    let c = Compression::parse(&args[0])
        .ok_or_else(|| WalmgrError::Usage(format!("{cmd}: bad compression {:?}", args[0])))?;
    let (lo, hi) = c.level_range();
    let level = args[1]
        .parse::<i32>()
        .ok()
        .filter(|l| (lo..=hi).contains(l))
        .ok_or_else(|| {
            WalmgrError::Usage(format!("{cmd}: bad level {:?} for {}", args[1], c.name()))
        })?;
    refuse_s3(&s.store.paths, cmd)?;
    let mut st = Staging::create(&s.store.paths.full_backup, set, c, level)?;
    let stdin = io::stdin();
    let r = st.receive(&mut BufReader::with_capacity(1 << 20, stdin.lock()))?;
    let name = st.set.clone();
    st.park(&r)?;
    println!("set {name}\nsha256 {} {}", r.sha256, r.bytes);
    Ok(())
}

/// `walmgr slave.ini xcommit-backup <set> <sha256> <bytes> [key=value...]`
pub fn xcommit_backup(s: &Slave, set: &SetName, args: &[String]) -> Result<()> {
    let cmd = "xcommit-backup";
    let (Some(sha), Some(bytes)) = (
        args.first(),
        args.get(1).and_then(|b| b.parse::<u64>().ok()),
    ) else {
        return Err(WalmgrError::Usage(format!(
            "{cmd}: expected <set> <sha256> <bytes> [key=value...]"
        )));
    };
    let mut c = CommitInfo::default();
    for kv in &args[2..] {
        match kv.split_once('=') {
            Some(("stop_lsn", v)) => {
                c.stop_lsn = v
                    .parse()
                    .map_err(|e| WalmgrError::Usage(format!("{cmd}: stop_lsn: {e}")))?
            }
            Some(("started_at", v)) => c.started_at = v.to_string(),
            Some(("pg_version", v)) => c.pg_version = Some(v.to_string()),
            Some(("system_identifier", v)) => c.system_identifier = Some(v.to_string()),
            _ => log::warn!("{cmd}: ignoring unknown argument {kv:?}"),
        }
    }
    refuse_s3(&s.store.paths, cmd)?;
    let (st, r) = Staging::resume(&s.store.paths.full_backup, set)?;
    // On a mismatch st is dropped here, which removes the staging directory.
    check_same(set, sha, bytes, &r.sha256, r.bytes)?;
    let info = st.commit(&r, &c)?;
    println!("committed {} (start WAL {})", info.set, info.start_segment);
    after_commit(&s.store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_parsing() {
        let Some(Receiver::Remote(s, h, n)) =
            parse_receipt("set 20261122T200000Z-2\nsha256 abcd 1024\n")
        else {
            panic!()
        };
        assert_eq!(
            (s.as_str(), h.as_str(), n),
            ("20261122T200000Z-2", "abcd", 1024)
        );
        assert!(parse_receipt("sha256 abcd 1024\n").is_none());
        assert!(parse_receipt("set ../x\nsha256 abcd 1024\n").is_none());
        assert!(parse_receipt("").is_none());
    }

    #[test]
    fn config_files_are_saved_by_name() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("postgresql.conf"), "port = 5432\n").unwrap();
        std::fs::write(etc.join("pg_hba.conf"), "local all all peer\n").unwrap();
        let dst = d.path().join("config.backup");
        save_config_files(
            &[etc.join("postgresql.conf"), etc.join("pg_hba.conf")],
            &dst,
            None,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("pg_hba.conf")).unwrap(),
            "local all all peer\n"
        );
        let e = save_config_files(&[etc.join("missing.conf")], &dst, None).unwrap_err();
        assert!(e.to_string().contains("missing.conf"), "{e}");
        save_config_files(&[], &d.path().join("never"), None).unwrap();
        assert!(!d.path().join("never").exists());
    }

    #[test]
    fn mismatch_is_one_line_naming_the_set() {
        let e = check_same("20261122T200000Z", "aa", 1, "bb", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("20261122T200000Z") && !e.contains('\n'), "{e}");
        check_same("x", "aa", 1, "aa", 1).unwrap();
    }
}
