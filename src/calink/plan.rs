//! `--dry-run`: what a run would collect, one line each, without reading a file's
//! content or running a command.

use std::fmt::Write as _;
use std::path::Path;

use super::config::Settings;
use super::walk::{walk, Found};
use crate::glob;

pub fn plan(s: &Settings, archive: &Path, exclude: &dyn Fn(&Path) -> bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "archive {}", archive.display());
    for (group, items) in &s.info {
        let names: Vec<&str> = items.iter().map(|i| i.name()).collect();
        let _ = writeln!(out, "info {group}: {}", names.join(", "));
    }
    let cap = s.limits.max_file_size;
    for spec in &s.files {
        let mut paths = glob::expand(&spec.pattern);
        if spec.optional {
            paths.retain(|p| p.symlink_metadata().is_ok());
        }
        if paths.is_empty() {
            let _ = writeln!(
                out,
                "nothing {} ([files] {}: no match)",
                spec.pattern, spec.key
            );
        }
        for p in paths {
            let follow = !glob::has_wildcard(&spec.pattern);
            let _ = walk(&p, follow, spec.recurse, exclude, &mut |f| {
                let _ = match f {
                    Found::File { path, meta, .. } if meta.len() > cap => writeln!(
                        out,
                        "file {} ({} bytes, the last {cap} kept)",
                        path.display(),
                        meta.len()
                    ),
                    Found::File { path, meta, .. } => {
                        writeln!(out, "file {} ({} bytes)", path.display(), meta.len())
                    }
                    Found::Symlink { path, target, .. } => {
                        writeln!(out, "link {} -> {}", path.display(), target.display())
                    }
                    Found::Skipped { path, reason } => {
                        writeln!(out, "skip {} ({reason})", path.display())
                    }
                    Found::Excluded { path, reason } => {
                        writeln!(out, "exclude {} ({reason})", path.display())
                    }
                };
                Ok(())
            });
        }
    }
    for (label, line) in &s.commands {
        let _ = writeln!(
            out,
            "command {label}: {line} (timeout {:.1} s)",
            s.limits.command_timeout.as_secs_f64()
        );
    }
    out
}
