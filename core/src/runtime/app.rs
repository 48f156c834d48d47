//! The app: registered handlers running on one channel.

use super::context::{Context, Extensions, Shared};
use super::handler::{Handler, HandlerFuture};
use super::retry::RetryPolicy;
use super::IntoHandler;
use crate::channel::{Channel, Consumer, Producer, Subscription};
use crate::delivery::Delivery;
use crate::error::{BoxError, Error, Result};
use crate::idempotency::{AppStore, Claim, IdempotencyStore, MemoryIdempotencyStore, ScopedStore};
use crate::message::{header, Message};
use crate::publisher::Publisher;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};

/// Handlers running on one channel: the service a user writes.
///
/// For each handler it opens a consumer on (destination, group) and, for each delivery:
/// claims the message id in the idempotency store (a handled id is acknowledged and
/// skipped), decodes the event, calls the handler with bounded concurrency, publishes
/// what a processor returns, then acknowledges. A failing handler is retried in process
/// with backoff ([`RetryPolicy`]); after the last attempt the message goes to the dead
/// letters with headers saying why, and is acknowledged. A payload that cannot be decoded
/// goes to the dead letters at once. A panicking handler counts as a failing one.
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{App, Context, Handler, HandlerSpec, RetryPolicy};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// let app = App::new(channel)
///     .concurrency(8)
///     .retry(RetryPolicy::new(5))
///     .handler(Handler::from_fn(
///         HandlerSpec::new("bill", "orders").group("billing"),
///         |event: OrderPlaced, _ctx: Context| async move {
///             println!("billing order {}", event.order_id);
///             Ok::<_, std::io::Error>(())
///         },
///     ));
/// let running = app.start().await?;
/// running.publisher().publish("orders", &serde_json::json!({ "order_id": 1 })).await?;
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct App {
    channel: Arc<dyn Channel>,
    handlers: Vec<Handler>,
    concurrency: usize,
    retry: RetryPolicy,
    shutdown_timeout: Duration,
    idempotency: AppStore,
    extensions: Extensions,
    publisher: Publisher,
}

impl App {
    /// The default number of messages each handler works on at once.
    pub const DEFAULT_CONCURRENCY: usize = 16;
    /// The default time [`RunningApp::shutdown`] lets in-flight messages finish.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

    /// An app on this channel, with no handlers yet.
    pub fn new(channel: impl Channel) -> Self {
        let channel: Arc<dyn Channel> = Arc::new(channel);
        App {
            publisher: Publisher::new(channel.clone()),
            channel,
            handlers: Vec::new(),
            concurrency: Self::DEFAULT_CONCURRENCY,
            retry: RetryPolicy::default(),
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
            idempotency: AppStore::new(MemoryIdempotencyStore::new()),
            extensions: Extensions::default(),
        }
    }

    /// Registers a handler: a `#[handler]` function, or a [`Handler`] built by hand.
    pub fn handler<Args>(mut self, handler: impl IntoHandler<Args>) -> Self {
        self.handlers.push(handler.into_handler());
        self
    }

    /// How many messages each handler works on at once, unless its spec says otherwise.
    /// Also the prefetch of its consumer.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The retry policy of handlers whose spec sets none.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long [`RunningApp::shutdown`] lets in-flight messages finish before it hands
    /// them back to the broker (they are delivered again, not lost).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Replaces the in-memory idempotency store.
    pub fn idempotency(mut self, store: impl IdempotencyStore + 'static) -> Self {
        self.idempotency = AppStore::new(store);
        self
    }

