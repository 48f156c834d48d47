//! What the Kafka backend adds to the conformance suite, on a real broker
//! (`EVENT_BINDER_KAFKA_BOOTSTRAP`, by default 127.0.0.1:9092, where `scripts/kafka.sh`
//! starts tansu): records from a foreign producer are handled; an unreachable broker gives
//! a clear error that never shows the password; settings are checked before connecting;
//! several bootstrap hosts; a handler slower than `max.poll.interval.ms` keeps its
//! membership; handled offsets are committed when acks stop; the longest nack delay;
//! `try_receive` alone serves what `receive` would; a record sent to one group reaches it
//! only and holds back no other group's commits.

mod support;

use event_binder_core::conformance::traces::check_foreign_parent;
use event_binder_core::{Channel, Consumer, Delivery, Error, Message, Producer, Subscription};
use event_binder_kafka::{
    KafkaAcknowledger, KafkaChannel, KafkaConfig, KafkaConsumer, GROUP_HEADER,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{broker, channel, channel_with, unique, url};

/// The longest wait for anything expected. A consumer group's first join on tansu can take
/// many seconds.
const LIMIT: Duration = Duration::from_secs(90);

/// The next delivery, failing the test if none comes within `LIMIT`.
async fn next(consumer: &mut KafkaConsumer) -> Delivery<KafkaAcknowledger> {
    tokio::time::timeout(LIMIT, consumer.receive())
        .await
        .expect("a delivery in time")
        .expect("receive")
}

/// The offset consumer group `group` has committed for partition 0 of `topic`, read by a
/// plain rdkafka client.
async fn committed(group: &str, topic: &str) -> Option<i64> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a raw client");
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&topic, 0);
        let offsets = client
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("the committed offsets");
        match offsets.find_partition(&topic, 0)?.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    })
    .await
    .expect("the reading thread")
}

