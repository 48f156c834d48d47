//! The app: registered handlers running on one channel.

use super::batch::{limits_of, BatchHandler, BatchService, BatchWorker, IntoBatchHandler};
use super::bindings::{BindingCell, BindingState, Bindings, EndsBinding, Health};
#[cfg(feature = "config")]
use super::config::Configuration;
use super::context::{Context, Extensions, Shared};
use super::extract::ProvidedBy;
use super::failure::Disposition;
use super::handler::{panic_error, Handler, HandlerService, HandlerSpec};
use super::retry::RetryPolicy;
use super::slots::Slots;
use super::IntoHandler;
use crate::channel::{Channel, Consumer, Producer, Subscription};
use crate::delivery::{Acknowledger, Delivery};
use crate::erased::{BoxChannel, BoxProducer};
use crate::error::{BoxError, Error, Result};
use crate::idempotency::{
    AppStore, Claim, IdempotencyStore, MemoryIdempotencyStore, ScopedStore, StoreId,
};
use crate::message::{header, Message};
use crate::metrics::{BindingMetrics, Taken};
use crate::publisher::Publisher;
use crate::telemetry::{self, Processing};
use std::collections::HashMap;
use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};
use tower_layer::{Identity, Layer, Stack};
use tracing::{Instrument, Span};

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
pub struct App<C, L = Identity, St = ()> {
    channel: Arc<C>,
    handlers: Vec<Box<dyn Registered<C>>>,
    concurrency: usize,
    retry: RetryPolicy,
    shutdown_timeout: Duration,
    idempotency: AppStore,
    extensions: Extensions,
    publisher: Publisher,
    layer: L,
    /// A handler registered before the last [`layer`](Self::layer), which it misses.
    missed_layer: Option<String>,
    /// What [`State`](crate::State) arguments get.
    state: St,
    /// Applied at start, to the handlers registered by then.
    #[cfg(feature = "config")]
    configuration: Option<Configuration>,
}

/// The defaults, the same for every channel (`App::DEFAULT_CONCURRENCY` names them with no
/// channel type).
impl App<BoxChannel> {
    /// The default number of messages each handler works on at once.
    pub const DEFAULT_CONCURRENCY: usize = 16;
    /// The default time [`RunningApp::shutdown`] lets in-flight messages finish.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
}

impl<C: Channel> App<C> {
    /// An app on this channel, with no handlers yet.
    pub fn new(channel: C) -> Self {
        let channel = Arc::new(channel);
        App {
            publisher: Publisher::new(channel.clone()),
            channel,
            handlers: Vec::new(),
            concurrency: App::DEFAULT_CONCURRENCY,
            retry: RetryPolicy::default(),
            shutdown_timeout: App::DEFAULT_SHUTDOWN_TIMEOUT,
            idempotency: AppStore::new(MemoryIdempotencyStore::new()),
            extensions: Extensions::default(),
            layer: Identity::new(),
            missed_layer: None,
            state: (),
            #[cfg(feature = "config")]
            configuration: None,
        }
    }
}

