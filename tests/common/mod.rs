//! Shared harness for the integration tests, one module per service:
//!
//! - `amqp`: RabbitMQ consumers, a cuttable proxy, Ganeti job files and the eventd sandbox
//!   (re-exported here: the eventd, hook and progress tests use it unqualified);
//! - `pg`: private initdb'd PostgreSQL clusters and commands run as `postgres`, with the
//!   binaries they run copied where `postgres` can read them;
//! - `rabbitmq`: a private RabbitMQ node with a TLS listener and test-made certificates;
//! - `cmd`: run a binary, assert its exit code and its one-line error;
//! - `sshd`: a real sshd on a private port, logged into by `postgres` with a test key;
//! - `s3`: moto's S3 server on loopback (authentication on) and a proxy that injects faults.
//!
//! Each test binary compiles all of it (`mod common;`) and uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod amqp;
pub mod cmd;
pub mod pg;
pub mod rabbitmq;
pub mod s3;
pub mod sshd;

// Not every test binary uses it.
#[allow(unused_imports)]
pub use amqp::*;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
