//! The master a replica's primary_conninfo names, as the upstream wants it.

/// `host` or `host:port` of the master a `primary_conninfo` names. A socket directory,
/// `localhost` or a loopback address is this host; a port left out is libpq's 5432.
pub fn master_of(conninfo: &str, host: &str, own_port: u16) -> Option<String> {
    let kv = parse_conninfo(conninfo);
    if kv.is_empty() {
        return None;
    }
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().to_string();
    let h = get("host")
        .map(first)
        .filter(|h| !h.is_empty())
        .or_else(|| get("hostaddr").map(first))
        .unwrap_or_default();
    let local = h.is_empty()
        || h.starts_with('/')
        || h.starts_with('@')
        || h == "localhost"
        || h.starts_with("127.")
        || h == "::1";
    let name = if local { host.to_string() } else { h };
    let port = get("port")
        .map(first)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(crate::pg::conninfo::DEFAULT_PORT);
    Some(if port == own_port {
        name
    } else {
        format!("{name}:{port}")
    })
}

/// `key=value` pairs of a libpq keyword/value conninfo (values quoted with `'`, `\`
/// escapes), or of a `postgresql://` URI's host and port. What does not parse is
/// left out: only host and port are wanted.
fn parse_conninfo(s: &str) -> Vec<(String, String)> {
    let s = s.trim();
    if let Some(rest) = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
    {
        let auth_host = rest.split(['/', '?']).next().unwrap_or("");
        let hostport = auth_host.rsplit('@').next().unwrap_or("");
        let mut out = Vec::new();
        let (h, p) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.bytes().all(|b| b.is_ascii_digit()) => {
                (h, Some(p))
            }
            _ => (hostport, None),
        };
        out.push(("host".into(), h.trim_matches(['[', ']']).to_string()));
        if let Some(p) = p {
            out.push(("port".into(), p.to_string()));
        }
        return out;
    }
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        if key.is_empty() {
            break;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            break;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut val = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            while let Some(c) = it.next() {
                match c {
                    '\\' => {
                        if let Some(n) = it.next() {
                            val.push(n);
                        }
                    }
                    '\'' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    if let Some(n) = it.next() {
                        val.push(n);
                    }
                } else {
                    val.push(c);
                }
            }
        }
        out.push((key, val));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_from_primary_conninfo() {
        // What pg_basebackup -R writes, through a socket directory.
        let ci = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
                  host='/tmp/hk sock' port=5433 sslmode=prefer target_session_attrs=any";
        assert_eq!(master_of(ci, "db1", 5434).as_deref(), Some("db1:5433"));
        assert_eq!(master_of(ci, "db1", 5433).as_deref(), Some("db1"));
        assert_eq!(
            master_of("host=db0.example.com user=rep", "db1", 5432).as_deref(),
            Some("db0.example.com")
        );
        assert_eq!(
            master_of("host = 'it\\'s' port = 6000", "db1", 5432).as_deref(),
            Some("it's:6000")
        );
        assert_eq!(
            master_of("hostaddr=127.0.0.1", "db1", 5432).as_deref(),
            Some("db1")
        );
        assert_eq!(
            master_of(
                "postgresql://rep:pw@db0:5444/x?sslmode=require",
                "db1",
                5432
            )
            .as_deref(),
            Some("db0:5444")
        );
        assert_eq!(master_of("", "db1", 5432), None);
    }
}