impl<C: Channel, L, St: Send + Sync + 'static> App<C, L, St> {
    /// Registers a handler: a `#[handler]` function, or a [`Handler`] built by hand. The
    /// app's layers (see [`layer`](Self::layer)) wrap it.
    ///
    /// A handler taking [`State<S>`](crate::State) needs the app's state to be an `S`
    /// ([`state`](Self::state)): the compiler checks it here.
    pub fn handler<Args, H>(mut self, handler: H) -> Self
    where
        H: IntoHandler<Args>,
        H::Requires: ProvidedBy<St> + 'static,
        L: Layer<H::Service>,
        L::Service: HandlerService,
    {
        let handler = handler.into_handler().layer(&self.layer);
        self.handlers.push(Box::new(handler));
        self
    }

    /// Registers a batch handler: a `#[handler(batch = …)]` function, or a [`BatchHandler`]
    /// built by hand. The app's layers do not wrap it (they take one message's
    /// [`Context`]; a batch handler's service takes a [`Batch`](crate::Batch)): give it its
    /// own with [`BatchHandler::layer`].
    pub fn batch_handler<Args, H>(mut self, handler: H) -> Self
    where
        H: IntoBatchHandler<Args>,
    {
        self.handlers.push(Box::new(handler.into_batch_handler()));
        self
    }

    /// Wraps every handler in a tower layer (a timeout, a concurrency or rate limit,
    /// tracing, your own), outside the layers of each [`Handler`] and of earlier calls.
    /// Add app-wide layers before the handlers: [`start`](Self::start) refuses an app
    /// with a handler registered before one of its layers, which that handler would miss.
    ///
    /// A layer sees every call of a handler (every attempt of every message) with the
    /// message's [`Context`] as the request. The runtime's own stages run around the
    /// layers, in this order for each delivery: claim the id in the idempotency store (a
    /// handled id is acknowledged and skipped), dead-letter a message delivered more than
    /// `max_deliveries` times, then for each attempt: the layers, decoding, the handler
    /// (within its timeout), publishing a processor's outputs; then the retries as the
    /// [`RetryPolicy`] says, and acknowledging or dead-lettering; last, recording the id
    /// as handled (or releasing the claim).
    ///
    /// ```
    /// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
    /// use event_binder_core::{App, Context, Handler, HandlerSpec};
    /// use tower_layer::layer_fn;
    ///
    /// let running = App::new(channel)
    ///     // Any `tower::Layer`; `layer_fn` makes one from a function.
    ///     .layer(layer_fn(|inner| inner))
    ///     .handler(Handler::from_fn(
    ///         HandlerSpec::new("bill", "orders").group("billing"),
    ///         |_order: serde_json::Value, _ctx: Context| async { Ok::<_, std::io::Error>(()) },
    ///     ))
    ///     .start()
    ///     .await?;
    /// running.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn layer<N>(self, layer: N) -> App<C, Stack<L, N>, St> {
        let missed_layer = self.missed_layer.clone().or_else(|| {
            self.handlers
                .last()
                .map(|handler| handler.spec().name().to_owned())
        });
        let mut app = self.rebuild(|inner, state| (Stack::new(inner, layer), state));
        app.missed_layer = missed_layer;
        app
    }

    /// Gives the app its state: a database pool, a client, configuration, which handlers
    /// take as a [`State<S>`](crate::State) argument (cloned for each call: share what is
    /// big behind an `Arc`, as pools do). A handler that takes a `State<S>` can only be
    /// registered once the app's state is an `S`.
    ///
    /// ```
    /// # fn demo(channel: impl event_binder_core::Channel) {
    /// use event_binder_core::{App, Handler, HandlerSpec, State};
    /// use std::sync::Arc;
    ///
    /// #[derive(Clone)]
    /// struct Billing { tax_percent: u32 }
    ///
    /// let app = App::new(channel)
    ///     .state(Arc::new(Billing { tax_percent: 20 }))
    ///     .handler(Handler::from_fn(
    ///         HandlerSpec::new("bill", "orders").group("billing"),
    ///         |total: u64, State(billing): State<Arc<Billing>>| async move {
    ///             println!("tax: {}", total * u64::from(billing.tax_percent) / 100);
    ///             Ok::<(), std::io::Error>(())
    ///         },
    ///     ));
    /// # let _ = app; }
    /// ```
    pub fn state<S: Clone + Send + Sync + 'static>(self, state: S) -> App<C, L, S> {
        self.rebuild(|layer, _| (layer, state))
    }

    /// The same app with another layer and state.
    fn rebuild<L2, St2>(self, parts: impl FnOnce(L, St) -> (L2, St2)) -> App<C, L2, St2> {
        let (layer, state) = parts(self.layer, self.state);
        App {
            channel: self.channel,
            handlers: self.handlers,
            concurrency: self.concurrency,
            retry: self.retry,
            shutdown_timeout: self.shutdown_timeout,
            idempotency: self.idempotency,
            extensions: self.extensions,
            publisher: self.publisher,
            layer,
            missed_layer: self.missed_layer,
            state,
            #[cfg(feature = "config")]
            configuration: self.configuration,
        }
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

    /// Overrides the app's and its handlers' settings with a [`Configuration`] (a file,
    /// the environment) when the app [starts](Self::start), whenever the handlers are
    /// registered; a later call replaces an earlier one. A binding that names no handler is
    /// refused then, and what the overrides make of the app passes the same checks as
    /// settings made in code.
    ///
    /// ```
    /// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
    /// use event_binder_core::figment::Figment;
    /// use event_binder_core::{App, Configuration, Context, Handler, HandlerSpec};
    ///
    /// let configuration =
    ///     Configuration::from_figment(Figment::new().merge(("bindings.bill.group", "billing-v2")))?;
    /// let running = App::new(channel)
    ///     .configure(configuration)
    ///     .handler(Handler::from_fn(
    ///         HandlerSpec::new("bill", "orders").group("billing"),
    ///         |_order: serde_json::Value, _ctx: Context| async { Ok::<_, std::io::Error>(()) },
    ///     ))
    ///     .start()
    ///     .await?;
    /// assert_eq!(running.bindings().status("bill")?.group.as_deref(), Some("billing-v2"));
    /// # running.shutdown().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "config")]
    pub fn configure(mut self, configuration: Configuration) -> Self {
        self.configuration = Some(configuration);
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
    ///
    /// Fails with [`Error::Config`] before opening anything when the app is not sound:
    /// invalid names, a zero concurrency, an invalid [`RetryPolicy`], a processor without
    /// an output (or an output without a processor), or two handlers on one destination
    /// and group (they would split its messages between them).
    pub async fn start(
        #[cfg_attr(not(feature = "config"), allow(unused_mut))] mut self,
    ) -> Result<RunningApp> {
        #[cfg(feature = "config")]
        self.apply_configuration()?;
        self.validate()?;
        let shared = Arc::new(Shared {
            publisher: Some(self.publisher.clone()),
            extensions: self.extensions,
            state: Some(Arc::new(self.state)),
            binding: None,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let mut pending = Vec::with_capacity(self.handlers.len());
        for handler in self.handlers {
            let spec = handler.spec();
            let concurrency = spec.concurrency_or(self.concurrency);
            // A batch handler holds a whole batch unacknowledged.
            let prefetch = if handler.is_batch() {
                limits_of(spec).0
            } else {
                concurrency
            };
            let subscription = Subscription::new(spec.destination())
                .optional_group(spec.group_name().map(str::to_owned))
                .prefetch(u16::try_from(prefetch).unwrap_or(u16::MAX));
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
            let retry = spec.retry_or(self.retry);
            let ordered = self.channel.orders_by_key(spec.destination());
            let retry_through_broker = retry.through_broker
                && retries_through_broker(&*self.channel, &subscription, spec.name());
            let settings = Settings {
                spec: spec.clone(),
                backend: self.channel.backend(),
                retry,
                retry_through_broker,
                idempotency: self.idempotency.scoped(scope.clone()),
                shared: Arc::new(Shared {
                    binding: Some((spec.clone(), scope.clone())),
                    ..Shared::clone(&shared)
                }),
                scope,
                output,
                abort: abort_rx.clone(),
                ordered,
                subscription,
                concurrency,
                store_failures: AtomicU32::new(0),
                metrics: BindingMetrics::new(spec.destination(), spec.group_name(), spec.name()),
            };
            pending.push((handler, settings, consumer));
        }
        let mut cells = Vec::with_capacity(pending.len());
        let workers = pending
            .into_iter()
            .map(|(handler, settings, consumer)| {
                let spec = &settings.spec;
                let cell = Arc::new(BindingCell::new(
                    spec.name(),
                    spec.destination(),
                    spec.group_name(),
                ));
                cells.push(cell.clone());
                tokio::spawn(handler.bind(
                    settings,
                    self.channel.clone(),
                    consumer,
                    stop_rx.clone(),
                    cell,
                ))
            })
            .collect();
        Ok(RunningApp {
            bindings: Bindings::new(cells),
            workers,
            stop,
            abort: Some(abort),
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

    /// Takes in the [`Configuration`]'s overrides, before [`validate`](Self::validate)
    /// checks what they make of the app.
    #[cfg(feature = "config")]
    fn apply_configuration(&mut self) -> Result<()> {
        let Some(configuration) = self.configuration.take() else {
            return Ok(());
        };
        self.concurrency = configuration.concurrency().unwrap_or(self.concurrency);
        self.shutdown_timeout = configuration
            .shutdown_timeout()
            .unwrap_or(self.shutdown_timeout);
        let handlers: Vec<_> = self
            .handlers
            .iter()
            .map(|handler| (handler.spec(), handler.is_batch()))
            .collect();
        let specs = configuration.apply(&handlers, self.retry)?;
        self.handlers = std::mem::take(&mut self.handlers)
            .into_iter()
            .zip(specs)
            .map(|(handler, spec)| handler.with_spec(spec))
            .collect();
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        self.retry.validate()?;
        if let Some(name) = &self.missed_layer {
            return Err(Error::Config(format!(
                "handler {name} is registered before a layer of the app, which would not wrap it; \
                 add the app's layers before its handlers"
            )));
        }
        let mut consumers: HashMap<(&str, &str), &str> = HashMap::new();
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
            match (spec.batch_limits(), handler.is_batch()) {
                (Some((0, _)), true) => {
                    return Err(Error::Config(format!(
                        "batch handler {name} has a batch size of 0; it would never run"
                    )))
                }
                (Some(_), false) => {
                    return Err(Error::Config(format!(
                        "handler {name} has batch limits but takes one event at a time; \
                         make it a BatchHandler, or drop the limits"
                    )))
                }
                _ => {}
            }
            spec.retry_or(self.retry)
                .validate()
                .map_err(|err| Error::Config(format!("handler {name}: {err}")))?;
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
            // Anonymous subscriptions each see every message; two members of one group in
            // one app would split the group's messages between two different handlers.
            let Some(group) = spec.group_name() else {
                continue;
            };
            if let Some(other) = consumers.insert((spec.destination(), group), name) {
                let destination = spec.destination();
                return Err(Error::Config(if other == name {
                    format!("handler {name} is registered twice on destination {destination:?}, group {group:?}")
                } else {
                    format!(
                        "handlers {other} and {name} both consume destination {destination:?} in group {group:?}, \
                         so each would get only part of its messages; give one of them another group"
                    )
                }));
            }
        }
        Ok(())
    }

    /// The AsyncAPI 3.0 document of the handlers registered so far (see
    /// [`asyncapi::Document`](crate::asyncapi::Document)): serve it, or check it in CI with
    /// AsyncAPI's tools.
    ///
    /// ```
    /// # async fn demo(channel: impl event_binder_core::Channel) {
    /// use event_binder_core::asyncapi::Info;
    /// use event_binder_core::{App, Context, Handler, HandlerSpec};
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct OrderPlaced { order_id: u64 }
    ///
    /// let app = App::new(channel).handler(Handler::from_fn(
    ///     HandlerSpec::new("bill", "orders").group("billing").payload::<OrderPlaced>(),
    ///     |_order: OrderPlaced, _ctx: Context| async { Ok::<_, std::io::Error>(()) },
    /// ));
    /// let doc = app.asyncapi(Info::new("billing", "1.0.0"));
    /// println!("{}", doc.to_json());
    /// # }
    /// ```
    #[cfg(feature = "asyncapi")]
    pub fn asyncapi(&self, info: crate::asyncapi::Info) -> crate::asyncapi::Document {
        crate::asyncapi::Document::from_specs(info, self.handlers.iter().map(|h| h.spec()))
    }
}

impl<C: Channel, L, St> fmt::Debug for App<C, L, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("channel", &self.channel)
            .field(
                "handlers",
                &self.handlers.iter().map(|h| h.spec()).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A started [`App`]. Call [`shutdown`](Self::shutdown) to stop it gracefully and wait for
/// that.
///
/// Dropping it stops it too, without waiting: its handlers take no new deliveries, and
/// the ones in flight finish in the background, each handler call running to its end.
/// What is still running after the shutdown timeout is handed back to the broker (and
/// delivered again), exactly as [`shutdown`](Self::shutdown) does; that needs the Tokio
/// runtime to go on running meanwhile. Dropped outside a runtime, in-flight handlers
/// finish with no timeout.
#[must_use = "dropping a RunningApp stops its handlers; keep it, and call shutdown to stop"]
pub struct RunningApp {
    bindings: Bindings,
    workers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// `None` once [`shutdown`](Self::shutdown) or `Drop` took it.
    abort: Option<watch::Sender<bool>>,
    shutdown_timeout: Duration,
    publisher: Publisher,
}

impl RunningApp {
    /// The app's publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Its bindings, one a handler: their health, and the switch that pauses, resumes,
    /// stops and starts each. The handle stays valid while the app runs; clone it freely.
    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }

    /// Whether every binding that should run does: [`Bindings::health`].
    pub fn health(&self) -> Health {
        self.bindings.health()
    }

    /// Stops taking new deliveries, lets in-flight ones finish and be acknowledged within the
    /// shutdown timeout, then closes the consumers. Deliveries still running at the timeout
    /// are handed back to the broker unacknowledged (delivered again later, never lost), and
    /// the result is an [`Error::Timeout`].
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.send_replace(true);
        let workers = std::mem::take(&mut self.workers);
        finish(workers, self.abort.take(), self.shutdown_timeout).await
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        let Some(abort) = self.abort.take() else {
            return;
        };
        self.stop.send_replace(true);
        let workers = std::mem::take(&mut self.workers);
        let timeout = self.shutdown_timeout;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = finish(workers, Some(abort), timeout).await {
                    tracing::warn!(error = %err, "stopping a dropped app");
                }
            });
        }
    }
}

/// Waits for every binding to finish its in-flight deliveries within `timeout`; past it,
/// tells the rest to hand theirs back (through `abort`) and gives them a moment for that.
async fn finish(
    workers: Vec<JoinHandle<()>>,
    abort: Option<watch::Sender<bool>>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut workers = workers.into_iter();
    while let Some(mut worker) = workers.next() {
        match timeout_at(deadline, &mut worker).await {
            Ok(joined) => log_join(joined),
            Err(_) => {
                if let Some(abort) = &abort {
                    abort.send_replace(true);
                }
                // Aborted deliveries are nacked right away; allow the broker a moment.
                let grace = Instant::now() + ABORT_GRACE;
                let _ = timeout_at(grace, worker).await.map(log_join);
                for rest in workers {
                    let _ = timeout_at(grace, rest).await.map(log_join);
                }
                return Err(Error::Timeout {
                    what: "graceful shutdown (in-flight messages were handed back to the broker)"
                        .into(),
                    after: timeout,
                });
            }
        }
    }
    Ok(())
}

impl fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningApp")
            .field("handlers", &self.workers.len())
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

/// How many deliveries the consume loop takes without waiting before it yields to the
/// scheduler (as Tokio's cooperative budget would make an awaiting loop do).
const FAST_PATH_BUDGET: u32 = 128;

/// How long aborted deliveries get to be handed back after the shutdown timeout.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// The longest pause between two failed attempts to receive or to open a consumer.
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(5);

fn log_join(joined: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        tracing::error!(error = %err, "a handler's consumer task failed");
    }
}

