//! The three traits every backend implements: [`Channel`], [`Producer`] and [`Consumer`].

use crate::delivery::{Acknowledger, Delivery};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::redrive::{RedriveOptions, Take};
use std::fmt::Debug;
use std::future::Future;

/// What a backend can do; the conformance suite checks exactly what is claimed here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages with the same key are delivered in the order they were sent.
    pub ordering_by_key: bool,
    /// A group keeps the messages published while none of its consumers runs.
    pub durable_groups: bool,
    /// The largest message accepted, as counted by [`Message::encoded_len`]; `None` for no limit.
    pub max_message_size: Option<usize>,
    /// A delivery's [`attempt`](crate::Delivery::attempt) counts every delivery of its
    /// message (1, 2, 3, …), not only "redelivered or not"; retries through the broker
    /// ([`RetryPolicy::through_broker`](crate::RetryPolicy::through_broker)) need it.
    pub counts_deliveries: bool,
    /// A nack with a delay hands the message back: it is delivered again after the delay,
    /// and meanwhile the consumer holds nothing for it, so other messages keep coming
    /// (without this, the delay is waited out holding one of the consumer's prefetch
    /// slots). Retries through the broker need it.
    pub delayed_redelivery: bool,
    /// A message published while its destination has no group and no subscription is kept
    /// for the groups that join later (Kafka: the topic holds it, and a new group starts at
    /// the earliest offset). Without this it reaches nobody: accepted and dropped, or
    /// refused with an error (RabbitMQ's mandatory publish); provision the groups
    /// ([`Channel::provision`]) before publishing where it matters.
    pub keeps_messages_without_groups: bool,
}

impl Capabilities {
    /// A backend with none of the capabilities and no size limit; set what it has.
    ///
    /// ```
    /// use event_binder_core::Capabilities;
    ///
    /// let caps = Capabilities::new().ordering_by_key(true).max_message_size(1024);
    /// assert!(caps.ordering_by_key && !caps.durable_groups);
    /// ```
    pub fn new() -> Self {
        Capabilities {
            ordering_by_key: false,
            durable_groups: false,
            max_message_size: None,
            counts_deliveries: false,
            delayed_redelivery: false,
            keeps_messages_without_groups: false,
        }
    }

    /// Declares ordering by key.
    pub fn ordering_by_key(mut self, yes: bool) -> Self {
        self.ordering_by_key = yes;
        self
    }

    /// Declares durable groups.
    pub fn durable_groups(mut self, yes: bool) -> Self {
        self.durable_groups = yes;
        self
    }

    /// Declares that deliveries are counted.
    pub fn counts_deliveries(mut self, yes: bool) -> Self {
        self.counts_deliveries = yes;
        self
    }

    /// Declares delayed redelivery.
    pub fn delayed_redelivery(mut self, yes: bool) -> Self {
        self.delayed_redelivery = yes;
        self
    }

    /// Declares that messages published before any group exists are kept for later groups.
    pub fn keeps_messages_without_groups(mut self, yes: bool) -> Self {
        self.keeps_messages_without_groups = yes;
        self
    }

    /// Declares the largest message accepted.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Refuses a message larger than [`max_message_size`](Self::max_message_size) with
    /// [`Error::PayloadTooLarge`], before it reaches the broker.
    pub fn check_size(&self, message: &Message) -> Result<()> {
        match self.max_message_size {
            Some(limit) if message.encoded_len() > limit => Err(Error::PayloadTooLarge {
                actual: message.encoded_len(),
                limit,
            }),
            _ => Ok(()),
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}

/// What a consumer reads: a destination, and the group it joins (none for an anonymous,
/// non-durable subscription that sees only what is published after it starts).
///
/// ```
/// use event_binder_core::Subscription;
///
/// let subscription = Subscription::new("orders").group("billing").prefetch(32);
/// assert_eq!(subscription.destination(), "orders");
/// assert_eq!(subscription.group_name(), Some("billing"));
/// assert_eq!(subscription.prefetch_count(), 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    destination: String,
    group: Option<String>,
    prefetch: u16,
}

impl Subscription {
    /// The default number of deliveries a consumer may hold unacknowledged.
    pub const DEFAULT_PREFETCH: u16 = 16;

    /// An anonymous subscription to a destination; add a group with [`group`](Self::group).
    pub fn new(destination: impl Into<String>) -> Self {
        Subscription {
            destination: destination.into(),
            group: None,
            prefetch: Self::DEFAULT_PREFETCH,
        }
    }

    /// Joins a group: durable, every group gets every message, members share the work.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Joins a group, or stays anonymous with `None`.
    pub fn optional_group(mut self, group: Option<String>) -> Self {
        self.group = group;
        self
    }

