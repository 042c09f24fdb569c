//! The metadata git cannot keep, as a versioned data file (never a script).
//!
//! The file (`.pacha-metadata` at the root of every commit's tree; written into the
//! index as a blob, so it never sits in a tracked directory) is JSON lines: a header
//! `{"pacha_metadata":1}`, then one object per path in byte (LC_COLLATE=C) order:
//!
//! ```text
//! {"path":"/etc/shadow","type":"file","mode":"0640","uid":0,"user":"root","gid":42,"group":"shadow","mtime":[1700000000,0]}
//! {"path":"/etc/x/dev","type":"char","mode":"0600",...,"rdev":[1,3]}
//! {"path":"/etc/x/link","type":"symlink",...,"target":"../nowhere"}
//! {"path":"/etc/x/f","type":"file",...,"xattrs":{"system.posix_acl_access":"0200..."},"hardlink":"/etc/x/e"}
//! ```
//!
//! `mode` is the full 12 bits (setuid, setgid, sticky included) in octal; owner and group
//! are kept as names and ids (names win on restore when they exist there); extended
//! attributes are hex, every namespace, POSIX ACLs being the `system.posix_acl_access`
//! and `system.posix_acl_default` attributes; `hardlink` names the first path of the same
//! inode (reported; git keeps each name's content). Directories carry no mtime: it moves
//! whenever an ignored editor file comes and goes, which would be a commit each time.
//! FIFOs and device nodes (and empty directories) exist only here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::PachaError;
use super::ignore::Ignore;

pub const FORMAT: u32 = 1;
/// The metadata file's name at the root of each commit.
pub const META_PATH: &str = ".pacha-metadata";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<(i64, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<(u64, u64)>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardlink: Option<String>,
}

mod octal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{m:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| serde::de::Error::custom(format!("bad mode {s:?}")))
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    pacha_metadata: u32,
}

impl Entry {
    /// What differs between the recorded `self` and `now` (field names).
    pub fn changes(&self, now: &Entry) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.kind != now.kind {
            c.push("type");
        }
        if self.mode != now.mode {
            c.push("mode");
        }
        if self.uid != now.uid || self.user != now.user {
            c.push("owner");
        }
        if self.gid != now.gid || self.group != now.group {
            c.push("group");
        }
        if self.mtime != now.mtime {
            c.push("mtime");
        }
        if self.target != now.target {
            c.push("target");
        }
        if self.rdev != now.rdev {
            c.push("rdev");
        }
        if self.xattrs != now.xattrs {
            c.push("xattrs");
        }
        if self.hardlink != now.hardlink {
            c.push("hardlink");
        }
        c
    }
}

/// The data file's text (entries are sorted by the caller or by [`scan`]).
pub fn serialize(entries: &[Entry]) -> String {
    let mut s = serde_json::to_string(&Header {
        pacha_metadata: FORMAT,
    })
    .expect("header serializes");
    s.push('\n');
    for e in entries {
        s.push_str(&serde_json::to_string(e).expect("entry serializes"));
        s.push('\n');
    }
    s
}

/// Read a data file; `what` names it in errors (a revision).
pub fn parse(text: &str, what: &str) -> Result<Vec<Entry>, PachaError> {
    let mut lines = text.lines();
    let bad = |n: usize, e: String| {
        PachaError::meta(format!("{META_PATH} at {what}"), format!("line {n}: {e}"))
    };
    let head: Header = serde_json::from_str(lines.next().unwrap_or(""))
        .map_err(|e| bad(1, format!("not a pacha metadata header: {e}")))?;
    if head.pacha_metadata > FORMAT {
        return Err(bad(
            1,
            format!(
                "format {} is newer than this pacha's ({FORMAT})",
                head.pacha_metadata
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, l) in lines.enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(l).map_err(|e| bad(i + 2, e.to_string()))?);
    }
    Ok(out)
}

/// What a scan found, and what it could not record.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Sockets and names that are not UTF-8 (skipped); hardlinks (recorded).
    pub warnings: Vec<String>,
}

