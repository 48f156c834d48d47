//! Producers, consumers and acknowledgers of the memory bus.

use crate::bus::{notified_before, Attach, Bus, Destination, Full, SlotRef};
use crate::queue::{InFlight, Recycled, Take, Wakeup};
use event_binder_core::{
    Acknowledger, Consumer, DeadLetterFailed, Delivery, Error, Message, Origin, Producer, Result,
    Subscription,
};
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Sends to one destination of a bus: what [`MemoryChannel::producer`](crate::MemoryChannel)
/// opens.
///
/// ```
/// use event_binder_core::{Channel, Message, Producer};
/// use event_binder_memory::MemoryChannel;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let channel = MemoryChannel::new();
/// let producer = channel.producer("orders").await?;
/// producer.send(Message::new("{}")).await?;
/// # Ok::<(), event_binder_core::Error>(()) }).unwrap();
/// ```
pub struct MemoryProducer {
    /// Keeps the bus (and its `memory://NAME` registration) alive while the producer is.
    bus: Arc<Bus>,
    destination: Arc<Destination>,
}

impl MemoryProducer {
    pub(crate) fn new(bus: Arc<Bus>, destination: Arc<Destination>) -> Self {
        MemoryProducer { bus, destination }
    }
}

impl fmt::Debug for MemoryProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryProducer")
            .field("destination", &self.destination.name)
            .field("bus", &self.bus.name)
            .finish()
    }
}

impl Producer for MemoryProducer {
    fn destination(&self) -> &str {
        &self.destination.name
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.bus.capabilities.check_size(&message)?;
        let full = match send_now(&self.destination, message)? {
            Ok(()) => return Ok(()),
            Err(full) => full,
        };
        send_later(&self.destination, full).await
    }

    /// Checks the size of every message first (nothing is sent if one is too large), then
    /// sends them in order.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        for message in &messages {
            self.bus.capabilities.check_size(message)?;
        }
        for message in messages {
            if let Err(full) = send_now(&self.destination, message)? {
                send_later(&self.destination, full).await?;
            }
        }
        Ok(())
    }
}

/// Enqueues into every subscription queue of the destination if each has room; the inner
/// error hands the message back to wait with [`send_later`]. Not async, so that the usual
/// send completes without building a second future and moving the message into it.
fn send_now(destination: &Destination, message: Message) -> Result<Result<(), Box<Full>>> {
    destination.shared.check_open()?;
    Ok(destination.try_send(message))
}

/// Enqueues `messages` into one group's queue of `destination`, in order, waiting for room
/// as a send does.
pub(crate) async fn send_to_group(
    destination: &Destination,
    group: &str,
    messages: Vec<Message>,
) -> Result<()> {
    for message in messages {
        destination.shared.check_open()?;
        if let Err(full) = destination.try_send_to_group(group, message) {
            Box::pin(wait_for_room(destination, full, |m| {
                destination.try_send_to_group(group, m)
            }))
            .await?;
        }
    }
    Ok(())
}

/// Waits for room in the full queue, then enqueues.
///
/// Boxed: the waiting state (a timer among it) would otherwise make every send's future
/// large, waiting or not.
async fn send_later(destination: &Destination, full: Box<Full>) -> Result<()> {
    Box::pin(wait_for_room(destination, full, |m| {
        destination.try_send(m)
    }))
    .await
}

