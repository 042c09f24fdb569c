//! The tar stream of a running cluster's data directory for a base backup, following
//! "Making a Base Backup Using the Low Level API": files change while they are copied
//! (WAL replay repairs them), so the header size is the size seen by stat, exactly that
//! many bytes are sent (zero-padded if the file shrank), and a file or directory that
//! vanishes between listing and reading is skipped, as PostgreSQL's own basebackup does.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::error::{Result, WalmgrError};
use crate::fsutil::PathError;

/// Top-level files never copied: they describe the running server, not the data, or
/// would make the copy look like something it is not (backup_label is added by the
/// caller, from pg_backup_stop).
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// Top-level directories whose contents are rebuilt or useless after a restore; the
/// directories themselves are kept because the server refuses to start without them.
const EMPTIED_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Excluded wherever they appear: per-database relcache init files (and their
/// `.<pid>` temporaries) and temporary files of sorts and hashes.
fn excluded_anywhere(name: &str) -> bool {
    name.starts_with("pg_internal.init") || name.starts_with("pgsql_tmp")
}

/// A tablespace as `pg_tablespace` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    pub location: PathBuf,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// Files that vanished or shrank while being copied (normal under load).
    pub changed: u64,
}

/// Writes the entries of a base backup into a tar stream.
pub struct TarWriter<W: Write> {
    builder: Builder<W>,
    pub stats: Stats,
}

fn path_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalmgrError + 'a {
    move |e| PathError::new(op, path, e).into()
}

fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        let mut builder = Builder::new(out);
        builder.follow_symlinks(false);
        TarWriter {
            builder,
            stats: Stats::default(),
        }
    }

    /// Every entry of `data` (relative names), then each tablespace's contents under
    /// `pg_tblspc/<oid>/`. A `pg_tblspc/<oid>` link not in `tablespaces` (created after
    /// the list was read) is followed too, so nothing the backup needs is lost.
    pub fn data_dir(&mut self, data: &Path, tablespaces: &[Tablespace]) -> Result<()> {
        let meta = fs::metadata(data).map_err(path_err("stat", data))?;
        if !meta.is_dir() {
            return Err(PathError::new(
                "read data directory",
                data,
                io::Error::other("not a directory"),
            )
            .into());
        }
        for (name, path) in sorted_dir(data)?.into_iter() {
            let Some(name) = name.to_str().map(str::to_owned) else {
                log::debug!("{}: skipped (name is not UTF-8)", path.display());
                continue;
            };
            if EXCLUDED_FILES.contains(&name.as_str()) || excluded_anywhere(&name) {
                continue;
            }
            let Some(md) = self.lstat(&path)? else {
                continue;
            };
            if EMPTIED_DIRS.contains(&name.as_str()) {
                // pg_wal may be a symlink (initdb -X); the restored copy gets a plain dir.
                let md = fs::metadata(&path).unwrap_or(md);
                self.dir_entry(&name, &md)?;
                if name == "pg_wal" {
                    self.dir_entry("pg_wal/archive_status", &md)?;
                }
            } else if name == "pg_tblspc" && md.is_dir() {
                self.dir_entry(&name, &md)?;
                self.tablespaces(&path, tablespaces)?;
            } else {
                self.entry(&path, &name, md)?;
            }
        }
        Ok(())
    }

    fn tablespaces(&mut self, pg_tblspc: &Path, tablespaces: &[Tablespace]) -> Result<()> {
        for (name, path) in sorted_dir(pg_tblspc)? {
            let Some(name) = name.to_str().map(str::to_owned) else {
                continue;
            };
            let Some(md) = self.lstat(&path)? else {
                continue;
            };
            let rel = format!("pg_tblspc/{name}");
            if !md.file_type().is_symlink() {
                // In-place tablespaces (allow_in_place_tablespaces) are plain directories.
                self.entry(&path, &rel, md)?;
                continue;
            }
            let target = match name.parse::<u32>().ok().and_then(|oid| {
                tablespaces
                    .iter()
                    .find(|t| t.oid == oid)
                    .map(|t| t.location.clone())
            }) {
                Some(loc) => loc,
                None => match fs::read_link(&path) {
                    Ok(t) => pg_tblspc.join(t),
                    Err(e) if is_gone(&e) => continue,
                    Err(e) => return Err(PathError::new("readlink", &path, e).into()),
                },
            };
            let tmd = match fs::metadata(&target) {
                Ok(m) => m,
                Err(e) if is_gone(&e) => {
                    log::debug!("{}: tablespace dropped during the backup", target.display());
                    continue;
                }
                Err(e) => return Err(PathError::new("stat", &target, e).into()),
            };
            self.entry(&target, &rel, tmd)?;
        }
        Ok(())
    }

    /// `None` when the file vanished since the directory was listed.
    fn lstat(&self, path: &Path) -> Result<Option<fs::Metadata>> {
        match fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_gone(&e) => {
                log::debug!("{}: vanished during the backup, skipped", path.display());
                Ok(None)
            }
            Err(e) => Err(PathError::new("stat", path, e).into()),
        }
    }

    fn entry(&mut self, path: &Path, rel: &str, md: fs::Metadata) -> Result<()> {
        let ft = md.file_type();
        if ft.is_dir() {
            let children = match sorted_dir(path) {
                Ok(c) => c,
                Err(WalmgrError::Io(e)) if is_gone(&e.source) => {
                    log::debug!("{}: vanished during the backup, skipped", path.display());
                    self.stats.changed += 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            self.dir_entry(rel, &md)?;
            for (name, child) in children {
                let Some(name) = name.to_str().map(str::to_owned) else {
                    log::debug!("{}: skipped (name is not UTF-8)", child.display());
                    continue;
                };
                if excluded_anywhere(&name) {
                    continue;
                }
                if let Some(cmd) = self.lstat(&child)? {
                    self.entry(&child, &format!("{rel}/{name}"), cmd)?;
                }
            }
            Ok(())
        } else if ft.is_file() {
            self.file_entry(path, rel, &md)
        } else if ft.is_symlink() {
            let target = match fs::read_link(path) {
                Ok(t) => t,
                Err(e) if is_gone(&e) => return Ok(()),
                Err(e) => return Err(PathError::new("readlink", path, e).into()),
            };
            let mut h = header(&md, EntryType::Symlink, 0);
            self.builder
                .append_link(&mut h, rel, &target)
                .map_err(|e| self.write_err(rel, e))
        } else {
            log::debug!(
                "{}: not a file, directory or symlink, skipped",
                path.display()
            );
            Ok(())
        }
    }

    fn dir_entry(&mut self, rel: &str, md: &fs::Metadata) -> Result<()> {
        let mut h = header(md, EntryType::Directory, 0);
        self.builder
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| self.write_err(rel, e))
    }

    fn file_entry(&mut self, path: &Path, rel: &str, md: &fs::Metadata) -> Result<()> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if is_gone(&e) => {
                log::debug!("{}: vanished during the backup, skipped", path.display());
                self.stats.changed += 1;
                return Ok(());
            }
            Err(e) => return Err(PathError::new("open", path, e).into()),
        };
        let size = md.len();
        let mut h = header(md, EntryType::Regular, size);
        let mut src = Padded {
            inner: (&mut f).take(size),
            left: size,
            padding: false,
            read_err: None,
        };
        let r = self.builder.append_data(&mut h, rel, &mut src);
        if let Some(e) = src.read_err.take() {
            return Err(PathError::new("read", path, e).into());
        }
        r.map_err(|e| self.write_err(rel, e))?;
        if src.padding {
            log::debug!("{}: shrank during the backup, zero-padded", path.display());
            self.stats.changed += 1;
        }
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    /// A small file made here (backup_label, tablespace_map).
    pub fn add_bytes(&mut self, rel: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        h.set_mtime(now);
        self.builder
            .append_data(&mut h, rel, data)
            .map_err(|e| self.write_err(rel, e))
    }

    /// End the archive; returns the writer.
    pub fn finish(self) -> Result<W> {
        self.builder.into_inner().map_err(|e| {
            WalmgrError::Internal(format!("base backup stream: finishing the tar: {e}"))
        })
    }

    fn write_err(&self, rel: &str, e: io::Error) -> WalmgrError {
        WalmgrError::Output {
            what: format!("base backup stream: writing {rel}"),
            err: e,
        }
    }
}

fn header(md: &fs::Metadata, kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(md.permissions().mode() & 0o7777);
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    h
}

/// Directory entries sorted by name (a stable order makes two backups comparable).
fn sorted_dir(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let rd = fs::read_dir(dir).map_err(path_err("list", dir))?;
    let mut v = Vec::new();
    for e in rd {
        match e {
            Ok(e) => v.push((e.file_name(), e.path())),
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(PathError::new("list", dir, e).into()),
        }
    }
    v.sort();
    Ok(v)
}

/// Exactly `left` bytes: the file's, then zeros if it ended early. A read error is kept
/// aside so it is reported with the file's path, not as a tar write error.
struct Padded<R> {
    inner: R,
    left: u64,
    padding: bool,
    read_err: Option<io::Error>,
}

