//! What the `--status` checks of the daemons share: a Nagios plugin result (one summary
//! line, perfdata, exit 0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN) and the same figures
//! as a node_exporter textfile (`--prometheus FILE`, written atomically, 0644).
//!
//! The plugin line follows the Nagios plugin guidelines:
//! `SERVICE STATE - text, text | label=value[unit];warn;crit;min;max ...`, then any
//! further lines (the long output a Nagios UI shows on demand). A threshold `N` means
//! "alert when the value is above N", the guidelines' default range `0..N`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::fsutil::{self, PathError};

/// A check's outcome, with the plugin exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// The plugin exit status.
    pub fn code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    /// How bad: CRITICAL beats UNKNOWN beats WARNING beats OK.
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Unknown => 2,
            State::Critical => 3,
        }
    }

    /// The worse of the two.
    pub fn worst(self, other: State) -> State {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// A warning and a critical threshold: a value above `warn` is WARNING, above `crit`
/// CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub warn: u64,
    pub crit: u64,
}

impl Thresholds {
    pub const fn new(warn: u64, crit: u64) -> Thresholds {
        Thresholds { warn, crit }
    }

    pub fn state(&self, value: u64) -> State {
        if value > self.crit {
            State::Critical
        } else if value > self.warn {
            State::Warning
        } else {
            State::Ok
        }
    }

    /// Command-line values over defaults; a warning above the critical one is refused.
    pub fn with(
        self,
        warn: Option<u64>,
        crit: Option<u64>,
        what: &str,
    ) -> Result<Thresholds, String> {
        let t = Thresholds {
            warn: warn.unwrap_or(self.warn),
            crit: crit.unwrap_or(self.crit),
        };
        if t.warn > t.crit {
            return Err(format!(
                "{what}: the warning threshold {} is above the critical one {}",
                t.warn, t.crit
            ));
        }
        Ok(t)
    }
}

/// One perfdata item.
#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    pub label: String,
    pub value: f64,
    /// `s`, `B`, `c` (a counter) or empty.
    pub unit: &'static str,
    pub thresholds: Option<Thresholds>,
    pub min: Option<f64>,
}

impl Perf {
    fn render(&self) -> String {
        let label = perf_label(&self.label);
        let mut s = format!("{label}={}{}", number(self.value), self.unit);
        let (w, c) = self.thresholds.map_or((String::new(), String::new()), |t| {
            (t.warn.to_string(), t.crit.to_string())
        });
        let min = self.min.map(number).unwrap_or_default();
        if !min.is_empty() {
            let _ = write!(s, ";{w};{c};{min}");
        } else if self.thresholds.is_some() {
            let _ = write!(s, ";{w};{c}");
        }
        s
    }
}

/// A label as the guidelines allow it: no `=` or `'`, quoted when it holds anything
/// but letters, digits and `_-.`.
fn perf_label(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| if c == '=' || c == '\'' { '_' } else { c })
        .collect();
    if clean
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        clean
    } else {
        format!("'{clean}'")
    }
}

/// Integers without a fraction, others with up to three decimals.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A plugin result being built: the state only ever gets worse.
#[derive(Debug, Clone)]
pub struct Check {
    service: String,
    state: State,
    summary: Vec<String>,
    /// How many of the summary's first parts are problems.
    problems: usize,
    perf: Vec<Perf>,
    long: Vec<String>,
}

impl Check {
    /// `service` is the line's first word (`EVENTD`, `PGQD`, `WALMGR`).
    pub fn new(service: &str) -> Check {
        Check {
            service: service.to_string(),
            state: State::Ok,
            summary: Vec::new(),
            problems: 0,
            perf: Vec::new(),
            long: Vec::new(),
        }
    }

