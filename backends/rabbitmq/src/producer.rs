//! Producers: publish to a destination's exchange and wait for the publisher confirm.

use crate::convert::{self, Outgoing};
use crate::pool::{ConfirmPool, Target};
use event_binder_core::{Capabilities, Message, Producer, Result};

/// Sends to one destination on confirm-mode channels of its own: what
/// [`RabbitChannel::producer`](crate::RabbitChannel) opens.
#[derive(Debug)]
pub struct RabbitProducer {
    destination: String,
    target: Target,
    pool: ConfirmPool,
    capabilities: Capabilities,
}

impl RabbitProducer {
    /// A producer whose pool declares the destination's exchange on every channel it opens.
    pub(crate) fn new(
        destination: String,
        target: Target,
        pool: ConfirmPool,
        capabilities: Capabilities,
    ) -> Self {
        RabbitProducer {
            destination,
            target,
            pool,
            capabilities,
        }
    }

    /// Opens the first channel, declaring the exchange.
    pub(crate) async fn warm_up(&self) -> Result<()> {
        self.pool
            .warm_up(&format!("opening a producer for {:?}", self.destination))
            .await
    }
}

impl Producer for RabbitProducer {
    fn destination(&self) -> &str {
        &self.destination
    }

    async fn send(&self, message: Message) -> Result<()> {
        let outgoing = encode_all(&self.capabilities, std::slice::from_ref(&message), None)?;
        self.pool.publish(&self.target, outgoing).await
    }

    /// Checks every message, publishes them all on one AMQP channel, then waits for every
    /// confirm: one round trip for the batch instead of one per message.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let outgoing = encode_all(&self.capabilities, &messages, None)?;
        self.pool.publish(&self.target, outgoing).await
    }
}

/// What every send publishes: the messages encoded for `basic.publish`, routed by their
/// keys (`queue`: `None`) or to one queue through the default exchange. Checks every size
/// before encoding any, so that a batch with one oversized message sends none.
pub(crate) fn encode_all(
    capabilities: &Capabilities,
    messages: &[Message],
    queue: Option<&str>,
) -> Result<Vec<Outgoing>> {
    for message in messages {
        capabilities.check_size(message)?;
    }
    messages
        .iter()
        .map(|message| convert::encode(message, queue))
        .collect()
}
