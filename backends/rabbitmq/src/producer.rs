//! Producers: publish to a destination's exchange and wait for the publisher confirm.

use crate::convert;
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
        self.capabilities.check_size(&message)?;
        let outgoing = convert::encode(&message, None)?;
        self.pool.publish(&self.target, vec![outgoing]).await
    }

    /// Checks every message, publishes them all on one AMQP channel, then waits for every
    /// confirm: one round trip for the batch instead of one per message.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        for message in &messages {
            self.capabilities.check_size(message)?;
        }
        let outgoing = messages
            .iter()
            .map(|message| convert::encode(message, None))
            .collect::<Result<Vec<_>>>()?;
        self.pool.publish(&self.target, outgoing).await
    }
}
