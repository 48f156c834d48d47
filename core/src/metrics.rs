//! Metrics of the handler runtime, through the [`metrics`](https://docs.rs/metrics/0.24)
//! facade: the application installs the recorder it wants (`metrics-exporter-prometheus`, a
//! StatsD or OpenTelemetry one, …) and every binding reports into it.
//!
//! **Install the recorder before [`App::start`](crate::App::start).** Each binding takes
//! its metric handles once, when it starts, so that handling a message only updates them; a
//! binding started before any recorder was installed keeps no-op handles and reports
//! nothing. With no recorder, a handle is a no-op (one branch), and the clock is not read:
//! the first handled delivery finds that neither histogram takes its value, and the binding
//! stops timing deliveries.
//!
//! | name | kind | unit | what it measures |
//! |---|---|---|---|
//! | `event_binder_received_total` | counter | | deliveries the binding took |
//! | `event_binder_handled_total` | counter | | deliveries handled: the handler succeeded, the delivery was acknowledged |
//! | `event_binder_failed_total` | counter | | failed handler calls: every failed attempt, undecodable payloads included |
//! | `event_binder_retried_total` | counter | | failed attempts that will be tried again, in process or handed back to the broker with a delay |
//! | `event_binder_dead_lettered_total` | counter | | deliveries sent to the dead letters (after their last attempt, undecodable, or delivered more than `max_deliveries` times) |
//! | `event_binder_duplicates_total` | counter | | deliveries skipped as already handled (the idempotency store said so, or a batch held the same id twice) |
//! | `event_binder_handling_duration_seconds` | histogram | seconds | handled deliveries: from the runtime taking the delivery to its acknowledgement |
//! | `event_binder_end_to_end_latency_seconds` | histogram | seconds | handled deliveries: from the message's [`timestamp`](crate::Message::timestamp) (set by its publisher) to its acknowledgement |
//! | `event_binder_in_flight` | gauge | | deliveries being processed now |
//!
//! Every metric has the labels `destination`, `group` (empty for an anonymous
//! subscription) and `handler` (the [`HandlerSpec`](crate::HandlerSpec)'s name).
//!
//! Only handled deliveries go into the histograms: a failure is counted, and its duration,
//! often a timeout or a backoff, would only blur the handling time. A delivery starts when
//! the runtime starts on it (an ordered binding first waits for the earlier messages of its
//! key); the deliveries of a batch start together, stay in flight until the whole batch is
//! settled, and each round of the batch is timed to its first acknowledgement.
//!
//! The end-to-end latency compares the publisher's clock with this process's: across
//! machines it is only as good as their clock synchronisation, and a negative value (the
//! publisher's clock ahead) is not recorded. To read the wall clock once per delivery
//! instead of twice, the acknowledgement's wall-clock time is derived from the monotonic
//! reading taken anyway, and an offset between the two clocks, read again every minute: a
//! step of the system clock shows in the latency within a minute, not at once.

use crate::message::Message;
use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, IntoF64, Unit,
};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counter: deliveries the binding took.
pub const RECEIVED_TOTAL: &str = "event_binder_received_total";
/// Counter: deliveries handled (the handler succeeded, the delivery was acknowledged).
pub const HANDLED_TOTAL: &str = "event_binder_handled_total";
/// Counter: failed handler calls, every failed attempt (undecodable payloads included).
pub const FAILED_TOTAL: &str = "event_binder_failed_total";
/// Counter: failed attempts that will be tried again (in process, or handed back to the
/// broker with a delay).
pub const RETRIED_TOTAL: &str = "event_binder_retried_total";
/// Counter: deliveries sent to the dead letters.
pub const DEAD_LETTERED_TOTAL: &str = "event_binder_dead_lettered_total";
/// Counter: deliveries skipped as already handled.
pub const DUPLICATES_TOTAL: &str = "event_binder_duplicates_total";
/// Histogram, in seconds: from taking a handled delivery to its acknowledgement.
pub const HANDLING_DURATION_SECONDS: &str = "event_binder_handling_duration_seconds";
/// Histogram, in seconds: from a handled message's timestamp to its acknowledgement.
pub const END_TO_END_LATENCY_SECONDS: &str = "event_binder_end_to_end_latency_seconds";
/// Gauge: deliveries being processed now.
pub const IN_FLIGHT: &str = "event_binder_in_flight";

/// The label of every metric naming the binding's destination.
pub const DESTINATION_LABEL: &str = "destination";
/// The label of every metric naming the binding's group (empty for an anonymous
/// subscription).
pub const GROUP_LABEL: &str = "group";
/// The label of every metric naming the binding's handler.
pub const HANDLER_LABEL: &str = "handler";

