//! What a `[files]` entry names on disk: the files under a path, found without ever
//! following a symbolic link inside a collected directory (a link to / in a log
//! directory must not pull the whole host into the archive).

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// One thing found.
#[derive(Debug)]
pub enum Found<'a> {
    /// A regular file. `follow` is true for a path named in the config itself (which may
    /// be a link, as /etc/os-release is), false inside a walked directory.
    File {
        path: &'a Path,
        meta: Metadata,
        follow: bool,
    },
    Symlink {
        path: &'a Path,
        target: PathBuf,
        meta: Metadata,
    },
    /// Not there, or could not be looked at; `reason` says which.
    Skipped { path: &'a Path, reason: String },
    /// Deliberately not read (a socket, a device, calink's own files...).
    Excluded { path: &'a Path, reason: String },
}

/// Visit what `path` names: the path itself (followed if a link and `follow`: a path
/// written out in the config, not one a glob found inside a directory), and, when it is
/// a directory and `recurse`, everything below it in name order.
pub fn walk(
    path: &Path,
    follow: bool,
    recurse: bool,
    exclude: &dyn Fn(&Path) -> bool,
    visit: &mut dyn FnMut(Found<'_>) -> io::Result<()>,
) -> io::Result<()> {
    visit_one(path, follow, recurse, exclude, visit)
}

fn visit_one(
    path: &Path,
    top: bool,
    recurse: bool,
    exclude: &dyn Fn(&Path) -> bool,
    visit: &mut dyn FnMut(Found<'_>) -> io::Result<()>,
) -> io::Result<()> {
    if exclude(path) {
        return visit(Found::Excluded {
            path,
            reason: "calink's own file".into(),
        });
    }
    let meta = if top {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            let reason = if e.kind() == io::ErrorKind::NotFound {
                if fs::symlink_metadata(path).is_ok() {
                    "a dangling symbolic link".to_string()
                } else {
                    "not found".to_string()
                }
            } else {
                e.to_string()
            };
            return visit(Found::Skipped { path, reason });
        }
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return match fs::read_link(path) {
            Ok(target) => visit(Found::Symlink { path, target, meta }),
            Err(e) => visit(Found::Skipped {
                path,
                reason: e.to_string(),
            }),
        };
    }
    if ft.is_file() {
        return visit(Found::File {
            path,
            meta,
            follow: top,
        });
    }
    if ft.is_dir() {
        if !recurse {
            return visit(Found::Excluded {
                path,
                reason: "a directory (only the files in it were asked for)".into(),
            });
        }
        let entries = match fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => {
                return visit(Found::Skipped {
                    path,
                    reason: format!("cannot list: {e}"),
                })
            }
        };
        let mut names: Vec<PathBuf> = Vec::new();
        for e in entries {
            match e {
                Ok(e) => names.push(e.path()),
                Err(e) => {
                    return visit(Found::Skipped {
                        path,
                        reason: format!("cannot list: {e}"),
                    })
                }
            }
        }
        names.sort();
        for child in names {
            visit_one(&child, false, true, exclude, visit)?;
        }
        return Ok(());
    }
    let what = if ft.is_socket() {
        "a socket"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    visit(Found::Excluded {
        path,
        reason: format!("{what}: not read"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn listing(path: &Path, recurse: bool) -> Vec<String> {
        listing_with(path, true, recurse)
    }

    fn listing_with(path: &Path, follow: bool, recurse: bool) -> Vec<String> {
        let mut out = Vec::new();
        let ex = |p: &Path| p.ends_with("own");
        walk(path, follow, recurse, &ex, &mut |f| {
            out.push(match f {
                Found::File { path, follow, .. } => format!("file {} {follow}", path.display()),
                Found::Symlink { path, target, .. } => {
                    format!("link {} -> {}", path.display(), target.display())
                }
                Found::Skipped { path, reason } => format!("skip {} {reason}", path.display()),
                Found::Excluded { path, reason } => format!("excl {} {reason}", path.display()),
            });
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn links_inside_a_directory_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("r");
        fs::create_dir_all(r.join("sub")).unwrap();
        fs::write(r.join("a"), "a").unwrap();
        fs::write(r.join("sub/b"), "b").unwrap();
        fs::write(r.join("own"), "").unwrap();
        symlink("/", r.join("root")).unwrap();
        symlink("/nonexistent", d.path().join("dangling")).unwrap();
        symlink(&r, d.path().join("to-r")).unwrap();
        let p = |s: &str| d.path().join(s).display().to_string();
        assert_eq!(
            listing(&r, true),
            [
                format!("file {} false", p("r/a")),
                format!("excl {} calink's own file", p("r/own")),
                format!("link {} -> /", p("r/root")),
                format!("file {} false", p("r/sub/b")),
            ]
        );
        // A link named in the config is followed; one inside is not.
        assert_eq!(
            listing(&d.path().join("to-r"), true)[0],
            format!("file {}/a false", p("to-r"))
        );
        assert_eq!(
            listing(&d.path().join("dangling"), true),
            [format!("skip {} a dangling symbolic link", p("dangling"))]
        );
        assert_eq!(
            listing(&d.path().join("nope"), true),
            [format!("skip {} not found", p("nope"))]
        );
        assert!(listing(&r, false)[0].starts_with("excl"));
        // Found by a glob: stored as the link it is.
        assert_eq!(
            listing_with(&d.path().join("to-r"), false, true),
            [format!("link {} -> {}", p("to-r"), r.display())]
        );
    }
}
