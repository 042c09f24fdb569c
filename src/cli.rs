//! What every hostkit binary does at its edge: one line on stderr for an error, and an
//! exit code that tells success from failure.

use std::process::ExitCode;

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
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause its parent's message already
/// spells out (our error types print their source, as the operator needs it either way).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::from(crate::fsutil::PathError::new("read", "/x", io));
        assert_eq!(one_line(&e), "read /x: entity not found");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