    /// A check that could not look: UNKNOWN with the reason.
    pub fn unknown(service: &str, why: &str) -> Check {
        let mut c = Check::new(service);
        c.fail(State::Unknown, why);
        c
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Make the state at least `s`.
    pub fn raise(&mut self, s: State) {
        self.state = self.state.worst(s);
    }

    /// Add a part of the summary.
    pub fn say(&mut self, text: impl Into<String>) {
        self.summary.push(text.into());
    }

    /// A problem: said first in the summary (before the figures), state raised.
    pub fn fail(&mut self, s: State, text: impl Into<String>) {
        self.raise(s);
        self.summary.insert(self.problems, text.into());
        self.problems += 1;
    }

    /// A figure with thresholds: perfdata, and the state it deserves.
    pub fn measure(&mut self, label: &str, value: u64, unit: &'static str, t: Thresholds) -> State {
        let s = t.state(value);
        self.raise(s);
        self.perf.push(Perf {
            label: label.to_string(),
            value: value as f64,
            unit,
            thresholds: Some(t),
            min: Some(0.0),
        });
        s
    }

    /// A figure without thresholds.
    pub fn perf(&mut self, label: &str, value: f64, unit: &'static str) {
        self.perf.push(Perf {
            label: label.to_string(),
            value,
            unit,
            thresholds: None,
            min: None,
        });
    }

    /// A line of the long output (after the summary line).
    pub fn detail(&mut self, line: impl Into<String>) {
        self.long.push(line.into());
    }

    /// The summary line: `SERVICE STATE - parts | perfdata`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.service, self.state.as_str());
        if !self.summary.is_empty() {
            let text = self.summary.join(", ").replace(['\n', '|'], " ");
            let _ = write!(s, " - {text}");
        }
        if !self.perf.is_empty() {
            let p: Vec<String> = self.perf.iter().map(Perf::render).collect();
            let _ = write!(s, " | {}", p.join(" "));
        }
        s
    }

    /// Everything printed: the summary line, then the long output.
    pub fn text(&self) -> String {
        let mut s = self.line();
        s.push('\n');
        for l in &self.long {
            s.push_str(&l.replace('|', " "));
            s.push('\n');
        }
        s
    }

    /// Print it on stdout and return the plugin exit status.
    pub fn finish(&self) -> ExitCode {
        print!("{}", self.text());
        ExitCode::from(self.state.code())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// A node_exporter textfile: metric families with `# HELP` and `# TYPE`, every name
/// under one prefix (`hostkit_eventd_`).
#[derive(Debug)]
pub struct Metrics {
    prefix: String,
    families: BTreeMap<String, Family>,
}

impl Metrics {
    pub fn new(prefix: &str) -> Metrics {
        Metrics {
            prefix: prefix.to_string(),
            families: BTreeMap::new(),
        }
    }

    fn add(&mut self, kind: Kind, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        let f = self
            .families
            .entry(format!("{}{name}", self.prefix))
            .or_insert_with(|| Family {
                help: help.to_string(),
                kind,
                samples: Vec::new(),
            });
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.samples.push((labels, v));
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.add(Kind::Gauge, name, help, labels, v);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.add(Kind::Counter, name, help, labels, v);
    }

    /// The check's own state as `<prefix>check_state` (0 OK … 3 UNKNOWN).
    pub fn state(&mut self, s: State) {
        self.gauge(
            "check_state",
            "Result of the status check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
            &[],
            f64::from(s.code()),
        );
    }

    /// The text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, f) in &self.families {
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for (labels, v) in &f.samples {
                s.push_str(name);
                if !labels.is_empty() {
                    let l: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                        .collect();
                    let _ = write!(s, "{{{}}}", l.join(","));
                }
                let _ = writeln!(s, " {}", number(*v));
            }
        }
        s
    }

