//! Producers, consumers and acknowledgers of the memory bus.

use crate::bus::{notified_before, Attach, Bus, Destination, Full, SlotRef};
use crate::queue::{Entry, Take};
use async_trait::async_trait;
use event_binder_core::{
    Acknowledger, Consumer, DeadLetterFailed, Delivery, Error, Message, Origin, Producer, Result,
    Subscription,
};
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Sends to one destination of a bus.
pub(crate) struct MemoryProducer {
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

#[async_trait]
impl Producer for MemoryProducer {
    fn destination(&self) -> &str {
        &self.destination.name
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.bus.capabilities.check_size(&message)?;
        send(&self.destination, message).await
    }

    /// Checks the size of every message first (nothing is sent if one is too large), then
    /// sends them in order.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        for message in &messages {
            self.bus.capabilities.check_size(message)?;
        }
        for message in messages {
            send(&self.destination, message).await?;
        }
        Ok(())
    }
}

/// Enqueues into every subscription queue of the destination, waiting for room if one is full.
async fn send(destination: &Destination, message: Message) -> Result<()> {
    destination.shared.check_open()?;
    match destination.try_send(message) {
        Ok(()) => Ok(()),
        Err(full) => wait_for_room(destination, full, |m| destination.try_send(m)).await,
    }
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

/// Reads one queue: a group's, an anonymous subscription's, or a dead-letter queue.
pub(crate) struct MemoryConsumer {
    /// Keeps the bus (and its `memory://NAME` registration) alive while the consumer is.
    bus: Arc<Bus>,
    destination: Arc<Destination>,
    slot: SlotRef,
    notify: Arc<Notify>,
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
        let (slot, notify) = destination.attach(attach);
        MemoryConsumer {
            origin: Origin::new(subscription.destination(), group),
            bus,
            destination,
            slot,
            notify,
            subscription,
            dead_letters,
        }
    }

    fn deliver(&self, entry: Entry) -> Delivery {
        Delivery::new(
            Arc::clone(&entry.message),
            entry.deliveries,
            Arc::clone(&self.origin),
            Box::new(MemoryAcknowledger {
                destination: Arc::clone(&self.destination),
                slot: self.slot,
                entry: Some(entry),
            }),
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

#[async_trait]
impl Consumer for MemoryConsumer {
    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Cancel safe: a message leaves its queue only in the synchronous step that returns it.
    async fn receive(&mut self) -> Result<Delivery> {
        // Fast path: a message is there, no need to register as a waiter.
        if let Take::Ready(entry) = self.destination.take(self.slot)? {
            return Ok(self.deliver(entry));
        }
        let notify = Arc::clone(&self.notify);
        loop {
            // Registered before looking, so a message arriving in between wakes us.
            let mut notified = pin!(notify.notified());
            notified.as_mut().enable();
            match self.destination.take(self.slot)? {
                Take::Ready(entry) => return Ok(self.deliver(entry)),
                // A delayed message is due then: look again at that instant at the latest.
                Take::Wait(Some(due)) => {
                    let _ = tokio::time::timeout_at(due, notified).await;
                }
                Take::Wait(None) => notified.await,
            }
        }
    }
}

/// Settles one delivery. Dropped unsettled, it returns the message to the front of its
/// queue, as a nack without delay would.
struct MemoryAcknowledger {
    destination: Arc<Destination>,
    slot: SlotRef,
    /// `None` once settled.
    entry: Option<Entry>,
}

impl fmt::Debug for MemoryAcknowledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcknowledger")
            .field("destination", &self.destination.name)
            .field("id", &self.entry.as_ref().map(|e| e.message.id()))
            .field("settled", &self.entry.is_none())
            .finish()
    }
}

/// How far ahead "a delay too long to represent" is put: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[async_trait]
impl Acknowledger for MemoryAcknowledger {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        if let Some(entry) = self.entry.take() {
            self.destination.ack(self.slot, entry.message.key());
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<()> {
        if let Some(entry) = self.entry.take() {
            let not_before = delay.map(|delay| {
                let now = Instant::now();
                now.checked_add(delay)
                    .or_else(|| now.checked_add(FAR_FUTURE))
                    .unwrap_or(now)
            });
            self.destination.requeue(self.slot, entry, not_before);
        }
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        dead_letter: Message,
    ) -> Result<(), DeadLetterFailed> {
        let result = {
            let Some(entry) = self.entry.as_ref() else {
                return Ok(());
            };
            let (destination, slot, key) = (&self.destination, self.slot, entry.message.key());
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
                self.entry = None;
                Ok(())
            }
            // The entry is still here: the original stays unsettled.
            Err(error) => Err(DeadLetterFailed::new(error, self)),
        }
    }
}

impl Drop for MemoryAcknowledger {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.destination.requeue(self.slot, entry, None);
        }
    }
}
