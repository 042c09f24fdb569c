//! Values for PostgreSQL's configuration: as a quoted string in postgresql.conf /
//! postgresql.auto.conf, and as the literal of `ALTER SYSTEM SET`.
//!
//! The configuration lexer reads `'...'` with `''` or `\'` for a quote and `\\` for a
//! backslash; a raw newline cannot be inside one. A `\n` escape would be read back, but
//! the server refuses newlines in ALTER SYSTEM values ("must not contain a newline")
//! because its own rewrite of postgresql.auto.conf would break on them, so one rule
//! for both: a newline (or NUL, which ends a C string) is refused here, naming why.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    // The value is not repeated: it may be a conninfo with a password.
    #[error("contains a newline, which a PostgreSQL configuration value cannot hold")]
    Newline,
    #[error("contains a NUL character, which a PostgreSQL configuration value cannot hold")]
    Nul,
}

fn check(value: &str) -> Result<(), QuoteError> {
    if value.contains('\n') {
        return Err(QuoteError::Newline);
    }
    if value.contains('\0') {
        return Err(QuoteError::Nul);
    }
    Ok(())
}

fn escaped(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

/// `value` as a single-quoted postgresql.conf string.
pub fn conf_value(value: &str) -> Result<String, QuoteError> {
    check(value)?;
    Ok(format!("'{}'", escaped(value)))
}

/// `value` as the literal of `ALTER SYSTEM SET name = ...`: an `E''` string, which
/// reads the same whatever standard_conforming_strings is.
pub fn alter_system_value(value: &str) -> Result<String, QuoteError> {
    check(value)?;
    Ok(format!("E'{}'", escaped(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(conf_value("a 'b' c\\d").unwrap(), "'a ''b'' c\\\\d'");
        assert_eq!(conf_value("").unwrap(), "''");
        assert_eq!(conf_value("cp %p /x\t#").unwrap(), "'cp %p /x\t#'");
        assert_eq!(
            alter_system_value("/usr/bin/walmgr '/etc/w.ini' xarchive %p %f").unwrap(),
            "E'/usr/bin/walmgr ''/etc/w.ini'' xarchive %p %f'"
        );
        assert_eq!(alter_system_value("a\\b").unwrap(), "E'a\\\\b'");
    }

    #[test]
    fn newlines_and_nul_are_refused() {
        assert_eq!(conf_value("a\nb"), Err(QuoteError::Newline));
        assert!(alter_system_value("a\nb").is_err());
        assert_eq!(conf_value("a\0b"), Err(QuoteError::Nul));
        assert!(alter_system_value("a\0").is_err());
        assert!(conf_value("a\nb")
            .unwrap_err()
            .to_string()
            .contains("newline"));
    }
}
