//! Quorum queues on the real broker (127.0.0.1:5672, guest/guest; `scripts/rabbitmq.sh`
//! starts it): they are what `?queue_type=quorum` declares, their delivery count is the
//! delivery's `attempt` (1, 2, 3, … where a classic queue stops at 2), and so the runtime's
//! `max_deliveries` stops a message that crashes the process every time.

mod support;

use event_binder_core::{
    header, App, Channel, Context, Error, Handler, HandlerSpec, Message, Producer, RetryPolicy,
    RunningApp, Subscription,
};
use event_binder_rabbitmq::{QueueType, RabbitChannel, RabbitConsumer};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;
use support::{channel, prefix, receive, EXPIRES, LIMIT, URL};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Declares `queue` from a raw client with `x-queue-type: {queue_type}` and the tests'
/// `x-expires`: RabbitMQ accepts it only if the queue is of that type.
async fn redeclare_as(queue: &str, queue_type: &str) -> Result<(), lapin::Error> {
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("a raw lapin connection");
    let raw = connection.create_channel().await.expect("a raw channel");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    let millis = i64::try_from(EXPIRES.as_millis()).expect("ms");
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(millis));
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = raw
        .queue_declare(queue.into(), options, arguments)
        .await
        .map(drop);
    let _ = connection.close(200, "done".into()).await;
    declared
}

#[tokio::test]
async fn queue_type_quorum_declares_quorum_group_and_dead_letter_queues() {
    let names = prefix("qq-type");
    let quorum = channel(&names, QueueType::Quorum).await;
    quorum
        .provision("orders", Some("billing"))
        .await
        .expect("provision");
    let queue = quorum.queue_name("orders", "billing").unwrap();
    let dead_letters = quorum
        .dead_letter_queue_name("orders", Some("billing"))
        .unwrap();
    // Anonymous subscriptions still work (their server-named queue stays classic), and
    // their dead-letter queue is a quorum queue.
    let anonymous = quorum
        .consumer(&Subscription::new("orders"))
        .await
        .expect("an anonymous subscription on a quorum channel");
    let anonymous_dead_letters = quorum.dead_letter_queue_name("orders", None).unwrap();
    for queue in [&queue, &dead_letters, &anonymous_dead_letters] {
        redeclare_as(queue, "quorum")
            .await
            .unwrap_or_else(|err| panic!("{queue} is not a quorum queue: {err}"));
        let err = redeclare_as(queue, "classic")
            .await
            .expect_err("a quorum queue cannot be declared classic");
        assert!(err.to_string().contains("x-queue-type"), "{queue}: {err}");
    }
    drop(anonymous);

    // The same names on a classic channel: the default declares classic queues, and the
    // quorum ones are refused with RabbitMQ's reason rather than silently used.
    let classic = channel(&prefix("qq-type"), QueueType::Classic).await;
    classic.provision("orders", Some("billing")).await.unwrap();
    let classic_queue = classic.queue_name("orders", "billing").unwrap();
    assert!(redeclare_as(&classic_queue, "quorum").await.is_err());
    let mismatched = channel(&names, QueueType::Classic).await;
    let err = mismatched
        .provision("orders", Some("billing"))
        .await
        .expect_err("a quorum queue declared as classic");
    let text = err.to_string();
    assert!(
        matches!(&err, Error::Broker { .. }) && text.contains("x-queue-type"),
        "{err:?}"
    );
    assert!(
        text.contains("queue_type=classic") && text.contains("delete the queue"),
        "the error says what to do: {text}"
    );
    for channel in [quorum, classic, mismatched] {
        channel.close().await.expect("close");
    }
}

