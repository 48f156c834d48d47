//! [`AnyChannel`]: a channel whose backend is picked from a URL at run time.
// With no backend compiled in, every method ends in the one unreachable arm and uses none
// of its arguments.
#![cfg_attr(
    not(any(
        feature = "memory",
        feature = "rabbitmq",
        feature = "kafka",
        feature = "sns-sqs"
    )),
    allow(unused_variables)
)]

use event_binder_core::{
    Acknowledger, Capabilities, Channel, ChannelUrl, Consumer, DeadLetterFailed, Delivery, Error,
    Message, Producer, Result, Subscription,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A channel to whichever broker a URL names, chosen at run time:
///
/// | URL | backend | cargo feature |
/// |---|---|---|
/// | `memory://` or `memory://NAME` | in-process bus (a named one is shared in the process) | `memory` (default) |
/// | `amqp://user:pass@host:5672/vhost`, `amqps://…` | RabbitMQ | `rabbitmq` |
/// | `kafka://host:9092[,host:9092]` | Apache Kafka | `kafka` |
/// | `sns-sqs://REGION[?endpoint=http://127.0.0.1:4566]` | Amazon SNS+SQS | `sns-sqs` |
///
/// A URL whose backend was not compiled in is an [`Error::FeatureDisabled`] naming the
/// feature to enable. Passwords never appear in `Debug` output or errors.
///
/// It matches on the backends compiled in, with no boxing: what it opens are enums of
/// the backends' own producers ([`AnyProducer`]), consumers ([`AnyConsumer`]) and
/// acknowledgers ([`AnyAcknowledger`]).
///
/// ```
/// use event_binder::{AnyChannel, Channel, Error};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let channel = AnyChannel::connect("memory://").await?;
/// assert_eq!(channel.backend(), "memory");
///
/// let err = AnyChannel::connect("nats://user:secret@127.0.0.1:4222").await.unwrap_err();
/// assert!(matches!(err, Error::InvalidUrl { .. }));
/// assert!(!err.to_string().contains("secret"));
/// # Ok::<(), Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct AnyChannel {
    backend: Arc<Backend>,
    url: ChannelUrl,
}

/// The backends compiled in, one variant each: what [`AnyChannel`] and the types it opens
/// match on, so that every call is a direct call into the backend.
enum Backend {
    #[cfg(feature = "memory")]
    Memory(event_binder_memory::MemoryChannel),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(event_binder_rabbitmq::RabbitChannel),
    #[cfg(feature = "kafka")]
    Kafka(event_binder_kafka::KafkaChannel),
    #[cfg(feature = "sns-sqs")]
    SnsSqs(event_binder_sns_sqs::SnsSqsChannel),
}

/// Runs `$body` on the backend value inside `$value` (an enum of [`Backend`]'s variants,
/// named `$kind`), bound to `$inner`; with `into $wrap`, the `Result` it gives is wrapped in
/// the same variant of `$wrap`.
macro_rules! dispatch {
    ($kind:ident, $value:expr, $inner:ident => $body:expr) => {
        match $value {
            #[cfg(feature = "memory")]
            $kind::Memory($inner) => $body,
            #[cfg(feature = "rabbitmq")]
            $kind::RabbitMq($inner) => $body,
            #[cfg(feature = "kafka")]
            $kind::Kafka($inner) => $body,
            #[cfg(feature = "sns-sqs")]
            $kind::SnsSqs($inner) => $body,
            // With no backend compiled in, the enums have no variant: there is no value.
            #[cfg(not(any(
                feature = "memory",
                feature = "rabbitmq",
                feature = "kafka",
                feature = "sns-sqs"
            )))]
            #[allow(unreachable_patterns)]
            // a value, unlike a reference, is seen to be empty
            _ => unreachable!("no backend is compiled in, so nothing was connected"),
        }
    };
    ($kind:ident, $value:expr, $inner:ident => $body:expr, into $wrap:ident) => {
        match $value {
            #[cfg(feature = "memory")]
            $kind::Memory($inner) => $body.map($wrap::Memory),
            #[cfg(feature = "rabbitmq")]
            $kind::RabbitMq($inner) => $body.map($wrap::RabbitMq),
            #[cfg(feature = "kafka")]
            $kind::Kafka($inner) => $body.map($wrap::Kafka),
            #[cfg(feature = "sns-sqs")]
            $kind::SnsSqs($inner) => $body.map($wrap::SnsSqs),
            // With no backend compiled in, the enums have no variant: there is no value.
            #[cfg(not(any(
                feature = "memory",
                feature = "rabbitmq",
                feature = "kafka",
                feature = "sns-sqs"
            )))]
            #[allow(unreachable_patterns)]
            // a value, unlike a reference, is seen to be empty
            _ => unreachable!("no backend is compiled in, so nothing was connected"),
        }
    };
}

