//! What the cases share: configuration, unique names, bounded waits, recorders.

use crate::channel::Consumer;
use crate::delivery::Delivery;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the suite runs against one backend. Cases are never skipped; a slow emulator gets a
/// smaller message count for the heavy cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteConfig {
    /// Messages in the heavy cases (concurrent publishers and consumers). Default 5,000.
    pub message_count: usize,
    /// The longest wait for anything expected to happen. Default 30 s.
    pub timeout: Duration,
    /// How long a case watches for something that must not happen (a leaked or duplicated
    /// message) after everything expected has arrived, where the backend cannot tell its
    /// [`backlog`](crate::Consumer::backlog); where it can, the case waits for an empty
    /// backlog instead. Default 300 ms.
    pub quiet_period: Duration,
}

impl SuiteConfig {
    /// Sets [`message_count`](Self::message_count).
    pub fn message_count(mut self, count: usize) -> Self {
        self.message_count = count.max(1);
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`quiet_period`](Self::quiet_period).
    pub fn quiet_period(mut self, quiet_period: Duration) -> Self {
        self.quiet_period = quiet_period;
        self
    }
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            message_count: 5_000,
            timeout: Duration::from_secs(30),
            quiet_period: Duration::from_millis(300),
        }
    }
}

/// A name no other case or run uses: `base` plus 12 random hex digits.
pub(crate) fn unique(base: &str) -> String {
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{base}-{}", &random[random.len() - 12..])
}

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub(crate) async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Receives one delivery within `limit`, failing the test on an error or a timeout.
pub(crate) async fn receive<Co: Consumer>(
    consumer: &mut Co,
    limit: Duration,
    what: &str,
) -> Delivery<Co::Acknowledger> {
    within(limit, what, consumer.receive())
        .await
        .unwrap_or_else(|err| panic!("receive failed while waiting for {what}: {err}"))
}

/// How long a check for "nothing more" waits for a delivery between two readings of the
/// backlog.
const BETWEEN_READINGS: Duration = Duration::from_millis(25);

/// Fails the test if anything more arrives: checked until the consumer's
/// [`backlog`](Consumer::backlog) reads 0 twice in a row with no delivery in between, where
/// the backend can tell (a backlog that stays above 0 with nothing arriving fails after
/// the timeout); watched for the quiet period where it cannot, which the output says.
/// Everything received must have been settled first.
pub(crate) async fn expect_nothing(consumer: &mut impl Consumer, config: &SuiteConfig, what: &str) {
    let deadline = Instant::now() + config.timeout;
    let mut empty_readings = 0;
    loop {
        refuse_deliveries(consumer, BETWEEN_READINGS, what).await;
        match consumer.backlog().await {
            Ok(Some(0)) => {
                empty_readings += 1;
                if empty_readings == 2 {
                    return;
                }
            }
            Ok(Some(left)) => {
                empty_readings = 0;
                assert!(
                    Instant::now() < deadline,
                    "expected {what}, but after {:?} the queue still holds {left} messages \
                     and none arrived",
                    config.timeout
                );
            }
            Ok(None) => {
                println!(
                    "{what}: the backlog of {:?} cannot be told; watched for {:?} instead",
                    consumer.subscription(),
                    config.quiet_period
                );
                return refuse_deliveries(consumer, config.quiet_period, what).await;
            }
            Err(err) => panic!("expected {what}, but reading the backlog failed: {err}"),
        }
    }
}

/// Reads the consumer's backlog until `wanted` accepts it, and returns it; `None` where
/// the backend cannot tell. Fails the test if no reading is accepted within the timeout.
pub(crate) async fn backlog_until(
    consumer: &mut impl Consumer,
    config: &SuiteConfig,
    what: &str,
    wanted: impl Fn(u64) -> bool,
) -> Option<u64> {
    let deadline = Instant::now() + config.timeout;
    loop {
        let backlog = consumer
            .backlog()
            .await
            .unwrap_or_else(|err| panic!("reading the backlog for {what} failed: {err}"))?;
        if wanted(backlog) {
            return Some(backlog);
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {:?} waiting for a backlog of {what}; the last reading: {backlog}",
            config.timeout
        );
        tokio::time::sleep(BETWEEN_READINGS).await;
    }
}

/// Fails the test if a delivery arrives within `wait`.
async fn refuse_deliveries(consumer: &mut impl Consumer, wait: Duration, what: &str) {
    if let Ok(received) = tokio::time::timeout(wait, consumer.receive()).await {
        match received {
            Ok(delivery) => panic!("expected {what}, but received {delivery:?}"),
            Err(err) => panic!("expected {what}, but receive failed: {err}"),
        }
    }
}

/// Counts events per key (how often each message was handled, say) and wakes waiters on
/// every change: what a test records from its handlers and waits on, with a bound.
///
/// ```
/// # async fn demo() {
/// use event_binder_core::conformance::Recorder;
/// use std::time::Duration;
///
/// let handled = Recorder::<u64>::new();
/// let recording = handled.clone(); // moved into the handler, which calls:
/// recording.record(7);
/// handled
///     .wait_for(Duration::from_secs(5), "message 7", |counts| counts.contains_key(&7))
///     .await;
/// assert_eq!((handled.count(&7), handled.distinct()), (1, 1));
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Recorder<K> {
    counts: Mutex<HashMap<K, usize>>,
    changed: Notify,
}

impl<K: std::hash::Hash + Eq + Clone + Debug> Recorder<K> {
    /// An empty recorder, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder {
            counts: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    /// Counts one event of `key`.
    pub fn record(&self, key: K) {
        *self.lock().entry(key).or_default() += 1;
        self.changed.notify_waiters();
    }

    /// How many events `key` had.
    pub fn count(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or_default()
    }

    /// How many events were recorded, all keys together.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    /// How many keys had at least one event.
    pub fn distinct(&self) -> usize {
        self.lock().len()
    }

    /// The counts now.
    pub fn snapshot(&self) -> HashMap<K, usize> {
        self.lock().clone()
    }

    /// Waits until `done` holds for the counts, failing the test (a panic naming `what`)
    /// after `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&HashMap<K, usize>) -> bool,
    ) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.lock()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(limit, waiting).await.is_err() {
            let counts = self.snapshot();
            // The first few keys only: a full list of thousands would hide the message.
            let some: Vec<_> = counts.iter().take(10).collect();
            panic!(
                "timed out after {limit:?} waiting for {what}; recorded so far {} keys, {} \
                 deliveries; some of them: {some:?}",
                counts.len(),
                counts.values().sum::<usize>(),
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        // A test that panicked while recording has failed already; the counts stay readable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}
