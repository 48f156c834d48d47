//! Handlers: user functions written against typed events, never against a broker.

use super::context::Context;
use super::extract::{Extractors, NoState};
use super::retry::RetryPolicy;
use crate::asyncapi::{PayloadType, Payloads};
use crate::codec::{Decode, Encode};
use crate::error::{BoxError, Error, Result};
use crate::message::Message;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

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
    batch: Option<(usize, Duration)>,
    /// The types of the events it reads and, for a processor, of those it publishes.
    payloads: Payloads,
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
            batch: None,
            payloads: Payloads::default(),
        }
    }

    /// Joins a group (durable, shares the work with the group's other members).
    pub fn group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Reads another destination, as a binding's `destination` in a
    /// [`Configuration`](crate::Configuration) says.
    #[cfg(feature = "config")]
    pub(crate) fn with_destination(mut self, destination: impl Into<Arc<str>>) -> Self {
        self.destination = destination.into();
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

    /// For a [`BatchHandler`](crate::BatchHandler): the most messages in one batch, and
    /// the longest a batch waits for more after its first message (default: 100 messages,
    /// 100 ms). The consumer's prefetch is the batch size.
    ///
    /// ```
    /// use event_binder_core::HandlerSpec;
    /// use std::time::Duration;
    ///
    /// let spec = HandlerSpec::new("stock", "orders").batch(64, Duration::from_millis(20));
    /// assert_eq!(spec.batch_limits(), Some((64, Duration::from_millis(20))));
    /// ```
    pub fn batch(mut self, max_size: usize, max_wait: Duration) -> Self {
        self.batch = Some((max_size, max_wait));
        self
    }

    /// The batch limits set with [`batch`](Self::batch).
    pub fn batch_limits(&self) -> Option<(usize, Duration)> {
        self.batch
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

    /// The type of the events it reads, for its documentation (the AsyncAPI document of
    /// the cargo feature `asyncapi`). `#[handler]` sets it from the function's event type.
    ///
    /// ```
    /// use event_binder_core::{HandlerSpec, PayloadType};
    ///
    /// let spec = HandlerSpec::new("audit", "orders").payload_type(PayloadType::named::<String>());
    /// assert_eq!(spec.event_type().map(PayloadType::type_name), Some("alloc::string::String"));
    /// ```
    pub fn payload_type(mut self, payload: PayloadType) -> Self {
        self.payloads.event = Some(payload);
        self
    }

    /// The type of the events a processor publishes to its [`output`](Self::output).
    /// `#[handler]` sets it from the `Ok` type its function returns (the element type of an
    /// `Option` or of [`Events`]).
    pub fn output_payload_type(mut self, payload: PayloadType) -> Self {
        self.payloads.output = Some(payload);
        self
    }

    /// The type of the events it reads, with its JSON Schema: what
    /// [`payload_type`](Self::payload_type) sets, from a type that implements
    /// [`schemars::JsonSchema`].
    ///
    /// ```
    /// use event_binder_core::HandlerSpec;
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct OrderPlaced { order_id: u64 }
    ///
    /// let spec = HandlerSpec::new("audit", "orders").payload::<OrderPlaced>();
    /// assert!(spec.event_type().is_some_and(|payload| payload.has_schema()));
    /// ```
    #[cfg(feature = "asyncapi")]
    pub fn payload<E: schemars::JsonSchema>(self) -> Self {
        self.payload_type(PayloadType::of::<E>())
    }

    /// The type of the events a processor publishes, with its JSON Schema: what
    /// [`output_payload_type`](Self::output_payload_type) sets, from a type that implements
    /// [`schemars::JsonSchema`].
    #[cfg(feature = "asyncapi")]
    pub fn output_payload<O: schemars::JsonSchema>(self) -> Self {
        self.output_payload_type(PayloadType::of::<O>())
    }

    /// The type of the events it reads, if declared.
    pub fn event_type(&self) -> Option<&PayloadType> {
        self.payloads.event.as_ref()
    }

    /// The type of the events a processor publishes, if declared.
    pub fn output_event_type(&self) -> Option<&PayloadType> {
        self.payloads.output.as_ref()
    }
}

/// What every handler is at run time: a [`tower::Service`](tower_service::Service) that
/// takes the [`Context`] of one delivery (its message, attempt, origin and the app's shared
/// values) and returns the messages to publish (none for a handler without an `output`).
///
/// Handlers built with [`Handler::from_fn`], [`Handler::processor`] or `#[handler]` are
/// services that decode the event and call the function; [`Handler::layer`] and
/// [`App::layer`](crate::App::layer) wrap them in tower layers. The runtime clones the
/// service for each call (as axum and hyper do), so a layer that keeps state shares it
/// between clones, or is put behind a buffer.
pub trait HandlerService:
    Service<Context, Response = Vec<Message>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HandlerService for S where
    S: Service<Context, Response = Vec<Message>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A handler ready to register with an [`App`](crate::App): its spec plus its
/// [`HandlerService`]. Made by [`Handler::from_fn`], [`Handler::processor`], or from a
/// `#[handler]` function through [`IntoHandler`]; wrapped in middleware with
/// [`layer`](Self::layer).
///
/// Each handler keeps its own type, so the runtime calls it directly: no boxed future and
/// no allocation per message. `R` says what app state its arguments need ([`NoState`], or
/// [`StateOf<S>`](crate::StateOf) for a [`State<S>`](crate::State) argument), which
/// [`App::handler`](crate::App::handler) checks against the app's.
pub struct Handler<S, R = NoState> {
    spec: HandlerSpec,
    publishes: bool,
    service: S,
    requires: PhantomData<fn() -> R>,
}

impl<S: Clone, R> Clone for Handler<S, R> {
    fn clone(&self) -> Self {
        Handler {
            spec: self.spec.clone(),
            publishes: self.publishes,
            service: self.service.clone(),
            requires: PhantomData,
        }
    }
}

impl Handler<()> {
    /// A handler from a closure or function `(event: T, args…) -> Result<(), E>`, where
    /// the arguments after the event are any of [`Context`], [`MessageId`](crate::MessageId),
    /// [`Key`](crate::Key), [`Attempt`](crate::Attempt), [`Headers`](crate::Headers) and
    /// [`State<S>`](crate::State) (see [`FromContext`](crate::FromContext)), or none.
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
    pub fn from_fn<F, T, Args>(
        spec: HandlerSpec,
        function: F,
    ) -> Handler<FnService<Sink, F, T, Args>, Args::State>
    where
        F: HandlerFn<T, Args, Output = ()>,
        T: Decode + Send + 'static,
        Args: Extractors,
    {
        FnService::handler(spec, function)
    }

    /// A processor from a closure or function `(event: T, args…) -> Result<O, E>` (the
    /// arguments as for [`from_fn`](Self::from_fn)): what it returns (one event, or several
    /// as [`Events`]) is published to the spec's [`output`](HandlerSpec::output) before the
    /// input is acknowledged.
    pub fn processor<F, T, Args>(
        spec: HandlerSpec,
        function: F,
    ) -> Handler<FnService<Processor, F, T, Args>, Args::State>
    where
        F: HandlerFn<T, Args>,
        T: Decode + Send + 'static,
        Args: Extractors,
        Processor: OutputPolicy<F::Output>,
    {
        FnService::handler(spec, function)
    }
}

impl<S, R> Handler<S, R> {
    /// Where the handler reads and writes.
    pub fn spec(&self) -> &HandlerSpec {
        &self.spec
    }

    /// Replaces the spec (to override what the `#[handler]` attribute said).
    pub fn with_spec(mut self, spec: HandlerSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Wraps the handler's service in a tower layer: a timeout, a concurrency or rate
    /// limit, or a layer of your own. Layers added later wrap the ones added before; each
    /// sees every call of the handler (every attempt of every message), with the
    /// message's [`Context`] as the request.
    ///
    /// ```
    /// use event_binder_core::{Context, Handler, HandlerSpec};
    /// use tower_layer::layer_fn;
    ///
    /// let handler = Handler::from_fn(
    ///     HandlerSpec::new("bill", "orders").group("billing"),
    ///     |_order: serde_json::Value, _ctx: Context| async { Ok::<_, std::io::Error>(()) },
    /// )
    /// // Any `tower::Layer`; `layer_fn` makes one from a function.
    /// .layer(layer_fn(|inner| inner));
    /// assert_eq!(handler.spec().name(), "bill");
    /// ```
    pub fn layer<L>(self, layer: L) -> Handler<L::Service, R>
    where
        L: Layer<S>,
    {
        Handler {
            spec: self.spec,
            publishes: self.publishes,
            service: layer.layer(self.service),
            requires: PhantomData,
        }
    }

    /// The service, to call it directly (a unit test of a layer, say).
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Whether it is a processor (publishes what it returns).
    pub(crate) fn publishes(&self) -> bool {
        self.publishes
    }

    pub(crate) fn into_service(self) -> S {
        self.service
    }
}

impl<S, R> fmt::Debug for Handler<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("spec", &self.spec)
            .field("publishes", &self.publishes)
            .finish_non_exhaustive()
    }
}

