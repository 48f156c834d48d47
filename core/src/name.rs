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

/// Physical names by the rule of the brokers whose names allow `.` (RabbitMQ, Kafka).
///
/// Logical names and prefixes hold no `.`, so the separators keep every kind of name
/// distinct: a destination's name has no dot, a group's one, a group's dead letters two with
/// the group between them, and the anonymous subscriptions' dead letters two with nothing
/// between them (so they never meet a group named `dlq`).
///
/// ```
/// use event_binder_core::DottedNames;
///
/// let names = DottedNames::new("t-", "orders", Some("billing")).unwrap();
/// assert_eq!(names.destination, "t-orders");
/// assert_eq!(names.group.as_deref(), Some("t-orders.billing"));
/// assert_eq!(names.dead_letters, "t-orders.billing.dlq");
/// assert_eq!(DottedNames::new("", "orders", None).unwrap().dead_letters, "orders..dlq");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DottedNames {
    /// `{prefix}{destination}`: the exchange or topic.
    pub destination: String,
    /// `{prefix}{destination}.{group}`: the queue or consumer group; `None` when anonymous.
    pub group: Option<String>,
    /// `{prefix}{destination}.{group}.dlq`, or `{prefix}{destination}..dlq` for the
    /// anonymous subscriptions of the destination.
    pub dead_letters: String,
}

impl DottedNames {
    /// Validates the logical names and builds the physical ones. The prefix is validated
    /// where it is configured, with [`validate_prefix`].
    pub fn new(prefix: &str, destination: &str, group: Option<&str>) -> Result<Self> {
        validate_destination(destination)?;
        if let Some(group) = group {
            validate_group(group)?;
        }
        let destination = format!("{prefix}{destination}");
        let group = group.unwrap_or_default();
        Ok(DottedNames {
            group: (!group.is_empty()).then(|| format!("{destination}.{group}")),
            dead_letters: format!("{destination}.{group}.dlq"),
            destination,
        })
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
    fn anonymous_dead_letters_never_meet_a_group_named_dlq() {
        let anonymous = DottedNames::new("", "orders", None).unwrap();
        assert_eq!(anonymous.group, None);
        assert_eq!(anonymous.dead_letters, "orders..dlq");
        let dlq_group = DottedNames::new("", "orders", Some("dlq")).unwrap();
        assert_eq!(dlq_group.dead_letters, "orders.dlq.dlq");
        assert_ne!(dlq_group.dead_letters, anonymous.dead_letters);
    }

    #[test]
    fn dotted_names_refuse_invalid_logical_names() {
        assert!(matches!(
            DottedNames::new("", "a.b", None),
            Err(Error::InvalidName {
                kind: "destination",
                ..
            })
        ));
        assert!(matches!(
            DottedNames::new("", "a", Some("")),
            Err(Error::InvalidName { kind: "group", .. })
        ));
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
