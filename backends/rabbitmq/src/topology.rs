//! Declaring exchanges, queues and bindings (all idempotent).

use crate::config::{QueueType, RabbitConfig};
use crate::error::Failure;
use crate::names::Names;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::ExchangeKind;
use std::time::Duration;

/// The binding key of every queue: a topic exchange's "everything".
const EVERYTHING: &str = "#";

/// What a declaration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The destination's exchange alone.
    Destination,
    /// The exchange, the group's durable queue bound to it, and its dead-letter queue.
    Group,
    /// The exchange, a server-named exclusive auto-delete queue bound to it, and the
    /// anonymous subscriptions' dead-letter queue.
    Anonymous,
    /// A dead-letter queue alone.
    DeadLetters,
}

impl Role {
    /// Whether the queue this role consumes is of the configured
    /// [`QueueType`]: every one but the anonymous subscriptions' server-named queues, which
    /// are exclusive and auto-delete, and so classic.
    pub(crate) fn queue_type(self, configured: QueueType) -> QueueType {
        match self {
            Role::Anonymous => QueueType::Classic,
            Role::Destination | Role::Group | Role::DeadLetters => configured,
        }
    }
}

/// What [`ConfirmPool::declare`](crate::pool::ConfirmPool::declare) declares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Declaration<'a> {
    /// What a role needs (see [`declare`]).
    Topology(&'a Names, Role),
    /// One delay queue (see [`declare_delay_queue`]).
    Delay(&'a DelayQueue),
    /// Nothing: a passive declaration of a queue, for its ready messages (see [`count`]).
    Count(&'a str),
}

impl Declaration<'_> {
    /// Declares it on `channel`; returns the ready messages of the queue a
    /// [`Count`](Self::Count) names, 0 for the others.
    pub(crate) async fn run(
        self,
        channel: &lapin::Channel,
        config: &RabbitConfig,
    ) -> Result<u32, Failure> {
        match self {
            Declaration::Topology(names, role) => {
                declare(channel, names, role, config).await.map(|_| 0)
            }
            Declaration::Delay(queue) => declare_delay_queue(channel, queue, config)
                .await
                .map(|()| 0),
            Declaration::Count(queue) => count(channel, queue).await,
        }
    }
}

/// A delay queue: where a message handed back with a delay waits it out, until RabbitMQ
/// moves it back to the queue it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelayQueue {
    /// Its name, [`names::delay_queue`](crate::names::delay_queue).
    pub(crate) name: String,
    /// The queue its messages go back to once expired.
    pub(crate) target: String,
    /// No message waits in it longer than this.
    pub(crate) longest: Duration,
}