/// The pause after `failures` failed attempts in a row to reach the broker.
pub(super) fn broker_backoff(failures: u32) -> Duration {
    RetryPolicy::default()
        .backoff(Duration::from_millis(100), MAX_RECEIVE_BACKOFF)
        .delay_after(failures)
}

/// Waits until `abort` says so. A dropped sender is no abort: a dropped [`RunningApp`]
/// lets its handlers finish.
pub(super) async fn aborted(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|aborted| *aborted).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether the app was stopped (or its [`RunningApp`] dropped).
fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// What a handler's binding needs besides the handler itself.
pub(super) struct Settings {
    pub(super) spec: HandlerSpec,
    /// The channel's backend, for the spans.
    pub(super) backend: &'static str,
    pub(super) scope: Arc<str>,
    pub(super) retry: RetryPolicy,
    /// Whether the waits between attempts are taken by the broker (a nack with delay).
    pub(super) retry_through_broker: bool,
    pub(super) output: Option<BoxProducer>,
    pub(super) idempotency: ScopedStore,
    pub(super) shared: Arc<Shared>,
    pub(super) abort: watch::Receiver<bool>,
    /// Whether deliveries are placed on slots by key, keeping the backend's order per key
    /// through concurrent handling.
    pub(super) ordered: bool,
    pub(super) subscription: Subscription,
    pub(super) concurrency: usize,
    /// How many times in a row the idempotency store failed to answer a claim.
    pub(super) store_failures: AtomicU32,
    /// Taken here, once, so that a delivery only updates them.
    pub(super) metrics: BindingMetrics,
}

