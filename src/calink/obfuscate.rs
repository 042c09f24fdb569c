//! `--obfuscate`: the host's names, domains, addresses and users replaced by tokens, the
//! same input by the same token in every run, beyond what sos clean does.
//!
//! What to replace is learned from the live host ([`HostFacts::learn`]): hostname, FQDN
//! and the names /etc/hosts gives the host's addresses, their domains, every interface
//! address (getifaddrs) and MAC (/sys/class/net), and the login users (uid >= 1000).
//! The original-to-token map is kept between runs in a root-only file outside the
//! archive ([`DEFAULT_MAP`]). Matching is case-insensitive and whole-word: a match
//! must not touch a letter or digit on either side, so `10.0.0.1` is not replaced inside
//! `10.0.0.12`, but `abc-10.0.0.1` loses its address (sos #3388).
//!
//! The same matcher drives [`LeakScan`], which reads the uncompressed archive as it is
//! written: anything that reached the archive without passing through [`Obfuscator`]
//! (a member name, a symlink target, the manifest, calink's log) fails the run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, PathError};

pub const DEFAULT_MAP: &str = "/var/lib/calink/obfuscation.json";

#[derive(Debug, thiserror::Error)]
pub enum ObfuscateError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{path}: not a valid obfuscation map: {reason}")]
    BadMap { path: PathBuf, reason: String },
    #[error("{path}: refusing an obfuscation map others can read or that root does not own (mode {mode:o}, uid {uid}); it must be 0600 in a 0700 directory")]
    Unsafe { path: PathBuf, mode: u32, uid: u32 },
}

/// What is replaced, and how its token looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Host,
    Domain,
    Ipv4,
    Ipv6,
    Mac,
    User,
}

impl Kind {
    /// Host names and addresses are what the final scan looks for; user names are
    /// replaced but common words (admin, backup) may appear legitimately elsewhere.
    fn scanned(self) -> bool {
        self != Kind::User
    }