#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// Record every path under `roots` (each root itself included) not ignored and not
/// under one of `exclude`. A root that does not exist is skipped (it was deleted).
pub fn scan(roots: &[PathBuf], ignore: &Ignore, exclude: &[PathBuf]) -> Result<Scan, PachaError> {
    let mut found: BTreeMap<String, Entry> = BTreeMap::new();
    let mut scan = Scan::default();
    let mut names = Names::default();
    let mut links: HashMap<String, (u64, u64)> = HashMap::new();
    for root in roots {
        match std::fs::symlink_metadata(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PachaError::meta(root, e)),
            Ok(_) => {}
        }
        let mut stack = vec![root.clone()];
        while let Some(p) = stack.pop() {
            if exclude.iter().any(|x| p.starts_with(x)) || (p != *root && ignore.ignored(&p)) {
                continue;
            }
            let Some(ps) = p.to_str().map(str::to_string) else {
                scan.warnings
                    .push(format!("{}: name is not UTF-8, skipped", p.display()));
                continue;
            };
            if found.contains_key(&ps) {
                continue;
            }
            let md = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                // Gone between listing and lstat: it is not there to record.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PachaError::meta(&p, e)),
            };
            let ft = md.file_type();
            if ft.is_socket() {
                scan.warnings
                    .push(format!("{}: socket, not recorded", p.display()));
                continue;
            }
            let entry = entry_for(&p, ps.clone(), &md, &mut names, &mut links)?;
            if ft.is_dir() {
                let rd = std::fs::read_dir(&p).map_err(|e| PachaError::meta(&p, e))?;
                for d in rd {
                    let d = d.map_err(|e| PachaError::meta(&p, e))?;
                    stack.push(d.path());
                }
            }
            found.insert(ps, entry);
        }
    }
    scan.entries = found.into_values().collect();
    // The first name (in path order) of an inode is the one the others point to.
    let mut first: HashMap<(u64, u64), String> = HashMap::new();
    for e in &mut scan.entries {
        if let Some(ino) = links.get(&e.path) {
            match first.get(ino) {
                Some(f) => {
                    scan.warnings.push(format!(
                        "{}: hardlink of {f} (kept as a separate file)",
                        e.path
                    ));
                    e.hardlink = Some(f.clone());
                }
                None => {
                    first.insert(*ino, e.path.clone());
                }
            }
        }
    }
    Ok(scan)
}

/// The entry for one path, already lstat'ed.
fn entry_for(
    p: &Path,
    ps: String,
    md: &std::fs::Metadata,
    names: &mut Names,
    links: &mut HashMap<String, (u64, u64)>,
) -> Result<Entry, PachaError> {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else {
        Kind::File
    };
    let target = if kind == Kind::Symlink {
        let t = std::fs::read_link(p).map_err(|e| PachaError::meta(p, e))?;
        Some(
            t.to_str()
                .ok_or_else(|| PachaError::meta(p, "symlink target is not UTF-8"))?
                .to_string(),
        )
    } else {
        None
    };
    let rdev = matches!(kind, Kind::Char | Kind::Block).then(|| {
        let r = md.rdev();
        (nix::sys::stat::major(r), nix::sys::stat::minor(r))
    });
    if kind != Kind::Dir && md.nlink() > 1 {
        links.insert(ps.clone(), (md.dev(), md.ino()));
    }
    let mut xattrs = BTreeMap::new();
    for name in list_xattrs(p).map_err(|e| PachaError::meta(p, format!("listxattr: {e}")))? {
        match get_xattr(p, &name) {
            Ok(v) => {
                xattrs.insert(name, hex(&v));
            }
            // Removed between list and get.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => {}
            Err(e) => return Err(PachaError::meta(p, format!("getxattr {name}: {e}"))),
        }
    }
    Ok(Entry {
        path: ps,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        user: names.user(md.uid()),
        gid: md.gid(),
        group: names.group(md.gid()),
        mtime: (kind != Kind::Dir).then(|| (md.mtime(), md.mtime_nsec() as u32)),
        target,
        rdev,
        xattrs,
        hardlink: None,
    })
}

/// The entry for one path as it is now (None if it does not exist).
pub fn stat_entry(p: &Path) -> Result<Option<Entry>, PachaError> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PachaError::meta(p, e)),
    };
    let ps = p.to_string_lossy().into_owned();
    entry_for(p, ps, &md, &mut Names::default(), &mut HashMap::new()).map(Some)
}

/// Resolves recorded owner and group names on this host, once each, and remembers the
/// names that are missing (their recorded ids are used).
#[derive(Default)]
pub struct Ids {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
    warned: HashSet<String>,
    /// One line per missing name.
    pub warnings: Vec<String>,
}

impl Ids {
    pub fn uid(&mut self, e: &Entry) -> u32 {
        let Some(name) = &e.user else { return e.uid };
        let id = *self.users.entry(name.clone()).or_insert_with(|| {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        });
        id.unwrap_or_else(|| {
            if self.warned.insert(format!("u:{name}")) {
                self.warnings.push(format!(
                    "user {name} does not exist here: uid {} used as recorded (first: {})",
                    e.uid, e.path
                ));
            }
            e.uid
        })
    }