impl Settings {
    /// Counts the idempotency store's answer to a claim: a failure more in a row, or none.
    pub(super) fn store_answered(&self, answered: bool) {
        if answered {
            self.store_failures.store(0, Ordering::Relaxed);
        } else {
            self.store_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The pause after the store failed `store_failures` times in a row: the message waits
    /// that long in the broker, and the binding holds a slot that long, so a store that is
    /// down slows the binding down instead of spinning through its messages.
    fn store_backoff(&self) -> Duration {
        broker_backoff(self.store_failures.load(Ordering::Relaxed))
    }

    /// Waits out [`store_backoff`](Self::store_backoff), unless the app is aborted.
    pub(super) async fn pause_for_store(&self) {
        self.waited(self.store_backoff()).await;
    }

    /// Waits `pause`, unless the app is aborted first; whether it waited it out.
    async fn waited(&self, pause: Duration) -> bool {
        let mut abort = self.abort.clone();
        tokio::select! {
            () = sleep(pause) => true,
            () = aborted(&mut abort) => false,
        }
    }

    /// Asks the store for the claim of `id` again until it is acquired or found handled,
    /// waiting after each other answer (`first` is the first): after a failure, the store
    /// backoff; while another holder has it, the time it said. The delivery stays here
    /// meanwhile, holding its slot: handed back to the broker, each wait would count as a
    /// delivery, and `max_deliveries` of them would dead-letter a message that no handler
    /// ever saw (a store down for a minute, a crashed holder's lease). `Err` when the app
    /// was aborted first.
    async fn claim_when_answered(
        &self,
        store_id: StoreId<'_>,
        id: &str,
        first: Result<Claim>,
    ) -> Result<Claim> {
        let mut claimed = first;
        loop {
            let pause = match &claimed {
                Ok(Claim::Acquired | Claim::AlreadyHandled) => return claimed,
                Ok(Claim::HeldElsewhere { retry_in }) => {
                    tracing::debug!(message_id = id, retry_in = ?retry_in, "claimed by another holder; asking again later");
                    *retry_in
                }
                Err(err) => {
                    let pause = self.store_backoff();
                    self.store_waits(id, err, pause, false);
                    pause
                }
            };
            if !self.waited(pause).await {
                return Err(Error::ShutDown(
                    "the app was aborted while the message waited for its claim",
                ));
            }
            claimed = self.idempotency.begin(store_id).await;
            self.store_answered(claimed.is_ok());
        }
    }

    /// Says in the log that the store failed, and how long the message waits for it, here
    /// or (`handed_back`) in the broker.
    fn store_waits(
        &self,
        id: &str,
        error: &(dyn std::error::Error + 'static),
        pause: Duration,
        handed_back: bool,
    ) {
        tracing::warn!(
            handler = self.spec.name(),
            message_id = id,
            error = %error_chain(error),
            failures_in_a_row = self.store_failures.load(Ordering::Relaxed),
            retry_in = ?pause,
            handed_back,
            "idempotency store failed; the message waits, unacknowledged, and the handler slows down"
        );
    }

    /// Hands a delivery back to the broker for after the store backoff, saying why: the
    /// idempotency store failed.
    pub(super) async fn hand_back_for_store<A: Acknowledger>(
        &self,
        delivery: Delivery<A>,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) {
        let pause = self.store_backoff();
        let id = delivery.message().shared_id().clone();
        self.store_waits(&id, error, pause, true);
        self.report(delivery.nack(Some(pause)).await, &id, "nack");
    }

    /// Settles a delivery whose claim was not acquired: acknowledged when its id was
    /// handled already, handed back for later while another holder has it or when the
    /// store failed.
    pub(super) async fn settle_unclaimed<A: Acknowledger>(
        &self,
        delivery: Delivery<A>,
        claim: Result<Claim>,
    ) {
        let id = delivery.message().shared_id().clone();
        match claim {
            Ok(Claim::AlreadyHandled) => {
                tracing::debug!(message_id = %id, "already handled; acknowledging");
                self.metrics.duplicate();
                self.report(delivery.ack().await, &id, "ack");
            }
            Ok(Claim::HeldElsewhere { retry_in }) => {
                tracing::debug!(message_id = %id, retry_in = ?retry_in, "claimed by another holder; handing it back");
                self.report(delivery.nack(Some(retry_in)).await, &id, "nack");
            }
            Err(err) => self.hand_back_for_store(delivery, &err).await,
            Ok(Claim::Acquired) => {
                tracing::error!(message_id = %id, "a claimed delivery was taken for an unclaimed one; it comes back");
            }
        }
    }

    /// Why `delivery` goes to the dead letters unhandled: it was delivered more than
    /// `max_deliveries` times, as when handling it crashes the process.
    pub(super) fn delivered_too_often<A: Acknowledger>(
        &self,
        delivery: &Delivery<A>,
    ) -> Option<String> {
        (delivery.attempt() > self.retry.max_deliveries).then(|| {
            format!(
                "delivered {} times without being settled (did the handler crash the process?)",
                delivery.attempt()
            )
        })
    }

    /// Dead-letters `delivery`, saying why in the log.
    pub(super) async fn dead_letter<A: Acknowledger>(
        &self,
        delivery: Delivery<A>,
        reason: &str,
        attempts: u32,
    ) {
        let id = delivery.message().id().to_owned();
        tracing::warn!(
            handler = self.spec.name(),
            destination = delivery.destination(),
            group = delivery.group(),
            message_id = %id,
            attempts,
            reason,
            "dead-lettering message"
        );
        let sent = delivery.dead_letter(reason, attempts).await;
        // One that failed comes back, and is counted when it is dead-lettered at last.
        if sent.is_ok() {
            self.metrics.dead_lettered();
        }
        self.report(sent, &id, "dead-letter");
    }

    /// Logs a failed settlement (the broker delivers the message again).
    pub(super) fn report(&self, settled: Result<()>, id: &str, what: &str) {
        if let Err(err) = settled {
            tracing::warn!(
                handler = self.spec.name(),
                message_id = %id,
                error = %err,
                "{what} failed; the broker will deliver the message again"
            );
        }
    }
}

/// A registered handler, its type erased once, at registration: all [`App::start`] needs
/// of it. Its binding, made here, knows the handler's type again, so that every delivery
/// is a direct call.
trait Registered<C: Channel>: Send {
    fn spec(&self) -> &HandlerSpec;

    fn publishes(&self) -> bool;

    /// Whether it takes its messages in batches.
    fn is_batch(&self) -> bool;

    /// The same handler with another spec.
    #[cfg(feature = "config")]
    fn with_spec(self: Box<Self>, spec: HandlerSpec) -> Box<dyn Registered<C>>;

    /// The binding's consume loop, to be spawned.
    fn bind(
        self: Box<Self>,
        settings: Settings,
        channel: Arc<C>,
        consumer: C::Consumer,
        stop: watch::Receiver<bool>,
        cell: Arc<BindingCell>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<C: Channel, S: HandlerService, R: 'static> Registered<C> for Handler<S, R> {
    fn spec(&self) -> &HandlerSpec {
        Handler::spec(self)
    }

    fn publishes(&self) -> bool {
        Handler::publishes(self)
    }

    fn is_batch(&self) -> bool {
        false
    }

    #[cfg(feature = "config")]
    fn with_spec(self: Box<Self>, spec: HandlerSpec) -> Box<dyn Registered<C>> {
        Box::new(Handler::with_spec(*self, spec))
    }

    fn bind(
        self: Box<Self>,
        settings: Settings,
        channel: Arc<C>,
        consumer: C::Consumer,
        stop: watch::Receiver<bool>,
        cell: Arc<BindingCell>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let worker = Worker {
            service: self.into_service(),
            settings,
        };
        Box::pin(run(worker, channel, consumer, stop, cell))
    }
}

/// A binding's consume loop: one delivery at a time in each slot, or in batches.
pub(super) trait Consume: Send + Sync {
    fn settings(&self) -> &Settings;

    /// Receives and handles until `halt` changes (the app stops, the binding pauses) or
    /// the backend shuts the consumer down; finishes what it took, then hands the consumer
    /// back.
    fn consume<Co: Consumer>(
        &self,
        consumer: Co,
        halt: watch::Receiver<bool>,
        cell: &BindingCell,
    ) -> impl Future<Output = Co> + Send;
}

impl<S: HandlerService> Consume for Worker<S> {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn consume<Co: Consumer>(
        &self,
        consumer: Co,
        halt: watch::Receiver<bool>,
        cell: &BindingCell,
    ) -> impl Future<Output = Co> + Send {
        consume(self, consumer, halt, cell)
    }
}

/// Runs a binding until the app stops: its consume loop while it is wanted running; when
/// paused or stopped, no loop (a group's consumer closed, an anonymous one kept while
/// paused), until it is wanted again. A loop that dies (a panic in the backend's consumer,
/// say) is logged and started again on a new consumer: a binding never stops silently.
pub(super) async fn run<W: Consume, C: Channel>(
    worker: W,
    channel: Arc<C>,
    consumer: C::Consumer,
    stop: watch::Receiver<bool>,
    cell: Arc<BindingCell>,
) {
    let _ends = EndsBinding(&cell);
    let settings = worker.settings();
    let name = settings.spec.name();
    let mut wanted = cell.wanted.subscribe();
    let mut consumer = Some(consumer);
    loop {
        let state = *wanted.borrow_and_update();
        if state != BindingState::Running {
            cell.reached(state);
            tokio::select! {
                () = stopped(stop.clone()) => return,
                changed = wanted.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let current = match consumer.take() {
            Some(current) => current,
            None => match reopen(&*channel, settings, &stop).await {
                Some(reopened) => reopened,
                None => return,
            },
        };
        cell.set_connected(true);
        cell.reached(BindingState::Running);
        // The loop halts when the app stops or the binding is wanted otherwise; watched by
        // a task of its own, so that the loop's every wake-up polls nothing more.
        let (halt, halted) = watch::channel(false);
        let watcher = tokio::spawn({
            let (stop, mut wanted) = (stop.clone(), cell.wanted.subscribe());
            async move {
                tokio::select! {
                    () = stopped(stop) => {}
                    _ = wanted.wait_for(|state| *state != BindingState::Running) => {}
                }
                halt.send_replace(true);
            }
        });
        let was_halted = halted.clone();
        let looping = CatchUnwind::new(worker.consume(current, halted, &cell));
        let ended = looping.await;
        watcher.abort();
        let returned = match ended {
            Ok(returned) => returned,
            Err(panic) => {
                tracing::error!(handler = name, error = %panic, "the consume loop died; starting it again");
                continue;
            }
        };
        // Not halted, the loop ended by itself: the backend shut the consumer down.
        if stop_requested(&stop) || !*was_halted.borrow() {
            return;
        }
        let keeps_consumer = match cell.wanted() {
            // Paused and resumed before the loop had halted: it goes on with its consumer.
            BindingState::Running => true,
            // Closing an anonymous subscription's consumer would delete its queue.
            BindingState::Paused => cell.is_anonymous(),
            BindingState::Stopped => false,
        };
        if keeps_consumer {
            consumer = Some(returned);
        } else {
            // Closed: what it had taken but not handled goes back to the group.
            drop(returned);
            cell.set_connected(false);
        }
    }
}

/// Opens the binding's consumer again, backing off while that fails; `None` once the app
/// stops.
async fn reopen<C: Channel>(
    channel: &C,
    settings: &Settings,
    stop: &watch::Receiver<bool>,
) -> Option<C::Consumer> {
    let mut failures = 0u32;
    loop {
        if stop_requested(stop) {
            return None;
        }
        match channel.consumer(&settings.subscription).await {
            Ok(consumer) => return Some(consumer),
            Err(err) => {
                failures = failures.saturating_add(1);
                let pause = broker_backoff(failures);
                tracing::warn!(handler = settings.spec.name(), error = %err, retry_in = ?pause, "reopening the consumer failed");
                tokio::select! {
                    () = stopped(stop.clone()) => return None,
                    () = sleep(pause) => {}
                }
            }
        }
    }
}

/// One handler's consumer loop: receive while a slot is free, and run each delivery in
/// its slot; all in this one task. On stop, the deliveries taken are finished first.
async fn consume<S: HandlerService, Co: Consumer>(
    worker: &Worker<S>,
    mut consumer: Co,
    stop: watch::Receiver<bool>,
    cell: &BindingCell,
) -> Co {
    let settings = &worker.settings;
    let mut start = |delivery, waited| worker.process_guarded(delivery, waited);
    let mut slots = Slots::new(settings.concurrency, settings.ordered);
    // The value only ever turns true; a change (or a dropped sender) is the stop.
    let stop_seen = |stop: &watch::Receiver<bool>| stop.has_changed().unwrap_or(true);
    let mut stopping = pin!(stopped(stop.clone()));
    let mut failures = 0u32;
    loop {
        if stop_seen(&stop) {
            break;
        }
        // First what is there now, taken with no future to make (while a slot is free);
        // then, once nothing is, wait for the next delivery.
        let mut taken = 0;
        let mut took_any = false;
        let ready = poll_fn(|cx| loop {
            while slots.poll_progress(cx, &mut start).is_ready() {}
            if taken == FAST_PATH_BUDGET {
                // A stream that never runs dry must not keep the worker thread from its
                // other tasks: yield, and come back at once.
                taken = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !slots.has_room() {
                if stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Stop);
                }
                return Poll::Pending;
            }
            if stop_seen(&stop) {
                return Poll::Ready(Next::Stop);
            }
            match consumer.try_receive() {
                Some(Ok(delivery)) => {
                    taken += 1;
                    took_any = true;
                    if failures > 0 {
                        failures = 0;
                        cell.set_connected(true);
                    }
                    let slot = slots.slot_for(delivery.message().key());
                    slots.place(slot, delivery, &mut start);
                }
                Some(Err(error)) => return Poll::Ready(Next::Received(Err(error))),
                None => return Poll::Ready(Next::Nothing),
            }
        })
        .await;
        if took_any {
            // Once a burst, not once a delivery: the clock costs more than the rest.
            cell.received();
        }
        let next = match ready {
            Next::Nothing => {
                let mut receiving = pin!(consumer.receive());
                poll_fn(|cx| {
                    while slots.poll_progress(cx, &mut start).is_ready() {}
                    if slots.has_room() {
                        if let Poll::Ready(received) = receiving.as_mut().poll(cx) {
                            return Poll::Ready(Next::Received(received));
                        }
                    }
                    if stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Next::Stop);
                    }
                    Poll::Pending
                })
                .await
            }
            next => next,
        };
        match next {
            Next::Stop => break,
            Next::Nothing => {}
            Next::Received(Ok(delivery)) => {
                cell.received();
                if failures > 0 {
                    failures = 0;
                    cell.set_connected(true);
                }
                let slot = slots.slot_for(delivery.message().key());
                slots.place(slot, delivery, &mut start);
            }
            Next::Received(Err(Error::ShutDown(what))) => {
                if !stop_seen(&stop) {
                    tracing::warn!(
                        handler = settings.spec.name(),
                        "{what} is shut down; the handler takes no more deliveries"
                    );
                }
                break;
            }
            Next::Received(Err(err)) => {
                failures = failures.saturating_add(1);
                cell.set_connected(false);
                let pause = broker_backoff(failures);
                tracing::warn!(
                    handler = settings.spec.name(),
                    error = %err,
                    retry_in = ?pause,
                    "receive failed"
                );
                let mut resting = pin!(sleep(pause));
                let interrupted = poll_fn(|cx| {
                    while slots.poll_progress(cx, &mut start).is_ready() {}
                    if stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    resting.as_mut().poll(cx).map(|()| false)
                })
                .await;
                if interrupted {
                    break;
                }
            }
        }
    }
    // In-flight deliveries are settled before the consumer closes: closing it first would
    // hand them back to the broker.
    while !slots.is_idle() {
        poll_fn(|cx| slots.poll_progress(cx, &mut start)).await;
    }
    consumer
}

/// Whether a handler that asked to retry through the broker can: the broker must count
/// deliveries and keep the delay. Says so when it cannot. (Messages with a key on a
/// destination ordered by key wait in process even so, see [`Worker::process`].)
fn retries_through_broker(
    channel: &impl Channel,
    subscription: &Subscription,
    handler: &str,
) -> bool {
    let why_not = if !channel.counts_deliveries(subscription) {
        "the broker does not count the deliveries of this subscription's messages"
    } else if !channel.capabilities().delayed_redelivery {
        "the backend waits out a nack's delay holding the message"
    } else {
        return true;
    };
    tracing::info!(
        handler,
        backend = channel.backend(),
        "retries wait in process, not through the broker: {why_not}"
    );
    false
}

/// What the consume loop does next.
enum Next<A> {
    /// The app stops.
    Stop,
    /// Nothing is there now: wait for it.
    Nothing,
    /// A delivery, or why none came.
    Received(Result<Delivery<A>>),
}

/// Completes once the app is stopped (or its [`RunningApp`] dropped).
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// One handler at run time: its service and its settings.
struct Worker<S> {
    service: S,
    settings: Settings,
}

/// How the handler calls for one delivery ended.
enum Outcome {
    Handled,
    /// Dead-letter it: `attempts` calls failed (0: it could not even be decoded).
    Failed {
        error: BoxError,
        attempts: u32,
    },
    /// Hand it back to the broker, to be delivered again after the delay.
    RetryLater(Duration),
    Aborted,
}

impl Outcome {
    /// What the delivery's span says of it.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Failed { .. } => "dead_lettered",
            Outcome::RetryLater(_) => "retried",
            Outcome::Aborted => "aborted",
        }
    }
}

impl<C: Channel, S: BatchService> Registered<C> for BatchHandler<S> {
    fn spec(&self) -> &HandlerSpec {
        BatchHandler::spec(self)
    }

