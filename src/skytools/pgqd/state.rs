//! The per-database state machines of pgqd, as pure functions: no I/O, no clock.
//!
//! The ticker walks the C daemon's diagram — [`DbState::Closed`] → `CheckPgq` →
//! `CheckVersion` → `TakeLock` (hostkit's one-ticker advisory lock) → `Ticking` — and
//! every outcome of a state's one query names the next state and how long to wait
//! before entering it. Retry and maintenance have a one-state life (connect, run a
//! round, disconnect, sleep) described by [`after_round`]. The async shell in
//! [`super::db`] performs the I/O a state asks for and feeds the outcome back here, so
//! the delays of the original (a failed query waits 10 s for the ticker, 20 s for
//! maintenance and retry; a failed connect 60 s for ticker and maintenance, 30 s for
//! retry) are checked by unit tests instead of by waiting for a server to fail.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A ticker query failed (or its connection broke): reconnect after this.
pub const TICKER_QUERY_FAILED: Duration = Duration::from_secs(10);
/// The note of a database without the pgq extension (not a fault: pgqd serves every
/// database it finds, with or without pgq).
pub const NO_PGQ: &str = "no pgq installed";
/// The ticker could not connect.
pub const TICKER_CONNECT_FAILED: Duration = Duration::from_secs(60);

/// The ticker's state, which is also the database's state in the status file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbState {
    /// No connection; the next step connects.
    #[default]
    Closed,
    /// Connected; asking whether schema pgq exists.
    CheckPgq,
    /// Asking `pgq.version()`.
    CheckVersion,
    /// Taking the advisory lock that keeps a database to one ticker.
    TakeLock,
    /// Calling `pgq.ticker()` every ticker_period.
    Ticking,
}

impl DbState {
    pub fn as_str(self) -> &'static str {
        match self {
            DbState::Closed => "closed",
            DbState::CheckPgq => "check_pgq",
            DbState::CheckVersion => "check_version",
            DbState::TakeLock => "take_lock",
            DbState::Ticking => "ticking",
        }
    }
}

impl fmt::Display for DbState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the I/O of a state came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    ConnectFailed(String),
    /// A query failed, or the connection broke under it.
    QueryFailed(String),
    /// Whether schema pgq exists.
    HasPgq(bool),
    /// What `pgq.version()` returned.
    Version(String),
    /// Whether the advisory lock was granted.
    Locked(bool),
    /// `pgq.ticker()` returned; `lifetime_over` when the connection has been open for
    /// connection_lifetime.
    Ticked {
        lifetime_over: bool,
    },
}

/// What the supervisor does with retry and maintenance on this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helpers {
    Keep,
    /// pgq ≥ 3 seen: start them (if not running).
    Start,
    /// pgq is gone from the database (or too old): stop them, so a database without
    /// pgq costs only the ticker's one connection per check_period.
    Stop,
}

/// A line worth logging: logged once per change, not on every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub error: bool,
}

impl Note {
    fn info(text: impl Into<String>) -> Option<Note> {
        Some(Note {
            text: text.into(),
            error: false,
        })
    }

    fn error(text: impl Into<String>) -> Option<Note> {
        Some(Note {
            text: text.into(),
            error: true,
        })
    }
}

/// One transition: enter `next` after sleeping `wait` (dropping the connection first
/// when `next` is `Closed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub next: DbState,
    pub wait: Duration,
    pub note: Option<Note>,
    pub helpers: Helpers,
    /// A tick succeeded (for the counters and the status file).
    pub ticked: bool,
}

/// The configured periods the ticker's transitions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub check: Duration,
    pub ticker: Duration,
}

/// The major version of a `pgq.version()` string; 0 when it has none.
fn major(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0)
}

fn step(next: DbState, wait: Duration, note: Option<Note>) -> Step {
    Step {
        next,
        wait,
        note,
        helpers: Helpers::Keep,
        ticked: false,
    }
}

