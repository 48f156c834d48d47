//! Faults for a backend without a connection: what the [`proxy`](super::proxy) does to a
//! TCP connection (cuts, delays, blackholes), done to a channel's calls instead. It is how
//! the in-memory backend, whose broker is the process, is put through the same faults as
//! the others; it works in front of any channel.

use super::switch::{FaultSwitch, Faults};
use crate::channel::{Capabilities, Channel, Consumer, Producer, Subscription};
use crate::delivery::{Acknowledger, DeadLetterFailed, Delivery};
use crate::error::{Error, Result};
use crate::message::Message;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Waits until the faults on now let a call through (a blackhole lifted, then the delay);
/// returns the cuts made so far.
async fn pass(faults: &watch::Receiver<Faults>) -> u64 {
    let mut watching = faults.clone();
    let lifted = watching
        .wait_for(|faults| !faults.blackhole)
        .await
        .map(|now| *now);
    // An error: the switch is gone, and no fault will be made or lifted any more.
    let Ok(now) = lifted else {
        return faults.borrow().cuts;
    };
    if !now.delay.is_zero() {
        tokio::time::sleep(now.delay).await;
    }
    now.cuts
}

/// The error of a call that a cut interrupted.
fn cut(backend: &'static str, what: &str) -> Error {
    Error::broker(
        backend,
        format!("{what}: the connection was cut (an injected fault)"),
    )
}

/// A channel whose calls go through the faults its [`FaultSwitch`] makes, and otherwise
/// work as `C`'s do:
/// - a cut: every delivery handed out before it can no longer be settled (its ack, nack or
///   dead letter fails, and the message goes back to its queue, as a broker takes back what
///   a lost connection held), a delivery on its way to a receive is taken back, and the
///   first send completed after it fails, though its messages went through (a confirm lost
///   on the way);
/// - a delay holds each receive, send and settlement;
/// - a blackhole holds them all until it is lifted.
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::conformance::interrupt::Interruptible;
/// use event_binder_core::{Channel, Producer};
/// use std::time::Duration;
///
/// let (channel, faults) = Interruptible::new(channel);
/// let producer = channel.producer("orders").await?;
/// faults.delay(Duration::from_millis(20));
/// producer.send(event_binder_core::Message::new("late")).await?;
/// faults.cut();
/// assert!(producer.send(event_binder_core::Message::new("sent")).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Interruptible<C> {
    inner: C,
    faults: watch::Receiver<Faults>,
    /// The latest cut a send has failed for.
    failed_send: Arc<AtomicU64>,
}

impl<C: Channel> Interruptible<C> {
    /// `inner`, and the switch of its faults.
    pub fn new(inner: C) -> (Self, FaultSwitch) {
        let (switch, faults) = FaultSwitch::new();
        let channel = Interruptible {
            inner,
            faults,
            failed_send: Arc::default(),
        };
        (channel, switch)
    }

    fn consumer_of(&self, inner: C::Consumer) -> InterruptibleConsumer<C::Consumer> {
        InterruptibleConsumer {
            inner,
            faults: self.faults.clone(),
            backend: self.inner.backend(),
        }
    }
}

