//! How often and how fast a failing handler is tried again.

use crate::error::{Error, Result};
use std::time::Duration;

/// Retry with exponential backoff, then dead-letter.
///
/// Attempt `n` (from 1) that fails waits `initial_backoff * multiplier^(n-1)`, at most
/// `max_backoff` (less a random share of up to `jitter` of it), before attempt `n + 1`.
/// After `max_attempts` failures the message goes to the dead letters. A handler that
/// returns a [`NonRetryable`](crate::NonRetryable) error skips the remaining attempts, and
/// one that returns [`RetryAfter`](crate::RetryAfter) chooses its own wait.
///
/// The wait is taken in process, holding the handler's slot, unless
/// [`through_broker`](Self::through_broker) hands the message back to the broker for it.
///
/// ```
/// use event_binder_core::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::new(4).backoff(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(policy.delay_after(1), Duration::from_millis(100));
/// assert_eq!(policy.delay_after(2), Duration::from_millis(200));
/// assert_eq!(policy.delay_after(9), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// How many times the handler is called for one message, at least 1.
    pub max_attempts: u32,
    /// The wait after the first failure.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How much each wait grows over the one before.
    pub multiplier: f64,
    /// How many times the broker may deliver one message before it is dead-lettered
    /// without calling the handler again: a message that crashes the process each time
    /// must not loop forever. Backends that only know "redelivered or not" count 1 or 2.
    pub max_deliveries: u32,
    /// The share of each wait, from 0.0 to 1.0, taken off at random, so that messages that
    /// failed together are not all tried again at the same moment.
    pub jitter: f64,
    /// Wait by handing the message back to the broker with a delay (a nack with delay)
    /// instead of sleeping in process: the handler's slot, partition or lease is free
    /// meanwhile, and the attempt is the broker's delivery count. Taken where the backend
    /// keeps that count and the delay
    /// ([`Capabilities::counts_deliveries`](crate::Capabilities::counts_deliveries),
    /// [`Capabilities::delayed_redelivery`](crate::Capabilities::delayed_redelivery)), for
    /// messages without a key or on destinations that keep no order per key (a later
    /// message of the key would overtake the one handed back); elsewhere the wait stays in
    /// process.
    pub through_broker: bool,
}

impl RetryPolicy {
    /// `max_attempts` attempts with the default backoff (100 ms, doubling, at most 10 s).
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// Sets the first and the longest wait.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets how much each wait grows (at least 1.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// Sets the share of each wait taken off at random (0.0 to 1.0; 0.0, none, is the
    /// default).
    ///
    /// ```
    /// use event_binder_core::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let policy = RetryPolicy::new(3).jitter(0.5);
    /// let wait = policy.delay_after(1);
    /// assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100));
    /// ```
    pub fn jitter(mut self, share: f64) -> Self {
        self.jitter = share;
        self
    }

    /// Waits between attempts by handing the message back to the broker, where it can
    /// (see the field [`through_broker`](Self#structfield.through_broker)).
    pub fn through_broker(mut self, yes: bool) -> Self {
        self.through_broker = yes;
        self
    }

    /// The wait after failed attempt `attempt` (from 1), jitter included. Never panics: a
    /// policy that [`validate`](Self::validate) would refuse waits `max_backoff`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.powi(exponent);
        let secs = self.initial_backoff.as_secs_f64() * factor;
        let delay = match Duration::try_from_secs_f64(secs) {
            Ok(delay) if delay < self.max_backoff => delay,
            _ => self.max_backoff,
        };
        if self.jitter > 0.0 && self.jitter <= 1.0 {
            delay.mul_f64(1.0 - self.jitter * random_fraction())
        } else {
            delay
        }
    }

    /// Checks the policy; an [`App`](crate::App) calls this for every policy it uses, so a
    /// policy built through its public fields is checked too.
    ///
    /// ```
    /// use event_binder_core::{Error, RetryPolicy};
    ///
    /// assert!(RetryPolicy::default().validate().is_ok());
    /// let policy = RetryPolicy { multiplier: -2.0, ..RetryPolicy::default() };
    /// assert!(matches!(policy.validate(), Err(Error::Config(_))));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let refuse = |what: String| Err(Error::Config(format!("retry policy: {what}")));
        if self.max_attempts == 0 {
            return refuse("max_attempts is 0; it must be at least 1".into());
        }
        if self.max_deliveries == 0 {
            return refuse("max_deliveries is 0; it must be at least 1".into());
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return refuse(format!(
                "multiplier is {}; it must be a finite number of at least 1.0",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return refuse(format!(
                "jitter is {}; it must be a share from 0.0 to 1.0",
                self.jitter
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return refuse(format!(
                "initial_backoff ({:?}) is longer than max_backoff ({:?})",
                self.initial_backoff, self.max_backoff
            ));
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, waiting 100 ms then 200 ms (doubling, at most 10 s); at most 10 deliveries.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            max_deliveries: 10,
            jitter: 0.0,
            through_broker: false,
        }
    }
}

/// A number from 0.0 to 1.0, different on each call: std's hasher keys are random per
/// `RandomState`, which is all a jitter needs (no random-number crate for it).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(0u8);
    // The top 53 bits fill an f64's mantissa exactly.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