/// The ticker's transition from `state` on `outcome`.
pub fn next(state: DbState, outcome: Outcome, p: Periods) -> Step {
    use DbState::*;
    match (state, outcome) {
        (Closed, Outcome::Connected) => step(CheckPgq, Duration::ZERO, None),
        (_, Outcome::ConnectFailed(e)) => step(
            Closed,
            TICKER_CONNECT_FAILED,
            Note::error(format!("connection failed: {e}")),
        ),
        (Ticking, Outcome::QueryFailed(e)) => step(
            Closed,
            TICKER_QUERY_FAILED,
            Note::error(format!("ticker failed: {e}")),
        ),
        (_, Outcome::QueryFailed(e)) => step(
            Closed,
            TICKER_QUERY_FAILED,
            Note::error(format!("query failed: {e}")),
        ),
        (CheckPgq, Outcome::HasPgq(true)) => step(CheckVersion, Duration::ZERO, None),
        (CheckPgq, Outcome::HasPgq(false)) => Step {
            helpers: Helpers::Stop,
            ..step(Closed, p.check, Note::error(NO_PGQ))
        },
        (CheckVersion, Outcome::Version(v)) if major(&v) >= 3 => Step {
            helpers: Helpers::Start,
            ..step(
                TakeLock,
                Duration::ZERO,
                Note::info(format!("pgq version ok: {v}")),
            )
        },
        (CheckVersion, Outcome::Version(v)) => Step {
            helpers: Helpers::Stop,
            ..step(
                Closed,
                p.check,
                Note::error(format!("bad pgq version {v}, ignoring")),
            )
        },
        (TakeLock, Outcome::Locked(true)) => step(Ticking, Duration::ZERO, None),
        (TakeLock, Outcome::Locked(false)) => step(
            Closed,
            p.check,
            Note::error("another ticker holds this database's lock; backing off"),
        ),
        (Ticking, Outcome::Ticked { lifetime_over }) => Step {
            ticked: true,
            ..step(if lifetime_over { Closed } else { Ticking }, p.ticker, None)
        },
        // The C daemon's "Weird state": start over after a failed query's delay.
        (state, outcome) => step(
            Closed,
            TICKER_QUERY_FAILED,
            Note::error(format!("unexpected {outcome:?} in state {state}")),
        ),
    }
}

/// Retry or maintenance: each connects for a round and disconnects after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Retry,
    Maint,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Retry => "retry",
            Role::Maint => "maint",
        }
    }

    /// The wait after a failed connect: 30 s for retry, 60 s for maintenance.
    pub fn connect_failed(self) -> Duration {
        match self {
            Role::Retry => Duration::from_secs(30),
            Role::Maint => Duration::from_secs(60),
        }
    }

    /// The wait after a failed round: 20 s for both.
    pub fn round_failed(self) -> Duration {
        Duration::from_secs(20)
    }
}

/// How a round of retry or maintenance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    ConnectFailed(String),
    Failed(String),
    Done,
}

