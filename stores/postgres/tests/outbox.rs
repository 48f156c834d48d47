//! The transactional outbox and its relay on the in-memory broker and the test database:
//! what commits is published, with the id it was given, in order per key, by any number of
//! relays at once; what rolls back never is.

mod support;

use event_binder_core::{Channel, Consumer, Error, Message, Publisher, Subscription};
use event_binder_memory::{MemoryChannel, MemoryConsumer};
use event_binder_postgres::{sqlx, Outbox, Relay};
use std::collections::HashMap;
use std::time::Duration;
use support::{connection, url, TempTable};

const LIMIT: Duration = Duration::from_secs(20);

async fn outbox(table: &TempTable) -> Outbox {
    let pool = sqlx::PgPool::connect(&url())
        .await
        .expect("the test database");
    Outbox::with_table(pool, &table.name).await.unwrap()
}

async fn subscribe(bus: &MemoryChannel) -> MemoryConsumer {
    bus.consumer(&Subscription::new("orders").group("audit"))
        .await
        .unwrap()
}

/// The next `n` messages of `consumer`, acknowledged.
async fn receive(consumer: &mut MemoryConsumer, n: usize) -> Vec<Message> {
    let mut received = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = tokio::time::timeout(LIMIT, consumer.receive())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", received.len()))
            .unwrap();
        received.push(delivery.message().clone());
        delivery.ack().await.unwrap();
    }
    received
}

