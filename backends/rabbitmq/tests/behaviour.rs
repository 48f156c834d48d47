//! What the RabbitMQ backend adds to the conformance suite, on the real broker
//! (127.0.0.1:5672, guest/guest; `scripts/rabbitmq.sh` starts it): clear errors for a
//! wrong password, an unreachable broker, oversized headers, unroutable sends and poison
//! messages; messages from foreign clients; a lost connection replaced under a consumer;
//! `amqps://` through the broker's TLS listener (127.0.0.1:5671, its certificate signed by
//! the test CA that `scripts/rabbitmq.sh` makes); `try_receive` alone serves what `receive`
//! would, and skips what a lost connection left in the buffer; a foreign `traceparent` is
//! the parent of the handler's span; a redrive's dry run sees past the prefetch, and a send
//! to one group makes its queue and reaches no other.

use event_binder_core::conformance::traces::check_foreign_parent;
use event_binder_core::{
    header, App, Channel, Consumer, Context, Delivery, Error, Handler, HandlerSpec, Message,
    Producer, RedriveOptions, Subscription,
};
use event_binder_rabbitmq::{RabbitAcknowledger, RabbitChannel, RabbitConfig, RabbitConsumer};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::process::Command;
use std::time::Duration;
use tokio::time::{timeout, Instant};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const LIMIT: Duration = Duration::from_secs(30);

/// A random suffix, so that names never meet those of another run.
fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

/// A channel whose names carry a prefix of their own.
async fn channel() -> RabbitChannel {
    let config = RabbitConfig::new(URL)
        .expect("the URL")
        .prefix(format!("behaviour-{}-", unique()))
        .queue_expires(Duration::from_secs(600));
    RabbitChannel::with_config(config)
        .await
        .expect("connecting to RabbitMQ on 127.0.0.1:5672 (run scripts/rabbitmq.sh)")
}

/// A raw lapin connection, as a client that knows nothing of event-binder has.
async fn foreign_client() -> lapin::Channel {
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("a raw lapin connection");
    connection.create_channel().await.expect("a raw channel")
}

