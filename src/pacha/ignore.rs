//! What is never tracked: etckeeper's defaults (package manager leftovers, editor temp
//! files, caches that change by themselves) plus the `ignore` key.
//!
//! A pattern without `/` matches a name at any depth; `a/b` matches the last
//! components of a path (`lvm/cache` is `/etc/lvm/cache`); `/a/b` matches the whole
//! absolute path. `*` and `?` match any character, a leading dot included (as git's
//! ignore rules do, so pacha's scan and git agree on every name). The same list is
//! written to the repository's `info/exclude`, so nothing is ever written into a
//! tracked tree.

use std::path::Path;

/// etckeeper's managed ignore block, plus pacha's own rollback/rebuild leftovers.
pub const DEFAULTS: &[&str] = &[
    "*.dpkg-*",
    "*.ucf-*",
    "*.old",
    "*.pacha-old-*",
    ".pacha-tmp*",
    ".tmp.*",
    "*~",
    "*.swp",
    "*.swo",
    ".#*",
    "#*#",
    "*.bak.tmp",
    ".git",
    "mtab",
    "ld.so.cache",
    "adjtime",
    "lvm/cache",
    "lvm/backup",
    "lvm/archive",
    "blkid.tab",
    "blkid.tab.old",
    "prelink.cache",
    "resolv.conf.dhclient-new*",
];

#[derive(Debug, Clone)]
pub struct Ignore {
    patterns: Vec<Vec<String>>,
    anchored: Vec<bool>,
    raw: Vec<String>,
}

impl Ignore {
    pub fn new(extra: &[String]) -> Ignore {
        let mut i = Ignore {
            patterns: Vec::new(),
            anchored: Vec::new(),
            raw: Vec::new(),
        };
        for p in DEFAULTS
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
        {
            let p = p.trim().trim_end_matches('/').to_string();
            if p.is_empty() {
                continue;
            }
            i.anchored.push(p.starts_with('/'));
            i.patterns.push(
                p.trim_start_matches('/')
                    .split('/')
                    .map(str::to_string)
                    .collect(),
            );
            i.raw.push(p);
        }
        i
    }

    /// Is the absolute path `path` ignored (itself; a caller skips what is below)?
    pub fn ignored(&self, path: &Path) -> bool {
        let comps: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        self.patterns
            .iter()
            .zip(&self.anchored)
            .any(|(pat, &anch)| {
                if anch {
                    pat.len() == comps.len()
                        && pat
                            .iter()
                            .zip(&comps)
                            .all(|(p, c)| crate::glob::fnmatch(p, c))
                } else {
                    pat.len() <= comps.len()
                        && pat
                            .iter()
                            .zip(&comps[comps.len() - pat.len()..])
                            .all(|(p, c)| crate::glob::fnmatch(p, c))
                }
            })
    }

    /// The same rules for git (`info/exclude`, the work tree being `/`).
    pub fn git_exclude(&self) -> String {
        let mut s =
            String::from("# written by pacha on every commit; edit the ignore key instead\n");
        for p in &self.raw {
            if let Some(abs) = p.strip_prefix('/') {
                s.push('/');
                s.push_str(abs);
            } else if p.contains('/') {
                s.push_str("**/");
                s.push_str(p);
            } else {
                s.push_str(p);
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let i = Ignore::new(&["/srv/app/cache".into(), "*.bak".into()]);
        for p in [
            "/etc/passwd.dpkg-old",
            "/etc/x.ucf-dist",
            "/etc/.sudoers.swp",
            "/etc/fstab~",
            "/etc/.#hosts",
            "/etc/lvm/cache",
            "/etc/mtab",
            "/srv/app/cache",
            "/etc/a.bak",
        ] {
            assert!(i.ignored(Path::new(p)), "{p}");
        }
        for p in [
            "/etc/passwd",
            "/etc/cache",
            "/srv/app/x/cache",
            "/etc/lvm/lvm.conf",
        ] {
            assert!(!i.ignored(Path::new(p)), "{p}");
        }
        let g = i.git_exclude();
        assert!(
            g.contains("\n**/lvm/cache\n") && g.contains("\n/srv/app/cache\n"),
            "{g}"
        );
    }
}