/// How long the offset between the monotonic and the wall clock is used before it is read
/// again.
const CLOCK_RESYNC: Duration = Duration::from_secs(60);

/// Tells the recorder what each metric is, once per process: the recorder keeps it.
fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        describe_counter!(RECEIVED_TOTAL, "Deliveries the binding took.");
        describe_counter!(
            HANDLED_TOTAL,
            "Deliveries handled: the handler succeeded and the delivery was acknowledged."
        );
        describe_counter!(
            FAILED_TOTAL,
            "Failed handler calls: every failed attempt, undecodable payloads included."
        );
        describe_counter!(
            RETRIED_TOTAL,
            "Failed attempts that will be tried again, in process or through the broker."
        );
        describe_counter!(DEAD_LETTERED_TOTAL, "Deliveries sent to the dead letters.");
        describe_counter!(
            DUPLICATES_TOTAL,
            "Deliveries skipped because their message id was handled already."
        );
        describe_histogram!(
            HANDLING_DURATION_SECONDS,
            Unit::Seconds,
            "Handled deliveries: from taking the delivery to its acknowledgement."
        );
        describe_histogram!(
            END_TO_END_LATENCY_SECONDS,
            Unit::Seconds,
            "Handled deliveries: from the message's timestamp to its acknowledgement."
        );
        describe_gauge!(IN_FLIGHT, "Deliveries being processed now.");
    });
}

/// One binding's metric handles, taken once when it starts.
pub(crate) struct BindingMetrics {
    received: Counter,
    handled: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    duplicates: Counter,
    handling: Histogram,
    end_to_end: Histogram,
    in_flight: Gauge,
    clock: WallClock,
    /// Whether deliveries are timed: until a handled one shows that neither histogram takes
    /// a value (no recorder), which the handles, taken for good, never change.
    timed: AtomicBool,
}

impl BindingMetrics {
    /// The handles of the binding of `handler` on `destination` and `group`, from the
    /// recorder installed now.
    pub(crate) fn new(destination: &str, group: Option<&str>, handler: &str) -> Self {
        describe();
        let labels = [
            (DESTINATION_LABEL, destination.to_owned()),
            (GROUP_LABEL, group.unwrap_or_default().to_owned()),
            (HANDLER_LABEL, handler.to_owned()),
        ];
        BindingMetrics {
            received: counter!(RECEIVED_TOTAL, &labels),
            handled: counter!(HANDLED_TOTAL, &labels),
            failed: counter!(FAILED_TOTAL, &labels),
            retried: counter!(RETRIED_TOTAL, &labels),
            dead_lettered: counter!(DEAD_LETTERED_TOTAL, &labels),
            duplicates: counter!(DUPLICATES_TOTAL, &labels),
            handling: histogram!(HANDLING_DURATION_SECONDS, &labels),
            end_to_end: histogram!(END_TO_END_LATENCY_SECONDS, &labels),
            in_flight: gauge!(IN_FLIGHT, &labels),
            clock: WallClock::new(),
            timed: AtomicBool::new(true),
        }
    }

    /// Counts `count` deliveries taken; they are in flight until the guard is dropped.
    pub(crate) fn taken(&self, count: usize) -> Taken<'_> {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.received.increment(u64::from(count));
        self.in_flight.increment(count);
        Taken {
            metrics: self,
            at: self.timed.load(Ordering::Relaxed).then(Instant::now),
            count,
        }
    }

    /// Counts a failed handler call.
    pub(crate) fn failed(&self) {
        self.failed.increment(1);
    }

    /// Counts a failed attempt that will be tried again.
    pub(crate) fn retried(&self) {
        self.retried.increment(1);
    }

    /// Counts a delivery sent to the dead letters.
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.increment(1);
    }

    /// Counts a delivery skipped as already handled.
    pub(crate) fn duplicate(&self) {
        self.duplicates.increment(1);
    }
}

/// Deliveries taken together (one, or a batch), in flight until this is dropped: dropped
/// on a panic or a cancelled task too, so the gauge never keeps a delivery that is gone.
pub(crate) struct Taken<'a> {
    metrics: &'a BindingMetrics,
    /// When they were taken, if the binding times its deliveries.
    at: Option<Instant>,
    count: u32,
}