/// A handler function of event type `T` taking the arguments `Args` after it: a closure
/// or function `(T, args…) -> impl Future<Output = Result<O, E>>`, or a `#[handler]`
/// function. Implemented for you, for up to 6 arguments after the event; it names the
/// future a function returns, so that the runtime calls it without boxing.
pub trait HandlerFn<T, Args>: Send + Sync + 'static {
    /// What a successful call returns.
    type Output;
    /// What a failed call returns.
    type Error: Into<BoxError>;
    /// The future a call returns.
    type Future: Future<Output = Result<Self::Output, Self::Error>> + Send + 'static;

    /// Calls the function.
    fn call(&self, event: T, args: Args) -> Self::Future;
}

/// A `#[handler]` function, as a [`HandlerFn`]: it returns its body's future tagged with
/// its [`Route`].
#[doc(hidden)]
#[derive(Debug)]
pub struct RoutedFn<Func>(Func);

macro_rules! handler_fns {
    ($($arg:ident),*) => {
        impl<F, T, Fut, O, E, $($arg,)*> HandlerFn<T, ($($arg,)*)> for F
        where
            F: Fn(T, $($arg,)*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<O, E>> + Send + 'static,
            E: Into<BoxError>,
        {
            type Output = O;
            type Error = E;
            type Future = Fut;

            #[allow(non_snake_case)]
            fn call(&self, event: T, ($($arg,)*): ($($arg,)*)) -> Fut {
                self(event, $($arg,)*)
            }
        }

        impl<Func, T, R, Fut, O, E, $($arg,)*> HandlerFn<T, ($($arg,)*)> for RoutedFn<Func>
        where
            Func: Fn(T, $($arg,)*) -> Routed<R, Fut> + Send + Sync + 'static,
            R: Route,
            Fut: Future<Output = Result<O, E>> + Send + 'static,
            E: Into<BoxError>,
        {
            type Output = O;
            type Error = E;
            type Future = Fut;

            #[allow(non_snake_case)]
            fn call(&self, event: T, ($($arg,)*): ($($arg,)*)) -> Fut {
                (self.0)(event, $($arg,)*).into_inner()
            }
        }

        impl<Func, T, R, Fut, O, E, $($arg,)*> IntoHandler<(R, T, $($arg,)*)> for Func
        where
            Func: Fn(T, $($arg,)*) -> Routed<R, Fut> + Send + Sync + 'static,
            T: Decode + Send + 'static,
            R: Route,
            R::Kind: OutputPolicy<O> + 'static,
            Fut: Future<Output = Result<O, E>> + Send + 'static,
            E: Into<BoxError> + 'static,
            ($($arg,)*): Extractors,
        {
            type Service = FnService<R::Kind, RoutedFn<Func>, T, ($($arg,)*)>;
            type Requires = <($($arg,)*) as Extractors>::State;

            fn into_handler(self) -> Handler<Self::Service, Self::Requires> {
                FnService::handler(R::spec(), RoutedFn(self))
            }
        }
    };
}

handler_fns!();
handler_fns!(A1);
handler_fns!(A1, A2);
handler_fns!(A1, A2, A3);
handler_fns!(A1, A2, A3, A4);
handler_fns!(A1, A2, A3, A4, A5);
handler_fns!(A1, A2, A3, A4, A5, A6);

/// The service of a handler function: decodes the event from the message, calls the
/// function, and turns its result into the messages to publish (`K` says how: [`Sink`] or
/// [`Processor`]).
///
/// A payload that cannot be decoded fails the call with an error that sends the message to
/// the dead letters at once (with 0 attempts: the function was never called); a panic while
/// decoding is a failed attempt like any other.
pub struct FnService<K, F, T, Args> {
    function: Arc<F>,
    types: PhantomData<fn(T, Args) -> K>,
}

impl<K, F, T, Args> FnService<K, F, T, Args>
where
    F: HandlerFn<T, Args>,
    K: OutputPolicy<F::Output>,
    Args: Extractors,
{
    fn handler(spec: HandlerSpec, function: F) -> Handler<Self, Args::State> {
        Handler {
            spec,
            publishes: K::PUBLISHES,
            service: FnService {
                function: Arc::new(function),
                types: PhantomData,
            },
            requires: PhantomData,
        }
    }
}

impl<K, F, T, Args> Clone for FnService<K, F, T, Args> {
    fn clone(&self) -> Self {
        FnService {
            function: self.function.clone(),
            types: PhantomData,
        }
    }
}

impl<K, F, T, Args> fmt::Debug for FnService<K, F, T, Args> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnService")
    }
}

