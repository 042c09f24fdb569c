//! The three per-database concerns of pgqd, each on its own connection: the ticker
//! (`pgq.ticker()` every ticker_period), retry (`pgq.maint_retry_events()` until 0) and
//! maintenance (`pgq.maint_operations()`, or the legacy rotate/vacuum path).
//!
//! Each is a loop through the states of the C daemon — connect, check the pgq schema,
//! check its version, run — where every error names its next state and delay (the
//! original's: a failed query waits 10 s (ticker) or 20 s (maint, retry), a failed
//! connect 60 s (ticker, maint) or 30 s (retry)). A state change is logged once, not on
//! every retry, so a dead database is visible without flooding the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::config::PgqdConfig;
use crate::pg::one_line;

/// Advisory lock key held by the ticker's session: one ticker per database, across
/// hosts. ("pgqd" in ASCII, then 1.)
pub const TICKER_LOCK: i64 = 0x7067_7164_0000_0001;

/// Counters logged as `{ticks: N, maint: N, retry: N}` and reset every stats_period.
#[derive(Debug, Default)]
pub struct Stats {
    pub ticks: AtomicU64,
    pub maint: AtomicU64,
    pub retry: AtomicU64,
}

/// One database's state, as written to the status file.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DbStatus {
    pub state: String,
    /// Unix time of the last successful `pgq.ticker()`.
    pub last_tick: Option<u64>,
    pub last_error: Option<String>,
    pub ticks: u64,
}

pub type StatusMap = Arc<Mutex<std::collections::BTreeMap<String, DbStatus>>>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What a worker shares with the supervisor.
#[derive(Clone)]
pub struct Shared {
    pub cfg: Arc<PgqdConfig>,
    pub stats: Arc<Stats>,
    pub status: StatusMap,
}

struct Reporter {
    db: String,
    role: &'static str,
    last: Option<String>,
    shared: Shared,
}

impl Reporter {
    /// Log `msg` if it differs from the last thing this worker reported.
    fn state(&mut self, msg: String, is_error: bool) {
        if self.last.as_deref() != Some(&msg) {
            if is_error {
                log::warn!("{}: {}: {msg}", self.db, self.role);
            } else {
                log::info!("{}: {}: {msg}", self.db, self.role);
            }
            self.last = Some(msg.clone());
        }
        if self.role == "ticker" {
            let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            let s = st.entry(self.db.clone()).or_default();
            s.state = msg.clone();
            if is_error {
                s.last_error = Some(msg);
            }
        }
    }
}

/// Sleep, or return true early if asked to stop.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Connected and pgq (>= 3) present, or why not and how long to wait.
async fn open(
    shared: &Shared,
    db: &str,
    connect_wait: Duration,
) -> Result<Client, (String, Duration)> {
    // libpq's defaults fill in what base_connstr leaves out (the local socket, the OS
    // user, PGHOST..., ~/.pgpass), as for the C pgqd.
    let client = crate::pg::connect(&shared.cfg.connstr(db))
        .await
        .map_err(|e| (format!("connection failed: {}", e.detail()), connect_wait))?;
    let has = client
        .query_opt(
            "select 1 from pg_catalog.pg_namespace where nspname = 'pgq'",
            &[],
        )
        .await
        .map_err(|e| (format!("query failed: {}", one_line(&e)), connect_wait))?;
    if has.is_none() {
        return Err(("no pgq installed".into(), shared.cfg.check_period));
    }
    let v: String = client
        .query_one("select pgq.version()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| {
            (
                format!("pgq.version() failed: {}", one_line(&e)),
                shared.cfg.check_period,
            )
        })?;
    let major: u32 = v
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 3 {
        return Err((
            format!("bad pgq version {v}, ignoring"),
            shared.cfg.check_period,
        ));
    }
    Ok(client)
}

/// The ticker: holds the advisory lock and calls `pgq.ticker()` every ticker_period.
pub async fn ticker(shared: Shared, db: String, mut stop: watch::Receiver<bool>) {
    let mut rep = Reporter {
        db: db.clone(),
        role: "ticker",
        last: None,
        shared: shared.clone(),
    };
    loop {
        let client = match open(&shared, &db, Duration::from_secs(60)).await {
            Ok(c) => c,
            Err((why, wait)) => {
                rep.state(why, true);
                if pause(&mut stop, wait).await {
                    return;
                }
                continue;
            }
        };
        match client
            .query_one("select pg_try_advisory_lock($1)", &[&TICKER_LOCK])
            .await
        {
            Ok(r) if r.get::<_, bool>(0) => {}
            Ok(_) => {
                rep.state(
                    "another ticker holds this database's lock; backing off".into(),
                    true,
                );
                if pause(&mut stop, shared.cfg.check_period).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                rep.state(format!("query failed: {}", one_line(&e)), true);
                if pause(&mut stop, Duration::from_secs(10)).await {
                    return;
                }
                continue;
            }
        }
        rep.state("pgq version ok".into(), false);
        let opened = Instant::now();
        loop {
            // The simple protocol: one round trip, no statement prepared on every tick.
            match client.simple_query("select pgq.ticker()").await {
                Ok(_) => {
                    shared.stats.ticks.fetch_add(1, Ordering::Relaxed);
                    let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                    let s = st.entry(db.clone()).or_default();
                    s.state = "ticking".into();
                    s.last_tick = Some(unix_now());
                    s.ticks += 1;
                }
                Err(e) => {
                    rep.state(format!("ticker failed: {}", one_line(&e)), true);
                    if pause(&mut stop, Duration::from_secs(10)).await {
                        return;
                    }
                    break;
                }
            }
            if opened.elapsed() >= shared.cfg.connection_lifetime {
                log::debug!("{db}: ticker: connection_lifetime reached, reconnecting");
                break;
            }
            if pause(&mut stop, shared.cfg.ticker_period).await {
                return;
            }
        }
    }
}

