//! Opening a session: libpq's defaults applied, the connection driven by a task on
//! the current runtime, failures as a [`PgError`] that names the target safely.

use tokio_postgres::{Client, NoTls};

use super::conninfo::{self, Env};
use super::error::PgError;

/// Connect with this process's environment (PGHOST, ~/.pgpass, ...).
pub async fn connect(conninfo: &str) -> Result<Client, PgError> {
    connect_with(conninfo, &Env::process()).await
}

/// Connect with the defaults taken from `env`. The connection task is spawned on the
/// current runtime and ends when the client is dropped.
///
/// A password file that had to be ignored (others may read it) is part of the error
/// when the connection fails, so one line says both what failed and why no password
/// was sent; when the connection needed no password it is only logged at debug level
/// (the local clusters ele_report asks trust their socket, and a cron job says nothing
/// on success).
pub async fn connect_with(conninfo: &str, env: &Env) -> Result<Client, PgError> {
    let (cfg, note) = conninfo::resolve_noting(conninfo, env)?;
    let (client, conn) = match cfg.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => return Err(PgError::connect(conninfo, e).with_note(note)),
    };
    if let Some(n) = note {
        log::debug!("{n}");
    }
    let target = super::redact(conninfo);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("{target}: connection ended: {}", super::one_line(&e));
        }
    });
    Ok(client)
}

/// Run `f` on a fresh current-thread runtime (for one-shot programs such as walmgr).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
