//! Consumers: one AMQP channel each, `basic.qos` then `basic.consume` with manual acks.

use crate::convert;
use crate::delay::DelayQueues;
use crate::error::{Failure, BACKEND};
use crate::link::Link;
use crate::names::Names;
use crate::pool::{ConfirmPool, Target};
use crate::topology::{self, short, Declaration, Role};
use event_binder_core::{
    shorten_dead_letter_error, Acknowledger, Consumer, DeadLetterFailed, Delivery, Error, Message,
    Origin, Result, Subscription,
};
use futures_core::Stream;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll, Waker};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

/// What a consumer reads: its names, its role and where its dead letters go.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) names: Names,
    pub(crate) role: Role,
    pub(crate) prefetch: u16,
    pub(crate) origin: Arc<Origin>,
    /// Whether the queue counts deliveries (`x-delivery-count`: a quorum queue).
    pub(crate) counts_deliveries: bool,
    /// Where a delivery handed back with a delay waits it out: the delay queues of a
    /// group's or dead-letter queue. `None` for an anonymous subscription, whose
    /// server-named queue goes away with its consumer: its deliveries wait in the consumer.
    pub(crate) delays: Option<Arc<DelayQueues>>,
}

/// Everything a delivery needs to dead-letter itself.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    pub(crate) pool: Arc<ConfirmPool>,
    /// The dead-letter queue.
    pub(crate) queue: String,
    pub(crate) link: Arc<Link>,
}

/// One consumer's AMQP channel and lapin consumer on one connection.
struct Session {
    /// Shared with the deliveries, which settle on it.
    channel: Arc<lapin::Channel>,
    consumer: lapin::Consumer,
    queue: String,
    generation: u64,
}

impl Drop for Session {
    /// Closes the AMQP channel, so that the broker hands back what this consumer held
    /// unacknowledged at once.
    fn drop(&mut self) {
        if !self.channel.status().connected() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let channel = self.channel.clone();
            runtime.spawn(async move {
                if let Err(err) = channel.close(200, "consumer closed".into()).await {
                    tracing::debug!(error = %err, "rabbitmq: closing a consumer's channel failed");
                }
            });
        }
    }
}

/// A consumer of a group, an anonymous subscription or dead letters: what
/// [`RabbitChannel::consumer`](crate::RabbitChannel) and `dead_letters` open, on an AMQP
/// channel of its own.
pub struct RabbitConsumer {
    subscription: Subscription,
    link: Arc<Link>,
    source: Arc<Source>,
    dead_letters: Arc<DeadLetters>,
    session: Option<Session>,
    opening: Option<JoinHandle<Result<Session>>>,
}

impl fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("subscription", &self.subscription)
            .field("queue", &self.session.as_ref().map(|s| &s.queue))
            .field("generation", &self.session.as_ref().map(|s| s.generation))
            .finish_non_exhaustive()
    }
}

impl RabbitConsumer {
    /// Declares what the consumer reads and starts consuming, within the send timeout.
    pub(crate) async fn open(
        link: Arc<Link>,
        subscription: Subscription,
        source: Source,
        dead_letters: Arc<DeadLetters>,
    ) -> Result<Self> {
        let source = Arc::new(source);
        let deadline = Instant::now() + link.config.send_timeout;
        let session = open_session(link.clone(), source.clone(), Some(deadline)).await?;
        Ok(RabbitConsumer {
            subscription,
            link,
            source,
            dead_letters,
            session: Some(session),
            opening: None,
        })
    }

    /// A session, opening one (in a task of its own, so that a cancelled `receive` loses
    /// nothing: the next one picks the task up) when there is none.
    async fn session(&mut self) -> Result<&mut Session> {
        if self.session.is_none() {
            let opening = self.opening.get_or_insert_with(|| {
                tokio::spawn(open_session(self.link.clone(), self.source.clone(), None))
            });
            let opened = opening.await;
            self.opening = None;
            let session = match opened {
                Ok(session) => session?,
                Err(join) => {
                    return Err(Error::broker(
                        BACKEND,
                        format!("reopening the consumer failed: {join}"),
                    ))
                }
            };
            self.session = Some(session);
        }
        self.session
            .as_mut()
            .ok_or_else(|| Error::broker(BACKEND, "the consumer has no AMQP channel"))
    }

    /// Fails with [`Error::ShutDown`] once the channel is closed, dropping the session.
    fn check_open(&mut self) -> Result<()> {
        if self.link.is_closed() {
            self.session = None;
            return Err(Error::ShutDown("rabbitmq consumer"));
        }
        Ok(())
    }

