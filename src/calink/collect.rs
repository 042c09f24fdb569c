//! One run: the info items, the files and the commands, each passed through scrubbing
//! and obfuscation and streamed into the archive, then the JSON, the commands log,
//! calink's own log and the manifest. Nothing asked for stops the run by failing: it is
//! recorded in the manifest and the log, and the run goes on; only the archive itself
//! (a full disk, a leak) can fail it.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::archive::{self, Archive, ArchiveError};
use super::commands;
use super::config::{FileSpec, Settings};
use super::info;
use super::manifest::{Entry, Kind, Manifest};
use super::obfuscate::Obfuscator;
use super::scrub;
use super::walk::{walk, Found};
use crate::glob;

pub const MANIFEST: &str = "manifest.json";
pub const OWN_LOG: &str = "calink.log";
/// Collected files are stored under `<top>/files/<their absolute path>`.
pub const FILES_DIR: &str = "files";

pub struct Options<'a> {
    pub settings: &'a Settings,
    /// The archive's full path.
    pub archive: PathBuf,
    pub scrub: bool,
    pub obfuscator: Option<&'a Obfuscator>,
    /// Echo the log on stderr (when it is a terminal).
    pub progress: bool,
    pub started: u64,
    /// Paths never collected: the obfuscation map, the archive being written.
    pub exclude: Vec<PathBuf>,
}

/// calink's own log, kept in memory and stored in the archive.
pub struct Log {
    text: String,
    progress: bool,
}

impl Log {
    pub fn new(progress: bool) -> Log {
        Log {
            text: String::new(),
            progress,
        }
    }

    pub fn note(&mut self, msg: impl Display) {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        self.text.push_str(&format!("{now} {msg}\n"));
        if self.progress {
            eprintln!("calink: {msg}");
        }
    }
}

struct Run<'o, 'a> {
    o: &'o Options<'a>,
    manifest: Manifest,
    log: Log,
    total: u64,
    names: std::collections::BTreeSet<String>,
    /// The archive's top directory.
    top: String,
}

/// Collect everything into `opts.archive`; the manifest tells what went in.
pub fn collect(opts: &Options<'_>) -> Result<Manifest, ArchiveError> {
    let top = opts
        .archive
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".tar.gz").to_string())
        .unwrap_or_else(|| "calink".into());
    let mut run = Run {
        o: opts,
        manifest: Manifest::new(opts.started, opts.scrub, opts.obfuscator.is_some()),
        log: Log::new(opts.progress),
        total: 0,
        names: Default::default(),
        top: top.clone(),
    };
    let scan = opts.obfuscator.map(Obfuscator::scanner);
    archive::write(&opts.archive, &top, opts.started, scan, |a| run.all(a))?;
    Ok(run.manifest)
}

impl Run<'_, '_> {
    fn all(&mut self, a: &mut Archive<'_>) -> io::Result<()> {
        let s = self.o.settings;
        self.log.note(format!(
            "calink {} started, writing {}",
            env!("CARGO_PKG_VERSION"),
            self.o.archive.display()
        ));
        let json = self.info();
        for spec in &s.files {
            self.files(a, spec)?;
        }
        let log = self.commands();

        self.report(a, &s.output.json_file(), json)?;
        self.report(a, &s.output.commands_file(), log)?;
        self.manifest.finished = now();
        let incomplete = self
            .manifest
            .entries
            .iter()
            .filter(|e| e.incomplete())
            .count();
        self.log.note(format!(
            "done: {} entries, {} skipped, truncated or timed out",
            self.manifest.entries.len(),
            incomplete
        ));
        let own = std::mem::take(&mut self.log.text).into_bytes();
        self.report(a, OWN_LOG, own)?;
        let m = self.obfuscate(&self.manifest.to_json());
        a.add(MANIFEST, &m, 0o644, None)?;
        Ok(())
    }

    /// The member name `rel` gets in the archive (as [`Archive::name`] makes it).
    fn member(&self, rel: &str) -> String {
        self.obfuscate_str(&format!("{}/{rel}", self.top))
    }

