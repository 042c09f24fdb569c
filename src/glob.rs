//! Shell-style globs: `*`, `?` and `[...]` in any component of an absolute path, `\`
//! to take the next character literally. As in the shell, a wildcard never matches a
//! leading `.` and never crosses a `/`. The one matcher for config values that name
//! files (calink's `[files]`, scriptmgr's `config_list`).

use std::path::{Path, PathBuf};

/// True if `s` holds an unescaped wildcard.
pub fn has_wildcard(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// `s` with its escapes removed (the literal path a wildcard-free pattern names).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The existing paths `pattern` matches, sorted. A pattern without wildcards yields
/// itself, whether it exists or not (so a missing file can be reported by name).
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    if !has_wildcard(pattern) {
        return vec![PathBuf::from(unescape(pattern))];
    }
    let mut current = vec![PathBuf::from("/")];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &current {
            if !has_wildcard(comp) {
                let p = base.join(unescape(comp));
                if p.symlink_metadata().is_ok() {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if matches(comp, &name.to_string_lossy()) {
                    next.push(base.join(name));
                }
            }
        }
        next.sort();
        current = next;
    }
    current
}

/// Does one path component `name` match the pattern component `pat`? As the shell
/// globs: a leading `.` must be matched by a literal one (FNM_PERIOD).
pub fn matches(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let s: Vec<char> = name.chars().collect();
    if s.first() == Some(&'.')
        && p.first() != Some(&'.')
        && !(p.len() > 1 && p[0] == '\\' && p[1] == '.')
    {
        return false;
    }
    go(&p, &s)
}

/// fnmatch(3) without FNM_PERIOD (`*` matches a leading `.` too), as ignore lists
/// (gitignore, etckeeper's) mean it: `*`, `?`, `[...]`, `\x`.
pub fn fnmatch(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let s: Vec<char> = name.chars().collect();
    go(&p, &s)
}

fn go(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|i| go(&p[1..], &s[i..])),
        Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
        Some('[') => match class(&p[1..], s.first().copied()) {
            Some((true, rest)) => go(rest, &s[1..]),
            Some((false, _)) => false,
            // No closing bracket: a literal '['.
            None => s.first() == Some(&'[') && go(&p[1..], &s[1..]),
        },
        Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && go(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
    }
}

/// Match `c` against the class after a `[`; returns whether it matched and the pattern
/// after the closing `]`, or None when the class is not closed.
fn class(p: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negate, mut i) = match p.first() {
        Some('!') | Some('^') => (true, 1),
        _ => (false, 0),
    };
    let start = i;
    let mut hit = false;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && i > start {
            break;
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            let end = p[i + 2];
            if c.is_some_and(|c| ch <= c && c <= end) {
                hit = true;
            }
            i += 3;
        } else {
            if c == Some(ch) {
                hit = true;
            }
            i += 1;
        }
    }
    Some((c.is_some() && hit != negate, &p[i + 1..]))
}

/// Escape `s` so that [`expand`] takes it literally.
pub fn escape(s: &Path) -> String {
    let mut out = String::new();
    for c in s.to_string_lossy().chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_matching() {
        assert!(matches("*.log", "syslog.log"));
        assert!(!matches("*.log", ".hidden.log"));
        assert!(matches(".*", ".hidden"));
        assert!(matches("a?c", "abc") && !matches("a?c", "ac"));
        assert!(matches("[a-c]x", "bx") && !matches("[!a-c]x", "bx"));
        assert!(matches("[]]", "]"));
        assert!(matches("a\\*", "a*") && !matches("a\\*", "ab"));
        assert!(matches("[x", "[x"));
        assert!(matches("my_file*", "my_file.conf"));
    }

    #[test]
    fn expand_walks_every_component() {
        let d = tempfile::tempdir().unwrap();
        for p in ["a1/x.log", "a2/y.log", "a2/z.txt", "b/w.log", "a3/.h.log"] {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let base = escape(d.path());
        let got = expand(&format!("{base}/a*/*.log"));
        let want: Vec<PathBuf> = ["a1/x.log", "a2/y.log"]
            .iter()
            .map(|p| d.path().join(p))
            .collect();
        assert_eq!(got, want);
        assert_eq!(expand(&format!("{base}/none/*")), Vec::<PathBuf>::new());
        assert_eq!(
            expand("/no/such/file"),
            vec![PathBuf::from("/no/such/file")]
        );
        assert_eq!(expand("/odd\\*name"), vec![PathBuf::from("/odd*name")]);
    }
}
