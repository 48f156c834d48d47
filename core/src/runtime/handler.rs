//! Handlers: user functions written against typed events, never against a broker.

use super::context::Context;
use super::retry::RetryPolicy;
use crate::codec::{Decode, Encode};
use crate::error::{BoxError, Result};
use crate::message::Message;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

/// Where a handler reads from, where it writes to, and how it runs.
///
/// The `#[handler]` macro builds one from its arguments; [`Handler::from_fn`] takes one
/// directly, for handlers whose names are chosen at run time.
///
/// ```
/// use event_binder_core::HandlerSpec;
///
/// let spec = HandlerSpec::new("invoice", "orders")
///     .group("billing")
///     .output("invoices")
///     .concurrency(8)
///     .max_attempts(5);
/// assert_eq!(spec.group_name(), Some("billing"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    name: Arc<str>,
    destination: Arc<str>,
    group: Option<Arc<str>>,
    output: Option<Arc<str>>,
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    retry: Option<RetryPolicy>,
    backoff: Option<(Duration, Duration)>,
    jitter: Option<f64>,
    through_broker: Option<bool>,
    timeout: Option<Duration>,
}

impl HandlerSpec {
    /// A handler called `name` (for logs and idempotency) reading `destination`
    /// anonymously; add a group with [`group`](Self::group).
    pub fn new(name: impl Into<Arc<str>>, destination: impl Into<Arc<str>>) -> Self {
        HandlerSpec {
            name: name.into(),
            destination: destination.into(),
            group: None,
            output: None,
            concurrency: None,
            max_attempts: None,
            retry: None,
            backoff: None,
            jitter: None,
            through_broker: None,
            timeout: None,
        }
    }

    /// Joins a group (durable, shares the work with the group's other members).
    pub fn group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Publishes what the handler returns to this destination (a processor).
    pub fn output(mut self, destination: impl Into<Arc<str>>) -> Self {
        self.output = Some(destination.into());
        self
    }

    /// How many messages this handler works on at once (default: the app's).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// How many times the handler is called for one message before it is dead-lettered
    /// (default: the app's retry policy).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// The whole retry policy for this handler; [`max_attempts`](Self::max_attempts),
    /// [`backoff`](Self::backoff), [`jitter`](Self::jitter) and
    /// [`retry_through_broker`](Self::retry_through_broker), if also set, override its parts.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The first and the longest wait between attempts (see [`RetryPolicy::backoff`]);
    /// the rest of the policy stays the app's.
    ///
    /// ```
    /// use event_binder_core::HandlerSpec;
    /// use std::time::Duration;
    ///
    /// let spec = HandlerSpec::new("bill", "orders")
    ///     .backoff(Duration::from_millis(100), Duration::from_secs(10))
    ///     .jitter(0.2)
    ///     .retry_through_broker(true)
    ///     .timeout(Duration::from_secs(5));
    /// assert_eq!(spec.call_timeout(), Some(Duration::from_secs(5)));
    /// ```
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Some((initial, max));
        self
    }

    /// The share of each wait taken off at random (see [`RetryPolicy::jitter`]).
    pub fn jitter(mut self, share: f64) -> Self {
        self.jitter = Some(share);
        self
    }

    /// Whether to wait between attempts by handing the message back to the broker (see
    /// [`RetryPolicy::through_broker`]).
    pub fn retry_through_broker(mut self, yes: bool) -> Self {
        self.through_broker = Some(yes);
        self
    }

    /// The longest one call of the handler may take; a call that takes longer is
    /// stopped and counts as a failed attempt (retried as the retry policy says). No limit
    /// by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The destination it reads.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The group it joins, `None` for an anonymous subscription.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The destination it publishes to, for a processor.
    pub fn output_destination(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// The longest one call may take, if limited.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn concurrency_or(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default)
    }

    pub(crate) fn retry_or(&self, default: RetryPolicy) -> RetryPolicy {
        let mut policy = self.retry.unwrap_or(default);
        if let Some(max_attempts) = self.max_attempts {
            policy.max_attempts = max_attempts.max(1);
        }
        if let Some((initial, max)) = self.backoff {
            policy.initial_backoff = initial;
            policy.max_backoff = max;
        }
        if let Some(jitter) = self.jitter {
            policy.jitter = jitter;
        }
        if let Some(through_broker) = self.through_broker {
            policy.through_broker = through_broker;
        }
        policy
    }
}

/// The future a type-erased handler call returns: the messages to publish, or the error.
pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Vec<Message>, BoxError>> + Send>>;

/// Decodes the event (an `Err` is a decode error: dead-letter, no retry), then calls.
type ErasedCall = dyn Fn(&Message, Context) -> Result<HandlerFuture> + Send + Sync;