    /// How many deliveries the broker may hand over before they are acknowledged
    /// (AMQP prefetch, SQS batch size); at least 1.
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = count.max(1);
        self
    }

    /// The destination.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The group, if any.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The prefetch count.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch
    }

    /// Validates the destination and group names.
    pub fn validate(&self) -> Result<()> {
        crate::validate_destination(&self.destination)?;
        if let Some(group) = &self.group {
            crate::validate_group(group)?;
        }
        Ok(())
    }
}

/// One connection to one broker: provisions destinations and groups and opens producers
/// and consumers.
///
/// Its producers, consumers and their deliveries are associated types, so the runtime's
/// calls on them are direct calls, with no boxed future per delivery. Where a backend is
/// chosen at run time, [`BoxChannel`](crate::BoxChannel) erases the types (and the facade's
/// `AnyChannel` matches on the backends compiled in).
///
/// Names given to a channel are logical names (see [`validate_destination`](crate::validate_destination));
/// each backend maps them to physical names by a documented rule.
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
///
/// let mut consumer = channel.consumer(&Subscription::new("orders").group("billing")).await?;
/// channel.producer("orders").await?.send(Message::new("{}")).await?;
/// let delivery = consumer.receive().await?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
pub trait Channel: Send + Sync + Debug + 'static {
    /// What [`producer`](Self::producer) opens.
    type Producer: Producer;
    /// What [`consumer`](Self::consumer) and [`dead_letters`](Self::dead_letters) open.
    type Consumer: Consumer;

    /// The backend's name: `memory`, `rabbitmq`, `kafka`, `sns-sqs`.
    fn backend(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Whether messages of one key sent to `destination` are delivered in the order sent:
    /// [`Capabilities::ordering_by_key`] unless the backend orders some destinations only
    /// (SNS+SQS orders its FIFO destinations). The runtime keeps this order through
    /// concurrent handlers.
    fn orders_by_key(&self, destination: &str) -> bool {
        let _ = destination;
        self.capabilities().ordering_by_key
    }

    /// Whether the deliveries of `subscription` count every delivery of their message
    /// ([`Capabilities::counts_deliveries`] unless the backend counts for some
    /// subscriptions only: RabbitMQ counts for groups, not for anonymous subscriptions).
    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        let _ = subscription;
        self.capabilities().counts_deliveries
    }

    /// Creates the destination and, if given, the group (idempotent). Consumers and
    /// producers provision what they need themselves; call this to create a durable group
    /// before its first consumer runs, so it keeps what is published meanwhile.
    fn provision(
        &self,
        destination: &str,
        group: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Opens a producer for a destination, provisioning the destination.
    fn producer(&self, destination: &str) -> impl Future<Output = Result<Self::Producer>> + Send;

    /// Opens a consumer, provisioning the destination and group. The subscription is
    /// active when this returns: an anonymous one sees everything published from then on.
    fn consumer(
        &self,
        subscription: &Subscription,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;

    /// Opens a consumer on the dead letters of a destination and group (the anonymous
    /// subscriptions' share one place per destination).
    fn dead_letters(
        &self,
        destination: &str,
        group: Option<&str>,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;

    /// Like [`dead_letters`](Self::dead_letters), a consumer that may hold up to `prefetch`
    /// deliveries unsettled: a redrive lists what it does not take before it settles any.
    /// Backends whose consumers hold any number use `dead_letters`.
    fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send {
        let _ = prefetch;
        self.dead_letters(destination, group)
    }

    /// Sends `messages` to one `group` of `destination` only: its other groups and its
    /// anonymous subscriptions never see them. They keep their ids, keys and headers. This
    /// is how a [`redrive`](Self::redrive) takes a dead letter back to the group that
    /// failed it, and to no other.
    fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Moves the dead letters of `destination` and `group` back to that group (only), as
    /// [`RedriveOptions`] select them, each with its id, key and headers, less the
    /// dead-letter headers, plus [`header::REDRIVE_COUNT`](crate::header::REDRIVE_COUNT);
    /// or, as a dry run, lists them and moves nothing. Returns what it moved (or listed).
    /// Each dead letter is removed once its copy is sent: a crash between the two sends it
    /// again, and the handler's idempotency sees the same id. A dead letter that comes
    /// back to the dead letters during the redrive (its handler failed again) ends it:
    /// nothing goes around twice in one call.
    ///
    /// ```
    /// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
    /// use event_binder_core::{Channel, RedriveOptions};
    ///
    /// let waiting = channel.redrive("orders", "billing", &RedriveOptions::new().dry_run()).await?;
    /// println!("{} dead letters wait", waiting.len());
    /// let moved = channel.redrive("orders", "billing", &RedriveOptions::new().limit(100)).await?;
    /// # Ok(()) }
    /// ```
    fn redrive(
        &self,
        destination: &str,
        group: &str,
        options: &RedriveOptions,
    ) -> impl Future<Output = Result<Vec<Message>>> + Send {
        crate::redrive::take_dead_letters(self, destination, Some(group), options, Take::Redrive)
    }

    /// Deletes the dead letters of `destination` and `group` (`None`: the anonymous
    /// subscriptions') that [`RedriveOptions`] select; a dry run lists them instead.
    /// Returns what it deleted (or listed).
    fn purge_dead_letters(
        &self,
        destination: &str,
        group: Option<&str>,
        options: &RedriveOptions,
    ) -> impl Future<Output = Result<Vec<Message>>> + Send {
        crate::redrive::take_dead_letters(self, destination, group, options, Take::Purge)
    }

    /// Closes the connection; producers and consumers opened from it stop working.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;
}

impl<C: Channel> Channel for std::sync::Arc<C> {
    type Producer = C::Producer;
    type Consumer = C::Consumer;

    fn backend(&self) -> &'static str {
        (**self).backend()
    }

    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    fn orders_by_key(&self, destination: &str) -> bool {
        (**self).orders_by_key(destination)
    }

    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        (**self).counts_deliveries(subscription)
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        (**self).provision(destination, group).await
    }

    async fn producer(&self, destination: &str) -> Result<Self::Producer> {
        (**self).producer(destination).await
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<Self::Consumer> {
        (**self).consumer(subscription).await
    }

    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<Self::Consumer> {
        (**self).dead_letters(destination, group).await
    }

    async fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> Result<Self::Consumer> {
        (**self)
            .dead_letters_holding(destination, group, prefetch)
            .await
    }

    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        (**self).send_to_group(destination, group, messages).await
    }

    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

/// Sends messages to one destination.
pub trait Producer: Send + Sync + Debug + 'static {
    /// The destination this producer sends to.
    fn destination(&self) -> &str;

    /// Sends one message; returns once the broker has accepted it durably (publisher
    /// confirm, acks=all, SNS Publish response). A refused message is an error, never a
    /// silent loss; an oversized one is refused before it reaches the broker.
    fn send(&self, message: Message) -> impl Future<Output = Result<()>> + Send;

    /// Sends several messages; returns once the broker has accepted all of them. On an
    /// error, the messages before the failing one may have been sent.
    fn send_batch(&self, messages: Vec<Message>) -> impl Future<Output = Result<()>> + Send {
        async move {
            for message in messages {
                self.send(message).await?;
            }
            Ok(())
        }
    }
}