    fn publishes(&self) -> bool {
        false
    }

    fn is_batch(&self) -> bool {
        true
    }

    #[cfg(feature = "config")]
    fn with_spec(self: Box<Self>, spec: HandlerSpec) -> Box<dyn Registered<C>> {
        Box::new(BatchHandler::with_spec(*self, spec))
    }

    fn bind(
        self: Box<Self>,
        settings: Settings,
        channel: Arc<C>,
        consumer: C::Consumer,
        stop: watch::Receiver<bool>,
        cell: Arc<BindingCell>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (_, service) = self.into_parts();
        let worker = BatchWorker { service, settings };
        Box::pin(run(worker, channel, consumer, stop, cell))
    }
}

impl<S: HandlerService> Worker<S> {
    /// Processes one delivery. A panic anywhere in it is logged; the delivery goes back to
    /// the broker and its claim is released.
    async fn process_guarded<A: Acknowledger>(&self, delivery: Delivery<A>, waited: bool) {
        let taken = self.settings.metrics.taken(1);
        if waited && *self.settings.abort.borrow() {
            // Its turn came after the shutdown timeout: hand it back untried, so that it
            // keeps its place before the later ones of its key.
            let id = delivery.message().id().to_owned();
            self.settings.report(delivery.nack(None).await, &id, "nack");
            return;
        }
        let message = delivery.shared_message().clone();
        let span = telemetry::process_span(
            self.settings.backend,
            delivery.destination(),
            delivery.group(),
            self.settings.spec.name(),
            Processing::One {
                message_id: message.id(),
                body_size: message.payload().len(),
            },
        );
        telemetry::adopt_parent(&span, &message);
        // The span first: the future is then made where it stays, not moved once more.
        let processed = CatchUnwind::in_span(span.clone(), self.process(delivery, &span, &taken));
        if let Err(panic) = processed.await {
            telemetry::record_outcome(&span, "aborted", Some("panic"));
            tracing::error!(
                handler = self.settings.spec.name(),
                message_id = message.id(),
                error = %panic,
                "processing a delivery panicked; it goes back to the broker"
            );
        }
    }

