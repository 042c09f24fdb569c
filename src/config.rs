//! INI configuration with Python ConfigParser semantics.
//!
//! Every config hostkit replaces (Synnefo gtools, Skytools, ele_tools) was read by
//! Python's ConfigParser, so operators' files rely on its rules: `[DEFAULT]` values show
//! through in every section, option names are case-insensitive, values may continue on
//! indented lines, and `%(name)s` interpolates another option of the same section (or
//! DEFAULT), with `%%` for a literal percent sign. Parsing is rust-ini's; the semantics
//! above are layered here, and every error names the file, section and key.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// ConfigParser gives up after this many nested interpolations (MAX_INTERPOLATION_DEPTH).
const MAX_DEPTH: usize = 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no section [{section}]")]
    MissingSection { path: PathBuf, section: String },
    #[error("{path}: [{section}] {key}: required key is missing")]
    MissingKey {
        path: PathBuf,
        section: String,
        key: String,
    },
    #[error("{path}: [{section}] {key} = {value:?}: {reason}")]
    BadValue {
        path: PathBuf,
        section: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{path}: [{section}] {key}: unknown key")]
    UnknownKey {
        path: PathBuf,
        section: String,
        key: String,
    },
}

/// A parsed configuration file: raw (uninterpolated) values, keys lower-cased.
#[derive(Debug, Clone, Default)]
pub struct Config {
    path: PathBuf,
    defaults: BTreeMap<String, String>,
    sections: BTreeMap<String, BTreeMap<String, String>>,
    /// Section names in file order (for programs that treat sections as a list).
    order: Vec<String>,
}

