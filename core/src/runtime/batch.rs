//! Batch handlers: one call for many messages, each message still settled on its own.

use super::app::{aborted, broker_backoff, error_chain, stopped, CatchUnwind, Consume, Settings};
use super::bindings::BindingCell;
use super::context::Context;
use super::failure::Disposition;
use super::handler::{panic_error, HandlerSpec, Route, Routed, Undecodable};
use crate::channel::Consumer;
use crate::codec::Decode;
use crate::delivery::{Acknowledger, Delivery};
use crate::error::{BoxError, Error};
use crate::idempotency::Claim;
use crate::message::Message;
use crate::metrics::Taken;
use crate::telemetry::{self, Processing};
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument, Span};

/// What a batch handler's service takes: the [`Context`] of each message of the batch, in
/// the order received.
#[derive(Debug, Clone)]
pub struct Batch {
    contexts: Vec<Context>,
}

impl Batch {
    /// A batch of these messages' contexts (to call a batch handler's service directly, in
    /// a unit test of a layer, say).
    pub fn new(contexts: Vec<Context>) -> Self {
        Batch { contexts }
    }

    /// The contexts, one per message.
    pub fn contexts(&self) -> &[Context] {
        &self.contexts
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}

/// The messages of a batch that failed, each with its own error; the others of the batch
/// were handled.
///
/// A batch handler returns it (as its error) to fail only some of the events it was
/// given, by their index in its `Vec`: the others are acknowledged, and the failed ones are
/// retried as a smaller batch, or dead-lettered, each as its own error says (see
/// [`NonRetryable`](crate::NonRetryable)). Any other error fails every event of the call.
///
/// ```
/// use event_binder_core::BatchFailure;
///
/// let failure = BatchFailure::new()
///     .fail(2, "no such product")
///     .fail(5, "the warehouse is closed");
/// assert_eq!(failure.len(), 2);
/// assert_eq!(failure.to_string(), "2 messages of the batch failed");
/// ```
#[derive(Debug, Default)]
pub struct BatchFailure {
    failed: Vec<(usize, SharedError)>,
}

/// One error, shared by the messages it failed.
type SharedError = Arc<dyn StdError + Send + Sync>;

impl BatchFailure {
    /// No failure yet.
    pub fn new() -> Self {
        BatchFailure::default()
    }

    /// Fails the event at `index` with `error`.
    pub fn fail(mut self, index: usize, error: impl Into<BoxError>) -> Self {
        self.failed.push((index, Arc::from(error.into())));
        self
    }

    /// How many events failed.
    pub fn len(&self) -> usize {
        self.failed.len()
    }

    /// Whether no event failed.
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failed.as_slice() {
            [(_, only)] => write!(f, "1 message of the batch failed: {only}"),
            failed => write!(f, "{} messages of the batch failed", failed.len()),
        }
    }
}

impl StdError for BatchFailure {}