    async fn process<A: Acknowledger>(
        &self,
        delivery: Delivery<A>,
        span: &Span,
        taken: &Taken<'_>,
    ) {
        let message = delivery.shared_message().clone();
        let id = message.id();
        let store = &self.settings.idempotency;
        let store_id = store.id(&message);
        let mut claimed = store.begin(store_id).await;
        self.settings.store_answered(claimed.is_ok());
        if !matches!(claimed, Ok(Claim::Acquired)) {
            // Boxed: its timers would otherwise make every delivery's future larger.
            claimed = Box::pin(self.settings.claim_when_answered(store_id, id, claimed)).await;
        }
        match claimed {
            Ok(Claim::Acquired) => {}
            Ok(Claim::AlreadyHandled) => {
                telemetry::record_outcome(span, "duplicate", None);
                return self
                    .settings
                    .settle_unclaimed(delivery, Ok(Claim::AlreadyHandled))
                    .await;
            }
            // Aborted while waiting: handed back untried.
            _ => {
                telemetry::record_outcome(span, "aborted", None);
                return self.settings.report(delivery.nack(None).await, id, "nack");
            }
        }
        let claim = ClaimGuard::new(store, store_id, id);
        if let Some(reason) = self.settings.delivered_too_often(&delivery) {
            telemetry::record_outcome(span, "dead_lettered", Some("max_deliveries"));
            claim.abandon().await;
            self.settings.dead_letter(delivery, &reason, 0).await;
            return;
        }
        let outcome = self.call_with_retries(&delivery, span).await;
        telemetry::record_outcome(
            span,
            outcome.label(),
            match &outcome {
                Outcome::Failed { attempts: 0, .. } => Some("undecodable"),
                Outcome::Failed { .. } => Some("handler"),
                _ => None,
            },
        );
        match outcome {
            Outcome::Handled => claim.complete().await,
            _ => claim.abandon().await,
        }
        match outcome {
            Outcome::Handled => {
                self.settings.report(delivery.ack().await, id, "ack");
                taken.handled(&message);
            }
            Outcome::Failed { error, attempts } => {
                self.settings
                    .dead_letter(delivery, &error_chain(&*error), attempts)
                    .await;
            }
            Outcome::RetryLater(delay) => {
                self.settings
                    .report(delivery.nack(Some(delay)).await, id, "nack");
            }
            Outcome::Aborted => self.settings.report(delivery.nack(None).await, id, "nack"),
        }
    }

