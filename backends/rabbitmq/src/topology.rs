//! Declaring exchanges, queues and bindings (all idempotent).

use crate::config::{QueueType, RabbitConfig};
use crate::error::Failure;
use crate::names::Names;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
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
}
