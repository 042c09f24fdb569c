//! The per-database task of pgqd: the async shell that drives the [`state`] machines.
//!
//! One task per database runs the ticker on its own long-lived session, performing
//! the one query each [`DbState`] asks for and handing the outcome to
//! [`state::next`]. Once the ticker has seen pgq ≥ 3 it also runs the retry rounds, on
//! that same session between ticks (the C daemon opens a session per round), and
//! starts the maintenance worker, which connects for a round and disconnects after it
//! as the C daemon does, so a long vacuum never holds a tick up. When pgq turns out to
//! be gone both stop, so a database without pgq costs one connection per
//! check_period. A state change is logged once, not on every retry, so a dead
//! database is visible without flooding the log.
//!
//! Sessions are [`crate::pg::simple`]'s: the statement written and the reply read in
//! this task, with one timer per task re-armed after each step and no stop channel to
//! watch (the supervisor aborts the task), which is what brought pgqd's instructions
//! per tick under the C daemon's (BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::PgqdConfig;
use super::state::{self, DbState, Helpers, Note, Outcome, Periods, Role, Round};
use crate::pg::conninfo::Env;
use crate::pg::simple::{self, Session, SessionError};

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

/// One database's status, shared by its task (which updates it on every step without
/// looking the database up) and the map the status file is written from.
#[derive(Debug, Clone, Default)]
pub struct StatusCell(Arc<Mutex<DbStatus>>);

