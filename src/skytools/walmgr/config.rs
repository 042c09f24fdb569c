//! walmgr's ini: one section (the file's first, as Skytools read it), a master ini when
//! it has `master_data`, a slave ini otherwise. Everything is validated here, once, into
//! [`Settings`]; the error names the file, section, key and value.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{expand_home, Config, ConfigError, Section};

use super::codec::Compression;
use super::error::{Result, WalmgrError};

/// Skytools keys that old inis carry and that mean nothing here (record-based shipping,
/// skylog, rsync options): accepted so a drop-in upgrade does not fail, otherwise ignored.
const IGNORED_KEYS: &[&str] = &[
    "use_skylog",
    "use_xlog_functions",
    "loop_delay",
    "command_interval",
    "periodic_command",
    "keep_symlinks",
    "slave_config_dir",
];

const COMMON_KEYS: &[&str] = &[
    "job_name",
    "logfile",
    "pidfile",
    "slave",
    "walmgr_data",
    "completed_wals",
    "partial_wals",
    "full_backup",
    "config_backup",
    "keep_backups",
    "archive_command",
    "walmgr_path",
];

const MASTER_KEYS: &[&str] = &[
    "master_db",
    "master_data",
    "master_config",
    "master_bin",
    "master_restart_cmd",
    "slave_config",
    "compression",
    "compression_level",
    "check_wal_header",
    "hot_standby",
    "setup_method",
    "ssh",
    "ssh_connect_timeout",
    "ssh_alive_interval",
    "ssh_alive_count",
    "remote_timeout",
    "remote_walmgr",
    "backup_lock",
    "archive_async",
    "parallel",
    "spool_dir",
    "archive_queue_max",
    "archive_async_wait",
];

const SLAVE_KEYS: &[&str] = &[
    "slave_data",
    "slave_bin",
    "slave_stop_cmd",
    "slave_start_cmd",
    "backup_datadir",
    "primary_conninfo",
    "restore_command",
    "tablespace_dir",
    "tablespace_roots",
    "restore_user",
    "standby_wait",
    "restore_prefetch",
];

/// Where the store lives, seen from the side that reads this ini.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePaths {
    /// `walmgr_data` (default: the `slave` path).
    pub root: PathBuf,
    pub completed_wals: PathBuf,
    pub partial_wals: PathBuf,
    pub full_backup: PathBuf,
    pub config_backup: PathBuf,
}

