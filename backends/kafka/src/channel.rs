//! [`KafkaChannel`]: the [`Channel`] of the Kafka backend.

use crate::config::KafkaConfig;
use crate::consumer::{KafkaConsumer, Role};
use crate::error::{self, BACKEND};
use crate::names::Names;
use crate::producer::KafkaProducer;
use event_binder_core::{Capabilities, Channel, ChannelUrl, Error, Message, Result, Subscription};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One connection to a Kafka cluster: a producer, an admin client, and a consumer per
/// [`KafkaConsumer`](crate::KafkaConsumer) opened. Cheap to clone: clones share the connection.
///
/// ```no_run
/// # async fn demo() -> event_binder_core::Result<()> {
/// use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
/// use event_binder_kafka::KafkaChannel;
///
/// let channel = KafkaChannel::connect("kafka://127.0.0.1:9092").await?;
/// let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
/// channel.producer("orders").await?.send(Message::new(r#"{"order":42}"#)).await?;
/// billing.receive().await?.ack().await?;
/// channel.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaChannel {
    inner: Arc<Inner>,
}

/// What the channel, its producers and its consumers share.
pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    pub(crate) producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist (created by this channel, or found to exist).
    topics: Mutex<HashSet<String>>,
    /// `true` once the channel is closed.
    closed: watch::Sender<bool>,
}

/// The error of whatever is used once the channel is closed.
pub(crate) fn shut_down() -> Error {
    Error::ShutDown("the kafka channel")
}