/// A handler that takes many events at once: `(events: Vec<T>, batch: Batch) -> Result<(),
/// E>`, for work that is cheaper in bulk (one database round trip, one bulk request).
///
/// The runtime collects up to the spec's [`batch`](HandlerSpec::batch) size of messages, or
/// what came within its wait after the first, and still treats each message on its own:
/// each is claimed in the idempotency store (one already handled is acknowledged and left
/// out), decoded (one that cannot be is dead-lettered and left out), and acknowledged or
/// dead-lettered by itself. A call that succeeds acknowledges every event of it. A call
/// that fails with a [`BatchFailure`] acknowledges the events it does not name; any other
/// error fails every event. Failed events are tried again together, as a smaller batch,
/// after the [`RetryPolicy`](crate::RetryPolicy)'s backoff (always in process), until each
/// succeeds or its last attempt dead-letters it with its own error.
///
/// A batch handler handles one batch at a time and publishes nothing; register it with
/// [`App::batch_handler`](crate::App::batch_handler). Messages with the same id in one
/// batch are handled once.
///
/// Most are written with the `#[handler]` macro (the facade's `event_binder::handler`):
/// with `batch = 100`, and optionally `batch_wait = "50ms"` (else
/// [`DEFAULT_WAIT`](Self::DEFAULT_WAIT)), it makes an `async fn(events: Vec<T>) ->
/// Result<(), E>`, or one of `(events: Vec<T>, batch: Batch)`, a batch handler that
/// registers as it is ([`IntoBatchHandler`] makes it a `BatchHandler`, to add layers):
///
/// ```text
/// #[handler(destination = "orders", group = "stock", batch = 100, batch_wait = "50ms")]
/// async fn reserve(orders: Vec<OrderPlaced>) -> Result<(), StockError> { … }
///
/// App::new(channel).batch_handler(reserve)
/// App::new(channel).batch_handler(reserve.into_batch_handler().layer(my_layer))
/// ```
///
/// [`from_fn`](Self::from_fn) builds one from a closure, for names chosen at run time:
///
/// ```
/// use event_binder_core::{Batch, BatchHandler, HandlerSpec};
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// let handler = BatchHandler::from_fn(
///     HandlerSpec::new("stock", "orders").group("stock").batch(64, Duration::from_millis(20)),
///     |orders: Vec<OrderPlaced>, _batch: Batch| async move {
///         println!("reserving {} orders in one go", orders.len());
///         Ok::<_, std::io::Error>(())
///     },
/// );
/// assert_eq!(handler.spec().name(), "stock");
/// ```
#[derive(Clone)]
pub struct BatchHandler<S> {
    spec: HandlerSpec,
    service: S,
}

/// What every batch handler is at run time: a [`tower::Service`](tower_service::Service)
/// taking a [`Batch`]. An error fails the whole batch, unless it is a [`BatchFailure`].
pub trait BatchService:
    Service<Batch, Response = (), Error = BoxError, Future: Send> + Clone + Send + Sync + 'static
{
}

impl<S> BatchService for S where
    S: Service<Batch, Response = (), Error = BoxError, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

impl BatchHandler<()> {
    /// The most messages in one batch when the spec sets no [`batch`](HandlerSpec::batch)
    /// limits.
    pub const DEFAULT_SIZE: usize = 100;
    /// The longest a batch waits for more messages after its first, when the spec sets no
    /// [`batch`](HandlerSpec::batch) limits, or `#[handler(batch = …)]` no `batch_wait`.
    pub const DEFAULT_WAIT: Duration = Duration::from_millis(100);

    /// A batch handler from a closure or function `(events: Vec<T>, batch: Batch) ->
    /// Result<(), E>`; `batch` holds the context of each event, in the same order.
    pub fn from_fn<F, T, Fut, E>(spec: HandlerSpec, function: F) -> BatchHandler<BatchFn<F, T>>
    where
        F: Fn(Vec<T>, Batch) -> Fut + Send + Sync + 'static,
        T: Decode + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        BatchHandler {
            spec,
            service: BatchFn::new(function),
        }
    }
}

impl<S> BatchHandler<S> {
    /// Where the handler reads, and its batch limits.
    pub fn spec(&self) -> &HandlerSpec {
        &self.spec
    }

    /// Replaces the spec.
    pub fn with_spec(mut self, spec: HandlerSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Wraps the handler's service in a tower layer; each call it sees is one attempt of
    /// one batch.
    pub fn layer<L: Layer<S>>(self, layer: L) -> BatchHandler<L::Service> {
        BatchHandler {
            spec: self.spec,
            service: layer.layer(self.service),
        }
    }

    pub(super) fn into_parts(self) -> (HandlerSpec, S) {
        (self.spec, self.service)
    }
}

impl<S> fmt::Debug for BatchHandler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchHandler")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// A batch handler function of event type `T`: a closure or function `(Vec<T>, Batch) ->
/// impl Future<Output = Result<(), E>>` (`Args` is `(Batch,)`), or `(Vec<T>) -> …` (`Args`
/// is `()`), which includes `#[handler(batch = …)]` functions. Implemented for you; it
/// names the future a function returns.
pub trait BatchHandlerFn<T, Args>: Send + Sync + 'static {
    /// What a failed call returns; a [`BatchFailure`] fails only the events it names.
    type Error: Into<BoxError> + 'static;
    /// The future a call returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Calls the function with the events, and the batch of their contexts if it takes
    /// them.
    fn call(&self, events: Vec<T>, batch: Batch) -> Self::Future;
}