    fn obfuscate(&self, data: &[u8]) -> Vec<u8> {
        match self.o.obfuscator {
            Some(o) => o.apply(data),
            None => data.to_vec(),
        }
    }

    fn obfuscate_str(&self, s: &str) -> String {
        match self.o.obfuscator {
            Some(o) => o.apply_str(s),
            None => s.to_string(),
        }
    }

    /// Scrub (unless turned off) then obfuscate; returns the data and secrets masked.
    fn clean(&self, name: &str, data: &[u8]) -> (Vec<u8>, usize) {
        let (data, n) = if self.o.scrub {
            scrub::scrub(name, data)
        } else {
            (data.to_vec(), 0)
        };
        (self.obfuscate(&data), n)
    }

    /// Add one of calink's own outputs, scrubbed (a command line or a process's
    /// arguments may hold a secret) and obfuscated like everything else.
    fn report(&mut self, a: &mut Archive<'_>, name: &str, data: Vec<u8>) -> io::Result<()> {
        let name = self.obfuscate_str(name);
        let (data, scrubbed) = self.clean(&name, &data);
        let mut e = Entry::new(Kind::Report, name.clone(), None);
        let member = a.add(&name, &data, 0o644, None)?;
        e.stored(&member, &data);
        e.scrubbed = scrubbed;
        self.manifest.push(e);
        Ok(())
    }

    fn info(&mut self) -> Vec<u8> {
        let s = self.o.settings;
        let items: Vec<info::Item> = s.info.iter().flat_map(|(_, i)| i.iter().copied()).collect();
        if !items.is_empty() {
            self.log.note(format!(
                "sampling for {:.1} s",
                if items.iter().any(|i| i.is_sampled()) {
                    s.limits.sampling.window.as_secs_f64()
                } else {
                    0.0
                }
            ));
        }
        let results = info::gather(&items, &s.limits.sampling);
        let mut root = Map::new();
        for (group, items) in &s.info {
            let mut g = Map::new();
            for item in items {
                let (_, r) = results.iter().find(|(i, _)| i == item).expect("gathered");
                let mut e = Entry::new(Kind::Info, item.name(), Some(group));
                let v = match r {
                    Ok(v) => v.clone(),
                    Err(err) => {
                        self.log.note(format!("info {group}.{item}: {err}"));
                        e = e.skipped(err.to_string());
                        json!({ "error": err.to_string() })
                    }
                };
                e.archive_name = Some(self.member(&s.output.json_file()));
                self.manifest.push(e);
                g.insert(item.name().to_string(), v);
            }
            root.insert(group.clone(), Value::Object(g));
        }
        root.insert("timestamp".into(), json!(self.o.started));
        let mut out = serde_json::to_vec_pretty(&Value::Object(root)).expect("JSON serialises");
        out.push(b'\n');
        out
    }