impl Config {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parse `text`; `path` is only used to name the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let opt = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            enabled_indented_mutiline_value: true,
            enabled_preserve_key_leading_whitespace: false,
        };
        let parsed = ini::Ini::load_from_str_opt(text, opt).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e.line,
            reason: e.msg.to_string(),
        })?;
        let mut cfg = Config {
            path: path.to_path_buf(),
            ..Config::default()
        };
        for (name, props) in parsed.iter() {
            let Some(name) = name else {
                if !props.is_empty() {
                    // ConfigParser's MissingSectionHeaderError.
                    return Err(ConfigError::Syntax {
                        path: path.to_path_buf(),
                        line: 1,
                        reason: "file contains no section header before its first key".into(),
                    });
                }
                continue;
            };
            let target = if name == "DEFAULT" {
                &mut cfg.defaults
            } else {
                if !cfg.sections.contains_key(name) {
                    cfg.order.push(name.to_string());
                }
                cfg.sections.entry(name.to_string()).or_default()
            };
            for (k, v) in props.iter() {
                target.insert(k.trim().to_lowercase(), v.trim().to_string());
            }
        }
        Ok(cfg)
    }

    /// Typed access to one section (DEFAULT shows through, as everywhere).
    pub fn section(&self, name: &str) -> Section<'_> {
        Section {
            cfg: self,
            name: name.to_string(),
        }
    }

    /// The file this configuration came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_section(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }

    /// Section names in the order they first appear (DEFAULT excluded).
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Fail unless `section` exists.
    pub fn require_section(&self, section: &str) -> Result<(), ConfigError> {
        if self.has_section(section) {
            Ok(())
        } else {
            Err(ConfigError::MissingSection {
                path: self.path.clone(),
                section: section.to_string(),
            })
        }
    }

    /// Keys visible in `section`, including those inherited from DEFAULT.
    pub fn keys(&self, section: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.defaults.keys().cloned().collect();
        if let Some(s) = self.sections.get(section) {
            keys.extend(s.keys().cloned());
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Reject keys set in `section` itself that are not in `known` (DEFAULT is shared
    /// between programs, so its keys are not checked).
    pub fn reject_unknown(&self, section: &str, known: &[&str]) -> Result<(), ConfigError> {
        if let Some(s) = self.sections.get(section) {
            if let Some(k) = s.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ConfigError::UnknownKey {
                    path: self.path.clone(),
                    section: section.to_string(),
                    key: k.clone(),
                });
            }
        }
        Ok(())
    }

    fn raw(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .or_else(|| self.defaults.get(key))
            .map(String::as_str)
    }

    /// The interpolated value of `key` in `section` (or DEFAULT), if set.
    pub fn get(&self, section: &str, key: &str) -> Result<Option<String>, ConfigError> {
        let key = key.to_lowercase();
        match self.raw(section, &key) {
            None => Ok(None),
            Some(raw) => self.interpolate(section, &key, raw, 1).map(Some),
        }
    }

    /// The value as written, without `%(name)s` interpolation (for values that are
    /// commands with `%s` placeholders of their own, such as pacha's `validate`).
    pub fn get_literal(&self, section: &str, key: &str) -> Option<String> {
        self.raw(section, &key.to_lowercase()).map(str::to_string)
    }

    /// Like [`Config::get`] but a missing key is an error.
    pub fn require(&self, section: &str, key: &str) -> Result<String, ConfigError> {
        self.get(section, key)?
            .ok_or_else(|| ConfigError::MissingKey {
                path: self.path.clone(),
                section: section.to_string(),
                key: key.to_lowercase(),
            })
    }

    /// Parse the value with `FromStr`; the error names file, section, key and value.
    pub fn get_parsed<T>(&self, section: &str, key: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(section, key)? {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| self.bad_value(section, key, &v, e.to_string())),
        }
    }

    /// ConfigParser's getboolean: 1/yes/true/on and 0/no/false/off, any case.
    pub fn get_bool(&self, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(section, key)? {
            None => Ok(None),
            Some(v) => parse_bool(&v)
                .map(Some)
                .ok_or_else(|| self.bad_value(section, key, &v, NOT_A_BOOL.into())),
        }
    }

    /// A list split on commas and/or whitespace (how Skytools and our samples write lists).
    pub fn get_list(&self, section: &str, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        Ok(self.get(section, key)?.map(|v| split_list(&v)))
    }

    /// Build the error for a value that failed validation elsewhere.
    pub fn bad_value(&self, section: &str, key: &str, value: &str, reason: String) -> ConfigError {
        ConfigError::BadValue {
            path: self.path.clone(),
            section: section.to_string(),
            key: key.to_lowercase(),
            value: value.to_string(),
            reason,
        }
    }

    fn interpolate(
        &self,
        section: &str,
        key: &str,
        raw: &str,
        depth: usize,
    ) -> Result<String, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(self.bad_value(
                section,
                key,
                raw,
                format!("interpolation deeper than {MAX_DEPTH} levels (a reference loop?)"),
            ));
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(pos) = rest.find('%') {
            out.push_str(&rest[..pos]);
            rest = &rest[pos..];
            if let Some(after) = rest.strip_prefix("%%") {
                out.push('%');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("%(") {
                let end = after.find(")s").ok_or_else(|| {
                    self.bad_value(section, key, raw, "unterminated %(name)s reference".into())
                })?;
                let name = after[..end].to_lowercase();
                let value = self.raw(section, &name).ok_or_else(|| {
                    self.bad_value(
                        section,
                        key,
                        raw,
                        format!("references %({name})s, which is not set"),
                    )
                })?;
                out.push_str(&self.interpolate(section, &name, value, depth + 1)?);
                rest = &after[end + 2..];
            } else {
                return Err(self.bad_value(
                    section,
                    key,
                    raw,
                    "'%' must be followed by '%' or '(name)s'".into(),
                ));
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// One section of a [`Config`], read into typed values. The rules every program shares:
///
/// - a key set to an empty (or all-blank) value counts as unset, so the default applies
///   (`x =` in an ini is how operators "comment out" a value without deleting the line);
/// - every error names the file, the section, the key and the value as written;
/// - numbers and durations are checked against a range given by the caller.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    cfg: &'a Config,
    name: String,
}

impl<'a> Section<'a> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &'a Config {
        self.cfg
    }

    /// The interpolated value as written, an empty value included.
    pub fn raw(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.cfg.get(&self.name, key)
    }

    /// The value, trimmed; empty counts as unset.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        Ok(self
            .raw(key)?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()))
    }

    /// The value as written (trimmed, no interpolation); empty counts as unset.
    pub fn literal(&self, key: &str) -> Option<String> {
        self.cfg
            .get_literal(&self.name, key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The value, or `default` when unset or empty.
    pub fn string_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        Ok(self.string(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// The value; unset or empty is an error naming the key.
    pub fn required(&self, key: &str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| ConfigError::MissingKey {
            path: self.cfg.path.clone(),
            section: self.name.clone(),
            key: key.to_lowercase(),
        })
    }

    /// ConfigParser's getboolean: 1/yes/true/on and 0/no/false/off, any case.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.string(key)? {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| self.bad_value(key, &v, NOT_A_BOOL)),
        }
    }

    /// A number parsed with `FromStr`, `default` when unset, rejected outside `range`.
    pub fn number<T>(
        &self,
        key: &str,
        default: T,
        range: impl RangeBounds<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Default,
        T::Err: Display,
    {
        let Some(v) = self.string(key)? else {
            return Ok(default);
        };
        let n = v
            .parse::<T>()
            .map_err(|e| self.bad_value(key, &v, e.to_string()))?;
        if !range.contains(&n) {
            return Err(self.bad_value(key, &v, describe_range(&range, "")));
        }
        Ok(n)
    }

    /// A duration written as seconds, fractions allowed (`0.5`), as Synnefo's and
    /// Skytools' configs (Python floats, libusual's cf_set_time_double) wrote them.
    pub fn duration(
        &self,
        key: &str,
        default: Duration,
        range: impl RangeBounds<Duration>,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = self.string(key)? else {
            return Ok(default);
        };
        let secs = v
            .parse::<f64>()
            .map_err(|_| self.bad_value(key, &v, "not a number of seconds"))?;
        let secs_range = (
            map_bound(range.start_bound(), Duration::as_secs_f64),
            map_bound(range.end_bound(), Duration::as_secs_f64),
        );
        // NaN fails every comparison, so it is rejected here too; only then is the
        // conversion (which panics on negative or huge values) safe.
        if !secs_range.contains(&secs) || !secs.is_finite() || secs < 0.0 {
            return Err(self.bad_value(key, &v, describe_range(&secs_range, "seconds")));
        }
        Duration::try_from_secs_f64(secs)
            .map_err(|_| self.bad_value(key, &v, describe_range(&secs_range, "seconds")))
    }

    /// A list split on commas and/or whitespace; unset is empty.
    pub fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        Ok(self.raw(key)?.map(|v| split_list(&v)).unwrap_or_default())
    }

    /// A path; a leading `~` or `~/` is the invoking user's home (as Skytools' getfile
    /// and libusual expand it). Empty counts as unset.
    pub fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(|v| expand_home(&v)))
    }

    /// A path, or `default` (not expanded) when unset.
    pub fn path_or(&self, key: &str, default: &str) -> Result<PathBuf, ConfigError> {
        Ok(self.path(key)?.unwrap_or_else(|| PathBuf::from(default)))
    }

    /// Reject keys set in this section that are not in `known` (DEFAULT is shared
    /// between programs, so its keys are not checked).
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        self.cfg.reject_unknown(&self.name, known)
    }

    /// The error for a value that failed a check made by the caller.
    pub fn bad_value(&self, key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
        self.cfg.bad_value(&self.name, key, value, reason.into())
    }
}