impl<F, T, Fut, E> BatchHandlerFn<T, ()> for F
where
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    type Error = E;
    type Future = Fut;

    fn call(&self, events: Vec<T>, _batch: Batch) -> Fut {
        self(events)
    }
}

impl<F, T, Fut, E> BatchHandlerFn<T, (Batch,)> for F
where
    F: Fn(Vec<T>, Batch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    type Error = E;
    type Future = Fut;

    fn call(&self, events: Vec<T>, batch: Batch) -> Fut {
        self(events, batch)
    }
}

/// The kind of a `#[handler(batch = …)]` function: a batch handler, which publishes
/// nothing. Registered with [`App::batch_handler`](crate::App::batch_handler) (through
/// [`IntoBatchHandler`]), never with [`App::handler`](crate::App::handler).
#[derive(Debug)]
pub enum BatchSink {}

/// Turns what is given to [`App::batch_handler`](crate::App::batch_handler) into a
/// [`BatchHandler`]: a `#[handler(batch = …)]` function, or a [`BatchHandler`] built by
/// hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a batch handler",
    note = "annotate an `async fn(events: Vec<T>) -> Result<(), E>` (optionally taking `batch: Batch` after the events) with `#[handler(destination = \"…\", batch = 100)]`, or build one with `BatchHandler::from_fn`; a `#[handler]` without `batch` takes one event at a time: register it with `App::handler`; if it has `#[handler(batch = …)]` already, the error at the function says what is wrong"
)]
pub trait IntoBatchHandler<Args> {
    /// The batch handler's service.
    type Service: BatchService;

    /// The batch handler.
    fn into_batch_handler(self) -> BatchHandler<Self::Service>;
}

impl<S: BatchService> IntoBatchHandler<()> for BatchHandler<S> {
    type Service = S;

    fn into_batch_handler(self) -> BatchHandler<S> {
        self
    }
}

impl<Func, R, T, Fut, E> IntoBatchHandler<(R, T)> for Func
where
    Func: Fn(Vec<T>) -> Routed<R, Fut> + Send + Sync + 'static,
    R: Route<Kind = BatchSink>,
    T: Decode + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    type Service = BatchFn<Func, T, ()>;

    fn into_batch_handler(self) -> BatchHandler<Self::Service> {
        BatchHandler {
            spec: R::spec(),
            service: BatchFn::new(self),
        }
    }
}

impl<Func, R, T, Fut, E> IntoBatchHandler<(R, T, Batch)> for Func
where
    Func: Fn(Vec<T>, Batch) -> Routed<R, Fut> + Send + Sync + 'static,
    R: Route<Kind = BatchSink>,
    T: Decode + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    type Service = BatchFn<Func, T, (Batch,)>;

    fn into_batch_handler(self) -> BatchHandler<Self::Service> {
        BatchHandler {
            spec: R::spec(),
            service: BatchFn::new(self),
        }
    }
}

/// The service of a batch handler function (a [`BatchHandlerFn`]): decodes each event,
/// calls the function with those that decoded, and fails the others (to be dead-lettered
/// at once).
pub struct BatchFn<F, T, Args = (Batch,)> {
    function: Arc<F>,
    event: PhantomData<fn(T, Args)>,
}

impl<F, T, Args> BatchFn<F, T, Args> {
    fn new(function: F) -> Self {
        BatchFn {
            function: Arc::new(function),
            event: PhantomData,
        }
    }
}

impl<F, T, Args> Clone for BatchFn<F, T, Args> {
    fn clone(&self) -> Self {
        BatchFn {
            function: self.function.clone(),
            event: PhantomData,
        }
    }
}

impl<F, T, Args> fmt::Debug for BatchFn<F, T, Args> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchFn")
    }
}

