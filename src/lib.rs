//! hostkit: the one internal crate every hostkit program shares.
//!
//! Infrastructure first (cli, config, daemon, logging, fsutil, glob, proc, pg, amqp, ganeti),
//! then the programs grouped by the package family they ship in. A program uses the
//! infrastructure and its own family, never another program (`tests/layering.rs`).
//! `src/bin/<program>.rs` only calls into here.

pub mod amqp;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod fsutil;
pub mod ganeti;
pub mod glob;
pub mod logging;
pub mod monitor;
pub mod pg;
pub mod proc;
pub mod s3;

pub mod calink;
pub mod ele;
pub mod pacha;
pub mod skytools;
pub mod synnefo;
