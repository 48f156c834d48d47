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

/// Hands one message to librdkafka for `topic`; the future resolves on its delivery report.
pub(crate) fn enqueue(inner: &Inner, topic: &str, message: &Message) -> Result<DeliveryFuture> {
    inner.check_open()?;
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .payload(message.payload().as_ref())
        .headers(record_headers(message))
        .timestamp(record_timestamp(message));
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    inner.producer.send_result(record).map_err(|(err, _)| {
        error::broker(&format!("sending to topic {topic}"), &err, &inner.secrets())
    })
}

/// Waits for the delivery report of an enqueued message.
pub(crate) async fn delivered(inner: &Inner, topic: &str, future: DeliveryFuture) -> Result<()> {
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
    let future = enqueue(inner, topic, message)?;
    delivered(inner, topic, future).await
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
        for message in &messages {
            self.capabilities.check_size(message)?;
        }
        let mut pending = Vec::with_capacity(messages.len());
        let mut first_error = None;
        for message in &messages {
            match enqueue(&self.inner, &self.topic, message) {
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