impl StatusCell {
    pub fn update(&self, f: impl FnOnce(&mut DbStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn get(&self) -> DbStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub type StatusMap = Arc<Mutex<std::collections::BTreeMap<String, StatusCell>>>;

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
    /// PG* variables and the OS user, for every connect.
    pub env: Arc<Env>,
    pub stats: Arc<Stats>,
    pub status: StatusMap,
}

impl Shared {
    pub fn cfg(&self) -> Arc<PgqdConfig> {
        self.cfg.borrow().clone()
    }
}

/// The one way pgqd opens a session (the discovery connection included): the lean
/// simple-protocol session of [`crate::pg::simple`]. libpq's defaults fill in what
/// base_connstr leaves out (the local socket, the OS user, PGHOST..., ~/.pgpass), as
/// for the C pgqd; the environment is read once, at start.
pub async fn connect(cfg: &PgqdConfig, env: &Env, db: &str) -> Result<Session, SessionError> {
    // Boxed: the connect future (authentication included) is far bigger than a
    // ticking task needs to be between ticks.
    Box::pin(simple::connect_with(&cfg.connstr(db), env)).await
}

/// Logs a worker's notes once per change and records its errors in the status.
struct Reporter {
    db: String,
    role: &'static str,
    last: Option<String>,
    status: StatusCell,
}

impl Reporter {
    fn new(status: &StatusCell, db: &str, role: &'static str) -> Reporter {
        Reporter {
            db: db.to_string(),
            role,
            last: None,
            status: status.clone(),
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
            self.status.update(|s| {
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

/// A task that ends when its handle is dropped: a database's maintenance worker goes
/// with the database's task, whichever way that ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn failed(e: SessionError) -> Outcome {
    Outcome::QueryFailed(e.to_string())
}

/// The I/O of one ticker state. Every query goes over the simple protocol: one round
/// trip, as libpq's `PQsendQuery` in the C daemon.
async fn ticker_io(
    state: DbState,
    session: &mut Option<Session>,
    opened: &mut Instant,
    cfg: &PgqdConfig,
    env: &Env,
    db: &str,
) -> Outcome {
    let c = match (state, session.as_mut()) {
        (DbState::Closed, _) => {
            return match connect(cfg, env, db).await {
                Ok(c) => {
                    *session = Some(c);
                    *opened = Instant::now();
                    Outcome::Connected
                }
                Err(e) => Outcome::ConnectFailed(e.to_string()),
            };
        }
        (_, Some(c)) => c,
        (_, None) => return Outcome::QueryFailed("not connected".into()),
    };
    match state {
        DbState::Closed => unreachable!("handled above"),
        DbState::CheckPgq => c
            .first_value("select 1 from pg_catalog.pg_namespace where nspname = 'pgq'")
            .await
            .map_or_else(failed, |v| Outcome::HasPgq(v.is_some())),
        DbState::CheckVersion => c
            .first_value("select pgq.version()")
            .await
            .map_or_else(failed, |v| Outcome::Version(v.unwrap_or_default())),
        DbState::TakeLock => c
            .first_value(&format!("select pg_try_advisory_lock({TICKER_LOCK})"))
            .await
            .map_or_else(failed, |v| Outcome::Locked(v.as_deref() == Some("t"))),
        // The result (how many queues ticked) is not needed.
        DbState::Ticking => c
            .execute("select pgq.ticker()")
            .await
            .map_or_else(failed, |()| Outcome::Ticked {
                lifetime_over: false,
            }),
    }
}

/// One database: the ticker on its long-lived session, retry rounds on that same
/// session between ticks, and the maintenance worker (its own session per round, so a
/// long vacuum never holds a tick up) while pgq is there. Runs until its task is
/// aborted; dropping it closes the session (releasing the ticker lock) and ends the
/// maintenance worker. The supervisor drops its status entry.
pub async fn database(shared: Shared, db: String, status: StatusCell) {
    let mut rep = Reporter::new(&status, &db, "ticker");
    let mut retry_rep = Reporter::new(&status, &db, Role::Retry.name());
    let mut state = DbState::Closed;
    let mut session: Option<Session> = None;
    let mut opened = Instant::now();
    let mut maint: Option<AbortOnDrop> = None;
    // Retry is due once pgq has been seen, then every retry_period.
    let mut retry_due: Option<Instant> = None;
    // One timer for the life of the task, re-armed after each step.
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    status.update(|s| s.state = state);
    loop {
        sleep.as_mut().await;
        let cfg = shared.cfg();
        let mut outcome = ticker_io(state, &mut session, &mut opened, &cfg, &shared.env, &db).await;
        // One clock read per step serves the lifetime, the retry and the timer.
        let mut now = Instant::now();
        if let Outcome::Ticked { lifetime_over } = &mut outcome {
            *lifetime_over = now.duration_since(opened) >= cfg.connection_lifetime;
        }
        let periods = Periods {
            check: cfg.check_period,
            ticker: cfg.ticker_period,
        };
        let mut step = state::next(state, outcome, periods);
        log::trace!("{db}: ticker: {state} -> {} in {:?}", step.next, step.wait);
        match step.helpers {
            Helpers::Start if maint.is_none() => {
                maint = Some(AbortOnDrop(tokio::spawn(maint_worker(
                    shared.clone(),
                    db.clone(),
                    status.clone(),
                ))));
                retry_due = Some(now);
            }
            Helpers::Stop => {
                maint = None;
                retry_due = None;
            }
            _ => {}
        }
        if step.ticked {
            shared.stats.ticks.fetch_add(1, Ordering::Relaxed);
        }
        rep.note(step.note.take());
        // Between ticks, on the ticker's session: the C daemon opens a session per
        // retry round, which at 500 databases was most of the connects made.
        if step.next == DbState::Ticking && retry_due.is_some_and(|t| t <= now) {
            let round = match retry_round(session.as_mut().expect("ticking"), &shared.stats).await {
                Ok(()) => Round::Done,
                Err(e) => {
                    if e.is_fatal() {
                        // The session is gone: start over as after a failed tick.
                        step.next = DbState::Closed;
                        step.wait = state::TICKER_QUERY_FAILED;
                    }
                    Round::Failed(e.to_string())
                }
            };
            let ok = round == Round::Done;
            let (wait, note) = state::after_round(Role::Retry, round, cfg.retry_period);
            if ok {
                retry_rep.clear();
            } else {
                retry_rep.note(note);
            }
            now = Instant::now();
            retry_due = Some(now + wait);
        }
        if step.next == DbState::Closed {
            // Also releases the advisory lock.
            session = None;
        }
        status.update(|s| {
            s.state = step.next;
            if step.ticked {
                s.last_tick = Some(unix_now());
                s.ticks += 1;
            }
        });
        state = step.next;
        sleep.as_mut().reset(now + step.wait);
    }
}

/// Maintenance: connect, run one round, disconnect, wait (the waits are
/// [`state::after_round`]'s). Ends when its task is aborted.
async fn maint_worker(shared: Shared, db: String, status: StatusCell) {
    let role = Role::Maint;
    let mut rep = Reporter::new(&status, &db, role.name());
    loop {
        let cfg = shared.cfg();
        let round = match connect(&cfg, &shared.env, &db).await {
            Err(e) => Round::ConnectFailed(e.to_string()),
            Ok(mut session) => match maint_round(&mut session).await {
                Ok(()) => {
                    shared.stats.maint.fetch_add(1, Ordering::Relaxed);
                    Round::Done
                }
                Err(e) => Round::Failed(e.to_string()),
            },
        };
        let ok = round == Round::Done;
        let (wait, note) = state::after_round(role, round, cfg.maint_period);
        if ok {
            rep.clear();
        } else {
            rep.note(note);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Move due retry events back into their queues: `pgq.maint_retry_events()` moves at
/// most a few per call and returns how many, so call it until it returns 0. The
/// retry counter adds up the events moved, as the C daemon's does.
async fn retry_round(session: &mut Session, stats: &Stats) -> Result<(), SessionError> {
    loop {
        let moved: i64 = session
            .first_value("select pgq.maint_retry_events()")
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
async fn maint_round(c: &mut Session) -> Result<(), SessionError> {
    let has_ops = c
        .first_value(
            "select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace \
             where n.nspname = 'pgq' and p.proname = 'maint_operations'",
        )
        .await?
        .is_some();
    if has_ops {
        let ops = c
            .rows("select func_name, func_arg from pgq.maint_operations()", 2)
            .await?;
        for op in ops {
            let mut op = op.into_iter();
            let func = op.next().flatten().unwrap_or_default();
            let arg = op.next().flatten();
            let lower = func.to_lowercase();
            if lower == "vacuum" || lower == "vacuum analyze" {
                if let Some(table) = arg {
                    c.execute(&format!("{lower} {}", quote_ident(&table)))
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
            let sql = match &arg {
                Some(a) => format!("select ({func}({}))::text", simple::literal(a)),
                None => format!("select ({func}())::text"),
            };
            loop {
                let v = c.first_value(&sql).await?;
                match v.and_then(|v| v.parse::<i64>().ok()) {
                    Some(n) if n != 0 => continue,
                    _ => break,
                }
            }
        }
    } else {
        // pgq < 3.1: rotate each queue, then vacuum what pgq says needs it.
        c.execute("select pgq.maint_rotate_tables_step1(queue_name) from pgq.queue")
            .await?;
        c.execute("select pgq.maint_rotate_tables_step2()").await?;
        let tables = c
            .rows("select * from pgq.maint_tables_to_vacuum()", 1)
            .await?;
        for t in tables {
            if let Some(name) = t.into_iter().next().flatten() {
                c.execute(&format!("vacuum {}", quote_ident(&name))).await?;
            }
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
