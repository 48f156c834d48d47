//! What the Kafka tests share: where the broker is, random names, and a channel.
//!
//! The broker is `EVENT_BINDER_KAFKA_BOOTSTRAP` (`host:port[,host:port…]`), by default
//! 127.0.0.1:9092, where `scripts/kafka.sh` starts tansu.

#![allow(dead_code)]

use event_binder_kafka::{KafkaChannel, KafkaConfig};

/// The bootstrap brokers the tests use.
pub(crate) fn broker() -> String {
    std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned())
}

/// `kafka://{broker}`, then `query` (if any) after a `?`.
pub(crate) fn url(query: &str) -> String {
    if query.is_empty() {
        format!("kafka://{}", broker())
    } else {
        format!("kafka://{}?{query}", broker())
    }
}

/// A random suffix, so that names never meet those of another run.
pub(crate) fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

/// A channel with `prefix` and `partitions`, and the URL parameters of `query`.
pub(crate) async fn channel_with(prefix: &str, partitions: i32, query: &str) -> KafkaChannel {
    let config = KafkaConfig::new(&url(query))
        .expect("the URL")
        .prefix(prefix)
        .partitions(partitions);
    KafkaChannel::with_config(config)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "connecting to Kafka on {} (run scripts/kafka.sh): {err}",
                broker()
            )
        })
}

/// A channel with `prefix` and 4 partitions.
pub(crate) async fn channel(prefix: &str) -> KafkaChannel {
    channel_with(prefix, 4, "").await
}