impl<K, F, T, Args> Service<Context> for FnService<K, F, T, Args>
where
    F: HandlerFn<T, Args>,
    T: Decode,
    K: OutputPolicy<F::Output>,
    Args: Extractors,
{
    type Response = Vec<Message>;
    type Error = BoxError;
    type Future = CallFuture<F::Future, K>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        // Decoding is the user's code too (a `Deserialize` impl): a panic there is a failed
        // attempt like any other.
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            T::decode(ctx.message()).map(|event| (event, Args::extract(&ctx)))
        }));
        match decoded {
            Ok(Ok((event, args))) => CallFuture::running(self.function.call(event, args)),
            Ok(Err(error)) => CallFuture::failed(Undecodable(error).into()),
            Err(panic) => CallFuture::failed(panic_error("decoding panicked", &*panic)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`FnService`] call.
    pub struct CallFuture<Fut, K> {
        #[pin]
        state: CallState<Fut, K>,
    }
}

pin_project_lite::pin_project! {
    #[project = CallProjection]
    enum CallState<Fut, K> {
        // The function runs.
        Running {
            #[pin]
            future: Fut,
            kind: PhantomData<fn() -> K>,
        },
        // Decoding failed; the error, until it is returned.
        Done { error: Option<BoxError> },
    }
}