/// The wait before the next round and what to log; `None` note after a good round
/// (which also resets the once-per-change logging).
pub fn after_round(role: Role, round: Round, period: Duration) -> (Duration, Option<Note>) {
    match round {
        Round::ConnectFailed(e) => (
            role.connect_failed(),
            Note::error(format!("connection failed: {e}")),
        ),
        Round::Failed(e) => (
            role.round_failed(),
            Note::error(format!("{} failed: {e}", role.name())),
        ),
        Round::Done => (period, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DbState::*;

    const P: Periods = Periods {
        check: Duration::from_secs(60),
        ticker: Duration::from_secs(1),
    };

    fn run(path: Vec<(DbState, Outcome)>) -> Vec<Step> {
        path.into_iter().map(|(s, o)| next(s, o, P)).collect()
    }

    #[test]
    fn a_database_with_pgq_reaches_ticking_and_starts_the_helpers_once() {
        let steps = run(vec![
            (Closed, Outcome::Connected),
            (CheckPgq, Outcome::HasPgq(true)),
            (CheckVersion, Outcome::Version("3.5.1".into())),
            (TakeLock, Outcome::Locked(true)),
            (
                Ticking,
                Outcome::Ticked {
                    lifetime_over: false,
                },
            ),
        ]);
        let states: Vec<_> = steps.iter().map(|s| s.next).collect();
        assert_eq!(
            states,
            vec![CheckPgq, CheckVersion, TakeLock, Ticking, Ticking]
        );
        let helpers: Vec<_> = steps.iter().map(|s| s.helpers).collect();
        assert_eq!(
            helpers,
            vec![
                Helpers::Keep,
                Helpers::Keep,
                Helpers::Start,
                Helpers::Keep,
                Helpers::Keep
            ]
        );
        assert_eq!(
            steps[2].note,
            Note::info("pgq version ok: 3.5.1"),
            "the line operators grep for"
        );
        // No waiting on the way up; ticker_period between ticks.
        assert!(steps[..4].iter().all(|s| s.wait.is_zero()));
        assert_eq!(steps[4].wait, P.ticker);
        assert!(steps[4].ticked && !steps[3].ticked);
    }

    #[test]
    fn no_pgq_or_old_pgq_closes_for_a_check_period_and_stops_the_helpers() {
        let s = next(CheckPgq, Outcome::HasPgq(false), P);
        assert_eq!(
            (s.next, s.wait, s.helpers),
            (Closed, P.check, Helpers::Stop)
        );
        assert_eq!(s.note, Note::error("no pgq installed"));
        let s = next(CheckVersion, Outcome::Version("2.1.8".into()), P);
        assert_eq!(
            (s.next, s.wait, s.helpers),
            (Closed, P.check, Helpers::Stop)
        );
        assert_eq!(s.note, Note::error("bad pgq version 2.1.8, ignoring"));
        let s = next(CheckVersion, Outcome::Version("garbage".into()), P);
        assert_eq!(s.next, Closed);
        let s = next(CheckVersion, Outcome::Version("10.0".into()), P);
        assert_eq!(
            s.next, TakeLock,
            "the major version is a number, not a digit"
        );
    }

    #[test]
    fn failures_name_their_next_state_and_the_originals_delays() {
        for state in [Closed, CheckPgq, CheckVersion, TakeLock, Ticking] {
            let s = next(state, Outcome::ConnectFailed("refused".into()), P);
            assert_eq!((s.next, s.wait), (Closed, Duration::from_secs(60)));
            assert_eq!(s.note, Note::error("connection failed: refused"));
            let s = next(state, Outcome::QueryFailed("boom".into()), P);
            assert_eq!((s.next, s.wait), (Closed, Duration::from_secs(10)));
            assert_eq!(
                s.helpers,
                Helpers::Keep,
                "a failed query is no proof pgq is gone"
            );
        }
        let s = next(Ticking, Outcome::QueryFailed("gone".into()), P);
        assert_eq!(s.note, Note::error("ticker failed: gone"));
        let s = next(TakeLock, Outcome::Locked(false), P);
        assert_eq!((s.next, s.wait), (Closed, P.check));
        assert!(s.note.unwrap().text.starts_with("another ticker holds"));
    }

    #[test]
    fn connection_lifetime_reconnects_through_the_checks() {
        let s = next(
            Ticking,
            Outcome::Ticked {
                lifetime_over: true,
            },
            P,
        );
        assert_eq!((s.next, s.wait, s.ticked), (Closed, P.ticker, true));
        assert_eq!(s.note, None, "a planned reconnect is not an error");
    }

    #[test]
    fn an_outcome_that_does_not_belong_to_the_state_starts_over() {
        let s = next(Closed, Outcome::HasPgq(true), P);
        assert_eq!((s.next, s.wait), (Closed, TICKER_QUERY_FAILED));
        assert!(s.note.unwrap().error);
        let s = next(Ticking, Outcome::Connected, P);
        assert_eq!(s.next, Closed);
    }

    #[test]
    fn retry_and_maint_waits() {
        let period = Duration::from_secs(30);
        assert_eq!(
            after_round(Role::Retry, Round::ConnectFailed("x".into()), period).0,
            Duration::from_secs(30)
        );
        assert_eq!(
            after_round(Role::Maint, Round::ConnectFailed("x".into()), period).0,
            Duration::from_secs(60)
        );
        for role in [Role::Retry, Role::Maint] {
            let (wait, note) = after_round(role, Round::Failed("e".into()), period);
            assert_eq!(wait, Duration::from_secs(20));
            assert_eq!(note.unwrap().text, format!("{} failed: e", role.name()));
            assert_eq!(after_round(role, Round::Done, period), (period, None));
        }
    }

    #[test]
    fn states_serialize_as_their_names() {
        for s in [Closed, CheckPgq, CheckVersion, TakeLock, Ticking] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
