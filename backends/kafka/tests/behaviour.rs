//! What the Kafka backend adds to the conformance suite, on a real broker (127.0.0.1:9092;
//! `scripts/kafka.sh` builds and starts tansu there): records from a foreign producer are
//! handled; an unreachable broker gives a clear error that never shows the password.

use event_binder_core::{Channel, Error, Subscription};
use event_binder_kafka::{KafkaChannel, KafkaConfig};
use std::time::Duration;

const URL: &str = "kafka://127.0.0.1:9092";
/// Group rebalances on tansu have been seen to take over 25 s.
const LIMIT: Duration = Duration::from_secs(90);

/// A random suffix, so that names never meet those of another run.
fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

async fn channel(prefix: &str) -> KafkaChannel {
    let config = KafkaConfig::new(URL)
        .expect("the URL")
        .prefix(prefix)
        .partitions(4);
    KafkaChannel::with_config(config)
        .await
        .expect("connecting to Kafka on 127.0.0.1:9092 (run scripts/kafka.sh)")
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
    let foreign: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
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
    let delivery = tokio::time::timeout(LIMIT, consumer.receive())
        .await
        .expect("the foreign record in time")
        .expect("receive");
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
}
