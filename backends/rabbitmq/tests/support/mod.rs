//! What the RabbitMQ crate's integration tests on queue types share: the broker's URL, names
//! of their own, channels on them, and receiving within a limit.

use event_binder_core::{Consumer, Delivery};
use event_binder_rabbitmq::{QueueType, RabbitChannel, RabbitConfig};
use std::time::Duration;
use tokio::time::timeout;

/// The broker every test uses.
pub(crate) const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The longest a test waits for a delivery.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);
/// How long a queue of these tests lives on the broker after its last use: short, as each
/// test leaves a few queues behind (delay queues are quorum queues, the heavier kind).
pub(crate) const EXPIRES: Duration = Duration::from_secs(60);

/// A random name prefix starting with `what`, so that names never meet those of another run.
pub(crate) fn prefix(what: &str) -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    format!("{what}-{}-", &id[id.len() - 12..])
}

/// A channel (a connection of its own: a "process") on the names of `prefix`.
pub(crate) async fn channel(prefix: &str, queue_type: QueueType) -> RabbitChannel {
    let config = RabbitConfig::new(URL)
        .expect("the URL")
        .prefix(prefix)
        .queue_expires(EXPIRES)
        .queue_type(queue_type);
    RabbitChannel::with_config(config)
        .await
        .expect("connecting to RabbitMQ on 127.0.0.1:5672 (run scripts/rabbitmq.sh)")
}

/// The next delivery of `consumer`, failing the test (saying it waited for `what`) on an
/// error or after [`LIMIT`].
pub(crate) async fn receive<C: Consumer>(
    consumer: &mut C,
    what: &str,
) -> Delivery<C::Acknowledger> {
    timeout(LIMIT, consumer.receive())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}
