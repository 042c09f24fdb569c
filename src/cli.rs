//! What every hostkit binary does at its edge: one line on stderr for an error, and an
//! exit code that tells success from failure.

use std::process::ExitCode;

/// Print `program: error: cause: cause` on one line (and log it) and map to an exit code.
pub fn finish(program: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            log::error!("{line}");
            eprintln!("{program}: {line}");
            ExitCode::FAILURE
        }
    }
}
