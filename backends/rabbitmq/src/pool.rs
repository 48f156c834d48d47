//! AMQP channels in confirm mode, and publishing on them until the broker confirms.
//!
//! Each publish (or batch) takes a channel of its own from the pool for as long as its
//! confirms are outstanding. With one publisher per channel at a time, a message the broker
//! returns (unroutable) is always told to the publisher it belongs to: lapin pairs returned
//! messages with confirms by arrival order, which is only exact when nobody else publishes
//! on the channel meanwhile.

use crate::convert::Outgoing;
use crate::error::{Failure, BACKEND};
use crate::link::{Link, Up};
use crate::names::Names;
use crate::topology::{self, Declaration, Role};
use event_binder_core::{Error, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::Confirmation;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout_at, Instant};

/// The most AMQP channels one pool opens, that is the most publishes it has in flight.
const MAX_CHANNELS: usize = 64;
/// How many times a send publishes again what the broker nacked before it fails.
const NACK_RETRIES: u32 = 3;
/// The pause before publishing nacked messages again; doubled after each nack.
const NACK_PAUSE: Duration = Duration::from_millis(20);

/// Where a publish goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A destination's exchange, routed by each message's key.
    Destination {
        destination: String,
        exchange: ShortString,
    },
    /// A queue, through the default exchange (dead letters, delay queues).
    Queue { name: String },
}

