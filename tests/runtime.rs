//! Runtime behaviour the conformance suite does not cover, on the in-memory backend:
//! processor outputs, panics, the redelivery cap, an aborted shutdown, timeouts and the
//! errors that steer retries, and tower layers.

use event_binder::memory::{MemoryAcknowledger, MemoryChannel, MemoryConsumer, MemoryProducer};
use event_binder::{
    header, App, Attempt, Batch, BatchHandler, BoxError, Channel, Context, Error, Events, Handler,
    HandlerService, HandlerSpec, Headers, Key, Layer, Message, MessageId, NonRetryable, Producer,
    RetryAfter, RetryPolicy, Service, State, Subscription,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Line {
    order: u64,
    line: u64,
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(max_attempts).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// The configuration error `app` is refused with at start.
async fn refusal<C: Channel, L, St: Send + Sync + 'static>(app: App<C, L, St>) -> String {
    match app.start().await {
        Err(Error::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// Sends `message` to `orders` and lets group `billing` take it `times` times without
/// settling it. The group must exist already, or the message reaches nobody.
async fn deliver_unsettled(bus: &MemoryChannel, message: Message, times: usize) {
    bus.producer("orders")
        .await
        .unwrap()
        .send(message)
        .await
        .unwrap();
    let mut crashing = bus
        .consumer(&Subscription::new("orders").group("billing"))
        .await
        .unwrap();
    for _ in 0..times {
        drop(receive(&mut crashing).await);
    }
}

/// A processor turning an order into two lines.
fn splitter() -> Handler<impl HandlerService> {
    Handler::processor(
        HandlerSpec::new("split", "orders")
            .group("lines")
            .output("lines"),
        |order: Order, _ctx: Context| async move {
            let lines = (1..=2)
                .map(|line| Line {
                    order: order.id,
                    line,
                })
                .collect();
            Ok::<_, std::io::Error>(Events(lines))
        },
    )
}

/// Starts `app` and publishes order 1 to `orders`.
async fn start_with_one_order<L, St: Send + Sync + 'static>(
    app: App<MemoryChannel, L, St>,
) -> event_binder::RunningApp {
    let running = app.start().await.unwrap();
    running
        .publisher()
        .publish("orders", &Order { id: 1 })
        .await
        .unwrap();
    running
}

/// Starts `app`, publishes order 1 and waits until its handler says (through `started`)
/// that it is working on it.
async fn start_with_one_order_in_flight(
    app: App<MemoryChannel>,
    started: &tokio::sync::Notify,
) -> event_binder::RunningApp {
    let running = start_with_one_order(app).await;
    tokio::time::timeout(LIMIT, started.notified())
        .await
        .unwrap();
    running
}

async fn receive<C: event_binder::Consumer>(
    consumer: &mut C,
) -> event_binder::Delivery<C::Acknowledger> {
    tokio::time::timeout(LIMIT, consumer.receive())
        .await
        .expect("a delivery in time")
        .expect("receive")
}

#[tokio::test]
async fn processor_outputs_keep_the_key_name_their_cause_and_have_stable_ids() {
    let bus = MemoryChannel::new();
    let mut lines = bus
        .consumer(&Subscription::new("lines").group("audit"))
        .await
        .unwrap();
    let running = App::new(bus.clone())
        .handler(splitter())
        .start()
        .await
        .unwrap();
    let input = Message::new(r#"{"id":9}"#).with_key("customer-1");
    running
        .publisher()
        .send("orders", input.clone())
        .await
        .unwrap();

    let mut ids = Vec::new();
    for line in 1..=2 {
        let delivery = receive(&mut lines).await;
        let message = delivery.message();
        let body: Line = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(body, Line { order: 9, line });
        assert_eq!(message.key(), Some("customer-1"));
        assert_eq!(
            message.headers().get(header::CAUSATION_ID),
            Some(input.id())
        );
        ids.push(message.id().to_owned());
        delivery.ack().await.unwrap();
    }
    assert_ne!(ids[0], ids[1]);
    running.shutdown().await.unwrap();

    // The same input through a fresh app (a retry after a crash) yields the same ids.
    let running = App::new(bus.clone())
        .handler(splitter())
        .start()
        .await
        .unwrap();
    running
        .publisher()
        .send("orders", input.clone())
        .await
        .unwrap();
    for expected in &ids {
        let delivery = receive(&mut lines).await;
        assert_eq!(delivery.message().id(), expected);
        delivery.ack().await.unwrap();
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("panics", "orders").group("billing"),
            move |order: Order, _ctx: Context| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if order.id > 0 {
                        panic!("order {} is cursed", order.id);
                    }
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let (attempts, error) = dead_letter_of(handler, 4, Order { id: 3 }).await;
    assert_eq!(attempts, "4");
    assert!(
        error.contains("handler panicked: order 3 is cursed"),
        "{error}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// Runs `handler` (group `billing` of `orders`) with `max_attempts` on a bus of its own,
/// publishes `order`, and returns the `dead-letter-attempts` and `dead-letter-error`
/// headers of its dead letter.
async fn dead_letter_of(
    handler: Handler<impl HandlerService>,
    max_attempts: u32,
    order: Order,
) -> (String, String) {
    let bus = MemoryChannel::new();
    let mut dead = bus.dead_letters("orders", Some("billing")).await.unwrap();
    let running = App::new(bus.clone())
        .retry(quick_retries(max_attempts))
        .handler(handler)
        .start()
        .await
        .unwrap();
    running.publisher().publish("orders", &order).await.unwrap();
    let delivery = receive(&mut dead).await;
    let headers = delivery.message().headers();
    let header = |name| headers.get(name).unwrap_or_default().to_owned();
    let found = (
        header(header::DEAD_LETTER_ATTEMPTS),
        header(header::DEAD_LETTER_ERROR),
    );
    delivery.ack().await.unwrap();
    running.shutdown().await.unwrap();
    found
}

#[tokio::test]
async fn a_message_delivered_too_often_is_dead_lettered_without_calling_the_handler() {
    let bus = MemoryChannel::new();
    bus.provision("orders", Some("billing")).await.unwrap();
    // Three deliveries that were never settled, as if the process had crashed each time.
    deliver_unsettled(&bus, Message::new(r#"{"id":1}"#), 3).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("guarded", "orders").group("billing"),
            move |_: Order, _: Context| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), std::io::Error>(()) }
            },
        )
    };
    let mut retry = quick_retries(3);
    retry.max_deliveries = 3;
    let mut dead = bus.dead_letters("orders", Some("billing")).await.unwrap();
    let running = App::new(bus.clone())
        .retry(retry)
        .handler(handler)
        .start()
        .await
        .unwrap();
    let delivery = receive(&mut dead).await;
    let error = delivery
        .message()
        .headers()
        .get(header::DEAD_LETTER_ERROR)
        .unwrap();
    assert!(error.contains("delivered 4 times"), "{error}");
    delivery.ack().await.unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn shutdown_past_its_timeout_hands_in_flight_messages_back() {
    let bus = MemoryChannel::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let started = started.clone();
        Handler::from_fn(
            HandlerSpec::new("stuck", "orders").group("billing"),
            move |_: Order, _: Context| {
                let started = started.clone();
                async move {
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let app = App::new(bus.clone())
        .shutdown_timeout(Duration::from_millis(50))
        .handler(handler);
    let running = start_with_one_order_in_flight(app, &started).await;
    let err = running.shutdown().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    let mut next = bus
        .consumer(&Subscription::new("orders").group("billing"))
        .await
        .unwrap();
    let delivery = receive(&mut next).await;
    assert_eq!(
        delivery.attempt(),
        2,
        "the stuck message comes back for another try"
    );
    delivery.ack().await.unwrap();
}

/// A store that fails the first `failures` claims, and notes when each claim was asked.
#[derive(Debug)]
struct FailingStore {
    inner: event_binder::MemoryIdempotencyStore,
    failures: AtomicUsize,
    /// After the failures, how many claims are answered as held by another holder.
    held: AtomicUsize,
    begun: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

#[async_trait::async_trait]
impl event_binder::IdempotencyStore for FailingStore {
    async fn begin(
        &self,
        key: event_binder::ClaimKey<'_>,
    ) -> event_binder::Result<event_binder::Claim> {
        self.begun.lock().unwrap().push(tokio::time::Instant::now());
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if failing {
            return Err(Error::Idempotency("the database is down".into()));
        }
        let held = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if held {
            return Ok(event_binder::Claim::HeldElsewhere {
                retry_in: Duration::from_millis(10),
            });
        }
        self.inner.begin(key).await
    }

    async fn complete(&self, key: event_binder::ClaimKey<'_>) -> event_binder::Result<()> {
        self.inner.complete(key).await
    }

    async fn abandon(&self, key: event_binder::ClaimKey<'_>) -> event_binder::Result<()> {
        self.inner.abandon(key).await
    }
}

#[tokio::test]
async fn a_message_waits_for_a_failing_store_or_a_held_claim_without_using_up_deliveries() {
    let store = Arc::new(FailingStore {
        inner: event_binder::MemoryIdempotencyStore::new(),
        failures: AtomicUsize::new(3),
        held: AtomicUsize::new(3),
        begun: Default::default(),
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let counting = {
        let (calls, done) = (calls.clone(), done.clone());
        Handler::from_fn(
            HandlerSpec::new("counted", "orders").group("billing"),
            move |_: Order, _: Context| {
                calls.fetch_add(1, Ordering::SeqCst);
                done.notify_one();
                async { Ok::<(), std::io::Error>(()) }
            },
        )
    };
    // Handed back to the broker, each wait would be a delivery: 2 of them would
    // dead-letter the message before its handler ever ran.
    let policy = RetryPolicy {
        max_deliveries: 2,
        ..RetryPolicy::default()
    };
    let bus = MemoryChannel::new();
    let running = start_with_one_order(
        App::new(bus.clone())
            .retry(policy)
            .idempotency(store.clone())
            .handler(counting),
    )
    .await;
    tokio::time::timeout(LIMIT, done.notified()).await.unwrap();
    running.shutdown().await.unwrap();

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "handled once, once the store answered"
    );
    assert_eq!(bus.dead_lettered("orders", Some("billing")), 0);
    let begun = store.begun.lock().unwrap().clone();
    assert_eq!(
        begun.len(),
        7,
        "three failed claims, three held elsewhere, then the one acquired"
    );
    // Each failure in a row doubles the wait before the message is claimed again.
    for (failures, pair) in (1u32..).zip(begun.windows(2).take(3)) {
        let waited = pair[1] - pair[0];
        let backoff = Duration::from_millis(100 * 2u64.pow(failures - 1));
        assert!(
            waited >= backoff,
            "after {failures} failures: waited {waited:?} < {backoff:?}"
        );
    }
    // A held claim is asked about again after the time the store said.
    for pair in begun.windows(2).skip(3) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_failing_store_inside_the_handler_uses_up_no_attempt() {
    // What a transactional inbox returns when its database fails: more failures in a row
    // than the handler has attempts, and the message is still handled, not dead-lettered.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handler = Handler::from_fn(
        HandlerSpec::new("bill", "orders").group("billing"),
        move |_order: Order, _ctx: Context| {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if call < 3 {
                    return Err(Error::Idempotency("the database is down".into()));
                }
                Ok(())
            }
        },
    );
    let bus = MemoryChannel::new();
    let running = App::new(bus.clone())
        .retry(quick_retries(2))
        .handler(handler)
        .start()
        .await
        .unwrap();
    bus.producer("orders")
        .await
        .unwrap()
        .send(Message::new(r#"{"id":1}"#))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while calls.load(Ordering::SeqCst) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not handled in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(bus.dead_lettered("orders", Some("billing")), 0);
}

#[tokio::test]
async fn a_handled_message_redelivered_past_the_cap_is_acknowledged_not_dead_lettered() {
    let bus = MemoryChannel::new();
    let store = Arc::new(event_binder::MemoryIdempotencyStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let counting = || {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("counted", "orders").group("billing"),
            move |_: Order, _: Context| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), std::io::Error>(()) }
            },
        )
    };
    let mut retry = quick_retries(3);
    retry.max_deliveries = 3;

    // Handled once: its id is recorded.
    let first = App::new(bus.clone())
        .idempotency(store.clone())
        .retry(retry)
        .handler(counting())
        .start()
        .await
        .unwrap();
    let message = Message::new(r#"{"id":1}"#);
    first
        .publisher()
        .send("orders", message.clone())
        .await
        .unwrap();
    bus.wait_idle(LIMIT).await.unwrap();
    first.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The same message again, left unsettled three times (an ack lost, then crashes).
    deliver_unsettled(&bus, message, 3).await;

    let second = App::new(bus.clone())
        .idempotency(store)
        .retry(retry)
        .handler(counting())
        .start()
        .await
        .unwrap();
    bus.wait_idle(LIMIT).await.unwrap();
    second.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled again");
    assert_eq!(
        bus.dead_lettered("orders", Some("billing")),
        0,
        "dead-lettered although handled"
    );
    assert_eq!(bus.queued("orders", "billing"), 0);
}

/// Polls `done` until it holds, failing after [`LIMIT`].
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An order whose `Deserialize` panics for order 13, as a buggy hand-written impl would.
#[derive(Debug)]
struct Touchy;

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let order = Order::deserialize(deserializer)?;
        assert!(order.id != 13, "order 13 breaks the decoder");
        Ok(Touchy)
    }
}

/// A handler of `Touchy` orders in group `billing`, counting what it handled.
fn touchy_handler(handled: Arc<AtomicUsize>, concurrency: usize) -> Handler<impl HandlerService> {
    Handler::from_fn(
        HandlerSpec::new("touchy", "orders")
            .group("billing")
            .concurrency(concurrency),
        move |_: Touchy, _: Context| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), std::io::Error>(()) }
        },
    )
}

#[tokio::test]
async fn a_panic_while_decoding_is_a_failure_and_the_handler_goes_on() {
    let bus = MemoryChannel::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let mut dead = bus.dead_letters("orders", Some("billing")).await.unwrap();
    let running = App::new(bus.clone())
        .retry(quick_retries(2))
        .handler(touchy_handler(handled.clone(), 1))
        .start()
        .await
        .unwrap();
    for id in 10..20 {
        running
            .publisher()
            .publish("orders", &Order { id })
            .await
            .unwrap();
    }
    let delivery = receive(&mut dead).await;
    let headers = delivery.message().headers();
    assert_eq!(headers.get(header::DEAD_LETTER_ATTEMPTS), Some("2"));
    let error = headers.get(header::DEAD_LETTER_ERROR).unwrap();
    assert!(error.contains("order 13 breaks the decoder"), "{error}");
    delivery.ack().await.unwrap();
    wait_until("the 9 good orders", || handled.load(Ordering::SeqCst) == 9).await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_while_decoding_never_leaves_its_id_claimed() {
    let bus = MemoryChannel::new();
    bus.provision("orders", Some("billing")).await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let running = App::new(bus.clone())
        .retry(quick_retries(2))
        .handler(touchy_handler(handled.clone(), 4))
        .start()
        .await
        .unwrap();
    let producer = bus.producer("orders").await.unwrap();
    let cursed = Message::new(r#"{"id":13}"#);
    // The same message twice: the second copy must not wait for ever on the first's claim.
    producer.send(cursed.clone()).await.unwrap();
    for id in 20..30 {
        producer
            .send(Message::new(format!(r#"{{"id":{id}}}"#)))
            .await
            .unwrap();
    }
    producer.send(cursed).await.unwrap();
    bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 10);
    assert_eq!(bus.dead_lettered("orders", Some("billing")), 2);
    running.shutdown().await.unwrap();
}

/// An event whose `Serialize` panics, as a buggy hand-written impl would.
struct Unprintable;

impl Serialize for Unprintable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this event cannot be written")
    }
}

#[tokio::test]
async fn a_panic_while_encoding_a_processors_output_is_a_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        Handler::processor(
            HandlerSpec::new("bad-output", "orders")
                .group("billing")
                .output("invoices"),
            move |_: Order, _: Context| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(Unprintable) }
            },
        )
    };
    let (attempts, error) = dead_letter_of(handler, 3, Order { id: 1 }).await;
    assert_eq!(attempts, "3");
    assert!(error.contains("this event cannot be written"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// The in-memory channel, but the first consumer it opens panics on its second receive,
/// as a backend bug would.
#[derive(Debug, Clone)]
struct FlakyChannel {
    inner: MemoryChannel,
    panicked: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct FlakyConsumer {
    inner: MemoryConsumer,
    receives: usize,
    panicked: Arc<std::sync::atomic::AtomicBool>,
}

impl event_binder::Consumer for FlakyConsumer {
    type Acknowledger = MemoryAcknowledger;

    fn subscription(&self) -> &Subscription {
        self.inner.subscription()
    }

    async fn receive(
        &mut self,
    ) -> event_binder::Result<event_binder::Delivery<MemoryAcknowledger>> {
        self.receives += 1;
        if self.receives == 2 && !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("the consumer broke");
        }
        self.inner.receive().await
    }
}

impl FlakyChannel {
    fn flaky(&self, inner: MemoryConsumer) -> FlakyConsumer {
        FlakyConsumer {
            inner,
            receives: 0,
            panicked: self.panicked.clone(),
        }
    }
}

impl Channel for FlakyChannel {
    type Producer = MemoryProducer;
    type Consumer = FlakyConsumer;

    fn backend(&self) -> &'static str {
        "flaky"
    }

    fn capabilities(&self) -> event_binder::Capabilities {
        self.inner.capabilities()
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> event_binder::Result<()> {
        self.inner.provision(destination, group).await
    }

    async fn producer(&self, destination: &str) -> event_binder::Result<MemoryProducer> {
        self.inner.producer(destination).await
    }

    async fn consumer(&self, subscription: &Subscription) -> event_binder::Result<FlakyConsumer> {
        Ok(self.flaky(self.inner.consumer(subscription).await?))
    }

    async fn dead_letters(
        &self,
        destination: &str,
        group: Option<&str>,
    ) -> event_binder::Result<FlakyConsumer> {
        Ok(self.flaky(self.inner.dead_letters(destination, group).await?))
    }

    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> event_binder::Result<()> {
        self.inner.send_to_group(destination, group, messages).await
    }

    async fn close(&self) -> event_binder::Result<()> {
        self.inner.close().await
    }
}

#[tokio::test]
async fn a_consume_loop_that_dies_is_started_again() {
    let bus = MemoryChannel::new();
    let flaky = FlakyChannel {
        inner: bus.clone(),
        panicked: Arc::default(),
    };
    let handled = Arc::new(AtomicUsize::new(0));
    for concurrency in [1, 4] {
        flaky.panicked.store(false, Ordering::SeqCst);
        handled.store(0, Ordering::SeqCst);
        let counting = {
            let handled = handled.clone();
            Handler::from_fn(
                HandlerSpec::new("counted", "orders")
                    .group("billing")
                    .concurrency(concurrency),
                move |_: Order, _: Context| {
                    handled.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<(), std::io::Error>(()) }
                },
            )
        };
        let running = App::new(flaky.clone())
            .handler(counting)
            .start()
            .await
            .unwrap();
        for id in 0..5 {
            running
                .publisher()
                .publish("orders", &Order { id })
                .await
                .unwrap();
        }
        wait_until("every order after the consumer broke", || {
            handled.load(Ordering::SeqCst) == 5
        })
        .await;
        assert!(
            flaky.panicked.load(Ordering::SeqCst),
            "the consumer never broke"
        );
        running.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn dropping_the_running_app_lets_in_flight_handlers_finish() {
    let bus = MemoryChannel::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        Handler::from_fn(
            HandlerSpec::new("slow", "orders").group("billing"),
            move |_: Order, _: Context| {
                let (started, finished) = (started.clone(), finished.clone());
                async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let running =
        start_with_one_order_in_flight(App::new(bus.clone()).handler(handler), &started).await;
    drop(running);
    wait_until("the in-flight handler to finish", || {
        finished.load(Ordering::SeqCst) == 1
    })
    .await;
    bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(bus.queued("orders", "billing"), 0, "it was acknowledged");
}

#[tokio::test]
async fn invalid_retry_policies_are_refused_at_start() {
    let ok = || {
        Handler::from_fn(
            HandlerSpec::new("ok", "orders").group("billing"),
            |_: Order, _: Context| async { Ok::<(), std::io::Error>(()) },
        )
    };
    let defaults = RetryPolicy::default();
    for (policy, what) in [
        (
            RetryPolicy {
                multiplier: -2.0,
                ..defaults
            },
            "multiplier",
        ),
        (
            RetryPolicy {
                multiplier: f64::NAN,
                ..defaults
            },
            "multiplier",
        ),
        (
            RetryPolicy {
                max_attempts: 0,
                ..defaults
            },
            "max_attempts",
        ),
        (
            RetryPolicy {
                max_deliveries: 0,
                ..defaults
            },
            "max_deliveries",
        ),
        (
            RetryPolicy {
                initial_backoff: Duration::from_secs(5),
                max_backoff: Duration::from_secs(1),
                ..defaults
            },
            "initial_backoff",
        ),
        (
            RetryPolicy {
                jitter: 1.5,
                ..defaults
            },
            "jitter",
        ),
    ] {
        // Computing a delay never panics, whatever the fields say.
        let _ = policy.delay_after(3);
        let app_wide = App::new(MemoryChannel::new()).retry(policy).handler(ok());
        let per_handler = App::new(MemoryChannel::new())
            .handler(ok().with_spec(HandlerSpec::new("ok", "orders").retry(policy)));
        for app in [app_wide, per_handler] {
            let message = refusal(app).await;
            assert!(message.contains(what), "{message}");
        }
    }
}

#[tokio::test]
async fn two_handlers_sharing_one_group_are_refused_naming_both() {
    let named = |name: &'static str| {
        Handler::from_fn(
            HandlerSpec::new(name, "orders").group("billing"),
            |_: Order, _: Context| async { Ok::<(), std::io::Error>(()) },
        )
    };
    let message = refusal(
        App::new(MemoryChannel::new())
            .handler(named("invoice"))
            .handler(named("audit")),
    )
    .await;
    assert!(
        message.contains("invoice") && message.contains("audit") && message.contains("billing"),
        "{message}"
    );
    // Anonymous subscriptions each see every message: two of them are fine.
    let anonymous = |name: &'static str| {
        Handler::from_fn(
            HandlerSpec::new(name, "orders"),
            |_: Order, _: Context| async { Ok::<(), std::io::Error>(()) },
        )
    };
    App::new(MemoryChannel::new())
        .handler(anonymous("a"))
        .handler(anonymous("b"))
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_handler_past_its_timeout_fails_that_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("stuck", "orders")
                .group("billing")
                .timeout(Duration::from_millis(20)),
            move |order: Order, _: Context| {
                let calls = calls.clone();
                async move {
                    // The first call hangs; the second finishes at once.
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    Err::<(), _>(format!("order {} fails", order.id))
                }
            },
        )
    };
    let (attempts, error) = dead_letter_of(handler, 2, Order { id: 1 }).await;
    assert_eq!(attempts, "2");
    assert_eq!(
        error, "order 1 fails",
        "the last attempt's error is the reason"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let hangs = Handler::from_fn(
        HandlerSpec::new("stuck", "orders")
            .group("billing")
            .timeout(Duration::from_millis(20)),
        |_: Order, _: Context| async {
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        },
    );
    let (attempts, error) = dead_letter_of(hangs, 2, Order { id: 2 }).await;
    assert_eq!(attempts, "2");
    assert!(
        error.contains("did not finish within its timeout of 20ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_non_retryable_error_found_among_the_sources_stops_the_retries() {
    #[derive(Debug, thiserror::Error)]
    #[error("reserving order {0} failed")]
    struct Reserving(u64, #[source] NonRetryable);

    let handler = Handler::from_fn(
        HandlerSpec::new("reserve", "orders").group("billing"),
        |order: Order, _: Context| async move {
            Err::<(), _>(Reserving(order.id, NonRetryable::new("no such product")))
        },
    );
    let (attempts, error) = dead_letter_of(handler, 5, Order { id: 7 }).await;
    assert_eq!(attempts, "1");
    assert_eq!(error, "reserving order 7 failed: no such product");
}

#[tokio::test]
async fn retry_after_sets_the_wait_before_the_next_attempt() {
    let wait = Duration::from_millis(150);
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("busy", "orders").group("billing"),
            move |_: Order, ctx: Context| {
                let calls = calls.clone();
                async move {
                    calls.lock().unwrap().push(tokio::time::Instant::now());
                    if ctx.attempt() == 1 {
                        return Err(BoxError::from(RetryAfter::new(wait, "rate limited")));
                    }
                    Ok(())
                }
            },
        )
    };
    let bus = MemoryChannel::new();
    // The policy's own backoff is far shorter than the wait asked for.
    let running = start_with_one_order(
        App::new(bus.clone())
            .retry(quick_retries(3))
            .handler(handler),
    )
    .await;
    wait_until("the second attempt", || calls.lock().unwrap().len() == 2).await;
    running.shutdown().await.unwrap();
    let calls = calls.lock().unwrap();
    assert!(calls[1] - calls[0] >= wait, "{:?}", calls[1] - calls[0]);
    assert_eq!(
        bus.queued("orders", "billing"),
        0,
        "handled on the second attempt"
    );
}

#[tokio::test]
async fn keyed_messages_on_an_ordered_destination_retry_in_process_even_through_the_broker() {
    // A failing keyed message: a later message of the key must not overtake it, so its
    // retries wait in process although the policy asks for the broker.
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("keyed", "orders")
                .group("billing")
                .concurrency(4)
                .retry_through_broker(true),
            move |order: Order, ctx: Context| {
                let calls = calls.clone();
                async move {
                    calls.lock().unwrap().push((order.id, ctx.attempt()));
                    if order.id == 1 && ctx.attempt() < 3 {
                        return Err(format!("order {} fails", order.id));
                    }
                    Ok(())
                }
            },
        )
    };
    let bus = MemoryChannel::new();
    // Handed back to the broker, the message would come back as a second delivery, past
    // this cap, and be dead-lettered unhandled.
    let one_delivery = RetryPolicy {
        max_deliveries: 1,
        ..quick_retries(3)
    };
    let running = App::new(bus.clone())
        .retry(one_delivery)
        .handler(handler)
        .start()
        .await
        .unwrap();
    let producer = bus.producer("orders").await.unwrap();
    for id in [1, 2] {
        let message =
            Message::new(serde_json::to_vec(&Order { id }).unwrap()).with_key("customer-7");
        producer.send(message).await.unwrap();
    }
    wait_until("both orders handled", || calls.lock().unwrap().len() == 4).await;
    running.shutdown().await.unwrap();
    assert_eq!(*calls.lock().unwrap(), [(1, 1), (1, 2), (1, 3), (2, 1)]);
}

/// A layer that records each call it sees as `name` (into `calls`), then calls on.
#[derive(Clone)]
struct Recording<S> {
    name: &'static str,
    calls: Arc<std::sync::Mutex<Vec<String>>>,
    inner: S,
}

/// Makes [`Recording`] services: one layer for handlers of any type, as an app's layer is.
#[derive(Clone)]
struct RecordingLayer {
    name: &'static str,
    calls: Arc<std::sync::Mutex<Vec<String>>>,
}

fn recording(name: &'static str, calls: &Arc<std::sync::Mutex<Vec<String>>>) -> RecordingLayer {
    RecordingLayer {
        name,
        calls: calls.clone(),
    }
}

impl<S> Layer<S> for RecordingLayer {
    type Service = Recording<S>;

    fn layer(&self, inner: S) -> Recording<S> {
        Recording {
            name: self.name,
            calls: self.calls.clone(),
            inner,
        }
    }
}

impl<S> Service<Context> for Recording<S>
where
    S: Service<Context>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: Context) -> S::Future {
        let line = format!("{} attempt {}", self.name, ctx.attempt());
        self.calls.lock().unwrap().push(line);
        self.inner.call(ctx)
    }
}

#[tokio::test]
async fn app_and_handler_layers_wrap_every_attempt_outside_in() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let calls = calls.clone();
        Handler::from_fn(
            HandlerSpec::new("flaky", "orders").group("billing"),
            move |_: Order, ctx: Context| {
                let calls = calls.clone();
                async move {
                    calls
                        .lock()
                        .unwrap()
                        .push(format!("handler attempt {}", ctx.attempt()));
                    if ctx.attempt() == 1 {
                        return Err("the first attempt fails");
                    }
                    Ok(())
                }
            },
        )
    }
    .layer(recording("handler layer", &calls));
    let bus = MemoryChannel::new();
    let running = start_with_one_order(
        App::new(bus.clone())
            .retry(quick_retries(3))
            .layer(recording("app layer", &calls))
            .handler(handler),
    )
    .await;
    wait_until("the second attempt", || calls.lock().unwrap().len() == 6).await;
    running.shutdown().await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "app layer attempt 1",
            "handler layer attempt 1",
            "handler attempt 1",
            "app layer attempt 2",
            "handler layer attempt 2",
            "handler attempt 2",
        ]
    );
    assert_eq!(bus.queued("orders", "billing"), 0);
}

