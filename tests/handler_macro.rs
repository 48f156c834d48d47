//! What `#[handler]` expands to: the function stays callable as written, and registers with
//! the spec its attribute gives.

use event_binder::memory::MemoryChannel;
use event_binder::{
    handler, App, Attempt, Batch, BatchFailure, BatchHandler, Channel, Context, Events,
    HandlerSpec, IntoBatchHandler, IntoHandler, Key, Message, MessageId, Producer, State,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An order was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
    /// What it costs.
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    order_id: u64,
    total: u64,
}

/// Why billing failed.
#[derive(Debug, PartialEq)]
pub struct BillingError(String);

impl fmt::Display for BillingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "billing failed: {}", self.0)
    }
}

impl std::error::Error for BillingError {}

/// Bills an order (two arguments, a group).
#[handler(destination = "orders", group = "billing")]
async fn bill(event: OrderPlaced, ctx: Context) -> Result<(), BillingError> {
    if event.amount == 0 {
        return Err(BillingError(format!("order {} is free", event.order_id)));
    }
    assert_eq!(ctx.attempt(), 1);
    Ok(())
}

/// Audits an order (one argument, anonymous, `mut` binding).
#[handler(destination = "orders")]
pub async fn audit(mut event: OrderPlaced) -> Result<(), BillingError> {
    event.amount += 1;
    if event.amount > 10 {
        return Err(BillingError(format!("audit {}", event.amount)));
    }
    Ok(())
}

#[handler(destination = "orders", group = "invoicing", output = "invoices")]
async fn invoice(event: OrderPlaced, ctx: Context) -> Result<Invoice, BillingError> {
    let tax = ctx.extension::<u64>().copied().unwrap_or(0);
    Ok(Invoice {
        order_id: event.order_id,
        total: event.amount + tax,
    })
}

#[handler(
    destination = "orders",
    group = "shipping",
    output = "shipments",
    concurrency = 8,
    max_attempts = 5
)]
async fn ship(event: OrderPlaced) -> Result<Events<Invoice>, std::io::Error> {
    Ok(Events(
        (0..2)
            .map(|line| Invoice {
                order_id: event.order_id,
                total: line,
            })
            .collect(),
    ))
}

/// Retried through the broker, 100 ms then up to 10 s less up to a fifth; each call stopped
/// after 5 s.
#[handler(
    destination = "orders",
    group = "payments",
    max_attempts = 4,
    backoff = "100ms..10s",
    jitter = 0.2,
    timeout = "5s",
    retry = "broker"
)]
async fn charge(event: OrderPlaced) -> Result<(), BillingError> {
    if event.amount == 0 {
        return Err(BillingError("nothing to charge".into()));
    }
    Ok(())
}

/// Every duration unit, and retries in process.
#[handler(
    destination = "orders",
    backoff = "0ms..2h",
    jitter = 1,
    timeout = "3m",
    retry = "in_process"
)]
async fn refund(_event: OrderPlaced) -> Result<(), BillingError> {
    Ok(())
}

/// A pattern instead of a name.
#[handler(destination = "pairs")]
async fn pair((left, right): (u32, u32), _: Context) -> Result<(), BillingError> {
    if left > right {
        Err(BillingError("unordered".into()))
    } else {
        Ok(())
    }
}

/// `?` converts errors as in any `async fn`.
#[handler(destination = "texts", output = "counts")]
async fn parse(event: String) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let count: u64 = event.trim().parse()?;
    Ok(count)
}

mod nested {
    use super::OrderPlaced;
    use event_binder::handler;

    #[handler(destination = "orders", max_attempts = 1)]
    pub(crate) async fn notify(_event: OrderPlaced) -> Result<(), std::io::Error> {
        Ok(())
    }
}

/// `crate = "…"` names the runtime by another path: here core itself, as core's own tests do.
#[handler(destination = "orders", group = "core", crate = "::event_binder_core")]
async fn through_core(
    event: OrderPlaced,
    ctx: event_binder_core::Context,
) -> Result<(), BillingError> {
    assert_eq!(ctx.key(), None);
    if event.amount > 100 {
        return Err(BillingError("too much".into()));
    }
    Ok(())
}

/// The app state of [`reserve`]: where it reserves, and what it saw.
#[derive(Clone, Default)]
struct Stock {
    warehouse: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
}

