//! Physical names: how logical destinations and groups become topics and consumer groups,
//! by core's [`DottedNames`] rule. The longest name (three 48-byte parts and the
//! separators) stays far below Kafka's 249.

use event_binder_core::{DottedNames, Result};

/// The names one (destination, group) uses on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// The topic of the destination: `{prefix}{destination}`.
    pub(crate) topic: String,
    /// The consumer group: `{prefix}{destination}.{group}`; `None` when anonymous.
    pub(crate) group: Option<String>,
    /// The dead-letter topic: `{prefix}{destination}.{group}.dlq`, or
    /// `{prefix}{destination}..dlq` for the anonymous subscriptions of the destination.
    pub(crate) dead_letters: String,
}

impl Names {
    /// Validates the logical names and builds the physical ones.
    pub(crate) fn new(prefix: &str, destination: &str, group: Option<&str>) -> Result<Self> {
        let DottedNames {
            destination: topic,
            group,
            dead_letters,
        } = DottedNames::new(prefix, destination, group)?;
        Ok(Names {
            topic,
            group,
            dead_letters,
        })
    }

    /// The consumer group that reads the dead letters: the dead-letter topic's name.
    pub(crate) fn dead_letter_group(&self) -> String {
        self.dead_letters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        let names = Names::new("t-", "orders", Some("billing")).unwrap();
        assert_eq!(names.topic, "t-orders");
        assert_eq!(names.group.as_deref(), Some("t-orders.billing"));
        assert_eq!(names.dead_letters, "t-orders.billing.dlq");
    }

    #[test]
    fn longest_names_fit_kafka() {
        let long = "x".repeat(event_binder_core::MAX_NAME_LEN);
        let names = Names::new(&long, &long, Some(&long)).unwrap();
        assert!(names.dead_letters.len() <= 249);
    }
}
