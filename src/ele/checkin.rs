//! What ele_report sends upstream for one cluster, how it is sent, how the upstream's
//! silence about an instance it did not take is noticed, and the cache of what was
//! sent last.
//!
//! The call is `utility.sp_instance_checkin(...)` with named arguments, the original
//! ele_tools signature, so a reporter works against an admin database made by the
//! original script as well as by ours. That function returns nothing, also when it
//! stored nothing (unknown server environment, no matching herd): so after sending,
//! `utility.v_flat_instance` is read back.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::discover::{Facts, Role};
use crate::fsutil::PathError;

/// The arguments of one `sp_instance_checkin` call, named as its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkin {
    pub s_herd: String,
    pub s_host: String,
    pub n_port: i32,
    pub s_ver: Option<String>,
    pub b_online: bool,
    pub s_data_dir: Option<String>,
    pub s_master_host: Option<String>,
    pub n_xlog: Option<i64>,
}

impl Checkin {
    /// What to send for `f`, or None when too little is known to send anything true
    /// (no data directory or version: the cluster could not be read).
    pub fn from_facts(f: &Facts, host: &str) -> Option<Checkin> {
        let data = f.data_dir.as_ref()?;
        let version = f.server_version.clone().or(f.version.clone())?;
        let replica = f.role == Some(Role::Replica);
        // sp_instance_checkin takes an online report with version and data directory
        // but no master for a primary's. A replica whose master is not known (no
        // primary_conninfo: it restores from an archive) leaves the data directory out,
        // so the upstream keeps the master it has.
        let s_data_dir = if replica && f.master_host.is_none() && f.online {
            None
        } else {
            Some(data.display().to_string())
        };
        Some(Checkin {
            s_herd: f.name.clone(),
            s_host: host.to_string(),
            n_port: i32::from(f.port),
            s_ver: Some(version),
            b_online: f.online,
            s_data_dir,
            s_master_host: if replica { f.master_host.clone() } else { None },
            n_xlog: f.wal_position().and_then(|p| i64::try_from(p).ok()),
        })
    }

    /// The cache's key: one instance per herd name and port on this host.
    pub fn key(&self) -> String {
        format!("{}:{}", self.s_herd, self.n_port)
    }
}

const CHECKIN: &str = "SELECT utility.sp_instance_checkin(\
    sHerd := $1::varchar, sHost := $2::varchar, nPort := $3::int, sVer := $4::varchar, \
    bOnline := $5::boolean, sDataDir := $6::varchar, sMasterHost := $7::varchar, \
    nXlog := $8::bigint)";

pub async fn send(client: &Client, c: &Checkin) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            CHECKIN,
            &[
                &c.s_herd,
                &c.s_host,
                &c.n_port,
                &c.s_ver,
                &c.b_online,
                &c.s_data_dir,
                &c.s_master_host,
                &c.n_xlog,
            ],
        )
        .await
        .map(|_| ())
}

/// The instances of `host` the upstream holds: (herd base name lower-cased, port).
pub async fn held(
    client: &Client,
    host: &str,
) -> Result<BTreeSet<(String, i32)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT lower(base_name)::text, db_port::int FROM utility.v_flat_instance \
             WHERE lower(hostname) = lower($1::text)",
            &[&host],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1)))
        .collect())
}

/// Why the upstream took no instance of `c`: its server has no environment, or no
/// herd of that environment has the name and port.
pub async fn why_ignored(client: &Client, c: &Checkin) -> String {
    let env = client
        .query_opt(
            "SELECT environment_id FROM utility.ele_server WHERE lower(hostname) = lower($1::text) \
             ORDER BY environment_id NULLS LAST LIMIT 1",
            &[&c.s_host],
        )
        .await;
    let reason = match env {
        Ok(None) => format!("server {} is unknown", c.s_host),
        Ok(Some(r)) if r.get::<_, Option<i32>>(0).is_none() => {
            format!("server {} has no environment", c.s_host)
        }
        Ok(Some(_)) => format!(
            "no herd {:?} on port {} in the environment of server {}",
            c.s_herd, c.n_port, c.s_host
        ),
        Err(e) => format!("cannot tell why: {}", crate::pg::one_line(&e)),
    };
    format!(
        "instance {} on port {} ignored by the upstream: {reason}",
        c.s_herd, c.n_port
    )
}

/// What was sent last for each instance, and when.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    sent: u64,
    checkin: Checkin,
    /// The upstream stored it. One it ignored is kept (remembered, see
    /// [`Cache::remembered`]) but never fresh: it is sent again every run.
    accepted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("cache directory {0} is writable by others (it must not be: the cache decides what is sent)")]
    WorldWritable(PathBuf),
    #[error("cache directory {path} belongs to uid {owner}, not to this user")]
    Owner { path: PathBuf, owner: u32 },
}

pub const CACHE_FILE: &str = "report.json";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/ele_tools";

