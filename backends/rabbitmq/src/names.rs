//! Physical names: how logical destinations and groups become exchanges and queues, by
//! core's [`DottedNames`] rule.

use event_binder_core::{DottedNames, Result};

/// The names one (destination, group) uses on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// The topic exchange of the destination: `{prefix}{destination}`.
    pub(crate) exchange: String,
    /// The durable queue of the group: `{prefix}{destination}.{group}`; `None` when
    /// anonymous (the broker names the queue).
    pub(crate) queue: Option<String>,
    /// The dead-letter queue: `{prefix}{destination}.{group}.dlq`, or
    /// `{prefix}{destination}..dlq` for the anonymous subscriptions of the destination.
    pub(crate) dead_letters: String,
}

impl Names {
    /// Validates the logical names and builds the physical ones.
    pub(crate) fn new(prefix: &str, destination: &str, group: Option<&str>) -> Result<Self> {
        let DottedNames {
            destination: exchange,
            group: queue,
            dead_letters,
        } = DottedNames::new(prefix, destination, group)?;
        Ok(Names {
            exchange,
            queue,
            dead_letters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        let names = Names::new("t-", "orders", Some("billing")).unwrap();
        assert_eq!(names.exchange, "t-orders");
        assert_eq!(names.queue.as_deref(), Some("t-orders.billing"));
        assert_eq!(names.dead_letters, "t-orders.billing.dlq");
    }

    #[test]
    fn longest_names_fit_amqp_short_strings() {
        let long = "x".repeat(event_binder_core::MAX_NAME_LEN);
        let names = Names::new(&long, &long, Some(&long)).unwrap();
        assert!(names.dead_letters.len() <= 255);
    }
}