impl<F, T, Args> Service<Batch> for BatchFn<F, T, Args>
where
    F: BatchHandlerFn<T, Args>,
    T: Decode + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    /// One allocation per batch, not per message.
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        let mut failure = BatchFailure::new();
        let mut events = Vec::with_capacity(batch.len());
        let mut decoded = Vec::with_capacity(batch.len());
        // Where each event given to the function is in the batch.
        let mut positions = Vec::with_capacity(batch.len());
        for (index, ctx) in batch.contexts.into_iter().enumerate() {
            let event = std::panic::catch_unwind(AssertUnwindSafe(|| T::decode(ctx.message())));
            match event {
                Ok(Ok(event)) => {
                    events.push(event);
                    decoded.push(ctx);
                    positions.push(index);
                }
                Ok(Err(error)) => failure = failure.fail(index, Undecodable(error)),
                Err(panic) => {
                    failure = failure.fail(index, panic_error("decoding panicked", &*panic))
                }
            }
        }
        let call = (!events.is_empty())
            .then(|| BatchHandlerFn::call(&*self.function, events, Batch::new(decoded)));
        Box::pin(async move {
            if let Some(call) = call {
                if let Err(error) = call.await {
                    failure
                        .failed
                        .extend(fail_positions(error.into(), &positions));
                }
            }
            if failure.is_empty() {
                Ok(())
            } else {
                Err(failure.into())
            }
        })
    }
}

/// The failures of a call given the events at `positions` of the batch: those its
/// [`BatchFailure`] names, or all of them.
fn fail_positions(error: BoxError, positions: &[usize]) -> Vec<(usize, SharedError)> {
    match error.downcast::<BatchFailure>() {
        Ok(failure) => failure
            .failed
            .into_iter()
            .filter_map(|(index, error)| Some((*positions.get(index)?, error)))
            .collect(),
        Err(error) => {
            let shared: SharedError = Arc::from(error);
            positions
                .iter()
                .map(|&index| (index, shared.clone()))
                .collect()
        }
    }
}

/// One batch handler at run time.
pub(super) struct BatchWorker<S> {
    pub(super) service: S,
    pub(super) settings: Settings,
}

impl<S> BatchWorker<S> {
    fn limits(&self) -> (usize, Duration) {
        limits_of(&self.settings.spec)
    }
}

/// A batch handler's size and wait: its spec's, or the defaults.
pub(super) fn limits_of(spec: &HandlerSpec) -> (usize, Duration) {
    let (size, wait) = spec
        .batch_limits()
        .unwrap_or((BatchHandler::DEFAULT_SIZE, BatchHandler::DEFAULT_WAIT));
    (size.max(1), wait)
}

impl<S: BatchService> Consume for BatchWorker<S> {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn consume<Co: Consumer>(
        &self,
        mut consumer: Co,
        stop: watch::Receiver<bool>,
        cell: &BindingCell,
    ) -> Co {
        let (size, wait) = self.limits();
        let stop_seen = |stop: &watch::Receiver<bool>| stop.has_changed().unwrap_or(true);
        let mut stopping = pin!(stopped(stop.clone()));
        let mut failures = 0u32;
        let mut batch = Vec::with_capacity(size);
        // One timer for every batch, set when a batch gets its first message.
        let mut closing = pin!(sleep(Duration::ZERO));
        'receiving: loop {
            // Collect: up to `size`, and no longer than `wait` after the first.
            let mut open = false;
            while batch.len() < size && !stop_seen(&stop) {
                // What is there now first, with no future to make.
                let received = match consumer.try_receive() {
                    Some(received) => received,
                    None => tokio::select! {
                        biased;
                        received = consumer.receive() => received,
                        () = &mut stopping => break,
                        () = &mut closing, if open => break,
                    },
                };
                match received {
                    Ok(delivery) => {
                        if failures > 0 {
                            failures = 0;
                            cell.set_connected(true);
                        }
                        if !open {
                            open = true;
                            closing.as_mut().reset(Instant::now() + wait);
                        }
                        batch.push(delivery);
                    }
                    Err(Error::ShutDown(what)) => {
                        if !stop_seen(&stop) {
                            tracing::warn!(
                                handler = self.settings.spec.name(),
                                "{what} is shut down; the handler takes no more deliveries"
                            );
                        }
                        self.process_guarded(std::mem::take(&mut batch)).await;
                        break 'receiving;
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        cell.set_connected(false);
                        let pause = broker_backoff(failures);
                        tracing::warn!(handler = self.settings.spec.name(), error = %err, retry_in = ?pause, "receive failed");
                        tokio::select! {
                            () = &mut stopping => break,
                            () = sleep(pause) => {}
                        }
                    }
                }
            }
            // Deliveries taken are in flight: they are handled even when the app stops.
            if !batch.is_empty() {
                cell.received();
                self.process_guarded(std::mem::take(&mut batch)).await;
            }
            if stop_seen(&stop) {
                break;
            }
        }
        consumer
    }
}

