//! `/etc/synnefo/gtools.conf`, shared by snf-ganeti-eventd, snf-ganeti-hook and
//! snf-progress-monitor. Keys keep the names of Synnefo's settings (`AMQP_HOSTS`,
//! `EXCHANGE_GANETI`, `BACKEND_PREFIX_ID`; any case) so an operator can carry values
//! over. Shared keys live in `[gtools]`; each program has its own section for the rest.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::amqp::tls::{Tls, TlsSettings};
use crate::amqp::{self, broker::BrokerConfig};
use crate::config::{Config, ConfigError};
use crate::logging::Target;

pub const DEFAULT_CONFIG: &str = "/etc/synnefo/gtools.conf";
pub const SECTION: &str = "gtools";
pub const DEFAULT_SPOOL_DIR: &str = "/var/spool/snf-ganeti-eventd";
pub const DEFAULT_AMQP: &str = "amqp://guest:guest@localhost:5672/%2f";

/// Keys allowed in `[gtools]`.
pub const KEYS: &[&str] = &[
    "amqp_hosts",
    "exchange_ganeti",
    "backend_prefix_id",
    "spool_dir",
    "spool_max_bytes",
    "spool_max_entries",
    "data_dir",
    "node_name",
    "amqp_connect_timeout",
    "amqp_confirm_timeout",
    "amqp_tls_ca_file",
    "amqp_tls_cert_file",
    "amqp_tls_key_file",
    "amqp_tls_verify",
];

/// Keys every program section accepts for its logging.
pub const LOG_KEYS: &[&str] = &[
    "log_file",
    "debug",
    "syslog",
    "syslog_ident",
    "syslog_facility",
    "syslog_socket",
];

/// Load the config file: an explicit path must exist; the default path may be absent
/// (built-in defaults then apply).
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    match explicit {
        Some(p) => Config::load(p),
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG)),
        None => Ok(Config::parse("", Path::new(DEFAULT_CONFIG)).expect("empty config parses")),
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub amqp: Vec<String>,
    pub exchange: Option<String>,
    pub spool_dir: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub node_name: Option<String>,
}

/// The shared settings, validated.
#[derive(Debug, Clone)]
pub struct Gtools {
    pub amqp_urls: Vec<String>,
    pub exchange: String,
    pub backend_prefix: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Entries (files) the spool may hold; at the cap it counts as full.
    pub spool_max_entries: u64,
    pub data_dir: PathBuf,
    pub node_name: Option<String>,
    pub connect_timeout: Duration,
    pub confirm_timeout: Duration,
    /// Loaded when some URL is `amqps://` or an `amqp_tls_*` key is set.
    pub tls: Option<Tls>,
}

/// Smallest spool cap accepted: it must hold at least one job's messages.
pub const MIN_SPOOL_BYTES: u64 = 16 * 1024;

/// AMQP timeouts: more than zero, less than a day.
const TIMEOUT_RANGE: (Bound<Duration>, Bound<Duration>) = (
    Bound::Excluded(Duration::ZERO),
    Bound::Excluded(Duration::from_secs(86400)),
);

