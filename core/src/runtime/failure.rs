//! Errors a handler returns to say how its message should be retried, if at all.

use super::handler::Undecodable;
use crate::error::BoxError;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A handler error that no retry can fix (an order for a product that does not exist, an
/// event that breaks a rule): the message goes to the dead letters at once, without the
/// remaining attempts.
///
/// Return it as the handler's error, or as the source of one; any other error is retried
/// as the [`RetryPolicy`](crate::RetryPolicy) says.
///
/// ```
/// use event_binder_core::{BoxError, Context, Handler, HandlerSpec, NonRetryable};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { quantity: u32 }
///
/// let handler = Handler::from_fn(
///     HandlerSpec::new("reserve", "orders").group("inventory"),
///     |event: OrderPlaced, _ctx: Context| async move {
///         if event.quantity == 0 {
///             return Err(NonRetryable::new("an order of nothing cannot be reserved").into());
///         }
///         Ok::<_, BoxError>(())
///     },
/// );
/// # let _ = handler;
/// ```
#[derive(Debug)]
pub struct NonRetryable(BoxError);

impl NonRetryable {
    /// Marks `error` as one that retrying cannot fix.
    pub fn new(error: impl Into<BoxError>) -> Self {
        NonRetryable(error.into())
    }

    /// The error itself.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

/// Shows the error alone: the dead letter's reason needs no word on how it was retried.
impl fmt::Display for NonRetryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for NonRetryable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// A handler error that a later attempt may fix after a wait the handler knows (a
/// `Retry-After` it was given, a lock that expires at a known time): the next attempt
/// comes after `delay` instead of the [`RetryPolicy`](crate::RetryPolicy)'s backoff. It
/// still counts as an attempt; the last one dead-letters the message as any error does.
///
/// ```
/// use event_binder_core::RetryAfter;
/// use std::time::Duration;
///
/// let error = RetryAfter::new(Duration::from_secs(30), "the payment service is rate limiting");
/// assert_eq!(error.delay(), Duration::from_secs(30));
/// assert_eq!(error.to_string(), "the payment service is rate limiting");
/// ```
#[derive(Debug)]
pub struct RetryAfter {
    delay: Duration,
    error: BoxError,
}

impl RetryAfter {
    /// Asks for the next attempt after `delay`, failing this one with `error`.
    pub fn new(delay: Duration, error: impl Into<BoxError>) -> Self {
        RetryAfter {
            delay,
            error: error.into(),
        }
    }

    /// The wait asked for.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl StdError for RetryAfter {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

/// What a failed attempt's error asks of the retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Retry as the policy says.
    Retry,
    /// Retry after this wait.
    RetryAfter(Duration),
    /// Dead-letter now.
    GiveUp,
    /// Dead-letter now, with 0 attempts: the payload could not be decoded, so the handler
    /// was never called.
    Undecodable,
    /// Not the handler's failure: an idempotency store it recorded the message in (a
    /// transactional inbox) failed. Handed back as a failed claim is, counting no attempt.
    StoreFailed,
}

impl Disposition {
    /// Reads the disposition off the error or the first of its sources that carries one.
    pub(crate) fn of(error: &(dyn StdError + 'static)) -> Self {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Undecodable>() {
                return Disposition::Undecodable;
            }
            if let Some(crate::Error::Idempotency(_)) = error.downcast_ref::<crate::Error>() {
                return Disposition::StoreFailed;
            }
            if error.is::<NonRetryable>() {
                return Disposition::GiveUp;
            }
            if let Some(retry) = error.downcast_ref::<RetryAfter>() {
                return Disposition::RetryAfter(retry.delay);
            }
            next = error.source();
        }
        Disposition::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reserving failed")]
    struct Reserving(#[source] NonRetryable);

    #[test]
    fn the_disposition_is_found_on_the_error_or_its_sources() {
        let plain: BoxError = "boom".into();
        assert_eq!(Disposition::of(&*plain), Disposition::Retry);
        let direct: BoxError = NonRetryable::new("no such product").into();
        assert_eq!(Disposition::of(&*direct), Disposition::GiveUp);
        let wrapped: BoxError = Reserving(NonRetryable::new("no such product")).into();
        assert_eq!(Disposition::of(&*wrapped), Disposition::GiveUp);
        let later: BoxError = RetryAfter::new(Duration::from_secs(3), "busy").into();
        assert_eq!(
            Disposition::of(&*later),
            Disposition::RetryAfter(Duration::from_secs(3))
        );
        let store: BoxError = crate::Error::Idempotency("the database is down".into()).into();
        assert_eq!(Disposition::of(&*store), Disposition::StoreFailed);
    }
}
