//! Secret scrubbing, on by default: what an operator would not mail to a vendor.
//!
//! - values of `key = value` / `key: value` lines whose key ends in a secret word
//!   (password, passwd, pass, secret, token, api_key, ...), quoted or not, and of
//!   `key=value` words anywhere in a line (`PGPASSWORD=x psql`, `--db-password=x`);
//! - the password of a URL with credentials (`amqp://user:pass@host`);
//! - the password field of `.pgpass` lines (files named `*pgpass*`);
//! - the body of PEM private-key blocks.
//!
//! It works on bytes, line by line, so text in any encoding passes through unchanged
//! except for what it replaces; content with NUL bytes is taken as binary and left alone.

pub const MASK: &str = "********";
const KEY_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "credentials",
];

/// `data` scrubbed, and how many secrets were masked. `name` is the file's path (or a
/// command's label), which decides the .pgpass rule.
pub fn scrub(name: &str, data: &[u8]) -> (Vec<u8>, usize) {
    if data.contains(&0) {
        return (data.to_vec(), 0);
    }
    let pgpass = name
        .rsplit('/')
        .next()
        .is_some_and(|base| base.contains("pgpass"));
    let mut out = Vec::with_capacity(data.len());
    let mut count = 0;
    let mut in_key = false;
    for line in data.split_inclusive(|b| *b == b'\n') {
        let text = trim_eol(line);
        if in_key {
            if is_pem_boundary(text, b"-----END ") {
                in_key = false;
                out.extend_from_slice(line);
            }
            continue;
        }
        if is_pem_boundary(text, b"-----BEGIN ") {
            in_key = true;
            count += 1;
            out.extend_from_slice(line);
            out.extend_from_slice(b"[private key scrubbed by calink]\n");
            continue;
        }
        // Every rule below needs a '=' or a ':'; most lines of a log have neither.
        if !line.iter().any(|b| *b == b'=' || *b == b':') {
            out.extend_from_slice(line);
            continue;
        }
        let mut l = line.to_vec();
        if pgpass {
            count += scrub_pgpass(&mut l);
        }
        count += scrub_urls(&mut l);
        count += scrub_key_value(&mut l);
        count += scrub_inline(&mut l);
        out.extend_from_slice(&l);
    }
    (out, count)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_pem_boundary(line: &[u8], start: &[u8]) -> bool {
    let t = line.trim_ascii();
    t.starts_with(start) && t.ends_with(b"PRIVATE KEY-----")
}

/// `host:port:db:user:password` with `\` escaping `:` and `\`: mask the fifth field.
fn scrub_pgpass(line: &mut Vec<u8>) -> usize {
    let t = trim_eol(line);
    if t.trim_ascii_start().starts_with(b"#") {
        return 0;
    }
    let mut colons = 0;
    let mut i = 0;
    while i < t.len() {
        match t[i] {
            b'\\' => i += 1,
            b':' => {
                colons += 1;
                if colons == 4 {
                    let end = t.len();
                    if end == i + 1 {
                        return 0;
                    }
                    let tail = line[end..].to_vec();
                    line.truncate(i + 1);
                    line.extend_from_slice(MASK.as_bytes());
                    line.extend_from_slice(&tail);
                    return 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    0
}

/// `scheme://user:password@` → `scheme://user:********@`.
fn scrub_urls(line: &mut Vec<u8>) -> usize {
    let mut count = 0;
    let mut from = 0;
    while let Some(pos) = find(&line[from..], b"://").map(|p| p + from) {
        let auth_start = pos + 3;
        let auth_end = line[auth_start..]
            .iter()
            .position(|b| {
                matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>')
                    || b.is_ascii_whitespace()
            })
            .map_or(line.len(), |p| p + auth_start);
        let authority = &line[auth_start..auth_end];
        let (Some(at), Some(colon)) = (
            authority.iter().rposition(|b| *b == b'@'),
            authority.iter().position(|b| *b == b':'),
        ) else {
            from = auth_end.max(auth_start);
            continue;
        };
        if colon < at && &authority[colon + 1..at] != MASK.as_bytes() {
            let (s, e) = (auth_start + colon + 1, auth_start + at);
            line.splice(s..e, MASK.bytes());
            count += 1;
            from = s + MASK.len() + 1;
        } else {
            from = auth_end.max(auth_start);
        }
    }
    count
}

/// `[export] KEY = value`, `key: value`, `"key": "value"` with a secret key: mask the
/// value (keeping its quotes and any trailing `,`).
fn scrub_key_value(line: &mut Vec<u8>) -> usize {
    let t = trim_eol(line);
    let mut i = t.len() - t.trim_ascii_start().len();
    if t[i..].starts_with(b"#") || t[i..].starts_with(b";") {
        return 0;
    }
    if t[i..].starts_with(b"export ") {
        i += 7;
    }
    let quoted_key = t.get(i) == Some(&b'"');
    if quoted_key {
        i += 1;
    }
    let key_start = i;
    while i < t.len() && (t[i].is_ascii_alphanumeric() || matches!(t[i], b'_' | b'-' | b'.')) {
        i += 1;
    }
    let key = t[key_start..i].to_ascii_lowercase();
    if quoted_key && t.get(i) == Some(&b'"') {
        i += 1;
    }
    while i < t.len() && (t[i] == b' ' || t[i] == b'\t') {
        i += 1;
    }
    let sep = match t.get(i) {
        Some(b'=') | Some(b':') => t[i],
        _ => return 0,
    };
    // nsswitch.conf's `passwd: files` is a database name, not a secret.
    if key.is_empty() || (sep == b':' && key == b"passwd") {
        return 0;
    }
    if !secret_key(&key) {
        return 0;
    }
    i += 1;
    while i < t.len() && (t[i] == b' ' || t[i] == b'\t') {
        i += 1;
    }
    let mut end = t.len();
    let mut start = i;
    if start >= end {
        return 0;
    }
    let trailing_comma = t[..end].ends_with(b",");
    if trailing_comma {
        end -= 1;
    }
    if let Some(q @ (b'"' | b'\'')) = t.get(start).copied() {
        if end > start + 1 && t[end - 1] == q {
            start += 1;
            end -= 1;
        }
    }
    if start >= end || &t[start..end] == MASK.as_bytes() {
        return 0;
    }
    line.splice(start..end, MASK.bytes());
    1
}

/// Is `key` (lower-case) a secret's name?
fn secret_key(key: &[u8]) -> bool {
    // A key ends in a secret word (pgpassword, db_password); the short `pass` only as a
    // word of its own (rabbit_pass, not compass or bypass).
    KEY_WORDS.iter().any(|w| {
        key.ends_with(w.as_bytes())
            && (*w != "pass"
                || key.len() == w.len()
                || matches!(key[key.len() - w.len() - 1], b'_' | b'-' | b'.'))
    })
}

/// `KEY=value` as a word inside a line (a command line, a process's arguments): the
/// value, up to a blank, quote or shell separator, is masked.
fn scrub_inline(line: &mut Vec<u8>) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < line.len() {
        if line[i] != b'=' {
            i += 1;
            continue;
        }
        let key_end = i;
        let mut k = i;
        while k > 0
            && (line[k - 1].is_ascii_alphanumeric() || matches!(line[k - 1], b'_' | b'-' | b'.'))
        {
            k -= 1;
        }
        let key = line[k..key_end].to_ascii_lowercase();
        let key = key.trim_ascii_start();
        let key: &[u8] = {
            let mut s = key;
            while let Some(rest) = s.strip_prefix(b"-") {
                s = rest;
            }
            s
        };
        let start = i + 1;
        let end = line[start..]
            .iter()
            .position(|b| {
                b.is_ascii_whitespace()
                    || matches!(b, b'"' | b'\'' | b';' | b'&' | b'|' | b',' | b')')
            })
            .map_or(line.len(), |p| p + start);
        if !key.is_empty() && secret_key(key) && end > start && &line[start..end] != MASK.as_bytes()
        {
            line.splice(start..end, MASK.bytes());
            count += 1;
            i = start + MASK.len();
        } else {
            i += 1;
        }
    }
    count
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, text: &str) -> (String, usize) {
        let (out, n) = scrub(name, text.as_bytes());
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn key_value_secrets() {
        let (t, n) = s(
            "/etc/x.conf",
            "user = bob\npassword = hunter2\nDB_PASSWORD=\"s3cr3t\"\n  auth_token: abc\n\
             export PGPASSWORD='q'\n\"api_key\": \"k\",\n# password = kept-in-comment\n\
             passwd: files systemd\ncompass = north\nbypass=1\n",
        );
        assert_eq!(n, 5, "{t}");
        assert!(t.contains("user = bob\npassword = ********\nDB_PASSWORD=\"********\"\n"));
        assert!(t.contains("  auth_token: ********\n"));
        assert!(t.contains("export PGPASSWORD='********'\n"));
        assert!(t.contains("\"api_key\": \"********\",\n"));
        assert!(t.contains("# password = kept-in-comment"));
        assert!(t.contains("passwd: files systemd"));
        assert!(t.contains("compass = north") && t.contains("bypass=1"));
        assert!(!t.contains("hunter2") && !t.contains("s3cr3t"));
    }

    #[test]
    fn urls_with_credentials() {
        let (t, n) = s(
            "x",
            "AMQP_HOSTS = [\"amqp://guest:guest@10.0.0.1:5672/\", \"amqp://u:p%40ss@h\"]\nhttp://host/a:b@c\n",
        );
        assert_eq!(n, 2, "{t}");
        assert!(t.contains("amqp://guest:********@10.0.0.1:5672/"), "{t}");
        assert!(t.contains("amqp://u:********@h"), "{t}");
        assert!(t.contains("http://host/a:b@c"));
    }

    #[test]
    fn pgpass_and_private_keys() {
        let (t, n) = s(
            "/root/.pgpass",
            "# h:p:d:u:pw\nlocalhost:5432:*:app:pa\\:ss\n*:*:*:x:\n",
        );
        assert_eq!(t, "# h:p:d:u:pw\nlocalhost:5432:*:app:********\n*:*:*:x:\n");
        assert_eq!(n, 1);
        let key = "a\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA\nAAAA\n-----END OPENSSH PRIVATE KEY-----\nz\n";
        let (t, n) = s("/etc/ssh/k", key);
        assert_eq!(n, 1);
        assert!(
            !t.contains("b3BlbnNzaA") && t.contains("-----END OPENSSH PRIVATE KEY-----\nz\n"),
            "{t}"
        );
        // The same line outside a .pgpass file is not a pgpass entry.
        assert_eq!(s("/etc/x", "a:b:c:d:e\n").1, 0);
    }

    #[test]
    fn assignments_inside_a_line() {
        let (t, n) = s(
            "cmd",
            "echo PGPASSWORD=x1; psql --db-password=x2 --user=u \"token=x3\" a=b\n",
        );
        assert_eq!(t, "echo PGPASSWORD=********; psql --db-password=******** --user=u \"token=********\" a=b\n");
        assert_eq!(n, 3);
        // Already masked by the line rule: counted once.
        assert_eq!(
            s("x", "password=abc\n"),
            ("password=********\n".to_string(), 1)
        );
    }

    #[test]
    fn binary_is_left_alone() {
        let data = b"password = x\0\xff";
        assert_eq!(scrub("x", data), (data.to_vec(), 0));
    }
}