/// Retries `attempt` each time a queue of the destination gets room, until it succeeds, the
/// send timeout passes, or the bus closes.
async fn wait_for_room(
    destination: &Destination,
    mut full: Box<Full>,
    mut attempt: impl FnMut(Message) -> Result<(), Box<Full>> + Send,
) -> Result<()> {
    let config = &destination.shared.config;
    let timeout = config.send_timeout;
    let deadline = Instant::now().checked_add(timeout);
    tracing::debug!(
        destination = %destination.name,
        queue = %full.queue,
        capacity = config.capacity,
        "memory: queue full, waiting for room"
    );
    loop {
        // Registered before looking, so room made in between is not missed.
        let mut notified = pin!(destination.space.notified());
        notified.as_mut().enable();
        destination.shared.check_open()?;
        match attempt(full.message) {
            Ok(()) => return Ok(()),
            Err(again) => full = again,
        }
        let woken = notified_before(notified.as_mut(), deadline).await;
        if !woken {
            return Err(Error::Timeout {
                what: format!(
                    "memory: sending to destination {} ({} is full at capacity {}; is its consumer running?)",
                    destination.name, full.queue, config.capacity
                ),
                after: timeout,
            });
        }
    }
}

/// Reads one queue: a group's, an anonymous subscription's, or a dead-letter queue. What
/// [`MemoryChannel::consumer`](crate::MemoryChannel) and `dead_letters` open.
///
/// ```
/// use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
/// use event_binder_memory::MemoryChannel;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let channel = MemoryChannel::new();
/// let mut consumer = channel.consumer(&Subscription::new("orders").group("billing")).await?;
/// channel.producer("orders").await?.send(Message::new("{}")).await?;
/// let delivery = consumer.try_receive().expect("published already")?;
/// delivery.ack().await?;
/// # Ok::<(), event_binder_core::Error>(()) }).unwrap();
/// ```
pub struct MemoryConsumer {
    /// Keeps the bus (and its `memory://NAME` registration) alive while the consumer is.
    bus: Arc<Bus>,
    destination: Arc<Destination>,
    slot: SlotRef,
    wakeup: Arc<Wakeup>,
    /// The messages of the latest deliveries, whose allocations later ones reuse.
    recycled: Recycled,
    origin: Arc<Origin>,
    subscription: Subscription,
    dead_letters: bool,
}

impl MemoryConsumer {
    /// Attaches a consumer to a subscription's queue (`dead_letters`: to its dead-letter
    /// queue instead). Names must have been validated.
    pub(crate) fn open(bus: Arc<Bus>, subscription: Subscription, dead_letters: bool) -> Self {
        let destination = bus.destination(subscription.destination());
        let group = subscription.group_name();
        let attach = match (dead_letters, group) {
            (true, group) => Attach::DeadLetters(group),
            (false, Some(group)) => Attach::Group(group),
            (false, None) => Attach::Anonymous,
        };
        let (slot, wakeup) = destination.attach(attach);
        MemoryConsumer {
            origin: Origin::new(subscription.destination(), group),
            bus,
            destination,
            slot,
            wakeup,
            recycled: Recycled::new(usize::from(subscription.prefetch_count())),
            subscription,
            dead_letters,
        }
    }

    fn deliver(&self, in_flight: InFlight) -> Delivery<MemoryAcknowledger> {
        Delivery::new(
            Arc::clone(&in_flight.message),
            in_flight.deliveries,
            Arc::clone(&self.origin),
            MemoryAcknowledger {
                destination: Arc::clone(&self.destination),
                slot: self.slot,
                in_flight: Some(in_flight),
            },
        )
    }
}

impl fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("destination", &self.subscription.destination())
            .field("group", &self.subscription.group_name())
            .field("dead_letters", &self.dead_letters)
            .field("bus", &self.bus.name)
            .finish()
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.destination.detach(self.slot);
    }
}

impl Consumer for MemoryConsumer {
    type Acknowledger = MemoryAcknowledger;

    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    fn try_receive(&mut self) -> Option<Result<Delivery<MemoryAcknowledger>>> {
        match self.destination.take(self.slot, &mut self.recycled) {
            Ok(Take::Ready(in_flight)) => Some(Ok(self.deliver(in_flight))),
            Ok(Take::Wait(_)) => None,
            Err(error) => Some(Err(error)),
        }
    }

