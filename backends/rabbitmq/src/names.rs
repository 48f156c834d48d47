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

/// The delay queue of `queue` for the delays of `bucket` (see
/// [`DelayQueues`](crate::delay::DelayQueues)): `{queue}.delay.{bucket}`. Queues of groups
/// and dead letters hold at most two dots; this one holds at least three, so it meets none
/// of them, nor the delay queue of another queue or bucket.
pub(crate) fn delay_queue(queue: &str, bucket: u8) -> String {
    format!("{queue}.delay.{bucket}")
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
        let delays = delay_queue(&names.dead_letters, crate::delay::BUCKETS - 1);
        assert!(delays.len() <= 255, "{} bytes", delays.len());
    }

    #[test]
    fn delay_queues_are_named_after_their_queue_and_bucket() {
        let names = Names::new("t-", "orders", Some("billing")).unwrap();
        let queue = names.queue.unwrap();
        assert_eq!(delay_queue(&queue, 8), "t-orders.billing.delay.8");
        assert_eq!(
            delay_queue(&names.dead_letters, 0),
            "t-orders.billing.dlq.delay.0"
        );
        // Even a group named `delay` keeps its queues apart from every delay queue: they
        // differ in their number of dots.
        let dots = |name: &str| name.matches('.').count();
        let group = Names::new("t-", "orders", Some("delay")).unwrap();
        let anonymous = Names::new("t-", "orders", None).unwrap();
        for name in [
            group.queue.as_deref().unwrap(),
            &group.dead_letters,
            &anonymous.dead_letters,
        ] {
            assert!(dots(name) <= 2, "{name}");
        }
        assert_eq!(dots(&delay_queue(&queue, 8)), 3);
        assert_eq!(dots(&delay_queue(&anonymous.dead_letters, 8)), 4);
    }
}