/// Extractors after the event: the message's id, key and attempt, and the app's state.
#[handler(destination = "reservations", group = "stock")]
async fn reserve(
    event: OrderPlaced,
    id: MessageId,
    Key(key): Key,
    attempt: Attempt,
    State(stock): State<Stock>,
) -> Result<(), BillingError> {
    stock.seen.lock().unwrap().push(format!(
        "order {} id {id} key {key:?} attempt {} in {}",
        event.order_id, attempt.0, stock.warehouse
    ));
    Ok(())
}

/// What [`reserve_in_bulk`] saw, given to it as an app extension: the order ids of each
/// batch.
#[derive(Clone, Default)]
struct Reservations {
    batches: Arc<Mutex<Vec<Vec<u64>>>>,
}

/// A batch handler taking the contexts of its events too: up to 4 orders at once, waiting
/// up to 20 ms for more after the first.
#[handler(
    destination = "stock",
    group = "reserving",
    batch = 4,
    batch_wait = "20ms"
)]
async fn reserve_in_bulk(orders: Vec<OrderPlaced>, batch: Batch) -> Result<(), BillingError> {
    assert_eq!(orders.len(), batch.len(), "one context per event");
    let reservations = batch.contexts()[0]
        .extension::<Reservations>()
        .ok_or_else(|| BillingError("no reservations to record in".into()))?;
    let ids = orders.iter().map(|order| order.order_id).collect();
    reservations.batches.lock().unwrap().push(ids);
    Ok(())
}

/// A batch handler of its events alone, with the default wait; a `BatchFailure` fails some
/// of them.
#[handler(destination = "orders", group = "counting", batch = 100)]
pub async fn count_in_bulk(orders: Vec<OrderPlaced>) -> Result<(), BatchFailure> {
    let failure = orders
        .iter()
        .enumerate()
        .filter(|(_, order)| order.amount == 0)
        .fold(BatchFailure::new(), |failure, (index, _)| {
            failure.fail(index, "free order")
        });
    if failure.is_empty() {
        Ok(())
    } else {
        Err(failure)
    }
}

/// Without `batch`, a `Vec` is one event: a JSON array.
#[handler(destination = "lists", max_attempts = 1)]
async fn sum_list(numbers: Vec<u64>) -> Result<(), BillingError> {
    if numbers.iter().sum::<u64>() > 10 {
        return Err(BillingError("too much".into()));
    }
    Ok(())
}

/// A batch handler naming the runtime by another path.
#[handler(destination = "orders", batch = 3, crate = "::event_binder_core")]
async fn count_through_core(
    orders: Vec<OrderPlaced>,
    batch: event_binder_core::Batch,
) -> Result<(), BillingError> {
    assert_eq!(orders.len(), batch.len());
    Ok(())
}

fn order(amount: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: 7,
        amount,
    }
}