    /// Calls the handler until it succeeds, fails for good, or (with retries through the
    /// broker) fails once more with attempts left.
    async fn call_with_retries<A: Acknowledger>(
        &self,
        delivery: &Delivery<A>,
        span: &Span,
    ) -> Outcome {
        let mut abort = self.settings.abort.clone();
        let max_attempts = self.settings.retry.max_attempts.max(1);
        // A message handed back would be overtaken by later ones of its key.
        let through_broker = self.settings.retry_through_broker
            && !(self.settings.ordered && delivery.message().key().is_some());
        // Through the broker, each delivery is one attempt, and the broker counts them.
        let mut attempt = if through_broker {
            delivery.attempt()
        } else {
            1
        };
        let mut store_failures = 0;
        loop {
            telemetry::record_attempt(span, attempt);
            let ctx = Context::new(
                delivery.shared_message().clone(),
                attempt,
                delivery.origin().clone(),
                self.settings.shared.clone(),
            );
            // The handler first: one that finishes at once never listens for the abort.
            let mut running = pin!(self.run_once(ctx, delivery.message()));
            let result = match poll_fn(|cx| Poll::Ready(running.as_mut().poll(cx))).await {
                Poll::Ready(result) => result,
                Poll::Pending => tokio::select! {
                    biased;
                    result = &mut running => result,
                    () = aborted(&mut abort) => return Outcome::Aborted,
                },
            };
            let error = match result {
                Ok(()) => return Outcome::Handled,
                Err(error) => error,
            };
            let disposition = Disposition::of(&*error);
            if disposition != Disposition::StoreFailed {
                self.settings.metrics.failed();
            }
            let pause = match disposition {
                Disposition::Undecodable => return Outcome::Failed { error, attempts: 0 },
                Disposition::StoreFailed => {
                    // Not the handler's failure: no attempt used up, and the message is
                    // not handed back (that would count as a delivery).
                    store_failures += 1;
                    let pause = broker_backoff(store_failures);
                    self.settings
                        .store_waits(delivery.message().id(), &*error, pause, false);
                    if !self.settings.waited(pause).await {
                        return Outcome::Aborted;
                    }
                    continue;
                }
                Disposition::GiveUp => {
                    return Outcome::Failed {
                        error,
                        attempts: attempt,
                    }
                }
                _ if attempt >= max_attempts => {
                    return Outcome::Failed {
                        error,
                        attempts: attempt,
                    }
                }
                Disposition::RetryAfter(pause) => pause,
                Disposition::Retry => self.settings.retry.delay_after(attempt),
            };
            tracing::debug!(
                handler = self.settings.spec.name(),
                message_id = delivery.message().id(),
                attempt,
                error = %error,
                retry_in = ?pause,
                through_broker,
                "handler failed; retrying"
            );
            self.settings.metrics.retried();
            if through_broker {
                return Outcome::RetryLater(pause);
            }
            tokio::select! {
                biased;
                () = aborted(&mut abort) => return Outcome::Aborted,
                () = sleep(pause) => {}
            }
            attempt += 1;
        }
    }