impl Gtools {
    pub fn from_config(cfg: &Config, o: &Overrides) -> Result<Gtools, anyhow::Error> {
        let sec = cfg.section(SECTION);
        sec.reject_unknown(KEYS)?;
        let amqp_urls = if !o.amqp.is_empty() {
            o.amqp.clone()
        } else {
            Some(sec.list("amqp_hosts")?)
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| vec![DEFAULT_AMQP.to_string()])
        };
        for url in &amqp_urls {
            amqp::validate_url(url).map_err(|e| {
                if o.amqp.is_empty() {
                    anyhow::anyhow!("{}: [{SECTION}] amqp_hosts: {e}", cfg.path().display())
                } else {
                    anyhow::anyhow!("--amqp: {e}")
                }
            })?;
        }
        let exchange = match &o.exchange {
            Some(e) => e.clone(),
            None => sec
                .raw("exchange_ganeti")?
                .unwrap_or_else(|| "ganeti".into()),
        };
        if exchange.is_empty() || exchange.len() > 255 {
            anyhow::bail!("exchange name {exchange:?} must be 1 to 255 characters");
        }
        let tls_settings = TlsSettings {
            ca_file: sec.path("amqp_tls_ca_file")?,
            cert_file: sec.path("amqp_tls_cert_file")?,
            key_file: sec.path("amqp_tls_key_file")?,
            verify: sec.bool("amqp_tls_verify", true)?,
        };
        let tls = if amqp_urls.iter().any(|u| u.starts_with("amqps://"))
            || tls_settings != TlsSettings::default()
        {
            Some(Tls::load(&tls_settings).map_err(|e| {
                anyhow::anyhow!("{}: [{SECTION}] amqp_tls_*: {e}", cfg.path().display())
            })?)
        } else {
            None
        };
        let path_of = |key: &str, over: &Option<PathBuf>, default: &str| match over {
            Some(p) => Ok::<_, ConfigError>(p.clone()),
            None => sec.path_or(key, default),
        };
        Ok(Gtools {
            amqp_urls,
            exchange,
            // Raw: an empty prefix is a setting (instance names without one).
            backend_prefix: sec
                .raw("backend_prefix_id")?
                .unwrap_or_else(|| "snf-".into()),
            spool_dir: path_of("spool_dir", &o.spool_dir, DEFAULT_SPOOL_DIR)?,
            spool_max_bytes: sec.number("spool_max_bytes", 1 << 30, MIN_SPOOL_BYTES..)?,
            spool_max_entries: sec.number("spool_max_entries", 100_000, 1..)?,
            data_dir: path_of(
                "data_dir",
                &o.data_dir,
                crate::ganeti::ssconf::DEFAULT_DATA_DIR,
            )?,
            node_name: o.node_name.clone().or(sec.raw("node_name")?),
            connect_timeout: sec.duration(
                "amqp_connect_timeout",
                Duration::from_secs(10),
                TIMEOUT_RANGE,
            )?,
            confirm_timeout: sec.duration(
                "amqp_confirm_timeout",
                Duration::from_secs(30),
                TIMEOUT_RANGE,
            )?,
            tls,
        })
    }

    /// The spool with both caps (bytes and entries).
    pub fn open_spool(&self) -> Result<crate::amqp::spool::Spool, crate::amqp::spool::SpoolError> {
        Ok(
            crate::amqp::spool::Spool::open(&self.spool_dir, self.spool_max_bytes)?
                .with_max_entries(self.spool_max_entries),
        )
    }

    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            urls: self.amqp_urls.clone(),
            connect_timeout: self.connect_timeout,
            tls: self.tls.clone(),
        }
    }

    /// Set when `amqp_tls_verify = no`: each program shows it as a warning.
    pub fn tls_warning(&self) -> Option<&'static str> {
        self.tls.as_ref().and_then(Tls::insecure_warning)
    }

    /// The broker URLs with passwords masked, for logs.
    pub fn brokers_redacted(&self) -> String {
        let urls: Vec<String> = self.amqp_urls.iter().map(|u| amqp::redact(u)).collect();
        urls.join(" ")
    }

    /// One line per broker URL that names the empty vhost (it ends in '/'): said at
    /// `--check` and at start, since the broker's own answer is "vhost  not found".
    pub fn vhost_warnings(&self) -> Vec<String> {
        self.amqp_urls
            .iter()
            .filter_map(|u| amqp::empty_vhost_hint(u).map(|h| format!("{}: {h}", amqp::redact(u))))
            .collect()
    }

    /// This node's name as Ganeti knows it (override, else the FQDN).
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(crate::ganeti::ssconf::fqdn)
    }
}