#[tokio::test]
async fn a_wrong_password_says_authentication_failed_and_never_shows_it() {
    let password = format!("not-the-password-{}", unique());
    let url = format!("amqp://guest:{password}@127.0.0.1:5672/%2f");
    let err = RabbitChannel::connect(&url).await.unwrap_err();
    let Error::Connection {
        backend, message, ..
    } = &err
    else {
        panic!("expected Error::Connection, got {err:?}");
    };
    assert_eq!(*backend, "rabbitmq");
    assert!(message.contains("authentication failed"), "{message}");
    assert!(
        message.contains("\"guest\""),
        "the user is named: {message}"
    );
    let mut texts = vec![err.to_string(), format!("{err:?}")];
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    for text in texts {
        assert!(!text.contains(&password), "the password leaked: {text}");
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_connection_error() {
    let err = RabbitChannel::connect("amqp://guest:guest@127.0.0.1:1/%2f")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connection { message, .. } if message.contains("127.0.0.1:1")),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused_before_sending_and_the_connection_survives() {
    let channel = channel().await;
    let destination = "big-headers";
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("g"))
        .await
        .expect("a consumer");
    let producer = channel.producer(destination).await.expect("a producer");
    let oversized = Message::new("{}").with_header("huge", "x".repeat(200 * 1024));
    match producer.send(oversized).await {
        Err(Error::PayloadTooLarge { actual, limit }) => {
            assert!(actual > 200 * 1024, "{actual}");
            assert_eq!(limit, 131_072, "RabbitMQ's default frame_max");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let fits = Message::new("{}").with_header("large", "y".repeat(100 * 1024));
    producer
        .send(fits.clone())
        .await
        .expect("100 KiB of headers fit one frame");
    let delivery = timeout(LIMIT, consumer.receive())
        .await
        .expect("the message that fits")
        .expect("receive");
    assert_eq!(
        delivery.message().id(),
        fits.id(),
        "a refused message arrived"
    );
    assert_eq!(
        delivery.message().headers().get("large"),
        fits.headers().get("large")
    );
    delivery.ack().await.expect("ack");
    assert!(channel.is_connected());
    channel.close().await.expect("close");
}

#[tokio::test]
async fn a_send_nobody_would_receive_is_an_error_not_a_silent_loss() {
    let channel = channel().await;
    let producer = channel
        .producer("nobody-listens")
        .await
        .expect("a producer");
    let err = producer.send(Message::new("{}")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Broker { .. }), "{err:?}");
    assert!(text.contains("no group or subscription"), "{text}");
    assert!(text.contains("provision"), "{text}");
    let batch = vec![Message::new("{}"), Message::new("{}")];
    assert!(matches!(
        producer.send_batch(batch).await,
        Err(Error::Broker { .. })
    ));

    channel
        .provision("nobody-listens", Some("late"))
        .await
        .expect("provision");
    producer
        .send(Message::new("{}"))
        .await
        .expect("once a group exists, the same producer's sends go through");
    channel.close().await.expect("close");
}

#[tokio::test]
async fn a_foreign_message_gets_a_stable_id_and_is_taken_as_json() {
    let channel = channel().await;
    let destination = "foreign";
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("g"))
        .await
        .expect("a consumer");
    let raw = foreign_client().await;
    raw.basic_publish(
        channel.exchange_name(destination).expect("name").into(),
        "customer-7".into(),
        BasicPublishOptions::default(),
        br#"{"order":1}"#,
        BasicProperties::default(),
    )
    .await
    .expect("a raw publish");
    let first = timeout(LIMIT, consumer.receive())
        .await
        .expect("the foreign message")
        .expect("receive");
    let id = first.message().id().to_owned();
    assert!(!id.is_empty());
    assert_eq!(
        first.message().content_type(),
        None,
        "no content type: JSON to the codecs"
    );
    assert_eq!(
        first.message().key(),
        Some("customer-7"),
        "the routing key is the key"
    );
    assert_eq!(first.message().payload().as_ref(), br#"{"order":1}"#);
    first.nack(None).await.expect("nack");
    let again = timeout(LIMIT, consumer.receive())
        .await
        .expect("the redelivery")
        .expect("receive");
    assert_eq!(again.attempt(), 2);
    assert_eq!(
        again.message().id(),
        id,
        "the derived id changed between deliveries"
    );
    again.ack().await.expect("ack");
    channel.close().await.expect("close");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_with_a_decode_error() {
    #[derive(Debug, serde::Deserialize)]
    struct Order {
        #[allow(dead_code)]
        order: u64,
    }
    let channel = channel().await;
    let (destination, group) = ("poison", "billing");
    let mut dead_letters = channel
        .dead_letters(destination, Some(group))
        .await
        .expect("the dead letters");
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let handled = handled.clone();
        Handler::from_fn(
            HandlerSpec::new("bill", destination).group(group),
            move |_: Order, _: Context| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let app = App::new(channel.clone())
        .handler(handler)
        .start()
        .await
        .expect("the app");
    let raw = foreign_client().await;
    raw.basic_publish(
        channel.exchange_name(destination).expect("name").into(),
        "".into(),
        BasicPublishOptions::default(),
        b"{not json",
        BasicProperties::default(),
    )
    .await
    .expect("a raw publish");
    let dead = timeout(LIMIT, dead_letters.receive())
        .await
        .expect("the dead letter")
        .expect("receive");
    let headers = dead.message().headers();
    let error = headers.get(header::DEAD_LETTER_ERROR).unwrap_or_default();
    assert!(error.contains("decode"), "dead-letter error {error:?}");
    assert_eq!(dead.message().payload().as_ref(), b"{not json");
    assert_eq!(
        channel
            .dead_letter_queue_name(destination, Some(group))
            .expect("name"),
        format!("{}poison.billing.dlq", channel.config().prefix)
    );
    dead.ack().await.expect("ack");
    app.shutdown().await.expect("shutdown");
    assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 0);
    channel.close().await.expect("close");
}

/// Closes this channel's connection from the broker's side (`rabbitmqctl
/// close_connection`), leaving every other connection alone.
fn close_connection_named(name: &str) {
    let listed = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("this test needs rabbitmqctl on the PATH");
    assert!(
        listed.status.success(),
        "rabbitmqctl list_connections failed"
    );
    let listing = String::from_utf8_lossy(&listed.stdout);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 1, "connections named {name:?}: {listing}");
    let closed = Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pids[0], "closed by a test"])
        .output()
        .expect("rabbitmqctl close_connection");
    assert!(
        closed.status.success(),
        "rabbitmqctl close_connection failed"
    );
}

