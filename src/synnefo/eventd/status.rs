//! The live state eventd writes for monitoring, and `snf-ganeti-eventd --status`, the
//! Nagios-style check that reads it.
//!
//! The daemon writes `<spool_dir>/eventd.status` (JSON, atomically and durably) at start,
//! every [`PERIOD`] and within a second of a change of what it says: whether this node is
//! the master, whether the broker is connected, the last confirmed publish. The check
//! reads that file, the pidfile's lock (is the daemon alive) and the spool directory
//! itself, so the spool figures are right even when the daemon is dead. A status file
//! older than three periods means the daemon is hung: CRITICAL, as a dead one is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::amqp::spool;
use crate::fsutil::{self, PathError};
use crate::monitor::{self, Check, Metrics, State, Thresholds};

/// How often the daemon rewrites the status file when nothing changes.
pub const PERIOD: Duration = Duration::from_secs(5);
/// The file's name inside the spool directory (the spool only counts `*.msgs`).
pub const FILE: &str = "eventd.status";

/// Spool entries waiting: more than 100 is WARNING, more than 1000 CRITICAL.
pub const SPOOL: Thresholds = Thresholds::new(100, 1000);
/// Age of the oldest unconfirmed message: 5 min WARNING, 30 min CRITICAL.
pub const AGE: Thresholds = Thresholds::new(300, 1800);

pub fn path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE)
}

/// What the daemon says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// Unix time this was written.
    pub written: u64,
    /// Seconds between writes when nothing changes.
    pub period: u64,
    pub node: String,
    /// Whether this node is the master, as the daemon last read ssconf (None: not read yet).
    pub master: Option<bool>,
    pub broker_connected: bool,
    /// Unix time of the last message the broker confirmed.
    pub last_publish: Option<u64>,
    /// Messages confirmed since the daemon started.
    pub confirmed: u64,
    /// Spooling is paused (spool full, disk full).
    pub paused: bool,
}

impl Status {
    /// Same content apart from the time it was written.
    pub fn same_news(&self, other: &Status) -> bool {
        Status {
            written: other.written,
            ..self.clone()
        } == *other
    }
}

pub fn write(path: &Path, status: &Status) -> Result<(), PathError> {
    let data = serde_json::to_vec_pretty(status).expect("status serializes");
    fsutil::write_atomic(path, &data, 0o644)
}

/// `--status` options.
#[derive(Debug, Clone)]
pub struct Options {
    pub spool: Thresholds,
    pub age: Thresholds,
    pub prometheus: Option<PathBuf>,
}

/// What the check looked at.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The daemon holding the pidfile, if one does.
    pub running: Option<i32>,
    pub status: Result<Option<Status>, String>,
    pub spool: spool::Figures,
    pub now: u64,
}