impl<S: BatchService> BatchWorker<S> {
    /// Processes one batch; a panic is logged, and what was not settled goes back to the
    /// broker (its claims released).
    async fn process_guarded<A: Acknowledger>(&self, batch: Vec<Delivery<A>>) {
        let in_flight = self.settings.metrics.taken(batch.len());
        let span = match batch.first() {
            Some(first) => telemetry::process_span(
                self.settings.backend,
                first.destination(),
                first.group(),
                self.settings.spec.name(),
                Processing::Batch { count: batch.len() },
            ),
            None => Span::none(),
        };
        telemetry::link_each(&span, batch.iter().map(Delivery::message));
        let processed = CatchUnwind::new(self.process(batch, &in_flight)).instrument(span.clone());
        if let Err(panic) = processed.await {
            telemetry::record_error(&span, "panic");
            tracing::error!(
                handler = self.settings.spec.name(),
                error = %panic,
                "processing a batch panicked; its unsettled messages go back to the broker"
            );
        }
    }

    async fn process<A: Acknowledger>(&self, batch: Vec<Delivery<A>>, in_flight: &Taken<'_>) {
        let settings = &self.settings;
        let store = &settings.idempotency;
        // Every delivery in `claimed.pending` holds a claim on its id.
        let mut claimed = Claimed {
            settings,
            pending: VecDeque::with_capacity(batch.len()),
        };
        // Deliveries of an id already in this batch: settled once that one is.
        let mut copies: Vec<Delivery<A>> = Vec::new();
        let mut store_failed = false;
        for delivery in batch {
            let message = delivery.shared_message().clone();
            let id = message.id();
            // A store that cannot tell a held claim would make the copy wait for itself.
            let taken = || {
                claimed
                    .pending
                    .iter()
                    .any(|taken| taken.message().id() == id)
            };
            if !store.tells_held_claims() && taken() {
                copies.push(delivery);
                continue;
            }
            let claim = store.begin_unless_held(store.id(&message)).await;
            settings.store_answered(claim.is_ok());
            match claim {
                Ok(Some(Claim::Acquired)) => {}
                Ok(None) => {
                    copies.push(delivery);
                    continue;
                }
                Ok(Some(unclaimed)) => {
                    settings.settle_unclaimed(delivery, Ok(unclaimed)).await;
                    continue;
                }
                Err(err) => {
                    store_failed = true;
                    settings.settle_unclaimed(delivery, Err(err)).await;
                    continue;
                }
            }
            if let Some(reason) = settings.delivered_too_often(&delivery) {
                release(settings, &message, false).await;
                settings.dead_letter(delivery, &reason, 0).await;
                continue;
            }
            claimed.pending.push_back(delivery);
        }
        let mut abort = settings.abort.clone();
        let mut attempt = 1;
        while !claimed.pending.is_empty() {
            let contexts = claimed
                .pending
                .iter()
                .map(|delivery| {
                    Context::new(
                        delivery.shared_message().clone(),
                        attempt,
                        delivery.origin().clone(),
                        settings.shared.clone(),
                    )
                })
                .collect();
            let result = tokio::select! {
                biased;
                result = self.call(Batch::new(contexts)) => result,
                () = aborted(&mut abort) => break,
            };
            let mut errors: Vec<Option<SharedError>> = vec![None; claimed.pending.len()];
            if let Err(error) = result {
                let everything: Vec<usize> = (0..errors.len()).collect();
                for (index, error) in fail_positions(error, &everything) {
                    if let Some(slot) = errors.get_mut(index) {
                        *slot = Some(error);
                    }
                }
            }
            // What to do with each, decided before any is taken out of `claimed`.
            let mut pause = Duration::ZERO;
            let verdicts: Vec<Option<(SharedError, Option<u32>)>> = errors
                .into_iter()
                .map(|error| {
                    let error = error?;
                    let disposition = Disposition::of(&*error);
                    if disposition != Disposition::StoreFailed {
                        settings.metrics.failed();
                    }
                    let attempts = match disposition {
                        Disposition::Undecodable => Some(0),
                        Disposition::GiveUp => Some(attempt),
                        // The store, not the handler, failed: no attempt is used up.
                        Disposition::StoreFailed => {
                            pause = pause.max(settings.retry.delay_after(attempt));
                            None
                        }
                        _ if attempt >= settings.retry.max_attempts.max(1) => Some(attempt),
                        Disposition::RetryAfter(wait) => {
                            settings.metrics.retried();
                            pause = pause.max(wait);
                            None
                        }
                        Disposition::Retry => {
                            settings.metrics.retried();
                            pause = pause.max(settings.retry.delay_after(attempt));
                            None
                        }
                    };
                    Some((error, attempts))
                })
                .collect();
            // Each delivery leaves `claimed` only as its claim is released; the ones to
            // retry go back behind the others.
            // One clock reading for the round's handled deliveries, at the first.
            let mut acked_at = None;
            for verdict in verdicts {
                let Some(delivery) = claimed.pending.pop_front() else {
                    break;
                };
                let message = delivery.shared_message().clone();
                match verdict {
                    None => {
                        release(settings, &message, true).await;
                        settings.report(delivery.ack().await, message.id(), "ack");
                        in_flight.handled_at(&message, &mut acked_at);
                    }
                    Some((error, Some(attempts))) => {
                        release(settings, &message, false).await;
                        settings
                            .dead_letter(delivery, &error_chain(&*error), attempts)
                            .await;
                    }
                    Some((_, None)) => claimed.pending.push_back(delivery),
                }
            }
            if claimed.pending.is_empty() {
                break;
            }
            tracing::debug!(
                handler = settings.spec.name(),
                failed = claimed.pending.len(),
                attempt,
                retry_in = ?pause,
                "batch handler failed for some messages; retrying them"
            );
            tokio::select! {
                biased;
                () = aborted(&mut abort) => break,
                () = sleep(pause) => {}
            }
            attempt += 1;
        }
        // Aborted by the shutdown timeout: what is left goes back to the broker.
        while let Some(delivery) = claimed.pending.pop_front() {
            let message = delivery.shared_message().clone();
            release(settings, &message, false).await;
            settings.report(delivery.nack(None).await, message.id(), "nack");
        }
        // The original of each copy is settled now, handled or dead-lettered: one of
        // either is enough.
        for copy in copies {
            settings.metrics.duplicate();
            let id = copy.message().id().to_owned();
            settings.report(copy.ack().await, &id, "ack");
        }
        if store_failed {
            settings.pause_for_store().await;
        }
    }

