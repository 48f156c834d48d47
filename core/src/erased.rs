//! The backend traits with their types erased: for a backend chosen at run time, or a value
//! that must be nameable without the backend's type ([`Publisher`](crate::Publisher)). Each
//! call through them boxes its future; the runtime's own path needs none of them.

use crate::channel::{Capabilities, Channel, Consumer, Producer, Subscription};
use crate::delivery::{Acknowledger, DeadLetterFailed, Delivery};
use crate::error::Result;
use crate::message::Message;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A future boxed to erase its type.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any [`Channel`], its type erased: it opens [`BoxProducer`]s and [`BoxConsumer`]s. Cheap to
/// clone (the clones share the connection).
///
/// ```
/// use event_binder_core::{BoxChannel, Channel};
///
/// fn erase(channel: impl Channel) -> BoxChannel {
///     BoxChannel::new(channel)
/// }
/// ```
#[derive(Clone)]
pub struct BoxChannel(Arc<dyn ErasedChannel>);

impl BoxChannel {
    /// Erases `channel`'s type.
    pub fn new(channel: impl Channel) -> Self {
        BoxChannel(Arc::new(channel))
    }
}

impl fmt::Debug for BoxChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Channel for BoxChannel {
    type Producer = BoxProducer;
    type Consumer = BoxConsumer;

    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    fn orders_by_key(&self, destination: &str) -> bool {
        self.0.orders_by_key(destination)
    }

    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        self.0.counts_deliveries(subscription)
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        self.0.provision(destination, group).await
    }

    async fn producer(&self, destination: &str) -> Result<BoxProducer> {
        self.0.producer(destination).await
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<BoxConsumer> {
        self.0.consumer(subscription).await
    }

    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<BoxConsumer> {
        self.0.dead_letters(destination, group).await
    }

    async fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> Result<BoxConsumer> {
        self.0
            .dead_letters_holding(destination, group, prefetch)
            .await
    }

    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        self.0.send_to_group(destination, group, messages).await
    }

    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

/// [`Channel`] made object safe.
trait ErasedChannel: Send + Sync + fmt::Debug {
    fn backend(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    fn orders_by_key(&self, destination: &str) -> bool;
    fn counts_deliveries(&self, subscription: &Subscription) -> bool;
    fn provision<'a>(
        &'a self,
        destination: &'a str,
        group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>>;
    fn producer<'a>(&'a self, destination: &'a str) -> BoxFuture<'a, Result<BoxProducer>>;
    fn consumer<'a>(&'a self, subscription: &'a Subscription)
        -> BoxFuture<'a, Result<BoxConsumer>>;
    fn dead_letters<'a>(
        &'a self,
        destination: &'a str,
        group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxConsumer>>;
    fn dead_letters_holding<'a>(
        &'a self,
        destination: &'a str,
        group: Option<&'a str>,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<BoxConsumer>>;
    fn send_to_group<'a>(
        &'a self,
        destination: &'a str,
        group: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<()>>;
    fn close(&self) -> BoxFuture<'_, Result<()>>;
}

impl<C: Channel> ErasedChannel for C {
    fn backend(&self) -> &'static str {
        Channel::backend(self)
    }

    fn capabilities(&self) -> Capabilities {
        Channel::capabilities(self)
    }

    fn orders_by_key(&self, destination: &str) -> bool {
        Channel::orders_by_key(self, destination)
    }

    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        Channel::counts_deliveries(self, subscription)
    }

    fn provision<'a>(
        &'a self,
        destination: &'a str,
        group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Channel::provision(self, destination, group))
    }

    fn producer<'a>(&'a self, destination: &'a str) -> BoxFuture<'a, Result<BoxProducer>> {
        Box::pin(async move {
            Channel::producer(self, destination)
                .await
                .map(BoxProducer::new)
        })
    }

    fn consumer<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<BoxConsumer>> {
        Box::pin(async move {
            Channel::consumer(self, subscription)
                .await
                .map(BoxConsumer::new)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        destination: &'a str,
        group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxConsumer>> {
        Box::pin(async move {
            Channel::dead_letters(self, destination, group)
                .await
                .map(BoxConsumer::new)
        })
    }

    fn dead_letters_holding<'a>(
        &'a self,
        destination: &'a str,
        group: Option<&'a str>,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<BoxConsumer>> {
        Box::pin(async move {
            Channel::dead_letters_holding(self, destination, group, prefetch)
                .await
                .map(BoxConsumer::new)
        })
    }

    fn send_to_group<'a>(
        &'a self,
        destination: &'a str,
        group: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Channel::send_to_group(self, destination, group, messages))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Channel::close(self))
    }
}

/// Any [`Producer`], its type erased. Cheap to clone (the clones share the producer).
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{BoxProducer, Channel, Message, Producer};
///
/// let producer = BoxProducer::new(channel.producer("orders").await?);
/// producer.send(Message::new("{}")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoxProducer(Arc<dyn ErasedProducer>);

impl BoxProducer {
    /// Erases `producer`'s type.
    pub fn new(producer: impl Producer) -> Self {
        BoxProducer(Arc::new(producer))
    }
}

