//! The per-database task of pgqd: the async shell that drives the [`state`] machines.
//!
//! One task per database runs the ticker on its own long-lived connection, performing
//! the one query each [`DbState`] asks for and handing the outcome to
//! [`state::next`]. Once the ticker has seen pgq ≥ 3 the task starts the retry and
//! maintenance workers, each connecting for a round and disconnecting after it, as the
//! C daemon does; when pgq turns out to be gone it stops them again, so a database
//! without pgq costs one connection per check_period. A state change is logged once,
//! not on every retry, so a dead database is visible without flooding the log.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::config::PgqdConfig;
use super::state::{self, DbState, Helpers, Note, Outcome, Periods, Role, Round};
use crate::pg::one_line;

/// Advisory lock key held by the ticker's session: one ticker per database, across
/// hosts. ("pgqd" in ASCII, then 1.)
pub const TICKER_LOCK: i64 = 0x7067_7164_0000_0001;

/// Counters logged as `{ticks: N, maint: N, retry: N}` and reset every stats_period:
/// ticks made, maintenance rounds completed, retry events moved back into queues.
#[derive(Debug, Default)]
pub struct Stats {
    pub ticks: AtomicU64,
    pub maint: AtomicU64,
    pub retry: AtomicU64,
}

/// One database's entry in the status file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DbStatus {
    /// The ticker's state.
    pub state: DbState,
    /// Unix time of the last successful `pgq.ticker()`.
    pub last_tick: Option<u64>,
    /// The last error of any of the database's workers, `"<worker>: <message>"`; kept
    /// after recovery, with its time, so a flapping database can be seen.
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub ticks: u64,
}

pub type StatusMap = Arc<Mutex<std::collections::BTreeMap<String, DbStatus>>>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What a database task shares with the supervisor. The configuration comes through
/// a watch channel so a reload reaches tasks that keep running.
#[derive(Clone)]
pub struct Shared {
    pub cfg: watch::Receiver<Arc<PgqdConfig>>,
    pub stats: Arc<Stats>,
    pub status: StatusMap,
}

impl Shared {
    pub fn cfg(&self) -> Arc<PgqdConfig> {
        self.cfg.borrow().clone()
    }

    fn update_status(&self, db: &str, f: impl FnOnce(&mut DbStatus)) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        // Called on every tick: allocate the key only for a new database.
        match st.get_mut(db) {
            Some(s) => f(s),
            None => f(st.entry(db.to_string()).or_default()),
        }
    }
}

/// The one way pgqd opens a session (the discovery connection included).
/// libpq's defaults fill in what base_connstr leaves out (the local socket, the OS
/// user, PGHOST..., ~/.pgpass), as for the C pgqd.
pub async fn connect(cfg: &PgqdConfig, db: &str) -> Result<Client, crate::pg::PgError> {
    crate::pg::connect(&cfg.connstr(db)).await
}

/// Logs a worker's notes once per change and records its errors in the status.
struct Reporter {
    db: String,
    role: &'static str,
    last: Option<String>,
    shared: Shared,
}

impl Reporter {
    fn new(shared: &Shared, db: &str, role: &'static str) -> Reporter {
        Reporter {
            db: db.to_string(),
            role,
            last: None,
            shared: shared.clone(),
        }
    }

    fn note(&mut self, note: Option<Note>) {
        let Some(Note { text, error }) = note else {
            return;
        };
        if self.last.as_deref() != Some(&text) {
            if error {
                log::warn!("{}: {}: {text}", self.db, self.role);
            } else {
                log::info!("{}: {}: {text}", self.db, self.role);
            }
        }
        if error {
            let msg = format!("{}: {text}", self.role);
            self.shared.update_status(&self.db, |s| {
                s.last_error = Some(msg);
                s.last_error_at = Some(unix_now());
            });
        }
        self.last = Some(text);
    }

    /// After a good round the next failure is news again.
    fn clear(&mut self) {
        self.last = None;
    }
}

/// Sleep, or return true early if asked to stop.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    or_stop(stop, tokio::time::sleep(d)).await.is_none()
}

/// Run `work` unless asked to stop first (`None`): a connect to a dead host must not
/// hold up an unregistered database.
async fn or_stop<F: Future>(stop: &mut watch::Receiver<bool>, work: F) -> Option<F::Output> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        out = work => if *stop.borrow() { None } else { Some(out) },
        _ = stop.changed() => None,
    }
}

/// The I/O of one ticker state.
async fn ticker_io(
    state: DbState,
    client: &mut Option<Client>,
    opened: &mut Instant,
    cfg: &PgqdConfig,
    db: &str,
) -> Outcome {
    let failed = |e: tokio_postgres::Error| Outcome::QueryFailed(one_line(&e));
    let c = match (state, client.as_ref()) {
        (DbState::Closed, _) => {
            return match connect(cfg, db).await {
                Ok(c) => {
                    *client = Some(c);
                    *opened = Instant::now();
                    Outcome::Connected
                }
                Err(e) => Outcome::ConnectFailed(e.detail()),
            };
        }
        (_, Some(c)) => c,
        (_, None) => return Outcome::QueryFailed("not connected".into()),
    };
    // Every query here goes over the simple protocol: one round trip, where the
    // extended protocol's query_one would first prepare (a second round trip) and the
    // rows would be decoded into typed values nobody needs (callgrind: the ticker's
    // client side was half of pgqd's instructions).
    match state {
        DbState::Closed => unreachable!("handled above"),
        DbState::CheckPgq => first_value(
            c,
            "select 1 from pg_catalog.pg_namespace where nspname = 'pgq'",
        )
        .await
        .map_or_else(failed, |v| Outcome::HasPgq(v.is_some())),
        DbState::CheckVersion => first_value(c, "select pgq.version()")
            .await
            .map_or_else(failed, |v| Outcome::Version(v.unwrap_or_default())),
        DbState::TakeLock => first_value(c, &format!("select pg_try_advisory_lock({TICKER_LOCK})"))
            .await
            .map_or_else(failed, |v| Outcome::Locked(v.as_deref() == Some("t"))),
        // The result (how many queues ticked) is not needed: batch_execute skips
        // building rows for it.
        DbState::Ticking => {
            c.batch_execute("select pgq.ticker()")
                .await
                .map_or_else(failed, |()| Outcome::Ticked {
                    lifetime_over: opened.elapsed() >= cfg.connection_lifetime,
                })
        }
    }
}

