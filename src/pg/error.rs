//! The one PostgreSQL error type: it names the target by its conninfo with every password
//! taken out, keeps the tokio-postgres error as its source, and its Display does not
//! repeat that source (the one-line printer joins the chain).

/// What a password is replaced by in anything we print or log.
const HIDDEN: &str = "***";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The conninfo does not parse, or what it leaves out cannot be filled in (a bad
    /// PGPORT, no user name). No server was contacted.
    #[error("{target}: {reason}")]
    Config {
        target: String,
        reason: String,
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// The server could not be reached, or refused us.
    #[error("{target}: connection failed{}", .note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
        /// What else the reader must know: a password file that was ignored.
        note: Option<String>,
    },
    /// Connected, but a statement failed.
    #[error("{target}: query failed")]
    Query {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgError {
    pub fn config(conninfo: &str, reason: impl Into<String>) -> PgError {
        PgError::Config {
            target: redact(conninfo),
            reason: reason.into(),
            source: None,
        }
    }

    pub fn connect(conninfo: &str, source: tokio_postgres::Error) -> PgError {
        PgError::Connect {
            target: redact(conninfo),
            source,
            note: None,
        }
    }

    /// A connection error with `note` added (see [`PgError::Connect`]).
    pub fn with_note(mut self, note: Option<String>) -> PgError {
        if let PgError::Connect { note: n, .. } = &mut self {
            *n = note;
        }
        self
    }

    pub fn query(conninfo: &str, source: tokio_postgres::Error) -> PgError {
        PgError::Query {
            target: redact(conninfo),
            source,
        }
    }

    /// The conninfo it is about, passwords hidden.
    pub fn target(&self) -> &str {
        match self {
            PgError::Config { target, .. }
            | PgError::Connect { target, .. }
            | PgError::Query { target, .. } => target,
        }
    }

    /// Why, on one line and without the target: the server's message, or what was
    /// wrong with the conninfo. For messages that name the target their own way
    /// (pgqd's `<db>: ticker: connection failed: <why>`).
    pub fn detail(&self) -> String {
        match self {
            PgError::Config { reason, source, .. } => match source {
                Some(e) => format!("{reason}: {}", one_line(e)),
                None => reason.clone(),
            },
            PgError::Connect {
                source,
                note: Some(n),
                ..
            } => format!("{} ({n})", one_line(source)),
            PgError::Connect { source, .. } | PgError::Query { source, .. } => one_line(source),
        }
    }

    /// The tokio-postgres error underneath, if any.
    pub fn pg_source(&self) -> Option<&tokio_postgres::Error> {
        match self {
            PgError::Config { source, .. } => source.as_ref(),
            PgError::Connect { source, .. } | PgError::Query { source, .. } => Some(source),
        }
    }
}

/// A PostgreSQL error on one line: the server's message for an error the server sent,
/// else tokio-postgres' text with its causes (its Display alone says only "error
/// connecting to server", not why).
pub fn one_line(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return d.message().replace('\n', " ");
    }
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line.replace('\n', " ")
}

/// `conninfo` (key=value or URL form, or any text holding one) with every password
/// replaced by `***`: `password=` values, quoted or not, and the password of a URL's
/// userinfo or `?password=` parameter. When in doubt it hides more, never less.
pub fn redact(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some((pos, plen)) = ["postgresql://", "postgres://"]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        out.push_str(&redact_keyword(&rest[..pos]));
        // A URL runs to the first white space.
        let after = &rest[pos..];
        let len = after
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(after.len());
        out.push_str(&rest[pos..pos + plen]);
        out.push_str(&redact_url(&after[plen..len]));
        rest = &after[len..];
    }
    out.push_str(&redact_keyword(rest));
    out
}

/// `password = value` pairs (libpq allows spaces around `=`, and quoting with `'`
/// and `\` escapes).
fn redact_keyword(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let at_word = i == 0 || !is_key_byte(b[i - 1]);
        if at_word && b.len() - i >= 8 && b[i..i + 8].eq_ignore_ascii_case(b"password") {
            let mut j = i + 8;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && b[j] == b'=' {
                j += 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let end = value_end(b, j);
                out.push_str(&s[copied..j]);
                out.push_str(HIDDEN);
                copied = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Where a conninfo value starting at `j` ends: after its closing quote, or at the
/// first unescaped white space.
fn value_end(b: &[u8], mut j: usize) -> usize {
    if j < b.len() && b[j] == b'\'' {
        j += 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'\'' => return j + 1,
                _ => j += 1,
            }
        }
        return b.len();
    }
    while j < b.len() && !b[j].is_ascii_whitespace() {
        if b[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    j.min(b.len())
}

/// One URL after its scheme: `user:secret@host/db?password=x` →
/// `user:***@host/db?password=***`. The userinfo ends at the last `@` before the query
/// (a password may hold an unencoded `/` or `@`).
fn redact_url(url: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let mut out = match base.rfind('@') {
        Some(at) => match base[..at].find(':') {
            Some(colon) => format!("{}{HIDDEN}{}", &base[..colon + 1], &base[at..]),
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={HIDDEN}"),
                _ => p.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_passwords_are_hidden_quoted_or_not() {
        assert_eq!(
            redact("host=h password=secret dbname=x"),
            "host=h password=*** dbname=x"
        );
        assert_eq!(
            redact("password = 'se cr\\'et' user=u"),
            "password = *** user=u"
        );
        assert_eq!(redact("user=u password=s\\ ecret"), "user=u password=***");
        assert_eq!(redact("PASSWORD=x"), "PASSWORD=***");
        assert_eq!(redact("password='unterminated"), "password=***");
        // Not a password key: left alone.
        assert_eq!(
            redact("mypassword=x passwordx=y"),
            "mypassword=x passwordx=y"
        );
        assert_eq!(redact("host=h dbname=d"), "host=h dbname=d");
    }

    #[test]
    fn url_passwords_are_hidden() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("postgresql://u:p@ss/w@rd@h/db?sslmode=disable"),
            "postgresql://u:***@h/db?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret&sslmode=disable"),
            "postgres://h/db?user=u&password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("host=h password=a&b postgres://u:x@h"),
            "host=h password=*** postgres://u:***@h"
        );
        assert_eq!(
            redact("from postgres://a:b@h and postgres://c:d@k"),
            "from postgres://a:***@h and postgres://c:***@k"
        );
    }

    #[test]
    fn display_names_the_target_without_the_password_or_the_source() {
        let e = PgError::config("host=h password=hunter2", "bad conninfo");
        assert_eq!(e.to_string(), "host=h password=***: bad conninfo");
        assert_eq!(e.detail(), "bad conninfo");
        let parse = "port=x password=hunter2"
            .parse::<tokio_postgres::Config>()
            .unwrap_err();
        let e = PgError::Config {
            target: redact("port=x password=hunter2"),
            reason: "bad conninfo".into(),
            source: Some(parse),
        };
        let chain = crate::cli::one_line(&anyhow::Error::from(e));
        assert!(
            chain.starts_with("port=x password=***: bad conninfo: invalid connection string"),
            "{chain}"
        );
        assert!(!chain.contains("hunter2"), "{chain}");
    }
}
