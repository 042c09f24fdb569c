//! Base backup sets in an S3 store: the sets of [`super::backupset`], with an object
//! written last in place of the directory rename.
//!
//! ```text
//! <full_backup>/<set>/staging.json          the writer's claim (host, pid, start), written
//!                                            first with If-None-Match: of two writers of
//!                                            one name, the second takes the next name
//! <full_backup>/<set>/base.tar[.gz|.zst]    one multipart upload (nothing visible until
//!                                            it completed; aborted when it fails)
//! <full_backup>/<set>/backup_label, tablespace_map
//! <full_backup>/<set>/backup.json           written last, If-None-Match: the commit
//! ```
//! A set counts iff its backup.json parses; its claim is deleted after the commit. A set
//! is removed backup.json first, so a removal cut short leaves an uncommitted set, which
//! `cleanup` removes like any dead writer's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::backupset::{BackupInfo, Scan, Set, SetName, INFO};
use super::error::{Result, WalmgrError};
use crate::s3::{self, Client, Put, PutOptions};

pub const CLAIM: &str = "staging.json";
/// An uncommitted set whose writer cannot be asked (another host, or no claim) is left
/// alone this long: no base backup takes two days to upload.
const DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(48 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    host: String,
    pid: u32,
    started_at: String,
}

#[derive(Debug)]
pub struct S3Sets {
    client: Client,
    /// Key prefix of `full_backup`, without the trailing `/`.
    prefix: String,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn age(last_modified: &str) -> Option<std::time::Duration> {
    humantime::parse_rfc3339_weak(last_modified)
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
}

impl S3Sets {
    /// `full_backup` is `s3://bucket/prefix` (config.rs made it so).
    pub fn new(cfg: &s3::Config, full_backup: &Path) -> S3Sets {
        let prefix = match s3::Url::parse(&full_backup.to_string_lossy()) {
            Some(Ok(u)) => u.prefix,
            _ => String::new(),
        };
        S3Sets {
            client: Client::new(cfg.clone()),
            prefix,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn part_size(&self) -> usize {
        self.client.config().part_size
    }

    /// The key of `file` in `set`.
    pub fn key(&self, set: &SetName, file: &str) -> String {
        format!("{}/{set}/{file}", self.prefix)
    }

    /// For messages and `WALMGR_BACKUP`: the set as a path-like `s3://bucket/key`.
    pub fn shown(&self, set: &SetName) -> PathBuf {
        PathBuf::from(self.client.object(&format!("{}/{set}", self.prefix)))
    }

    /// Every object under the prefix, by the set directory it is in.
    fn by_set(&self) -> Result<BTreeMap<String, Vec<s3::Entry>>> {
        let pfx = format!("{}/", self.prefix);
        let mut out: BTreeMap<String, Vec<s3::Entry>> = BTreeMap::new();
        for e in self.client.list(&pfx)? {
            let Some((dir, _)) = e.key.strip_prefix(&pfx).and_then(|r| r.split_once('/')) else {
                continue;
            };
            out.entry(dir.to_string()).or_default().push(e);
        }
        Ok(out)
    }

    /// Does anything lie under the prefix in a set's name (committed or not)?
    pub fn any(&self) -> Result<bool> {
        Ok(self.by_set()?.keys().any(|d| SetName::parse(d).is_ok()))
    }

    /// Committed sets (oldest first), unreadable ones, and whether any set is being
    /// written (or was left uncommitted).
    pub fn scan(self: &Arc<Self>) -> Result<Scan> {
        let mut out = Scan {
            sets: Vec::new(),
            unusable: Vec::new(),
            staging: false,
        };
        for (dir, entries) in self.by_set()? {
            let Ok(name) = SetName::parse(&dir) else {
                continue;
            };
            let info_key = self.key(&name, INFO);
            if !entries.iter().any(|e| e.key == info_key) {
                out.staging = true;
                continue;
            }
            let shown = PathBuf::from(self.client.object(&info_key));
            let info = self
                .client
                .get_bytes(&info_key, 1 << 20)?
                .ok_or_else(|| "vanished while listed".to_string())
                .and_then(|b| serde_json::from_slice::<BackupInfo>(&b).map_err(|e| e.to_string()))
                .and_then(|i| {
                    if i.set == name {
                        Ok(i)
                    } else {
                        Err(format!("names set {}", i.set))
                    }
                });
            match info {
                Ok(info) => {
                    let base = self.key(&name, &info.file);
                    out.sets.push(Set {
                        dir: self.shown(&name),
                        stored: entries.iter().find(|e| e.key == base).cloned(),
                        s3: Some(self.clone()),
                        info,
                    })
                }
                Err(err) => {
                    log::warn!("{}: not a usable backup set: {err}", shown.display());
                    out.unusable.push(shown);
                }
            }
        }
        out.sets.sort_by(|a, b| a.info.set.cmp(&b.info.set));
        Ok(out)
    }

    /// Claim `set`, or the next free `set-<n>`: returns the name and the claim's key.
    pub fn claim(&self, set: &SetName) -> Result<(SetName, String)> {
        let taken = self.by_set()?;
        let claim = Claim {
            host: hostname(),
            pid: std::process::id(),
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        let body = serde_json::to_vec(&claim).expect("serializes");
        let sha = crate::digest::sha256_hex(&body);
        let opts = PutOptions {
            if_none_match: true,
            meta: &[],
        };
        let mut name = set.clone();
        for n in 2..1000 {
            if !taken.contains_key(name.as_str()) {
                let key = self.key(&name, CLAIM);
                if let Put::Written(_) = self.client.put(&key, &body, &sha, &opts)? {
                    return Ok((name, key));
                }
            }
            name = set.nth(n);
        }
        Err(WalmgrError::Refused(format!(
            "{}: no free set name after 999 tries",
            self.shown(set).display()
        )))
    }

    /// Write a small file of a set (unconditionally, or only if absent: `Ok(false)`
    /// when it exists).
    pub fn put_file(&self, key: &str, body: &[u8], if_absent: bool) -> Result<bool> {
        let sha = crate::digest::sha256_hex(body);
        let opts = PutOptions {
            if_none_match: if_absent,
            meta: &[],
        };
        Ok(matches!(
            self.client.put(key, body, &sha, &opts)?,
            Put::Written(_)
        ))
    }

    /// Remove a set: backup.json first (it no longer counts), then the rest.
    pub fn remove(&self, set: &SetName) -> Result<()> {
        let info = self.key(set, INFO);
        self.client.delete(&info)?;
        let pfx = format!("{}/{set}/", self.prefix);
        for e in self.client.list(&pfx)? {
            self.client.delete(&e.key)?;
        }
        Ok(())
    }

    /// Uncommitted sets whose writer is gone: a claim of this host's dead pid, or
    /// nothing newer than [`DEAD_AFTER`] (a writer elsewhere, or no claim).
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        let me = hostname();
        let mut removed = Vec::new();
        // Key prefixes of the sets removed, whose uploads go too.
        let mut gone = Vec::new();
        for (dir, entries) in self.by_set()? {
            let Ok(name) = SetName::parse(&dir) else {
                continue;
            };
            if entries.iter().any(|e| e.key == self.key(&name, INFO)) {
                continue;
            }
            let claim: Option<Claim> = self
                .client
                .get_bytes(&self.key(&name, CLAIM), 1 << 16)?
                .and_then(|b| serde_json::from_slice(&b).ok());
            let writer_dead = claim.as_ref().is_some_and(|c| {
                c.host == me
                    && c.pid != std::process::id()
                    && !crate::daemon::pid_alive(c.pid as i32)
            });
            let quiet = entries
                .iter()
                .all(|e| age(&e.last_modified).is_some_and(|a| a > DEAD_AFTER));
            if !(writer_dead || quiet) {
                continue;
            }
            for e in &entries {
                self.client.delete(&e.key)?;
            }
            removed.push(self.shown(&name));
            gone.push(format!("{}/{name}/", self.prefix));
        }
        // Uploads of the sets just removed (a writer killed mid-upload), and any other
        // as old as a dead writer's.
        let pfx = format!("{}/", self.prefix);
        for (key, id, initiated) in self.client.multipart_list(&pfx)? {
            let of_removed = gone.iter().any(|g| key.starts_with(g));
            if of_removed || age(&initiated).is_some_and(|a| a > DEAD_AFTER) {
                self.client.multipart_abort(&key, &id)?;
                removed.push(PathBuf::from(format!(
                    "{} (incomplete upload {id})",
                    self.client.object(&key)
                )));
            }
        }
        Ok(removed)
    }
}

/// Save a file into an S3 `config_backup` location.
pub fn save_file(cfg: &s3::Config, location: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let prefix = match s3::Url::parse(&location.to_string_lossy()) {
        Some(Ok(u)) => u.prefix,
        _ => String::new(),
    };
    let client = Client::new(cfg.clone());
    let key = format!("{prefix}/{name}");
    let opts = PutOptions {
        if_none_match: false,
        meta: &[],
    };
    client.put(&key, data, &crate::digest::sha256_hex(data), &opts)?;
    Ok(PathBuf::from(client.object(&key)))
}