fn map_bound<T, U>(b: Bound<&T>, f: impl Fn(&T) -> U) -> Bound<U> {
    match b {
        Bound::Included(x) => Bound::Included(f(x)),
        Bound::Excluded(x) => Bound::Excluded(f(x)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// "must be at least 0.1 and at most 600 seconds", "must be a positive number of
/// seconds, at most 3600", ...
fn describe_range<T: Display + PartialOrd + Default>(
    range: &impl RangeBounds<T>,
    unit: &str,
) -> String {
    let upper = match range.end_bound() {
        Bound::Included(b) => Some(format!("at most {b}")),
        Bound::Excluded(b) => Some(format!("less than {b}")),
        Bound::Unbounded => None,
    };
    let lower = match range.start_bound() {
        Bound::Excluded(a) if *a == T::default() => {
            let of = if unit.is_empty() {
                String::new()
            } else {
                format!(" of {unit}")
            };
            return match upper {
                Some(u) => format!("must be a positive number{of}, {u}"),
                None => format!("must be a positive number{of}"),
            };
        }
        Bound::Included(a) => Some(format!("at least {a}")),
        Bound::Excluded(a) => Some(format!("more than {a}")),
        Bound::Unbounded => None,
    };
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    match (lower, upper) {
        (Some(l), Some(u)) => format!("must be {l} and {u}{unit}"),
        (Some(l), None) => format!("must be {l}{unit}"),
        (None, Some(u)) => format!("must be {u}{unit}"),
        (None, None) => "out of range".to_string(),
    }
}

/// `~` or `~/x` → `$HOME`, `$HOME/x`; anything else (including `~user`) as written.
pub fn expand_home(v: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let v = v.trim();
    match (v.strip_prefix('~'), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            let mut p = home.into_vec();
            p.extend_from_slice(rest.as_bytes());
            PathBuf::from(std::ffi::OsString::from_vec(p))
        }
        _ => PathBuf::from(v),
    }
}

const NOT_A_BOOL: &str = "not a boolean (use yes/no, true/false, on/off or 1/0)";

/// ConfigParser's getboolean words, any case.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Split a list value on commas and whitespace, dropping empty items.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/test.conf")).unwrap()
    }

    #[test]
    fn defaults_interpolation_and_case() {
        let c = cfg(
            "[DEFAULT]\nbase = /var/lib\n[eventd]\nQueue_Dir = %(base)s/ganeti/queue\npct = 50%%\n",
        );
        assert_eq!(
            c.get("eventd", "queue_dir").unwrap().as_deref(),
            Some("/var/lib/ganeti/queue")
        );
        assert_eq!(
            c.get("eventd", "QUEUE_DIR").unwrap().as_deref(),
            Some("/var/lib/ganeti/queue")
        );
        assert_eq!(c.get("eventd", "pct").unwrap().as_deref(), Some("50%"));
        assert_eq!(
            c.get("eventd", "base").unwrap().as_deref(),
            Some("/var/lib")
        );
        assert_eq!(c.get("eventd", "missing").unwrap(), None);
    }

    #[test]
    fn section_value_overrides_default_in_interpolation() {
        let c = cfg("[DEFAULT]\nname = d\nx = %(name)s!\n[a]\nname = a\n[b]\n");
        assert_eq!(c.get("a", "x").unwrap().as_deref(), Some("a!"));
        assert_eq!(c.get("b", "x").unwrap().as_deref(), Some("d!"));
    }

    #[test]
    fn multiline_values_and_colon_separator() {
        let c = cfg("[s]\nhosts: amqp://a\n  amqp://b\n");
        assert_eq!(
            c.get_list("s", "hosts").unwrap().unwrap(),
            vec!["amqp://a".to_string(), "amqp://b".to_string()]
        );
    }

    #[test]
    fn errors_name_file_section_key_value() {
        let c = cfg("[s]\nn = ten\nb = maybe\nloop = %(loop)s\nref = %(nope)s\nbad = 5%\n");
        let e = c.get_parsed::<u32>("s", "n").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/test.conf: [s] n = \"ten\": invalid digit found in string"
        );
        let e = c.get_bool("s", "b").unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/test.conf: [s] b = \"maybe\": not a boolean"),
            "{e}"
        );
        assert!(c
            .get("s", "loop")
            .unwrap_err()
            .to_string()
            .contains("deeper than 10"));
        assert!(c
            .get("s", "ref")
            .unwrap_err()
            .to_string()
            .contains("%(nope)s, which is not set"));
        assert!(c
            .get("s", "bad")
            .unwrap_err()
            .to_string()
            .contains("'%' must be followed"));
        let e = c.require("s", "absent").unwrap_err().to_string();
        assert_eq!(e, "/etc/test.conf: [s] absent: required key is missing");
        let e = c.require_section("t").unwrap_err().to_string();
        assert_eq!(e, "/etc/test.conf: no section [t]");
    }

    #[test]
    fn unknown_keys_are_named() {
        let c = cfg("[DEFAULT]\nshared = 1\n[pgqd]\nlogfile = x\ntypo_key = 1\n");
        let e = c
            .reject_unknown("pgqd", &["logfile"])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/etc/test.conf: [pgqd] typo_key: unknown key");
        c.reject_unknown("pgqd", &["logfile", "typo_key"]).unwrap();
    }

    #[test]
    fn syntax_errors_and_keys_before_sections() {
        let e = Config::parse("key = 1\n[s]\n", Path::new("f.ini")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f.ini: line 1: file contains no section header"),
            "{e}"
        );
        let e = Config::parse("[s\nx=1\n", Path::new("f.ini")).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = Config::load(Path::new("/no/such/file.ini"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/no/such/file.ini: cannot read:"), "{e}");
    }

    #[test]
    fn sections_keep_file_order() {
        let c = cfg("[b]\nx=1\n[a]\ny=2\n[DEFAULT]\nz=3\n");
        assert_eq!(c.sections().collect::<Vec<_>>(), vec!["b", "a"]);
        assert_eq!(c.keys("a"), vec!["y".to_string(), "z".to_string()]);
    }

    #[test]
    fn section_typed_values_and_defaults() {
        let c = cfg("[DEFAULT]\nn = 7\n[s]\nt = 0.25\nb = Yes\nl = a, b\n  c\nblank =\nraw = x \n");
        let s = c.section("s");
        assert_eq!(s.name(), "s");
        assert_eq!(
            s.number("n", 1u32, 1..=10).unwrap(),
            7,
            "DEFAULT shows through"
        );
        assert_eq!(s.number("absent", 3u32, 1..=10).unwrap(), 3);
        assert_eq!(
            s.duration("t", Duration::from_secs(9), ..).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            s.duration("absent", Duration::from_secs(9), ..).unwrap(),
            Duration::from_secs(9)
        );
        assert!(s.bool("b", false).unwrap());
        assert!(s.bool("absent", true).unwrap());
        assert_eq!(s.list("l").unwrap(), vec!["a", "b", "c"]);
        assert!(s.list("absent").unwrap().is_empty());
        // Blank is unset for typed values; raw keeps what was written.
        assert!(s.bool("blank", true).unwrap());
        assert_eq!(s.string("blank").unwrap(), None);
        assert_eq!(s.raw("blank").unwrap().as_deref(), Some(""));
        assert_eq!(s.string("raw").unwrap().as_deref(), Some("x"));
        assert_eq!(
            s.required("blank").unwrap_err().to_string(),
            "/etc/test.conf: [s] blank: required key is missing"
        );
    }

    #[test]
    fn section_range_errors_name_file_section_key_value() {
        let c = cfg("[s]\nbig = 11\nneg = -1\nzero = 0\nlong = 90000\nnan = NaN\nword = soon\n");
        let s = c.section("s");
        let e = s.number("big", 1u32, 1..=10).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/test.conf: [s] big = \"11\": must be at least 1 and at most 10"
        );
        let e = s.number("neg", 0u64, 16..).unwrap_err().to_string();
        assert!(e.starts_with("/etc/test.conf: [s] neg = \"-1\": "), "{e}");
        let e = s.number("big", 1u64, 16..).unwrap_err().to_string();
        assert!(e.ends_with("must be at least 16"), "{e}");
        let positive = (
            Bound::Excluded(Duration::ZERO),
            Bound::Included(Duration::from_secs(3600)),
        );
        let d = Duration::from_secs(1);
        for key in ["neg", "zero", "long", "nan"] {
            let e = s.duration(key, d, positive).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("/etc/test.conf: [s] {key} = "))
                    && e.ends_with("must be a positive number of seconds, at most 3600"),
                "{e}"
            );
        }
        let e = s
            .duration(
                "long",
                d,
                Duration::from_millis(100)..=Duration::from_secs(600),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("must be at least 0.1 and at most 600 seconds"),
            "{e}"
        );
        let e = s.duration("word", d, ..).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/test.conf: [s] word = \"soon\": not a number of seconds"
        );
        // Unbounded above still cannot overflow a Duration.
        let c = cfg("[s]\nhuge = 1e300\n");
        assert!(c.section("s").duration("huge", d, ..).is_err());
    }

    #[test]
    fn literal_values_are_not_interpolated() {
        let c = cfg("[s]\nv = visudo -cf %s\nw = 100%%\n");
        assert_eq!(
            c.section("s").literal("V").as_deref(),
            Some("visudo -cf %s")
        );
        assert_eq!(c.section("s").literal("w").as_deref(), Some("100%%"));
        assert_eq!(c.section("s").literal("absent"), None);
    }

    #[test]
    fn section_bad_bool_and_unknown_key() {
        let c = cfg("[DEFAULT]\nshared = 1\n[s]\nflag = maybe\ntypo = 1\n");
        let s = c.section("s");
        let e = s.bool("flag", false).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/test.conf: [s] flag = \"maybe\": not a boolean (use yes/no, true/false, on/off or 1/0)"
        );
        let e = s.reject_unknown(&["flag"]).unwrap_err().to_string();
        assert_eq!(e, "/etc/test.conf: [s] typo: unknown key");
        s.reject_unknown(&["flag", "typo"]).unwrap();
    }

    #[test]
    fn section_paths_expand_home() {
        let home = std::env::var("HOME").expect("HOME is set for tests");
        let c = cfg("[s]\na = ~/log/x.log\nb = ~\nc = ~other/x\nd = /abs/~/x\ne =\n");
        let s = c.section("s");
        assert_eq!(
            s.path("a").unwrap(),
            Some(PathBuf::from(format!("{home}/log/x.log")))
        );
        assert_eq!(s.path("b").unwrap(), Some(PathBuf::from(&home)));
        assert_eq!(s.path("c").unwrap(), Some(PathBuf::from("~other/x")));
        assert_eq!(s.path("d").unwrap(), Some(PathBuf::from("/abs/~/x")));
        assert_eq!(s.path("e").unwrap(), None);
        assert_eq!(s.path_or("e", "/def").unwrap(), PathBuf::from("/def"));
    }
}
