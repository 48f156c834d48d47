//! [`KafkaProducer`]: sends to one topic and returns on the delivery report.

use crate::channel::Inner;
use crate::convert::{record_headers, record_timestamp};
use crate::error::{self, BACKEND};
use event_binder_core::{Capabilities, Error, Message, Producer, Result};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use std::fmt;
use std::sync::Arc;

/// Sends messages to one topic with acks=all and idempotence on: what
/// [`KafkaChannel::producer`](crate::KafkaChannel) opens.
pub struct KafkaProducer {
    inner: Arc<Inner>,
    destination: String,
    topic: String,
    capabilities: Capabilities,
}

impl KafkaProducer {
    pub(crate) fn new(
        inner: Arc<Inner>,
        destination: String,
        topic: String,
        capabilities: Capabilities,
    ) -> Self {
        KafkaProducer {
            inner,
            destination,
            topic,
            capabilities,
        }
    }
}

/// Hands one message to librdkafka for `topic`, addressed to `group` only if given (see
/// [`GROUP_HEADER`](crate::GROUP_HEADER)); the future resolves on its delivery report.
fn enqueue(
    inner: &Inner,
    topic: &str,
    message: &Message,
    group: Option<&str>,
) -> Result<DeliveryFuture> {
    inner.check_open()?;
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .payload(message.payload().as_ref())
        .headers(record_headers(message, group)?)
        .timestamp(record_timestamp(message));
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    inner.producer.send_result(record).map_err(|(err, _)| {
        error::broker(&format!("sending to topic {topic}"), &err, &inner.secrets())
    })
}

/// Waits for the delivery report of an enqueued message.
async fn delivered(inner: &Inner, topic: &str, future: DeliveryFuture) -> Result<()> {
    match future.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => Err(error::delivery(
            topic,
            &err,
            inner.config.send_timeout,
            &inner.secrets(),
        )),
        Err(_) => Err(Error::broker(
            BACKEND,
            format!("the producer closed before the delivery report of a message to topic {topic}"),
        )),
    }
}

/// Sends one message and waits for its delivery report.
pub(crate) async fn send_to(inner: &Inner, topic: &str, message: &Message) -> Result<()> {
    let future = enqueue(inner, topic, message, None)?;
    delivered(inner, topic, future).await
}

impl KafkaProducer {
    /// Sends a batch, each message addressed to `group` only if given: checks every
    /// message's size first (an oversized one refuses the whole batch, and nothing is
    /// sent), then hands them all to librdkafka and waits for every report. The size
    /// checked is the message's own: the address is the backend's, within the room
    /// librdkafka's `message.max.bytes` keeps above the limit for framing.
    pub(crate) async fn send_all(&self, messages: Vec<Message>, group: Option<&str>) -> Result<()> {
        for message in &messages {
            self.capabilities.check_size(message)?;
        }
        let mut pending = Vec::with_capacity(messages.len());
        let mut first_error = None;
        for message in &messages {
            match enqueue(&self.inner, &self.topic, message, group) {
                Ok(future) => pending.push(future),
                Err(err) => {
                    first_error = Some(err);
                    break;
                }
            }
        }
        for future in pending {
            let result = delivered(&self.inner, &self.topic, future).await;
            if let (Err(err), None) = (result, &first_error) {
                first_error = Some(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("destination", &self.destination)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Producer for KafkaProducer {
    fn destination(&self) -> &str {
        &self.destination
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.capabilities.check_size(&message)?;
        send_to(&self.inner, &self.topic, &message).await
    }

    /// Checks every message's size first (an oversized one refuses the whole batch, and
    /// nothing is sent), then hands them all to librdkafka and waits for every report.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.send_all(messages, None).await
    }
}