impl<R: Read> Read for Padded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = if self.padding {
            0
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => {
                    let msg = e.to_string();
                    self.read_err = Some(e);
                    return Err(io::Error::other(msg));
                }
            }
        };
        let n = if n == 0 {
            self.padding = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, data: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// name → (kind, contents or link target)
    fn entries(tar: &[u8]) -> BTreeMap<String, (EntryType, Vec<u8>)> {
        let mut a = tar::Archive::new(tar);
        let mut m = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let kind = e.header().entry_type();
            let body = if kind == EntryType::Symlink {
                e.link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes()
                    .to_vec()
            } else {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                v
            };
            m.insert(name, (kind, body));
        }
        m
    }

    #[test]
    fn data_dir_with_exclusions_and_tablespace() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let ts = d.path().join("ts1");
        write(&data.join("PG_VERSION"), b"15\n");
        write(&data.join("global/pg_control"), &[1u8; 8192]);
        write(&data.join("global/pg_internal.init"), b"x");
        write(&data.join("base/1/1259"), &[2u8; 1000]);
        write(&data.join("base/1/pg_internal.init.123"), b"x");
        write(&data.join("base/pgsql_tmp/pgsql_tmp1.0"), b"x");
        write(&data.join("pg_wal/000000010000000000000001"), &[0u8; 100]);
        write(
            &data.join("pg_wal/archive_status/000000010000000000000001.done"),
            b"",
        );
        write(&data.join("pg_stat_tmp/global.stat"), b"x");
        fs::create_dir_all(data.join("pg_subtrans")).unwrap();
        for f in EXCLUDED_FILES {
            write(&data.join(f), b"x");
        }
        write(&data.join("postgresql.auto.conf"), b"a = 1\n");
        symlink("/etc/ssl/cert.pem", data.join("server.crt")).unwrap();
        // A name longer than 100 bytes needs the GNU long-name extension.
        let long = "l".repeat(150);
        write(&data.join("base/1").join(&long), b"long");
        write(&ts.join("PG_15_202209061/5/16384"), &[3u8; 10]);
        write(&ts.join("PG_15_202209061/pgsql_tmp/t"), b"x");
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        symlink(&ts, data.join("pg_tblspc/16400")).unwrap();
        fs::set_permissions(data.join("base/1/1259"), fs::Permissions::from_mode(0o600)).unwrap();

        let mut w = TarWriter::new(Vec::new());
        let tbs = [Tablespace {
            oid: 16400,
            location: ts.clone(),
        }];
        w.data_dir(&data, &tbs).unwrap();
        w.add_bytes("backup_label", b"LABEL", 0o600).unwrap();
        assert_eq!(w.stats.changed, 0);
        let tar = w.finish().unwrap();
        let m = entries(&tar);
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        let long_name = format!("base/1/{long}");
        let mut want = vec![
            "PG_VERSION",
            "backup_label",
            "base",
            "base/1",
            "base/1/1259",
            &long_name,
            "global",
            "global/pg_control",
            "pg_stat_tmp",
            "pg_subtrans",
            "pg_tblspc",
            "pg_tblspc/16400",
            "pg_tblspc/16400/PG_15_202209061",
            "pg_tblspc/16400/PG_15_202209061/5",
            "pg_tblspc/16400/PG_15_202209061/5/16384",
            "pg_wal",
            "pg_wal/archive_status",
            "postgresql.auto.conf",
            "server.crt",
        ];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(m["base/1/1259"].1, vec![2u8; 1000]);
        assert_eq!(m["backup_label"].1, b"LABEL");
        assert_eq!(m["pg_tblspc/16400"].0, EntryType::Directory);
        assert_eq!(
            m["server.crt"],
            (EntryType::Symlink, b"/etc/ssl/cert.pem".to_vec())
        );
        assert_eq!(m[long_name.as_str()].1, b"long");
        let mut a = tar::Archive::new(&tar[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            if e.path().unwrap().to_str() == Some("base/1/1259") {
                assert_eq!(e.header().mode().unwrap(), 0o600);
            }
        }
    }

    #[test]
    fn shrinking_file_is_padded_to_its_stat_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, [7u8; 3000]).unwrap();
        let md = fs::metadata(&p).unwrap();
        fs::write(&p, [7u8; 1000]).unwrap();
        let mut w = TarWriter::new(Vec::new());
        w.file_entry(&p, "f", &md).unwrap();
        assert_eq!(w.stats.changed, 1);
        let tar = w.finish().unwrap();
        let body = &entries(&tar)["f"].1;
        assert_eq!(body.len(), 3000);
        assert_eq!(&body[..1000], &[7u8; 1000][..]);
        assert!(body[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn growing_file_is_cut_and_vanished_file_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, [1u8; 100]).unwrap();
        let md = fs::metadata(&p).unwrap();
        fs::write(&p, [1u8; 5000]).unwrap();
        let mut w = TarWriter::new(Vec::new());
        w.file_entry(&p, "f", &md).unwrap();
        fs::remove_file(&p).unwrap();
        w.file_entry(&p, "g", &md).unwrap();
        let gone = d.path().join("gone");
        w.entry(&gone, "gone", fs::metadata(d.path()).unwrap())
            .unwrap();
        let tar = w.finish().unwrap();
        let m = entries(&tar);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["f"]);
        assert_eq!(m["f"].1.len(), 100);
    }

    #[test]
    fn missing_data_dir_is_an_error_naming_it() {
        let mut w = TarWriter::new(Vec::new());
        let e = w
            .data_dir(Path::new("/nonexistent/walmgr"), &[])
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/walmgr"), "{e}");
    }
}
