//! ele-tools: every PostgreSQL cluster on the host, found wherever it shows itself
//! ([`discover`]), reported to the ElepHaaS admin database ([`report`], through
//! [`checkin`]) and controlled with pg_ctlcluster or pg_ctl ([`ctl`]).

pub mod checkin;
pub mod ctl;
pub mod discover;
pub mod report;
