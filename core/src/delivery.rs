//! Deliveries: a received message, its attempt count, and the means to settle it.

use crate::erased::BoxAcknowledger;
use crate::error::{Error, Result};
use crate::message::{header, millis_since_epoch, Message};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How a backend settles one delivery. Implemented by backends, called through [`Delivery`].
///
/// Each method consumes the acknowledger, so a delivery is settled at most once. A
/// backend must make an acknowledger that is dropped unsettled return its message to the
/// group (at the latest when its consumer or connection closes): nothing is lost.
///
/// It is a [`Consumer`](crate::Consumer)'s associated type, so settling is a direct call;
/// [`BoxAcknowledger`](crate::BoxAcknowledger) erases the type where it must be chosen at
/// run time.
pub trait Acknowledger: Send + Sync + fmt::Debug + Sized + 'static {
    /// The message was handled: remove it for good.
    fn ack(self) -> impl Future<Output = Result<()>> + Send;

    /// The message was not handled: deliver it again, after `delay` if given.
    fn nack(self, delay: Option<Duration>) -> impl Future<Output = Result<()>> + Send;

    /// Move `dead_letter` (the message with its dead-letter headers) to the dead letters of
    /// this destination and group, then remove the original. Nothing may be lost between
    /// the two: store the dead letter first. A dead letter is not held to the size limit of
    /// sends; where the broker's own limit leaves no room for the dead-letter headers, see
    /// [`shorten_dead_letter_error`] and [`as_delivered`].
    ///
    /// When the dead letter cannot be stored, leave the original unsettled and hand this
    /// acknowledger back in [`DeadLetterFailed`]: [`Delivery::dead_letter`] then returns the
    /// message to the group after a backoff, so a broken dead-letter destination neither
    /// loses the message nor spins on it.
    fn dead_letter(
        self,
        dead_letter: Message,
    ) -> impl Future<Output = Result<(), DeadLetterFailed<Self>>> + Send;

    /// Acknowledges at once where that needs no waiting: the fast path
    /// [`Delivery::ack`] takes before [`ack`](Self::ack), with no future to make. Returns
    /// `None`, and leaves the delivery unsettled, when it would have to wait, or when the
    /// backend has no such path (the default); `Some` once settled, and then the
    /// acknowledger is only dropped.
    fn try_ack(&mut self) -> Option<Result<()>> {
        None
    }
}

/// A dead letter that could not be stored: why, and the original's acknowledger, still
/// unsettled. Returned by [`Acknowledger::dead_letter`].
#[derive(Debug)]
pub struct DeadLetterFailed<A> {
    /// Why the dead letter could not be stored.
    pub error: Error,
    /// The original delivery's acknowledger, not settled yet.
    pub unsettled: A,
}

impl<A> DeadLetterFailed<A> {
    /// The failure of `acknowledger`'s dead letter, with `error` saying why.
    pub fn new(error: Error, acknowledger: A) -> Self {
        DeadLetterFailed {
            error,
            unsettled: acknowledger,
        }
    }
}

/// How long a message whose dead letter could not be stored waits before it is delivered
/// again: 1 s after its first delivery, doubling with each delivery, at most a minute.
///
/// ```
/// use event_binder_core::dead_letter_retry_delay;
/// use std::time::Duration;
///
/// assert_eq!(dead_letter_retry_delay(1), Duration::from_secs(1));
/// assert_eq!(dead_letter_retry_delay(3), Duration::from_secs(4));
/// assert_eq!(dead_letter_retry_delay(u32::MAX), Duration::from_secs(60));
/// ```
pub fn dead_letter_retry_delay(attempt: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(60);
    let doublings = attempt.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(LONGEST)
}

/// Shortens the [`header::DEAD_LETTER_ERROR`] of a dead letter by at least `excess` bytes
/// (on a character boundary, marked as shortened): for a backend whose broker limits the
/// size of a message, and a dead letter that the error text puts over it.
///
/// ```
/// use event_binder_core::{header, shorten_dead_letter_error, Message};
///
/// let dead_letter = Message::new("{}").with_header(header::DEAD_LETTER_ERROR, "é".repeat(100));
/// let shortened = shorten_dead_letter_error(dead_letter, 50);
/// let error = shortened.headers().get(header::DEAD_LETTER_ERROR).unwrap();
/// assert!(error.ends_with(" [shortened]"));
/// assert!(error.len() <= 200 - 50);
/// ```
pub fn shorten_dead_letter_error(dead_letter: Message, excess: usize) -> Message {
    const MARKER: &str = " [shortened]";
    let error = dead_letter
        .headers()
        .get(header::DEAD_LETTER_ERROR)
        .unwrap_or_default();
    let mut cut = error.len().saturating_sub(excess + MARKER.len());
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    let shortened = format!("{}{MARKER}", &error[..cut]);
    dead_letter.with_header(header::DEAD_LETTER_ERROR, shortened)
}

