//! The conformance suite on RabbitMQ (127.0.0.1:5672, guest/guest; `scripts/rabbitmq.sh`
//! starts it). Each case connects with a random name prefix, so runs on a shared broker
//! never meet, and its queues expire on the broker ten minutes after their last use.

use event_binder::{AnyChannel, Channel};
use event_binder_core::conformance::SuiteConfig;
use std::sync::Arc;

async fn connect() -> event_binder::Result<Arc<dyn Channel>> {
    let id = event_binder_core::new_message_id().replace('-', "");
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=conformance-{}-&queue_expires_ms=600000",
        &id[id.len() - 12..]
    );
    Ok(Arc::new(AnyChannel::connect(&url).await?))
}

event_binder_core::conformance_tests!(connect, SuiteConfig::default());