impl AnyChannel {
    /// Connects to the broker the URL names.
    pub async fn connect(url: &str) -> Result<Self> {
        let url = ChannelUrl::parse(url)?;
        let backend = Arc::new(open(&url).await?);
        Ok(AnyChannel { backend, url })
    }

    /// The URL it was connected with (its `Display` hides the password).
    pub fn url(&self) -> &ChannelUrl {
        &self.url
    }
}

async fn open(url: &ChannelUrl) -> Result<Backend> {
    match url.scheme() {
        "memory" => memory(url),
        "amqp" | "amqps" => rabbitmq(url).await,
        "kafka" => kafka(url).await,
        "sns-sqs" => sns_sqs(url).await,
        other => Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: format!(
                "unknown scheme {other:?}; expected memory, amqp, amqps, kafka or sns-sqs"
            ),
        }),
    }
}

/// The error for a URL whose backend was not compiled in.
#[allow(dead_code)] // unused when every backend is compiled in
fn disabled(url: &ChannelUrl, feature: &'static str) -> Error {
    Error::FeatureDisabled {
        scheme: url.scheme().to_owned(),
        feature,
    }
}

#[cfg(feature = "memory")]
fn memory(url: &ChannelUrl) -> Result<Backend> {
    event_binder_memory::MemoryChannel::from_url(url).map(Backend::Memory)
}

#[cfg(not(feature = "memory"))]
fn memory(url: &ChannelUrl) -> Result<Backend> {
    Err(disabled(url, "memory"))
}

#[cfg(feature = "rabbitmq")]
async fn rabbitmq(url: &ChannelUrl) -> Result<Backend> {
    event_binder_rabbitmq::RabbitChannel::from_url(url)
        .await
        .map(Backend::RabbitMq)
}

#[cfg(not(feature = "rabbitmq"))]
async fn rabbitmq(url: &ChannelUrl) -> Result<Backend> {
    Err(disabled(url, "rabbitmq"))
}

#[cfg(feature = "kafka")]
async fn kafka(url: &ChannelUrl) -> Result<Backend> {
    event_binder_kafka::KafkaChannel::from_url(url)
        .await
        .map(Backend::Kafka)
}

#[cfg(not(feature = "kafka"))]
async fn kafka(url: &ChannelUrl) -> Result<Backend> {
    Err(disabled(url, "kafka"))
}

#[cfg(feature = "sns-sqs")]
async fn sns_sqs(url: &ChannelUrl) -> Result<Backend> {
    event_binder_sns_sqs::SnsSqsChannel::from_url(url)
        .await
        .map(Backend::SnsSqs)
}

#[cfg(not(feature = "sns-sqs"))]
async fn sns_sqs(url: &ChannelUrl) -> Result<Backend> {
    Err(disabled(url, "sns-sqs"))
}

impl fmt::Debug for AnyChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyChannel")
            .field("backend", &self.backend())
            .field("url", &self.url)
            .finish()
    }
}

impl Channel for AnyChannel {
    type Producer = AnyProducer;
    type Consumer = AnyConsumer;