/// Sends one message to a group, then `rounds` times takes it and drops it unsettled (the
/// consumer goes, as in a crash); returns the attempt of each delivery.
async fn attempts_of_unsettled_deliveries(queue_type: QueueType, rounds: usize) -> Vec<u32> {
    let channel = channel(&prefix("qq-drop"), queue_type).await;
    let subscription = Subscription::new("jobs").group("workers");
    channel.provision("jobs", Some("workers")).await.unwrap();
    let message = Message::new(r#"{"job":1}"#).with_header("tenant", "acme");
    channel
        .producer("jobs")
        .await
        .unwrap()
        .send(message.clone())
        .await
        .expect("send");
    let mut attempts = Vec::new();
    for round in 1..=rounds {
        let mut consumer = channel.consumer(&subscription).await.expect("a consumer");
        let delivery = receive(&mut consumer, &format!("delivery {round}")).await;
        assert_eq!(delivery.message().id(), message.id());
        assert_eq!(
            delivery.message().headers(),
            message.headers(),
            "the broker's x-delivery-count is not a header of the message"
        );
        attempts.push(delivery.attempt());
        drop(delivery);
        drop(consumer);
    }
    let mut consumer = channel.consumer(&subscription).await.unwrap();
    receive(&mut consumer, "the last delivery")
        .await
        .ack()
        .await
        .expect("ack");
    channel.close().await.expect("close");
    attempts
}

#[tokio::test]
async fn on_a_quorum_queue_every_unsettled_delivery_counts() {
    let attempts = attempts_of_unsettled_deliveries(QueueType::Quorum, 5).await;
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
}

/// What quorum queues fix: a classic queue only flags redeliveries.
#[tokio::test]
async fn on_a_classic_queue_the_attempt_stops_at_two() {
    let attempts = attempts_of_unsettled_deliveries(QueueType::Classic, 4).await;
    assert_eq!(attempts, [1, 2, 2, 2]);
}

/// A consumer of group `workers` of `jobs`, and the one message sent there.
async fn one_job(channel: &RabbitChannel) -> (RabbitConsumer, Message) {
    let consumer = channel
        .consumer(&Subscription::new("jobs").group("workers"))
        .await
        .unwrap();
    let message = Message::new("{}");
    channel
        .producer("jobs")
        .await
        .unwrap()
        .send(message.clone())
        .await
        .unwrap();
    (consumer, message)
}

#[tokio::test]
async fn on_a_quorum_queue_nacks_count_too_with_or_without_a_delay() {
    let channel = channel(&prefix("qq-nack"), QueueType::Quorum).await;
    let (mut consumer, message) = one_job(&channel).await;
    for expected in 1..=3 {
        let delivery = receive(&mut consumer, &format!("attempt {expected}")).await;
        assert_eq!(delivery.message().id(), message.id());
        assert_eq!(delivery.attempt(), expected);
        delivery.nack(None).await.expect("nack");
    }
    let delivery = receive(&mut consumer, "attempt 4").await;
    assert_eq!(delivery.attempt(), 4);
    delivery
        .nack(Some(Duration::from_millis(50)))
        .await
        .expect("nack with a delay");
    let delivery = receive(&mut consumer, "attempt 5").await;
    assert_eq!(delivery.attempt(), 5);
    delivery.ack().await.expect("ack");
    channel.close().await.expect("close");
}

/// The dead letter of a much-delivered message starts again at attempt 1 in its quorum
/// dead-letter queue: the count did not travel with it.
#[tokio::test]
async fn a_dead_letter_starts_at_attempt_one_in_its_queue() {
    let channel = channel(&prefix("qq-dlq"), QueueType::Quorum).await;
    let (mut consumer, message) = one_job(&channel).await;
    for _ in 0..2 {
        receive(&mut consumer, "a delivery")
            .await
            .nack(None)
            .await
            .unwrap();
    }
    let third = receive(&mut consumer, "the third delivery").await;
    assert_eq!(third.attempt(), 3);
    third
        .dead_letter("handled badly three times", 3)
        .await
        .expect("dead-lettering");
    let mut dead_letters = channel.dead_letters("jobs", Some("workers")).await.unwrap();
    let dead = receive(&mut dead_letters, "the dead letter").await;
    assert_eq!(dead.message().id(), message.id());
    assert_eq!(dead.attempt(), 1, "a fresh count in the dead-letter queue");
    dead.ack().await.unwrap();
    channel.close().await.expect("close");
}

/// One "process" of an app whose handler never returns, on a connection of its own; the
/// receiver hears of each call of the handler.
async fn process(
    prefix: &str,
    queue_type: QueueType,
) -> (RabbitChannel, RunningApp, mpsc::UnboundedReceiver<()>) {
    let channel = channel(prefix, queue_type).await;
    let (called, calls) = mpsc::unbounded_channel();
    let handler = Handler::from_fn(
        HandlerSpec::new("crash", "jobs").group("workers"),
        move |_: serde_json::Value, _: Context| {
            let called = called.clone();
            async move {
                let _ = called.send(());
                // The process "hangs" here until it is killed.
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            }
        },
    );
    let app = App::new(channel.clone())
        .retry(RetryPolicy {
            max_deliveries: 3,
            ..RetryPolicy::default()
        })
        .handler(handler)
        .start()
        .await
        .expect("the app");
    (channel, app, calls)
}

/// Runs a process until its handler is called, then kills it as a crash does: the
/// connection goes, nothing is settled, the handler never finishes.
async fn crashing_process(prefix: &str, queue_type: QueueType, number: usize) {
    let (channel, app, mut calls) = process(prefix, queue_type).await;
    timeout(LIMIT, calls.recv())
        .await
        .unwrap_or_else(|_| panic!("process {number}: the handler was not called"))
        .expect("the handler's sender");
    channel.close().await.expect("close");
    drop(app);
}

#[tokio::test]
async fn a_message_that_crashes_every_process_is_dead_lettered_after_max_deliveries() {
    let prefix = prefix("qq-crash");
    let setup = channel(&prefix, QueueType::Quorum).await;
    setup.provision("jobs", Some("workers")).await.unwrap();
    let message = Message::new(r#"{"poison":true}"#);
    setup
        .producer("jobs")
        .await
        .unwrap()
        .send(message.clone())
        .await
        .unwrap();
    for number in 1..=3 {
        crashing_process(&prefix, QueueType::Quorum, number).await;
    }
    // The fourth delivery is past max_deliveries (3): the runtime dead-letters it without
    // calling the handler.
    let (fourth, app, mut calls) = process(&prefix, QueueType::Quorum).await;
    let mut dead_letters = setup.dead_letters("jobs", Some("workers")).await.unwrap();
    let dead = receive(&mut dead_letters, "the dead letter").await;
    assert_eq!(dead.message().id(), message.id());
    let error = dead
        .message()
        .headers()
        .get(header::DEAD_LETTER_ERROR)
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("delivered 4 times"),
        "dead-letter error {error:?}"
    );
    dead.ack().await.unwrap();
    app.shutdown().await.expect("nothing in flight");
    assert!(
        calls.try_recv().is_err(),
        "the handler was called a fourth time"
    );
    fourth.close().await.unwrap();
    setup.close().await.unwrap();
}

/// What quorum queues fix: on a classic queue the fourth process calls the handler again
/// (and so would every later one), because the attempt never passes 2.
#[tokio::test]
async fn on_a_classic_queue_the_crashing_message_comes_back_forever() {
    let prefix = prefix("cq-crash");
    let setup = channel(&prefix, QueueType::Classic).await;
    setup.provision("jobs", Some("workers")).await.unwrap();
    setup
        .producer("jobs")
        .await
        .unwrap()
        .send(Message::new(r#"{"poison":true}"#))
        .await
        .unwrap();
    for number in 1..=4 {
        crashing_process(&prefix, QueueType::Classic, number).await;
    }
    let mut last = setup
        .consumer(&Subscription::new("jobs").group("workers"))
        .await
        .unwrap();
    let delivery = receive(&mut last, "the message, still in the group").await;
    assert_eq!(delivery.attempt(), 2);
    delivery.ack().await.unwrap();
    setup.close().await.unwrap();
}

/// With quorum queues, RabbitMQ 3.x nacks a message routed both to a quorum queue and to an
/// anonymous subscription's queue being deleted at that moment; such a send is published
/// again, not failed. (Before the retry, about 1 in 25 of these sends failed.)
#[tokio::test]
async fn a_send_racing_an_anonymous_subscriptions_end_is_published_again() {
    let channel = channel(&prefix("qq-race"), QueueType::Quorum).await;
    channel.provision("feed", Some("audit")).await.unwrap();
    let mut failures = Vec::new();
    for _ in 0..200 {
        let subscription = channel.consumer(&Subscription::new("feed")).await.unwrap();
        drop(subscription);
        let producer = channel.producer("feed").await.unwrap();
        if let Err(err) = producer.send(Message::new("{}")).await {
            failures.push(err.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} sends failed: {:?}",
        failures.len(),
        failures.first()
    );
    channel.close().await.expect("close");
}

/// A queue that nacks everything (`x-overflow: reject-publish` with room for nothing) makes
/// the send fail after a few attempts, saying so.
#[tokio::test]
async fn a_message_nacked_every_time_fails_the_send() {
    let channel = channel(&prefix("qq-full"), QueueType::Quorum).await;
    let exchange = channel.exchange_name("full").unwrap();
    channel.provision("full", None).await.unwrap();
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("a raw lapin connection");
    let raw = connection.create_channel().await.expect("a raw channel");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let full = raw
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("a full queue");
    raw.queue_bind(
        full.name().clone(),
        exchange.as_str().into(),
        "#".into(),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("binding the full queue");
    let err = channel
        .producer("full")
        .await
        .unwrap()
        .send(Message::new("{}"))
        .await
        .expect_err("a send no queue would take");
    assert!(
        matches!(&err, Error::Broker { .. }) && err.to_string().contains("nacked"),
        "{err:?}"
    );
    assert!(err.to_string().contains("4 times"), "{err}");
    let _ = connection.close(200, "done".into()).await;
    channel.close().await.expect("close");
}