    fn excluded(&self, p: &Path) -> bool {
        if self.o.exclude.iter().any(|x| x == p) {
            return true;
        }
        // The archive is written under a temporary name beside its final one.
        let dir = crate::fsutil::parent_dir(&self.o.archive);
        p.parent() == Some(dir)
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(crate::fsutil::TEMP_PREFIX))
    }

    fn files(&mut self, a: &mut Archive<'_>, spec: &FileSpec) -> io::Result<()> {
        let (key, pattern) = (spec.key.as_str(), spec.pattern.as_str());
        let mut paths = glob::expand(pattern);
        if spec.optional {
            paths.retain(|p| p.symlink_metadata().is_ok());
        }
        if paths.is_empty() {
            let why = if spec.optional {
                "optional, not there"
            } else {
                "nothing matches"
            };
            self.log.note(format!("[files] {key}: {pattern}: {why}"));
            // A pattern that matches nothing is a finding, not a gap in the archive.
            self.manifest
                .push(Entry::new(Kind::File, pattern, Some(key)).excluded(why));
            return Ok(());
        }
        // A path written out is followed if a link (/etc/os-release is one); what a glob
        // finds inside a directory is not.
        let follow = !glob::has_wildcard(pattern);
        for p in paths {
            let excl = |q: &Path| self.excluded(q);
            let mut found = Vec::new();
            // Walk first, read after: the walk borrows self for the exclusion check.
            walk(&p, follow, spec.recurse, &excl, &mut |f| {
                found.push(match f {
                    Found::File { path, meta, follow } => {
                        Item::File(path.to_path_buf(), meta, follow)
                    }
                    Found::Symlink { path, target, meta } => {
                        Item::Link(path.to_path_buf(), target, meta)
                    }
                    Found::Skipped { path, reason } => {
                        Item::Skip(path.to_path_buf(), reason, false)
                    }
                    Found::Excluded { path, reason } => {
                        Item::Skip(path.to_path_buf(), reason, true)
                    }
                });
                Ok(())
            })?;
            for item in found {
                self.file_item(a, key, item)?;
            }
        }
        Ok(())
    }

    fn file_item(&mut self, a: &mut Archive<'_>, key: &str, item: Item) -> io::Result<()> {
        let path = match &item {
            Item::File(p, ..) | Item::Link(p, ..) | Item::Skip(p, ..) => p.clone(),
        };
        let shown = path.display().to_string();
        let rel = self.obfuscate_str(&format!("{FILES_DIR}{shown}"));
        let kind = if matches!(item, Item::Link(..)) {
            Kind::Symlink
        } else {
            Kind::File
        };
        let mut e = Entry::new(kind, shown.clone(), Some(key));
        if self.names.contains(&rel) {
            return Ok(());
        }
        match item {
            Item::Skip(_, reason, deliberate) => {
                self.log.note(format!("{shown}: {reason}"));
                e = if deliberate {
                    e.excluded(reason)
                } else {
                    e.skipped(reason)
                };
            }
            Item::Link(_, target, meta) => {
                let t = self.obfuscate_str(&target.to_string_lossy());
                let member = a.add_symlink(&rel, Path::new(&t), Some(meta.mtime() as u64))?;
                e.archive_name = Some(member);
                e.symlink_target = Some(target.to_string_lossy().into_owned());
                self.names.insert(rel);
            }
            Item::File(_, meta, follow) => {
                let limits = &self.o.settings.limits;
                if self.total >= limits.max_total_size {
                    let reason =
                        format!("total size cap of {} bytes reached", limits.max_total_size);
                    self.log.note(format!("{shown}: {reason}"));
                    self.manifest.push(e.skipped(reason));
                    return Ok(());
                }
                if self.o.progress {
                    eprintln!("calink: {shown}");
                }
                if self.o.obfuscator.is_some() && compressed(&path) {
                    // Names inside compressed data can be neither replaced nor seen by the
                    // leak scan.
                    let reason = "compressed: cannot be obfuscated";
                    self.log.note(format!("{shown}: {reason}"));
                    self.manifest.push(e.excluded(reason));
                    return Ok(());
                }
                match read_tail(&path, follow, limits.max_file_size) {
                    Err(err) => {
                        self.log.note(format!("{shown}: {err}"));
                        e = e.skipped(err.to_string());
                    }
                    Ok((raw, source_size, truncated)) => {
                        let (data, scrubbed) = self.clean(&shown, &raw);
                        if self.total + data.len() as u64 > limits.max_total_size {
                            let reason = format!(
                                "total size cap of {} bytes reached",
                                limits.max_total_size
                            );
                            self.log.note(format!("{shown}: {reason}"));
                            self.manifest.push(e.skipped(reason));
                            return Ok(());
                        }
                        let member =
                            a.add(&rel, &data, meta.mode(), Some(meta.mtime().max(0) as u64))?;
                        self.total += data.len() as u64;
                        e.stored(&member, &data);
                        e.truncated = truncated;
                        e.scrubbed = scrubbed;
                        if source_size != data.len() as u64 {
                            e.source_size = Some(source_size);
                        }
                        if truncated {
                            self.log.note(format!(
                                "{shown}: {source_size} bytes, only the last {} kept",
                                raw.len()
                            ));
                        }
                        self.names.insert(rel);
                    }
                }
            }
        }
        self.manifest.push(e);
        Ok(())
    }

    fn commands(&mut self) -> Vec<u8> {
        let s = self.o.settings;
        let mut log = Vec::new();
        for (label, line) in &s.commands {
            self.log.note(format!("running [{label}]: {line}"));
            let r = commands::run(
                label,
                line,
                s.limits.command_timeout,
                s.limits.max_file_size,
            );
            let (out, n_out) = self.clean(label, &r.stdout);
            let (err, n_err) = self.clean(label, &r.stderr);
            // The whole log is scrubbed and obfuscated again when stored (`report`),
            // which also covers the command line.
            let entry_text = commands::log_entry(&r, &out, &err);
            let mut e = Entry::new(Kind::Command, label.clone(), None);
            e.archive_name = Some(self.member(&s.output.commands_file()));
            e.size = Some((out.len() + err.len()) as u64);
            e.sha256 = Some(crate::digest::sha256_hex(
                &[out.as_slice(), err.as_slice()].concat(),
            ));
            e.exit_code = r.exit_code;
            e.timed_out = r.timed_out;
            e.truncated = r.truncated();
            e.stdout_dropped = r.stdout_dropped();
            e.stderr_dropped = r.stderr_dropped();
            if e.truncated {
                e.source_size = Some(r.stdout_size + r.stderr_size);
            }
            e.scrubbed = n_out + n_err;
            let desc = r.describe();
            if r.error.is_some() {
                e = e.skipped(desc.clone());
            } else if r.timed_out || r.exit_code != Some(0) {
                e.reason = Some(desc.clone());
            }
            self.log.note(format!(
                "[{label}]: {desc} in {:.3} s",
                r.duration.as_secs_f64()
            ));
            self.manifest.push(e);
            log.extend_from_slice(&entry_text);
        }
        log
    }
}