fn detached() -> Context {
    Context::detached(Message::new(r#"{"order_id":7,"amount":10}"#))
}

#[tokio::test]
async fn a_handler_is_called_directly_with_a_detached_context() {
    assert_eq!(bill(order(10), detached()).await, Ok(()));
    assert_eq!(
        bill(order(0), detached()).await,
        Err(BillingError("order 7 is free".into()))
    );
}

#[tokio::test]
async fn a_one_argument_handler_is_called_directly() {
    assert_eq!(audit(order(9)).await, Ok(()));
    assert_eq!(audit(order(10)).await, Err(BillingError("audit 11".into())));
}

#[tokio::test]
async fn a_processor_is_called_directly() {
    let ctx = detached().with_extension(5_u64);
    let invoice = invoice(order(10), ctx).await.unwrap();
    assert_eq!(
        invoice,
        Invoice {
            order_id: 7,
            total: 15
        }
    );
    assert_eq!(ship(order(1)).await.unwrap().0.len(), 2);
}

#[tokio::test]
async fn patterns_bind_like_in_an_async_fn() {
    assert!(pair((1, 2), detached()).await.is_ok());
    assert!(pair((3, 2), detached()).await.is_err());
}

#[tokio::test]
async fn the_question_mark_converts_errors() {
    assert_eq!(parse(" 42 ".into()).await.unwrap(), 42);
    let error = parse("many".into()).await.unwrap_err();
    assert_eq!(error.to_string(), "invalid digit found in string");
    assert_eq!(
        parse.into_handler().spec().output_destination(),
        Some("counts")
    );
}

#[test]
fn the_spec_is_the_attribute() {
    let handler = bill.into_handler();
    let spec = handler.spec();
    assert!(spec.name().ends_with("::bill"), "{}", spec.name());
    assert_eq!(spec.name(), concat!(module_path!(), "::bill"));
    assert_eq!(spec.destination(), "orders");
    assert_eq!(spec.group_name(), Some("billing"));
    assert_eq!(spec.output_destination(), None);
    assert_eq!(
        spec,
        &event_binder::HandlerSpec::new(concat!(module_path!(), "::bill"), "orders")
            .group("billing")
    );
}

#[test]
fn a_one_argument_handler_registers() {
    let handler = audit.into_handler();
    assert_eq!(handler.spec().name(), concat!(module_path!(), "::audit"));
    assert_eq!(handler.spec().group_name(), None);
}

#[test]
fn a_processor_registers_with_its_output() {
    let handler = invoice.into_handler();
    assert_eq!(handler.spec().output_destination(), Some("invoices"));
    assert_eq!(handler.spec().group_name(), Some("invoicing"));
}

#[test]
fn every_option_reaches_the_spec() {
    let expected = event_binder::HandlerSpec::new(concat!(module_path!(), "::ship"), "orders")
        .group("shipping")
        .output("shipments")
        .concurrency(8)
        .max_attempts(5);
    assert_eq!(ship.into_handler().spec(), &expected);
}

#[tokio::test]
async fn retry_options_reach_the_spec() {
    use std::time::Duration;

    assert_eq!(charge(order(1)).await, Ok(()));
    let handler = charge.into_handler();
    assert_eq!(handler.spec().call_timeout(), Some(Duration::from_secs(5)));
    let expected = event_binder::HandlerSpec::new(concat!(module_path!(), "::charge"), "orders")
        .group("payments")
        .max_attempts(4)
        .backoff(Duration::from_millis(100), Duration::from_secs(10))
        .jitter(0.2)
        .timeout(Duration::from_secs(5))
        .retry_through_broker(true);
    assert_eq!(handler.spec(), &expected);
    // Each argument is its own: the spec without one of them differs.
    assert_ne!(
        handler.spec(),
        &expected.clone().retry_through_broker(false)
    );
    assert_ne!(handler.spec(), &expected.clone().jitter(0.25));

    let handler = refund.into_handler();
    assert_eq!(
        handler.spec().call_timeout(),
        Some(Duration::from_secs(180))
    );
    let expected = event_binder::HandlerSpec::new(concat!(module_path!(), "::refund"), "orders")
        .backoff(Duration::ZERO, Duration::from_secs(2 * 60 * 60))
        .jitter(1.0)
        .timeout(Duration::from_secs(3 * 60))
        .retry_through_broker(false);
    assert_eq!(handler.spec(), &expected);
    assert_eq!(ship.into_handler().spec().call_timeout(), None);
}

#[test]
fn the_name_includes_the_module() {
    let handler = nested::notify.into_handler();
    assert_eq!(
        handler.spec().name(),
        concat!(module_path!(), "::nested::notify")
    );
    let expected =
        event_binder::HandlerSpec::new(handler.spec().name().to_owned(), "orders").max_attempts(1);
    assert_eq!(handler.spec(), &expected);
}

#[tokio::test]
async fn another_crate_path_works_the_same() {
    assert!(through_core(order(1), detached()).await.is_ok());
    let handler = event_binder_core::IntoHandler::into_handler(through_core);
    assert_eq!(handler.spec().group_name(), Some("core"));
}

#[test]
fn patterns_register() {
    assert_eq!(pair.into_handler().spec().destination(), "pairs");
}

#[tokio::test]
async fn extractors_are_made_from_the_delivery_and_the_app_state() {
    let stock = Stock {
        warehouse: "north",
        ..Stock::default()
    };
    let bus = MemoryChannel::new();
    let running = App::new(bus.clone())
        .state(stock.clone())
        .handler(reserve)
        .start()
        .await
        .unwrap();
    let id = running
        .publisher()
        .publish_keyed("reservations", "customer-3", &order(10))
        .await
        .unwrap();
    bus.wait_idle(Duration::from_secs(10)).await.unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(
        *stock.seen.lock().unwrap(),
        [format!(
            "order 7 id {id} key Some(\"customer-3\") attempt 1 in north"
        )]
    );
}

#[tokio::test]
async fn a_handler_with_extractors_is_called_directly() {
    let stock = Stock {
        warehouse: "south",
        ..Stock::default()
    };
    let id = MessageId("order-7".into());
    let called = reserve(order(10), id, Key(None), Attempt(2), State(stock.clone())).await;
    assert_eq!(called, Ok(()));
    assert_eq!(
        *stock.seen.lock().unwrap(),
        ["order 7 id order-7 key None attempt 2 in south"]
    );
    let handler = reserve.into_handler();
    assert_eq!(handler.spec().destination(), "reservations");
    assert_eq!(handler.spec().group_name(), Some("stock"));
}

#[tokio::test]
async fn a_batch_handler_is_called_directly() {
    let orders = vec![order(1), order(2)];
    let batch = Batch::new(vec![detached(), detached()]);
    let called = reserve_in_bulk(orders, batch).await;
    // A detached context has no app extensions.
    assert_eq!(
        called,
        Err(BillingError("no reservations to record in".into()))
    );
    assert!(count_in_bulk(vec![order(1), order(2)]).await.is_ok());
    let failure = count_in_bulk(vec![order(1), order(0), order(0)])
        .await
        .unwrap_err();
    assert_eq!(failure.len(), 2);
}

#[test]
fn a_batch_handler_registers_with_its_limits() {
    let handler = reserve_in_bulk.into_batch_handler();
    let expected = HandlerSpec::new(concat!(module_path!(), "::reserve_in_bulk"), "stock")
        .group("reserving")
        .batch(4, Duration::from_millis(20));
    assert_eq!(handler.spec(), &expected);
    let handler = count_in_bulk.into_batch_handler();
    assert_eq!(
        handler.spec().batch_limits(),
        Some((100, BatchHandler::DEFAULT_WAIT))
    );
    let handler = event_binder_core::IntoBatchHandler::into_batch_handler(count_through_core);
    assert_eq!(
        handler.spec().batch_limits(),
        Some((3, BatchHandler::DEFAULT_WAIT))
    );
    // Made a `BatchHandler`, it takes layers of its own.
    let layered = reserve_in_bulk
        .into_batch_handler()
        .layer(event_binder::layer_fn(|inner| inner));
    assert_eq!(
        layered.spec().batch_limits(),
        Some((4, Duration::from_millis(20)))
    );
    let _app = App::new(MemoryChannel::new()).batch_handler(layered);
    // Without `batch`, a handler of a `Vec` is a handler of one event.
    let handler = sum_list.into_handler();
    assert_eq!(handler.spec().batch_limits(), None);
}

#[tokio::test]
async fn a_batch_handler_takes_each_message_once_in_batches_of_at_most_its_size() {
    let reservations = Reservations::default();
    let bus = MemoryChannel::new();
    // Every order waits before the app starts, so that batches fill up.
    bus.provision("stock", Some("reserving")).await.unwrap();
    let producer = bus.producer("stock").await.unwrap();
    let orders = (0..10).map(|order_id| {
        Message::new(
            serde_json::to_vec(&OrderPlaced {
                order_id,
                amount: 1,
            })
            .unwrap(),
        )
    });
    producer.send_batch(orders.collect()).await.unwrap();
    let running = App::new(bus.clone())
        .extension(reservations.clone())
        .batch_handler(reserve_in_bulk)
        .start()
        .await
        .unwrap();
    bus.wait_idle(Duration::from_secs(10)).await.unwrap();
    running.shutdown().await.unwrap();

    let batches = reservations.batches.lock().unwrap().clone();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().all(|&size| (1..=4).contains(&size)),
        "{sizes:?}"
    );
    assert_eq!(
        sizes.iter().max(),
        Some(&4),
        "the batches fill up: {sizes:?}"
    );
    let mut handled: Vec<u64> = batches.into_iter().flatten().collect();
    handled.sort_unstable();
    assert_eq!(handled, (0..10).collect::<Vec<_>>(), "each order once");
    assert_eq!(bus.queued("stock", "reserving"), 0);
    assert_eq!(bus.dead_lettered("stock", Some("reserving")), 0);
}

#[tokio::test]
async fn a_vec_without_batch_is_one_event_at_a_time() {
    assert!(sum_list(vec![1, 2]).await.is_ok());
    let bus = MemoryChannel::new();
    let running = App::new(bus.clone())
        .handler(sum_list)
        .start()
        .await
        .unwrap();
    running
        .publisher()
        .publish("lists", &[1, 2, 3])
        .await
        .unwrap();
    running
        .publisher()
        .publish("lists", &[10, 20])
        .await
        .unwrap();
    bus.wait_idle(Duration::from_secs(10)).await.unwrap();
    running.shutdown().await.unwrap();
    // The second list fails its one attempt and is dead-lettered as one message.
    assert_eq!(bus.dead_lettered("lists", None), 1);
}
