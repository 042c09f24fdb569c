//! The CaLink INI, read into one [`Settings`] value before anything is collected.
//!
//! ```ini
//! [info]            ; group = items; each group is a key of the JSON
//! system = host, os, uptime, version
//! [files]
//! etc_calink_dirs = .                 ; CaLink's form: <prefix>/etc/calink, recursively
//! var_log_files = syslog, dpkg.log    ; <prefix>/var/log/syslog and .../dpkg.log
//! hostkit = /etc/skytools.ini         ; any other key: absolute paths or globs,
//!     /var/log/skytools/*.log         ; one a line; ?/path: may be missing
//!     ?/var/log/syslog
//! [commands]        ; label = command line (run by /bin/sh -c)
//! dpkg = dpkg -l
//! [output]          ; base names; .json, -commands.log and .tar.gz are appended
//! archive = CaLink-%(host)s
//! [calink]          ; limits (all optional)
//! command_timeout = 60
//! ```
//!
//! CaLink's form could not name a path with `_` in it (every `_` is a `/`); the explicit
//! form can name any absolute path: one per line, so commas and spaces are plain
//! characters, and `\` makes a wildcard literal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError, Section};

use super::info::{Item, Sampling};

pub const DEFAULT_CONFIG: &str = "/etc/calink/calink.ini";

const SECTIONS: &[&str] = &["info", "files", "commands", "output", "calink"];
const OUTPUT_KEYS: &[&str] = &["json", "commands", "archive"];
const LIMIT_KEYS: &[&str] = &[
    "sample_window",
    "sample_interval",
    "command_timeout",
    "max_file_size",
    "max_total_size",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A misspelt section would otherwise silently collect nothing.
    #[error("{path}: unknown section [{section}] (calink reads [info], [files], [commands], [output] and [calink])")]
    UnknownSection { path: PathBuf, section: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// JSON group name and the items in it, in key order.
    pub info: Vec<(String, Vec<Item>)>,
    pub files: Vec<FileSpec>,
    /// Label and command line, in label order.
    pub commands: Vec<(String, String)>,
    pub output: OutputNames,
    pub limits: Limits,
}

/// One thing `[files]` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// The `[files]` key it came from (named in the manifest).
    pub key: String,
    /// An absolute path, possibly with wildcards (see [`crate::glob`]).
    pub pattern: String,
    /// Directories matched are collected recursively; false for CaLink's
    /// `<dir>_files = .`, which means the files directly in the directory.
    pub recurse: bool,
    /// Written `?/path`: its absence is noted, not a gap in the archive.
    pub optional: bool,
}

/// The three output names, without their suffixes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputNames {
    pub json: String,
    pub commands: String,
    pub archive: String,
}

impl OutputNames {
    pub fn json_file(&self) -> String {
        format!("{}.json", self.json)
    }
    pub fn commands_file(&self) -> String {
        format!("{}-commands.log", self.commands)
    }
    pub fn archive_file(&self) -> String {
        format!("{}.tar.gz", self.archive)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub sampling: Sampling,
    pub command_timeout: Duration,
    /// Larger files (and command outputs) keep only their last this many bytes.
    pub max_file_size: u64,
    /// Once the collected content reaches this, further files are skipped.
    pub max_total_size: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            sampling: Sampling::default(),
            command_timeout: Duration::from_secs(300),
            max_file_size: 25 << 20,
            max_total_size: 2 << 30,
        }
    }
}

/// Read `path`; `prefix` anchors CaLink's relative `[files]` form, `host` and `now` make
/// the default output names.
pub fn load(path: &Path, prefix: &Path, host: &str, now: u64) -> Result<Settings, SettingsError> {
    let cfg = Config::load(path)?;
    from_config(&cfg, prefix, host, now)
}

