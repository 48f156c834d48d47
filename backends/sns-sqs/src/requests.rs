//! Counting the requests a channel makes: SNS and SQS bill per request, and batching is
//! what keeps the count down.

use aws_sdk_sqs::config::ConfigBag;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The requests a channel has sent, per operation (`Publish`, `PublishBatch`,
/// `ReceiveMessage`, `DeleteMessageBatch`, …), retries included. From
/// [`SnsSqsChannel::requests`](crate::SnsSqsChannel::requests).
///
/// ```
/// use event_binder_sns_sqs::RequestCounts;
///
/// let counts = RequestCounts::default();
/// assert_eq!(counts.total(), 0);
/// assert_eq!(counts.get("PublishBatch"), 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    by_operation: BTreeMap<String, u64>,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_operation.values().sum()
    }

    /// The requests of one operation.
    pub fn get(&self, operation: &str) -> u64 {
        self.by_operation
            .get(operation)
            .copied()
            .unwrap_or_default()
    }

    /// Every operation used, with its count.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_operation
            .iter()
            .map(|(name, n)| (name.as_str(), *n))
    }

    /// The requests made since `earlier` was read.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            by_operation: self
                .by_operation
                .iter()
                .map(|(name, n)| (name.clone(), n - earlier.get(name)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// An SDK interceptor counting every request transmitted.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestCounter {
    counts: Arc<Mutex<RequestCounts>>,
}

impl RequestCounter {
    pub(crate) fn snapshot(&self) -> RequestCounts {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RequestCounts> {
        // Counting never panics while holding the lock; the counts stay readable anyway.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "event-binder request counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        let mut counts = self.lock();
        match counts.by_operation.get_mut(operation) {
            Some(count) => *count += 1,
            None => {
                counts.by_operation.insert(operation.to_owned(), 1);
            }
        }
        Ok(())
    }
}