#[tokio::test]
async fn an_app_layer_added_after_a_handler_is_refused_naming_it() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = App::new(MemoryChannel::new())
        .handler(Handler::from_fn(
            HandlerSpec::new("early", "orders").group("billing"),
            |_: Order, _: Context| async { Ok::<(), std::io::Error>(()) },
        ))
        .layer(recording("late", &calls));
    let message = refusal(app).await;
    assert!(
        message.contains("handler early is registered before a layer"),
        "{message}"
    );
}

#[tokio::test]
async fn batch_limits_on_a_handler_of_one_event_are_refused() {
    let app = App::new(MemoryChannel::new()).handler(Handler::from_fn(
        HandlerSpec::new("single", "orders")
            .group("billing")
            .batch(10, Duration::from_millis(5)),
        |_: Order, _: Context| async { Ok::<(), std::io::Error>(()) },
    ));
    let message = refusal(app).await;
    assert!(
        message.contains("handler single has batch limits"),
        "{message}"
    );
}

#[tokio::test]
async fn a_batch_that_fails_as_a_whole_is_retried_then_each_message_dead_lettered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        BatchHandler::from_fn(
            HandlerSpec::new("bulk", "orders")
                .group("billing")
                .batch(10, Duration::from_millis(20)),
            move |orders: Vec<Order>, _: Batch| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(format!("the warehouse refused {} orders", orders.len()))
                }
            },
        )
    };
    let bus = MemoryChannel::new();
    bus.provision("orders", Some("billing")).await.unwrap();
    let mut dead = bus.dead_letters("orders", Some("billing")).await.unwrap();
    let producer = bus.producer("orders").await.unwrap();
    let orders = (1..=3).map(|id| Message::new(serde_json::to_vec(&Order { id }).unwrap()));
    producer.send_batch(orders.collect()).await.unwrap();
    let running = App::new(bus.clone())
        .retry(quick_retries(2))
        .batch_handler(handler)
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = receive(&mut dead).await;
        let headers = delivery.message().headers();
        assert_eq!(headers.get(header::DEAD_LETTER_ATTEMPTS), Some("2"));
        assert_eq!(
            headers.get(header::DEAD_LETTER_ERROR),
            Some("the warehouse refused 3 orders")
        );
        delivery.ack().await.unwrap();
    }
    running.shutdown().await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one call per attempt of the batch"
    );
    assert_eq!(bus.queued("orders", "billing"), 0);
}