/// What the store side needs: paths plus the retention rules.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub paths: StorePaths,
    /// 0 = keep every backup.
    pub keep_backups: usize,
    /// Run (sh -c, WALMGR_BACKUP=<set dir>) before a set is rotated away.
    pub archive_command: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlaveLocation {
    Local(PathBuf),
    Remote { host: String, path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupMethod {
    AlterSystem,
    ConfigFile,
}

#[derive(Debug, Clone)]
pub struct Master {
    pub ini: PathBuf,
    pub job_name: String,
    pub logfile: Option<PathBuf>,
    pub master_db: String,
    pub master_data: PathBuf,
    pub master_config: Option<PathBuf>,
    pub master_bin: Option<PathBuf>,
    pub master_restart_cmd: Option<String>,
    pub slave: SlaveLocation,
    pub slave_config: Option<PathBuf>,
    pub store: StoreSettings,
    pub compression: Compression,
    pub compression_level: i32,
    pub check_wal_header: bool,
    pub hot_standby: bool,
    pub setup_method: SetupMethod,
    pub ssh: Vec<String>,
    /// ssh -o ConnectTimeout (when `ssh` runs ssh).
    pub ssh_connect_timeout: Duration,
    /// ssh -o ServerAliveInterval / ServerAliveCountMax: a silent link is given up
    /// after interval × count.
    pub ssh_alive_interval: Duration,
    pub ssh_alive_count: u32,
    /// The longest a remote call may take (the base backup stream excepted, which the
    /// keepalives bound instead); then ssh's process group is killed.
    pub remote_timeout: Duration,
    pub remote_walmgr: String,
    pub backup_lock: PathBuf,
    /// What archive_command names walmgr by (default: see `super::stable_exe`).
    pub walmgr_path: Option<PathBuf>,
    /// `archive_async` and friends (see super::pusher).
    pub push: AsyncPush,
}

/// Background, parallel archiving (`archive_async = yes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncPush {
    pub enabled: bool,
    /// Segments pushed at once (`parallel`).
    pub parallel: usize,
    /// Where the pusher's done records and lock live (default
    /// `<dir of master_data>/<name of master_data>.walmgr-spool`: outside the data
    /// directory, so base backups never carry them).
    pub spool_dir: PathBuf,
    /// Segments waiting beyond which every archive_command call warns (`archive_queue_max`).
    pub queue_max: u64,
    /// How long archive_command waits for the pusher before storing its segment itself.
    pub wait: Duration,
}

#[derive(Debug, Clone)]
pub struct Slave {
    pub ini: PathBuf,
    pub job_name: String,
    pub logfile: Option<PathBuf>,
    pub slave_data: Option<PathBuf>,
    pub slave_bin: Option<PathBuf>,
    pub slave_stop_cmd: Option<String>,
    pub slave_start_cmd: Option<String>,
    pub store: StoreSettings,
    pub backup_datadir: bool,
    pub primary_conninfo: Option<String>,
    pub restore_command: Option<String>,
    pub tablespace_dir: Option<PathBuf>,
    /// Without tablespace_dir, restore puts a tablespace back at its original path
    /// only if that is under one of these (absolute, no `..`).
    pub tablespace_roots: Vec<PathBuf>,
    /// Who a restore started as root runs as (default: the store's owner).
    pub restore_user: Option<String>,
    pub standby_wait: Duration,
    /// What restore_command names walmgr by (default: see `super::stable_exe`).
    pub walmgr_path: Option<PathBuf>,
    /// Segments xrestore fetches ahead into `<data>/walmgr_prefetch` (0 = off).
    pub restore_prefetch: usize,
}

#[derive(Debug, Clone)]
pub enum Settings {
    Master(Box<Master>),
    Slave(Box<Slave>),
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings> {
        let cfg = Config::load(path)?;
        // Commands written into PostgreSQL's settings must still work from another cwd.
        let ini = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Settings::from_config(&cfg, ini)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Settings> {
        Settings::from_config(&Config::parse(text, path)?, path.to_path_buf())
    }

    fn from_config(cfg: &Config, ini: PathBuf) -> Result<Settings> {
        let section = cfg
            .sections()
            .next()
            .ok_or_else(|| ConfigError::Syntax {
                path: cfg.path().to_path_buf(),
                line: 1,
                reason: "no section (walmgr reads the first section, e.g. [walmgr])".into(),
            })?
            .to_string();
        let sec = cfg.section(&section);
        if sec.raw("master_data")?.is_some() {
            known(&sec, MASTER_KEYS)?;
            Ok(Settings::Master(Box::new(master(&sec, ini)?)))
        } else {
            known(&sec, SLAVE_KEYS)?;
            Ok(Settings::Slave(Box::new(slave(&sec, ini)?)))
        }
    }

    pub fn ini(&self) -> &Path {
        match self {
            Settings::Master(m) => &m.ini,
            Settings::Slave(s) => &s.ini,
        }
    }

    pub fn logfile(&self) -> Option<&Path> {
        match self {
            Settings::Master(m) => m.logfile.as_deref(),
            Settings::Slave(s) => s.logfile.as_deref(),
        }
    }

    /// The store as a local directory, if this side can reach it without ssh.
    pub fn local_store(&self) -> Option<&StoreSettings> {
        match self {
            Settings::Master(m) => match m.slave {
                SlaveLocation::Local(_) => Some(&m.store),
                SlaveLocation::Remote { .. } => None,
            },
            Settings::Slave(s) => Some(&s.store),
        }
    }
}

impl Master {
    /// The ssh transport to the slave, when the store is remote.
    pub fn remote(&self) -> Option<super::remote::Remote> {
        match &self.slave {
            SlaveLocation::Local(_) => None,
            SlaveLocation::Remote { host, .. } => Some(super::remote::Remote {
                ssh: self.ssh.clone(),
                connect_timeout: self.ssh_connect_timeout,
                alive_interval: self.ssh_alive_interval,
                alive_count: self.ssh_alive_count,
                timeout: Some(self.remote_timeout),
                host: host.clone(),
                walmgr: self.remote_walmgr.clone(),
                // Checked at load time: a remote slave needs slave_config.
                ini: self.slave_config.clone().unwrap_or_default(),
            }),
        }
    }

    /// Directory of pg_ctl and friends: `master_bin`, else the Debian layout for the
    /// data directory's PG_VERSION.
    pub fn bin_dir(&self) -> Result<PathBuf> {
        bin_dir(self.master_bin.as_deref(), &self.master_data)
    }
}

impl Slave {
    pub fn require_data(&self) -> Result<&Path> {
        self.slave_data.as_deref().ok_or_else(|| {
            WalmgrError::Config(ConfigError::MissingKey {
                path: self.ini.clone(),
                section: "walmgr".into(),
                key: "slave_data".into(),
            })
        })
    }

    pub fn bin_dir(&self) -> Result<PathBuf> {
        bin_dir(self.slave_bin.as_deref(), self.require_data()?)
    }
}

fn bin_dir(configured: Option<&Path>, data: &Path) -> Result<PathBuf> {
    if let Some(b) = configured {
        return Ok(b.to_path_buf());
    }
    let v = crate::pg::cluster::data_version(data).map_err(super::pg::cluster_error)?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

/// A value the ini has but walmgr cannot use.
fn bad(sec: &Section, key: &str, value: &str, reason: impl Into<String>) -> WalmgrError {
    sec.bad_value(key, value, reason).into()
}

fn known(sec: &Section, side: &[&str]) -> Result<()> {
    let all: Vec<&str> = COMMON_KEYS
        .iter()
        .chain(side)
        .chain(IGNORED_KEYS)
        .copied()
        .collect();
    Ok(sec.reject_unknown(&all)?)
}

/// A store path key; Skytools master inis write them as `host:/path` (from
/// `%(slave)s/...`), of which only the path is meant.
fn store_path(sec: &Section, key: &str, root: &Path, default: &str) -> Result<PathBuf> {
    match sec.string(key)? {
        None => Ok(root.join(default)),
        Some(v) => match split_remote(&v) {
            Some((_, p)) => Ok(expand_home(p)),
            None => Ok(expand_home(&v)),
        },
    }
}

fn store(sec: &Section, slave_path: &Path) -> Result<StoreSettings> {
    let root = match sec.string("walmgr_data")? {
        Some(v) => expand_home(split_remote(&v).map(|(_, p)| p).unwrap_or(&v)),
        None => slave_path.to_path_buf(),
    };
    let paths = StorePaths {
        completed_wals: store_path(sec, "completed_wals", &root, "logs.complete")?,
        partial_wals: store_path(sec, "partial_wals", &root, "logs.partial")?,
        full_backup: store_path(sec, "full_backup", &root, "data.master")?,
        config_backup: store_path(sec, "config_backup", &root, "config.backup")?,
        root,
    };
    Ok(StoreSettings {
        paths,
        keep_backups: sec.number("keep_backups", 0usize, ..)?,
        archive_command: sec.string("archive_command")?,
    })
}

fn job_name(sec: &Section) -> Result<String> {
    Ok(sec
        .string("job_name")?
        .unwrap_or_else(|| sec.name().to_string()))
}

fn master(sec: &Section, ini: PathBuf) -> Result<Master> {
    let slave_raw = sec.required("slave")?;
    let slave = match split_remote(&slave_raw) {
        // ssh would take a host starting with '-' for an option.
        Some((host, _)) if host.starts_with('-') => {
            return Err(bad(
                sec,
                "slave",
                &slave_raw,
                "a host name cannot start with '-'",
            ))
        }
        Some((host, path)) if !path.is_empty() => SlaveLocation::Remote {
            host: host.to_string(),
            path: expand_home(path),
        },
        Some(_) => {
            return Err(bad(
                sec,
                "slave",
                &slave_raw,
                "expected /path or host:/path",
            ))
        }
        None => SlaveLocation::Local(expand_home(&slave_raw)),
    };
    let slave_path = match &slave {
        SlaveLocation::Local(p) | SlaveLocation::Remote { path: p, .. } => p.clone(),
    };
    let slave_config = sec.path("slave_config")?;
    if matches!(slave, SlaveLocation::Remote { .. }) && slave_config.is_none() {
        return Err(bad(
            sec,
            "slave",
            &slave_raw,
            "a remote slave needs slave_config (the slave's ini on that host)",
        ));
    }
    let compression = match sec.string("compression")? {
        None => Compression::None,
        Some(v) => Compression::parse(&v).ok_or_else(|| {
            bad(
                sec,
                "compression",
                &v,
                "expected none, gzip or zstd (or 0/1)",
            )
        })?,
    };
    let level = match sec.string("compression_level")? {
        None => compression.default_level(),
        Some(v) => {
            let (lo, hi) = compression.level_range();
            match v.trim().parse::<i32>() {
                Ok(n) if (lo..=hi).contains(&n) => n,
                _ => {
                    return Err(bad(
                        sec,
                        "compression_level",
                        &v,
                        format!("expected {lo}..{hi} for compression {}", compression.name()),
                    ))
                }
            }
        }
    };
    let setup_method = match sec.string("setup_method")?.as_deref().map(str::trim) {
        None | Some("alter_system") => SetupMethod::AlterSystem,
        Some("config_file") => SetupMethod::ConfigFile,
        Some(v) => {
            return Err(bad(
                sec,
                "setup_method",
                v,
                "expected alter_system or config_file",
            ))
        }
    };
    let master_config = sec.path("master_config")?;
    if setup_method == SetupMethod::ConfigFile && master_config.is_none() {
        return Err(bad(
            sec,
            "setup_method",
            "config_file",
            "needs master_config (the postgresql.conf to edit)",
        ));
    }
    let ssh_raw = sec
        .string("ssh")?
        .unwrap_or_else(|| "ssh -o BatchMode=yes".into());
    let ssh = shlex::split(&ssh_raw)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| bad(sec, "ssh", &ssh_raw, "not a command line"))?;
    let secs = |key: &str, default: u64| {
        sec.duration(
            key,
            Duration::from_secs(default),
            (
                Bound::Included(Duration::from_secs(1)),
                Bound::Included(Duration::from_secs(86400)),
            ),
        )
    };
    let ssh_connect_timeout = secs("ssh_connect_timeout", 10)?;
    let ssh_alive_interval = secs("ssh_alive_interval", 10)?;
    let ssh_alive_count = sec.number("ssh_alive_count", 3u32, 1..=100)?;
    let remote_timeout = secs("remote_timeout", 300)?;
    let master_data = sec.path("master_data")?.unwrap_or_default();
    let backup_lock = match sec.path("backup_lock")? {
        Some(p) => p,
        None => crate::fsutil::parent_dir(&master_data).join("walmgr-backup.lock"),
    };
    let push = AsyncPush {
        enabled: sec.bool("archive_async", false)?,
        parallel: sec.number("parallel", 4usize, 1..=32)?,
        spool_dir: match sec.path("spool_dir")? {
            Some(p) => p,
            None => {
                let base = master_data
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy();
                crate::fsutil::parent_dir(&master_data).join(format!("{base}.walmgr-spool"))
            }
        },
        queue_max: sec.number("archive_queue_max", 256u64, 1..)?,
        wait: sec.duration(
            "archive_async_wait",
            Duration::from_secs(30),
            (
                Bound::Included(Duration::ZERO),
                Bound::Included(Duration::from_secs(3600)),
            ),
        )?,
    };
    Ok(Master {
        job_name: job_name(sec)?,
        logfile: sec.path("logfile")?,
        master_db: sec
            .string("master_db")?
            .unwrap_or_else(|| "dbname=template1".into()),
        master_data,
        master_config,
        master_bin: sec.path("master_bin")?,
        master_restart_cmd: sec.string("master_restart_cmd")?,
        store: store(sec, &slave_path)?,
        slave,
        slave_config,
        compression,
        compression_level: level,
        check_wal_header: sec.bool("check_wal_header", true)?,
        hot_standby: sec.bool("hot_standby", false)?,
        setup_method,
        ssh,
        ssh_connect_timeout,
        ssh_alive_interval,
        ssh_alive_count,
        remote_timeout,
        remote_walmgr: sec
            .string("remote_walmgr")?
            .unwrap_or_else(|| "walmgr".into()),
        push,
        backup_lock,
        walmgr_path: walmgr_path(sec)?,
        ini,
    })
}

fn slave(sec: &Section, ini: PathBuf) -> Result<Slave> {
    let slave_raw = sec.required("slave")?;
    if split_remote(&slave_raw).is_some() {
        return Err(bad(
            sec,
            "slave",
            &slave_raw,
            "a slave ini names its own local walshipping directory (no host:)",
        ));
    }
    let wait = sec.duration(
        "standby_wait",
        Duration::from_secs(1),
        (
            Bound::Excluded(Duration::ZERO),
            Bound::Included(Duration::from_secs(3600)),
        ),
    )?;
    let mut tablespace_roots = Vec::new();
    for r in sec.list("tablespace_roots")? {
        let p = expand_home(&r);
        if !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(
                sec,
                "tablespace_roots",
                &r,
                "each entry must be an absolute path without '..'",
            ));
        }
        tablespace_roots.push(p);
    }
    Ok(Slave {
        job_name: job_name(sec)?,
        logfile: sec.path("logfile")?,
        slave_data: sec.path("slave_data")?,
        slave_bin: sec.path("slave_bin")?,
        slave_stop_cmd: sec.string("slave_stop_cmd")?,
        slave_start_cmd: sec.string("slave_start_cmd")?,
        store: store(sec, &expand_home(&slave_raw))?,
        backup_datadir: sec.bool("backup_datadir", true)?,
        primary_conninfo: sec.string("primary_conninfo")?,
        restore_command: sec.string("restore_command")?,
        tablespace_dir: sec.path("tablespace_dir")?,
        tablespace_roots,
        restore_user: sec.string("restore_user")?,
        standby_wait: wait,
        walmgr_path: walmgr_path(sec)?,
        restore_prefetch: sec.number("restore_prefetch", 8usize, 0..=64)?,
        ini,
    })
}

