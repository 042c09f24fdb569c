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
    "s3_endpoint",
    "s3_region",
    "s3_addressing",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_session_token",
    "s3_credentials_file",
    "s3_sse",
    "s3_sse_kms_key_id",
    "s3_conditional_put",
    "s3_timeout",
    "s3_retries",
    "s3_ca_file",
    "s3_part_size",
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
    "compression_threads",
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
    /// The store is in S3 (`slave` or `walmgr_data` = `s3://bucket/prefix`): the paths
    /// above are then `s3://bucket/key-prefix` URLs, and this says how to reach them.
    pub s3: Option<crate::s3::Config>,
}

impl StorePaths {
    /// A directory store's paths under `root` (tests): c, p, f and b.
    #[cfg(test)]
    pub fn under(root: &Path) -> StorePaths {
        StorePaths {
            completed_wals: root.join("c"),
            partial_wals: root.join("p"),
            full_backup: root.join("f"),
            config_backup: root.join("b"),
            root: root.to_path_buf(),
            s3: None,
        }
    }

    /// Is `p` (one of the paths above) an `s3://` location?
    pub fn in_s3(p: &Path) -> bool {
        p.to_str().is_some_and(|s| s.starts_with("s3://"))
    }
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
    /// This process writes the store itself: a directory, or an S3 store
    /// (`s3://bucket/prefix`, see [`StorePaths::s3`]).
    Local(PathBuf),
    Remote {
        host: String,
        path: PathBuf,
    },
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
    /// zstd's worker threads for one segment (1: in walmgr's own thread).
    pub compression_threads: u32,
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
        Some(v) if crate::s3::Url::parse(&v).is_some() => Err(bad(
            sec,
            key,
            &v,
            "an S3 store is named as a whole: slave (or walmgr_data) = s3://bucket/prefix",
        )),
        Some(v) => match split_remote(&v) {
            Some((_, p)) => Ok(expand_home(p)),
            None => Ok(expand_home(&v)),
        },
    }
}

/// A store path key of an S3 store: `s3://<the same bucket>/...` (Skytools'
/// `%(slave)s/logs.complete` gives that), default `<root>/<default>`.
/// With `local_ok`, the key may also name a local directory (base backups kept on this
/// host while the WAL is in S3).
fn s3_store_path(
    sec: &Section,
    key: &str,
    root: &crate::s3::Url,
    default: &str,
    local_ok: bool,
) -> Result<PathBuf> {
    let v = match sec.string(key)? {
        None => return Ok(PathBuf::from(format!("{root}/{default}"))),
        Some(v) => v,
    };
    match crate::s3::Url::parse(&v) {
        Some(Ok(u)) if u.bucket == root.bucket && !u.prefix.is_empty() => {
            Ok(PathBuf::from(u.to_string()))
        }
        Some(Ok(_)) => Err(bad(
            sec,
            key,
            &v,
            format!(
                "must be a prefix in the store's bucket (s3://{}/...)",
                root.bucket
            ),
        )),
        Some(Err(e)) => Err(bad(sec, key, &v, e)),
        None if local_ok && split_remote(&v).is_none() => Ok(expand_home(&v)),
        None => Err(bad(
            sec,
            key,
            &v,
            format!(
                "the store is in S3 ({root}): expected s3://{}/...",
                root.bucket
            ),
        )),
    }
}

fn store(sec: &Section, slave_path: &Path) -> Result<StoreSettings> {
    let root_raw = match sec.string("walmgr_data")? {
        Some(v) => v,
        None => slave_path.to_string_lossy().into_owned(),
    };
    let paths = match crate::s3::Url::parse(&root_raw) {
        Some(Ok(url)) => StorePaths {
            completed_wals: s3_store_path(sec, "completed_wals", &url, "logs.complete", false)?,
            partial_wals: s3_store_path(sec, "partial_wals", &url, "logs.partial", false)?,
            full_backup: s3_store_path(sec, "full_backup", &url, "data.master", true)?,
            config_backup: s3_store_path(sec, "config_backup", &url, "config.backup", true)?,
            root: PathBuf::from(url.to_string()),
            s3: Some(s3_config(sec, &url)?),
        },
        Some(Err(e)) => {
            let key = if sec.string("walmgr_data")?.is_some() {
                "walmgr_data"
            } else {
                "slave"
            };
            return Err(bad(sec, key, &root_raw, e));
        }
        None => {
            let root = expand_home(split_remote(&root_raw).map(|(_, p)| p).unwrap_or(&root_raw));
            StorePaths {
                completed_wals: store_path(sec, "completed_wals", &root, "logs.complete")?,
                partial_wals: store_path(sec, "partial_wals", &root, "logs.partial")?,
                full_backup: store_path(sec, "full_backup", &root, "data.master")?,
                config_backup: store_path(sec, "config_backup", &root, "config.backup")?,
                root,
                s3: None,
            }
        }
    };
    Ok(StoreSettings {
        paths,
        keep_backups: sec.number("keep_backups", 0usize, ..)?,
        archive_command: sec.string("archive_command")?,
    })
}

