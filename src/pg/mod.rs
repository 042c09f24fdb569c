//! PostgreSQL access every hostkit program shares: conninfo with libpq's rules
//! ([`conninfo`], [`pgpass`]), sessions, one error type that never prints a password,
//! value quoting for the server's configuration, cluster discovery.

pub mod cluster;
pub mod conf;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod pgpass;
pub mod quote;
pub mod session;
pub mod simple;

pub use error::{one_line, redact, PgError};
pub use session::{block_on, connect, connect_with};