#[tokio::test]
async fn a_lost_connection_is_replaced_and_consuming_resumes() {
    let channel = channel().await;
    let destination = "resume";
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("g"))
        .await
        .expect("a consumer");
    let mut anonymous = channel
        .consumer(&Subscription::new(destination))
        .await
        .expect("an anonymous consumer");
    let producer = channel.producer(destination).await.expect("a producer");
    let before = Message::new("1");
    producer.send(before.clone()).await.expect("send");
    let held = timeout(LIMIT, consumer.receive())
        .await
        .expect("the first message")
        .expect("receive");
    assert_eq!(held.message().id(), before.id());

    close_connection_named(&format!("event-binder {}", channel.config().prefix));
    let deadline = Instant::now() + LIMIT;
    while channel.is_connected() {
        assert!(Instant::now() < deadline, "the loss was never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        matches!(held.ack().await, Err(Error::Broker { .. })),
        "a delivery of the lost connection cannot be acknowledged"
    );

    let after = Message::new("2");
    producer
        .send(after.clone())
        .await
        .expect("a send during the reconnection waits for it");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = timeout(LIMIT, consumer.receive())
            .await
            .expect("the messages after the reconnection")
            .expect("receive");
        seen.push(delivery.message().id().to_owned());
        delivery.ack().await.expect("ack");
    }
    seen.sort();
    let mut want = vec![before.id().to_owned(), after.id().to_owned()];
    want.sort();
    assert_eq!(
        seen, want,
        "the unacknowledged message came back and the new one arrived"
    );

    // The anonymous subscription's queue went with the connection; receiving makes a new
    // one. What is sent before it exists is not seen (as an anonymous subscription
    // promises), so send until something arrives, and check it came after the loss.
    let receiving = tokio::spawn(async move {
        let delivery = anonymous.receive().await;
        (anonymous, delivery)
    });
    tokio::pin!(receiving);
    let mut later = Vec::new();
    let (anonymous, delivery) = loop {
        assert!(
            Instant::now() < deadline,
            "the anonymous subscription never resumed"
        );
        let message = Message::new("3");
        later.push(message.id().to_owned());
        producer.send(message).await.expect("send");
        if let Ok(received) = timeout(Duration::from_millis(200), &mut receiving).await {
            break received.expect("the receiving task");
        }
    };
    let delivery = delivery.expect("receive");
    assert_ne!(delivery.message().id(), before.id());
    assert_ne!(delivery.message().id(), after.id());
    assert!(later.contains(&delivery.message().id().to_owned()));
    delivery.ack().await.expect("ack");
    drop(anonymous);
    channel.close().await.expect("close");
    assert!(matches!(consumer.receive().await, Err(Error::ShutDown(_))));
    assert!(matches!(
        producer.send(Message::new("4")).await,
        Err(Error::ShutDown(_))
    ));
}

#[tokio::test]
async fn tls_to_a_plain_listener_fails_cleanly() {
    let err =
        RabbitChannel::connect("amqps://guest:guest@127.0.0.1:5672/%2f?connect_timeout_ms=5000")
            .await
            .unwrap_err();
    assert!(
        matches!(&err, Error::Connection { message, .. } if message.contains("127.0.0.1:5672")),
        "{err:?}"
    );
}

/// The test CA of the broker's TLS listener.
const TEST_CA: &str = "/etc/rabbitmq/event-binder-tls/ca.pem";

#[tokio::test]
async fn amqps_with_a_private_ca_carries_messages_over_tls() {
    let url = format!(
        "amqps://guest:guest@127.0.0.1:5671/%2f?cacertfile={TEST_CA}&prefix=tls-{}-&queue_expires_ms=600000",
        unique()
    );
    let channel = RabbitChannel::connect(&url)
        .await
        .expect("a TLS connection trusting the test CA (run scripts/rabbitmq.sh)");
    let mut consumer = channel
        .consumer(&Subscription::new("orders").group("billing"))
        .await
        .expect("a consumer over TLS");
    let message = Message::new(r#"{"over":"tls"}"#).with_header("tenant", "acme");
    channel
        .producer("orders")
        .await
        .expect("a producer over TLS")
        .send(message.clone())
        .await
        .expect("a confirmed send over TLS");
    let delivery = timeout(LIMIT, consumer.receive())
        .await
        .expect("the message in time")
        .expect("receive over TLS");
    assert_eq!(delivery.message().id(), message.id());
    assert_eq!(delivery.message().payload(), message.payload());
    assert_eq!(delivery.message().headers().get("tenant"), Some("acme"));
    delivery.ack().await.expect("ack over TLS");
}

#[tokio::test]
async fn amqps_to_an_untrusted_certificate_is_refused_clearly() {
    let err = RabbitChannel::connect(
        "amqps://guest:secret-pw@127.0.0.1:5671/%2f?connect_timeout_ms=5000",
    )
    .await
    .unwrap_err();
    let Error::Connection { message, .. } = &err else {
        panic!("expected Error::Connection, got {err:?}");
    };
    assert!(message.contains("127.0.0.1:5671"), "{message}");
    assert!(
        message.contains("cacertfile"),
        "the error says how to trust a CA: {message}"
    );
    assert!(!format!("{err:?}").contains("secret-pw"), "{err:?}");

    let missing = RabbitChannel::connect(
        "amqps://guest:guest@127.0.0.1:5671/%2f?cacertfile=/nonexistent/ca.pem",
    )
    .await
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("cannot read the CA certificate file /nonexistent/ca.pem"),
        "{missing}"
    );
}