/// The `s3_*` keys of an S3 store.
fn s3_config(sec: &Section, url: &crate::s3::Url) -> Result<crate::s3::Config> {
    use crate::s3::{Addressing, Config as S3, Sse};
    let region = sec
        .string("s3_region")?
        .unwrap_or_else(|| "us-east-1".to_string());
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad(
            sec,
            "s3_region",
            &region,
            "expected a region name such as eu-west-1",
        ));
    }
    let (scheme, host, default_addressing) = match sec.string("s3_endpoint")? {
        Some(e) => {
            let (scheme, host) =
                S3::parse_endpoint(&e).map_err(|r| bad(sec, "s3_endpoint", &e, r))?;
            (scheme, host, Addressing::Path)
        }
        None => (
            "https".to_string(),
            format!("s3.{region}.amazonaws.com"),
            Addressing::VirtualHost,
        ),
    };
    let addressing = match sec.string("s3_addressing")?.as_deref() {
        None => default_addressing,
        Some("path") => Addressing::Path,
        Some("virtual" | "virtual-host" | "virtual_host") => Addressing::VirtualHost,
        Some(v) => return Err(bad(sec, "s3_addressing", v, "expected path or virtual")),
    };
    if addressing == Addressing::VirtualHost && url.bucket.contains('.') && scheme == "https" {
        return Err(bad(
            sec,
            "s3_addressing",
            "virtual",
            format!(
                "bucket {} has a '.', which no TLS certificate of the service covers: use s3_addressing = path",
                url.bucket
            ),
        ));
    }
    let kms_key = sec.string("s3_sse_kms_key_id")?;
    let sse = match sec.string("s3_sse")?.as_deref() {
        None => None,
        Some("AES256") => Some(Sse::Aes256),
        Some("aws:kms") => Some(Sse::Kms {
            key_id: kms_key.clone(),
        }),
        Some(v) => return Err(bad(sec, "s3_sse", v, "expected AES256 or aws:kms")),
    };
    if let (Some(k), false) = (&kms_key, matches!(sse, Some(Sse::Kms { .. }))) {
        return Err(bad(sec, "s3_sse_kms_key_id", k, "needs s3_sse = aws:kms"));
    }
    Ok(S3 {
        scheme,
        host,
        region,
        addressing,
        bucket: url.bucket.clone(),
        credentials: s3_credentials(sec, url)?,
        sse,
        conditional_put: sec.bool("s3_conditional_put", true)?,
        timeout: sec.duration(
            "s3_timeout",
            Duration::from_secs(60),
            (
                Bound::Included(Duration::from_secs(1)),
                Bound::Included(Duration::from_secs(3600)),
            ),
        )?,
        retries: sec.number("s3_retries", 3u32, 0..=10)?,
        ca_file: match sec.path("s3_ca_file")? {
            Some(f) => {
                crate::s3::read_ca_file(&f)
                    .map_err(|r| bad(sec, "s3_ca_file", &f.to_string_lossy(), r))?;
                Some(f)
            }
            None => None,
        },
        part_size: sec.number("s3_part_size", 16usize, 5..=5120)? << 20,
    })
}

