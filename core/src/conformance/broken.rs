//! Deliberately broken backends: a working channel wrapped so that it makes one mistake a
//! real backend could make. The suite is checked against them: every case must fail against
//! at least one, so that no case passes by doing nothing
//! ([`broken_backend_tests!`](crate::broken_backend_tests)).
//!
//! ```no_run
//! // tests/broken.rs, with any working backend (the in-memory one is the fastest)
//! # type MyChannel = event_binder_core::BoxChannel;
//! async fn connect() -> event_binder_core::Result<MyChannel> {
//!     # unimplemented!()
//!     // MyChannel::connect("memory://").await
//! }
//!
//! event_binder_core::broken_backend_tests!(connect);
//! # fn main() {}
//! ```

use super::{Case, SuiteConfig};
use crate::channel::{Capabilities, Channel, Consumer, Producer, Subscription};
use crate::delivery::{Acknowledger, DeadLetterFailed, Delivery};
use crate::error::Result;
use crate::message::{new_message_id, Headers, Message};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One mistake a backend could make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// Every tenth message sent (counted over the whole channel) is reported sent and
    /// dropped.
    DropsEveryTenthMessage,
    /// Every fifth message sent is sent twice.
    SendsEveryFifthMessageTwice,
    /// Deliveries are acknowledged as they are received, before any handling: a nack, a
    /// dead letter, a consumer that goes away, all lose the message.
    AcksOnReceive,
    /// The ordering key is not sent.
    IgnoresTheKey,
    /// Headers are not sent.
    LosesHeaders,
    /// Each message sent gets a new id, as if the id were not carried.
    ReplacesIds,
    /// The messages of one send are sent in reverse order.
    ReversesBatches,
    /// A nack's delay is ignored: the message comes back at once.
    IgnoresNackDelays,
    /// Every group of a destination shares one queue: groups compete instead of each
    /// getting every message.
    OneQueueForAllGroups,
    /// Claims a size limit of 1 KiB that it does not enforce.
    ClaimsALimitItDoesNotEnforce,
    /// `close` reports success and closes nothing.
    IgnoresClose,
    /// Invalid destination and group names are turned into valid ones instead of refused.
    AcceptsInvalidNames,
    /// A consumer's backlog reads 0 whatever its queue holds.
    HidesItsBacklog,
}

impl Breakage {
    /// Every breakage, the ones most cases catch first.
    pub const ALL: [Breakage; 13] = [
        Breakage::DropsEveryTenthMessage,
        Breakage::AcksOnReceive,
        Breakage::SendsEveryFifthMessageTwice,
        Breakage::LosesHeaders,
        Breakage::ReplacesIds,
        Breakage::IgnoresTheKey,
        Breakage::ReversesBatches,
        Breakage::OneQueueForAllGroups,
        Breakage::IgnoresNackDelays,
        Breakage::ClaimsALimitItDoesNotEnforce,
        Breakage::IgnoresClose,
        Breakage::AcceptsInvalidNames,
        Breakage::HidesItsBacklog,
    ];
}

/// A channel that makes one [`Breakage`]'s mistake and otherwise works as `C` does.
#[derive(Debug)]
pub struct Broken<C> {
    inner: C,
    breakage: Breakage,
    sent: Arc<AtomicUsize>,
}

impl<C: Channel> Broken<C> {
    /// `inner`, making `breakage`'s mistake.
    pub fn new(inner: C, breakage: Breakage) -> Self {
        Broken {
            inner,
            breakage,
            sent: Arc::default(),
        }
    }

    fn name(&self, name: &str) -> String {
        if self.breakage != Breakage::AcceptsInvalidNames {
            return name.to_owned();
        }
        let kept: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
            .take(100)
            .collect();
        if kept.is_empty() {
            "unnamed".to_owned()
        } else {
            kept
        }
    }

    fn group(&self, group: Option<&str>) -> Option<String> {
        match (self.breakage, group) {
            (_, None) => None,
            (Breakage::OneQueueForAllGroups, Some(_)) => Some("all".to_owned()),
            (_, Some(group)) => Some(self.name(group)),
        }
    }

