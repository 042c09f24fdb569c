//! ele-tools: every PostgreSQL cluster on the host, found wherever it shows itself
//! ([`discover`]), reported to the ElepHaaS admin database ([`report`], through
//! [`checkin`]) and controlled with pg_ctlcluster or pg_ctl ([`ctl`]).

pub mod checkin;
pub mod ctl;
pub mod discover;
pub mod report;

/// Both programs read it: ele_report for all of it, ele_ctl for `[Discovery]`.
pub const DEFAULT_CONFIG: &str = "/etc/ele_tools/report.ini";

/// This host's name, as the upstream knows its servers.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
