//! [`RabbitChannel`]: the [`Channel`] of the RabbitMQ backend.

use crate::config::{QueueType, RabbitConfig};
use crate::consumer::{DeadLetters, RabbitConsumer, Source};
use crate::delay::{self, DelayQueues};
use crate::error::BACKEND;
use crate::link::{Link, State};
use crate::names::{self, Names};
use crate::pool::{ConfirmPool, Target};
use crate::producer::{self, RabbitProducer};
use crate::topology::{short, Declaration, Role};
use event_binder_core::{Capabilities, Channel, ChannelUrl, Message, Origin, Result, Subscription};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One connection to RabbitMQ, reconnected when lost. Cheap to clone: clones share the
/// connection.
///
/// ```no_run
/// # async fn demo() -> event_binder_core::Result<()> {
/// use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
/// use event_binder_rabbitmq::RabbitChannel;
///
/// let channel = RabbitChannel::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
/// channel.producer("orders").await?.send(Message::new(r#"{"order":42}"#)).await?;
/// billing.receive().await?.ack().await?;
/// channel.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RabbitChannel {
    link: Arc<Link>,
    /// Declarations and dead letters.
    admin: Arc<ConfirmPool>,
}

impl RabbitChannel {
    /// Connects to `amqp://user:pass@host:port/vhost` (or `amqps://`), with the query
    /// parameters of [`RabbitConfig`].
    ///
    /// Fails with [`Error::Connection`](event_binder_core::Error::Connection) if the broker
    /// cannot be reached or refuses the credentials (the message says which, and never
    /// holds the password), and with
    /// [`Error::InvalidUrl`](event_binder_core::Error::InvalidUrl) for a URL it cannot read.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(RabbitConfig::new(url)?).await
    }

    /// Like [`connect`](Self::connect), from a parsed URL (what the `event-binder` facade
    /// calls for `amqp://` and `amqps://`).
    pub async fn from_url(url: &ChannelUrl) -> Result<Self> {
        Self::with_config(RabbitConfig::from_url(url)?).await
    }

    /// Connects with a configuration.
    pub async fn with_config(config: RabbitConfig) -> Result<Self> {
        let link = Link::connect(config).await?;
        Ok(RabbitChannel {
            admin: Arc::new(ConfirmPool::new(link.clone(), None)),
            link,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RabbitConfig {
        &self.link.config
    }

    /// Whether the connection is up right now (it is being re-established when not, unless
    /// the channel was closed).
    pub fn is_connected(&self) -> bool {
        matches!(self.link.state(), State::Up(up) if up.is_connected())
    }

    /// The topic exchange of a destination: `{prefix}{destination}`.
    pub fn exchange_name(&self, destination: &str) -> Result<String> {
        Ok(self.names(destination, None)?.exchange)
    }

    /// The durable queue of a group: `{prefix}{destination}.{group}`.
    pub fn queue_name(&self, destination: &str, group: &str) -> Result<String> {
        Ok(self
            .names(destination, Some(group))?
            .queue
            .unwrap_or_default())
    }

    /// The dead-letter queue of a group, `{prefix}{destination}.{group}.dlq`, or of the
    /// anonymous subscriptions of a destination, `{prefix}{destination}..dlq`.
    pub fn dead_letter_queue_name(&self, destination: &str, group: Option<&str>) -> Result<String> {
        Ok(self.names(destination, group)?.dead_letters)
    }

    /// The delay queue where a delivery of a group that is nacked with `delay` waits it
    /// out: `{prefix}{destination}.{group}.delay.{k}`, for the delays of 2^k ms up to
    /// 2^(k+1) ms (exclusive). The delay queues of a dead-letter queue are named after it
    /// the same way: `{dead-letter queue}.delay.{k}`. See the crate documentation.
    pub fn delay_queue_name(
        &self,
        destination: &str,
        group: &str,
        delay: Duration,
    ) -> Result<String> {
        let queue = self.queue_name(destination, group)?;
        Ok(names::delay_queue(
            &queue,
            delay::bucket(delay::delay_millis(delay)),
        ))
    }

    fn names(&self, destination: &str, group: Option<&str>) -> Result<Names> {
        Names::new(&self.link.config.prefix, destination, group)
    }

    fn dead_letters(&self, names: &Names) -> Arc<DeadLetters> {
        Arc::new(DeadLetters {
            pool: self.admin.clone(),
            queue: names.dead_letters.clone(),
            link: self.link.clone(),
        })
    }

    /// A consumer of the dead-letter queue of `subscription`'s destination and group,
    /// holding up to `prefetch` deliveries.
    async fn dead_letter_consumer(
        &self,
        subscription: Subscription,
        prefetch: u16,
    ) -> Result<RabbitConsumer> {
        let (destination, group) = (subscription.destination(), subscription.group_name());
        let names = self.names(destination, group)?;
        let dead_letters = self.dead_letters(&names);
        let source = Source {
            role: Role::DeadLetters,
            prefetch,
            origin: Origin::new(destination, group),
            delays: Some(self.delays(names.dead_letters.clone())),
            names,
            counts_deliveries: self.queue_counts_deliveries(Role::DeadLetters),
        };
        RabbitConsumer::open(self.link.clone(), subscription, source, dead_letters).await
    }

    /// The delay queues of `queue`, for the deliveries of one consumer.
    fn delays(&self, queue: String) -> Arc<DelayQueues> {
        Arc::new(DelayQueues::new(
            self.admin.clone(),
            self.link.clone(),
            queue,
        ))
    }

    /// Whether the queue `role` consumes counts deliveries: a quorum queue does.
    fn queue_counts_deliveries(&self, role: Role) -> bool {
        role.queue_type(self.link.config.queue_type) == QueueType::Quorum
    }

    fn prefetch(&self, subscription: &Subscription) -> u16 {
        self.link
            .config
            .prefetch
            .unwrap_or_else(|| subscription.prefetch_count())
            .max(1)
    }
}

impl fmt::Debug for RabbitChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.link.state() {
            State::Up(up) => format!("connected (generation {})", up.generation),
            State::Down { reason, .. } => format!("reconnecting ({reason})"),
            State::Closed => "closed".to_owned(),
        };
        f.debug_struct("RabbitChannel")
            .field("url", self.link.config.url())
            .field("prefix", &self.link.config.prefix)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Channel for RabbitChannel {
    type Producer = RabbitProducer;
    type Consumer = RabbitConsumer;

    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// No ordering by key (a requeued message goes back ahead of later ones on a classic
    /// queue and behind them on a quorum queue, a consumer holding several deliveries may
    /// settle them in any order, and competing consumers interleave); durable groups; the
    /// configured largest message; delayed redelivery (a group's delivery nacked with a
    /// delay waits in a delay queue, see [`RabbitAcknowledger::nack`](crate::RabbitAcknowledger));
    /// counted deliveries for groups (see [`counts_deliveries`](Self::counts_deliveries)).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .ordering_by_key(false)
            .durable_groups(true)
            .max_message_size(self.link.config.max_message_size)
            .counts_deliveries(true)
            .delayed_redelivery(true)
            // An exchange with no queue bound returns a mandatory publish: `send` fails.
            .keeps_messages_without_groups(false)
    }

    /// True for groups, on both queue types: every retry through a delay queue counts, the
    /// copy carrying the attempt of the delivery handed back (so retries through the broker
    /// are counted, 1, 2, 3, …, up to the retry policy's last attempt). What differs is a
    /// delivery that is not settled (the consumer crashed, its connection went) or is
    /// nacked without a delay: a quorum queue counts each one, while a classic queue only
    /// flags the message as redelivered, so there any number of them in a row counts once
    /// (`attempt` is one more than the delivery before them, never more).
    ///
    /// False for anonymous subscriptions: a nack with a delay holds the message in the
    /// consumer there, and their classic queues do not count.
    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        subscription.group_name().is_some()
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        let names = self.names(destination, group)?;
        let role = if group.is_some() {
            Role::Group
        } else {
            Role::Destination
        };
        let what = format!(
            "provisioning {destination} / {}",
            group.unwrap_or("(no group)")
        );
        self.admin
            .declare(Declaration::Topology(&names, role), &what)
            .await
            .map(drop)
    }

    async fn producer(&self, destination: &str) -> Result<RabbitProducer> {
        let names = self.names(destination, None)?;
        let target = Target::Destination {
            destination: destination.to_owned(),
            exchange: short(&names.exchange),
        };
        let pool = ConfirmPool::new(self.link.clone(), Some(names));
        let producer =
            RabbitProducer::new(destination.to_owned(), target, pool, self.capabilities());
        producer.warm_up().await?;
        Ok(producer)
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<RabbitConsumer> {
        let group = subscription.group_name();
        let names = self.names(subscription.destination(), group)?;
        let dead_letters = self.dead_letters(&names);
        let role = if group.is_some() {
            Role::Group
        } else {
            Role::Anonymous
        };
        let delays = names.queue.clone().map(|queue| self.delays(queue));
        let source = Source {
            role,
            prefetch: self.prefetch(subscription),
            origin: Origin::new(subscription.destination(), group),
            names,
            counts_deliveries: self.queue_counts_deliveries(role),
            delays,
        };
        let consumer = RabbitConsumer::open(
            self.link.clone(),
            subscription.clone(),
            source,
            dead_letters,
        )
        .await?;
        Ok(consumer)
    }

    /// Reads the dead-letter queue like a group. Dead-lettering one of its deliveries puts
    /// it back at the end of the same queue.
    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<RabbitConsumer> {
        let subscription = Subscription::new(destination).optional_group(group.map(str::to_owned));
        let prefetch = self.prefetch(&subscription);
        self.dead_letter_consumer(subscription, prefetch).await
    }

    /// Like [`dead_letters`](Channel::dead_letters), with `prefetch` as the AMQP prefetch,
    /// whatever the URL's `prefetch` says: a redrive holds every dead letter it leaves
    /// until it ends, and with fewer slots it would stop seeing the rest.
    async fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> Result<RabbitConsumer> {
        let subscription = Subscription::new(destination)
            .optional_group(group.map(str::to_owned))
            .prefetch(prefetch);
        let prefetch = subscription.prefetch_count();
        self.dead_letter_consumer(subscription, prefetch).await
    }

    /// Publishes `messages` to the group's queue, `{prefix}{destination}.{group}`, through
    /// the default exchange, so that no other queue bound to the destination's exchange
    /// gets them; persistent and mandatory, returning after the publisher confirms, as a
    /// [`RabbitProducer`] sends. The key travels in the `message-key` header only (the
    /// routing key names the queue). The group is provisioned first, as
    /// [`provision`](Self::provision) does, so that a redrive to a group whose queue is
    /// gone (expired, deleted) still lands. Messages over the size limit are refused
    /// before any is sent.
    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        let names = self.names(destination, Some(group))?;
        let queue = names.queue.clone().unwrap_or_default();
        let outgoing = producer::encode_all(&self.capabilities(), &messages, Some(&queue))?;
        if outgoing.is_empty() {
            return Ok(());
        }
        let what = format!("provisioning {destination} / {group} to send to it");
        self.admin
            .declare(Declaration::Topology(&names, Role::Group), &what)
            .await?;
        self.admin
            .publish(&Target::Queue { name: queue }, outgoing)
            .await
    }

    /// Closes the connection: unacknowledged deliveries go back to their queues, and
    /// producers and consumers fail with
    /// [`Error::ShutDown`](event_binder_core::Error::ShutDown) from then on.
    async fn close(&self) -> Result<()> {
        self.link.close().await;
        Ok(())
    }
}