/// Declares what `role` needs; returns the queue to consume, if the role has one. With
/// [`RabbitConfig::queue_expires`], queues get it as `x-expires` and exchanges are
/// auto-delete; group and dead-letter queues are of [`RabbitConfig::queue_type`].
pub(crate) async fn declare(
    channel: &lapin::Channel,
    names: &Names,
    role: Role,
    config: &RabbitConfig,
) -> Result<Option<String>, Failure> {
    let expires = config.queue_expires;
    let arguments = queue_arguments(expires, config.queue_type);
    if role != Role::DeadLetters {
        channel
            .exchange_declare(
                short(&names.exchange),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: expires.is_some(),
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|err| {
                Failure::from_lapin(err, &format!("declaring exchange {:?}", names.exchange))
            })?;
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let queue = match role {
        Role::Destination => return Ok(None),
        Role::DeadLetters => names.dead_letters.clone(),
        Role::Group => {
            let queue = names.queue.clone().unwrap_or_default();
            channel
                .queue_declare(short(&queue), durable, arguments.clone())
                .await
                .map_err(|err| declaring_queue(err, &queue, config.queue_type))?;
            queue
        }
        Role::Anonymous => {
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            let declared = channel
                .queue_declare(ShortString::default(), options, FieldTable::default())
                .await
                .map_err(|err| Failure::from_lapin(err, "declaring a server-named queue"))?;
            declared.name().as_str().to_owned()
        }
    };
    if role != Role::DeadLetters {
        channel
            .queue_bind(
                short(&queue),
                short(&names.exchange),
                short(EVERYTHING),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| {
                Failure::from_lapin(
                    err,
                    &format!("binding queue {queue:?} to exchange {:?}", names.exchange),
                )
            })?;
    }
    channel
        .queue_declare(short(&names.dead_letters), durable, arguments)
        .await
        .map_err(|err| declaring_queue(err, &names.dead_letters, config.queue_type))?;
    Ok(Some(queue))
}

/// The messages ready in `queue` (not those handed to a consumer and not yet
/// acknowledged: AMQP does not report them). A queue that does not exist holds none; the
/// broker closes the channel that asked.
pub(crate) async fn count(channel: &lapin::Channel, queue: &str) -> Result<u32, Failure> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(short(queue), passive, FieldTable::default())
        .await
    {
        Ok(declared) => Ok(declared.message_count()),
        Err(err) if is_not_found(&err) => Ok(0),
        Err(err) => Err(Failure::from_lapin(
            err,
            &format!("counting the messages of queue {queue:?}"),
        )),
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Declares a delay queue: a durable quorum queue whose expired messages (each has its own
/// TTL, the `expiration` property) are dead-lettered back to the queue they came from,
/// through the default exchange.
///
/// A quorum queue, because only its `at-least-once` dead-lettering (RabbitMQ 3.10 and
/// later, which requires `x-overflow: reject-publish`) waits for the target queue to
/// confirm a message before removing it: the classic queues' dead-lettering drops a
/// message the target cannot take. With [`RabbitConfig::queue_expires`], the queue's
/// `x-expires` is that plus the longest delay it holds, so it never expires under a
/// message still waiting in it (a queue without consumers counts as unused however many
/// messages it holds); [`DelayQueues`](crate::delay::DelayQueues) declares it again well
/// before that.
pub(crate) async fn declare_delay_queue(
    channel: &lapin::Channel,
    queue: &DelayQueue,
    config: &RabbitConfig,
) -> Result<(), Failure> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let arguments = delay_queue_arguments(queue, config.queue_expires);
    channel
        .queue_declare(short(&queue.name), durable, arguments)
        .await
        .map_err(|err| declaring_delay_queue(err, queue))?;
    Ok(())
}

/// The failure of declaring a delay queue; when the broker does not know its arguments,
/// the error says which RabbitMQ it takes.
fn declaring_delay_queue(err: lapin::Error, queue: &DelayQueue) -> Failure {
    let text = err.to_string();
    let what = if ["x-dead-letter-strategy", "x-overflow", "x-queue-type"]
        .iter()
        .any(|argument| text.contains(argument))
    {
        format!(
            "declaring delay queue {:?} (a quorum queue with at-least-once dead-lettering,              which takes RabbitMQ 3.10 or later)",
            queue.name
        )
    } else {
        format!("declaring delay queue {:?}", queue.name)
    };
    Failure::from_lapin(err, &what)
}

/// The failure of declaring a durable queue; when the queue exists with another type, the
/// error says how to proceed.
fn declaring_queue(err: lapin::Error, queue: &str, queue_type: QueueType) -> Failure {
    let other_type = err.to_string().contains("x-queue-type");
    let what = if other_type {
        format!(
            "declaring queue {queue:?} as a {queue_type} queue (queue_type={queue_type}); it \
             exists with another type, which it keeps: use that queue_type, or delete the \
             queue (or move its messages to a new one) first"
        )
    } else {
        format!("declaring queue {queue:?}")
    };
    Failure::from_lapin(err, &what)
}

/// A physical name as an AMQP short string. Physical names are built from validated logical
/// names and take at most 149 bytes (see [`Names`]), well within the 255 a short string
/// holds, so the fallback to an empty string is never taken.
pub(crate) fn short(name: &str) -> ShortString {
    ShortString::try_new(name).unwrap_or_default()
}

/// The arguments of the durable queues. A classic queue is declared without
/// `x-queue-type`, as before quorum queues were offered, so that existing queues keep
/// matching their declaration. No `x-delivery-limit` is set on quorum queues: the runtime's
/// [`RetryPolicy::max_deliveries`](event_binder_core::RetryPolicy::max_deliveries) decides
/// when a message has been delivered too often, and dead-letters it with the reason; a
/// broker limit would drop such messages behind its back (see the crate documentation).
fn queue_arguments(expires: Option<Duration>, queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(expires) = expires {
        let millis = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(millis));
    }
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.as_str().into()),
        );
    }
    arguments
}

