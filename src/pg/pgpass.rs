//! libpq's password file (`~/.pgpass`, or the file PGPASSFILE names): one
//! `host:port:database:user:password` per line, the first line that matches wins, a
//! field of just `*` matches anything, `\` escapes `:` and `\`. A file group or others
//! may read is ignored, as libpq does ([`PassFile::load`] says why, [`PassFile::read`]
//! warns); a missing one is no error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Any,
    Is(String),
}

impl Field {
    fn matches(&self, v: &str) -> bool {
        match self {
            Field::Any => true,
            Field::Is(s) => s == v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: Field,
    port: Field,
    db: Field,
    user: Field,
    password: String,
}

/// The parsed lines of one password file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassFile {
    entries: Vec<Entry>,
}

/// What a connection is matched on. `host` is the host name as given, or `localhost`
/// for the default socket directory (see [`super::conninfo`]).
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub host: &'a str,
    pub port: u16,
    pub db: &'a str,
    pub user: &'a str,
}

/// Split a line into its fields at unescaped `:`, removing the escapes. The fifth
/// field, the password, runs to the next unescaped `:` as in libpq (anything after it
/// is ignored).
fn fields(line: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    // Whether the field was a bare `*` as written (an escaped `\*` is a literal).
    let mut raw = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    raw.push('\\');
                    raw.push(n);
                }
            }
            ':' => {
                out.push((std::mem::take(&mut cur), raw == "*"));
                raw.clear();
            }
            c => {
                cur.push(c);
                raw.push(c);
            }
        }
    }
    out.push((cur, raw == "*"));
    out
}

impl PassFile {
    pub fn parse(text: &str) -> PassFile {
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let f = fields(line);
            // Fewer than five fields never matches in libpq; skip the line.
            if f.len() < 5 {
                continue;
            }
            let field = |i: usize| {
                if f[i].1 {
                    Field::Any
                } else {
                    Field::Is(f[i].0.clone())
                }
            };
            entries.push(Entry {
                host: field(0),
                port: field(1),
                db: field(2),
                user: field(3),
                password: f[4].0.clone(),
            });
        }
        PassFile { entries }
    }

    /// The password of the first matching line. An empty one counts as none.
    pub fn lookup(&self, k: Key<'_>) -> Option<&str> {
        let port = k.port.to_string();
        self.entries
            .iter()
            .find(|e| {
                e.host.matches(k.host)
                    && e.port.matches(&port)
                    && e.db.matches(k.db)
                    && e.user.matches(k.user)
            })
            .map(|e| e.password.as_str())
            .filter(|p| !p.is_empty())
    }

    /// [`PassFile::load`], warning when the file is ignored.
    pub fn read(path: &Path) -> Option<PassFile> {
        PassFile::load(path).unwrap_or_else(|why| {
            log::warn!("{why}");
            None
        })
    }

    /// Read `path` as libpq does: a missing file gives nothing; one that cannot be
    /// read, is not a plain file, or that group or others may access is ignored, and
    /// the error says why (the password must not be readable by anyone else).
    pub fn load(path: &Path) -> Result<Option<PassFile>, String> {
        let ignored = |why: String| Err(format!("password file {} {why}; ignored", path.display()));
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return ignored(format!("cannot be read ({e})")),
        };
        if !meta.is_file() {
            return ignored("is not a plain file".into());
        }
        if too_open(meta.permissions().mode()) {
            return ignored(
                "has group or world access; permissions should be u=rw (0600) or less".into(),
            );
        }
        match std::fs::read(path) {
            Ok(b) => Ok(Some(PassFile::parse(&String::from_utf8_lossy(&b)))),
            Err(e) => ignored(format!("cannot be read ({e})")),
        }
    }
}

/// Any permission bit for group or others makes libpq ignore the file.
fn too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// The password file to use: PGPASSFILE, else `.pgpass` in the home directory.
pub fn path(pgpassfile: Option<&str>, home: Option<&Path>) -> Option<PathBuf> {
    match pgpassfile.filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => home.map(|h| h.join(".pgpass")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, port: u16, db: &'a str, user: &'a str) -> Key<'a> {
        Key {
            host,
            port,
            db,
            user,
        }
    }

    #[test]
    fn first_match_wins_with_wildcards() {
        let f = PassFile::parse(
            "# hostname:port:database:username:password\n\
             \n\
             db1.example:5432:app:alice:first\n\
             *:5432:*:alice:second\n\
             localhost:*:*:*:third\r\n\
             *:*:*:*:\n",
        );
        assert_eq!(
            f.lookup(key("db1.example", 5432, "app", "alice")),
            Some("first")
        );
        assert_eq!(
            f.lookup(key("db2.example", 5432, "app", "alice")),
            Some("second")
        );
        assert_eq!(f.lookup(key("localhost", 5433, "x", "bob")), Some("third"));
        // The catch-all line has an empty password: as good as none.
        assert_eq!(f.lookup(key("elsewhere", 5433, "x", "bob")), None);
    }

    #[test]
    fn escapes_and_literal_star() {
        let f = PassFile::parse(
            "h\\:x:5432:d:u:pa\\:ss\\\\word:ignored\n\
             \\*:5432:d:u:starhost\n\
             short:5432:d:u\n",
        );
        assert_eq!(f.lookup(key("h:x", 5432, "d", "u")), Some("pa:ss\\word"));
        // `\*` is a host literally named "*", not a wildcard.
        assert_eq!(f.lookup(key("other", 5432, "d", "u")), None);
        assert_eq!(f.lookup(key("*", 5432, "d", "u")), Some("starhost"));
        // A line with four fields is skipped.
        assert_eq!(f.lookup(key("short", 5432, "d", "u")), None);
    }

    #[test]
    fn mode_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pgpass");
        assert_eq!(PassFile::read(&p), None);
        std::fs::write(&p, "*:*:*:*:pw\n").unwrap();
        for (mode, used) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let f = PassFile::read(&p);
            assert_eq!(f.is_some(), used, "mode {mode:o}");
        }
        assert_eq!(PassFile::read(d.path()), None, "a directory is ignored");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            PassFile::load(&p).unwrap_err(),
            format!(
                "password file {} has group or world access; permissions should be u=rw (0600) or less; ignored",
                p.display()
            )
        );
    }

    #[test]
    fn file_location() {
        assert_eq!(
            path(Some("/etc/pw"), Some(Path::new("/home/a"))),
            Some(PathBuf::from("/etc/pw"))
        );
        assert_eq!(
            path(Some(""), Some(Path::new("/home/a"))),
            Some(PathBuf::from("/home/a/.pgpass"))
        );
        assert_eq!(path(None, None), None);
    }
}