    fn subscription(&self, subscription: &Subscription) -> Subscription {
        Subscription::new(self.name(subscription.destination()))
            .optional_group(self.group(subscription.group_name()))
            .prefetch(subscription.prefetch_count())
    }

    fn consumer_of(&self, inner: C::Consumer, subscription: Subscription) -> BrokenConsumer<C> {
        BrokenConsumer {
            inner,
            subscription,
            breakage: self.breakage,
        }
    }
}

impl<C: Channel> Channel for Broken<C> {
    type Producer = BrokenProducer<C::Producer>;
    type Consumer = BrokenConsumer<C>;

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        let capabilities = self.inner.capabilities();
        match self.breakage {
            Breakage::ClaimsALimitItDoesNotEnforce => capabilities.max_message_size(1024),
            _ => capabilities,
        }
    }

    fn orders_by_key(&self, destination: &str) -> bool {
        self.inner.orders_by_key(&self.name(destination))
    }

    fn counts_deliveries(&self, subscription: &Subscription) -> bool {
        self.inner
            .counts_deliveries(&self.subscription(subscription))
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        let group = self.group(group);
        self.inner
            .provision(&self.name(destination), group.as_deref())
            .await
    }

    async fn producer(&self, destination: &str) -> Result<Self::Producer> {
        Ok(BrokenProducer {
            inner: self.inner.producer(&self.name(destination)).await?,
            breakage: self.breakage,
            sent: self.sent.clone(),
        })
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<Self::Consumer> {
        let inner = self
            .inner
            .consumer(&self.subscription(subscription))
            .await?;
        Ok(self.consumer_of(inner, subscription.clone()))
    }

    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<Self::Consumer> {
        let mapped = self.group(group);
        let inner = self
            .inner
            .dead_letters(&self.name(destination), mapped.as_deref())
            .await?;
        let subscription = Subscription::new(destination).optional_group(group.map(Into::into));
        Ok(self.consumer_of(inner, subscription))
    }

    async fn dead_letters_holding(
        &self,
        destination: &str,
        group: Option<&str>,
        prefetch: u16,
    ) -> Result<Self::Consumer> {
        let mapped = self.group(group);
        let inner = self
            .inner
            .dead_letters_holding(&self.name(destination), mapped.as_deref(), prefetch)
            .await?;
        let subscription = Subscription::new(destination).optional_group(group.map(Into::into));
        Ok(self.consumer_of(inner, subscription))
    }

    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        let mapped = self.group(Some(group)).unwrap_or_default();
        self.inner
            .send_to_group(&self.name(destination), &mapped, messages)
            .await
    }

    async fn close(&self) -> Result<()> {
        match self.breakage {
            Breakage::IgnoresClose => Ok(()),
            _ => self.inner.close().await,
        }
    }
}

/// A [`Broken`] channel's producer.
#[derive(Debug)]
pub struct BrokenProducer<P> {
    inner: P,
    breakage: Breakage,
    sent: Arc<AtomicUsize>,
}

impl<P: Producer> BrokenProducer<P> {
    /// What is sent for `message`: nothing, it once or twice, changed or not.
    fn sent_for(&self, message: Message) -> Vec<Message> {
        let nth = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        match self.breakage {
            Breakage::DropsEveryTenthMessage if nth % 10 == 0 => Vec::new(),
            Breakage::SendsEveryFifthMessageTwice if nth % 5 == 0 => {
                vec![message.clone(), message]
            }
            Breakage::IgnoresTheKey => vec![message.with_optional_key(None)],
            Breakage::LosesHeaders => vec![message.with_headers(Headers::new())],
            Breakage::ReplacesIds => vec![message.with_id(new_message_id())],
            _ => vec![message],
        }
    }
}

impl<P: Producer> Producer for BrokenProducer<P> {
    fn destination(&self) -> &str {
        self.inner.destination()
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.inner.send_batch(self.sent_for(message)).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let mut sent: Vec<Message> = messages
            .into_iter()
            .flat_map(|message| self.sent_for(message))
            .collect();
        if self.breakage == Breakage::ReversesBatches {
            sent.reverse();
        }
        self.inner.send_batch(sent).await
    }
}