impl Inner {
    /// The secrets to keep out of error messages.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        self.config.secrets()
    }

    /// Fails with [`Error::ShutDown`] once the channel is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            Err(shut_down())
        } else {
            Ok(())
        }
    }

    /// A receiver that sees the channel close.
    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Creates a topic with the configured partitions and replication, unless this
    /// channel knows it exists; an existing topic is left as it is.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.check_open()?;
        if self.known_topics().contains(topic) {
            return Ok(());
        }
        let new_topic = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication),
        );
        let options = AdminOptions::new()
            .operation_timeout(Some(self.config.connect_timeout))
            .request_timeout(Some(self.config.connect_timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|err| {
                error::broker(&format!("creating topic {topic}"), &err, &self.secrets())
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::broker(
                        BACKEND,
                        format!("creating topic {name}: the broker answered {code}"),
                    ))
                }
            }
        }
        self.known_topics().insert(topic.to_owned());
        Ok(())
    }

    fn known_topics(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set is only ever inserted into: a panic elsewhere leaves it consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KafkaChannel {
    /// Connects to `kafka://host:port[,host:port…]`, with the query parameters of
    /// [`KafkaConfig`].
    ///
    /// Fails with [`Error::Connection`] if the cluster's metadata cannot be read within the
    /// [`connect_timeout`](KafkaConfig::connect_timeout) (the message never holds a
    /// password), and with [`Error::InvalidUrl`] for a URL it cannot read.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(KafkaConfig::new(url)?).await
    }

    /// Like [`connect`](Self::connect), from a parsed URL (what the `event-binder` facade
    /// calls for `kafka://`).
    pub async fn from_url(url: &ChannelUrl) -> Result<Self> {
        Self::with_config(KafkaConfig::from_url(url)?).await
    }

    /// Connects with a configuration, after checking every setting
    /// ([`KafkaConfig::validate`]): a bad one is an [`Error::Config`] (or
    /// [`Error::InvalidName`] for the prefix), and so are librdkafka settings librdkafka
    /// refuses when it creates the clients.
    pub async fn with_config(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        let secrets: Vec<String> = config.secrets().into_iter().map(str::to_owned).collect();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let brokers = config.bootstrap_servers();
        let producer: FutureProducer = config
            .producer_config()
            .create()
            .map_err(|err| error::creation("creating the producer", &err, &secrets))?;
        let admin: AdminClient<DefaultClientContext> = config
            .admin_config()
            .create()
            .map_err(|err| error::creation("creating the admin client", &err, &secrets))?;
        let probe = producer.clone();
        let timeout = config.connect_timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(None, timeout).map(drop)
        })
        .await
        .map_err(|err| Error::Connection {
            backend: BACKEND,
            message: format!("reading the cluster's metadata from {brokers} failed: {err}"),
            source: None,
        })?;
        metadata.map_err(|err| error::connection(&brokers, &err, &secrets))?;
        let (closed, _) = watch::channel(false);
        Ok(KafkaChannel {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                topics: Mutex::new(HashSet::new()),
                closed,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// The topic of a destination: `{prefix}{destination}`.
    pub fn topic_name(&self, destination: &str) -> Result<String> {
        Ok(self.names(destination, None)?.topic)
    }

    /// The consumer group of a group: `{prefix}{destination}.{group}`.
    pub fn group_id(&self, destination: &str, group: &str) -> Result<String> {
        Ok(self
            .names(destination, Some(group))?
            .group
            .unwrap_or_default())
    }

    /// The dead-letter topic of a group, `{prefix}{destination}.{group}.dlq`, or of the
    /// anonymous subscriptions of a destination, `{prefix}{destination}..dlq`. Its
    /// consumer group (for [`Channel::dead_letters`]) has the same name.
    pub fn dead_letter_topic_name(&self, destination: &str, group: Option<&str>) -> Result<String> {
        Ok(self.names(destination, group)?.dead_letters)
    }

    fn names(&self, destination: &str, group: Option<&str>) -> Result<Names> {
        Names::new(&self.inner.config.prefix, destination, group)
    }
}

impl fmt::Debug for KafkaChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaChannel")
            .field("url", &self.inner.config.url())
            .field("prefix", &self.inner.config.prefix)
            .field("closed", &*self.inner.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl Channel for KafkaChannel {
    type Producer = KafkaProducer;
    type Consumer = KafkaConsumer;

    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Ordering by key (a key's records share a partition, read in offset order; see the
    /// crate documentation for what redeliveries do); durable groups; the configured
    /// largest message; messages published before any group exists are kept (the topic
    /// holds them, and a new group starts at the earliest offset).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .ordering_by_key(true)
            .durable_groups(true)
            .max_message_size(self.inner.config.max_message_size)
            .counts_deliveries(true)
            .delayed_redelivery(true)
            .keeps_messages_without_groups(true)
    }

    /// Creates the topic (and, with a group, its dead-letter topic). A group needs nothing
    /// more: a consumer group that has committed nothing starts at the earliest offset, so
    /// it gets everything the topic holds.
    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        let names = self.names(destination, group)?;
        self.inner.ensure_topic(&names.topic).await?;
        if group.is_some() {
            self.inner.ensure_topic(&names.dead_letters).await?;
        }
        Ok(())
    }

    async fn producer(&self, destination: &str) -> Result<KafkaProducer> {
        let names = self.names(destination, None)?;
        self.inner.ensure_topic(&names.topic).await?;
        Ok(KafkaProducer::new(
            self.inner.clone(),
            destination.to_owned(),
            names.topic,
            self.capabilities(),
        ))
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<KafkaConsumer> {
        let names = self.names(subscription.destination(), subscription.group_name())?;
        let role = if subscription.group_name().is_some() {
            Role::Group
        } else {
            Role::Anonymous
        };
        let consumer =
            KafkaConsumer::open(self.inner.clone(), subscription.clone(), names, role).await?;
        Ok(consumer)
    }

    /// Reads the dead-letter topic as the consumer group of the same name. Dead-lettering
    /// one of its deliveries puts it back at the end of the same topic. Returns once the
    /// group has assigned the consumer its partitions (seconds, for a group's rebalance),
    /// so that a reader that stops at the first quiet receive, as a redrive does, stops
    /// after the dead letters, not before the reading began; fails with
    /// [`Error::Timeout`] when that takes longer than the connect and drain timeouts
    /// together.
    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<KafkaConsumer> {
        let names = self.names(destination, group)?;
        let subscription = Subscription::new(destination).optional_group(group.map(str::to_owned));
        let consumer =
            KafkaConsumer::open(self.inner.clone(), subscription, names, Role::DeadLetters).await?;
        Ok(consumer)
    }

    /// Sends the messages to the destination's topic as its producer does (a key's
    /// messages to the key's partition, sizes checked first, every delivery report
    /// awaited), each record carrying [`GROUP_HEADER`](crate::GROUP_HEADER) with `group`'s
    /// name. A group's records share the topic with every other group's, so every consumer
    /// of the destination reads them: those of other groups and anonymous ones skip them,
    /// committing past them in offset order as if handled; `group`'s consumers receive the
    /// messages, without the header.
    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        event_binder_core::validate_group(group)?;
        self.producer(destination)
            .await?
            .send_all(messages, Some(group))
            .await
    }

    /// Closes the channel: what was sent is flushed (up to the send timeout), and sends
    /// and receives fail with [`Error::ShutDown`] from then on. Consumers leave their
    /// groups when dropped; unacknowledged records stay uncommitted.
    async fn close(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.send_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|err| {
                Error::broker(BACKEND, format!("flushing the producer failed: {err}"))
            })?;
        flushed.map_err(|err| error::broker("flushing the producer", &err, &self.inner.secrets()))
    }
}