/// The arguments of a delay queue (see [`declare_delay_queue`]).
fn delay_queue_arguments(queue: &DelayQueue, expires: Option<Duration>) -> FieldTable {
    let expires = expires.map(|expires| {
        expires
            .saturating_add(queue.longest)
            .min(RabbitConfig::MAX_QUEUE_EXPIRES)
    });
    let mut arguments = queue_arguments(expires, QueueType::Quorum);
    let mut text = |name: &str, value: &str| {
        arguments.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    text("x-dead-letter-exchange", "");
    text("x-dead-letter-routing-key", &queue.target);
    text("x-dead-letter-strategy", "at-least-once");
    text("x-overflow", "reject-publish");
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_queues_say_so_and_classic_ones_declare_as_before() {
        let quorum = queue_arguments(None, QueueType::Quorum);
        assert_eq!(
            quorum.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert!(quorum.inner().get("x-delivery-limit").is_none());
        let classic = queue_arguments(Some(Duration::from_secs(1)), QueueType::Classic);
        assert!(classic.inner().get("x-queue-type").is_none());
        assert_eq!(
            classic.inner().get("x-expires"),
            Some(&AMQPValue::LongLongInt(1000))
        );
        assert_eq!(
            Role::Anonymous.queue_type(QueueType::Quorum),
            QueueType::Classic
        );
        assert_eq!(Role::Group.queue_type(QueueType::Quorum), QueueType::Quorum);
        assert_eq!(
            Role::DeadLetters.queue_type(QueueType::Quorum),
            QueueType::Quorum
        );
    }

    #[test]
    fn delay_queues_dead_letter_back_at_least_once_and_outlive_their_longest_delay() {
        let queue = DelayQueue {
            name: "t-orders.billing.delay.8".into(),
            target: "t-orders.billing".into(),
            longest: Duration::from_millis(512),
        };
        let arguments = delay_queue_arguments(&queue, Some(Duration::from_secs(1)));
        let text = |value: &str| Some(AMQPValue::LongString(value.into()));
        let get = |name: &str| arguments.inner().get(name).cloned();
        assert_eq!(get("x-queue-type"), text("quorum"));
        assert_eq!(get("x-dead-letter-exchange"), text(""));
        assert_eq!(get("x-dead-letter-routing-key"), text("t-orders.billing"));
        assert_eq!(get("x-dead-letter-strategy"), text("at-least-once"));
        assert_eq!(get("x-overflow"), text("reject-publish"));
        assert_eq!(get("x-expires"), Some(AMQPValue::LongLongInt(1512)));
        let longest = delay_queue_arguments(&queue, Some(RabbitConfig::MAX_QUEUE_EXPIRES));
        let max = i64::try_from(RabbitConfig::MAX_QUEUE_EXPIRES.as_millis()).unwrap();
        assert_eq!(
            longest.inner().get("x-expires"),
            Some(&AMQPValue::LongLongInt(max))
        );
        assert!(delay_queue_arguments(&queue, None)
            .inner()
            .get("x-expires")
            .is_none());
    }
}
