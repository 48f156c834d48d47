//! The conformance suite on RabbitMQ (127.0.0.1:5672, guest/guest; `scripts/rabbitmq.sh`
//! starts it), once per queue type: `classic::*` with classic group and dead-letter queues
//! (the default), `quorum::*` with quorum ones (`?queue_type=quorum`; the RabbitMQ crate's
//! `tests/quorum.rs` checks that such queues really are quorum queues). Each case connects
//! with a random name prefix, so runs on a shared broker never meet, and its queues expire
//! on the broker two minutes after their last use.

use event_binder::AnyChannel;
use event_binder_core::conformance::SuiteConfig;

/// A channel with a prefix of its own and queues of `queue_type`.
async fn connect(queue_type: &str) -> event_binder::Result<AnyChannel> {
    let id = event_binder_core::new_message_id().replace('-', "");
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=conformance-{queue_type}-{}-\
         &queue_expires_ms=120000&queue_type={queue_type}",
        &id[id.len() - 12..]
    );
    AnyChannel::connect(&url).await
}

mod classic {
    use super::*;

    async fn connect() -> event_binder::Result<AnyChannel> {
        super::connect("classic").await
    }

    event_binder_core::conformance_tests!(connect, SuiteConfig::default());
}

mod quorum {
    use super::*;

    async fn connect() -> event_binder::Result<AnyChannel> {
        super::connect("quorum").await
    }

    event_binder_core::conformance_tests!(connect, SuiteConfig::default());
}