/// The message of a dead letter as it was delivered, without the dead-letter headers: what
/// a backend stores when its broker has no room for them even with the error shortened
/// (a message that was delivered fits, so it is never lost for want of room).
///
/// ```
/// use event_binder_core::{as_delivered, header, Message};
///
/// let dead_letter = Message::new("{}")
///     .with_header("tenant", "acme")
///     .with_header(header::DEAD_LETTER_ERROR, "boom")
///     .with_header(header::DEAD_LETTER_ATTEMPTS, "3");
/// let delivered = as_delivered(dead_letter);
/// assert_eq!(delivered.headers().get("tenant"), Some("acme"));
/// assert_eq!(delivered.headers().get(header::DEAD_LETTER_ERROR), None);
/// assert_eq!(delivered.headers().get(header::DEAD_LETTER_ATTEMPTS), None);
/// ```
pub fn as_delivered(mut dead_letter: Message) -> Message {
    for name in DEAD_LETTER_HEADERS {
        dead_letter.headers_mut().remove(name);
    }
    dead_letter
}

/// The headers [`Delivery::dead_letter`] adds.
const DEAD_LETTER_HEADERS: [&str; 5] = [
    header::DEAD_LETTER_ERROR,
    header::DEAD_LETTER_ATTEMPTS,
    header::DEAD_LETTER_DESTINATION,
    header::DEAD_LETTER_GROUP,
    header::DEAD_LETTER_TIME,
];

/// The destination and group a delivery came from, shared by all deliveries of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The destination.
    pub destination: Arc<str>,
    /// The group, `None` for an anonymous subscription.
    pub group: Option<Arc<str>>,
}

impl Origin {
    /// The origin of deliveries for this destination and group.
    pub fn new(destination: &str, group: Option<&str>) -> Arc<Self> {
        Arc::new(Origin {
            destination: destination.into(),
            group: group.map(Into::into),
        })
    }
}

/// A received message plus its attempt count and the means to settle it.
///
/// Settle every delivery exactly once: [`ack`](Self::ack), [`nack`](Self::nack) or
/// [`dead_letter`](Self::dead_letter). Each consumes the delivery, so settling twice does
/// not compile. A delivery dropped unsettled comes back to the group.
///
/// `A` is how the backend settles it: its consumer's [`Acknowledger`], or a
/// [`BoxAcknowledger`] where the backend is chosen at run time.
pub struct Delivery<A = BoxAcknowledger> {
    message: Arc<Message>,
    attempt: u32,
    origin: Arc<Origin>,
    acknowledger: A,
}

impl<A: Acknowledger> Delivery<A> {
    /// Made by backends: the message, the how-many-th delivery of it this is (1 for the
    /// first), where it came from, and how to settle it.
    pub fn new(
        message: impl Into<Arc<Message>>,
        attempt: u32,
        origin: Arc<Origin>,
        acknowledger: A,
    ) -> Self {
        Delivery {
            message: message.into(),
            attempt: attempt.max(1),
            origin,
            acknowledger,
        }
    }

    /// The same delivery, settled through a [`BoxAcknowledger`]: for code that takes
    /// deliveries of backends chosen at run time.
    pub fn erase(self) -> Delivery {
        self.map_acknowledger(BoxAcknowledger::new)
    }

    /// The same delivery, settled through what `wrap` makes of its acknowledger: for a
    /// consumer that hands out the deliveries of another, as an enum of backends does.
    pub fn map_acknowledger<B: Acknowledger>(self, wrap: impl FnOnce(A) -> B) -> Delivery<B> {
        Delivery {
            message: self.message,
            attempt: self.attempt,
            origin: self.origin,
            acknowledger: wrap(self.acknowledger),
        }
    }
}

impl<A> Delivery<A> {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, shared (handed to handlers without a copy).
    pub fn shared_message(&self) -> &Arc<Message> {
        &self.message
    }