#[tokio::test]
async fn committed_events_are_published_with_their_ids_rolled_back_ones_never() {
    let table = TempTable::new("outbox");
    let outbox = outbox(&table).await;
    let bus = MemoryChannel::new();
    let mut consumer = subscribe(&bus).await;
    let mut conn = connection().await;

    let mut committed = sqlx::Connection::begin(&mut conn).await.unwrap();
    let mut ids = Vec::new();
    for order in 0..3 {
        let event = serde_json::json!({ "order": order });
        ids.push(
            outbox
                .publish(&mut committed, "orders", &event)
                .await
                .unwrap(),
        );
    }
    committed.commit().await.unwrap();
    let mut rolled_back = sqlx::Connection::begin(&mut conn).await.unwrap();
    for order in 3..5 {
        let event = serde_json::json!({ "order": order });
        outbox
            .publish(&mut rolled_back, "orders", &event)
            .await
            .unwrap();
    }
    rolled_back.rollback().await.unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 3);

    let relay = outbox.relay(Publisher::new(bus.clone()));
    assert_eq!(relay.publish_pending().await.unwrap(), 3);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    let received = receive(&mut consumer, 3).await;
    let received_ids: Vec<&str> = received.iter().map(Message::id).collect();
    assert_eq!(received_ids, ids);
    assert_eq!(received[2].payload().as_ref(), br#"{"order":2}"#);
    assert_eq!(relay.publish_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn a_message_keeps_its_key_headers_and_content_type() {
    let table = TempTable::new("outbox");
    let outbox = outbox(&table).await;
    let bus = MemoryChannel::new();
    let mut consumer = subscribe(&bus).await;
    let mut conn = connection().await;
    let message = Message::new_with_id("order-1", "<order/>")
        .with_key("customer-7")
        .with_header("tenant", "acme")
        .with_content_type("application/xml");
    outbox.send(&mut conn, "orders", message).await.unwrap();
    outbox
        .relay(Publisher::new(bus.clone()))
        .publish_pending()
        .await
        .unwrap();
    let received = receive(&mut consumer, 1).await.remove(0);
    assert_eq!(received.id(), "order-1");
    assert_eq!(received.key(), Some("customer-7"));
    assert_eq!(received.headers().get("tenant"), Some("acme"));
    assert_eq!(received.content_type(), Some("application/xml"));
    assert_eq!(received.payload().as_ref(), b"<order/>");
}

#[tokio::test]
async fn events_of_a_key_keep_their_order_through_relays_running_at_once() {
    let table = TempTable::new("outbox");
    let outbox = outbox(&table).await;
    let bus = MemoryChannel::new();
    let mut consumer = subscribe(&bus).await;
    let mut conn = connection().await;
    const KEYS: usize = 10;
    const PER_KEY: usize = 30;
    for sequence in 0..PER_KEY {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        for key in 0..KEYS {
            let event = serde_json::json!({ "sequence": sequence });
            outbox
                .publish_keyed(&mut tx, "orders", &format!("key-{key}"), &event)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let relays: Vec<_> = (0..3)
        .map(|_| {
            outbox
                .relay(Publisher::new(bus.clone()))
                .batch_size(7)
                .start()
        })
        .collect();
    let received = receive(&mut consumer, KEYS * PER_KEY).await;
    for relay in relays {
        relay.shutdown().await;
    }
    let mut next: HashMap<String, u64> = HashMap::new();
    for message in &received {
        let event: serde_json::Value = serde_json::from_slice(message.payload()).unwrap();
        let sequence = event["sequence"].as_u64().unwrap();
        let expected = next.entry(message.key().unwrap().to_owned()).or_default();
        assert_eq!(sequence, *expected, "key {:?} out of order", message.key());
        *expected += 1;
    }
    assert_eq!(outbox.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn a_started_relay_is_woken_by_the_commit() {
    let table = TempTable::new("outbox");
    let outbox = outbox(&table).await;
    let bus = MemoryChannel::new();
    let mut consumer = subscribe(&bus).await;
    // It would not look again for an hour: only the notification can wake it.
    let relay = outbox
        .relay(Publisher::new(bus.clone()))
        .poll_interval(Duration::from_secs(3600))
        .start();
    let mut conn = connection().await;
    // Once it listens, its first round finds nothing, and it waits.
    let listening = format!("LISTEN \"{}\"", table.name);
    support::eventually("the relay listening", LIMIT, || async {
        let listeners: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE query = $1")
                .bind(&listening)
                .fetch_one(&mut connection().await)
                .await
                .unwrap();
        listeners == 1
    })
    .await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let id = outbox
        .publish(&mut tx, "orders", &serde_json::json!({ "order": 1 }))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let received = receive(&mut consumer, 1).await;
    assert_eq!(received[0].id(), id);
    relay.shutdown().await;
    assert_eq!(Relay::DEFAULT_BATCH_SIZE, 100);
}

#[tokio::test]
async fn an_invalid_destination_is_refused_when_written() {
    let table = TempTable::new("outbox");
    let outbox = outbox(&table).await;
    let mut conn = connection().await;
    let refused = outbox
        .publish(&mut conn, "orders with spaces", &serde_json::json!({}))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidName { .. })),
        "{refused:?}"
    );
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert!(matches!(
        Outbox::with_table(sqlx::PgPool::connect_lazy(&url()).unwrap(), "bad name").await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn a_destination_the_broker_refuses_holds_its_rows_not_the_others() {
    let table = TempTable::new("outbox");
    let outbox = outbox(&table).await;
    let bus = MemoryChannel::new();
    let mut consumer = subscribe(&bus).await;
    let mut conn = connection().await;
    // A row no broker takes (written past the outbox's own check), before a good one.
    sqlx::query(&format!(
        "INSERT INTO \"{}\" (destination, id, header_names, header_values, payload, timestamp_ms) \
         VALUES ('no such destination', 'refused', '{{}}', '{{}}', '\\x7b7d', 0)",
        table.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let id = outbox
        .publish(&mut conn, "orders", &serde_json::json!({ "order": 1 }))
        .await
        .unwrap();
    let relay = outbox.relay(Publisher::new(bus.clone()));
    let refused = relay.publish_pending().await;
    assert!(
        matches!(refused, Err(Error::InvalidName { .. })),
        "{refused:?}"
    );
    assert_eq!(receive(&mut consumer, 1).await[0].id(), id);
    assert_eq!(outbox.pending().await.unwrap(), 1, "the refused row stays");
}

/// The outbox keeps the writer's trace context with the event, and its relay, sending from
/// no trace of its own, keeps it on the message: the handler's span continues the trace of
/// the transaction that wrote the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_of_a_relayed_event_continues_the_writers_trace() {
    use event_binder_core::conformance::traces::Traces;
    use event_binder_core::{App, Handler, HandlerSpec};
    use tracing::Instrument;
    let traces = Traces::install();
    let table = TempTable::new("outbox_trace");
    let outbox = outbox(&table).await;
    let bus = MemoryChannel::new();
    let running = App::new(bus.clone())
        .handler(Handler::from_fn(
            HandlerSpec::new("audit", "orders").group("audit"),
            |_: serde_json::Value| async { Ok::<_, Error>(()) },
        ))
        .start()
        .await
        .unwrap();
    let request = tracing::info_span!("place order");
    let (trace_id, request_id) = Traces::ids_of(&request);
    let mut conn = connection().await;
    async {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        outbox
            .publish(&mut tx, "orders", &serde_json::json!({ "order": 1 }))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(request)
    .await;
    let relay = outbox.relay(Publisher::new(bus.clone()));
    assert_eq!(relay.publish_pending().await.unwrap(), 1);
    let process = traces
        .wait_for(LIMIT, "the handler's span in the writer's trace", |span| {
            span.name == "process orders" && span.trace_id == trace_id
        })
        .await;
    assert_eq!(process.parent_span_id, request_id);
    let send = traces
        .finished()
        .into_iter()
        .find(|span| span.name == "send orders" && span.links.iter().any(|(t, _)| *t == trace_id))
        .expect("the relay's send span, linked to the writer");
    assert_ne!(
        send.trace_id, trace_id,
        "the relay's send is a trace of its own"
    );
    running.shutdown().await.unwrap();
}