    /// Shares a value with every handler, found with [`Context::extension`].
    pub fn extension<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// A publisher on the app's channel (the one handlers get through their context).
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Opens every handler's consumer and starts consuming. When this returns, every
    /// subscription is active.
    pub async fn start(self) -> Result<RunningApp> {
        self.validate()?;
        let shared = Arc::new(Shared {
            publisher: Some(self.publisher.clone()),
            extensions: self.extensions,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let mut pending = Vec::with_capacity(self.handlers.len());
        for handler in self.handlers {
            let spec = handler.spec();
            let concurrency = spec.concurrency_or(self.concurrency);
            let subscription = Subscription::new(spec.destination())
                .optional_group(spec.group_name().map(str::to_owned))
                .prefetch(u16::try_from(concurrency).unwrap_or(u16::MAX));
            let consumer = self.channel.consumer(&subscription).await?;
            let output = match spec.output_destination() {
                Some(output) => Some(self.publisher.producer(output).await?),
                None => None,
            };
            let scope: Arc<str> = format!(
                "{}/{}/{}",
                spec.destination(),
                spec.group_name().unwrap_or_default(),
                spec.name()
            )
            .into();
            let worker = Worker {
                retry: spec.retry_or(self.retry),
                handler,
                idempotency: self.idempotency.scoped(scope.clone()),
                scope,
                output,
                shared: shared.clone(),
                abort: abort_rx.clone(),
            };
            pending.push((Arc::new(worker), consumer, concurrency));
        }
        let workers = pending
            .into_iter()
            .map(|(worker, consumer, concurrency)| {
                tokio::spawn(consume(worker, consumer, concurrency, stop_rx.clone()))
            })
            .collect();
        Ok(RunningApp {
            workers,
            stop,
            abort,
            shutdown_timeout: self.shutdown_timeout,
            publisher: self.publisher,
        })
    }

    /// Starts, runs until `signal` completes (for example `tokio::signal::ctrl_c()`), then
    /// shuts down gracefully.
    pub async fn run_until<S: Future + Send>(self, signal: S) -> Result<()> {
        let running = self.start().await?;
        signal.await;
        running.shutdown().await
    }

    fn validate(&self) -> Result<()> {
        let mut seen = HashSet::new();
        for handler in &self.handlers {
            let spec = handler.spec();
            crate::validate_destination(spec.destination())?;
            if let Some(group) = spec.group_name() {
                crate::validate_group(group)?;
            }
            if let Some(output) = spec.output_destination() {
                crate::validate_destination(output)?;
            }
            let name = spec.name();
            if spec.concurrency_or(self.concurrency) == 0 {
                return Err(Error::Config(format!(
                    "handler {name} has a concurrency of 0; it would never run"
                )));
            }
            match (handler.publishes(), spec.output_destination()) {
                (true, None) => {
                    return Err(Error::Config(format!(
                        "handler {name} returns events but has no output destination; set `output`"
                    )))
                }
                (false, Some(output)) => {
                    return Err(Error::Config(format!(
                        "handler {name} has output {output:?} but returns no events; return the event to publish"
                    )))
                }
                _ => {}
            }
            if !seen.insert((name, spec.destination(), spec.group_name())) {
                return Err(Error::Config(format!(
                    "handler {name} is registered twice on {} / {:?}",
                    spec.destination(),
                    spec.group_name()
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("channel", &self.channel)
            .field("handlers", &self.handlers)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A started [`App`]. Call [`shutdown`](Self::shutdown) to stop it gracefully and wait for
/// that. Dropping it stops it too, without waiting: its handlers take no new deliveries,
/// and the ones in flight finish in the background.
#[must_use = "dropping a RunningApp stops its handlers; keep it, and call shutdown to stop"]
pub struct RunningApp {
    workers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    shutdown_timeout: Duration,
    publisher: Publisher,
}

impl RunningApp {
    /// The app's publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Stops taking new deliveries, lets in-flight ones finish and be acknowledged within the
    /// shutdown timeout, then closes the consumers. Deliveries still running at the timeout
    /// are handed back to the broker unacknowledged (delivered again later, never lost), and
    /// the result is an [`Error::Timeout`].
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.send_replace(true);
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut workers = std::mem::take(&mut self.workers).into_iter();
        while let Some(mut worker) = workers.next() {
            match timeout_at(deadline, &mut worker).await {
                Ok(joined) => log_join(joined),
                Err(_) => {
                    self.abort.send_replace(true);
                    // Aborted deliveries are nacked right away; allow the broker a moment.
                    let grace = Instant::now() + ABORT_GRACE;
                    let _ = timeout_at(grace, worker).await.map(log_join);
                    for rest in workers {
                        let _ = timeout_at(grace, rest).await.map(log_join);
                    }
                    return Err(Error::Timeout {
                        what:
                            "graceful shutdown (in-flight messages were handed back to the broker)"
                                .into(),
                        after: self.shutdown_timeout,
                    });
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningApp")
            .field("handlers", &self.workers.len())
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

/// How long aborted deliveries get to be handed back after the shutdown timeout.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// The longest pause between two failed `receive` calls (a broker outage).
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(5);

fn log_join(joined: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        tracing::error!(error = %err, "a handler's consumer task failed");
    }
}

/// One handler's consumer loop: take a permit, receive, process in a task of its own.
async fn consume(
    worker: Arc<Worker>,
    mut consumer: Box<dyn Consumer>,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut failures = 0u32;
    // The fast paths first: a free permit is taken without waiting, and a delivery that is
    // ready is taken without listening for the stop signal (which is checked before). One
    // at a time, deliveries are processed right here: no task, no permit.
    loop {
        let permit = if concurrency == 1 {
            None
        } else if let Ok(permit) = permits.clone().try_acquire_owned() {
            Some(permit)
        } else {
            let permit = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                permit = permits.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break };
            Some(permit)
        };
        if stop_requested(&stop) {
            break;
        }
        let received = tokio::select! {
            biased;
            received = consumer.receive() => received,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        match received {
            Ok(delivery) => {
                failures = 0;
                let Some(permit) = permit else {
                    // In-flight work still finishes on stop: the loop only ends after it.
                    worker.process(delivery).await;
                    continue;
                };
                let worker = worker.clone();
                tokio::spawn(async move {
                    worker.process(delivery).await;
                    drop(permit);
                });
            }
            Err(Error::ShutDown(what)) => {
                tracing::debug!(
                    handler = worker.handler.spec().name(),
                    "{what} is shut down"
                );
                break;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let pause = RetryPolicy::default()
                    .backoff(Duration::from_millis(100), MAX_RECEIVE_BACKOFF)
                    .delay_after(failures);
                tracing::warn!(
                    handler = worker.handler.spec().name(),
                    error = %err,
                    retry_in = ?pause,
                    "receive failed"
                );
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    () = sleep(pause) => {}
                }
            }
        }
    }
    // In-flight deliveries are settled before the consumer closes: closing it first would
    // hand them back to the broker.
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    drop(consumer);
}

/// Whether the app was stopped (or its [`RunningApp`] dropped).
fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Everything needed to process one handler's deliveries.
struct Worker {
    handler: Handler,
    scope: Arc<str>,
    retry: RetryPolicy,
    output: Option<Arc<dyn Producer>>,
    idempotency: ScopedStore,
    shared: Arc<Shared>,
    abort: watch::Receiver<bool>,
}

/// How the handler calls for one delivery ended.
enum Outcome {
    Handled,
    Undecodable(Error),
    Failed { error: BoxError, attempts: u32 },
    Aborted,
}

impl Worker {
    async fn process(&self, delivery: Delivery) {
        let message = delivery.shared_message().clone();
        let id = message.id();
        match self.idempotency.begin(id).await {
            Ok(Claim::Acquired) => {}
            Ok(Claim::AlreadyHandled) => {
                tracing::debug!(message_id = %id, "already handled; acknowledging");
                self.report(delivery.ack().await, id, "ack");
                return;
            }
            Err(err) => {
                tracing::warn!(message_id = %id, error = %err, "idempotency store failed; the message will come back");
                self.report(
                    delivery.nack(Some(Duration::from_secs(1))).await,
                    id,
                    "nack",
                );
                return;
            }
        }
        if delivery.attempt() > self.retry.max_deliveries {
            let reason = format!(
                "delivered {} times without being settled (did the handler crash the process?)",
                delivery.attempt()
            );
            self.abandon(id).await;
            self.dead_letter(delivery, &reason, 0).await;
            return;
        }
        let outcome = self.call_with_retries(&delivery).await;
        match outcome {
            Outcome::Handled => {
                if let Err(err) = self.idempotency.complete(id).await {
                    tracing::warn!(message_id = %id, error = %err, "idempotency store failed to record the message as handled");
                }
            }
            _ => self.abandon(id).await,
        }
        match outcome {
            Outcome::Handled => self.report(delivery.ack().await, id, "ack"),
            Outcome::Undecodable(error) => {
                self.dead_letter(delivery, &error_chain(&error), 0).await;
            }
            Outcome::Failed { error, attempts } => {
                self.dead_letter(delivery, &error_chain(&*error), attempts)
                    .await;
            }
            Outcome::Aborted => self.report(delivery.nack(None).await, id, "nack"),
        }
    }

    /// Releases the claim on `id` without recording it as handled.
    async fn abandon(&self, id: &str) {
        if let Err(err) = self.idempotency.abandon(id).await {
            tracing::warn!(message_id = %id, error = %err, "idempotency store failed to release a claim");
        }
    }

    async fn call_with_retries(&self, delivery: &Delivery) -> Outcome {
        let mut abort = self.abort.clone();
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let ctx = Context::new(
                delivery.shared_message().clone(),
                attempt,
                delivery.origin().clone(),
                self.shared.clone(),
            );
            let call = match self.handler.call(delivery.message(), ctx) {
                Ok(call) => call,
                Err(error) => return Outcome::Undecodable(error),
            };
            // The handler first: one that finishes at once never listens for the abort.
            let result = tokio::select! {
                biased;
                result = self.run_once(call, delivery.message()) => result,
                _ = abort.wait_for(|aborted| *aborted) => return Outcome::Aborted,
            };
            let error = match result {
                Ok(()) => return Outcome::Handled,
                Err(error) if attempt >= max_attempts => {
                    return Outcome::Failed {
                        error,
                        attempts: attempt,
                    }
                }
                Err(error) => error,
            };
            let pause = self.retry.delay_after(attempt);
            tracing::debug!(
                handler = self.handler.spec().name(),
                message_id = delivery.message().id(),
                attempt,
                error = %error,
                retry_in = ?pause,
                "handler failed; retrying"
            );
            tokio::select! {
                biased;
                _ = abort.wait_for(|aborted| *aborted) => return Outcome::Aborted,
                () = sleep(pause) => {}
            }
            attempt += 1;
        }
    }

    /// Calls the handler once (a panic is an error), then publishes what it returned.
    async fn run_once(&self, call: HandlerFuture, input: &Message) -> Result<(), BoxError> {
        let outputs = CatchUnwind { inner: call }.await?;
        let Some(producer) = &self.output else {
            return Ok(());
        };
        let outputs = outputs
            .into_iter()
            .enumerate()
            .map(|(index, output)| self.derive_output(input, index, output))
            .collect::<Vec<_>>();
        if outputs.is_empty() {
            return Ok(());
        }
        producer.send_batch(outputs).await.map_err(BoxError::from)
    }

    /// An output's id is derived from the input's, so a retried processor publishes
    /// duplicates that downstream idempotency recognises, not new messages.
    fn derive_output(&self, input: &Message, index: usize, output: Message) -> Message {
        let name = format!("{}/{}/{index}", self.scope, input.id());
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
        let key = output.key().or(input.key()).map(str::to_owned);
        output
            .with_id(id.to_string())
            .with_optional_key(key)
            .with_header(header::CAUSATION_ID, input.id())
    }

    async fn dead_letter(&self, delivery: Delivery, reason: &str, attempts: u32) {
        let id = delivery.message().id().to_owned();
        tracing::warn!(
            handler = self.handler.spec().name(),
            destination = delivery.destination(),
            group = delivery.group(),
            message_id = %id,
            attempts,
            reason,
            "dead-lettering message"
        );
        self.report(
            delivery.dead_letter(reason, attempts).await,
            &id,
            "dead-letter",
        );
    }

    fn report(&self, settled: Result<()>, id: &str, what: &str) {
        if let Err(err) = settled {
            tracing::warn!(
                handler = self.handler.spec().name(),
                message_id = %id,
                error = %err,
                "{what} failed; the broker will deliver the message again"
            );
        }
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Turns a panic while polling the handler's future into an error.
struct CatchUnwind {
    inner: HandlerFuture,
}

impl Future for CatchUnwind {
    type Output = Result<Vec<Message>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Poll::Ready(Err(format!("handler panicked: {text}").into()))
            }
        }
    }
}