/// Yields deliveries for one subscription.
pub trait Consumer: Send + Debug + 'static {
    /// How this consumer's deliveries are settled.
    type Acknowledger: Acknowledger;

    /// The subscription this consumer reads.
    fn subscription(&self) -> &Subscription;

    /// Waits for the next delivery. Cancel safe: a `receive` future dropped before it
    /// completes loses no message. Fails with [`Error::ShutDown`] once the channel is closed.
    fn receive(&mut self) -> impl Future<Output = Result<Delivery<Self::Acknowledger>>> + Send;

    /// The next delivery if one is there now, with no waiting: the fast path the runtime
    /// takes before [`receive`](Self::receive), with no future to make. `None` when nothing
    /// is ready, or when the backend has no such path (the default).
    fn try_receive(&mut self) -> Option<Result<Delivery<Self::Acknowledger>>> {
        None
    }

    /// How many messages this consumer's queue holds that are not settled yet: waiting
    /// to be handed out, waiting out a redelivery delay, or handed to a consumer of the
    /// subscription and not yet acked or nacked, as far as the broker reports them. `Ok(None)`
    /// when the backend cannot tell (the default). Each backend says what it counts.
    ///
    /// Once everything received has been settled, a backlog of 0 means nothing more is on
    /// its way: what tests wait on instead of watching a quiet period, and a group's lag
    /// for an operator.
    ///
    /// ```
    /// # async fn demo(mut consumer: impl event_binder_core::Consumer) -> event_binder_core::Result<()> {
    /// if let Some(waiting) = consumer.backlog().await? {
    ///     println!("{waiting} messages still to handle");
    /// }
    /// # Ok(()) }
    /// ```
    fn backlog(&mut self) -> impl Future<Output = Result<Option<u64>>> + Send {
        async { Ok(None) }
    }
}