    /// Exact: the messages of this consumer's queue (its group's, its anonymous
    /// subscription's or its dead-letter queue) waiting, delayed and in flight.
    async fn backlog(&mut self) -> Result<Option<u64>> {
        let waiting = self.destination.backlog(self.slot)?;
        Ok(Some(u64::try_from(waiting).unwrap_or(u64::MAX)))
    }

    /// Cancel safe: a message leaves its queue only in the synchronous step that returns it.
    async fn receive(&mut self) -> Result<Delivery<MemoryAcknowledger>> {
        // Fast path: a message is there, no need to register as a waiter.
        if let Take::Ready(in_flight) = self.destination.take(self.slot, &mut self.recycled)? {
            return Ok(self.deliver(in_flight));
        }
        let wakeup = &self.wakeup;
        let _sleeping = wakeup.sleeping();
        loop {
            // Registered before looking, so a message arriving in between wakes us.
            let mut notified = pin!(wakeup.notify.notified());
            notified.as_mut().enable();
            // Bound here, so that the take's result is not kept across the awaits below, in
            // the future.
            let due = match self.destination.take(self.slot, &mut self.recycled)? {
                Take::Ready(in_flight) => return Ok(self.deliver(in_flight)),
                Take::Wait(due) => due,
            };
            match due {
                // A delayed message is due then: look again at that instant at the latest.
                // Boxed, as delays are rare: the timer would otherwise make every receive's
                // future large.
                Some(due) => {
                    let _ = Box::pin(tokio::time::timeout_at(due, notified)).await;
                }
                None => notified.await,
            }
        }
    }
}

/// Settles one delivery of a [`MemoryConsumer`]. Dropped unsettled, it returns the message
/// to the front of its queue, as a nack without delay would.
pub struct MemoryAcknowledger {
    destination: Arc<Destination>,
    slot: SlotRef,
    /// `None` once settled.
    in_flight: Option<InFlight>,
}

impl fmt::Debug for MemoryAcknowledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcknowledger")
            .field("destination", &self.destination.name)
            .field("id", &self.in_flight.as_ref().map(|m| m.message.id()))
            .field("settled", &self.in_flight.is_none())
            .finish()
    }
}

/// How far ahead "a delay too long to represent" is put: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

impl Acknowledger for MemoryAcknowledger {
    /// Acknowledging never waits here.
    fn try_ack(&mut self) -> Option<Result<()>> {
        if let Some(in_flight) = self.in_flight.take() {
            self.destination.ack(self.slot, in_flight.message.key());
        }
        Some(Ok(()))
    }

    async fn ack(mut self) -> Result<()> {
        self.try_ack().unwrap_or(Ok(()))
    }

    async fn nack(mut self, delay: Option<Duration>) -> Result<()> {
        if let Some(in_flight) = self.in_flight.take() {
            let not_before = delay.map(|delay| {
                let now = Instant::now();
                now.checked_add(delay)
                    .or_else(|| now.checked_add(FAR_FUTURE))
                    .unwrap_or(now)
            });
            self.destination.requeue(self.slot, in_flight, not_before);
        }
        Ok(())
    }

    async fn dead_letter(mut self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        let result = {
            let Some(in_flight) = self.in_flight.as_ref() else {
                return Ok(());
            };
            let (destination, slot, key) = (&self.destination, self.slot, in_flight.message.key());
            match destination.try_dead_letter(slot, key, dead_letter) {
                Ok(()) => Ok(()),
                Err(full) => {
                    wait_for_room(destination, full, |m| {
                        destination.try_dead_letter(slot, key, m)
                    })
                    .await
                }
            }
        };
        match result {
            Ok(()) => {
                self.in_flight = None;
                Ok(())
            }
            // Still in flight: the original stays unsettled.
            Err(error) => Err(DeadLetterFailed::new(error, self)),
        }
    }
}

impl Drop for MemoryAcknowledger {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            self.destination.requeue(self.slot, in_flight, None);
        }
    }
}