/// `walmgr_path`: an absolute path (PostgreSQL runs the command from its data dir).
fn walmgr_path(sec: &Section) -> Result<Option<PathBuf>> {
    match sec.path("walmgr_path")? {
        Some(p) if !p.is_absolute() => Err(bad(
            sec,
            "walmgr_path",
            &p.to_string_lossy(),
            "must be an absolute path",
        )),
        p => Ok(p),
    }
}

/// `host:/path` → (host, path). A plain path (or one whose colon comes after a slash)
/// is local.
pub fn split_remote(v: &str) -> Option<(&str, &str)> {
    let (host, path) = v.split_once(':')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings> {
        Settings::parse(text, Path::new("/etc/wal.ini"))
    }

    #[test]
    fn skytools_master_ini_with_remote_slave() {
        let s = parse(
            "[wal-master]\nmaster_data = /pg/main\nslave = standby1:/var/lib/walshipping\n\
             slave_config = /etc/wal-slave.ini\ncompleted_wals = %(slave)s/logs.complete\n\
             use_skylog = 1\nloop_delay = 10.0\ncompression = 1\n",
        )
        .unwrap();
        let Settings::Master(m) = s else { panic!() };
        assert_eq!(
            m.slave,
            SlaveLocation::Remote {
                host: "standby1".into(),
                path: "/var/lib/walshipping".into()
            }
        );
        assert_eq!(
            m.store.paths.completed_wals,
            PathBuf::from("/var/lib/walshipping/logs.complete")
        );
        assert_eq!(
            m.store.paths.full_backup,
            PathBuf::from("/var/lib/walshipping/data.master")
        );
        assert_eq!(m.compression, Compression::Gzip);
        assert_eq!(m.compression_level, 6);
        assert_eq!(m.master_db, "dbname=template1");
        assert_eq!(m.backup_lock, PathBuf::from("/pg/walmgr-backup.lock"));
        assert_eq!(m.job_name, "wal-master");
        let r = m.remote().unwrap();
        assert_eq!(r.connect_timeout, Duration::from_secs(10));
        assert_eq!(r.alive_interval, Duration::from_secs(10));
        assert_eq!(r.alive_count, 3);
        assert_eq!(r.timeout, Some(Duration::from_secs(300)));
        let s = parse(
            "[w]\nmaster_data = /pg\nslave = h:/ws\nslave_config = /s.ini\n\
             remote_timeout = 20\nssh_connect_timeout = 3\nssh_alive_count = 5\n",
        )
        .unwrap();
        let Settings::Master(m) = s else { panic!() };
        let r = m.remote().unwrap();
        assert_eq!(r.timeout, Some(Duration::from_secs(20)));
        assert_eq!(r.connect_timeout, Duration::from_secs(3));
        assert_eq!(r.alive_count, 5);
        let e = parse("[w]\nmaster_data = /pg\nslave = /ws\nremote_timeout = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("remote_timeout"), "{e}");
    }

    #[test]
    fn slave_ini_defaults() {
        let s =
            parse("[walmgr]\nslave = /ws\nslave_data = /pg/standby\nkeep_backups = 3\n").unwrap();
        let Settings::Slave(sl) = s else { panic!() };
        assert_eq!(
            sl.store.paths.partial_wals,
            PathBuf::from("/ws/logs.partial")
        );
        assert_eq!(sl.store.keep_backups, 3);
        assert!(sl.backup_datadir);
        assert_eq!(sl.standby_wait, Duration::from_secs(1));
        assert_eq!(sl.restore_prefetch, 8);
    }

    #[test]
    fn async_archiving_keys() {
        let Settings::Master(m) = parse("[w]\nmaster_data = /pg/15/main\nslave = /ws\n").unwrap()
        else {
            panic!()
        };
        assert!(!m.push.enabled);
        assert_eq!(m.push.parallel, 4);
        assert_eq!(m.push.spool_dir, PathBuf::from("/pg/15/main.walmgr-spool"));
        assert_eq!(m.push.queue_max, 256);
        let Settings::Master(m) = parse(
            "[w]\nmaster_data = /pg\nslave = /ws\narchive_async = yes\nparallel = 3\n\
             spool_dir = /run/sp\narchive_queue_max = 5\narchive_async_wait = 2\n",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            m.push,
            AsyncPush {
                enabled: true,
                parallel: 3,
                spool_dir: "/run/sp".into(),
                queue_max: 5,
                wait: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "[w]\nmaster_data=/d\nslave=/s\ncompression=lz4\n",
                "compression",
            ),
            (
                "[w]\nmaster_data=/d\nslave=/s\ncompression=zstd\ncompression_level=30\n",
                "compression_level",
            ),
            ("[w]\nmaster_data=/d\nslave=h:/s\n", "slave"),
            ("[w]\nmaster_data=/d\n", "slave"),
            (
                "[w]\nmaster_data=/d\nslave=-oProxyCommand=x:/p\nslave_config=/s.ini\n",
                "slave",
            ),
            ("[w]\nmaster_data=/d\nslave=/s\nslave_dta=/x\n", "slave_dta"),
            ("[w]\nslave=/s\nkeep_backups=-1\n", "keep_backups"),
            ("[w]\nslave=/s\nstandby_wait=0\n", "standby_wait"),
            (
                "[w]\nmaster_data=/d\nslave=/s\nsetup_method=config_file\n",
                "setup_method",
            ),
            ("[w]\nslave=/s\nwalmgr_path=bin/walmgr\n", "walmgr_path"),
            ("[w]\nmaster_data=/d\nslave=/s\nparallel=0\n", "parallel"),
            (
                "[w]\nmaster_data=/d\nslave=/s\narchive_async=maybe\n",
                "archive_async",
            ),
            (
                "[w]\nmaster_data=/d\nslave=/s\narchive_queue_max=0\n",
                "archive_queue_max",
            ),
            ("[w]\nslave=/s\nrestore_prefetch=65\n", "restore_prefetch"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("/etc/wal.ini"),
                "{text:?}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse("").unwrap_err().to_string().contains("no section"));
    }

    #[test]
    fn walmgr_path_names_walmgr_in_the_commands() {
        let Settings::Slave(sl) = parse("[w]\nslave=/s\nwalmgr_path=/opt/hk/walmgr\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(sl.walmgr_path.as_deref(), Some(Path::new("/opt/hk/walmgr")));
        let c = super::super::self_command(&sl.ini, sl.walmgr_path.as_deref(), "xrestore %f %p");
        assert!(c.starts_with("/opt/hk/walmgr /etc/wal.ini xrestore"), "{c}");
    }

    #[test]
    fn remote_split() {
        assert_eq!(split_remote("h:/p"), Some(("h", "/p")));
        assert_eq!(split_remote("/p:x"), None);
        assert_eq!(split_remote("/p"), None);
    }
}