/// The next delivery `try_receive` has, asked again (without ever calling `receive`) until
/// one is there, failing the test if none comes within `LIMIT`.
async fn try_next(consumer: &mut RabbitConsumer) -> Delivery<RabbitAcknowledger> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(received) = consumer.try_receive() {
            return received.expect("try_receive");
        }
        assert!(Instant::now() < deadline, "no delivery after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `try_receive` alone (the runtime's fast path) serves what `receive` would: every
/// message, in order, a requeued one again with its attempt counted; acks (settled at
/// once, with no waiting) reach the broker, so nothing comes back to the group; and once
/// the channel is closed, the shutdown error.
#[tokio::test]
async fn try_receive_serves_what_receive_would_without_waiting() {
    let channel = channel().await;
    let (destination, group) = ("fast", "g");
    let subscription = Subscription::new(destination).group(group);
    let mut consumer = channel.consumer(&subscription).await.expect("a consumer");
    assert!(consumer.try_receive().is_none(), "nothing published yet");
    let messages: Vec<Message> = (0..5).map(|n| Message::new(n.to_string())).collect();
    let ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
    let producer = channel.producer(destination).await.expect("a producer");
    producer.send_batch(messages).await.expect("send");

    let mut first_deliveries = Vec::new();
    let mut requeued = None;
    while first_deliveries.len() < ids.len() || requeued.is_none() {
        let delivery = try_next(&mut consumer).await;
        let id = delivery.message().id().to_owned();
        match delivery.attempt() {
            1 if id == ids[0] => delivery.nack(None).await.expect("nack"),
            1 => delivery.ack().await.expect("ack"),
            attempt => {
                assert_eq!((id.as_str(), attempt), (ids[0].as_str(), 2), "a redelivery");
                assert!(requeued.replace(id.clone()).is_none(), "redelivered once");
                delivery.ack().await.expect("ack");
                continue;
            }
        }
        first_deliveries.push(id);
    }
    assert_eq!(first_deliveries, ids, "every message once, in order");

    // The acks went out: a new consumer of the group (the old one's channel closed, which
    // would hand back whatever it held unacknowledged) gets nothing.
    drop(consumer);
    let mut consumer = channel.consumer(&subscription).await.expect("a consumer");
    let late = timeout(Duration::from_secs(1), consumer.receive()).await;
    assert!(late.is_err(), "nothing comes back: {late:?}");
    assert!(consumer.try_receive().is_none());

    channel.close().await.expect("close");
    assert!(
        matches!(consumer.try_receive(), Some(Err(Error::ShutDown(_)))),
        "closed: the shutdown error"
    );
}

/// What lapin still buffers from a lost connection can no longer be settled: `try_receive`
/// skips it and says nothing is there, and `receive` then reconnects and gets every message
/// again.
#[tokio::test]
async fn try_receive_skips_what_a_lost_connection_left() {
    let channel = channel().await;
    let destination = "fast-lost";
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("g"))
        .await
        .expect("a consumer");
    let messages: Vec<Message> = (0..3).map(|n| Message::new(n.to_string())).collect();
    let mut ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
    let producer = channel.producer(destination).await.expect("a producer");
    producer.send_batch(messages).await.expect("send");
    let held = try_next(&mut consumer).await;
    assert_eq!(held.message().id(), ids[0]);
    // The rest arrive in lapin's buffer (prefetch 16) soon after.
    tokio::time::sleep(Duration::from_millis(300)).await;

    close_connection_named(&format!("event-binder {}", channel.config().prefix));
    let deadline = Instant::now() + LIMIT;
    while channel.is_connected() {
        assert!(Instant::now() < deadline, "the loss was never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        consumer.try_receive().is_none(),
        "the deliveries of the lost connection are skipped"
    );
    drop(held);

    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let delivery = timeout(LIMIT, consumer.receive())
            .await
            .expect("the messages after the reconnection")
            .expect("receive");
        seen.push(delivery.message().id().to_owned());
        delivery.ack().await.expect("ack");
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every message came back");
    channel.close().await.expect("close");
}

#[test]
fn connecting_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    use std::future::Future;
    let outcome = std::thread::spawn(|| {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let mut connecting = std::pin::pin!(RabbitChannel::connect(URL));
        connecting.as_mut().poll(&mut context)
    })
    .join()
    .expect("polling must not panic");
    assert!(
        matches!(outcome, std::task::Poll::Ready(Err(Error::Config(_)))),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_traceparent_is_the_parent_of_the_handlers_span() {
    use lapin::types::{AMQPValue, FieldTable};
    let channel = channel().await;
    let exchange = channel.exchange_name("traced").expect("name");
    check_foreign_parent(channel, "traced", LIMIT, |foreign| async move {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(foreign.traceparent.as_str().into()),
        );
        foreign_client()
            .await
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                br#"{"order":1}"#,
                BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("a raw publish");
    })
    .await;
}

#[tokio::test]
async fn a_dry_run_lists_more_dead_letters_than_the_prefetch() {
    // The configured prefetch applies to every consumer but a redrive's: with it, the dry
    // run would hold 16 dead letters, receive no more, and list only those.
    let config = RabbitConfig::new(URL)
        .expect("the URL")
        .prefix(format!("behaviour-{}-", unique()))
        .queue_expires(Duration::from_secs(600))
        .prefetch(Subscription::DEFAULT_PREFETCH);
    let channel = RabbitChannel::with_config(config)
        .await
        .expect("connecting to RabbitMQ on 127.0.0.1:5672 (run scripts/rabbitmq.sh)");
    let (destination, group) = ("many-dead", "billing");
    let count = 40;
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("a consumer");
    let sent: Vec<Message> = (0..count).map(|n| Message::new(format!("{n}"))).collect();
    channel
        .producer(destination)
        .await
        .expect("a producer")
        .send_batch(sent.clone())
        .await
        .expect("send");
    for _ in 0..count {
        let delivery = timeout(LIMIT, consumer.receive())
            .await
            .expect("a message to fail")
            .expect("receive");
        delivery
            .dead_letter("failed", 1)
            .await
            .expect("dead-lettering");
    }
    drop(consumer);
    let ids = |messages: &[Message]| {
        let mut ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
        ids.sort();
        ids
    };
    let listed = timeout(
        LIMIT,
        channel.redrive(destination, group, &RedriveOptions::new().dry_run()),
    )
    .await
    .expect("the dry run in time")
    .expect("the dry run");
    assert_eq!(ids(&listed), ids(&sent), "every dead letter is listed");
    let purged = timeout(
        LIMIT,
        channel.purge_dead_letters(destination, Some(group), &RedriveOptions::new()),
    )
    .await
    .expect("the purge in time")
    .expect("the purge");
    assert_eq!(ids(&purged), ids(&sent), "the dry run left them all");
    channel.close().await.expect("close");
}

#[tokio::test]
async fn sending_to_a_group_makes_its_queue_and_reaches_no_other() {
    let channel = channel().await;
    let destination = "to-one-group";
    channel
        .provision(destination, Some("other"))
        .await
        .expect("provisioning the other group");
    let message = Message::new("{}")
        .with_key("customer-7")
        .with_header("tenant", "acme");
    channel
        .send_to_group(destination, "never-made", vec![message.clone()])
        .await
        .expect("sending to a group whose queue does not exist yet");
    let mut target = channel
        .consumer(&Subscription::new(destination).group("never-made"))
        .await
        .expect("a consumer of the group");
    let delivery = timeout(LIMIT, target.receive())
        .await
        .expect("the message")
        .expect("receive");
    assert_eq!(delivery.message().id(), message.id());
    assert_eq!(
        delivery.message().key(),
        Some("customer-7"),
        "the key, not the queue name"
    );
    assert_eq!(delivery.message().headers().get("tenant"), Some("acme"));
    delivery.ack().await.expect("ack");
    let mut other = channel
        .consumer(&Subscription::new(destination).group("other"))
        .await
        .expect("a consumer of the other group");
    assert!(
        timeout(Duration::from_millis(500), other.receive())
            .await
            .is_err(),
        "the other group got the message"
    );
    channel.close().await.expect("close");
}
