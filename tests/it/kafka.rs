//! The conformance suite on Kafka: the broker named by `EVENT_BINDER_KAFKA_BOOTSTRAP`
//! (`host:port[,host:port…]`), by default 127.0.0.1:9092, where `scripts/kafka.sh` starts
//! tansu, a Kafka-compatible broker. Each case connects with a random name prefix, so runs
//! on a shared broker never meet.

use event_binder::{AnyChannel, Channel, Message, Producer};
use event_binder_core::conformance::SuiteConfig;
use std::time::Duration;

/// The bootstrap brokers the tests use.
pub(crate) fn broker() -> String {
    std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned())
}

/// A random name prefix, so that runs on a shared broker never meet.
fn prefix(base: &str) -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    format!("{base}-{}-", &id[id.len() - 12..])
}

async fn connect() -> event_binder::Result<AnyChannel> {
    let url = format!("kafka://{}?prefix={}", broker(), prefix("conf"));
    AnyChannel::connect(&url).await
}

/// `kafka://h1:9092,h2:9092`, as the README writes it: every host is a bootstrap broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_connect_through_any_channel() {
    let all = broker();
    let first = all.split(',').next().unwrap_or_default();
    let url = format!("kafka://{first},{first}?prefix={}", prefix("hosts"));
    let channel = AnyChannel::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    assert_eq!(channel.backend(), "kafka");
    channel
        .producer("d")
        .await
        .expect("a producer")
        .send(Message::new("{}"))
        .await
        .expect("a send through the two hosts");
    channel.close().await.expect("close");
}

// Consumer groups on tansu can take long to (re)balance: a longer timeout, every case.
event_binder_core::conformance_tests!(
    connect,
    SuiteConfig::default()
        .message_count(1_000)
        .timeout(Duration::from_secs(60))
);