    pub fn gid(&mut self, e: &Entry) -> u32 {
        let Some(name) = &e.group else { return e.gid };
        let id = *self.groups.entry(name.clone()).or_insert_with(|| {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        });
        id.unwrap_or_else(|| {
            if self.warned.insert(format!("g:{name}")) {
                self.warnings.push(format!(
                    "group {name} does not exist here: gid {} used as recorded (first: {})",
                    e.gid, e.path
                ));
            }
            e.gid
        })
    }
}

/// Give `target` (an object of `entry`'s type) exactly the recorded metadata: owner and
/// group, extended attributes (ACLs included; others removed), the full mode, mtime.
pub fn apply(entry: &Entry, target: &Path, ids: &mut Ids) -> Result<(), PachaError> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| PachaError::meta(target, format!("{what}: {e}"));
    let (uid, gid) = (ids.uid(entry), ids.gid(entry));
    std::os::unix::fs::lchown(target, Some(uid), Some(gid)).map_err(|e| err("chown", &e))?;
    let symlink = entry.kind == Kind::Symlink;
    let now = list_xattrs(target).map_err(|e| err("listxattr", &e))?;
    for name in now {
        if !entry.xattrs.contains_key(&name) {
            match remove_xattr(target, &name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => {}
                Err(e) => return Err(err(&format!("removexattr {name}"), &e)),
            }
        }
    }
    for (name, value) in &entry.xattrs {
        let v = unhex(value).ok_or_else(|| err(&format!("xattr {name}"), &"bad hex value"))?;
        if symlink && name.starts_with("user.") {
            continue;
        }
        set_xattr(target, name, &v).map_err(|e| err(&format!("setxattr {name}"), &e))?;
    }
    if !symlink {
        // After chown (which clears setuid/setgid) and after the ACL (whose mask is the
        // group bits of the recorded mode).
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(entry.mode))
            .map_err(|e| err("chmod", &e))?;
    }
    if let Some((s, ns)) = entry.mtime {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            target,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            &nix::sys::time::TimeSpec::new(s, ns.into()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| err("utimensat", &e))?;
    }
    Ok(())
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))
}

fn not_supported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ENOTSUP)
}

/// The extended attribute names of `p` (not following a symlink).
pub fn list_xattrs(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p)?;
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the size.
        let n = unsafe { nix::libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if not_supported(&e) {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe { nix::libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(nix::libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        let mut names: Vec<String> = buf
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort();
        return Ok(names);
    }
}

pub fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| io::Error::other("NUL in name"))?;
    loop {
        // SAFETY: size query.
        let len = unsafe { nix::libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe {
            nix::libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(nix::libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| io::Error::other("NUL in name"))?;
    // SAFETY: value is valid for value.len() bytes.
    let r = unsafe {
        nix::libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn remove_xattr(p: &Path, name: &str) -> io::Result<()> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| io::Error::other("NUL in name"))?;
    // SAFETY: both strings are NUL-terminated.
    let r = unsafe { nix::libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a.b"), "x").unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), "y").unwrap();
        std::fs::write(root.join("a/f.dpkg-old"), "y").unwrap();
        std::fs::hard_link(root.join("a/f"), root.join("a/g")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        std::fs::set_permissions(root.join("a.b"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        let s = scan(std::slice::from_ref(&root), &Ignore::new(&[]), &[]).unwrap();
        let names: Vec<String> = s
            .entries
            .iter()
            .map(|e| {
                e.path
                    .strip_prefix(root.to_str().unwrap())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "",
                "/a",
                "/a.b",
                "/a/f",
                "/a/g",
                "/dangling",
                "/empty",
                "/fifo"
            ]
        );
        let ab = &s.entries[2];
        assert_eq!((ab.kind, ab.mode), (Kind::File, 0o4755));
        assert_eq!(
            s.entries[4].hardlink.as_deref(),
            Some(s.entries[3].path.as_str())
        );
        assert_eq!(s.entries[5].target.as_deref(), Some("/nowhere"));
        assert_eq!(s.entries[7].kind, Kind::Fifo);
        assert!(s.warnings.iter().any(|w| w.contains("hardlink")));
        let text = serialize(&s.entries);
        assert!(text.contains("\"mode\":\"4755\""), "{text}");
        assert_eq!(parse(&text, "test").unwrap(), s.entries);
        assert!(parse("{\"pacha_metadata\":9}\n", "r")
            .unwrap_err()
            .to_string()
            .contains("newer"));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