impl<C: Channel> Channel for Interruptible<C> {
    type Producer = InterruptibleProducer<C::Producer>;
    type Consumer = InterruptibleConsumer<C::Consumer>;

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
        pass(&self.faults).await;
        self.inner.provision(destination, group).await
    }

    async fn producer(&self, destination: &str) -> Result<Self::Producer> {
        pass(&self.faults).await;
        Ok(InterruptibleProducer {
            inner: self.inner.producer(destination).await?,
            faults: self.faults.clone(),
            failed_send: self.failed_send.clone(),
            backend: self.inner.backend(),
        })
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<Self::Consumer> {
        pass(&self.faults).await;
        let inner = self.inner.consumer(subscription).await?;
        Ok(self.consumer_of(inner))
    }

    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<Self::Consumer> {
        pass(&self.faults).await;
        let inner = self.inner.dead_letters(destination, group).await?;
        Ok(self.consumer_of(inner))
    }

    async fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> Result<Self::Consumer> {
        pass(&self.faults).await;
        let inner = self
            .inner
            .dead_letters_holding(destination, group, prefetch)
            .await?;
        Ok(self.consumer_of(inner))
    }

    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        pass(&self.faults).await;
        self.inner.send_to_group(destination, group, messages).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// An [`Interruptible`] channel's producer.
#[derive(Debug)]
pub struct InterruptibleProducer<P> {
    inner: P,
    faults: watch::Receiver<Faults>,
    failed_send: Arc<AtomicU64>,
    backend: &'static str,
}

impl<P: Producer> InterruptibleProducer<P> {
    /// What a send that completed reports: failed, for the first after a cut.
    fn confirmed(&self, sent: Result<()>) -> Result<()> {
        sent?;
        let cuts = self.faults.borrow().cuts;
        if self.failed_send.fetch_max(cuts, Ordering::SeqCst) < cuts {
            return Err(cut(self.backend, "sending"));
        }
        Ok(())
    }
}

impl<P: Producer> Producer for InterruptibleProducer<P> {
    fn destination(&self) -> &str {
        self.inner.destination()
    }

    async fn send(&self, message: Message) -> Result<()> {
        pass(&self.faults).await;
        self.confirmed(self.inner.send(message).await)
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        pass(&self.faults).await;
        self.confirmed(self.inner.send_batch(messages).await)
    }
}

/// An [`Interruptible`] channel's consumer.
#[derive(Debug)]
pub struct InterruptibleConsumer<C> {
    inner: C,
    faults: watch::Receiver<Faults>,
    backend: &'static str,
}

impl<C: Consumer> InterruptibleConsumer<C> {
    fn wrap(
        &self,
        delivery: Delivery<C::Acknowledger>,
        cuts: u64,
    ) -> Delivery<Interrupted<C::Acknowledger>> {
        delivery.map_acknowledger(|inner| Interrupted {
            inner,
            handed_out_at: cuts,
            faults: self.faults.clone(),
            backend: self.backend,
        })
    }
}

impl<C: Consumer> Consumer for InterruptibleConsumer<C> {
    type Acknowledger = Interrupted<C::Acknowledger>;

    fn subscription(&self) -> &Subscription {
        self.inner.subscription()
    }

    /// Cancel safe as `C`'s: the faults are waited out before the inner receive. A
    /// delivery that arrives after a cut made while the receive waited was on its way over
    /// the connection cut: the broker takes it back, and the receive goes on.
    async fn receive(&mut self) -> Result<Delivery<Self::Acknowledger>> {
        loop {
            let cuts = pass(&self.faults).await;
            let delivery = self.inner.receive().await?;
            if self.faults.borrow().cuts == cuts {
                return Ok(self.wrap(delivery, cuts));
            }
            // Failing too, it would leave the delivery to be taken back when dropped.
            let _ = delivery.nack(None).await;
        }
    }

    fn try_receive(&mut self) -> Option<Result<Delivery<Self::Acknowledger>>> {
        let now = *self.faults.borrow();
        if now.hold() {
            return None;
        }
        let received = self.inner.try_receive()?;
        Some(received.map(|delivery| self.wrap(delivery, now.cuts)))
    }

    async fn backlog(&mut self) -> Result<Option<u64>> {
        pass(&self.faults).await;
        self.inner.backlog().await
    }
}

/// Settles a delivery of an [`InterruptibleConsumer`]: through the faults, and not at all
/// once a cut came after the delivery was handed out.
pub struct Interrupted<A> {
    inner: A,
    handed_out_at: u64,
    faults: watch::Receiver<Faults>,
    backend: &'static str,
}

impl<A: fmt::Debug> fmt::Debug for Interrupted<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupted")
            .field("inner", &self.inner)
            .field("handed_out_at", &self.handed_out_at)
            .finish_non_exhaustive()
    }
}

impl<A: Acknowledger> Interrupted<A> {
    /// Waits the faults out; `false` if a cut came after the delivery was handed out.
    async fn connected(&self) -> bool {
        pass(&self.faults).await == self.handed_out_at
    }

    /// What a lost connection does to a delivery it held: the broker takes it back.
    async fn lost(self, what: &str) -> Result<()> {
        // Handed back as the broker would, without a delay; that failing too changes nothing
        // for the caller, whose settlement failed either way.
        let _ = self.inner.nack(None).await;
        Err(cut(self.backend, what))
    }
}

impl<A: Acknowledger> Acknowledger for Interrupted<A> {
    async fn ack(self) -> Result<()> {
        if !self.connected().await {
            return self.lost("acknowledging").await;
        }
        self.inner.ack().await
    }

    async fn nack(self, delay: Option<Duration>) -> Result<()> {
        if !self.connected().await {
            return self.lost("handing back").await;
        }
        self.inner.nack(delay).await
    }

    async fn dead_letter(self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        if !self.connected().await {
            let error = cut(self.backend, "dead-lettering");
            return Err(DeadLetterFailed::new(error, self));
        }
        let Interrupted {
            inner,
            handed_out_at,
            faults,
            backend,
        } = self;
        inner.dead_letter(dead_letter).await.map_err(|failed| {
            DeadLetterFailed::new(
                failed.error,
                Interrupted {
                    inner: failed.unsettled,
                    handed_out_at,
                    faults,
                    backend,
                },
            )
        })
    }

    fn try_ack(&mut self) -> Option<Result<()>> {
        let now = *self.faults.borrow();
        if now.hold() || now.cuts != self.handed_out_at {
            return None;
        }
        self.inner.try_ack()
    }
}