/// A handler ready to register with an [`App`](crate::App): its spec plus the type-erased
/// function. Made by [`Handler::from_fn`], [`Handler::processor`], or from a `#[handler]`
/// function through [`IntoHandler`].
#[derive(Clone)]
pub struct Handler {
    spec: HandlerSpec,
    publishes: bool,
    call: Arc<ErasedCall>,
}

impl Handler {
    /// A handler from a closure or function `(event: T, ctx: Context) -> Result<(), E>`.
    ///
    /// ```
    /// use event_binder_core::{Context, Handler, HandlerSpec};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct OrderPlaced { order_id: u64 }
    ///
    /// let tenant = "acme".to_string();
    /// let handler = Handler::from_fn(
    ///     HandlerSpec::new("audit", format!("{tenant}-orders")).group("audit"),
    ///     |event: OrderPlaced, _ctx: Context| async move {
    ///         println!("order {}", event.order_id);
    ///         Ok::<(), std::io::Error>(())
    ///     },
    /// );
    /// assert_eq!(handler.spec().destination(), "acme-orders");
    /// ```
    pub fn from_fn<F, T, Fut, E>(spec: HandlerSpec, function: F) -> Self
    where
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        T: Decode + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self::erase::<Sink, _, _, _, _, _>(spec, function)
    }

    /// A processor from a closure or function `(event: T, ctx: Context) -> Result<O, E>`:
    /// what it returns (one event, or several as [`Events`]) is published to the spec's
    /// [`output`](HandlerSpec::output) before the input is acknowledged.
    pub fn processor<F, T, Fut, O, E>(spec: HandlerSpec, function: F) -> Self
    where
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        T: Decode + Send + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        Processor: OutputPolicy<O>,
        E: Into<BoxError> + 'static,
    {
        Self::erase::<Processor, _, _, _, _, _>(spec, function)
    }

    fn erase<K, F, T, Fut, O, E>(spec: HandlerSpec, function: F) -> Self
    where
        K: OutputPolicy<O>,
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        T: Decode + Send + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let call = move |message: &Message, ctx: Context| -> Result<HandlerFuture> {
            let event = T::decode(message)?;
            let pending = function(event, ctx);
            Ok(Box::pin(async move {
                let output = pending.await.map_err(Into::into)?;
                K::into_messages(output).map_err(BoxError::from)
            }))
        };
        Handler {
            spec,
            publishes: K::PUBLISHES,
            call: Arc::new(call),
        }
    }

    /// Where the handler reads and writes.
    pub fn spec(&self) -> &HandlerSpec {
        &self.spec
    }

    /// Replaces the spec (to override what the `#[handler]` attribute said).
    pub fn with_spec(mut self, spec: HandlerSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Whether it is a processor (publishes what it returns).
    pub(crate) fn publishes(&self) -> bool {
        self.publishes
    }

    pub(crate) fn call(&self, message: &Message, ctx: Context) -> Result<HandlerFuture> {
        (self.call)(message, ctx)
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Several events returned by a processor, each published as its own message.
///
/// ```
/// use event_binder_core::Events;
///
/// #[derive(serde::Serialize)]
/// struct LineShipped { line: u32 }
///
/// let out = Events(vec![LineShipped { line: 1 }, LineShipped { line: 2 }]);
/// assert_eq!(out.0.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Events<T>(pub Vec<T>);

/// How a handler's successful result becomes messages to publish.
#[diagnostic::on_unimplemented(
    message = "this handler cannot return `{O}`",
    note = "a handler without `output` returns `Result<(), E>`; a handler with `output = \"…\"` returns `Result<Event, E>` or `Result<Events<Event>, E>` where `Event: serde::Serialize`"
)]
pub trait OutputPolicy<O> {
    /// Whether results of this kind are published (a processor) or not (a sink).
    const PUBLISHES: bool;

    /// The messages to publish for this result.
    fn into_messages(output: O) -> Result<Vec<Message>>;
}

/// The kind of a handler that publishes nothing: it returns `Result<(), E>`.
#[derive(Debug)]
pub enum Sink {}

/// The kind of a handler that publishes what it returns to its `output` destination.
#[derive(Debug)]
pub enum Processor {}

impl OutputPolicy<()> for Sink {
    const PUBLISHES: bool = false;

    fn into_messages((): ()) -> Result<Vec<Message>> {
        Ok(Vec::new())
    }
}

/// A result that encodes to JSON `null` (`()`, `None`) publishes nothing, so a processor
/// returning `Option<Event>` publishes `Some` events only.
impl<T: Encode> OutputPolicy<T> for Processor {
    const PUBLISHES: bool = true;