pub fn from_config(
    cfg: &Config,
    prefix: &Path,
    host: &str,
    now: u64,
) -> Result<Settings, SettingsError> {
    if let Some(section) = cfg.sections().find(|s| !SECTIONS.contains(s)) {
        return Err(SettingsError::UnknownSection {
            path: cfg.path().to_path_buf(),
            section: section.to_string(),
        });
    }
    let mut info = Vec::new();
    for group in cfg.keys("info") {
        let s = cfg.section("info");
        let mut items = Vec::new();
        for word in s.list(&group)? {
            let item = word
                .parse::<Item>()
                .map_err(|e| s.bad_value(&group, &word, e.to_string()))?;
            items.push(item);
        }
        info.push((group, items));
    }

    let mut files = Vec::new();
    let fs = cfg.section("files");
    for key in cfg.keys("files") {
        files.extend(file_specs(&fs, &key, prefix)?);
    }

    let mut commands = Vec::new();
    let cs = cfg.section("commands");
    for label in cfg.keys("commands") {
        let line = cs.required(&label)?;
        commands.push((label, line));
    }

    cfg.reject_unknown("output", OUTPUT_KEYS)?;
    let os = cfg.section("output");
    let default = format!("CaLink-{host}-{now}");
    let name = |key: &str| -> Result<String, ConfigError> {
        let v = os.string_or(key, &default)?;
        if v.contains('/') || v.starts_with('.') {
            return Err(os.bad_value(
                key,
                &v,
                "a file name (no '/', not starting with '.'), written in the output directory",
            ));
        }
        Ok(v)
    };
    let output = OutputNames {
        json: name("json")?,
        commands: name("commands")?,
        archive: name("archive")?,
    };

    cfg.reject_unknown("calink", LIMIT_KEYS)?;
    let ls = cfg.section("calink");
    let d = Limits::default();
    let window = ls.duration(
        "sample_window",
        d.sampling.window,
        Duration::ZERO..=Duration::from_secs(3600),
    )?;
    let interval = ls.duration(
        "sample_interval",
        d.sampling.interval,
        Duration::from_millis(10)..=Duration::from_secs(3600),
    )?;
    let limits = Limits {
        sampling: Sampling::new(window, interval),
        command_timeout: ls.duration(
            "command_timeout",
            d.command_timeout,
            Duration::from_millis(100)..=Duration::from_secs(86400),
        )?,
        max_file_size: size(&ls, "max_file_size", d.max_file_size)?,
        max_total_size: size(&ls, "max_total_size", d.max_total_size)?,
    };
    Ok(Settings {
        info,
        files,
        commands,
        output,
        limits,
    })
}

/// A byte count, with an optional K, M or G (powers of 1024) suffix.
fn size(s: &Section<'_>, key: &str, default: u64) -> Result<u64, ConfigError> {
    let Some(v) = s.string(key)? else {
        return Ok(default);
    };
    let (num, shift) = match v.to_ascii_uppercase().strip_suffix(['K', 'M', 'G']) {
        Some(n) => (
            n.trim().to_string(),
            match v.chars().last().map(|c| c.to_ascii_uppercase()) {
                Some('K') => 10,
                Some('M') => 20,
                _ => 30,
            },
        ),
        None => (v.clone(), 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            s.bad_value(
                key,
                &v,
                "a size in bytes, optionally with K, M or G, above 0",
            )
        })
}

