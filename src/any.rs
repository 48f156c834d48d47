//! [`AnyChannel`]: a channel whose backend is picked from a URL at run time.

use async_trait::async_trait;
use event_binder_core::{
    Capabilities, Channel, ChannelUrl, Consumer, Error, Producer, Result, Subscription,
};
use std::fmt;
use std::sync::Arc;

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
    inner: Arc<dyn Channel>,
    url: ChannelUrl,
}

impl AnyChannel {
    /// Connects to the broker the URL names.
    pub async fn connect(url: &str) -> Result<Self> {
        let url = ChannelUrl::parse(url)?;
        let inner = open(&url).await?;
        Ok(AnyChannel { inner, url })
    }

    /// The URL it was connected with (its `Display` hides the password).
    pub fn url(&self) -> &ChannelUrl {
        &self.url
    }
}

async fn open(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
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

#[cfg(feature = "memory")]
fn memory(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Ok(Arc::new(event_binder_memory::MemoryChannel::from_url(url)?))
}

#[cfg(not(feature = "memory"))]
fn memory(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Err(Error::FeatureDisabled {
        scheme: url.scheme().to_owned(),
        feature: "memory",
    })
}

#[cfg(feature = "rabbitmq")]
async fn rabbitmq(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Ok(Arc::new(
        event_binder_rabbitmq::RabbitChannel::from_url(url).await?,
    ))
}

#[cfg(not(feature = "rabbitmq"))]
async fn rabbitmq(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Err(Error::FeatureDisabled {
        scheme: url.scheme().to_owned(),
        feature: "rabbitmq",
    })
}

#[cfg(feature = "kafka")]
async fn kafka(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Ok(Arc::new(
        event_binder_kafka::KafkaChannel::from_url(url).await?,
    ))
}

#[cfg(not(feature = "kafka"))]
async fn kafka(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Err(Error::FeatureDisabled {
        scheme: url.scheme().to_owned(),
        feature: "kafka",
    })
}

#[cfg(feature = "sns-sqs")]
async fn sns_sqs(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Ok(Arc::new(
        event_binder_sns_sqs::SnsSqsChannel::from_url(url).await?,
    ))
}

#[cfg(not(feature = "sns-sqs"))]
async fn sns_sqs(url: &ChannelUrl) -> Result<Arc<dyn Channel>> {
    Err(Error::FeatureDisabled {
        scheme: url.scheme().to_owned(),
        feature: "sns-sqs",
    })
}

impl fmt::Debug for AnyChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyChannel")
            .field("backend", &self.inner.backend())
            .field("url", &self.url)
            .finish()
    }
}

#[async_trait]
impl Channel for AnyChannel {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn orders_by_key(&self, destination: &str) -> bool {
        self.inner.orders_by_key(destination)
    }

    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        self.inner.counts_deliveries(subscription)
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        self.inner.provision(destination, group).await
    }

    async fn producer(&self, destination: &str) -> Result<Box<dyn Producer>> {
        self.inner.producer(destination).await
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<Box<dyn Consumer>> {
        self.inner.consumer(subscription).await
    }

    async fn dead_letters(
        &self,
        destination: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>> {
        self.inner.dead_letters(destination, group).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
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
