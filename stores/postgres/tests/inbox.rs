//! The transactional inbox on the in-memory broker and the test database: a handler's
//! writes and the record of its message commit together, once per message id, across
//! instances and restarts; a failed call leaves nothing behind.

mod support;

use event_binder_core::{
    App, BoxError, Channel, Consumer, Context, Error, Events, FromContext, Handler, HandlerService,
    HandlerSpec, Message, MessageId, Producer, RetryPolicy, RunningApp, Subscription,
};
use event_binder_memory::MemoryChannel;
use event_binder_postgres::{InboxTransaction, Outbox};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, store, Effects, TempTable};

const LIMIT: Duration = Duration::from_secs(20);

async fn send(bus: &MemoryChannel, ids: &[&str]) {
    let producer = bus.producer("orders").await.unwrap();
    for id in ids {
        producer
            .send(Message::new_with_id(*id, "{}"))
            .await
            .unwrap();
    }
}

async fn start(bus: &MemoryChannel, handler: Handler<impl HandlerService>) -> RunningApp {
    App::new(bus.clone())
        .retry(RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .handler(handler)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_id_is_applied_once_across_redeliveries_and_restarts() {
    let handled = TempTable::new("inbox_handled");
    let store = store(&handled.name).await;
    let effects = Effects::new().await;
    let bus = MemoryChannel::new();
    let running = start(&bus, effects.handler(&store, 1)).await;
    send(&bus, &["m-1", "m-1", "m-2", "m-1", "end"]).await;
    // One at a time, in order: once `end` is applied, every earlier delivery was settled.
    eventually("the last message applied", LIMIT, || effects.applied("end")).await;
    running.shutdown().await.unwrap();
    assert_eq!(effects.ids().await, ["end", "m-1", "m-2"]);
    assert_eq!(effects.counter().await, 3);
    assert_eq!(bus.dead_lettered("orders", Some("effects")), 0);

    // A new instance (its in-memory store empty, as after a crash) gets m-1 and m-2 again.
    let restarted = start(&bus, effects.handler(&store, 1)).await;
    send(&bus, &["m-2", "m-1", "end-2"]).await;
    eventually("the restarted instance's last message", LIMIT, || {
        effects.applied("end-2")
    })
    .await;
    restarted.shutdown().await.unwrap();
    assert_eq!(effects.ids().await, ["end", "end-2", "m-1", "m-2"]);
    assert_eq!(effects.counter().await, 4);
}

#[tokio::test]
async fn two_instances_given_the_same_ids_at_once_apply_each_once() {
    let handled = TempTable::new("inbox_handled");
    let store = store(&handled.name).await;
    let effects = Effects::new().await;
    let bus = MemoryChannel::new();
    // Two instances of one group: they share the deliveries, each with its own claims.
    let first = start(&bus, effects.handler(&store, 8)).await;
    let second = start(&bus, effects.handler(&store, 8)).await;
    let ids: Vec<String> = (0..200).map(|i| format!("order-{i:03}")).collect();
    let twice: Vec<&str> = ids.iter().chain(&ids).map(String::as_str).collect();
    send(&bus, &twice).await;
    eventually("200 effects", LIMIT, || async {
        effects.counter().await >= 200
    })
    .await;
    // Every delivery settled: a straggler would add to the counter or the dead letters.
    send(&bus, &["end"]).await;
    eventually("the last message applied", LIMIT, || effects.applied("end")).await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    assert_eq!(effects.counter().await, 201);
    assert_eq!(effects.ids().await.len(), 201);
    assert_eq!(bus.dead_lettered("orders", Some("effects")), 0);
}

#[tokio::test]
async fn a_failed_call_rolls_back_its_writes_and_the_record() {
    let handled = TempTable::new("inbox_handled");
    let store = store(&handled.name).await;
    let effects = Effects::new().await;
    let (rows, counter) = (effects.rows.name.clone(), effects.counter.name.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    // Writes its effect, then fails on the first attempt: the effect must not stay.
    let handler = Handler::from_fn(
        HandlerSpec::new("apply", "orders").group("effects"),
        move |_event: serde_json::Value, id: MessageId, tx: InboxTransaction| {
            let (rows, counter, calls) = (rows.clone(), counter.clone(), counted.clone());
            async move {
                Effects::apply(&rows, &counter, &id, &tx).await?;
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err::<(), BoxError>("failing after writing".into());
                }
                Ok(())
            }
        },
    )
    .layer(store.inbox());
    let bus = MemoryChannel::new();
    let running = start(&bus, handler).await;
    send(&bus, &["m-1"]).await;
    eventually("the effect applied", LIMIT, || effects.applied("m-1")).await;
    running.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(effects.counter().await, 1);
    assert_eq!(handled.count().await, 1);
}

#[tokio::test]
async fn a_processor_writes_its_outputs_to_the_outbox_in_the_transaction() {
    let handled = TempTable::new("inbox_handled");
    let outbox_table = TempTable::new("inbox_outbox");
    let store = store(&handled.name).await;
    let outbox = Outbox::with_table(store.pool().clone(), &outbox_table.name)
        .await
        .unwrap();
    let processor = Handler::processor(
        HandlerSpec::new("split", "orders")
            .group("lines")
            .output("lines")
            .concurrency(1),
        |order: serde_json::Value, _tx: InboxTransaction| async move {
            Ok::<_, BoxError>(Events(vec![order.clone(), order]))
        },
    )
    .layer(store.inbox().with_outbox(outbox.clone()));
    let bus = MemoryChannel::new();
    let mut lines = bus
        .consumer(&Subscription::new("lines").group("audit"))
        .await
        .unwrap();
    let running = start(&bus, processor).await;
    let input = Message::new_with_id("order-1", r#"{"order":1}"#).with_key("customer-7");
    let producer = bus.producer("orders").await.unwrap();
    producer.send(input.clone()).await.unwrap();
    eventually("two outputs in the outbox", LIMIT, || async {
        outbox.pending().await.unwrap() == 2
    })
    .await;
    // Delivered again: handled, so nothing more is written.
    producer.send(input).await.unwrap();
    producer
        .send(Message::new_with_id("order-2", r#"{"order":2}"#))
        .await
        .unwrap();
    eventually("the next order's outputs", LIMIT, || async {
        outbox.pending().await.unwrap() == 4
    })
    .await;
    running.shutdown().await.unwrap();

    let relay = outbox.relay(event_binder_core::Publisher::new(bus.clone()));
    assert_eq!(relay.publish_pending().await.unwrap(), 4);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    let mut received = Vec::new();
    for _ in 0..4 {
        let delivery = tokio::time::timeout(LIMIT, lines.receive())
            .await
            .expect("an output within the limit")
            .unwrap();
        let message = delivery.message().clone();
        delivery.ack().await.unwrap();
        received.push(message);
    }
    // The ids the runtime would give them: derived from the input's, stable across attempts.
    let first = &received[0];
    assert_eq!(first.key(), Some("customer-7"));
    assert_eq!(
        first.headers().get(event_binder_core::header::CAUSATION_ID),
        Some("order-1")
    );
    let mut ids: Vec<&str> = received.iter().map(Message::id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "outputs share ids: {ids:?}");
}

#[tokio::test]
async fn a_processor_behind_an_inbox_without_an_outbox_is_dead_lettered_with_nothing_recorded() {
    let handled = TempTable::new("inbox_handled");
    let store = store(&handled.name).await;
    let processor = Handler::processor(
        HandlerSpec::new("split", "orders")
            .group("lines")
            .output("lines"),
        |order: serde_json::Value| async move { Ok::<_, BoxError>(order) },
    )
    .layer(store.inbox());
    let bus = MemoryChannel::new();
    let running = start(&bus, processor).await;
    send(&bus, &["order-1"]).await;
    eventually("the dead letter", LIMIT, || async {
        bus.dead_lettered("orders", Some("lines")) == 1
    })
    .await;
    running.shutdown().await.unwrap();
    assert_eq!(handled.count().await, 0);
}

#[tokio::test]
async fn an_inbox_transaction_outside_an_inbox_says_what_is_missing() {
    let ctx = Context::detached(Message::new("{}"));
    match InboxTransaction::from_context(&ctx).connection().await {
        Err(Error::Config(message)) => assert!(message.contains("inbox()"), "{message}"),
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("a connection without an inbox"),
    }
}
