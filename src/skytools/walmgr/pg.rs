//! walmgr's use of [`crate::pg`]: its sessions, with PostgreSQL failures reported as
//! `WalmgrError::Pg` (the conninfo with any password hidden, and the server's reason).

use tokio_postgres::Client;

use super::error::{Result, WalmgrError};
use crate::pg::cluster::ClusterError;
use crate::pg::PgError;

pub use crate::pg::block_on;

/// Connect with libpq's defaults (the local socket, the OS user, PGHOST..., .pgpass).
pub async fn connect(conninfo: &str) -> Result<Client> {
    crate::pg::connect(conninfo).await.map_err(from_pg)
}

fn from_pg(e: PgError) -> WalmgrError {
    WalmgrError::Pg {
        conninfo: e.target().to_string(),
        reason: e.detail(),
    }
}

/// A failed statement as walmgr reports it.
pub fn error(conninfo: &str, e: &tokio_postgres::Error) -> WalmgrError {
    WalmgrError::Pg {
        conninfo: crate::pg::redact(conninfo),
        reason: crate::pg::one_line(e),
    }
}

/// A data directory's PG_VERSION (or a configuration file) that cannot be read.
pub fn cluster_error(e: ClusterError) -> WalmgrError {
    match e {
        ClusterError::Io(e) => WalmgrError::Io(e),
        ClusterError::Corrupt { path, reason } => WalmgrError::Corrupt { path, reason },
        ClusterError::Syntax { path, line, reason } => WalmgrError::Corrupt {
            path,
            reason: format!("line {line}: {reason}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_conninfo_without_its_password() {
        let d = tempfile::tempdir().unwrap();
        // A socket directory with no server: the connect fails at once.
        let ci = format!(
            "host={} user=u password=hunter2 dbname=x",
            d.path().display()
        );
        let e = block_on(connect(&ci)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "PostgreSQL (host={} user=u password=*** dbname=x): error connecting to server",
                d.path().display()
            )),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = block_on(connect("port=x password='hunter2'"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "PostgreSQL (port=x password=***): bad conninfo: invalid connection string"
            ),
            "{e}"
        );
    }
}