    fn into_messages(output: T) -> Result<Vec<Message>> {
        Ok(publishable(&output)?.into_iter().collect())
    }
}

impl<T: Encode> OutputPolicy<Events<T>> for Processor {
    const PUBLISHES: bool = true;

    fn into_messages(Events(events): Events<T>) -> Result<Vec<Message>> {
        events
            .iter()
            .filter_map(|event| publishable(event).transpose())
            .collect()
    }
}

fn publishable<T: Encode + ?Sized>(event: &T) -> Result<Option<Message>> {
    let encoded = event.encode()?;
    let is_null =
        encoded.content_type == crate::content_type::JSON && encoded.payload.as_ref() == b"null";
    Ok((!is_null).then(|| encoded.into_message()))
}

/// Turns what is given to [`App::handler`](crate::App::handler) into a [`Handler`]:
/// a `#[handler]` function, or a [`Handler`] built by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event handler",
    note = "annotate an `async fn(event: T) -> Result<_, E>` or `async fn(event: T, ctx: Context) -> Result<_, E>` with `#[handler(destination = \"…\")]`, or build one with `Handler::from_fn`; if it has `#[handler]` already, the error at the function says what is wrong"
)]
pub trait IntoHandler<Args> {
    /// The handler.
    fn into_handler(self) -> Handler;
}

impl IntoHandler<()> for Handler {
    fn into_handler(self) -> Handler {
        self
    }
}

/// What the `#[handler]` macro attaches to a function: its spec and its kind.
#[doc(hidden)]
pub trait Route: 'static {
    /// [`Sink`] or [`Processor`].
    type Kind;
    /// The spec written in the attribute.
    fn spec() -> HandlerSpec;
}

pin_project_lite::pin_project! {
    /// The future a `#[handler]` function returns: its body's future, tagged with the
    /// handler's [`Route`] so that registration finds the spec. Awaiting it is awaiting the
    /// body.
    #[doc(hidden)]
    pub struct Routed<R, F> {
        #[pin]
        future: F,
        route: PhantomData<fn() -> R>,
    }
}

impl<R, F> Routed<R, F> {
    /// Tags a future with a route.
    pub fn new(future: F) -> Self {
        Routed {
            future,
            route: PhantomData,
        }
    }

    fn into_inner(self) -> F {
        self.future
    }
}

impl<R, F: Future> Future for Routed<R, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

impl<R, F> fmt::Debug for Routed<R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Routed")
    }
}

impl<Func, T, R, Fut, O, E> IntoHandler<(R, T)> for Func
where
    Func: Fn(T) -> Routed<R, Fut> + Send + Sync + 'static,
    T: Decode + Send + 'static,
    R: Route,
    R::Kind: OutputPolicy<O>,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn into_handler(self) -> Handler {
        Handler::erase::<R::Kind, _, _, _, _, _>(R::spec(), move |event: T, _: Context| {
            self(event).into_inner()
        })
    }
}

impl<Func, T, R, Fut, O, E> IntoHandler<(R, T, Context)> for Func
where
    Func: Fn(T, Context) -> Routed<R, Fut> + Send + Sync + 'static,
    T: Decode + Send + 'static,
    R: Route,
    R::Kind: OutputPolicy<O>,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn into_handler(self) -> Handler {
        Handler::erase::<R::Kind, _, _, _, _, _>(R::spec(), move |event: T, ctx: Context| {
            self(event, ctx).into_inner()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(messages: Vec<Message>) -> Vec<String> {
        messages
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload()).into_owned())
            .collect()
    }

    #[test]
    fn processor_results_that_encode_to_null_publish_nothing() {
        let none = <Processor as OutputPolicy<Option<u32>>>::into_messages(None).unwrap();
        assert!(none.is_empty());
        let some = <Processor as OutputPolicy<Option<u32>>>::into_messages(Some(7)).unwrap();
        assert_eq!(payloads(some), ["7"]);
        assert!(<Processor as OutputPolicy<()>>::into_messages(())
            .unwrap()
            .is_empty());
        let many = Events(vec![Some(1u8), None, Some(2)]);
        let many = <Processor as OutputPolicy<Events<Option<u8>>>>::into_messages(many).unwrap();
        assert_eq!(payloads(many), ["1", "2"]);
    }

    #[test]
    fn processor_outputs_carry_their_content_type() {
        let out = <Processor as OutputPolicy<&str>>::into_messages("hi").unwrap();
        assert_eq!(out[0].content_type(), Some(crate::content_type::JSON));
    }
}
