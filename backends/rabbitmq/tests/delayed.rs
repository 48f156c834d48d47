//! Delayed redelivery through the broker, on the real broker (127.0.0.1:5672, guest/guest;
//! `scripts/rabbitmq.sh` starts it), on classic and quorum group queues: a delivery nacked
//! with a delay waits in a delay queue, not in the consumer, comes back after the delay
//! (at most twice it) with its attempt counted on, survives its consumer, and a handler
//! retried through the broker is dead-lettered after its last attempt.

mod support;

use event_binder_core::{
    header, App, Channel, Context, Delivery, Handler, HandlerSpec, Message, Producer, RetryPolicy,
    Subscription,
};
use event_binder_rabbitmq::{QueueType, RabbitChannel, RabbitConsumer};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;
use support::{channel, prefix, receive, URL};
use tokio::time::Instant;

/// What a delayed message takes beyond its wait in the delay queue: the publish and its
/// confirm, the move back to the group's queue, the delivery.
const ROUND_TRIP: Duration = Duration::from_millis(300);
const DESTINATION: &str = "jobs";
const GROUP: &str = "workers";

/// A consumer of the group, holding at most `prefetch` deliveries.
async fn consumer(channel: &RabbitChannel, prefetch: u16) -> RabbitConsumer {
    let subscription = Subscription::new(DESTINATION)
        .group(GROUP)
        .prefetch(prefetch);
    channel.consumer(&subscription).await.expect("a consumer")
}

async fn send(channel: &RabbitChannel, message: &Message) {
    channel
        .producer(DESTINATION)
        .await
        .expect("a producer")
        .send(message.clone())
        .await
        .expect("send");
}

/// Nacks `delivery` with `delay`; returns when it did, for measuring the wait.
async fn nack<A: event_binder_core::Acknowledger>(
    delivery: Delivery<A>,
    delay: Duration,
) -> Instant {
    let nacked = Instant::now();
    delivery
        .nack(Some(delay))
        .await
        .expect("a nack with a delay");
    nacked
}

/// A raw lapin connection, to look at queues; open it before a delay starts, so the look
/// is quick.
async fn raw() -> (Connection, lapin::Channel) {
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("a raw lapin connection");
    let channel = connection.create_channel().await.expect("a raw channel");
    (connection, channel)
}

/// The messages waiting in `queue` (a passive declaration, which fails if it does not exist).
async fn waiting_in(raw: &lapin::Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    raw.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|err| panic!("queue {queue}: {err}"))
        .message_count()
}