impl Target {
    fn exchange(&self) -> ShortString {
        match self {
            Target::Destination { exchange, .. } => exchange.clone(),
            Target::Queue { .. } => ShortString::default(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Destination { destination, .. } => format!("destination {destination:?}"),
            Target::Queue { name } => format!("queue {name:?}"),
        }
    }

    fn unroutable(&self, returned: usize, reply: &str) -> Error {
        let what = match returned {
            1 => "the message was".to_owned(),
            n => format!("{n} messages were"),
        };
        let message = match self {
            Target::Destination {
                destination,
                exchange,
            } => format!(
                "{what} returned unroutable ({reply}): no group or subscription is bound to \
                 destination {destination:?} (exchange {exchange:?}); provision a group first \
                 (Channel::provision) or start a consumer, so that messages have somewhere to go"
            ),
            Target::Queue { name } => {
                format!("{what} returned unroutable ({reply}): queue {name:?} does not exist")
            }
        };
        Error::broker(BACKEND, message)
    }
}

/// A channel of the pool, and the connection generation it belongs to.
struct Lease {
    channel: lapin::Channel,
    generation: u64,
    frame_max: u32,
}

/// Confirm-mode AMQP channels of one connection, reopened on each new connection.
pub(crate) struct ConfirmPool {
    link: Arc<Link>,
    /// Declared on every channel the pool opens, so it exists again after a broker restart.
    declare: Option<Names>,
    idle: Mutex<Vec<Lease>>,
    permits: Semaphore,
}

impl fmt::Debug for ConfirmPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmPool")
            .field(
                "declare",
                &self.declare.as_ref().map(|names| &names.exchange),
            )
            .field("idle", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// What became of a publish attempt.
enum Attempt {
    /// Everything was confirmed.
    Confirmed,
    /// The broker answered, but not with a plain ack.
    Refused(Error),
    /// A confirm did not come in time; the channel still expects it and is not reused.
    TimedOut(Error),
    /// The broker nacked some messages (the error says which); those at the indexes in
    /// `confirmed` were acked.
    Nacked { error: Error, confirmed: Vec<usize> },
    /// The connection went away; the messages at these indexes were confirmed before it did.
    Lost {
        error: lapin::Error,
        confirmed: Vec<usize>,
    },
}

impl ConfirmPool {
    /// A pool; `declare` names an exchange to declare on each channel it opens.
    pub(crate) fn new(link: Arc<Link>, declare: Option<Names>) -> Self {
        ConfirmPool {
            link,
            declare,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_CHANNELS),
        }
    }

    /// Opens (or reuses) a channel now, to check that the broker is there and accepts the
    /// declarations.
    pub(crate) async fn warm_up(&self, what: &str) -> Result<()> {
        let deadline = Instant::now() + self.link.config.send_timeout;
        let lease = self.lease(0, deadline, what).await?;
        self.give_back(lease);
        Ok(())
    }

    /// Declares `declaration` on a channel of the pool; returns what
    /// [`Declaration::run`] does.
    pub(crate) async fn declare(&self, declaration: Declaration<'_>, what: &str) -> Result<u32> {
        let deadline = Instant::now() + self.link.config.send_timeout;
        let mut failures = 0;
        let mut stale = 0;
        loop {
            let lease = self.lease(stale, deadline, what).await?;
            match declaration.run(&lease.channel, &self.link.config).await {
                Ok(count) => {
                    self.give_back(lease);
                    return Ok(count);
                }
                Err(Failure::Refused(err)) => return Err(err),
                Err(Failure::Lost(err)) => {
                    tracing::debug!(error = %err, "rabbitmq: declaration interrupted; retrying");
                    stale = self
                        .link
                        .recover(lease.generation, &mut failures, Some(deadline), what)
                        .await?;
                }
            }
        }
    }

    /// Publishes `messages` to `target` and waits for the broker to confirm all of them,
    /// reconnecting and publishing again what was not confirmed when the connection is
    /// lost, until the send timeout. What the broker nacks is published again after a
    /// short pause, up to [`NACK_RETRIES`] times (RabbitMQ nacks a message a queue process
    /// failed to take: with quorum queues, one routed to a queue deleted at that moment,
    /// such as an anonymous subscription's just dropped, is nacked as a whole); after that
    /// the nack fails the call. A returned (unroutable) message fails the call; so does a
    /// message whose headers do not fit one AMQP frame.
    pub(crate) async fn publish(&self, target: &Target, messages: Vec<Outgoing>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.link.config.send_timeout;
        let what = || {
            format!(
                "sending to {} (not confirmed: send again; a copy that did arrive has the same id)",
                target.describe()
            )
        };
        let _permit = match timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(Error::ShutDown("rabbitmq producer")),
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("{}: all {MAX_CHANNELS} AMQP channels stayed busy", what()),
                    after: self.link.config.send_timeout,
                })
            }
        };
        let mut pending = messages;
        let mut failures = 0;
        let mut stale = 0;
        let mut nacks = 0;
        loop {
            let lease = self.lease(stale, deadline, &what()).await?;
            if let Err(err) = pending
                .iter()
                .try_for_each(|message| message.check_header_frame(lease.frame_max))
            {
                self.give_back(lease);
                return Err(err);
            }
            match publish_on(
                &lease.channel,
                target,
                &pending,
                deadline,
                self.link.config.send_timeout,
            )
            .await
            {
                Attempt::Confirmed => {
                    self.give_back(lease);
                    return Ok(());
                }
                Attempt::Refused(err) => {
                    self.give_back(lease);
                    return Err(err);
                }
                Attempt::TimedOut(err) => return Err(err),
                Attempt::Nacked { error, confirmed } => {
                    self.give_back(lease);
                    let pause = NACK_PAUSE.saturating_mul(1 << nacks.min(8));
                    if nacks >= NACK_RETRIES || Instant::now() + pause >= deadline {
                        return Err(error);
                    }
                    nacks += 1;
                    tracing::debug!(error = %error, retry_in = ?pause, "rabbitmq: messages nacked; publishing them again");
                    retain_unconfirmed(&mut pending, &confirmed);
                    sleep(pause).await;
                }
                Attempt::Lost { error, confirmed } => {
                    tracing::debug!(error = %error, confirmed = confirmed.len(), pending = pending.len(), "rabbitmq: publish interrupted; publishing the unconfirmed again");
                    retain_unconfirmed(&mut pending, &confirmed);
                    stale = self
                        .link
                        .recover(lease.generation, &mut failures, Some(deadline), &what())
                        .await?;
                }
            }
        }
    }

    /// An open channel of the current connection: an idle one, or a new one.
    /// `stale` names a connection generation known to be gone (0 for none).
    async fn lease(&self, mut stale: u64, deadline: Instant, what: &str) -> Result<Lease> {
        let mut failures = 0;
        loop {
            let up = self.link.up(stale, Some(deadline), what).await?;
            if let Some(lease) = self.take_idle(&up) {
                return Ok(lease);
            }
            match self.open(&up).await {
                Ok(channel) => {
                    return Ok(Lease {
                        channel,
                        generation: up.generation,
                        frame_max: up.frame_max(),
                    })
                }
                Err(Failure::Refused(err)) => return Err(err),
                Err(Failure::Lost(err)) => {
                    tracing::debug!(error = %err, "rabbitmq: opening a channel failed; retrying");
                    stale = self
                        .link
                        .recover(up.generation, &mut failures, Some(deadline), what)
                        .await?;
                }
            }
        }
    }

    fn take_idle(&self, up: &Up) -> Option<Lease> {
        let mut idle = self.lock();
        while let Some(lease) = idle.pop() {
            if lease.generation == up.generation && lease.channel.status().connected() {
                return Some(lease);
            }
        }
        None
    }

    async fn open(&self, up: &Up) -> Result<lapin::Channel, Failure> {
        let channel = up
            .connection
            .create_channel()
            .await
            .map_err(|err| Failure::from_lapin(err, "opening an AMQP channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|err| Failure::from_lapin(err, "enabling publisher confirms"))?;
        if let Some(names) = &self.declare {
            topology::declare(&channel, names, Role::Destination, &self.link.config).await?;
        }
        Ok(channel)
    }

    fn give_back(&self, lease: Lease) {
        if lease.channel.status().connected() {
            self.lock().push(lease);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Lease>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps the messages whose index is not in `confirmed`.
fn retain_unconfirmed(pending: &mut Vec<Outgoing>, confirmed: &[usize]) {
    let mut index = 0;
    pending.retain(|_| {
        let keep = !confirmed.contains(&index);
        index += 1;
        keep
    });
}

/// Publishes every message on one channel, then waits for every confirm.
async fn publish_on(
    channel: &lapin::Channel,
    target: &Target,
    messages: &[Outgoing],
    deadline: Instant,
    send_timeout: Duration,
) -> Attempt {
    let exchange = target.exchange();
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut confirms = Vec::with_capacity(messages.len());
    let mut interrupted = None;
    for (index, message) in messages.iter().enumerate() {
        let published = channel
            .basic_publish(
                exchange.clone(),
                message.routing_key.clone(),
                options,
                &message.payload,
                message.properties.clone(),
            )
            .await;
        match published {
            Ok(confirm) => confirms.push((index, confirm)),
            Err(err) => {
                interrupted = Some(err);
                break;
            }
        }
    }
    let mut confirmed = Vec::with_capacity(confirms.len());
    let mut returned = Vec::new();
    let mut nacked = Vec::new();
    let mut refused = None;
    for (index, confirm) in confirms {
        match timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => confirmed.push(index),
            Ok(Ok(Confirmation::Ack(Some(message)))) => {
                returned.push(message.reply_text.as_str().to_owned());
            }
            Ok(Ok(Confirmation::Nack(_))) => nacked.push(index),
            Ok(Ok(Confirmation::NotRequested)) => {
                refused = Some(Error::broker(
                    BACKEND,
                    "publisher confirms are not enabled on the AMQP channel",
                ));
            }
            Ok(Err(err)) => {
                match Failure::from_lapin(err, &format!("sending to {}", target.describe())) {
                    Failure::Refused(err) => refused = refused.or(Some(err)),
                    Failure::Lost(err) => interrupted = interrupted.or(Some(err)),
                }
            }
            Err(_) => {
                let message = &messages[index];
                return Attempt::TimedOut(Error::Timeout {
                    what: format!(
                        "the publisher confirm of message {} ({}); it may have been stored",
                        message.id,
                        target.describe()
                    ),
                    after: send_timeout,
                });
            }
        }
    }
    if let Some(err) = refused {
        return Attempt::Refused(err);
    }
    if let Some(reply) = returned.first() {
        return Attempt::Refused(target.unroutable(returned.len(), reply));
    }
    if let Some(error) = interrupted {
        // What was nacked is published again with the rest of the unconfirmed.
        return Attempt::Lost { error, confirmed };
    }
    if let Some(index) = nacked.first() {
        return Attempt::Nacked {
            error: Error::broker(
                BACKEND,
                format!(
                    "RabbitMQ refused (nacked) {} of {} messages sent to {}, message {} among \
                     them, each published {} times; they may not have been stored: send again \
                     (a copy that did arrive has the same id)",
                    nacked.len(),
                    messages.len(),
                    target.describe(),
                    messages[*index].id,
                    NACK_RETRIES + 1
                ),
            ),
            confirmed,
        };
    }
    Attempt::Confirmed
}