enum Item {
    File(PathBuf, std::fs::Metadata, bool),
    Link(PathBuf, PathBuf, std::fs::Metadata),
    /// Path, reason, and whether it was left out on purpose.
    Skip(PathBuf, String, bool),
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Does the file start with the magic of gzip, bzip2, xz or zstd?
fn compressed(path: &Path) -> bool {
    let mut head = [0u8; 6];
    let n = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let h = &head[..n];
    h.starts_with(&[0x1f, 0x8b])
        || h.starts_with(b"BZh")
        || h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// The file's content, at most its last `cap` bytes: (data, bytes at the source,
/// truncated). Inside a walked directory (`follow` false) a link swapped in after the
/// walk is refused rather than followed; a FIFO swapped in does not block the open.
pub fn read_tail(path: &Path, follow: bool, cap: u64) -> io::Result<(Vec<u8>, u64, bool)> {
    let mut flags = nix::libc::O_NONBLOCK;
    if !follow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let mut f: File = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    let len = m.len();
    if len > cap {
        f.seek(SeekFrom::Start(len - cap))?;
        let mut buf = Vec::with_capacity(cap as usize);
        f.take(cap).read_to_end(&mut buf)?;
        return Ok((buf, len, true));
    }
    // Files whose size says nothing (/proc, /sys) or that grow while read.
    let cap_usize = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(len as usize);
    let mut total: u64 = 0;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > cap_usize.saturating_mul(2) {
            buf.drain(..buf.len() - cap_usize);
        }
    }
    if buf.len() > cap_usize {
        buf.drain(..buf.len() - cap_usize);
    }
    Ok((buf, total, total > cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_tail_keeps_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(
            read_tail(&p, true, 4).unwrap(),
            (b"6789".to_vec(), 10, true)
        );
        assert_eq!(
            read_tail(&p, true, 10).unwrap(),
            (b"0123456789".to_vec(), 10, false)
        );
        // /proc files report size 0.
        let (data, size, truncated) =
            read_tail(Path::new("/proc/self/status"), true, 1 << 20).unwrap();
        assert!(!data.is_empty() && size == data.len() as u64 && !truncated);
        let (data, _, truncated) = read_tail(Path::new("/proc/self/status"), true, 16).unwrap();
        assert!(data.len() == 16 && truncated);
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(read_tail(&l, false, 4).is_err());
        assert!(read_tail(&l, true, 4).is_ok());
    }
}
