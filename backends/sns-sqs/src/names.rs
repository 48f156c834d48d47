//! Physical names: SNS topics and SQS queues allow only letters, digits, `-` and `_`, so
//! the dotted rule of the other backends cannot apply.
//!
//! Every logical name is escaped (`_` becomes `_-`) and the parts are joined with `__`. An
//! escaped name never holds `__`, so a physical name reads back into exactly one prefix,
//! destination and group: `a_b` + `c` and `a` + `b_c` never meet. Names without `_`, the
//! common case, read as written: `shop-orders__billing`.

use event_binder_core::{validate_destination, validate_group, Error, Result};

/// The longest SQS queue name.
pub(crate) const MAX_QUEUE_NAME: usize = 80;

/// The longest SNS topic name.
const MAX_TOPIC_NAME: usize = 256;

/// What FIFO topics and queues end with.
pub(crate) const FIFO_SUFFIX: &str = ".fifo";

/// The physical names of one destination and, if given, one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// The SNS topic: `{prefix}{destination}`, plus `.fifo` for a FIFO destination.
    pub(crate) topic: String,
    /// The group's SQS queue: `{prefix}{destination}__{group}`; `None` when anonymous.
    pub(crate) queue: Option<String>,
    /// The dead letters: `{prefix}{destination}__{group}__dlq`, or
    /// `{prefix}{destination}____dlq` for the anonymous subscriptions of the destination.
    pub(crate) dead_letters: String,
    /// `{prefix}{destination}`, escaped: the stem of the other names.
    stem: String,
    fifo: bool,
}

impl Names {
    /// Validates the logical names and builds the physical ones, refusing any that would
    /// not fit SNS's or SQS's limits.
    pub(crate) fn new(
        prefix: &str,
        destination: &str,
        group: Option<&str>,
        fifo: bool,
    ) -> Result<Self> {
        validate_destination(destination)?;
        if let Some(group) = group {
            validate_group(group)?;
        }
        let stem = format!("{}{}", escape(prefix), escape(destination));
        let suffix = if fifo { FIFO_SUFFIX } else { "" };
        let names = Names {
            topic: format!("{stem}{suffix}"),
            queue: group.map(|group| format!("{stem}__{}{suffix}", escape(group))),
            dead_letters: format!("{stem}__{}__dlq", group.map(escape).unwrap_or_default()),
            stem,
            fifo,
        };
        check_len("destination", destination, &names.topic, MAX_TOPIC_NAME)?;
        if let (Some(queue), Some(group)) = (&names.queue, group) {
            check_len("group", group, queue, MAX_QUEUE_NAME)?;
        }
        check_len(
            group.map_or("destination", |_| "group"),
            group.unwrap_or(destination),
            &names.dead_letters,
            MAX_QUEUE_NAME,
        )?;
        Ok(names)
    }

    /// The queue of one anonymous subscription: `{prefix}{destination}____{tag}`, where the
    /// tag is unique to the subscription (a group's queue never has an empty group part,
    /// and the anonymous dead letters' tag is `dlq`, never a random one).
    pub(crate) fn anonymous_queue(&self, tag: &str) -> Result<String> {
        let suffix = if self.fifo { FIFO_SUFFIX } else { "" };
        let queue = format!("{}____{tag}{suffix}", self.stem);
        check_len("destination", &self.stem, &queue, MAX_QUEUE_NAME)?;
        Ok(queue)
    }
}

/// `_` becomes `_-`; nothing else changes.
fn escape(name: &str) -> String {
    name.replace('_', "_-")
}

fn check_len(kind: &'static str, logical: &str, physical: &str, limit: usize) -> Result<()> {
    if physical.len() <= limit {
        return Ok(());
    }
    Err(Error::InvalidName {
        kind,
        name: logical.to_owned(),
        reason: format!(
            "its SNS/SQS name {physical:?} would be {} characters, and the limit is {limit}; \
             shorten the prefix, destination or group (an `_` counts twice)",
            physical.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_read_as_written() {
        let names = Names::new("shop-", "orders", Some("billing"), false).unwrap();
        assert_eq!(names.topic, "shop-orders");
        assert_eq!(names.queue.as_deref(), Some("shop-orders__billing"));
        assert_eq!(names.dead_letters, "shop-orders__billing__dlq");
        let anonymous = Names::new("shop-", "orders", None, false).unwrap();
        assert_eq!(anonymous.dead_letters, "shop-orders____dlq");
        assert_eq!(
            anonymous.anonymous_queue("0a1b").unwrap(),
            "shop-orders____0a1b"
        );
    }

    #[test]
    fn underscores_never_make_two_pairs_meet() {
        let first = Names::new("", "a_b", Some("c"), false).unwrap();
        let second = Names::new("", "a", Some("b_c"), false).unwrap();
        let third = Names::new("", "a_", Some("_b"), false).unwrap();
        let fourth = Names::new("", "a", Some("__b"), false).unwrap();
        let queues = [&first, &second, &third, &fourth].map(|n| n.queue.clone().unwrap());
        for (i, a) in queues.iter().enumerate() {
            for b in &queues[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(first.queue.as_deref(), Some("a_-b__c"));
    }

    #[test]
    fn a_group_named_dlq_never_meets_the_anonymous_dead_letters() {
        let group = Names::new("", "orders", Some("dlq"), false).unwrap();
        let anonymous = Names::new("", "orders", None, false).unwrap();
        assert_ne!(
            group.queue.as_deref(),
            Some(anonymous.dead_letters.as_str())
        );
        assert_ne!(group.dead_letters, anonymous.dead_letters);
    }

    #[test]
    fn fifo_names_end_with_fifo() {
        let names = Names::new("", "orders", Some("billing"), true).unwrap();
        assert_eq!(names.topic, "orders.fifo");
        assert_eq!(names.queue.as_deref(), Some("orders__billing.fifo"));
        assert_eq!(names.dead_letters, "orders__billing__dlq");
    }

    #[test]
    fn names_that_cannot_fit_are_refused_clearly() {
        let long = "d".repeat(40);
        let err = Names::new("", &long, Some(&long), false).unwrap_err();
        match err {
            Error::InvalidName { kind, reason, .. } => {
                assert_eq!(kind, "group");
                assert!(reason.contains("limit is 80"), "{reason}");
            }
            other => panic!("expected InvalidName, got {other:?}"),
        }
        assert!(Names::new("", "a.b", None, false).is_err());
    }
}