/// One round of a periodic worker, on its connection.
type Round = for<'a> fn(&'a Client, &'a Stats) -> BoxFuture<'a, Result<(), tokio_postgres::Error>>;

/// Retry and maintenance share one life, the C daemon's: connect (waiting
/// `connect_wait` on failure), run one round, disconnect, wait `period`; a failed
/// round waits 20 s. Only the ticker keeps its connection, so a server with many
/// databases carries one pgqd backend per database, not three.
async fn periodic(
    shared: Shared,
    db: String,
    mut stop: watch::Receiver<bool>,
    role: &'static str,
    connect_wait: Duration,
    period: fn(&PgqdConfig) -> Duration,
    round: Round,
) {
    let mut rep = Reporter {
        db: db.clone(),
        role,
        last: None,
        shared: shared.clone(),
    };
    loop {
        let wait = match open(&shared, &db, connect_wait).await {
            Err((why, wait)) => {
                rep.state(why, true);
                wait
            }
            Ok(client) => match round(&client, &shared.stats).await {
                Ok(()) => {
                    rep.last = None;
                    period(&shared.cfg)
                }
                Err(e) => {
                    rep.state(format!("{role} failed: {}", one_line(&e)), true);
                    Duration::from_secs(20)
                }
            },
        };
        if pause(&mut stop, wait).await {
            return;
        }
    }
}

/// Move due retry events back into their queues: `pgq.maint_retry_events()` moves at
/// most a few per call, so call it until it returns 0.
fn retry_round<'a>(
    client: &'a Client,
    stats: &'a Stats,
) -> BoxFuture<'a, Result<(), tokio_postgres::Error>> {
    Box::pin(async move {
        loop {
            let moved: i32 = client
                .query_one("select pgq.maint_retry_events()", &[])
                .await?
                .get(0);
            stats.retry.fetch_add(1, Ordering::Relaxed);
            if moved == 0 {
                return Ok(());
            }
        }
    })
}

/// Retry: every retry_period (a failed connect waits 30 s).
pub async fn retry(shared: Shared, db: String, stop: watch::Receiver<bool>) {
    periodic(
        shared,
        db,
        stop,
        "retry",
        Duration::from_secs(30),
        |c| c.retry_period,
        retry_round,
    )
    .await
}

/// `"name"` quoting for an identifier that may be schema-qualified (`a.b`).
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A function name as pgq.maint_operations() returns it: letters, digits, `_` and `.`.
fn safe_func(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn maint_round<'a>(
    client: &'a Client,
    stats: &'a Stats,
) -> BoxFuture<'a, Result<(), tokio_postgres::Error>> {
    Box::pin(maint_ops(client, stats))
}

async fn maint_ops(client: &Client, stats: &Stats) -> Result<(), tokio_postgres::Error> {
    let has_ops = client
        .query_opt(
            "select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace \
             where n.nspname = 'pgq' and p.proname = 'maint_operations'",
            &[],
        )
        .await?
        .is_some();
    if has_ops {
        let ops = client
            .query(
                "select func_name, func_arg from pgq.maint_operations()",
                &[],
            )
            .await?;
        for op in ops {
            let func: String = op.get(0);
            let arg: Option<String> = op.get(1);
            let lower = func.to_lowercase();
            if lower == "vacuum" || lower == "vacuum analyze" {
                if let Some(table) = arg {
                    client
                        .simple_query(&format!("{lower} {}", quote_ident(&table)))
                        .await?;
                }
                continue;
            }
            if !safe_func(&func) {
                log::warn!(
                    "maint_operations returned an unexpected function name {func:?}; skipped"
                );
                continue;
            }
            // An op is repeated while it returns a non-zero integer (more work to do).
            loop {
                let row = match &arg {
                    Some(a) => {
                        client
                            .query_one(&format!("select ({func}($1))::text"), &[a])
                            .await?
                    }
                    None => {
                        client
                            .query_one(&format!("select ({func}())::text"), &[])
                            .await?
                    }
                };
                let v: Option<String> = row.get(0);
                match v.and_then(|v| v.parse::<i64>().ok()) {
                    Some(n) if n != 0 => continue,
                    _ => break,
                }
            }
        }
    } else {
        // pgq < 3.1: rotate each queue, then vacuum what pgq says needs it.
        client
            .simple_query("select pgq.maint_rotate_tables_step1(queue_name) from pgq.queue")
            .await?;
        client
            .simple_query("select pgq.maint_rotate_tables_step2()")
            .await?;
        let tables = client
            .query("select * from pgq.maint_tables_to_vacuum()", &[])
            .await?;
        for t in tables {
            let name: String = t.get(0);
            client
                .simple_query(&format!("vacuum {}", quote_ident(&name)))
                .await?;
        }
    }
    stats.maint.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Maintenance: rotate queue tables, vacuum, every maint_period (a failed connect
/// waits 60 s).
pub async fn maint(shared: Shared, db: String, stop: watch::Receiver<bool>) {
    periodic(
        shared,
        db,
        stop,
        "maint",
        Duration::from_secs(60),
        |c| c.maint_period,
        maint_round,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_functions_checked() {
        assert_eq!(quote_ident("pgq.event_1_0"), "\"pgq\".\"event_1_0\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert!(safe_func("pgq.maint_rotate_tables_step1"));
        assert!(!safe_func("x(); drop table y; --"));
        assert!(!safe_func(""));
    }
}
