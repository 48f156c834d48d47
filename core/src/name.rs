//! Logical names of destinations and groups, validated once for every backend.

use crate::error::{Error, Result};

/// The longest logical name accepted, in bytes.
///
/// `binder-macros/src/args.rs` checks names at compile time with the same rules (it cannot
/// depend on this crate): change both together.
///
/// Backends add a prefix and suffixes to build physical names; this bound keeps every
/// backend's physical names within its broker's limits (SQS, the tightest, stops at 80).
pub const MAX_NAME_LEN: usize = 48;

/// Checks a logical destination name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-` and `_`.
///
/// ```
/// use event_binder_core::{validate_destination, Error};
///
/// assert!(validate_destination("orders").is_ok());
/// assert!(matches!(validate_destination("orders.eu"), Err(Error::InvalidName { .. })));
/// ```
pub fn validate_destination(name: &str) -> Result<()> {
    validate("destination", name)
}

/// Checks a logical group name with the same rules as [`validate_destination`].
pub fn validate_group(name: &str) -> Result<()> {
    validate("group", name)
}

/// Checks a name prefix (the namespace a channel puts before every name): empty, or the
/// same characters as a name, at most [`MAX_NAME_LEN`] bytes.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate("prefix", prefix)
    }
}

fn validate(kind: &'static str, name: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "it is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(format!(
            "{bad:?} is not allowed; use ASCII letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_dash_underscore() {
        assert!(validate_destination("Orders-2_eu").is_ok());
        assert!(validate_group(&"g".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_prefix("").is_ok());
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        for bad in ["", "a.b", "a b", "ä", "a/b", "a*"] {
            let err = validate_destination(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidName {
                        kind: "destination",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let long = "g".repeat(MAX_NAME_LEN + 1);
        let message = validate_group(&long).unwrap_err().to_string();
        assert!(message.contains("limit is 48"), "{message}");
    }
}
