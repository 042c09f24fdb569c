//! What every hostkit binary does at its edge: one line on stderr for an error, and an
//! exit code that says which error it was.
//!
//! The contract (uucore's `UError::code()`, pgBackRest's numbered error table):
//! - an error type whose failures a script must tell apart implements [`ExitError`];
//!   its program's man page lists the codes under EXIT STATUS;
//! - [`coded`] turns such an error into an `anyhow::Error` that keeps its code, so
//!   context may be added on top; [`finish`] exits with the first code in the chain,
//!   1 when there is none (2 is clap's, for a bad command line);
//! - no error's Display repeats its `source()`: a type either prints a cause (a leaf
//!   detail such as the `io::Error` of `fsutil::PathError`) or returns it as its
//!   source, never both, so the line is the plain `": "`-join of the chain.

use std::fmt;
use std::process::ExitCode;

/// An error that knows the exit status it stands for.
pub trait ExitError: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> u8;
}

/// An [`ExitError`] inside an `anyhow::Error`: shows and chains exactly as the error it
/// holds, and lets [`finish`] find the code again.
struct Coded(Box<dyn ExitError>);

impl fmt::Debug for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Coded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Wrap `e` so its exit code survives conversion to `anyhow::Error`.
pub fn coded(e: impl ExitError) -> anyhow::Error {
    anyhow::Error::new(Coded(Box::new(e)))
}

/// The exit status for `e`: the code of the first [`ExitError`] in its chain, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<Coded>().map(|c| c.0.code()))
        .unwrap_or(1)
}

/// Print `program: error: cause: cause` on one line (and log it) and map to an exit code.
pub fn finish(program: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            let line = one_line(&e);
            if !crate::logging::logs_to_stderr() {
                log::error!("{line}");
            }
            eprintln!("{program}: {line}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("segment {0} is bad")]
    struct Bad(&'static str, #[source] std::io::Error);

    impl ExitError for Bad {
        fn code(&self) -> u8 {
            42
        }
    }

    #[test]
    fn the_line_is_the_chain_joined() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::from(crate::fsutil::PathError::new("read", "/x", io));
        assert_eq!(one_line(&e), "read /x: entity not found");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = coded(Bad("000000010000000000000001", io)).context("xrestore");
        assert_eq!(
            one_line(&e),
            "xrestore: segment 000000010000000000000001 is bad: entity not found"
        );
    }

    #[test]
    fn the_code_comes_from_the_chain() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = coded(Bad("x", io));
        assert_eq!(exit_code(&e), 42);
        let e = e.context("with context on top");
        assert_eq!(exit_code(&e), 42);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), 1);
    }
}
