//! Declaring exchanges, queues and bindings (all idempotent).

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

/// Declares what `role` needs; returns the queue to consume, if the role has one. With
/// `expires`, queues get it as `x-expires` and exchanges are auto-delete (see
/// [`RabbitConfig::queue_expires`](crate::RabbitConfig::queue_expires)).
pub(crate) async fn declare(
    channel: &lapin::Channel,
    names: &Names,
    role: Role,
    expires: Option<Duration>,
) -> Result<Option<String>, Failure> {
    let arguments = queue_arguments(expires);
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
                .map_err(|err| Failure::from_lapin(err, &format!("declaring queue {queue:?}")))?;
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
        .map_err(|err| {
            Failure::from_lapin(err, &format!("declaring queue {:?}", names.dead_letters))
        })?;
    Ok(Some(queue))
}

/// A physical name as an AMQP short string. Physical names are built from validated logical
/// names and take at most 149 bytes (see [`Names`]), well within the 255 a short string
/// holds, so the fallback to an empty string is never taken.
pub(crate) fn short(name: &str) -> ShortString {
    ShortString::try_new(name).unwrap_or_default()
}

fn queue_arguments(expires: Option<Duration>) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(expires) = expires {
        let millis = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(millis));
    }
    arguments
}
