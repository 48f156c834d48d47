//! The conformance suite on Kafka (127.0.0.1:9092; `scripts/kafka.sh` builds and starts
//! tansu, a Kafka-compatible broker, there). Each case connects with a random name prefix,
//! so runs on a shared broker never meet.

use event_binder::{AnyChannel, Channel};
use event_binder_core::conformance::SuiteConfig;
use std::sync::Arc;
use std::time::Duration;

async fn connect() -> event_binder::Result<Arc<dyn Channel>> {
    let id = event_binder_core::new_message_id().replace('-', "");
    let url = format!(
        "kafka://127.0.0.1:9092?prefix=conf-{}-",
        &id[id.len() - 12..]
    );
    Ok(Arc::new(AnyChannel::connect(&url).await?))
}

// Consumer groups on tansu can take long to (re)balance: a longer timeout, every case.
event_binder_core::conformance_tests!(
    connect,
    SuiteConfig::default()
        .message_count(1_000)
        .timeout(Duration::from_secs(60))
);
