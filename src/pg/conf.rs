//! PostgreSQL's configuration file format (postgresql.conf, its includes,
//! postgresql.auto.conf) read as the server's lexer reads it. Following includes is
//! the reader's job ([`super::cluster::Layout::read_conf`]).

use std::collections::BTreeMap;

/// One `name = value` line of a configuration file (name lower-cased, value unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfLine {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// The lines of one postgresql.conf-format text, as PostgreSQL's lexer reads them:
/// `#` comments, an optional `=`, a value quoted with `'` (`''` or `\'` for a quote,
/// `\n`-style escapes) or bare up to white space or `#`. Include directives are
/// returned like settings (`include`, `include_if_exists`, `include_dir`).
pub fn parse_conf(text: &str) -> Result<Vec<ConfLine>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let mut rest = raw.trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err((n, format!("syntax error in {raw:?}")));
        }
        rest = rest[name_len..].trim_start();
        if let Some(r) = rest.strip_prefix('=') {
            rest = r.trim_start();
        }
        let (value, after) = if let Some(q) = rest.strip_prefix('\'') {
            unquote(q).ok_or_else(|| (n, format!("unterminated quoted string in {raw:?}")))?
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '#')
                .unwrap_or(rest.len());
            if end == 0 {
                return Err((n, format!("{name}: no value")));
            }
            (rest[..end].to_string(), &rest[end..])
        };
        let after = after.trim_start();
        if !(after.is_empty() || after.starts_with('#')) {
            return Err((n, format!("syntax error after the value in {raw:?}")));
        }
        out.push(ConfLine {
            name: name.to_ascii_lowercase(),
            value,
            line: n,
        });
    }
    Ok(out)
}

/// The body of a quoted value (after the opening quote): the value and the rest of
/// the line after the closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '\'' => {
                if let Some((_, '\'')) = it.peek() {
                    it.next();
                    out.push('\'');
                } else {
                    return Some((out, &s[i + 1..]));
                }
            }
            '\\' => {
                let (_, e) = it.next()?;
                match e {
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '0'..='7' => {
                        let mut v = e.to_digit(8)?;
                        for _ in 0..2 {
                            match it.peek() {
                                Some((_, d @ '0'..='7')) => {
                                    v = v * 8 + d.to_digit(8)?;
                                    it.next();
                                }
                                _ => break,
                            }
                        }
                        out.push(char::from_u32(v)?);
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    None
}

/// The settings in effect after reading a configuration file, its includes, and what
/// else was merged in: the last value of each name wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Settings {
    /// Set `name` (lower-cased by the parser) to `value`, replacing an earlier one.
    pub fn set(&mut self, name: String, value: String) {
        self.values.insert(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[cfg(test)]
/// /etc/postgresql/15/main/postgresql.conf as Debian ships it (the active lines,
/// with their comments).
pub(crate) const DEBIAN_CONF: &str = "\
# -----------------------------
# PostgreSQL configuration file
# -----------------------------
data_directory = '/var/lib/postgresql/15/main'\t\t# use data in another directory
hba_file = '/etc/postgresql/15/main/pg_hba.conf'\t# host-based authentication file
external_pid_file = '/var/run/postgresql/15-main.pid'\t\t\t# write an extra PID file
#listen_addresses = 'localhost'\t\t# what IP address(es) to listen on;
port = 5432\t\t\t\t# (change requires restart)
max_connections = 100\t\t\t# (change requires restart)
unix_socket_directories = '/var/run/postgresql'\t# comma-separated list of directories
shared_buffers = 128MB\t\t\t# min 128kB
log_line_prefix = '%m [%p] %q%u@%d '\t\t# special values:
cluster_name = '15/main'\t\t\t# added to process titles if nonempty
datestyle = 'iso, mdy'
include_dir = 'conf.d'\t\t\t# include files ending in '.conf' from
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_lines_as_postgres_reads_them() {
        let l = parse_conf(DEBIAN_CONF).unwrap();
        let get = |n: &str| {
            l.iter()
                .rev()
                .find(|c| c.name == n)
                .map(|c| c.value.as_str())
        };
        assert_eq!(get("port"), Some("5432"));
        assert_eq!(get("shared_buffers"), Some("128MB"));
        assert_eq!(get("log_line_prefix"), Some("%m [%p] %q%u@%d "));
        assert_eq!(get("include_dir"), Some("conf.d"));
        assert_eq!(get("listen_addresses"), None);
        let l = parse_conf("A 'it''s \\'x\\' \\\\ \\n'\nb=on#c\nc.d = -1.5").unwrap();
        assert_eq!(l[0].name, "a");
        assert_eq!(l[0].value, "it's 'x' \\ \n");
        assert_eq!((l[1].value.as_str(), l[2].name.as_str()), ("on", "c.d"));
        assert_eq!(parse_conf("x = 'open").unwrap_err().0, 1);
        assert_eq!(parse_conf("ok = 1\nport = 1 2").unwrap_err().0, 2);
        assert!(parse_conf("= 1").is_err());
        assert!(parse_conf("port =").is_err());
    }
}