    /// Calls the handler's service once (within the handler's timeout), then publishes
    /// what it returned; a panic in either (the service, or encoding its output) is an
    /// error.
    async fn run_once(&self, ctx: Context, input: &Message) -> Result<(), BoxError> {
        CatchUnwind::new(async move {
            let mut service = self.service.clone();
            poll_fn(|cx| service.poll_ready(cx)).await?;
            let call = service.call(ctx);
            let outputs = match self.settings.spec.call_timeout() {
                None => call.await?,
                Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| {
                    format!("the handler did not finish within its timeout of {limit:?}")
                })??,
            };
            let Some(producer) = &self.settings.output else {
                return Ok(());
            };
            let mut outputs = outputs
                .into_iter()
                .enumerate()
                .map(|(index, output)| self.derive_output(input, index, output))
                .collect::<Vec<_>>();
            if outputs.is_empty() {
                return Ok(());
            }
            let destination = self.settings.spec.output_destination().unwrap_or_default();
            let first = outputs.first().map(Message::id);
            let span =
                telemetry::send_span(self.settings.backend, destination, first, outputs.len());
            telemetry::propagate(&span, &mut outputs);
            let sent = producer.send_batch(outputs).instrument(span.clone()).await;
            telemetry::sent(&span, sent).map_err(BoxError::from)
        })
        .await
        .and_then(|published| published)
    }

    fn derive_output(&self, input: &Message, index: usize, output: Message) -> Message {
        derive_output(&self.settings.scope, input, index, output)
    }
}

/// Output `index` of a processor of `scope` for `input`: its id derived from the input's,
/// so that a retried processor publishes duplicates that downstream idempotency recognises,
/// not new messages; the input's key unless it has its own; the input's id as causation.
pub(crate) fn derive_output(
    scope: &str,
    input: &Message,
    index: usize,
    output: Message,
) -> Message {
    let name = format!("{scope}/{}/{index}", input.id());
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    let key = output.key().or(input.key()).map(str::to_owned);
    output
        .with_id(id.to_string())
        .with_optional_key(key)
        .with_header(header::CAUSATION_ID, input.id())
}

/// A claimed message id. Completed or abandoned explicitly; dropped otherwise (a panic,
/// a cancelled task), it is abandoned, so no claim stays "in progress" for ever.
struct ClaimGuard<'a> {
    store: &'a ScopedStore,
    id: StoreId<'a>,
    message_id: &'a str,
    settled: bool,
}

impl<'a> ClaimGuard<'a> {
    fn new(store: &'a ScopedStore, id: StoreId<'a>, message_id: &'a str) -> Self {
        ClaimGuard {
            store,
            id,
            message_id,
            settled: false,
        }
    }

    /// Records the id as handled.
    async fn complete(mut self) {
        self.settled = true;
        if let Err(err) = self.store.complete(self.id).await {
            tracing::warn!(message_id = self.message_id, error = %err, "idempotency store failed to record the message as handled");
        }
    }

    /// Releases the claim without recording the id as handled.
    async fn abandon(mut self) {
        self.settled = true;
        if let Err(err) = self.store.abandon(self.id).await {
            tracing::warn!(message_id = self.message_id, error = %err, "idempotency store failed to release a claim");
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.store.abandon_in_background(self.id);
        }
    }
}

/// An error and its sources, joined with ": ".
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

pin_project_lite::pin_project! {
    /// Turns a panic while polling a future into an error; polls it inside a span (what
    /// `tracing::Instrument` does, without moving the future once more into a wrapper).
    pub(super) struct CatchUnwind<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F> CatchUnwind<F> {
    pub(super) fn new(inner: F) -> Self {
        Self::in_span(Span::none(), inner)
    }

    pub(super) fn in_span(span: Span, inner: F) -> Self {
        CatchUnwind { inner, span }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(panic) => Poll::Ready(Err(panic_error("handler panicked", &*panic))),
        }
    }
}