/// A program's log target and level from its section; `cli_log` (`-l/--log`) wins.
pub fn log_settings(
    cfg: &Config,
    section: &str,
    cli_log: Option<&str>,
    cli_debug: bool,
    default_file: &str,
) -> Result<(Target, log::LevelFilter), ConfigError> {
    let sec = cfg.section(section);
    let debug = cli_debug || sec.bool("debug", false)?;
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    if let Some(l) = cli_log {
        return Ok((Target::from_arg(l), level));
    }
    if sec.bool("syslog", false)? {
        return Ok((
            Target::Syslog {
                ident: sec.raw("syslog_ident")?.unwrap_or_default(),
                facility: sec.string_or("syslog_facility", "daemon")?,
                socket: sec.path("syslog_socket")?,
            },
            level,
        ));
    }
    let file = sec.raw("log_file")?.unwrap_or_else(|| default_file.into());
    Ok((Target::from_arg(&file), level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/synnefo/gtools.conf")).unwrap()
    }

    #[test]
    fn defaults_and_original_key_names() {
        let g = Gtools::from_config(&cfg(""), &Overrides::default()).unwrap();
        assert_eq!(g.amqp_urls, vec![DEFAULT_AMQP.to_string()]);
        assert_eq!(g.exchange, "ganeti");
        assert_eq!(g.backend_prefix, "snf-");
        assert_eq!(g.spool_max_bytes, 1 << 30);
        let g = Gtools::from_config(
            &cfg("[gtools]\nAMQP_HOSTS = amqp://a:5672/, amqp://b:5672/\nEXCHANGE_GANETI = gnt\n"),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(g.amqp_urls, vec!["amqp://a:5672/", "amqp://b:5672/"]);
        assert_eq!(g.exchange, "gnt");
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            amqp: vec!["amqp://c/".into()],
            exchange: Some("x".into()),
            spool_dir: Some("/tmp/s".into()),
            ..Overrides::default()
        };
        let g = Gtools::from_config(&cfg("[gtools]\namqp_hosts = amqp://a/\n"), &o).unwrap();
        assert_eq!(g.amqp_urls, vec!["amqp://c/"]);
        assert_eq!(g.exchange, "x");
        assert_eq!(g.spool_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let e = Gtools::from_config(
            &cfg("[gtools]\namqp_hosts = http://x/\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "/etc/synnefo/gtools.conf: [gtools] amqp_hosts: bad AMQP URL http://x/: must start with amqp:// or amqps://");
        let e = Gtools::from_config(
            &cfg("[gtools]\nspool_max_bytes = lots\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[gtools] spool_max_bytes = \"lots\""), "{e}");
        let e = Gtools::from_config(
            &cfg("[gtools]\nspool_max_bytes = 100\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("must be at least 16384"), "{e}");
        let e = Gtools::from_config(&cfg("[gtools]\nexchange = x\n"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/synnefo/gtools.conf: [gtools] exchange: unknown key"
        );
        let e = Gtools::from_config(
            &cfg("[gtools]\namqp_confirm_timeout = -1\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("amqp_confirm_timeout"), "{e}");
    }

    #[test]
    fn tls_is_loaded_for_amqps_and_checked_at_load() {
        let g = Gtools::from_config(&cfg(""), &Overrides::default()).unwrap();
        assert!(g.tls.is_none(), "plain amqp:// needs no TLS");
        let g = Gtools::from_config(
            &cfg("[gtools]\namqp_hosts = amqps://h/%%2f\namqp_tls_verify = no\n"),
            &Overrides::default(),
        )
        .unwrap();
        assert!(g.broker_config().tls.is_some());
        assert!(g.tls_warning().unwrap().contains("amqp_tls_verify = no"));
        let e = Gtools::from_config(
            &cfg("[gtools]\namqp_hosts = amqps://h/\namqp_tls_ca_file = /nonexistent.pem\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/synnefo/gtools.conf: [gtools] amqp_tls_*: /nonexistent.pem: "),
            "{e}"
        );
        let e = Gtools::from_config(
            &cfg("[gtools]\namqp_tls_verify = maybe\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("amqp_tls_verify"), "{e}");
    }

    #[test]
    fn log_settings_from_section_and_flags() {
        let c = cfg("[eventd]\nsyslog = yes\nsyslog_facility = local2\n");
        let (t, l) = log_settings(&c, "eventd", None, false, "/var/log/x.log").unwrap();
        assert!(matches!(t, Target::Syslog { ref facility, .. } if facility == "local2"));
        assert_eq!(l, log::LevelFilter::Info);
        let (t, l) = log_settings(&c, "eventd", Some("-"), true, "/var/log/x.log").unwrap();
        assert_eq!(t, Target::Stderr);
        assert_eq!(l, log::LevelFilter::Debug);
        let (t, _) = log_settings(&cfg(""), "eventd", None, false, "/var/log/x.log").unwrap();
        assert_eq!(t, Target::File("/var/log/x.log".into()));
    }
}