/// A [`Broken`] channel's consumer.
#[derive(Debug)]
pub struct BrokenConsumer<C: Channel> {
    inner: C::Consumer,
    subscription: Subscription,
    breakage: Breakage,
}

/// `delivery` as a consumer making `breakage`'s mistake hands it out.
async fn broken<A: Acknowledger>(
    breakage: Breakage,
    delivery: Delivery<A>,
) -> Result<Delivery<BrokenAcknowledger<A>>> {
    if breakage != Breakage::AcksOnReceive {
        return Ok(delivery.map_acknowledger(|inner| BrokenAcknowledger::Inner(inner, breakage)));
    }
    let (message, attempt, origin) = (
        delivery.shared_message().clone(),
        delivery.attempt(),
        delivery.origin().clone(),
    );
    delivery.ack().await?;
    Ok(Delivery::new(
        message,
        attempt,
        origin,
        BrokenAcknowledger::Settled,
    ))
}

impl<C: Channel> Consumer for BrokenConsumer<C> {
    type Acknowledger = BrokenAcknowledger<<C::Consumer as Consumer>::Acknowledger>;

    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    async fn receive(&mut self) -> Result<Delivery<Self::Acknowledger>> {
        let delivery = self.inner.receive().await?;
        broken(self.breakage, delivery).await
    }

    async fn backlog(&mut self) -> Result<Option<u64>> {
        match self.breakage {
            Breakage::HidesItsBacklog => Ok(Some(0)),
            _ => self.inner.backlog().await,
        }
    }
}

/// How a [`Broken`] channel's delivery is settled.
#[derive(Debug)]
pub enum BrokenAcknowledger<A> {
    /// By the working backend, but for the breakage.
    Inner(A, Breakage),
    /// Already acknowledged when received: settling does nothing.
    Settled,
}

impl<A: Acknowledger> Acknowledger for BrokenAcknowledger<A> {
    async fn ack(self) -> Result<()> {
        match self {
            BrokenAcknowledger::Inner(inner, _) => inner.ack().await,
            BrokenAcknowledger::Settled => Ok(()),
        }
    }

    async fn nack(self, delay: Option<Duration>) -> Result<()> {
        match self {
            BrokenAcknowledger::Inner(inner, Breakage::IgnoresNackDelays) => inner.nack(None).await,
            BrokenAcknowledger::Inner(inner, _) => inner.nack(delay).await,
            BrokenAcknowledger::Settled => Ok(()),
        }
    }

    async fn dead_letter(self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        match self {
            BrokenAcknowledger::Inner(inner, breakage) => {
                inner.dead_letter(dead_letter).await.map_err(|failed| {
                    DeadLetterFailed::new(
                        failed.error,
                        BrokenAcknowledger::Inner(failed.unsettled, breakage),
                    )
                })
            }
            BrokenAcknowledger::Settled => Ok(()),
        }
    }
}

/// How long a case may wait against a broken backend: what goes missing there fails the
/// case at this bound.
const BROKEN_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `case` against `connect`'s channel broken in each way of [`Breakage::ALL`] in turn,
/// until one makes it fail; panics if none does (the case would pass by doing nothing).
/// Returns the breakage that the case caught. First the case must pass against the working
/// channel with the same settings, so that a failure is the breakage's doing.
pub fn must_catch<F, Fut, C>(connect: F, case: Case) -> Breakage
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<C>>,
    C: Channel,
{
    let config = SuiteConfig::default()
        .message_count(200)
        .timeout(BROKEN_TIMEOUT);
    super::run(&connect, config.clone(), case);
    for breakage in Breakage::ALL {
        let broken = || async {
            connect()
                .await
                .map(|channel| Broken::new(channel, breakage))
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            super::run(broken, config.clone(), case);
        }));
        if outcome.is_err() {
            println!("{case:?} fails against a backend that {breakage:?}");
            return breakage;
        }
        println!("{case:?} passes against a backend that {breakage:?}");
    }
    panic!("{case:?} passes against every broken backend: it would pass by doing nothing")
}