    /// How many times the broker has delivered this message, this time included (1 for the
    /// first delivery). Backends that only know "redelivered or not" say 1 or 2.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The destination the message was consumed from.
    pub fn destination(&self) -> &str {
        &self.origin.destination
    }

    /// The group that consumed it, `None` for an anonymous subscription.
    pub fn group(&self) -> Option<&str> {
        self.origin.group.as_deref()
    }

    /// The destination and group together, cheap to clone.
    pub fn origin(&self) -> &Arc<Origin> {
        &self.origin
    }
}

impl<A: Acknowledger> Delivery<A> {
    /// Acknowledges the message: it was handled and is removed.
    pub async fn ack(self) -> Result<()> {
        let mut acknowledger = self.acknowledger;
        match acknowledger.try_ack() {
            Some(acked) => acked,
            None => acknowledger.ack().await,
        }
    }

    /// Rejects the message for now: it is delivered again, after `delay` if given.
    pub async fn nack(self, delay: Option<Duration>) -> Result<()> {
        self.acknowledger.nack(delay).await
    }

    /// Moves the message to the dead letters of its destination and group, with headers
    /// saying why ([`header::DEAD_LETTER_ERROR`] and the others), then removes it.
    ///
    /// When the dead letter cannot be stored, the message stays safe: it is returned to the
    /// group after [`dead_letter_retry_delay`] and the error says why.
    pub async fn dead_letter(self, reason: &str, attempts: u32) -> Result<()> {
        let Delivery {
            message,
            origin,
            acknowledger,
            attempt,
        } = self;
        let dead_letter = Arc::unwrap_or_clone(message)
            .with_header(header::DEAD_LETTER_ERROR, reason)
            .with_header(header::DEAD_LETTER_ATTEMPTS, attempts.to_string())
            .with_header(header::DEAD_LETTER_DESTINATION, &*origin.destination)
            .with_header(
                header::DEAD_LETTER_GROUP,
                origin.group.as_deref().unwrap_or_default(),
            )
            .with_header(
                header::DEAD_LETTER_TIME,
                millis_since_epoch(SystemTime::now()).to_string(),
            );
        let Err(DeadLetterFailed { error, unsettled }) =
            acknowledger.dead_letter(dead_letter).await
        else {
            return Ok(());
        };
        let delay = dead_letter_retry_delay(attempt);
        tracing::error!(
            destination = &*origin.destination,
            group = origin.group.as_deref(),
            error = %error,
            retry_in = ?delay,
            "the dead letter could not be stored; the message is kept and delivered again"
        );
        if let Err(nack) = unsettled.nack(Some(delay)).await {
            tracing::warn!(error = %nack, "returning a message whose dead letter failed failed too");
        }
        Err(error)
    }
}

impl<A> fmt::Debug for Delivery<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.message.id())
            .field("destination", &self.origin.destination)
            .field("group", &self.origin.group)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An acknowledger whose dead-letter place refuses everything; it records how the
    /// original was settled instead.
    #[derive(Debug)]
    struct BrokenDeadLetters {
        settled: Arc<Mutex<Vec<String>>>,
    }

    impl Acknowledger for BrokenDeadLetters {
        async fn ack(self) -> Result<()> {
            self.settled.lock().unwrap().push("ack".into());
            Ok(())
        }

        async fn nack(self, delay: Option<Duration>) -> Result<()> {
            self.settled.lock().unwrap().push(format!("nack {delay:?}"));
            Ok(())
        }

        async fn dead_letter(self, _dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
            let error = Error::broker("test", "the dead-letter queue is gone");
            Err(DeadLetterFailed::new(error, self))
        }
    }

    #[tokio::test]
    async fn a_dead_letter_that_cannot_be_stored_returns_the_message_after_a_backoff() {
        for attempt in [1, 3, 40] {
            let settled = Arc::new(Mutex::new(Vec::new()));
            let delivery = Delivery::new(
                Message::new("{}"),
                attempt,
                Origin::new("orders", Some("billing")),
                BrokenDeadLetters {
                    settled: settled.clone(),
                },
            );
            let err = delivery.dead_letter("boom", 3).await.unwrap_err();
            assert!(
                err.to_string().contains("dead-letter queue is gone"),
                "{err}"
            );
            let delay = dead_letter_retry_delay(attempt);
            assert!(delay >= Duration::from_secs(1));
            assert_eq!(
                *settled.lock().unwrap(),
                [format!("nack {:?}", Some(delay))]
            );
        }
    }
}
