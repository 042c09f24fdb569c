//! pgqd's configuration: the `[pgqd]` section of Skytools' C daemon, every key with the
//! original's default, unknown keys rejected with the file and key named.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError};

pub const SECTION: &str = "pgqd";

/// The keys of the C pgqd, plus `status_file` (hostkit's machine-readable status).
pub const KEYS: &[&str] = &[
    "logfile",
    "pidfile",
    "base_connstr",
    "initial_database",
    "database_list",
    "syslog",
    "syslog_ident",
    "syslog_facility",
    "check_period",
    "maint_period",
    "retry_period",
    "ticker_period",
    "stats_period",
    "connection_lifetime",
    "status_file",
];

/// A sample configuration (`pgqd --ini`), with every key at its default.
pub const SAMPLE: &str = "[pgqd]

# where to log
logfile = ~/log/pgqd.log

# pidfile
pidfile = ~/pid/pgqd.pid

## optional parameters ##

# libpq connect string without dbname=
#base_connstr =

# startup db to query other databases
#initial_database = template1

# limit ticker to specific databases
#database_list =

# log into syslog
#syslog = 1
#syslog_ident = pgqd
#syslog_facility = daemon

## optional timeouts ##

# how often to check for new databases
#check_period = 60

# how often to flush retry queue
#retry_period = 30

# how often to do maintentance
#maint_period = 120

# how often to run ticker
#ticker_period = 1

# how often to log stats
#stats_period = 30

# how long a ticker connection is kept open
#connection_lifetime = 3600

## hostkit ##

# machine-readable per-database status, written every stats_period
# (default: the pidfile's name with .status appended; shown by pgqd --status)
#status_file =
";

#[derive(Debug, Clone, PartialEq)]
pub struct PgqdConfig {
    pub path: PathBuf,
    pub logfile: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub base_connstr: String,
    pub initial_database: String,
    /// Empty: discover every database that allows connections.
    pub database_list: Vec<String>,
    pub syslog: bool,
    pub syslog_ident: String,
    pub syslog_facility: String,
    pub check_period: Duration,
    pub maint_period: Duration,
    pub retry_period: Duration,
    pub ticker_period: Duration,
    pub stats_period: Duration,
    pub connection_lifetime: Duration,
    pub status_file: Option<PathBuf>,
}

/// Every period: more than zero, at most a week.
const PERIOD_RANGE: (Bound<Duration>, Bound<Duration>) = (
    Bound::Excluded(Duration::ZERO),
    Bound::Included(Duration::from_secs(7 * 86400)),
);

impl PgqdConfig {
    pub fn load(path: &Path) -> Result<PgqdConfig, ConfigError> {
        let cfg = Config::load(path)?;
        PgqdConfig::from_config(&cfg)
    }

    pub fn from_config(cfg: &Config) -> Result<PgqdConfig, ConfigError> {
        cfg.require_section(SECTION)?;
        let sec = cfg.section(SECTION);
        sec.reject_unknown(KEYS)?;
        let period = |k: &str, secs: u64| sec.duration(k, Duration::from_secs(secs), PERIOD_RANGE);
        let pidfile = sec.path("pidfile")?;
        let status_file = match sec.path("status_file")? {
            Some(p) => Some(p),
            None => pidfile
                .as_ref()
                .map(|p| PathBuf::from(format!("{}.status", p.display()))),
        };
        Ok(PgqdConfig {
            path: cfg.path().to_path_buf(),
            logfile: sec.path("logfile")?,
            pidfile,
            base_connstr: sec.raw("base_connstr")?.unwrap_or_default(),
            initial_database: sec.string_or("initial_database", "template1")?,
            database_list: sec.list("database_list")?,
            syslog: sec.bool("syslog", true)?,
            syslog_ident: sec.raw("syslog_ident")?.unwrap_or_else(|| "pgqd".into()),
            syslog_facility: sec
                .raw("syslog_facility")?
                .unwrap_or_else(|| "daemon".into()),
            check_period: period("check_period", 60)?,
            maint_period: period("maint_period", 120)?,
            retry_period: period("retry_period", 30)?,
            ticker_period: period("ticker_period", 1)?,
            stats_period: period("stats_period", 30)?,
            connection_lifetime: period("connection_lifetime", 3600)?,
            status_file,
        })
    }

    /// The libpq connection string for one database: base_connstr plus a quoted dbname.
    pub fn connstr(&self, db: &str) -> String {
        let quoted = db.replace('\\', "\\\\").replace('\'', "\\'");
        if self.base_connstr.trim().is_empty() {
            format!("dbname='{quoted}'")
        } else {
            format!("{} dbname='{quoted}'", self.base_connstr.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PgqdConfig, ConfigError> {
        PgqdConfig::from_config(&Config::parse(text, Path::new("/etc/skytools/pgqd.ini")).unwrap())
    }

    #[test]
    fn defaults_are_the_originals() {
        let c = parse("[pgqd]\n").unwrap();
        assert_eq!(c.initial_database, "template1");
        assert!(c.database_list.is_empty());
        assert!(c.syslog);
        assert_eq!(c.syslog_ident, "pgqd");
        assert_eq!(c.syslog_facility, "daemon");
        assert_eq!(c.check_period, Duration::from_secs(60));
        assert_eq!(c.maint_period, Duration::from_secs(120));
        assert_eq!(c.retry_period, Duration::from_secs(30));
        assert_eq!(c.ticker_period, Duration::from_secs(1));
        assert_eq!(c.stats_period, Duration::from_secs(30));
        assert_eq!(c.connection_lifetime, Duration::from_secs(3600));
        assert_eq!(c.pidfile, None);
        assert_eq!(c.status_file, None);
    }

    #[test]
    fn values_lists_and_the_sample_parse() {
        let c = parse("[pgqd]\ndatabase_list = a, b ,c\nticker_period = 0.5\npidfile = /run/pgqd.pid\nsyslog = 0\nbase_connstr = host=/tmp user=x\n").unwrap();
        assert_eq!(c.database_list, vec!["a", "b", "c"]);
        assert_eq!(c.ticker_period, Duration::from_millis(500));
        assert_eq!(c.status_file, Some(PathBuf::from("/run/pgqd.pid.status")));
        assert!(!c.syslog);
        assert_eq!(c.connstr("it's"), "host=/tmp user=x dbname='it\\'s'");
        parse(SAMPLE).unwrap();
    }

    #[test]
    fn bad_input_names_the_key() {
        let e = parse("[pgqd]\nticker_perod = 1\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/skytools/pgqd.ini: [pgqd] ticker_perod: unknown key"
        );
        let e = parse("[pgqd]\nticker_period = fast\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[pgqd] ticker_period = \"fast\""), "{e}");
        let e = parse("[pgqd]\nmaint_period = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("positive"), "{e}");
        let e = parse("[other]\n").unwrap_err().to_string();
        assert_eq!(e, "/etc/skytools/pgqd.ini: no section [pgqd]");
    }
}
