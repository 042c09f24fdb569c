//! hostkit: the one internal crate every hostkit program shares.
//!
//! Programs live in `src/bin/`; each is a thin `main` over a module here.

pub mod amqp;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod eventd;
pub mod fsutil;
pub mod ganeti;
pub mod gtools;
pub mod hook;
pub mod logging;
pub mod pgqd;
pub mod progress;
pub mod scriptmgr;
pub mod walmgr;