/// A delivery nacked with a delay comes back after it, as the same message, its attempt one
/// more each time; meanwhile the copy waits in the delay queue of its group and bucket.
async fn comes_back_after_the_delay_counting_on(queue_type: QueueType) {
    let channel = channel(&prefix(&format!("delayed-{queue_type}")), queue_type).await;
    let mut consumer = consumer(&channel, 4).await;
    let message = Message::new(r#"{"job":1}"#)
        .with_key("customer-7")
        .with_header("tenant", "acme");
    send(&channel, &message).await;
    let delay = Duration::from_millis(300);
    let delay_queue = channel.delay_queue_name(DESTINATION, GROUP, delay).unwrap();
    let queue = channel.queue_name(DESTINATION, GROUP).unwrap();
    assert_eq!(delay_queue, format!("{queue}.delay.8"));
    let (connection, look) = raw().await;

    let first = receive(&mut consumer, "the first delivery").await;
    assert_eq!(first.attempt(), 1);
    let mut nacked = nack(first, delay).await;
    assert_eq!(
        waiting_in(&look, &delay_queue).await,
        1,
        "the copy waits in {delay_queue}"
    );
    for expected in [2, 3] {
        let delivery = receive(&mut consumer, &format!("attempt {expected}")).await;
        let waited = nacked.elapsed();
        assert!(waited >= delay, "attempt {expected} came after {waited:?}");
        assert_eq!(delivery.attempt(), expected);
        let back = delivery.message();
        assert_eq!(back.id(), message.id());
        assert_eq!(back.payload(), message.payload());
        assert_eq!(back.key(), Some("customer-7"));
        assert_eq!(back.timestamp_millis(), message.timestamp_millis());
        assert_eq!(
            back.headers(),
            message.headers(),
            "neither the attempt nor the broker's x-death show among the headers"
        );
        if expected == 3 {
            delivery.ack().await.expect("ack");
        } else {
            nacked = nack(delivery, delay).await;
        }
    }
    assert_eq!(waiting_in(&look, &delay_queue).await, 0);
    let _ = connection.close(200, "done".into()).await;
    channel.close().await.expect("close");
}

#[tokio::test]
async fn on_a_classic_queue_a_delayed_nack_comes_back_after_the_delay_counting_on() {
    comes_back_after_the_delay_counting_on(QueueType::Classic).await;
}

#[tokio::test]
async fn on_a_quorum_queue_a_delayed_nack_comes_back_after_the_delay_counting_on() {
    comes_back_after_the_delay_counting_on(QueueType::Quorum).await;
}

/// With a prefetch of 1, the next message is delivered while the nacked one waits: the
/// consumer holds nothing for it.
async fn a_waiting_message_holds_no_prefetch_slot(queue_type: QueueType) {
    let channel = channel(&prefix(&format!("delayed-{queue_type}")), queue_type).await;
    let mut consumer = consumer(&channel, 1).await;
    let (waiting, next) = (Message::new(r#"{"n":1}"#), Message::new(r#"{"n":2}"#));
    send(&channel, &waiting).await;
    let delivery = receive(&mut consumer, "the message to wait").await;
    assert_eq!(delivery.message().id(), waiting.id());
    let delay = Duration::from_secs(3);
    let nacked = nack(delivery, delay).await;

    send(&channel, &next).await;
    let other = receive(&mut consumer, "the next message, in the freed slot").await;
    assert_eq!(other.message().id(), next.id());
    assert!(
        nacked.elapsed() < delay,
        "the next message came only after the delay: the slot was held"
    );
    other.ack().await.expect("ack");

    let back = receive(&mut consumer, "the waiting message").await;
    assert_eq!(back.message().id(), waiting.id());
    assert_eq!(back.attempt(), 2);
    assert!(nacked.elapsed() >= delay);
    back.ack().await.expect("ack");
    channel.close().await.expect("close");
}

#[tokio::test]
async fn on_a_classic_queue_a_waiting_message_holds_no_prefetch_slot() {
    a_waiting_message_holds_no_prefetch_slot(QueueType::Classic).await;
}

#[tokio::test]
async fn on_a_quorum_queue_a_waiting_message_holds_no_prefetch_slot() {
    a_waiting_message_holds_no_prefetch_slot(QueueType::Quorum).await;
}

/// The consumer that nacked, and its whole connection, go while the message waits: a
/// consumer of another connection gets it after the delay.
async fn a_waiting_message_outlives_its_consumer(queue_type: QueueType) {
    let prefix = prefix(&format!("delayed-{queue_type}"));
    let first = channel(&prefix, queue_type).await;
    let mut gone = consumer(&first, 1).await;
    let message = Message::new(r#"{"job":2}"#);
    send(&first, &message).await;
    let delivery = receive(&mut gone, "the first delivery").await;
    let delay = Duration::from_millis(500);
    let nacked = nack(delivery, delay).await;
    drop(gone);
    first.close().await.expect("close");

    let second = channel(&prefix, queue_type).await;
    let mut next = consumer(&second, 1).await;
    let back = receive(&mut next, "the message, on another connection").await;
    assert_eq!(back.message().id(), message.id());
    assert_eq!(back.attempt(), 2);
    assert!(nacked.elapsed() >= delay);
    back.ack().await.expect("ack");
    second.close().await.expect("close");
}

#[tokio::test]
async fn on_a_classic_queue_a_waiting_message_outlives_its_consumer() {
    a_waiting_message_outlives_its_consumer(QueueType::Classic).await;
}

#[tokio::test]
async fn on_a_quorum_queue_a_waiting_message_outlives_its_consumer() {
    a_waiting_message_outlives_its_consumer(QueueType::Quorum).await;
}

/// Receives the message of each id in `ids`, in any order.
async fn receive_all(
    consumer: &mut RabbitConsumer,
    ids: &[&str],
) -> Vec<Delivery<event_binder_rabbitmq::RabbitAcknowledger>> {
    let mut deliveries: Vec<_> = Vec::new();
    for _ in ids {
        deliveries.push(receive(consumer, "a message").await);
    }
    deliveries.sort_by_key(|delivery| {
        ids.iter()
            .position(|id| *id == delivery.message().id())
            .expect("a message of this test")
    });
    deliveries
}

/// A short delay is not held behind a long one (they wait in different buckets); within a
/// bucket, a delay waits for those ahead of it, never to twice its length.
async fn no_delay_waits_twice_its_length(queue_type: QueueType) {
    let channel = channel(&prefix(&format!("delayed-{queue_type}")), queue_type).await;
    let mut consumer = consumer(&channel, 4).await;
    let (long, short) = (Duration::from_secs(5), Duration::from_millis(300));
    assert_ne!(
        channel.delay_queue_name(DESTINATION, GROUP, long).unwrap(),
        channel.delay_queue_name(DESTINATION, GROUP, short).unwrap()
    );
    let (slow, fast) = (Message::new(r#"{"n":1}"#), Message::new(r#"{"n":2}"#));
    send(&channel, &slow).await;
    send(&channel, &fast).await;
    let mut both = receive_all(&mut consumer, &[slow.id(), fast.id()]).await;
    let fast_delivery = both.pop().expect("two");
    let long_nacked = nack(both.pop().expect("two"), long).await;
    let short_nacked = nack(fast_delivery, short).await;

    let first = receive(&mut consumer, "the short delay").await;
    let waited = short_nacked.elapsed();
    assert_eq!(
        first.message().id(),
        fast.id(),
        "the short delay came first"
    );
    assert!(
        waited >= short && waited < 2 * short + ROUND_TRIP,
        "the short delay came after {waited:?}"
    );
    first.ack().await.expect("ack");
    let second = receive(&mut consumer, "the long delay").await;
    assert_eq!(second.message().id(), slow.id());
    assert!(long_nacked.elapsed() >= long);
    second.ack().await.expect("ack");

    // One bucket (512 ms up to 1024 ms): the shorter delay, behind the longer, comes
    // with it, still within twice its own.
    let (longer, shorter) = (Duration::from_millis(1000), Duration::from_millis(600));
    assert_eq!(
        channel
            .delay_queue_name(DESTINATION, GROUP, longer)
            .unwrap(),
        channel
            .delay_queue_name(DESTINATION, GROUP, shorter)
            .unwrap()
    );
    send(&channel, &slow).await;
    send(&channel, &fast).await;
    let mut both = receive_all(&mut consumer, &[slow.id(), fast.id()]).await;
    let fast_delivery = both.pop().expect("two");
    nack(both.pop().expect("two"), longer).await;
    let shorter_nacked = nack(fast_delivery, shorter).await;
    for delivery in receive_all(&mut consumer, &[slow.id(), fast.id()]).await {
        delivery.ack().await.expect("ack");
    }
    let waited = shorter_nacked.elapsed();
    assert!(
        waited >= shorter && waited < 2 * shorter + ROUND_TRIP,
        "the shorter delay came after {waited:?}"
    );
    channel.close().await.expect("close");
}

#[tokio::test]
async fn on_a_classic_queue_no_delay_waits_twice_its_length() {
    no_delay_waits_twice_its_length(QueueType::Classic).await;
}

#[tokio::test]
async fn on_a_quorum_queue_no_delay_waits_twice_its_length() {
    no_delay_waits_twice_its_length(QueueType::Quorum).await;
}

/// The runtime retries through the broker on both queue types (the slot is free between
/// attempts), and the attempts it reads from the deliveries grow, so a message that always
/// fails is dead-lettered after the last attempt instead of coming back forever.
async fn retried_through_the_broker_then_dead_lettered(queue_type: QueueType) {
    let channel = channel(&prefix(&format!("delayed-{queue_type}")), queue_type).await;
    let subscription = Subscription::new(DESTINATION).group(GROUP);
    assert!(channel.counts_deliveries(&subscription));
    assert!(channel.capabilities().delayed_redelivery);
    assert!(
        !channel.counts_deliveries(&Subscription::new(DESTINATION)),
        "anonymous subscriptions wait in the consumer"
    );
    let (calls, mut called) = tokio::sync::mpsc::unbounded_channel();
    let handler = Handler::from_fn(
        HandlerSpec::new("always-fails", DESTINATION)
            .group(GROUP)
            .concurrency(1),
        move |_: serde_json::Value, ctx: Context| {
            let calls = calls.clone();
            async move {
                let _ = calls.send(ctx.attempt());
                Err::<(), _>(std::io::Error::other("always fails"))
            }
        },
    );
    let backoff = Duration::from_millis(100);
    let app = App::new(channel.clone())
        .retry(
            RetryPolicy::new(3)
                .backoff(backoff, backoff)
                .through_broker(true),
        )
        .handler(handler)
        .start()
        .await
        .expect("the app");
    let message = Message::new(r#"{"poison":true}"#);
    send(&channel, &message).await;
    let mut dead_letters = channel
        .dead_letters(DESTINATION, Some(GROUP))
        .await
        .expect("the dead letters");
    let dead = receive(&mut dead_letters, "the dead letter").await;
    assert_eq!(dead.message().id(), message.id());
    let headers = dead.message().headers();
    assert_eq!(headers.get(header::DEAD_LETTER_ATTEMPTS), Some("3"));
    dead.ack().await.expect("ack");
    app.shutdown().await.expect("shutdown");
    let mut attempts = Vec::new();
    while let Ok(attempt) = called.try_recv() {
        attempts.push(attempt);
    }
    assert_eq!(attempts, [1, 2, 3]);
    channel.close().await.expect("close");
}

#[tokio::test]
async fn on_a_classic_queue_retries_through_the_broker_end_in_the_dead_letters() {
    retried_through_the_broker_then_dead_lettered(QueueType::Classic).await;
}

#[tokio::test]
async fn on_a_quorum_queue_retries_through_the_broker_end_in_the_dead_letters() {
    retried_through_the_broker_then_dead_lettered(QueueType::Quorum).await;
}

/// A delivery read from the dead letters and nacked with a delay waits in a delay queue of
/// the dead-letter queue, and comes back there.
#[tokio::test]
async fn a_dead_letter_nacked_with_a_delay_comes_back_to_the_dead_letters() {
    let queue_type = QueueType::Quorum;
    let channel = channel(&prefix(&format!("delayed-{queue_type}")), queue_type).await;
    let mut consumer = consumer(&channel, 1).await;
    let message = Message::new(r#"{"job":3}"#);
    send(&channel, &message).await;
    receive(&mut consumer, "the message")
        .await
        .dead_letter("failed", 1)
        .await
        .expect("dead-lettering");
    let mut dead_letters = channel
        .dead_letters(DESTINATION, Some(GROUP))
        .await
        .expect("the dead letters");
    let dead = receive(&mut dead_letters, "the dead letter").await;
    assert_eq!(dead.attempt(), 1);
    let delay = Duration::from_millis(200);
    let nacked = nack(dead, delay).await;
    let back = receive(&mut dead_letters, "the dead letter again").await;
    assert_eq!(back.message().id(), message.id());
    assert_eq!(back.attempt(), 2);
    assert_eq!(
        back.message().headers().get(header::DEAD_LETTER_ERROR),
        Some("failed")
    );
    assert!(nacked.elapsed() >= delay);
    back.ack().await.expect("ack");
    let dead_letter_queue = channel
        .dead_letter_queue_name(DESTINATION, Some(GROUP))
        .unwrap();
    let (connection, look) = raw().await;
    assert_eq!(
        waiting_in(&look, &format!("{dead_letter_queue}.delay.7")).await,
        0,
        "the dead letter waited in the delay queue of its own queue"
    );
    let _ = connection.close(200, "done".into()).await;
    channel.close().await.expect("close");
}