/// What one `[files]` key asks for.
fn file_specs(s: &Section<'_>, key: &str, prefix: &Path) -> Result<Vec<FileSpec>, ConfigError> {
    let raw = s.raw(key)?.unwrap_or_default();
    let calink = key
        .strip_suffix("_dirs")
        .map(|stem| (stem, true))
        .or_else(|| key.strip_suffix("_files").map(|stem| (stem, false)));
    let Some((stem, dirs)) = calink else {
        // The explicit form: one absolute path or glob a line.
        let mut out = Vec::new();
        for line in raw.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (line, optional) = match line.strip_prefix('?') {
                Some(rest) => (rest, true),
                None => (line, false),
            };
            if !line.starts_with('/') {
                return Err(s.bad_value(key, line, "not an absolute path (only keys ending in _dirs or _files are relative to the prefix)"));
            }
            out.push(FileSpec {
                key: key.to_string(),
                pattern: line.to_string(),
                recurse: true,
                optional,
            });
        }
        return Ok(out);
    };
    let dir = prefix.join(stem.replace('_', "/"));
    let base = crate::glob::escape(&dir);
    let mut out = Vec::new();
    for name in crate::config::split_list(&raw) {
        if name.contains('/') || name == ".." {
            return Err(s.bad_value(
                key,
                &name,
                "a name inside the directory the key names, or .",
            ));
        }
        let (pattern, recurse) = match (name.as_str(), dirs) {
            (".", true) => (base.clone(), true),
            (".", false) => (format!("{base}/*"), false),
            (n, _) => (format!("{base}/{n}"), dirs),
        };
        out.push(FileSpec {
            key: key.to_string(),
            pattern,
            recurse,
            optional: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, SettingsError> {
        let cfg = Config::parse(text, Path::new("/etc/calink/calink.ini"))?;
        from_config(&cfg, Path::new("/opt/canopsis"), "h1", 1700000000)
    }

    #[test]
    fn calink_sections_are_read() {
        let s = parse(
            "[info]\nload = loadavg, cpu\nsys = host os\n\
             [files]\netc_dirs = .\nvar_log_files = syslog, *.log\netc_amqp_files = .\n\
             paths = /etc/os-release\n    /var/log/my_app/a, b.log\n    ?/var/log/syslog\n\
             [commands]\nuname = uname -a\ndf = df -P\n\
             [output]\narchive = out\n",
        )
        .unwrap();
        assert_eq!(
            s.info,
            vec![
                ("load".to_string(), vec![Item::Loadavg, Item::Cpu]),
                ("sys".to_string(), vec![Item::Host, Item::Os])
            ]
        );
        let pats: Vec<(&str, bool)> = s
            .files
            .iter()
            .map(|f| (f.pattern.as_str(), f.recurse))
            .collect();
        assert_eq!(
            pats,
            [
                ("/opt/canopsis/etc/amqp/*", false),
                ("/opt/canopsis/etc", true),
                ("/etc/os-release", true),
                ("/var/log/my_app/a, b.log", true),
                ("/var/log/syslog", true),
                ("/opt/canopsis/var/log/syslog", false),
                ("/opt/canopsis/var/log/*.log", false),
            ]
        );
        assert!(s
            .files
            .iter()
            .all(|f| f.optional == (f.pattern == "/var/log/syslog")));
        assert_eq!(s.commands[0], ("df".to_string(), "df -P".to_string()));
        assert_eq!(s.output.archive_file(), "out.tar.gz");
        assert_eq!(s.output.json_file(), "CaLink-h1-1700000000.json");
        assert_eq!(
            s.output.commands_file(),
            "CaLink-h1-1700000000-commands.log"
        );
        assert_eq!(s.limits, Limits::default());
    }

    #[test]
    fn errors_name_file_key_and_value() {
        let e = parse("[info]\nload = loadavg, cpuu\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("calink.ini") && e.contains("load") && e.contains("cpuu"),
            "{e}"
        );
        let e = parse("[files]\nlogs = var/log/x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("logs") && e.contains("absolute"), "{e}");
        let e = parse("[output]\narchiv = x\n").unwrap_err().to_string();
        assert!(e.contains("archiv") && e.contains("unknown"), "{e}");
        let e = parse("[output]\narchive = ../x\n").unwrap_err().to_string();
        assert!(e.contains("../x"), "{e}");
        let e = parse("[calink]\nmax_file_size = 10Q\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_file_size") && e.contains("10Q"), "{e}");
        let e = parse("[file]\nx = /etc\n").unwrap_err().to_string();
        assert!(e.contains("calink.ini: unknown section [file]"), "{e}");
        let e = parse("[commands]\nx =\n").unwrap_err().to_string();
        assert!(e.contains("[commands] x"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        let s = parse("[calink]\nmax_file_size = 4K\nmax_total_size = 2M\ncommand_timeout = 1.5\nsample_window = 0\n").unwrap();
        assert_eq!(s.limits.max_file_size, 4096);
        assert_eq!(s.limits.max_total_size, 2 << 20);
        assert_eq!(s.limits.command_timeout, Duration::from_millis(1500));
        assert_eq!(s.limits.sampling.window, Duration::ZERO);
    }
}