/// The first column of the first row of `sql` as text (None: no row, or NULL), over
/// the simple protocol.
async fn first_value(c: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    for m in c.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).map(str::to_string));
        }
    }
    Ok(None)
}

/// Retry and maintenance of one database, started once its ticker has seen pgq ≥ 3.
struct HelperTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl HelperTasks {
    fn start(shared: &Shared, db: &str) -> HelperTasks {
        let (stop, rx) = watch::channel(false);
        let tasks = [Role::Retry, Role::Maint]
            .into_iter()
            .map(|role| tokio::spawn(periodic(shared.clone(), db.to_string(), rx.clone(), role)))
            .collect();
        HelperTasks { stop, tasks }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// One database: the ticker, and retry and maintenance while pgq is there. Ends when
/// `stop` turns true, after its helpers have ended, taking its status entry along.
pub async fn database(shared: Shared, db: String, mut stop: watch::Receiver<bool>) {
    let mut rep = Reporter::new(&shared, &db, "ticker");
    let mut state = DbState::Closed;
    let mut client = None;
    let mut opened = Instant::now();
    let mut helpers: Option<HelperTasks> = None;
    let mut wait = Duration::ZERO;
    shared.update_status(&db, |s| s.state = state);
    loop {
        if pause(&mut stop, wait).await {
            break;
        }
        let cfg = shared.cfg();
        let io = ticker_io(state, &mut client, &mut opened, &cfg, &db);
        let Some(outcome) = or_stop(&mut stop, io).await else {
            break;
        };
        let periods = Periods {
            check: cfg.check_period,
            ticker: cfg.ticker_period,
        };
        let step = state::next(state, outcome, periods);
        log::trace!("{db}: ticker: {state} -> {} in {:?}", step.next, step.wait);
        if step.next == DbState::Closed {
            // Also releases the advisory lock.
            client = None;
        }
        match step.helpers {
            Helpers::Start if helpers.is_none() => helpers = Some(HelperTasks::start(&shared, &db)),
            Helpers::Stop => {
                if let Some(h) = helpers.take() {
                    h.stop().await;
                }
            }
            _ => {}
        }
        if step.ticked {
            shared.stats.ticks.fetch_add(1, Ordering::Relaxed);
        }
        rep.note(step.note);
        shared.update_status(&db, |s| {
            s.state = step.next;
            if step.ticked {
                s.last_tick = Some(unix_now());
                s.ticks += 1;
            }
        });
        state = step.next;
        wait = step.wait;
    }
    drop(client);
    if let Some(h) = helpers.take() {
        h.stop().await;
    }
    shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&db);
}

/// Retry or maintenance: connect, run one round, disconnect, wait (the waits are
/// [`state::after_round`]'s).
async fn periodic(shared: Shared, db: String, mut stop: watch::Receiver<bool>, role: Role) {
    let mut rep = Reporter::new(&shared, &db, role.name());
    loop {
        let cfg = shared.cfg();
        let work = async {
            let client = match connect(&cfg, &db).await {
                Ok(c) => c,
                Err(e) => return Round::ConnectFailed(e.detail()),
            };
            let done = match role {
                Role::Retry => retry_round(&client, &shared.stats).await,
                Role::Maint => maint_round(&client).await.map(|()| {
                    shared.stats.maint.fetch_add(1, Ordering::Relaxed);
                }),
            };
            done.map_or_else(|e| Round::Failed(one_line(&e)), |()| Round::Done)
        };
        let Some(round) = or_stop(&mut stop, work).await else {
            return;
        };
        let period = match role {
            Role::Retry => cfg.retry_period,
            Role::Maint => cfg.maint_period,
        };
        let ok = round == Round::Done;
        let (wait, note) = state::after_round(role, round, period);
        if ok {
            rep.clear();
        } else {
            rep.note(note);
        }
        if pause(&mut stop, wait).await {
            return;
        }
    }
}

/// Move due retry events back into their queues: `pgq.maint_retry_events()` moves at
/// most a few per call and returns how many, so call it until it returns 0. The
/// retry counter adds up the events moved, as the C daemon's does.
async fn retry_round(client: &Client, stats: &Stats) -> Result<(), tokio_postgres::Error> {
    loop {
        let moved: i64 = first_value(client, "select pgq.maint_retry_events()")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if moved <= 0 {
            return Ok(());
        }
        stats.retry.fetch_add(moved as u64, Ordering::Relaxed);
    }
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

/// One maintenance round: the operations pgq lists, or the legacy rotate/vacuum path.
async fn maint_round(client: &Client) -> Result<(), tokio_postgres::Error> {
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
    Ok(())
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