    /// The session's next delivery; `Ready(None)` when there is no session, or when it
    /// ended (interrupted or cancelled) and was dropped, to be opened again.
    fn poll_session(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Delivery<RabbitAcknowledger>>> {
        let Some(session) = self.session.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match ready!(Pin::new(&mut session.consumer).poll_next(cx)) {
                // Deliveries buffered before the channel died can no longer be settled;
                // the broker hands them out again (an anonymous queue went with them).
                Some(Ok(delivery)) if !delivery.acker.usable() => {}
                Some(Ok(delivery)) => {
                    let channel = session.channel.clone();
                    return Poll::Ready(Some(self.delivery(&channel, delivery)));
                }
                Some(Err(err)) => {
                    tracing::debug!(queue = %session.queue, error = %err, "rabbitmq: consumer interrupted; resuming");
                    break;
                }
                None => {
                    tracing::debug!(queue = %session.queue, "rabbitmq: consumer cancelled; resuming");
                    break;
                }
            }
        }
        self.session = None;
        Poll::Ready(None)
    }

    fn delivery(
        &self,
        channel: &Arc<lapin::Channel>,
        delivery: lapin::message::Delivery,
    ) -> Delivery<RabbitAcknowledger> {
        let lapin::message::Delivery {
            delivery_tag,
            exchange,
            routing_key,
            redelivered,
            properties,
            data,
            ..
        } = delivery;
        // Deliveries before a trip through a delay queue, plus those of this copy.
        let attempt = convert::earlier_deliveries(&properties).saturating_add(convert::attempt(
            redelivered,
            self.source
                .counts_deliveries
                .then(|| convert::delivery_count(&properties))
                .flatten(),
        ));
        let message = Arc::new(convert::decode(
            exchange.as_str(),
            routing_key.as_str(),
            &properties,
            data,
        ));
        let hand_back = self.source.delays.as_ref().map(|queues| HandBack {
            queues: queues.clone(),
            message: message.clone(),
            attempt,
        });
        let settle = RabbitAcknowledger {
            channel: channel.clone(),
            delivery_tag,
            dead_letters: self.dead_letters.clone(),
            hand_back,
        };
        Delivery::new(message, attempt, self.source.origin.clone(), settle)
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        // A session still being opened is closed as soon as it is ready.
        if let Some(opening) = self.opening.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    drop(opening.await);
                });
            }
        }
    }
}

impl Consumer for RabbitConsumer {
    type Acknowledger = RabbitAcknowledger;

    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Cancel safe: a delivery leaves lapin's buffer only in the poll that returns it.
    async fn receive(&mut self) -> Result<Delivery<RabbitAcknowledger>> {
        loop {
            self.check_open()?;
            self.session().await?;
            if let Some(delivery) = poll_fn(|cx| self.poll_session(cx)).await {
                return Ok(delivery);
            }
        }
    }

    /// The messages ready in the queue the consumer reads (a passive declaration's
    /// `message_count`) and in the delay queues this consumer handed messages back to. Not
    /// counted, as AMQP does not report them: messages handed to a consumer and not yet
    /// acknowledged (they count again once they return), those in delay queues only other
    /// consumers used, and an anonymous subscription's deliveries waiting out a delay (they
    /// wait in the consumer, unacknowledged). An anonymous subscription's server-named queue
    /// is replaced when its consumer reconnects: while it is being opened again, the
    /// backlog cannot be told (`None`).
    async fn backlog(&mut self) -> Result<Option<u64>> {
        self.check_open()?;
        let names = &self.source.names;
        let queue = match self.source.role {
            Role::Group => names.queue.as_deref().unwrap_or_default(),
            Role::DeadLetters => names.dead_letters.as_str(),
            Role::Anonymous => match &self.session {
                Some(session) => session.queue.as_str(),
                None => return Ok(None),
            },
            Role::Destination => return Ok(None),
        };
        let what = format!("counting the messages of queue {queue:?}");
        let pool = &self.dead_letters.pool;
        let mut total = u64::from(pool.declare(Declaration::Count(queue), &what).await?);
        if let Some(delays) = &self.source.delays {
            total += delays.backlog().await?;
        }
        Ok(Some(total))
    }

    /// What lapin has buffered for the session, taken as `receive` takes it; `None` when
    /// nothing is buffered, or when the session is being opened again (`receive` waits
    /// for it).
    fn try_receive(&mut self) -> Option<Result<Delivery<RabbitAcknowledger>>> {
        if let Err(closed) = self.check_open() {
            return Some(Err(closed));
        }
        match self.poll_session(&mut TaskContext::from_waker(Waker::noop())) {
            Poll::Ready(Some(delivery)) => Some(Ok(delivery)),
            Poll::Ready(None) | Poll::Pending => None,
        }
    }
}