    /// Write the textfile atomically, mode 0644 (node_exporter reads it as another user).
    pub fn write(&self, path: &Path) -> Result<(), PathError> {
        fsutil::write_atomic(path, self.render().as_bytes(), 0o644)
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Finish a check: write the textfile when asked (a failure to write it makes the
/// result UNKNOWN, said in the summary), print, return the exit status.
pub fn report(mut check: Check, mut metrics: Metrics, prometheus: Option<&Path>) -> ExitCode {
    if let Some(path) = prometheus {
        metrics.state(check.state());
        if let Err(e) = metrics.write(path) {
            check.fail(State::Unknown, format!("cannot write the textfile: {e}"));
        }
    }
    check.finish()
}

/// `12 s`, `3 min`, `5 h`, `2 d`: an age as the summary says it.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
    }
}

/// `0 B`, `17 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Seconds since `t` (0 for a time in the future).
pub fn secs_since(t: std::time::SystemTime) -> u64 {
    std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs()
}

/// One textfile line: metric name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// Every sample line of a textfile as (name, labels, value); an error names the first
/// line that is not `name{labels} value` (comments and blank lines skipped). For tests
/// of the writers here and in tests/.
pub fn parse_textfile(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("not `name{{labels}} value`: {line:?}");
        let (head, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: f64 = value.parse().map_err(|_| bad())?;
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').ok_or_else(bad)?),
            None => (head, ""),
        };
        let name_ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !name_ok {
            return Err(bad());
        }
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").ok_or_else(bad)?;
            let mut v = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, c)) => v.push(c),
                        None => return Err(bad()),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end.ok_or_else(bad)?;
            map.insert(k.to_string(), v);
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        out.push((name.to_string(), map, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_alert_above_the_value() {
        let t = Thresholds::new(10, 100);
        assert_eq!(t.state(0), State::Ok);
        assert_eq!(t.state(10), State::Ok);
        assert_eq!(t.state(11), State::Warning);
        assert_eq!(t.state(100), State::Warning);
        assert_eq!(t.state(101), State::Critical);
        assert_eq!(t.with(Some(5), None, "x").unwrap(), Thresholds::new(5, 100));
        assert!(t
            .with(Some(500), None, "--warn-spool")
            .unwrap_err()
            .contains("--warn-spool"));
    }

    #[test]
    fn worst_state_wins_critical_over_unknown_over_warning() {
        assert_eq!(State::Ok.worst(State::Warning), State::Warning);
        assert_eq!(State::Warning.worst(State::Unknown), State::Unknown);
        assert_eq!(State::Critical.worst(State::Unknown), State::Critical);
        assert_eq!(State::Unknown.worst(State::Ok), State::Unknown);
    }

    #[test]
    fn the_plugin_line_has_state_summary_and_perfdata() {
        let mut c = Check::new("EVENTD");
        c.say("master");
        c.say("spool 3 entries 2.0 KiB");
        let s = c.measure("spool_entries", 3, "", Thresholds::new(100, 1000));
        assert_eq!(s, State::Ok);
        c.perf("last_publish_age", 12.0, "s");
        c.perf("odd label=x", 0.5, "");
        assert_eq!(
            c.line(),
            "EVENTD OK - master, spool 3 entries 2.0 KiB | spool_entries=3;100;1000;0 \
             last_publish_age=12s 'odd label_x'=0.5"
        );
        c.fail(State::Critical, "not running");
        c.detail("a | b");
        assert_eq!(c.state(), State::Critical);
        let text = c.text();
        assert!(
            text.starts_with("EVENTD CRITICAL - not running, master, spool"),
            "{text}"
        );
        assert!(text.ends_with("\na   b\n"), "{text}");
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn the_textfile_has_help_type_and_parses_back() {
        let mut m = Metrics::new("hostkit_pgqd_");
        m.gauge(
            "last_tick_age_seconds",
            "Seconds since the last tick",
            &[("database", "app")],
            5.0,
        );
        m.gauge(
            "last_tick_age_seconds",
            "Seconds since the last tick",
            &[("database", "we\"ird\\db\n")],
            7.0,
        );
        m.counter("ticks_total", "Ticks made", &[], 12.0);
        m.state(State::Warning);
        let text = m.render();
        assert!(text.contains(
            "# HELP hostkit_pgqd_last_tick_age_seconds Seconds since the last tick\n\
             # TYPE hostkit_pgqd_last_tick_age_seconds gauge\n\
             hostkit_pgqd_last_tick_age_seconds{database=\"app\"} 5\n"
        ));
        assert!(text.contains("# TYPE hostkit_pgqd_ticks_total counter\n"));
        let samples = parse_textfile(&text).unwrap();
        assert_eq!(samples.len(), 4);
        assert!(samples
            .iter()
            .any(
                |(_, l, v)| l.get("database").map(String::as_str) == Some("we\"ird\\db\n")
                    && *v == 7.0
            ));
        assert!(samples
            .iter()
            .any(|(n, _, v)| n == "hostkit_pgqd_check_state" && *v == 1.0));
        assert!(parse_textfile("a b").is_err());
        assert!(parse_textfile("x{a=\"1\" 2").is_err());
        assert!(parse_textfile("9x 2").is_err());
    }

    #[test]
    fn a_textfile_is_written_0644_and_a_failure_makes_the_check_unknown() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.prom");
        let mut m = Metrics::new("hostkit_t_");
        m.gauge("up", "Up", &[], 1.0);
        m.write(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("hostkit_t_up 1\n"));
        let mut c = Check::new("T");
        c.say("fine");
        let bad = d.path().join("missing/dir/x.prom");
        let mut m = Metrics::new("hostkit_t_");
        m.gauge("up", "Up", &[], 1.0);
        metrics_then_state(&mut c, &mut m, &bad);
        assert_eq!(c.state(), State::Unknown);
        assert!(c
            .line()
            .starts_with("T UNKNOWN - cannot write the textfile: "));
    }

    /// What [`report`] does before printing.
    fn metrics_then_state(c: &mut Check, m: &mut Metrics, path: &Path) {
        m.state(c.state());
        if let Err(e) = m.write(path) {
            c.fail(State::Unknown, format!("cannot write the textfile: {e}"));
        }
    }

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(age(12), "12 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(7200), "2 h");
        assert_eq!(age(3 * 86400), "3 d");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(50 << 20), "50 MiB");
    }
}