    fn backend(&self) -> &'static str {
        dispatch!(Backend, &*self.backend, channel => channel.backend())
    }

    fn capabilities(&self) -> Capabilities {
        dispatch!(Backend, &*self.backend, channel => channel.capabilities())
    }

    fn orders_by_key(&self, destination: &str) -> bool {
        dispatch!(Backend, &*self.backend, channel => channel.orders_by_key(destination))
    }

    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        dispatch!(Backend, &*self.backend, channel => channel.counts_deliveries(subscription))
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        dispatch!(Backend, &*self.backend, channel => channel.provision(destination, group).await)
    }

    async fn producer(&self, destination: &str) -> Result<AnyProducer> {
        dispatch!(
            Backend, &*self.backend, channel => channel.producer(destination).await,
            into AnyProducer
        )
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<AnyConsumer> {
        dispatch!(
            Backend, &*self.backend, channel => channel.consumer(subscription).await,
            into AnyConsumer
        )
    }

    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<AnyConsumer> {
        dispatch!(
            Backend, &*self.backend, channel => channel.dead_letters(destination, group).await,
            into AnyConsumer
        )
    }

    async fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> Result<AnyConsumer> {
        dispatch!(
            Backend, &*self.backend,
            channel => channel.dead_letters_holding(destination, group, prefetch).await,
            into AnyConsumer
        )
    }

    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        dispatch!(
            Backend, &*self.backend,
            channel => channel.send_to_group(destination, group, messages).await
        )
    }

    async fn close(&self) -> Result<()> {
        dispatch!(Backend, &*self.backend, channel => channel.close().await)
    }
}

/// A producer of an [`AnyChannel`]: the backend's own, in the variant of its backend.
///
/// ```
/// use event_binder::{AnyChannel, Channel, Message, Producer};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let channel = AnyChannel::connect("memory://").await?;
/// channel.producer("orders").await?.send(Message::new("{}")).await?;
/// # Ok::<(), event_binder::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyProducer {
    /// The in-memory backend's.
    #[cfg(feature = "memory")]
    Memory(event_binder_memory::MemoryProducer),
    /// RabbitMQ's.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(event_binder_rabbitmq::RabbitProducer),
    /// Kafka's.
    #[cfg(feature = "kafka")]
    Kafka(event_binder_kafka::KafkaProducer),
    /// SNS+SQS's.
    #[cfg(feature = "sns-sqs")]
    SnsSqs(event_binder_sns_sqs::SnsProducer),
}

impl Producer for AnyProducer {
    fn destination(&self) -> &str {
        dispatch!(AnyProducer, self, producer => producer.destination())
    }

    async fn send(&self, message: Message) -> Result<()> {
        dispatch!(AnyProducer, self, producer => producer.send(message).await)
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        dispatch!(AnyProducer, self, producer => producer.send_batch(messages).await)
    }
}

/// A consumer of an [`AnyChannel`]: the backend's own, in the variant of its backend. Its
/// deliveries are settled through an [`AnyAcknowledger`].
///
/// ```
/// use event_binder::{AnyChannel, Channel, Consumer, Message, Producer, Subscription};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let channel = AnyChannel::connect("memory://").await?;
/// let mut consumer = channel.consumer(&Subscription::new("orders").group("billing")).await?;
/// channel.producer("orders").await?.send(Message::new("{}")).await?;
/// consumer.receive().await?.ack().await?;
/// # Ok::<(), event_binder::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyConsumer {
    /// The in-memory backend's.
    #[cfg(feature = "memory")]
    Memory(event_binder_memory::MemoryConsumer),
    /// RabbitMQ's.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(event_binder_rabbitmq::RabbitConsumer),
    /// Kafka's.
    #[cfg(feature = "kafka")]
    Kafka(event_binder_kafka::KafkaConsumer),
    /// SNS+SQS's.
    #[cfg(feature = "sns-sqs")]
    SnsSqs(event_binder_sns_sqs::SqsConsumer),
}

impl Consumer for AnyConsumer {
    type Acknowledger = AnyAcknowledger;

    fn subscription(&self) -> &Subscription {
        dispatch!(AnyConsumer, self, consumer => consumer.subscription())
    }

    async fn receive(&mut self) -> Result<Delivery<AnyAcknowledger>> {
        dispatch!(
            AnyConsumer, self, consumer => consumer.receive().await.map(|delivery| {
                delivery.map_acknowledger(AnyAcknowledger::from)
            })
        )
    }

