//! The `#[handler]` attribute macro of event-binder: write an event handler once as a plain
//! `async fn`, register it with an `App` on any broker, and still call it directly in a
//! unit test.
//!
//! Use it through the facade, as `event_binder::handler`, whose documentation has runnable
//! examples. This crate depends only on `syn`, `quote` and `proc-macro2`; the code it
//! generates names the runtime by absolute paths (`::event_binder::…`, or the path given
//! with `crate = "…"`).
//!
//! ```
//! use event_binder::memory::MemoryChannel;
//! use event_binder::{handler, App, Context, Message};
//!
//! #[derive(serde::Deserialize)]
//! pub struct OrderPlaced {
//!     pub order_id: u64,
//! }
//!
//! #[handler(destination = "orders", group = "billing")]
//! pub async fn bill(event: OrderPlaced, ctx: Context) -> Result<(), std::io::Error> {
//!     println!("billing order {} (attempt {})", event.order_id, ctx.attempt());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a unit test, with no broker at all:
//! let message = Message::new(r#"{"order_id":7}"#);
//! bill(OrderPlaced { order_id: 7 }, Context::detached(message)).await?;
//! // In the service:
//! let running = App::new(MemoryChannel::new()).handler(bill).start().await?;
//! running.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The attribute also sets how a failing handler is retried and how long one call may take
//! (see [`handler`] for every argument); durations are checked and converted at compile
//! time:
//!
//! ```
//! use event_binder::{handler, IntoHandler};
//! use std::time::Duration;
//!
//! #[handler(
//!     destination = "orders",
//!     group = "shipping",
//!     max_attempts = 5,
//!     backoff = "100ms..10s",
//!     jitter = 0.2,
//!     timeout = "5s",
//!     retry = "broker"
//! )]
//! async fn ship(order_id: u64) -> Result<(), std::io::Error> {
//!     println!("shipping order {order_id}");
//!     Ok(())
//! }
//!
//! assert_eq!(
//!     ship.into_handler().spec().call_timeout(),
//!     Some(Duration::from_secs(5))
//! );
//! ```

use proc_macro::TokenStream;

mod args;
mod expand;
mod signature;

