//! One PostgreSQL session for walmgr's commands, with libpq's defaults for what a
//! Skytools conninfo (`dbname=template1`) leaves out: the local socket, the OS user,
//! and PGHOST/PGPORT/PGUSER from the environment.

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use super::error::{Result, WalmgrError};

pub fn config(conninfo: &str) -> Result<tokio_postgres::Config> {
    let err = |reason: String| WalmgrError::Pg {
        conninfo: conninfo.to_string(),
        reason,
    };
    let mut cfg = tokio_postgres::Config::from_str(conninfo)
        .map_err(|e| err(format!("bad conninfo: {e}")))?;
    if cfg.get_hosts().is_empty() {
        let host = std::env::var("PGHOST").unwrap_or_else(|_| "/var/run/postgresql".into());
        for h in host.split(',') {
            if h.starts_with('/') {
                cfg.host_path(h);
            } else {
                cfg.host(h);
            }
        }
    }
    if cfg.get_ports().is_empty() {
        if let Some(p) = std::env::var("PGPORT").ok().and_then(|p| p.parse().ok()) {
            cfg.port(p);
        }
    }
    if cfg.get_user().is_none() {
        let user = std::env::var("PGUSER").ok().or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        });
        if let Some(u) = user {
            cfg.user(u);
        }
    }
    Ok(cfg)
}

/// Connect; the connection task runs on the current (single-thread) runtime.
pub async fn connect(conninfo: &str) -> Result<Client> {
    let cfg = config(conninfo)?;
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| WalmgrError::Pg {
        conninfo: conninfo.to_string(),
        reason: crate::pg::one_line(&e),
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A PostgreSQL error as walmgr reports it.
pub fn error(conninfo: &str, e: &tokio_postgres::Error) -> WalmgrError {
    WalmgrError::Pg {
        conninfo: conninfo.to_string(),
        reason: crate::pg::one_line(e),
    }
}

/// Run `f` on a fresh current-thread runtime (walmgr's commands are one-shot).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