    fn try_receive(&mut self) -> Option<Result<Delivery<AnyAcknowledger>>> {
        dispatch!(
            AnyConsumer, self, consumer => consumer.try_receive().map(|received| {
                received.map(|delivery| delivery.map_acknowledger(AnyAcknowledger::from))
            })
        )
    }

    async fn backlog(&mut self) -> Result<Option<u64>> {
        dispatch!(AnyConsumer, self, consumer => consumer.backlog().await)
    }
}

/// Settles a delivery of an [`AnyConsumer`]: the backend's own acknowledger, in the variant
/// of its backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyAcknowledger {
    /// The in-memory backend's.
    #[cfg(feature = "memory")]
    Memory(event_binder_memory::MemoryAcknowledger),
    /// RabbitMQ's.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(event_binder_rabbitmq::RabbitAcknowledger),
    /// Kafka's.
    #[cfg(feature = "kafka")]
    Kafka(event_binder_kafka::KafkaAcknowledger),
    /// SNS+SQS's.
    #[cfg(feature = "sns-sqs")]
    SnsSqs(event_binder_sns_sqs::SqsAcknowledger),
}

#[cfg(feature = "memory")]
impl From<event_binder_memory::MemoryAcknowledger> for AnyAcknowledger {
    fn from(acknowledger: event_binder_memory::MemoryAcknowledger) -> Self {
        AnyAcknowledger::Memory(acknowledger)
    }
}

#[cfg(feature = "rabbitmq")]
impl From<event_binder_rabbitmq::RabbitAcknowledger> for AnyAcknowledger {
    fn from(acknowledger: event_binder_rabbitmq::RabbitAcknowledger) -> Self {
        AnyAcknowledger::RabbitMq(acknowledger)
    }
}

#[cfg(feature = "kafka")]
impl From<event_binder_kafka::KafkaAcknowledger> for AnyAcknowledger {
    fn from(acknowledger: event_binder_kafka::KafkaAcknowledger) -> Self {
        AnyAcknowledger::Kafka(acknowledger)
    }
}

#[cfg(feature = "sns-sqs")]
impl From<event_binder_sns_sqs::SqsAcknowledger> for AnyAcknowledger {
    fn from(acknowledger: event_binder_sns_sqs::SqsAcknowledger) -> Self {
        AnyAcknowledger::SnsSqs(acknowledger)
    }
}

impl Acknowledger for AnyAcknowledger {
    async fn ack(self) -> Result<()> {
        dispatch!(AnyAcknowledger, self, acknowledger => acknowledger.ack().await)
    }

    async fn nack(self, delay: Option<Duration>) -> Result<()> {
        dispatch!(AnyAcknowledger, self, acknowledger => acknowledger.nack(delay).await)
    }

    async fn dead_letter(self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        dispatch!(
            AnyAcknowledger, self, acknowledger => acknowledger
                .dead_letter(dead_letter)
                .await
                .map_err(|failed| DeadLetterFailed::new(failed.error, failed.unsettled.into()))
        )
    }

    fn try_ack(&mut self) -> Option<Result<()>> {
        dispatch!(AnyAcknowledger, self, acknowledger => acknowledger.try_ack())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "sns-sqs"))]
    #[tokio::test]
    async fn backends_not_compiled_in_name_their_feature() {
        let err = AnyChannel::connect("sns-sqs://us-east-1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::FeatureDisabled {
                    feature: "sns-sqs",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("`sns-sqs`"), "{err}");
    }

    #[cfg(not(feature = "rabbitmq"))]
    #[tokio::test]
    async fn a_disabled_backend_never_shows_the_password() {
        let err = AnyChannel::connect("amqp://guest:hunter2@127.0.0.1:5672/%2f")
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::FeatureDisabled {
                feature: "rabbitmq",
                ..
            }
        ));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[tokio::test]
    async fn unparsable_urls_are_invalid() {
        let err = AnyChannel::connect("not a url").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    }
}