impl Taken<'_> {
    /// Counts `message` handled, acknowledged just now.
    pub(crate) fn handled(&self, message: &Message) {
        self.handled_at(message, &mut None);
    }

    /// Counts `message` handled, acknowledged at `settled`: read from the clock here if it
    /// was not yet (a batch reads it once for all it acknowledges in a round).
    #[inline]
    pub(crate) fn handled_at(&self, message: &Message, settled: &mut Option<Instant>) {
        self.metrics.handled.increment(1);
        if let Some(at) = self.at {
            self.time(at, message, settled);
        }
    }

    /// Records a handled delivery's durations. Kept out of line: with no recorder, it is
    /// called for a binding's first delivery only.
    #[inline(never)]
    fn time(&self, at: Instant, message: &Message, settled: &mut Option<Instant>) {
        let metrics = self.metrics;
        let settled = *settled.get_or_insert_with(Instant::now);
        let taken = Cell::new(false);
        metrics.handling.record(Lazy {
            value: || settled.saturating_duration_since(at).as_secs_f64(),
            taken: &taken,
        });
        // A negative latency (the publisher's clock ahead) is left out, and so tells nothing
        // of the histogram.
        let Some(latency) = metrics.clock.since(message.timestamp(), settled) else {
            return;
        };
        metrics.end_to_end.record(Lazy {
            value: || latency.as_secs_f64(),
            taken: &taken,
        });
        if !taken.get() {
            metrics.timed.store(false, Ordering::Relaxed);
        }
    }
}

/// A histogram value computed only if the histogram takes it (a no-op handle never asks),
/// saying so in `taken`.
struct Lazy<'a, F> {
    value: F,
    taken: &'a Cell<bool>,
}

impl<F: FnOnce() -> f64> IntoF64 for Lazy<'_, F> {
    fn into_f64(self) -> f64 {
        self.taken.set(true);
        (self.value)()
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.decrement(self.count);
    }
}

/// The wall-clock time of a monotonic reading, from an offset between the two clocks
/// read again every [`CLOCK_RESYNC`].
struct WallClock {
    /// What the nanoseconds below count from.
    base: Instant,
    /// The wall-clock time of `base`, in nanoseconds since the Unix epoch, as of the last
    /// reading.
    base_wall_nanos: AtomicU64,
    /// When (nanoseconds since `base`) to read the offset again.
    resync_at: AtomicU64,
}

impl WallClock {
    fn new() -> Self {
        let clock = WallClock {
            base: Instant::now(),
            base_wall_nanos: AtomicU64::new(0),
            resync_at: AtomicU64::new(0),
        };
        clock.resync(0);
        clock
    }

    /// Reads the wall clock, `elapsed` nanoseconds after `base`.
    fn resync(&self, elapsed: u64) {
        let wall = nanos(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        self.base_wall_nanos
            .store(wall.saturating_sub(elapsed), Ordering::Relaxed);
        self.resync_at.store(
            elapsed.saturating_add(nanos(CLOCK_RESYNC)),
            Ordering::Relaxed,
        );
    }

    /// The time from `start` (wall clock) to `end` (monotonic), unless `start` is later.
    fn since(&self, start: SystemTime, end: Instant) -> Option<Duration> {
        let elapsed = nanos(end.saturating_duration_since(self.base));
        // Two threads may both read it again: the later store wins, and both are right.
        if elapsed >= self.resync_at.load(Ordering::Relaxed) {
            self.resync(elapsed);
        }
        let end_wall = self
            .base_wall_nanos
            .load(Ordering::Relaxed)
            .saturating_add(elapsed);
        let start_wall = nanos(start.duration_since(UNIX_EPOCH).ok()?);
        end_wall.checked_sub(start_wall).map(Duration::from_nanos)
    }
}

/// Nanoseconds, saturating (at about 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_follows_the_system_clock() {
        let clock = WallClock::new();
        let published = SystemTime::now() - Duration::from_millis(250);
        let latency = clock.since(published, Instant::now()).unwrap();
        // The two clocks are read a few microseconds apart; allow a slow machine a second.
        assert!(latency >= Duration::from_millis(249), "{latency:?}");
        assert!(latency < Duration::from_millis(1250), "{latency:?}");
    }

    #[test]
    fn a_timestamp_from_the_future_is_no_latency() {
        let clock = WallClock::new();
        let published = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(clock.since(published, Instant::now()), None);
    }

    #[test]
    fn the_offset_is_read_again_after_a_minute() {
        let clock = WallClock::new();
        let later = clock.base + CLOCK_RESYNC + Duration::from_secs(1);
        let before = clock.resync_at.load(Ordering::Relaxed);
        let _ = clock.since(SystemTime::now(), later);
        assert!(clock.resync_at.load(Ordering::Relaxed) > before);
    }
}
