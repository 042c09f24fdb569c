//! manifest.json: every item calink was asked for, what became of it and why, so a
//! reader of the archive can tell a file that was empty from one that was never read.

use crate::digest::sha256_hex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Symlink,
    Command,
    Info,
    /// calink's own output: the JSON, the commands log, its log.
    Report,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Collected,
    /// Asked for but not in the archive: missing, unreadable, over the total cap, a
    /// command that could not be started. Makes the run incomplete.
    Skipped,
    /// Left out on purpose (a socket, calink's own files, a glob that matched nothing).
    Excluded,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub kind: Kind,
    /// The path, command label or info item asked for.
    pub source: String,
    /// The `[files]` key, `[commands]` label or `[info]` group that asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The member's name in the archive, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_name: Option<String>,
    /// Bytes stored in the archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes at the source, when that differs (truncated, scrubbed, obfuscated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_size: Option<u64>,
    /// SHA-256 of the bytes stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub truncated: bool,
    /// A command's output bytes cut from the head of its stdout / stderr (only the
    /// tail, `max_file_size` bytes, is kept).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub stdout_dropped: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub stderr_dropped: u64,
    pub timed_out: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Secrets masked by scrubbing.
    #[serde(skip_serializing_if = "is_zero")]
    pub scrubbed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Entry {
    pub fn new(kind: Kind, source: impl Into<String>, requested_by: Option<&str>) -> Entry {
        Entry {
            kind,
            source: source.into(),
            requested_by: requested_by.map(str::to_string),
            status: Status::Collected,
            reason: None,
            archive_name: None,
            size: None,
            source_size: None,
            sha256: None,
            truncated: false,
            stdout_dropped: 0,
            stderr_dropped: 0,
            timed_out: false,
            exit_code: None,
            symlink_target: None,
            scrubbed: 0,
        }
    }

    pub fn skipped(mut self, reason: impl Into<String>) -> Entry {
        self.status = Status::Skipped;
        self.reason = Some(reason.into());
        self
    }

    pub fn excluded(mut self, reason: impl Into<String>) -> Entry {
        self.status = Status::Excluded;
        self.reason = Some(reason.into());
        self
    }

    /// Record the bytes stored under `name`.
    pub fn stored(&mut self, name: &str, data: &[u8]) {
        self.archive_name = Some(name.to_string());
        self.size = Some(data.len() as u64);
        self.sha256 = Some(sha256_hex(data));
    }

    /// Whether this entry makes the run incomplete (exit status 3).
    pub fn incomplete(&self) -> bool {
        self.status == Status::Skipped || self.truncated || self.timed_out
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Manifest {
    pub program: String,
    pub version: String,
    pub started: u64,
    pub finished: u64,
    pub scrubbed: bool,
    pub obfuscated: bool,
    /// True when something was skipped, truncated or timed out.
    pub incomplete: bool,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn new(started: u64, scrubbed: bool, obfuscated: bool) -> Manifest {
        Manifest {
            program: "calink".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started,
            scrubbed,
            obfuscated,
            ..Manifest::default()
        }
    }

    pub fn push(&mut self, e: Entry) {
        self.incomplete |= e.incomplete();
        self.entries.push(e);
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_follows_the_entries() {
        let mut m = Manifest::new(1, true, false);
        let mut e = Entry::new(Kind::File, "/etc/hosts", Some("etc"));
        e.stored("x/files/etc/hosts", b"abc");
        m.push(e);
        assert!(!m.incomplete);
        m.push(Entry::new(Kind::File, "/nope", None).skipped("not found"));
        assert!(m.incomplete);
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(
            v["entries"][0]["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(v["entries"][1]["status"], "skipped");
        assert_eq!(v["entries"][1]["reason"], "not found");
    }
}