/// `[Report] cache_dir`: ele_report writes it, ele_ctl reads it.
pub fn cache_dir(cfg: &crate::config::Config) -> Result<PathBuf, crate::config::ConfigError> {
    cfg.section("Report")
        .path_or("cache_dir", DEFAULT_CACHE_DIR)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cache {
    /// The cache in `dir`, made (0750) if missing. The directory must belong to this
    /// user (or root) and not be writable by others; an unreadable or corrupt file is
    /// an empty cache (everything is sent again).
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        if !dir.exists() {
            crate::fsutil::ensure_dir(dir, 0o750)?;
        }
        let m = std::fs::metadata(dir).map_err(|e| PathError::new("stat", dir, e))?;
        if m.permissions().mode() & 0o002 != 0 {
            return Err(CacheError::WorldWritable(dir.to_path_buf()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if m.uid() != me && m.uid() != 0 {
            return Err(CacheError::Owner {
                path: dir.to_path_buf(),
                owner: m.uid(),
            });
        }
        let file = dir.join(CACHE_FILE);
        Ok(std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }

    /// The cache as it is, for a reader that must not create it (ele_ctl): empty when
    /// missing or unreadable.
    pub fn peek(dir: &Path) -> Cache {
        std::fs::read(dir.join(CACHE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The data directories and ports of the instances it holds.
    pub fn remembered(&self) -> Vec<(PathBuf, u16)> {
        self.entries
            .values()
            .filter_map(|e| {
                let data = e.checkin.s_data_dir.as_ref()?;
                Some((PathBuf::from(data), u16::try_from(e.checkin.n_port).ok()?))
            })
            .collect()
    }

    /// Whether `c` was sent unchanged less than `max_age` ago.
    pub fn fresh(&self, c: &Checkin, max_age: Duration) -> bool {
        self.entries.get(&c.key()).is_some_and(|e| {
            e.accepted && e.checkin == *c && now().saturating_sub(e.sent) < max_age.as_secs()
        })
    }

    /// `c` was sent now; `accepted`: the upstream holds it.
    pub fn record(&mut self, c: &Checkin, accepted: bool) {
        self.entries.insert(
            c.key(),
            Entry {
                sent: now(),
                checkin: c.clone(),
                accepted,
            },
        );
    }

    /// Keep only the instances still on this host.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.entries.retain(|k, _| keep.contains(k));
    }

    /// Write it atomically (0640).
    pub fn save(&self, dir: &Path) -> Result<(), PathError> {
        let text = serde_json::to_vec_pretty(self).expect("cache serializes");
        crate::fsutil::write_atomic(&dir.join(CACHE_FILE), &text, 0o640)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkin() -> Checkin {
        Checkin {
            s_herd: "pay".into(),
            s_host: "db1".into(),
            n_port: 5433,
            s_ver: Some("15.10".into()),
            b_online: true,
            s_data_dir: Some("/srv/pay".into()),
            s_master_host: Some("db0".into()),
            n_xlog: Some(1234),
        }
    }

    #[test]
    fn cache_skips_only_unchanged_and_recent() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let mut cache = Cache::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o750
        );
        let c = checkin();
        assert!(!cache.fresh(&c, Duration::from_secs(60)));
        cache.record(&c, true);
        cache.save(&dir).unwrap();
        let cache = Cache::open(&dir).unwrap();
        assert!(cache.fresh(&c, Duration::from_secs(60)));
        assert!(!cache.fresh(&c, Duration::ZERO), "too old");
        let moved = Checkin {
            n_xlog: Some(4321),
            ..c.clone()
        };
        assert!(!cache.fresh(&moved, Duration::from_secs(60)));
        let mut cache = cache;
        cache.record(&c, false);
        assert!(
            !cache.fresh(&c, Duration::from_secs(60)),
            "ignored: sent again"
        );
        assert_eq!(cache.remembered(), [(PathBuf::from("/srv/pay"), 5433)]);

        std::fs::write(dir.join(CACHE_FILE), "not json").unwrap();
        assert!(!Cache::open(&dir)
            .unwrap()
            .fresh(&c, Duration::from_secs(60)));

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(Cache::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("writable by others"));
    }

    #[test]
    fn a_replica_without_master_is_not_a_full_report() {
        let mut f = Facts {
            name: "pay".into(),
            port: 5433,
            data_dir: Some("/srv/pay".into()),
            version: Some("15".into()),
            server_version: Some("15.10".into()),
            online: true,
            role: Some(Role::Replica),
            master_host: Some("db0".into()),
            ..Facts::default()
        };
        let c = Checkin::from_facts(&f, "db1").unwrap();
        assert_eq!(
            (
                c.s_ver.as_deref(),
                c.s_data_dir.as_deref(),
                c.s_master_host.as_deref()
            ),
            (Some("15.10"), Some("/srv/pay"), Some("db0"))
        );
        f.master_host = None;
        let c = Checkin::from_facts(&f, "db1").unwrap();
        assert_eq!((c.s_data_dir, c.s_master_host), (None, None));
        f.role = Some(Role::Primary);
        f.master_host = Some("stale".into());
        let c = Checkin::from_facts(&f, "db1").unwrap();
        assert_eq!(
            (c.s_data_dir.as_deref(), c.s_master_host),
            (Some("/srv/pay"), None)
        );
        f.data_dir = None;
        assert!(
            Checkin::from_facts(&f, "db1").is_none(),
            "nothing true to send"
        );
    }

    #[test]
    fn named_like_the_parameters() {
        let v = serde_json::to_value(checkin()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "sHerd",
                "sHost",
                "nPort",
                "sVer",
                "bOnline",
                "sDataDir",
                "sMasterHost",
                "nXlog"
            ]
        );
    }
}