    /// Calls the service once, within the handler's timeout; a panic fails the batch.
    async fn call(&self, batch: Batch) -> Result<(), BoxError> {
        CatchUnwind::new(async move {
            let mut service = self.service.clone();
            poll_fn(|cx| service.poll_ready(cx)).await?;
            let call = service.call(batch);
            match self.settings.spec.call_timeout() {
                None => call.await,
                Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| {
                    format!("the batch handler did not finish within its timeout of {limit:?}")
                })?,
            }
        })
        .await
        .and_then(|called| called)
    }
}

/// Records `message`'s id as handled (`handled`) or releases its claim.
async fn release(settings: &Settings, message: &Message, handled: bool) {
    let store = &settings.idempotency;
    let id = store.id(message);
    let (released, what) = if handled {
        (store.complete(id).await, "record the message as handled")
    } else {
        (store.abandon(id).await, "release a claim")
    };
    if let Err(err) = released {
        tracing::warn!(message_id = message.id(), error = %err, "idempotency store failed to {what}");
    }
}

/// The deliveries of a batch that hold a claim on their id; dropped (a panic, a cancelled
/// task) it releases the claims still held, so none stays "in progress" for ever.
struct Claimed<'a, A> {
    settings: &'a Settings,
    pending: VecDeque<Delivery<A>>,
}

impl<A> Drop for Claimed<'_, A> {
    fn drop(&mut self) {
        let store = &self.settings.idempotency;
        for delivery in &self.pending {
            store.abandon_in_background(store.id(delivery.message()));
        }
    }
}