/// Credentials, first found: `s3_access_key_id` + `s3_secret_access_key` in the ini,
/// `s3_credentials_file` (AWS's shared-credentials format, owner-only), the environment
/// (`AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
fn s3_credentials(sec: &Section, url: &crate::s3::Url) -> Result<crate::s3::Credentials> {
    use crate::s3::Credentials;
    // Secrets are taken literally: ConfigParser's %-interpolation must not touch them.
    let id = sec.string("s3_access_key_id")?;
    let secret = sec.literal("s3_secret_access_key");
    match (id, secret) {
        (Some(id), Some(secret)) => {
            secret_file_ok(sec.config().path(), "s3_secret_access_key", 0o004)
                .map_err(|r| bad(sec, "s3_secret_access_key", "<hidden>", r))?;
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: sec.literal("s3_session_token"),
                source: sec.config().path().display().to_string(),
            });
        }
        (Some(_), None) => {
            return Err(bad(
                sec,
                "s3_access_key_id",
                "",
                "needs s3_secret_access_key beside it",
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                sec,
                "s3_secret_access_key",
                "<hidden>",
                "needs s3_access_key_id beside it",
            ))
        }
        (None, None) => {}
    }
    if let Some(f) = sec.path("s3_credentials_file")? {
        let shown = f.display().to_string();
        let fail = |r: String| bad(sec, "s3_credentials_file", &shown, r);
        let meta = std::fs::metadata(&f).map_err(|e| fail(e.to_string()))?;
        secret_file_ok(&f, "credentials", 0o077).map_err(fail)?;
        let owner = std::os::unix::fs::MetadataExt::uid(&meta);
        let me = nix::unistd::geteuid().as_raw();
        if owner != 0 && owner != me {
            return Err(fail(format!(
                "owned by uid {owner}: must belong to root or to the user walmgr runs as (uid {me})"
            )));
        }
        let cfg = Config::load(&f).map_err(|e| fail(e.to_string()))?;
        let section = if cfg.has_section("default") {
            "default".to_string()
        } else {
            cfg.sections()
                .next()
                .ok_or_else(|| fail("no [default] section".into()))?
                .to_string()
        };
        let get = |k: &str| {
            cfg.get_literal(&section, k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        return match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("aws_session_token"),
                source: shown.clone(),
            }),
            _ => Err(fail(format!(
                "[{section}] needs aws_access_key_id and aws_secret_access_key"
            ))),
        };
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
            source: "the environment".into(),
        }),
        _ => Err(bad(
            sec,
            "s3_credentials_file",
            "",
            format!(
                "the store {url} needs credentials: s3_access_key_id + s3_secret_access_key, \
                 s3_credentials_file, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY in the environment"
            ),
        )),
    }
}

/// A file holding a secret must not be readable beyond `forbidden` mode bits allow.
/// A file that cannot be stat'ed (a unit test's made-up path) is not judged here.
fn secret_file_ok(path: &Path, what: &str, forbidden: u32) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & forbidden != 0 => Err(format!(
            "{} holds {what} but has mode {:04o}: chmod {} it",
            path.display(),
            m.permissions().mode() & 0o7777,
            if forbidden == 0o004 { "o-rwx" } else { "600" }
        )),
        _ => Ok(()),
    }
}

fn job_name(sec: &Section) -> Result<String> {
    Ok(sec
        .string("job_name")?
        .unwrap_or_else(|| sec.name().to_string()))
}