    /// The n-th token (from 1). Addresses stay addresses, from the documentation ranges
    /// (RFC 5737, RFC 3849) and locally administered MACs, so tools that parse them
    /// still do; names are one word, so they never contain an original as a word.
    fn token(self, n: u32) -> String {
        match self {
            Kind::Host => format!("obfhost{n}"),
            Kind::Domain => format!("obfdomain{n}.example"),
            Kind::User => format!("obfuser{n}"),
            Kind::Ipv4 => match n {
                1..=254 => format!("198.51.100.{n}"),
                255..=508 => format!("203.0.113.{}", n - 254),
                _ => format!("obfip4n{n}"),
            },
            Kind::Ipv6 => format!("2001:db8::{n:x}"),
            Kind::Mac => format!("02:00:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        }
    }
}

/// What the live host is called and where it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    pub names: Vec<(Kind, String)>,
}

impl HostFacts {
    pub fn learn() -> HostFacts {
        let mut f = HostFacts::default();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fqdn = super::info::fqdn(&hostname);
        let mut hosts: BTreeSet<String> = BTreeSet::new();
        hosts.insert(hostname.clone());
        hosts.insert(fqdn);
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            hosts.insert(h.trim().to_string());
        }
        let mut addrs: BTreeSet<IpAddr> = BTreeSet::new();
        if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
            for i in ifs {
                let Some(a) = i.address else { continue };
                if let Some(v4) = a.as_sockaddr_in() {
                    addrs.insert(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = a.as_sockaddr_in6() {
                    addrs.insert(IpAddr::V6(v6.ip()));
                }
            }
        }
        addrs.retain(|a| !a.is_loopback() && !a.is_unspecified());
        // Debian puts the hostname on 127.0.1.1; the host's own addresses carry its
        // aliases.
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            for line in text.lines() {
                let mut w = line.split('#').next().unwrap_or("").split_whitespace();
                let Some(Ok(ip)) = w.next().map(str::parse::<IpAddr>) else {
                    continue;
                };
                let own = addrs.contains(&ip) || ip == IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1));
                for name in w {
                    if own || hosts.contains(name) {
                        hosts.insert(name.to_string());
                    }
                }
            }
        }
        hosts.retain(|h| !h.is_empty() && !h.starts_with("localhost") && h != "ip6-localhost");
        let mut domains: BTreeSet<String> = BTreeSet::new();
        for h in &hosts {
            if let Some((_, d)) = h.split_once('.') {
                if !d.is_empty() {
                    domains.insert(d.to_string());
                }
            }
        }
        domains.retain(|d| d != "localdomain");
        for h in hosts {
            f.names.push((Kind::Host, h));
        }
        for d in domains {
            f.names.push((Kind::Domain, d));
        }
        for a in addrs {
            match a {
                IpAddr::V4(v4) => f.names.push((Kind::Ipv4, v4.to_string())),
                IpAddr::V6(v6) => f.names.push((Kind::Ipv6, v6.to_string())),
            }
        }
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            for e in dir.flatten() {
                if let Ok(mac) = std::fs::read_to_string(e.path().join("address")) {
                    let mac = mac.trim().to_lowercase();
                    if mac.len() == 17 && mac != "00:00:00:00:00:00" {
                        f.names.push((Kind::Mac, mac));
                    }
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
            for line in text.lines() {
                let p: Vec<&str> = line.split(':').collect();
                if let (Some(name), Some(Ok(uid))) = (p.first(), p.get(2).map(|u| u.parse::<u32>()))
                {
                    if (1000..65534).contains(&uid) {
                        f.names.push((Kind::User, name.to_string()));
                    }
                }
            }
        }
        f.names.sort();
        f.names.dedup();
        f
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct MapFile {
    /// Per kind, original (lower-cased) to token.
    tokens: BTreeMap<Kind, BTreeMap<String, String>>,
}

/// The persistent map and the matcher built from it.
#[derive(Debug, Clone)]
pub struct Obfuscator {
    path: PathBuf,
    map: MapFile,
    matcher: Matcher,
    changed: bool,
}

impl Obfuscator {
    /// Open the map at `path` (a missing one starts empty; its directory is created
    /// 0700). An existing map or directory that others may read is refused.
    pub fn load(path: &Path) -> Result<Obfuscator, ObfuscateError> {
        let dir = fsutil::parent_dir(path);
        fsutil::ensure_dir(dir, 0o700)?;
        check_private(dir, 0o077)?;
        let map = match std::fs::read(path) {
            Ok(bytes) => {
                check_private(path, 0o177)?;
                serde_json::from_slice(&bytes).map_err(|e| ObfuscateError::BadMap {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => MapFile::default(),
            Err(e) => return Err(PathError::new("read", path, e).into()),
        };
        let mut o = Obfuscator {
            path: path.to_path_buf(),
            map,
            matcher: Matcher::default(),
            changed: false,
        };
        o.rebuild();
        Ok(o)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Add what the host is called; known originals keep their tokens.
    pub fn learn(&mut self, facts: &HostFacts) {
        for (kind, original) in &facts.names {
            let original = original.to_lowercase();
            let known = self.map.tokens.entry(*kind).or_default();
            if !known.contains_key(&original) {
                let n = known.len() as u32 + 1;
                known.insert(original, kind.token(n));
                self.changed = true;
            }
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let mut rules = Vec::new();
        for (kind, m) in &self.map.tokens {
            for (orig, token) in m {
                rules.push(Rule {
                    needle: orig.as_bytes().to_vec(),
                    token: token.clone(),
                    scanned: kind.scanned(),
                });
                if *kind == Kind::Mac {
                    // ip(8) writes aa:bb:..., Windows-style tools aa-bb-...
                    rules.push(Rule {
                        needle: orig.replace(':', "-").into_bytes(),
                        token: token.clone(),
                        scanned: true,
                    });
                }
                if *kind == Kind::Ipv6 {
                    if let Ok(a) = orig.parse::<Ipv6Addr>() {
                        let full = a.segments().map(|s| format!("{s:04x}")).join(":");
                        if full != *orig {
                            rules.push(Rule {
                                needle: full.into_bytes(),
                                token: token.clone(),
                                scanned: true,
                            });
                        }
                    }
                }
            }
        }
        self.matcher = Matcher::new(rules);
    }

    /// Save the map if it gained entries (0600, durably).
    pub fn save(&mut self) -> Result<(), PathError> {
        if !self.changed {
            return Ok(());
        }
        let mut bytes = serde_json::to_vec_pretty(&self.map).expect("map serialises");
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        self.changed = false;
        Ok(())
    }

    /// The token for `original` of `kind`, if known.
    pub fn token(&self, kind: Kind, original: &str) -> Option<&str> {
        self.map
            .tokens
            .get(&kind)?
            .get(&original.to_lowercase())
            .map(String::as_str)
    }

    /// `data` with every known original replaced by its token.
    pub fn apply(&self, data: &[u8]) -> Vec<u8> {
        self.matcher.replace(data)
    }

    pub fn apply_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.apply(s.as_bytes())).into_owned()
    }

    /// A writer tap that reports any host name or address passing through it.
    pub fn scanner(&self) -> LeakScan {
        LeakScan::new(self.matcher.scanned())
    }
}

fn check_private(path: &Path, forbidden: u32) -> Result<(), ObfuscateError> {
    let m = std::fs::metadata(path).map_err(|e| PathError::new("stat", path, e))?;
    let mode = m.permissions().mode() & 0o7777;
    if mode & forbidden != 0 || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(ObfuscateError::Unsafe {
            path: path.to_path_buf(),
            mode,
            uid: m.uid(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Rule {
    /// Lower-case.
    needle: Vec<u8>,
    token: String,
    scanned: bool,
}

/// Whole-word, ASCII case-insensitive matching of many needles, longest first.
#[derive(Debug, Clone, Default)]
struct Matcher {
    rules: Vec<Rule>,
    /// Rule indexes by the needle's first byte.
    by_first: BTreeMap<u8, Vec<usize>>,
    longest: usize,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

impl Matcher {
    fn new(mut rules: Vec<Rule>) -> Matcher {
        rules.retain(|r| !r.needle.is_empty());
        rules.sort_by(|a, b| {
            b.needle
                .len()
                .cmp(&a.needle.len())
                .then(a.needle.cmp(&b.needle))
        });
        rules.dedup_by(|a, b| a.needle == b.needle);
        let mut by_first: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            by_first.entry(r.needle[0]).or_default().push(i);
        }
        let longest = rules.iter().map(|r| r.needle.len()).max().unwrap_or(0);
        Matcher {
            rules,
            by_first,
            longest,
        }
    }

    fn scanned(&self) -> Matcher {
        Matcher::new(self.rules.iter().filter(|r| r.scanned).cloned().collect())
    }

    /// The rule matching at `i` as a whole word. `complete` says `data` ends where the
    /// stream does (otherwise a match reaching the end is not yet known to be whole).
    fn match_at(&self, data: &[u8], i: usize, complete: bool) -> Option<&Rule> {
        if i > 0 && is_word(data[i - 1]) {
            return None;
        }
        let cands = self.by_first.get(&data[i].to_ascii_lowercase())?;
        cands.iter().map(|c| &self.rules[*c]).find(|r| {
            let end = i + r.needle.len();
            end <= data.len()
                && data[i..end].eq_ignore_ascii_case(&r.needle)
                && match data.get(end) {
                    Some(b) => !is_word(*b),
                    None => complete,
                }
        })
    }

    fn replace(&self, data: &[u8]) -> Vec<u8> {
        if self.rules.is_empty() {
            return data.to_vec();
        }
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if let Some(r) = self.match_at(data, i, true) {
                out.extend_from_slice(r.token.as_bytes());
                i += r.needle.len();
            } else {
                out.push(data[i]);
                i += 1;
            }
        }
        out
    }
}

/// A `Write` adapter that passes everything on and remembers which host names and
/// addresses went through (the final scan of the archive, done as it is written).
pub struct LeakScan {
    matcher: Matcher,
    /// The stream's unexamined tail, with one byte before it for the word boundary.
    buf: Vec<u8>,
    pos: usize,
    found: BTreeSet<String>,
}

impl LeakScan {
    fn new(matcher: Matcher) -> LeakScan {
        LeakScan {
            matcher,
            buf: Vec::new(),
            pos: 0,
            found: BTreeSet::new(),
        }
    }

    /// Look at `data`, the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.matcher.rules.is_empty() {
            return;
        }
        self.buf.extend_from_slice(data);
        let safe = self.buf.len().saturating_sub(self.matcher.longest);
        self.examine(safe, false);
        if self.pos > 1 {
            self.buf.drain(..self.pos - 1);
            self.pos = 1;
        }
    }

    fn examine(&mut self, until: usize, complete: bool) {
        while self.pos < until {
            if let Some(r) = self.matcher.match_at(&self.buf, self.pos, complete) {
                self.found
                    .insert(String::from_utf8_lossy(&r.needle).into_owned());
            }
            self.pos += 1;
        }
    }

    /// Everything the stream held that it should not have.
    pub fn finish(mut self) -> BTreeSet<String> {
        let end = self.buf.len();
        self.examine(end, true);
        self.found
    }
}

/// A writer that shows every byte to a [`LeakScan`] before passing it on.
pub struct Tap<W> {
    pub inner: W,
    pub scan: Option<LeakScan>,
}

impl<W: Write> Write for Tap<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(s) = self.scan.as_mut() {
            s.feed(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            names: vec![
                (Kind::Host, "web1".into()),
                (Kind::Host, "web1.corp.example.net".into()),
                (Kind::Domain, "corp.example.net".into()),
                (Kind::Ipv4, "10.0.0.1".into()),
                (Kind::Ipv6, "fd00::2".into()),
                (Kind::Mac, "02:fc:00:00:00:01".into()),
                (Kind::User, "alice".into()),
            ],
        }
    }

    fn obf(dir: &Path) -> Obfuscator {
        let mut o = Obfuscator::load(&dir.join("map/obfuscation.json")).unwrap();
        o.learn(&facts());
        o
    }

    #[test]
    fn replaces_whole_words_case_insensitively() {
        let d = tempfile::tempdir().unwrap();
        let o = obf(d.path());
        let t = o.apply_str(
            "WEB1 web1.corp.example.net db.corp.example.net abc-10.0.0.1 10.0.0.12 \
             web10 fd00::2/64 fd00:0000:0000:0000:0000:0000:0000:0002 02:FC:00:00:00:01 02-fc-00-00-00-01 alice",
        );
        assert_eq!(
            t,
            "obfhost1 obfhost2 db.obfdomain1.example abc-198.51.100.1 10.0.0.12 \
             web10 2001:db8::1/64 2001:db8::1 02:00:00:00:00:01 02:00:00:00:00:01 obfuser1"
        );
    }

    #[test]
    fn tokens_persist_across_runs_and_the_map_is_private() {
        let d = tempfile::tempdir().unwrap();
        let mut o = obf(d.path());
        o.save().unwrap();
        let p = d.path().join("map/obfuscation.json");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let mut again = Obfuscator::load(&p).unwrap();
        let mut more = facts();
        more.names.insert(0, (Kind::Host, "zz".into()));
        again.learn(&more);
        for (k, v) in facts().names {
            assert_eq!(again.token(k, &v), o.token(k, &v), "{v}");
        }
        assert_eq!(again.token(Kind::Host, "zz"), Some("obfhost3"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Obfuscator::load(&p).unwrap_err().to_string();
        assert!(e.contains("refusing"), "{e}");
    }

    #[test]
    fn scan_finds_leaks_across_chunk_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let o = obf(d.path());
        let mut s = o.scanner();
        for chunk in [&b"xx abc-10.0."[..], b"0.1 yy web", b"10 ok we", b"b1"] {
            s.feed(chunk);
        }
        let found = s.finish();
        assert_eq!(found.into_iter().collect::<Vec<_>>(), ["10.0.0.1", "web1"]);
        let mut s = o.scanner();
        s.feed(o.apply_str("web1 10.0.0.1 alice").as_bytes());
        s.feed(b" alice obfhost1");
        assert!(s.finish().is_empty());
    }

    #[test]
    fn the_live_host_is_learned() {
        let f = HostFacts::learn();
        let host = nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(f.names.contains(&(Kind::Host, host)), "{f:?}");
        assert!(
            f.names
                .iter()
                .any(|(k, _)| *k == Kind::Ipv4 || *k == Kind::Ipv6),
            "{f:?}"
        );
        assert!(f
            .names
            .iter()
            .all(|(_, v)| v != "127.0.0.1" && v != "localhost"));
    }
}