/// Turns an `async fn(event: T, …) -> Result<_, E>` into an event handler that an `App`
/// registers with `.handler(name)`, and leaves it callable as a plain async function. After
/// the event it takes up to 6 arguments made from the delivery: `Context`, `MessageId`,
/// `Key`, `Attempt`, `Headers` and the app's `State<S>`. With `batch = N`, an `async
/// fn(events: Vec<T>) -> Result<(), E>` becomes a batch handler, registered with
/// `.batch_handler(name)` (see [Batch handlers](#batch-handlers)).
///
/// | argument | required | meaning |
/// |---|---|---|
/// | `destination = "orders"` | yes | the destination the handler reads |
/// | `group = "billing"` | no | the group it joins (durable, shares the work); none: anonymous |
/// | `output = "invoices"` | no | makes it a processor: what it returns is published there |
/// | `concurrency = 8` | no | how many messages it works on at once (default: the app's) |
/// | `max_attempts = 5` | no | calls per message before it is dead-lettered (default: the app's) |
/// | `backoff = "100ms..10s"` | no | the first and the longest wait between attempts (default: the app's) |
/// | `jitter = 0.2` | no | the share of each wait, 0.0 to 1.0, taken off at random (default: the app's) |
/// | `timeout = "5s"` | no | the longest one call may take; a slower call fails the attempt (default: none) |
/// | `retry = "broker"` | no | `"broker"`: wait between attempts by handing the message back to the broker; `"in_process"`: wait in the handler's slot (default: the app's) |
/// | `batch = 100` | no | makes it a batch handler of up to this many events at once (see [below](#batch-handlers)) |
/// | `batch_wait = "50ms"` | no | with `batch`: the longest a batch waits for more messages after its first (default: `BatchHandler::DEFAULT_WAIT`, 100 ms) |
/// | `crate = "::event_binder"` | no | the path of the facade, if it is renamed or re-exported |
///
/// Names are checked at compile time with the runtime's rules: 1 to 48 ASCII letters,
/// digits, `-` and `_`.
///
/// A duration is a whole number followed by a unit, `ms`, `s`, `m` (minutes) or `h`, with no
/// spaces: `"250ms"`, `"5s"`, `"2m"`, `"1h"`. `backoff` gives two, the first wait and the
/// longest, separated by `..`: the longest is above 0 and not shorter than the first (the
/// waits in between grow as the app's retry policy says). `timeout` is above 0;
/// `batch_wait` may be `"0ms"` (a batch takes only what has already arrived). Each is
/// checked at compile time and becomes a `Duration` of whole milliseconds; the arguments
/// set `HandlerSpec`'s `backoff`, `jitter`, `timeout`, `retry_through_broker` and `batch`,
/// and the parts of the retry policy they do not set stay the app's.
///
/// ```
/// use event_binder::{handler, HandlerSpec, IntoHandler};
/// use std::time::Duration;
///
/// #[handler(
///     destination = "orders",
///     group = "billing",
///     backoff = "100ms..10s",
///     jitter = 0.2,
///     timeout = "5s",
///     retry = "broker"
/// )]
/// async fn bill(order_id: u64) -> Result<(), std::io::Error> {
///     println!("billing order {order_id}");
///     Ok(())
/// }
///
/// // The same spec as:
/// let spec = HandlerSpec::new(concat!(module_path!(), "::bill"), "orders")
///     .group("billing")
///     .backoff(Duration::from_millis(100), Duration::from_secs(10))
///     .jitter(0.2)
///     .timeout(Duration::from_secs(5))
///     .retry_through_broker(true);
/// assert_eq!(bill.into_handler().spec(), &spec);
/// ```
///
/// The spec also names the event type (a batch handler's `Vec` element type) and, for a
/// processor, the type it publishes (`T` of `Result<T, E>`, `Result<Option<T>, E>` or
/// `Result<Events<T>, E>`). With event-binder's feature `asyncapi`, a type that implements
/// `schemars::JsonSchema` comes with its JSON Schema, and `App::asyncapi` describes the app
/// in an AsyncAPI 3.0 document; other types are documented as any JSON. Either way the
/// function compiles the same. (Specs compare equal whatever their payload types: equality
/// says where and how a handler runs, as above.)
///
/// The function is a free `async fn` (in a module, not in an `impl`; not generic) that takes
/// the event by value, then up to 6 more arguments, in any order, each made from the
/// delivery (core's `FromContext`):
///
/// | argument | what it is |
/// |---|---|
/// | `ctx: Context` | the whole delivery: message, attempt, origin, the app's extensions |
/// | `id: MessageId` | the message's id (`Deref<Target = str>`, `Display`) |
/// | `Key(key): Key` | the message's key, an `Option<String>` |
/// | `Attempt(n): Attempt` | which call for this message this is, 1 for the first |
/// | `headers: Headers` | the message's headers |
/// | `State(db): State<Db>` | the app's state, given with `App::state(db)`; `Db: Clone` |
///
/// Each argument is a name or a pattern, and owned (not `&T`). The function returns
/// `Result<(), E>`, or with `output`, `Result<Event, E>` or `Result<Events<Event>, E>`; `E`
/// converts into `BoxError`. Its future must be `Send`. Mistakes are reported at the
/// function: an argument of another type ("`u32` cannot be a handler argument"), two
/// different `State` types (an app has one state type: put both values in it), more than 7
/// arguments in all. A handler taking `State<S>` registers only in an app whose state is an
/// `S`; `App::handler` checks it at compile time ("this handler needs an app state the app
/// does not have").
///
/// ```
/// use event_binder::memory::MemoryChannel;
/// use event_binder::{handler, App, MessageId, State};
/// use std::sync::Arc;
///
/// #[derive(serde::Deserialize)]
/// pub struct OrderPlaced {
///     pub order_id: u64,
/// }
///
/// /// What the app's handlers share: a pool, a client, configuration.
/// #[derive(Clone)]
/// pub struct Inventory {
///     pub warehouse: Arc<str>,
/// }
///
/// #[handler(destination = "orders", group = "inventory")]
/// pub async fn reserve(
///     event: OrderPlaced,
///     id: MessageId,
///     State(inventory): State<Inventory>,
/// ) -> Result<(), std::io::Error> {
///     println!("reserving order {} in {} (message {id})", event.order_id, inventory.warehouse);
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let inventory = Inventory { warehouse: "north".into() };
/// // In a unit test, the arguments are plain values:
/// let id = MessageId("order-7".into());
/// reserve(OrderPlaced { order_id: 7 }, id, State(inventory.clone())).await?;
/// // In the service, the app makes them for each message; without `.state(…)`, registering
/// // `reserve` would not compile.
/// let running = App::new(MemoryChannel::new())
///     .state(inventory)
///     .handler(reserve)
///     .start()
///     .await?;
/// running.shutdown().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Batch handlers
///
/// With `batch = N` (a whole number above 0), the function takes many events at once, for
/// work that is cheaper in bulk (one database round trip, one bulk request): its first
/// argument is `Vec<T>` (`T` decodes from each message), and an optional second one is a
/// `Batch`, the `Context` of each event in the same order. It returns `Result<(), E>`: a
/// batch handler publishes nothing; its error fails every event of the call, unless it is
/// a `BatchFailure`, which fails only the events it names. The runtime collects up to `N`
/// messages, or what came within `batch_wait` after the first, and still claims, decodes,
/// acknowledges and dead-letters each message on its own; failed events are retried
/// together, in process, as `max_attempts`, `backoff` and `jitter` say (see core's
/// `BatchHandler`). `timeout` limits each call. A batch handler is registered with
/// `App::batch_handler`, not `App::handler` (the compiler refuses either one in the
/// other's place), and takes no `output`, `concurrency` or `retry = "broker"`.
///
/// ```
/// use event_binder::memory::MemoryChannel;
/// use event_binder::{handler, App, Batch, BatchFailure};
/// use std::time::Duration;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// pub struct OrderPlaced {
///     pub order_id: u64,
///     pub quantity: u32,
/// }
///
/// /// Reserves stock for up to 100 orders in one go, waiting up to 50 ms for more orders
/// /// after the first.
/// #[handler(destination = "orders", group = "stock", batch = 100, batch_wait = "50ms")]
/// pub async fn reserve(orders: Vec<OrderPlaced>) -> Result<(), std::io::Error> {
///     let total: u32 = orders.iter().map(|order| order.quantity).sum();
///     println!("reserving {total} items for {} orders", orders.len());
///     Ok(())
/// }
///
/// /// With the contexts of the events; an order of nothing fails alone.
/// #[handler(destination = "orders", group = "audit", batch = 10)]
/// pub async fn audit(orders: Vec<OrderPlaced>, batch: Batch) -> Result<(), BatchFailure> {
///     let mut failure = BatchFailure::new();
///     for (index, (order, ctx)) in orders.iter().zip(batch.contexts()).enumerate() {
///         if order.quantity == 0 {
///             failure = failure.fail(index, format!("message {} orders nothing", ctx.id()));
///         }
///     }
///     if failure.is_empty() { Ok(()) } else { Err(failure) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // In a unit test, a plain call:
/// reserve(vec![OrderPlaced { order_id: 7, quantity: 2 }]).await?;
/// // In the service:
/// let bus = MemoryChannel::new();
/// let running = App::new(bus.clone())
///     .batch_handler(reserve)
///     .batch_handler(audit)
///     .start()
///     .await?;
/// for order_id in 0..3 {
///     let order = OrderPlaced { order_id, quantity: 1 };
///     running.publisher().publish("orders", &order).await?;
/// }
/// bus.wait_idle(Duration::from_secs(5)).await?;
/// running.shutdown().await?;
/// # Ok(())
/// # }
/// ```
///
/// Without `batch`, a handler whose event is a `Vec<T>` is an ordinary handler of one
/// event, a JSON array.
///
/// The macro adds a hidden struct of the same name as the function (a type, so the two do
/// not clash) that carries the handler's spec; the function returns its body's future
/// tagged with that struct, so `bill(event, ctx).await` and `reserve(event, id,
/// State(inventory)).await` work as they would without the attribute.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let item = proc_macro2::TokenStream::from(item);
    match expand::expand(&args, item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // Keep the function as written next to the error, so that its callers do not
            // add a cascade of unrelated errors.
            let mut tokens = error.into_compile_error();
            tokens.extend(item);
            tokens.into()
        }
    }
}