/// Opens a channel, sets its prefetch, declares the topology and starts consuming; waits
/// for the connection (until `deadline`, if given) and retries after losses.
async fn open_session(
    link: Arc<Link>,
    source: Arc<Source>,
    deadline: Option<Instant>,
) -> Result<Session> {
    let what = format!(
        "consuming {} / {}",
        source.origin.destination,
        source.origin.group.as_deref().unwrap_or("(anonymous)")
    );
    let mut stale = 0;
    let mut failures = 0;
    loop {
        let up = link.up(stale, deadline, &what).await?;
        let opened = async {
            let channel = up
                .connection
                .create_channel()
                .await
                .map_err(|err| Failure::from_lapin(err, "opening an AMQP channel"))?;
            channel
                .basic_qos(source.prefetch, BasicQosOptions::default())
                .await
                .map_err(|err| Failure::from_lapin(err, "setting the prefetch"))?;
            let queue = topology::declare(&channel, &source.names, source.role, &link.config)
                .await?
                .unwrap_or_default();
            let consumer = channel
                .basic_consume(
                    short(&queue),
                    short(""),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|err| Failure::from_lapin(err, &format!("consuming queue {queue:?}")))?;
            Ok::<_, Failure>(Session {
                channel: Arc::new(channel),
                consumer,
                queue,
                generation: up.generation,
            })
        }
        .await;
        match opened {
            Ok(session) => return Ok(session),
            Err(Failure::Refused(err)) => return Err(err),
            Err(Failure::Lost(err)) => {
                tracing::debug!(error = %err, "rabbitmq: opening a consumer failed; retrying");
                stale = link
                    .recover(up.generation, &mut failures, deadline, &what)
                    .await?;
            }
        }
    }
}

/// Settles one delivery on the AMQP channel it came on. Settling goes through the channel
/// rather than lapin's `Acker`: the channel queues the frame at once, ahead of a close of the
/// channel that follows, so an ack is never overtaken by the consumer's closing.
pub struct RabbitAcknowledger {
    channel: Arc<lapin::Channel>,
    delivery_tag: u64,
    dead_letters: Arc<DeadLetters>,
    /// What a nack with a delay publishes, and where; `None` for an anonymous subscription.
    hand_back: Option<HandBack>,
}

/// A delivery as a nack with a delay hands it back: the message and its attempt, for the
/// copy, and the delay queues the copy goes to.
struct HandBack {
    queues: Arc<DelayQueues>,
    message: Arc<Message>,
    attempt: u32,
}

impl fmt::Debug for RabbitAcknowledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitAcknowledger")
            .field("delivery_tag", &self.delivery_tag)
            .finish_non_exhaustive()
    }
}

impl RabbitAcknowledger {
    /// Turns lapin's answer into ours; a closed channel took the delivery with it, and the
    /// broker hands the message out again.
    fn settled(&self, result: lapin::Result<()>, what: &str) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(_) if !self.channel.status().connected() => Err(Error::broker(
                BACKEND,
                format!(
                    "could not {what} delivery {}: the AMQP channel it came on is closed \
                     (connection lost or consumer dropped); RabbitMQ delivers the message again",
                    self.delivery_tag
                ),
            )),
            Err(err) => Err(crate::error::broker(
                &format!("could not {what} delivery {}", self.delivery_tag),
                err,
            )),
        }
    }

    /// Puts the message back in its queue with `basic.reject` and requeue: for one delivery
    /// the same as `basic.nack`, but from RabbitMQ 4.3 on only a reject counts as a failed
    /// delivery in a quorum queue's `x-delivery-count` (a nack leaves it alone), so the
    /// attempt grows on every version.
    async fn requeue(&self) -> Result<()> {
        let options = BasicRejectOptions { requeue: true };
        self.settled(
            self.channel.basic_reject(self.delivery_tag, options).await,
            "requeue",
        )
    }

    /// Requeues the message after `delay`, from a task of its own: meanwhile the message
    /// stays unacknowledged, and holds one of the consumer's prefetch slots; dropping the
    /// consumer before then requeues it too.
    fn requeue_later(self, delay: Duration) {
        tokio::spawn(async move {
            sleep(delay).await;
            if let Err(err) = self.requeue().await {
                tracing::debug!(error = %err, "rabbitmq: delayed nack failed");
            }
        });
    }

    /// Hands `basic.ack` to the connection without waiting for it to be written: the
    /// broker does not answer acks, and should the write fail, the connection is gone and
    /// the broker delivers the message again. Saves a wake-up per message.
    fn ack_now(&self) -> Result<()> {
        let mut ack = pin!(self
            .channel
            .basic_ack(self.delivery_tag, BasicAckOptions::default()));
        match ack
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => self.settled(result, "acknowledge"),
            Poll::Pending => Ok(()),
        }
    }
}