#[tokio::test]
async fn extractors_and_the_app_state_reach_the_handler() {
    #[derive(Clone)]
    struct Warehouse {
        name: &'static str,
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        Handler::from_fn(
            HandlerSpec::new("reserve", "orders").group("stock"),
            move |order: Order,
                  id: MessageId,
                  Key(key): Key,
                  Attempt(attempt): Attempt,
                  headers: Headers,
                  State(warehouse): State<Arc<Warehouse>>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(format!(
                        "order {} id {id} key {key:?} attempt {attempt} tenant {:?} in {}",
                        order.id,
                        headers.get("tenant"),
                        warehouse.name
                    ));
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let bus = MemoryChannel::new();
    let running = App::new(bus.clone())
        .state(Arc::new(Warehouse { name: "north" }))
        .handler(handler)
        .start()
        .await
        .unwrap();
    let message = Message::new(serde_json::to_vec(&Order { id: 7 }).unwrap())
        .with_key("customer-3")
        .with_header("tenant", "acme");
    let id = message.id().to_owned();
    bus.producer("orders")
        .await
        .unwrap()
        .send(message)
        .await
        .unwrap();
    wait_until("the order handled", || seen.lock().unwrap().len() == 1).await;
    running.shutdown().await.unwrap();
    assert_eq!(
        seen.lock().unwrap()[0],
        format!(
            "order 7 id {id} key Some(\"customer-3\") attempt 1 tenant Some(\"acme\") in north"
        )
    );
}

#[tokio::test]
async fn a_handler_that_wakes_itself_does_not_keep_other_tasks_from_running() {
    // The handler waits for a flag that only another task of this one-thread runtime sets,
    // waking itself on every poll (as a future out of Tokio's cooperative budget does): the
    // binding must yield to the scheduler between polls, or that task never runs.
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (flag, handled) = (flag.clone(), handled.clone());
        Handler::from_fn(
            HandlerSpec::new("patient", "orders").group("billing"),
            move |_: Order| {
                let (flag, handled) = (flag.clone(), handled.clone());
                async move {
                    std::future::poll_fn(|cx| {
                        if flag.load(Ordering::SeqCst) {
                            return std::task::Poll::Ready(());
                        }
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    })
                    .await;
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let running = start_with_one_order(
        App::new(MemoryChannel::new())
            .concurrency(2)
            .handler(handler),
    )
    .await;
    let setter = tokio::spawn({
        let flag = flag.clone();
        async move { flag.store(true, Ordering::SeqCst) }
    });
    tokio::time::timeout(LIMIT, setter).await.unwrap().unwrap();
    wait_until("the order handled", || handled.load(Ordering::SeqCst) == 1).await;
    running.shutdown().await.unwrap();
}

/// An anonymous subscription's binding keeps its consumer while paused, so what is
/// published meanwhile waits for it; stopped, its consumer (and the subscription) goes.
#[tokio::test]
async fn a_paused_anonymous_binding_keeps_its_subscription_a_stopped_one_does_not() {
    let bus = MemoryChannel::new();
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let running = App::new(bus)
        .concurrency(1)
        .handler(Handler::from_fn(
            HandlerSpec::new("watch", "orders"),
            move |order: Order| {
                let _ = seen.send(order.id);
                async { Ok::<_, BoxError>(()) }
            },
        ))
        .start()
        .await
        .unwrap();
    let publish = |id| {
        let publisher = running.publisher().clone();
        async move { publisher.publish("orders", &Order { id }).await.unwrap() }
    };
    publish(1).await;
    assert_eq!(next(&mut seen_rx).await, 1);
    let bindings = running.bindings().clone();
    bindings.pause("watch").await.unwrap();
    publish(2).await;
    bindings.resume("watch").await.unwrap();
    assert_eq!(next(&mut seen_rx).await, 2, "kept through the pause");
    bindings.stop("watch").await.unwrap();
    publish(3).await;
    bindings.start("watch").await.unwrap();
    publish(4).await;
    // In order, one at a time: had 3 been kept, it would come first.
    assert_eq!(
        next(&mut seen_rx).await,
        4,
        "3 went with the stopped subscription"
    );
    running.shutdown().await.unwrap();
}

/// A binding whose consumer the backend shuts down ends its loop, and the app says so.
#[tokio::test]
async fn a_binding_whose_consumer_is_shut_down_makes_the_app_unhealthy() {
    let bus = MemoryChannel::new();
    let running = App::new(bus.clone())
        .handler(Handler::from_fn(
            HandlerSpec::new("bill", "orders").group("billing"),
            |_: Order| async { Ok::<_, BoxError>(()) },
        ))
        .start()
        .await
        .unwrap();
    assert!(running.health().healthy, "{:?}", running.health());
    bus.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let health = loop {
        let health = running.health();
        if !health.healthy {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still healthy: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        health.problems,
        vec!["binding bill: its consume loop ended".to_owned()]
    );
    assert!(!health.bindings[0].loop_alive);
    let _ = running.shutdown().await;
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>) -> u64 {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("a handled order")
        .unwrap()
}