fn master(sec: &Section, ini: PathBuf) -> Result<Master> {
    let slave_raw = sec.required("slave")?;
    let slave = match split_remote(&slave_raw) {
        _ if crate::s3::Url::parse(&slave_raw).is_some() => {
            SlaveLocation::Local(PathBuf::from(slave_raw.trim()))
        }
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
        compression_threads: sec.number("compression_threads", 2u32, 1..=16)?,
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
    if split_remote(&slave_raw).is_some() && crate::s3::Url::parse(&slave_raw).is_none() {
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
                "[w]\nmaster_data=/d\nslave=/s\ncompression_threads=17\n",
                "compression_threads",
            ),
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
    fn s3_store_in_master_and_slave_inis() {
        let keys = "s3_endpoint = http://127.0.0.1:9000\ns3_access_key_id = AKID\n\
                    s3_secret_access_key = se%cret\n";
        let Settings::Master(m) = parse(&format!(
            "[w]\nmaster_data = /pg\nslave = s3://wal-bucket/pg/main/\n\
             completed_wals = %(slave)s/logs.complete\n{keys}"
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            m.slave,
            SlaveLocation::Local("s3://wal-bucket/pg/main/".into())
        );
        let p = &m.store.paths;
        assert_eq!(p.root, PathBuf::from("s3://wal-bucket/pg/main"));
        assert_eq!(
            p.completed_wals,
            PathBuf::from("s3://wal-bucket/pg/main/logs.complete")
        );
        assert_eq!(
            p.full_backup,
            PathBuf::from("s3://wal-bucket/pg/main/data.master")
        );
        let c = p.s3.as_ref().unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.host.as_str()),
            ("http", "127.0.0.1:9000")
        );
        assert_eq!(c.addressing, crate::s3::Addressing::Path);
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.bucket, "wal-bucket");
        // Taken literally: no %-interpolation of a secret.
        assert_eq!(c.credentials.secret_access_key, "se%cret");
        assert!(c.conditional_put && c.sse.is_none());
        assert!(!format!("{m:?}").contains("se%cret"), "no secret in Debug");

        let Settings::Slave(s) = parse(&format!(
            "[w]\nslave = s3://wal-bucket/pg/main\ns3_sse = aws:kms\n\
             s3_sse_kms_key_id = alias/wal\ns3_addressing = virtual\n{keys}"
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            s.store.paths.completed_wals, p.completed_wals,
            "both name one store"
        );
        let c = s.store.paths.s3.as_ref().unwrap();
        assert_eq!(c.addressing, crate::s3::Addressing::VirtualHost);
        assert_eq!(
            c.sse,
            Some(crate::s3::Sse::Kms {
                key_id: Some("alias/wal".into())
            })
        );
        // Without an endpoint: AWS, virtual-host addressing, the region's host.
        let Settings::Slave(s) =
            parse("[w]\nslave = s3://b12/x\ns3_region = eu-west-1\ns3_access_key_id = A\ns3_secret_access_key = B\n")
                .unwrap()
        else {
            panic!()
        };
        let c = s.store.paths.s3.clone().unwrap();
        assert_eq!(c.host, "s3.eu-west-1.amazonaws.com");
        assert_eq!(c.part_size, 16 << 20);
        assert_eq!(
            s.store.paths.full_backup,
            PathBuf::from("s3://b12/x/data.master"),
            "base backups go into the bucket by default"
        );
        let Settings::Slave(s) = parse(
            "[w]\nslave = s3://b12/x\nfull_backup = /var/lib/wal/data.master\n\
             s3_access_key_id = A\ns3_secret_access_key = B\n",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            s.store.paths.full_backup,
            PathBuf::from("/var/lib/wal/data.master")
        );
        assert_eq!(c.addressing, crate::s3::Addressing::VirtualHost);
    }

    #[test]
    fn bad_s3_settings_name_the_key() {
        let creds = "s3_access_key_id = A\ns3_secret_access_key = B\n";
        let cases = [
            ("slave = s3://Bad_Bucket/x\n", "slave"),
            ("slave = s3://bkt/a/../b\n", "slave"),
            (
                "slave = /ws\ncompleted_wals = s3://bkt/wals\n",
                "completed_wals",
            ),
            (
                "slave = s3://bkt/p\ncompleted_wals = /var/wals\n",
                "completed_wals",
            ),
            (
                "slave = s3://bkt/p\ncompleted_wals = s3://other/wals\n",
                "completed_wals",
            ),
            (
                "slave = s3://bkt/p\ns3_endpoint = 127.0.0.1:9000\n",
                "s3_endpoint",
            ),
            (
                "slave = s3://bkt/p\ns3_endpoint = http://h/path\n",
                "s3_endpoint",
            ),
            ("slave = s3://bkt/p\ns3_addressing = dns\n", "s3_addressing"),
            (
                "slave = s3://b.kt/p\ns3_addressing = virtual\n",
                "s3_addressing",
            ),
            ("slave = s3://bkt/p\ns3_sse = des\n", "s3_sse"),
            (
                "slave = s3://bkt/p\ns3_sse_kms_key_id = k\n",
                "s3_sse_kms_key_id",
            ),
            ("slave = s3://bkt/p\ns3_retries = 99\n", "s3_retries"),
            ("slave = s3://bkt/p\ns3_timeout = 0\n", "s3_timeout"),
            ("slave = s3://bkt/p\ns3_part_size = 4\n", "s3_part_size"),
            ("slave = s3://bkt/p\ns3_region = eu west\n", "s3_region"),
            (
                "slave = s3://bkt/p\ns3_ca_file = /nonexistent/ca.pem\n",
                "s3_ca_file",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&format!("[w]\n{text}{creds}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) && e.contains("/etc/wal.ini"),
                "{text:?}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse("[w]\nslave = s3://bkt/p\ns3_access_key_id = A\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3_secret_access_key"), "{e}");
        let e = parse("[w]\nslave = s3://bkt/p\ns3_secret_access_key = topsecret\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s3_access_key_id") && !e.contains("topsecret"),
            "{e}"
        );
    }

    #[test]
    fn remote_split() {
        assert_eq!(split_remote("h:/p"), Some(("h", "/p")));
        assert_eq!(split_remote("/p:x"), None);
        assert_eq!(split_remote("/p"), None);
    }
}