/// Waits (up to `LIMIT`) until `group` has committed `expected` for partition 0 of `topic`.
async fn expect_committed(group: &str, topic: &str, expected: i64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = committed(group, topic).await;
        if now == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed {now:?} after {LIMIT:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one empty JSON message with each of `ids` to `destination`, in one batch.
async fn send_ids(channel: &KafkaChannel, destination: &str, ids: &[String]) {
    channel
        .producer(destination)
        .await
        .expect("producer")
        .send_batch(
            ids.iter()
                .map(|id| Message::new_with_id(id.clone(), "{}"))
                .collect(),
        )
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_foreign_producer_get_an_id_from_their_position() {
    let prefix = format!("foreign-{}-", unique());
    let channel = channel(&prefix).await;
    let destination = "raw";
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("g"))
        .await
        .expect("consumer");
    let topic = channel.topic_name(destination).expect("topic");
    let foreign: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .expect("a raw producer");
    let report = foreign
        .send(
            rdkafka::producer::FutureRecord::<str, [u8]>::to(&topic)
                .payload(br#"{"n":1}"#.as_slice())
                .key("k"),
            Duration::from_secs(30),
        )
        .await
        .expect("a raw send");
    let delivery = next(&mut consumer).await;
    let message = delivery.message();
    assert_eq!(
        message.id(),
        format!("{topic}/{}/{}", report.partition, report.offset)
    );
    assert_eq!(message.key(), Some("k"));
    assert_eq!(message.content_type(), None, "JSON is assumed");
    assert_eq!(message.payload().as_ref(), br#"{"n":1}"#);
    delivery.ack().await.expect("ack");
    channel.close().await.expect("close");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_connection_error() {
    let url = "kafka://127.0.0.1:1?connect_timeout_ms=2000&sasl.password=hunter2";
    let err = KafkaChannel::connect(url).await.unwrap_err();
    let Error::Connection {
        backend, message, ..
    } = &err
    else {
        panic!("expected Error::Connection, got {err:?}");
    };
    assert_eq!(*backend, "kafka");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    // A connect timeout under librdkafka's 1 s minimum of socket.connection.setup.timeout.ms
    // is still a timeout, not a settings error.
    let err = KafkaChannel::connect("kafka://127.0.0.1:1?connect_timeout_ms=500")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
}

/// Settings are checked when the channel is made, before any connection (the broker here
/// is unreachable, so only a check could answer this fast), public fields included.
#[tokio::test]
async fn bad_settings_are_refused_before_connecting() {
    let unreachable = || KafkaConfig::new("kafka://127.0.0.1:1?connect_timeout_ms=60000").unwrap();
    let mut zero_partitions = unreachable();
    zero_partitions.partitions = 0;
    let mut zero_send_timeout = unreachable();
    zero_send_timeout.send_timeout = Duration::ZERO;
    let mut negative_replication = unreachable();
    negative_replication.replication = -3;
    let mut huge_drain = unreachable();
    huge_drain.drain_timeout = Duration::MAX;
    for config in [
        zero_partitions,
        zero_send_timeout,
        negative_replication,
        huge_drain,
    ] {
        let started = Instant::now();
        let err = KafkaChannel::with_config(config.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{config:?}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "checked first");
    }
    let err = KafkaChannel::connect("kafka://127.0.0.1:1?no.such.setting=1&sasl.password=hunter2")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidUrl { reason, .. } if reason.contains("no.such.setting")),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

/// `kafka://h1:9092,h2:9092`: every host is a bootstrap broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_bootstrap_hosts_connect() {
    let hosts = format!("{},{}", broker(), broker());
    let channel = KafkaChannel::connect(&format!("kafka://{hosts}?prefix=hosts-{}-", unique()))
        .await
        .expect("connecting through two hosts");
    assert_eq!(channel.config().bootstrap_servers(), hosts);
    channel.producer("d").await.expect("a producer");
    channel.close().await.expect("close");
}

/// A nack with the longest delay there is neither panics nor blocks the partition's other
/// records: the delay is capped (at a day) and the consumer moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_the_longest_delay_is_capped() {
    let prefix = format!("nackmax-{}-", unique());
    let channel = channel_with(&prefix, 1, "").await;
    let mut consumer = channel
        .consumer(&Subscription::new("d").group("g"))
        .await
        .expect("consumer");
    let producer = channel.producer("d").await.expect("producer");
    producer
        .send_batch(vec![
            Message::new_with_id("m0", "{}"),
            Message::new_with_id("m1", "{}"),
        ])
        .await
        .expect("send");
    let first = next(&mut consumer).await;
    assert_eq!(first.message().id(), "m0");
    first.nack(Some(Duration::MAX)).await.expect("nack");
    let second = next(&mut consumer).await;
    assert_eq!(second.message().id(), "m1");
    second.ack().await.expect("ack");
    channel.close().await.expect("close");
}

/// Acks that come faster than the commit interval, then nothing: the positions are still
/// committed once the interval has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_offsets_are_committed_when_acks_stop() {
    let prefix = format!("idlecommit-{}-", unique());
    let channel = channel_with(&prefix, 1, "commit_interval_ms=1000").await;
    let (destination, group) = ("d", "g");
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    channel
        .producer(destination)
        .await
        .expect("producer")
        .send_batch(
            (0..3)
                .map(|n| Message::new(format!(r#"{{"n":{n}}}"#)))
                .collect(),
        )
        .await
        .expect("send");
    for _ in 0..3 {
        next(&mut consumer).await.ack().await.expect("ack");
    }
    let topic = channel.topic_name(destination).expect("topic");
    let group_id = channel.group_id(destination, group).expect("group");
    expect_committed(&group_id, &topic, 3).await;
    drop(consumer);
    channel.close().await.expect("close");
}

/// A handler that holds its deliveries three times longer than `max.poll.interval.ms`:
/// the consumer is polled meanwhile, so its member is not evicted. Were it evicted, the
/// revocation would give up the delivery still held (the drain timeout is 100 ms) and the
/// group would read it again: everything must be handled once, and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_poll_interval_keeps_its_membership() {
    const POLL_INTERVAL_MS: u64 = 1500;
    let prefix = format!("slow-{}-", unique());
    let channel = channel_with(
        &prefix,
        1,
        &format!(
            "max.poll.interval.ms={POLL_INTERVAL_MS}&session.timeout.ms={POLL_INTERVAL_MS}\
             &heartbeat.interval.ms=300&drain_timeout_ms=100"
        ),
    )
    .await;
    let (destination, group) = ("d", "g");
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    let ids: Vec<String> = (0..4).map(|n| format!("m{n}")).collect();
    send_ids(&channel, destination, &ids).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let note = |seen: &mut HashMap<String, usize>, delivery: &Delivery<KafkaAcknowledger>| {
        *seen.entry(delivery.message().id().to_owned()).or_default() += 1;
    };
    let first = next(&mut consumer).await;
    note(&mut seen, &first);
    let second = next(&mut consumer).await;
    note(&mut seen, &second);
    // The slow work: receive is not called meanwhile.
    tokio::time::sleep(Duration::from_millis(3 * POLL_INTERVAL_MS)).await;
    first.ack().await.expect("ack");
    let third = next(&mut consumer).await;
    note(&mut seen, &third);
    second.ack().await.expect("ack");
    third.ack().await.expect("ack");
    while seen.len() < ids.len() {
        let delivery = next(&mut consumer).await;
        note(&mut seen, &delivery);
        delivery.ack().await.expect("ack");
    }
    // A redelivery after an eviction would come now: watch for it a while.
    let late = tokio::time::timeout(Duration::from_secs(3), consumer.receive()).await;
    if let Ok(Ok(delivery)) = &late {
        note(&mut seen, delivery);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "handled twice (the member was evicted): {twice:?}"
    );
    assert!(late.is_err(), "nothing more to deliver: {late:?}");
    let topic = channel.topic_name(destination).expect("topic");
    let group_id = channel.group_id(destination, group).expect("group");
    expect_committed(&group_id, &topic, 4).await;
    drop(consumer);
    channel.close().await.expect("close");
}

/// A record sent to one group of a destination reaches that group only, as it was sent
/// (id, key, headers, content type; the routing header gone), and is skipped by the other
/// group and by an anonymous subscription, the other group committing past it at once, so
/// it blocks none of its later records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_sent_to_one_group_reaches_it_only_and_blocks_no_other() {
    let prefix = format!("to-group-{}-", unique());
    let channel = channel_with(&prefix, 1, "").await;
    let destination = "redriven";
    let open = |group: Option<&str>| {
        let subscription = Subscription::new(destination).optional_group(group.map(str::to_owned));
        let channel = channel.clone();
        async move { channel.consumer(&subscription).await.expect("consumer") }
    };
    let (mut a, mut b, mut anonymous) = (
        open(Some("a")).await,
        open(Some("b")).await,
        open(None).await,
    );
    let sent = Message::new(r#"{"n":1}"#)
        .with_key("k")
        .with_header("tenant", "acme")
        .with_content_type("application/json");
    channel
        .send_to_group(destination, "a", vec![sent.clone()])
        .await
        .expect("send to group a");

    let delivery = next(&mut a).await;
    let message = delivery.message();
    assert_eq!(message.id(), sent.id());
    assert_eq!(message.key(), Some("k"));
    assert_eq!(message.payload(), sent.payload());
    assert_eq!(message.content_type(), Some("application/json"));
    assert_eq!(
        message.headers(),
        sent.headers(),
        "the routing header is gone"
    );
    assert_eq!(message.headers().get(GROUP_HEADER), None);
    delivery.ack().await.expect("ack");

    // B read the record (it is offset 0 of the only partition) and committed past it,
    // with nothing to handle.
    let topic = channel.topic_name(destination).expect("topic");
    let b_group = channel.group_id(destination, "b").expect("group");
    expect_committed(&b_group, &topic, 1).await;

    let later = Message::new(r#"{"n":2}"#);
    send_ids(&channel, destination, &[later.id().to_owned()]).await;
    for consumer in [&mut b, &mut anonymous, &mut a] {
        let delivery = next(consumer).await;
        assert_eq!(
            delivery.message().id(),
            later.id(),
            "{consumer:?}: the later record, only"
        );
        delivery.ack().await.expect("ack");
    }
    expect_committed(&b_group, &topic, 2).await;
    drop((a, b, anonymous));
    channel.close().await.expect("close");
}

/// The URL the docs show works as written.
#[test]
fn the_documented_urls_parse() {
    assert!(KafkaConfig::new(&url("")).is_ok());
    assert!(KafkaConfig::new("kafka://h1:9092,h2:9092?max.poll.interval.ms=600000").is_ok());
}

/// librdkafka settings it refuses only together, when it creates the consumer: a
/// configuration error, not a broker one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_refused_together_are_a_config_error() {
    let prefix = format!("together-{}-", unique());
    let channel = channel_with(
        &prefix,
        1,
        "session.timeout.ms=9000&max.poll.interval.ms=8000",
    )
    .await;
    let err = channel
        .consumer(&Subscription::new("d").group("g"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(reason) if reason.contains("max.poll.interval.ms")),
        "{err:?}"
    );
    channel.close().await.expect("close");
}

/// Ten times more records than the consumer reads ahead (`read_ahead=100`), and a consumer
/// that does not call `receive` for three times `max.poll.interval.ms`: the read-ahead
/// fills, the partition is paused while polling goes on (the member stays), and then every
/// record comes, once and in order, through pauses and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_read_ahead_buffer_pauses_fetching_not_polling() {
    const POLL_INTERVAL_MS: u64 = 1500;
    const RECORDS: usize = 1000;
    let prefix = format!("full-{}-", unique());
    let channel = channel_with(
        &prefix,
        1,
        &format!(
            "max.poll.interval.ms={POLL_INTERVAL_MS}&session.timeout.ms={POLL_INTERVAL_MS}\
             &heartbeat.interval.ms=300&drain_timeout_ms=100&read_ahead=100"
        ),
    )
    .await;
    let mut consumer = channel
        .consumer(&Subscription::new("d").group("g"))
        .await
        .expect("consumer");
    let ids: Vec<String> = (0..RECORDS).map(|n| format!("m{n:04}")).collect();
    send_ids(&channel, "d", &ids).await;
    let first = next(&mut consumer).await;
    first.ack().await.expect("ack");
    // Not receiving meanwhile: the buffer fills and the partition is paused.
    tokio::time::sleep(Duration::from_millis(3 * POLL_INTERVAL_MS)).await;
    let mut received = vec![ids[0].clone()];
    while received.len() < RECORDS {
        let delivery = next(&mut consumer).await;
        received.push(delivery.message().id().to_owned());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(received, ids, "every record once, in order");
    let late = tokio::time::timeout(Duration::from_secs(3), consumer.receive()).await;
    assert!(
        late.is_err(),
        "nothing more (an eviction would redeliver): {late:?}"
    );
    drop(consumer);
    channel.close().await.expect("close");
}

/// The next delivery `try_receive` has, asked again (without ever calling `receive`) until
/// one is there, failing the test if none comes within `LIMIT`.
async fn try_next(consumer: &mut KafkaConsumer) -> Delivery<KafkaAcknowledger> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(received) = consumer.try_receive() {
            return received.expect("try_receive");
        }
        assert!(Instant::now() < deadline, "no delivery after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `try_receive` alone (the runtime's fast path) serves what `receive` would: records
/// once, in order, a due redelivery before the records after it, attempt counted; acks
/// (settled at once, with no waiting) move the committed position and requeue nothing;
/// and once the channel is closed, the shutdown error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_receive_serves_what_receive_would_without_waiting() {
    let prefix = format!("tryrecv-{}-", unique());
    let channel = channel_with(&prefix, 1, "commit_interval_ms=100").await;
    let (destination, group) = ("d", "g");
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    assert!(consumer.try_receive().is_none(), "nothing published yet");
    let ids: Vec<String> = (0..5).map(|n| format!("m{n}")).collect();
    send_ids(&channel, destination, &ids).await;
    let first = try_next(&mut consumer).await;
    assert_eq!((first.message().id(), first.attempt()), ("m0", 1));
    first.nack(None).await.expect("nack");
    let again = consumer
        .try_receive()
        .expect("a nack without delay is due at once")
        .expect("try_receive");
    assert_eq!(
        (again.message().id(), again.attempt()),
        ("m0", 2),
        "the redelivery comes before the records after it"
    );
    again.ack().await.expect("ack");
    let mut received = vec![ids[0].clone()];
    while received.len() < ids.len() {
        let delivery = try_next(&mut consumer).await;
        assert_eq!(delivery.attempt(), 1);
        received.push(delivery.message().id().to_owned());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(received, ids, "every record once, in order");
    let topic = channel.topic_name(destination).expect("topic");
    let group_id = channel.group_id(destination, group).expect("group");
    expect_committed(&group_id, &topic, ids.len() as i64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        consumer.try_receive().is_none(),
        "an acked delivery is not requeued when it is dropped"
    );
    channel.close().await.expect("close");
    assert!(
        matches!(consumer.try_receive(), Some(Err(Error::ShutDown(_)))),
        "closed: the shutdown error"
    );
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_traceparent_is_the_parent_of_the_handlers_span() {
    use rdkafka::message::{Header, OwnedHeaders};
    let channel = channel(&format!("trace-{}-", unique())).await;
    let topic = channel.topic_name("traced").expect("topic");
    check_foreign_parent(channel, "traced", LIMIT, |foreign| async move {
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", broker())
            .create()
            .expect("a raw producer");
        producer
            .send(
                rdkafka::producer::FutureRecord::<str, [u8]>::to(&topic)
                    .payload(br#"{"order":1}"#.as_slice())
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "traceparent",
                        value: Some(foreign.traceparent.as_str()),
                    })),
                Duration::from_secs(30),
            )
            .await
            .expect("a raw send");
    })
    .await;
}
