//! PostgreSQL access every hostkit program shares: conninfo with libpq's rules, sessions,
//! one error type, value quoting for the server's configuration, cluster discovery.

pub mod lsn;

/// A PostgreSQL error on one line (the server's message, not the Rust debug form).
pub fn one_line(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string().replace('\n', " "),
    }
}
