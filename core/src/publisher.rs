//! Typed publishing: send serde events to destinations chosen at compile or run time.

use crate::channel::{Channel, Producer};
use crate::codec::Encode;
use crate::erased::{BoxChannel, BoxProducer};
use crate::error::Result;
use crate::message::Message;
use crate::telemetry;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tracing::{Instrument, Span};

/// Publishes events to any destination of a channel, like Spring's `StreamBridge`.
///
/// It opens one producer per destination on first use and keeps it. Cheap to clone; clones
/// share the producers.
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::Publisher;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// let publisher = Publisher::new(channel);
/// publisher.publish("orders", &OrderPlaced { order_id: 42 }).await?;
/// publisher.publish_keyed("orders", "customer-7", &OrderPlaced { order_id: 43 }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    channel: BoxChannel,
    producers: Arc<Mutex<HashMap<String, BoxProducer>>>,
}

impl Publisher {
    /// A publisher on this channel.
    pub fn new(channel: impl Channel) -> Self {
        Publisher {
            channel: BoxChannel::new(channel),
            producers: Arc::default(),
        }
    }

    /// The channel it publishes on.
    pub fn channel(&self) -> &BoxChannel {
        &self.channel
    }

    /// Encodes an event and sends it; returns the new message's id once the broker has it.
    pub async fn publish<E: Encode + ?Sized>(
        &self,
        destination: &str,
        event: &E,
    ) -> Result<String> {
        self.send_event(destination, event.encode()?.into_message())
            .await
    }

    /// Like [`publish`](Self::publish), with an ordering key.
    pub async fn publish_keyed<E: Encode + ?Sized>(
        &self,
        destination: &str,
        key: &str,
        event: &E,
    ) -> Result<String> {
        self.send_event(destination, event.encode()?.into_message().with_key(key))
            .await
    }

    /// Sends a message as it is (set headers, key or id yourself).
    pub async fn send(&self, destination: &str, mut message: Message) -> Result<()> {
        let span = self.span(destination, Some(message.id()), 1);
        telemetry::propagate(&span, [&mut message]);
        let sent = async { self.producer(destination).await?.send(message).await }
            .instrument(span.clone())
            .await;
        telemetry::sent(&span, sent)
    }

    /// Sends several messages to one destination.
    pub async fn send_batch(&self, destination: &str, mut messages: Vec<Message>) -> Result<()> {
        let first = messages.first().map(Message::id);
        let span = self.span(destination, first, messages.len());
        telemetry::propagate(&span, &mut messages);
        let sent = async { self.producer(destination).await?.send_batch(messages).await }
            .instrument(span.clone())
            .await;
        telemetry::sent(&span, sent)
    }

    fn span(&self, destination: &str, message_id: Option<&str>, count: usize) -> Span {
        telemetry::send_span(self.channel.backend(), destination, message_id, count)
    }

    /// The producer for a destination, opened on first use.
    pub async fn producer(&self, destination: &str) -> Result<BoxProducer> {
        if let Some(producer) = self.cached(destination) {
            return Ok(producer);
        }
        let opened = self.channel.producer(destination).await?;
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        // Another task may have opened one meanwhile; keep the first so all share it.
        Ok(producers
            .entry(destination.to_owned())
            .or_insert(opened)
            .clone())
    }

    fn cached(&self, destination: &str) -> Option<BoxProducer> {
        let producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        producers.get(destination).cloned()
    }

    async fn send_event(&self, destination: &str, message: Message) -> Result<String> {
        let id = message.id().to_owned();
        self.send(destination, message).await?;
        Ok(id)
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}