impl<Fut, K> CallFuture<Fut, K> {
    fn running(future: Fut) -> Self {
        CallFuture {
            state: CallState::Running {
                future,
                kind: PhantomData,
            },
        }
    }

    fn failed(error: BoxError) -> Self {
        CallFuture {
            state: CallState::Done { error: Some(error) },
        }
    }
}

impl<Fut, K, O, E> Future for CallFuture<Fut, K>
where
    Fut: Future<Output = Result<O, E>>,
    E: Into<BoxError>,
    K: OutputPolicy<O>,
{
    type Output = Result<Vec<Message>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            CallProjection::Running { future, .. } => match future.poll(cx) {
                Poll::Ready(Ok(output)) => {
                    Poll::Ready(K::into_messages(output).map_err(BoxError::from))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
                Poll::Pending => Poll::Pending,
            },
            CallProjection::Done { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "a handler call was polled after it finished".into()))),
        }
    }
}

impl<F, K> fmt::Debug for CallFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallFuture")
    }
}

/// The error of a payload that could not be decoded into the handler's event: the message
/// goes to the dead letters at once, with 0 attempts.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Undecodable(pub(crate) Error);

/// The error for a panic: `what` panicked, and the panic's message.
pub(crate) fn panic_error(what: &str, panic: &(dyn Any + Send)) -> BoxError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("{what}: {text}").into()
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
    note = "annotate an `async fn(event: T, args…) -> Result<_, E>` (after the event, up to 6 of `Context`, `MessageId`, `Key`, `Attempt`, `Headers` and `State<S>`) with `#[handler(destination = \"…\")]`, or build one with `Handler::from_fn`; if it has `#[handler]` already, the error at the function says what is wrong",
    note = "a `#[handler(batch = …)]` function or a `BatchHandler` takes many events at once: register it with `App::batch_handler`"
)]
pub trait IntoHandler<Args> {
    /// The handler's service.
    type Service: HandlerService;
    /// What app state the handler needs ([`NoState`], or
    /// [`StateOf<S>`](crate::StateOf)).
    type Requires;

    /// The handler.
    fn into_handler(self) -> Handler<Self::Service, Self::Requires>;
}

impl<S: HandlerService, R> IntoHandler<()> for Handler<S, R> {
    type Service = S;
    type Requires = R;

    fn into_handler(self) -> Handler<S, R> {
        self
    }
}

/// What the `#[handler]` macro attaches to a function: its spec and its kind.
#[doc(hidden)]
pub trait Route: 'static {
    /// [`Sink`] or [`Processor`] for a handler of one event at a time (see [`IntoHandler`]),
    /// [`BatchSink`](crate::BatchSink) for a batch handler (see
    /// [`IntoBatchHandler`](crate::IntoBatchHandler)).
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
