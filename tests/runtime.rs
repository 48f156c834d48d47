//! Runtime behaviour the conformance suite does not cover, on the in-memory backend:
//! processor outputs, panics, the redelivery cap and an aborted shutdown.

use event_binder::memory::MemoryChannel;
use event_binder::{
    header, App, Channel, Context, Error, Events, Handler, HandlerSpec, Message, RetryPolicy,
    Subscription,
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
        drop(receive(&mut *crashing).await);
    }
}

/// A processor turning an order into two lines.
fn splitter() -> Handler {
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

async fn receive(consumer: &mut dyn event_binder::Consumer) -> event_binder::Delivery {
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
        let delivery = receive(&mut *lines).await;
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
        let delivery = receive(&mut *lines).await;
        assert_eq!(delivery.message().id(), expected);
        delivery.ack().await.unwrap();
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered() {
    let bus = MemoryChannel::new();
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
    let mut dead = bus.dead_letters("orders", Some("billing")).await.unwrap();
    let running = App::new(bus.clone())
        .retry(quick_retries(4))
        .handler(handler)
        .start()
        .await
        .unwrap();
    running
        .publisher()
        .publish("orders", &Order { id: 3 })
        .await
        .unwrap();
    let delivery = receive(&mut *dead).await;
    let headers = delivery.message().headers();
    assert_eq!(headers.get(header::DEAD_LETTER_ATTEMPTS), Some("4"));
    let error = headers.get(header::DEAD_LETTER_ERROR).unwrap();
    assert!(
        error.contains("handler panicked: order 3 is cursed"),
        "{error}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    delivery.ack().await.unwrap();
    running.shutdown().await.unwrap();
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
    let delivery = receive(&mut *dead).await;
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
    let running = App::new(bus.clone())
        .shutdown_timeout(Duration::from_millis(50))
        .handler(handler)
        .start()
        .await
        .unwrap();
    running
        .publisher()
        .publish("orders", &Order { id: 1 })
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, started.notified())
        .await
        .unwrap();
    let err = running.shutdown().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    let mut next = bus
        .consumer(&Subscription::new("orders").group("billing"))
        .await
        .unwrap();
    let delivery = receive(&mut *next).await;
    assert_eq!(
        delivery.attempt(),
        2,
        "the stuck message comes back for another try"
    );
    delivery.ack().await.unwrap();
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