pub fn observe(pid_file: &Path, spool_dir: &Path) -> Result<Observed, String> {
    let spool = spool::figures(spool_dir).map_err(|e| e.to_string())?;
    let running = crate::daemon::running_pid(pid_file).map_err(|e| e.to_string())?;
    let file = path(spool_dir);
    let status = match std::fs::read(&file) {
        Ok(data) => serde_json::from_slice::<Status>(&data)
            .map(Some)
            .map_err(|e| format!("{}: not an eventd status file: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PathError::new("read", &file, e).to_string()),
    };
    Ok(Observed {
        running,
        status,
        spool,
        now: monitor::unix_now(),
    })
}

/// Judge what was observed.
pub fn judge(o: &Observed, opts: &Options) -> (Check, Metrics) {
    let mut c = Check::new("EVENTD");
    let mut m = Metrics::new("hostkit_eventd_");
    let status = match &o.status {
        Ok(s) => s.clone(),
        Err(e) => {
            c.fail(State::Unknown, e.clone());
            None
        }
    };
    let mut alive = o.running.is_some();
    if o.running.is_none() {
        c.fail(State::Critical, "not running");
    }
    if let Some(s) = status.as_ref().filter(|_| alive) {
        let age = o.now.saturating_sub(s.written);
        m.gauge(
            "status_age_seconds",
            "Seconds since the daemon last wrote its status file",
            &[],
            age as f64,
        );
        if age > 3 * s.period.max(1) {
            c.fail(
                State::Critical,
                format!("status file {} old: the daemon is hung", monitor::age(age)),
            );
            alive = false;
        }
    } else if alive && o.status.is_ok() {
        c.fail(State::Critical, "no status file");
        alive = false;
    }
    m.gauge(
        "up",
        "1 when the daemon runs and its status file is fresh",
        &[],
        f64::from(u8::from(alive)),
    );
    let live = status.as_ref().filter(|_| alive);
    if let Some(s) = live {
        let master = s.master.unwrap_or(false);
        match s.master {
            Some(true) => c.say("master"),
            Some(false) => c.say("not the master"),
            None => c.say("master not known yet"),
        }
        m.gauge(
            "master",
            "1 when this node is the Ganeti master (the only one that publishes)",
            &[],
            f64::from(u8::from(master)),
        );
        if s.broker_connected {
            c.say("broker connected");
        } else if master {
            c.fail(State::Warning, "broker disconnected");
        } else {
            c.say("broker disconnected");
        }
        m.gauge(
            "broker_connected",
            "1 when the daemon is connected to the AMQP broker",
            &[],
            f64::from(u8::from(s.broker_connected)),
        );
        if s.paused {
            c.fail(State::Warning, "spooling paused (spool or disk full)");
        }
        m.counter(
            "messages_confirmed_total",
            "Messages the broker confirmed since the daemon started",
            &[],
            s.confirmed as f64,
        );
    }
    let f = &o.spool;
    c.say(format!(
        "spool {} entries {}",
        f.entries,
        monitor::bytes(f.bytes)
    ));
    c.measure("spool_entries", f.entries, "", opts.spool);
    c.perf("spool_bytes", f.bytes as f64, "B");
    m.gauge(
        "spool_entries",
        "Spool entries (files) not yet confirmed by the broker",
        &[],
        f.entries as f64,
    );
    m.gauge(
        "spool_bytes",
        "Bytes of the spool entries",
        &[],
        f.bytes as f64,
    );
    let oldest = f.oldest.map(monitor::secs_since);
    if let Some(a) = oldest {
        c.say(format!("oldest unconfirmed {}", monitor::age(a)));
    }
    c.measure("oldest_age", oldest.unwrap_or(0), "s", opts.age);
    m.gauge(
        "oldest_message_age_seconds",
        "Age of the oldest spooled message not yet confirmed (0 when the spool is empty)",
        &[],
        oldest.unwrap_or(0) as f64,
    );
    if let Some(s) = live {
        match s.last_publish {
            Some(t) => {
                let a = o.now.saturating_sub(t);
                c.say(format!("last publish {} ago", monitor::age(a)));
                c.perf("last_publish_age", a as f64, "s");
                m.gauge(
                    "last_publish_timestamp_seconds",
                    "Unix time of the last message the broker confirmed",
                    &[],
                    t as f64,
                );
            }
            None => c.say("nothing published yet"),
        }
    }
    (c, m)
}

/// `--status`: print the one line and return the plugin exit status.
pub fn run(pid_file: &Path, spool_dir: &Path, opts: &Options) -> ExitCode {
    match observe(pid_file, spool_dir) {
        Ok(o) => {
            let (c, m) = judge(&o, opts);
            monitor::report(c, m, opts.prometheus.as_deref())
        }
        Err(e) => monitor::report(
            Check::unknown("EVENTD", &e),
            Metrics::new("hostkit_eventd_"),
            opts.prometheus.as_deref(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            spool: SPOOL,
            age: AGE,
            prometheus: None,
        }
    }

    fn status(now: u64) -> Status {
        Status {
            pid: 1,
            written: now - 2,
            period: 5,
            node: "n1".into(),
            master: Some(true),
            broker_connected: true,
            last_publish: Some(now - 12),
            confirmed: 40,
            paused: false,
        }
    }

    fn observed(s: Option<Status>, running: bool, entries: u64) -> Observed {
        let now = monitor::unix_now();
        Observed {
            running: running.then_some(1),
            status: Ok(s),
            spool: spool::Figures {
                entries,
                bytes: entries * 1000,
                oldest: None,
            },
            now,
        }
    }

    #[test]
    fn healthy_master_is_ok_with_every_figure() {
        let now = monitor::unix_now();
        let (c, m) = judge(&observed(Some(status(now)), true, 0), &opts());
        assert_eq!(c.state(), State::Ok);
        assert!(c.line().starts_with(
            "EVENTD OK - master, broker connected, spool 0 entries 0 B, last publish 12 s ago | \
             spool_entries=0;100;1000;0 spool_bytes=0B oldest_age=0s;300;1800;0 last_publish_age=12s"
        ), "{}", c.line());
        let text = m.render();
        for name in [
            "hostkit_eventd_up 1",
            "hostkit_eventd_master 1",
            "hostkit_eventd_broker_connected 1",
            "hostkit_eventd_spool_entries 0",
            "hostkit_eventd_messages_confirmed_total 40",
        ] {
            assert!(text.contains(&format!("{name}\n")), "{name}: {text}");
        }
        monitor::parse_textfile(&text).unwrap();
    }

    #[test]
    fn dead_hung_and_disconnected_daemons() {
        let now = monitor::unix_now();
        let (c, _) = judge(&observed(Some(status(now)), false, 3), &opts());
        assert_eq!(c.state(), State::Critical);
        assert!(
            c.line()
                .starts_with("EVENTD CRITICAL - not running, spool 3 entries"),
            "{}",
            c.line()
        );
        let mut old = status(now);
        old.written = now - 16;
        let (c, _) = judge(&observed(Some(old), true, 0), &opts());
        assert_eq!(c.state(), State::Critical);
        assert!(c.line().contains("the daemon is hung"), "{}", c.line());
        let mut down = status(now);
        down.broker_connected = false;
        let (c, _) = judge(&observed(Some(down.clone()), true, 0), &opts());
        assert_eq!(c.state(), State::Warning);
        let (c, _) = judge(&observed(Some(down.clone()), true, 101), &opts());
        assert_eq!(c.state(), State::Warning);
        let (c, _) = judge(&observed(Some(down.clone()), true, 1001), &opts());
        assert_eq!(c.state(), State::Critical);
        down.master = Some(false);
        let (c, _) = judge(&observed(Some(down), true, 0), &opts());
        assert_eq!(c.state(), State::Ok);
        assert!(c
            .line()
            .starts_with("EVENTD OK - not the master, broker disconnected"));
    }

    #[test]
    fn only_the_write_time_changing_is_no_news() {
        let a = status(1000);
        let mut b = a.clone();
        b.written += 5;
        assert!(a.same_news(&b));
        b.broker_connected = false;
        assert!(!a.same_news(&b));
    }
}