impl Acknowledger for RabbitAcknowledger {
    /// `basic.ack`, handed to the connection (the call does not wait for the socket).
    async fn ack(self) -> Result<()> {
        self.ack_now()
    }

    /// The same as [`ack`](Self::ack), which never waits: settled at once.
    fn try_ack(&mut self) -> Option<Result<()>> {
        Some(self.ack_now())
    }

    /// Without a delay, requeues the message (`basic.reject` with requeue, which a quorum
    /// queue counts in `x-delivery-count`).
    ///
    /// With a delay, on a group or a dead-letter queue: publishes a copy of the message to
    /// the delay queue of that queue and delay, `{queue}.delay.{k}` for a delay of 2^k ms
    /// up to 2^(k+1) ms (exclusive), with the delay as its TTL (`expiration`, in whole
    /// milliseconds, rounded up) and its attempt in the `message-deliveries` header; once
    /// the broker has confirmed the copy, acknowledges the original. The consumer holds
    /// nothing meanwhile. When its TTL is over, RabbitMQ moves the copy back to the queue,
    /// after at least the delay and at most twice it; its attempt is then one more than
    /// this delivery's. If the copy cannot be stored, the message waits in the consumer
    /// instead (as on an anonymous subscription) and the error says so.
    ///
    /// With a delay, on an anonymous subscription (whose server-named, exclusive queue has
    /// no lasting name to come back to): the reject is sent after the delay by a task of
    /// its own, and the message stays unacknowledged (holding a prefetch slot) meanwhile;
    /// dropping the consumer before then requeues it too.
    async fn nack(mut self, delay: Option<Duration>) -> Result<()> {
        let delay = match delay {
            Some(delay) if !delay.is_zero() => delay,
            _ => return self.requeue().await,
        };
        let Some(hand_back) = self.hand_back.take() else {
            self.requeue_later(delay);
            return Ok(());
        };
        let handed = hand_back
            .queues
            .hand_back(&hand_back.message, hand_back.attempt, delay)
            .await;
        match handed {
            Ok(()) => {
                // Stored: a lost ack only means the message comes twice (at least once).
                if let Err(error) = self.ack_now() {
                    tracing::warn!(%error, "rabbitmq: acknowledging a message handed back with a delay failed");
                }
                Ok(())
            }
            Err(error) => {
                self.requeue_later(delay);
                Err(Error::broker_source(
                    BACKEND,
                    format!(
                        "could not hand the message back to the broker for a delayed \
                         redelivery ({error}); it waits in the consumer instead, and is \
                         requeued after {delay:?}"
                    ),
                    error,
                ))
            }
        }
    }

    /// Publishes the dead letter to the dead-letter queue (confirmed), then acknowledges
    /// the original; if the publish fails, hands the original back unsettled.
    async fn dead_letter(self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        let published = match fit_dead_letter(dead_letter, &self.dead_letters) {
            Ok(outgoing) => {
                let target = Target::Queue {
                    name: self.dead_letters.queue.clone(),
                };
                self.dead_letters
                    .pool
                    .publish(&target, vec![outgoing])
                    .await
            }
            Err(err) => Err(err),
        };
        match published {
            Ok(()) => {
                // Stored: a lost ack only means the message comes back (at least once).
                if let Err(error) = self.ack_now() {
                    tracing::warn!(%error, "rabbitmq: acknowledging a dead-lettered message failed");
                }
                Ok(())
            }
            Err(error) => Err(DeadLetterFailed::new(error, self)),
        }
    }
}

/// Encodes a dead letter for its queue. Dead letters are not held to the message size
/// limit (they must not be lost); if the headers outgrow one AMQP frame, the
/// `dead-letter-error` header (the error text event-binder added) is shortened to fit.
fn fit_dead_letter(dead_letter: Message, dead_letters: &DeadLetters) -> Result<convert::Outgoing> {
    let name = &dead_letters.queue;
    let frame_max = dead_letters.link.frame_max();
    let outgoing = convert::encode(&dead_letter, Some(name))?;
    let Err(Error::PayloadTooLarge { actual, limit }) = outgoing.check_header_frame(frame_max)
    else {
        return Ok(outgoing);
    };
    let dead_letter = shorten_dead_letter_error(dead_letter, actual - limit);
    convert::encode(&dead_letter, Some(name))
}