impl fmt::Debug for BoxProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Producer for BoxProducer {
    fn destination(&self) -> &str {
        self.0.destination()
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.0.send(message).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.0.send_batch(messages).await
    }
}

/// [`Producer`] made object safe.
trait ErasedProducer: Send + Sync + fmt::Debug {
    fn destination(&self) -> &str;
    fn send(&self, message: Message) -> BoxFuture<'_, Result<()>>;
    fn send_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<()>>;
}

impl<P: Producer> ErasedProducer for P {
    fn destination(&self) -> &str {
        Producer::destination(self)
    }

    fn send(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(Producer::send(self, message))
    }

    fn send_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<()>> {
        Box::pin(Producer::send_batch(self, messages))
    }
}

/// Any [`Consumer`], its type erased: it yields deliveries settled through a
/// [`BoxAcknowledger`].
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{BoxConsumer, Channel, Consumer, Subscription};
///
/// let mut consumer = BoxConsumer::new(channel.consumer(&Subscription::new("orders")).await?);
/// let delivery = consumer.receive().await?;
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
pub struct BoxConsumer(Box<dyn ErasedConsumer>);

impl BoxConsumer {
    /// Erases `consumer`'s type.
    pub fn new(consumer: impl Consumer) -> Self {
        BoxConsumer(Box::new(consumer))
    }
}

impl fmt::Debug for BoxConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Consumer for BoxConsumer {
    type Acknowledger = BoxAcknowledger;

    fn subscription(&self) -> &Subscription {
        self.0.subscription()
    }

    async fn receive(&mut self) -> Result<Delivery> {
        self.0.receive().await
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        self.0.try_receive()
    }

    async fn backlog(&mut self) -> Result<Option<u64>> {
        self.0.backlog().await
    }
}

/// [`Consumer`] made object safe.
trait ErasedConsumer: Send + fmt::Debug {
    fn subscription(&self) -> &Subscription;
    fn receive(&mut self) -> BoxFuture<'_, Result<Delivery>>;
    fn try_receive(&mut self) -> Option<Result<Delivery>>;
    fn backlog(&mut self) -> BoxFuture<'_, Result<Option<u64>>>;
}

impl<C: Consumer> ErasedConsumer for C {
    fn subscription(&self) -> &Subscription {
        Consumer::subscription(self)
    }

    fn receive(&mut self) -> BoxFuture<'_, Result<Delivery>> {
        Box::pin(async move { Consumer::receive(self).await.map(Delivery::erase) })
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        Consumer::try_receive(self).map(|received| received.map(Delivery::erase))
    }

    fn backlog(&mut self) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(Consumer::backlog(self))
    }
}

/// Any [`Acknowledger`], its type erased: what a [`Delivery`] of a [`BoxConsumer`] is
/// settled through.
///
/// ```
/// use event_binder_core::{Acknowledger, BoxAcknowledger, Delivery};
///
/// fn erase<A: Acknowledger>(delivery: Delivery<A>) -> Delivery<BoxAcknowledger> {
///     delivery.erase()
/// }
/// ```
pub struct BoxAcknowledger(Box<dyn ErasedAcknowledger>);

impl BoxAcknowledger {
    /// Erases `acknowledger`'s type.
    pub fn new(acknowledger: impl Acknowledger) -> Self {
        BoxAcknowledger(Box::new(acknowledger))
    }
}

impl fmt::Debug for BoxAcknowledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Acknowledger for BoxAcknowledger {
    async fn ack(self) -> Result<()> {
        self.0.ack().await
    }

    async fn nack(self, delay: Option<Duration>) -> Result<()> {
        self.0.nack(delay).await
    }

    async fn dead_letter(self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        self.0.dead_letter(dead_letter).await
    }

    fn try_ack(&mut self) -> Option<Result<()>> {
        self.0.try_ack()
    }
}

/// [`Acknowledger`] made object safe.
trait ErasedAcknowledger: Send + Sync + fmt::Debug {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    fn nack(self: Box<Self>, delay: Option<Duration>) -> BoxFuture<'static, Result<()>>;
    fn dead_letter(
        self: Box<Self>,
        dead_letter: Message,
    ) -> BoxFuture<'static, Result<(), DeadLetterFailed<BoxAcknowledger>>>;
    fn try_ack(&mut self) -> Option<Result<()>>;
}

impl<A: Acknowledger> ErasedAcknowledger for A {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(Acknowledger::ack(*self))
    }

    fn nack(self: Box<Self>, delay: Option<Duration>) -> BoxFuture<'static, Result<()>> {
        Box::pin(Acknowledger::nack(*self, delay))
    }

    fn dead_letter(
        self: Box<Self>,
        dead_letter: Message,
    ) -> BoxFuture<'static, Result<(), DeadLetterFailed<BoxAcknowledger>>> {
        Box::pin(async move {
            Acknowledger::dead_letter(*self, dead_letter)
                .await
                .map_err(|failed| {
                    DeadLetterFailed::new(failed.error, BoxAcknowledger::new(failed.unsettled))
                })
        })
    }

    fn try_ack(&mut self) -> Option<Result<()>> {
        Acknowledger::try_ack(self)
    }
}
