//! Consuming one SQS queue: a poller (long polling, batches of up to 10), a settler
//! (DeleteMessageBatch and ChangeMessageVisibilityBatch, batched like publishes) and a
//! lease keeper (extends the visibility of messages held longer than half of it).

use crate::channel::{lock, until_closed, Inner, Queue};
use crate::config::{whole_seconds, MAX_MESSAGE_SIZE};
use crate::convert::{self, Encoded};
use crate::error;
use crate::names::Names;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName,
};
use event_binder_core::{
    as_delivered, header, shorten_dead_letter_error, Acknowledger, Consumer, DeadLetterFailed,
    Delivery, Error, Message, Origin, Result, Subscription,
};
use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The most messages one ReceiveMessage returns and one batch request settles.
const MAX_BATCH: usize = 10;
/// The longest visibility timeout SQS allows, in seconds.
const MAX_VISIBILITY_SECONDS: u64 = 12 * 60 * 60;
/// The longest pause after failed receives.
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(5);
/// What a consumer returns once its channel is closed.
const SHUT_DOWN: Error = Error::ShutDown("the sns-sqs channel");

/// Which queue a consumer reads.
#[derive(Debug, Clone)]
pub(crate) enum QueueKind {
    /// A group's queue, by name.
    Group(String),
    /// A temporary queue of its own, subscribed while the consumer lives.
    Anonymous,
    /// The dead letters of a group, or of the anonymous subscriptions.
    DeadLetters,
}

/// What the settler of a queue does.
pub(crate) enum Settle {
    /// Deletes a handled message.
    Delete(String),
    /// Sets how long a message stays hidden: 0 returns it at once; `done` hears the
    /// outcome.
    Visibility {
        receipt: String,
        seconds: i32,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    /// Sends everything queued, waits for every request in flight, then answers.
    Flush(oneshot::Sender<()>),
}

/// Sends what a settler has queued and waits for it.
pub(crate) async fn flush(settler: &mpsc::UnboundedSender<Settle>) {
    let (done, flushed) = oneshot::channel();
    if settler.send(Settle::Flush(done)).is_ok() {
        let _ = flushed.await;
    }
}

/// What a consumer, its tasks and its deliveries share about one queue.
struct QueueLink {
    inner: Arc<Inner>,
    queue: Queue,
    dead_letter_url: String,
    origin: Arc<Origin>,
    /// Receipt handle → when its visibility timeout last started, for the messages
    /// received and not settled.
    leases: Mutex<HashMap<String, Instant>>,
    settler: mpsc::UnboundedSender<Settle>,
    /// The subscription of an anonymous queue, removed with the queue when the link goes.
    anonymous_subscription: Option<String>,
}

impl QueueLink {
    fn settle(&self, settle: Settle) {
        // The settler lives as long as this link holds its sender.
        let _ = self.settler.send(settle);
    }

    fn end_lease(&self, receipt: &str) {
        lock(&self.leases).remove(receipt);
    }

    /// A delivery for a received message, its lease started at `received_at`.
    fn delivery(
        self: &Arc<Self>,
        message: aws_sdk_sqs::types::Message,
        received_at: Instant,
    ) -> Option<Delivery<SqsAcknowledger>> {
        let Some(receipt) = message.receipt_handle else {
            tracing::warn!(queue = %self.queue.url, "SQS returned a message without a receipt handle");
            return None;
        };
        let attributes = convert::attribute_texts(message.message_attributes.unwrap_or_default());
        let system = message.attributes.unwrap_or_default();
        let attempt = system
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        let fallback_id = message.message_id.unwrap_or_else(|| receipt.clone());
        let decoded = convert::decode(
            message.body.as_deref(),
            &attributes,
            &fallback_id,
            convert::sent_millis(system.get(&MessageSystemAttributeName::SentTimestamp)),
        );
        lock(&self.leases).insert(receipt.clone(), received_at);
        Some(Delivery::new(
            decoded,
            attempt,
            self.origin.clone(),
            SqsAcknowledger {
                link: self.clone(),
                receipt,
                received_at,
                settled: false,
            },
        ))
    }
}

impl Drop for QueueLink {
    /// An anonymous queue goes with its last user: unsubscribed, then deleted, once the
    /// settler has sent what it holds.
    fn drop(&mut self) {
        let Some(subscription) = self.anonymous_subscription.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(queue = %self.queue.url, "no runtime to delete an anonymous queue with; it stays");
            return;
        };
        let (inner, queue_url, settler) = (
            self.inner.clone(),
            self.queue.url.clone(),
            self.settler.clone(),
        );
        runtime.spawn(async move {
            flush(&settler).await;
            drop(settler);
            remove_anonymous(&inner, &subscription, &queue_url).await;
        });
    }
}

async fn remove_anonymous(inner: &Inner, subscription: &str, queue_url: &str) {
    if !subscription.is_empty() {
        if let Err(err) = inner
            .sns
            .unsubscribe()
            .subscription_arn(subscription)
            .send()
            .await
        {
            tracing::warn!(error = %error::request("unsubscribing an anonymous queue", err), "an anonymous subscription stays");
        }
    }
    if let Err(err) = inner.sqs.delete_queue().queue_url(queue_url).send().await {
        tracing::warn!(error = %error::request("deleting an anonymous queue", err), "an anonymous queue stays");
    }
}

/// Settles one delivery of an [`SqsConsumer`].
pub struct SqsAcknowledger {
    link: Arc<QueueLink>,
    receipt: String,
    /// When the receive that returned this receipt handle was sent: SQS keeps a message
    /// hidden at most 12 hours from then.
    received_at: Instant,
    settled: bool,
}

impl SqsAcknowledger {
    /// Marks the delivery settled and hands back its receipt handle.
    fn finish(&mut self) -> String {
        self.settled = true;
        self.link.end_lease(&self.receipt);
        std::mem::take(&mut self.receipt)
    }

    /// Settles the delivery by queueing the delete of its message.
    fn delete(&mut self) {
        let receipt = self.finish();
        self.link.settle(Settle::Delete(receipt));
    }
}

impl fmt::Debug for SqsAcknowledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsAcknowledger")
            .field("queue", &self.link.queue.url)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl Acknowledger for SqsAcknowledger {
    /// Queues the delete and returns: deletes go out in batches within the batch window.
    /// A delete that fails is logged, and the message comes back after its visibility
    /// timeout (at least once).
    async fn ack(mut self) -> Result<()> {
        self.delete();
        Ok(())
    }

    /// The same as [`ack`](Self::ack), which never waits: settled at once.
    fn try_ack(&mut self) -> Option<Result<()>> {
        self.delete();
        Some(Ok(()))
    }

    /// Makes the message visible again after the delay: whole seconds, rounded up, and
    /// capped at what SQS allows (12 hours from the receive, which it counts from; it
    /// refuses more rather than shortening it).
    async fn nack(mut self, delay: Option<Duration>) -> Result<()> {
        let receipt = self.finish();
        let seconds = delay
            .map_or(0, whole_seconds)
            .min(visibility_left(self.received_at.elapsed()));
        let (done, answer) = oneshot::channel();
        self.link.settle(Settle::Visibility {
            receipt,
            seconds: i32::try_from(seconds).unwrap_or(i32::MAX),
            done: Some(done),
        });
        answer.await.unwrap_or(Err(SHUT_DOWN))
    }

    /// Sends the dead letter to the dead-letter queue (SendMessage, awaited), then deletes
    /// the original. If the send fails the original is handed back unsettled.
    async fn dead_letter(mut self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        let sent = match fit_dead_letter(dead_letter) {
            Ok(encoded) => self
                .link
                .inner
                .sqs
                .send_message()
                .queue_url(&self.link.dead_letter_url)
                .message_body(&encoded.body)
                .set_message_attributes(Some(encoded.sqs_attributes()))
                .send()
                .await
                .map_err(|err| {
                    self.link.inner.request_error(
                        &format!("sending a dead letter to {}", self.link.dead_letter_url),
                        err,
                    )
                }),
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            return Err(DeadLetterFailed::new(error, self));
        }
        self.delete();
        Ok(())
    }
}

/// The longest visibility timeout SQS still accepts for a message received `held` ago:
/// 12 hours from the receive, less what has passed (rounded up, so never too long).
fn visibility_left(held: Duration) -> u64 {
    MAX_VISIBILITY_SECONDS.saturating_sub(whole_seconds(held))
}

/// Encodes a dead letter within SQS's size limit. A message close to the limit leaves no
/// room for the dead-letter headers: the error text is shortened to fit, and if even that
/// is not enough the message is stored as it was delivered (it fitted then), the reason
/// going to the log. A foreign producer's message at the limit carried none of the
/// attributes this backend adds (id, timestamp): those are left out until it fits, the
/// id last (the dead letter then gets the dead-letter queue's message id). Otherwise SQS
/// would refuse it, and the message would come back forever.
fn fit_dead_letter(dead_letter: Message) -> Result<Encoded> {
    let encoded = Encoded::new(&dead_letter)?;
    let Some(excess) = encoded
        .size
        .checked_sub(MAX_MESSAGE_SIZE)
        .filter(|e| *e > 0)
    else {
        return Ok(encoded);
    };
    let shortened = shorten_dead_letter_error(dead_letter, excess);
    let encoded = Encoded::new(&shortened)?;
    if encoded.size <= MAX_MESSAGE_SIZE {
        return Ok(encoded);
    }
    tracing::warn!(
        message_id = shortened.id(),
        reason = shortened.headers().get(header::DEAD_LETTER_ERROR),
        size = encoded.size,
        limit = MAX_MESSAGE_SIZE,
        "sns-sqs: no room for the dead-letter headers; storing the dead letter as it was delivered"
    );
    let delivered = as_delivered(shortened);
    let mut encoded = Encoded::new(&delivered)?;
    let dropped = encoded.drop_own_attributes_to_fit(MAX_MESSAGE_SIZE);
    if !dropped.is_empty() {
        tracing::warn!(
            message_id = delivered.id(),
            ?dropped,
            size = encoded.size,
            limit = MAX_MESSAGE_SIZE,
            "sns-sqs: a dead letter at the size limit is stored without these attributes"
        );
    }
    Ok(encoded)
}

impl Drop for SqsAcknowledger {
    /// An unsettled delivery is released: visible again at once.
    fn drop(&mut self) {
        if !self.settled {
            let receipt = self.finish();
            self.link.settle(Settle::Visibility {
                receipt,
                seconds: 0,
                done: None,
            });
        }
    }
}

/// Reads one SQS queue: what [`SnsSqsChannel::consumer`](crate::SnsSqsChannel) and
/// `dead_letters` open.
pub struct SqsConsumer {
    subscription: Subscription,
    link: Arc<QueueLink>,
    deliveries: mpsc::Receiver<Result<Delivery<SqsAcknowledger>>>,
    closed: watch::Receiver<bool>,
}

impl SqsConsumer {
    /// Provisions the queue and starts the consumer's tasks.
    pub(crate) async fn open(
        inner: Arc<Inner>,
        subscription: Subscription,
        names: Names,
        kind: QueueKind,
    ) -> Result<Self> {
        inner.check_open()?;
        let dead_letters = inner.ensure_queue(&names.dead_letters).await?;
        let (queue, anonymous_subscription) = match &kind {
            QueueKind::Group(queue) => (inner.ensure_group(&names, queue).await?, None),
            QueueKind::DeadLetters => (dead_letters.clone(), None),
            QueueKind::Anonymous => {
                let topic_arn = inner.ensure_topic(&names.topic).await?;
                let random = uuid::Uuid::now_v7().simple().to_string();
                let name = names.anonymous_queue(&random[random.len() - 12..])?;
                let queue = inner.create_queue(&name).await?;
                match inner.subscribe(&topic_arn, &queue).await {
                    Ok(subscription) => (queue, Some(subscription)),
                    Err(err) => {
                        remove_anonymous(&inner, "", &queue.url).await;
                        return Err(err);
                    }
                }
            }
        };
        let (settler, settles) = mpsc::unbounded_channel();
        let settling = tokio::spawn(run_settler(
            inner.sqs.clone(),
            queue.url.clone(),
            settles,
            inner.config.batch_window,
            inner.config.operation_timeout,
        ));
        inner.register_settler(&settler, settling);
        let link = Arc::new(QueueLink {
            origin: Origin::new(subscription.destination(), subscription.group_name()),
            inner: inner.clone(),
            queue,
            dead_letter_url: dead_letters.url,
            leases: Mutex::new(HashMap::new()),
            settler,
            anonymous_subscription,
        });
        tokio::spawn(keep_leases(
            Arc::downgrade(&link),
            Duration::from_secs(whole_seconds(inner.config.visibility_timeout)),
        ));
        let (deliveries_tx, deliveries) =
            mpsc::channel(usize::from(subscription.prefetch_count()).max(1));
        inner.register_poller(tokio::spawn(poll(
            link.clone(),
            deliveries_tx,
            inner.closed(),
        )));
        Ok(SqsConsumer {
            subscription,
            link,
            deliveries,
            closed: inner.closed(),
        })
    }
}

impl fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConsumer")
            .field("subscription", &self.subscription)
            .field("queue", &self.link.queue.url)
            .finish_non_exhaustive()
    }
}

impl Consumer for SqsConsumer {
    type Acknowledger = SqsAcknowledger;

    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    async fn receive(&mut self) -> Result<Delivery<SqsAcknowledger>> {
        self.link.inner.check_open()?;
        tokio::select! {
            biased;
            _ = until_closed(&mut self.closed) => Err(SHUT_DOWN),
            received = poll_fn(|cx| poll_delivery(&mut self.deliveries, cx)) => received,
        }
    }

    /// The queue's approximate counts (`GetQueueAttributes`) added up: messages visible,
    /// not visible (in this consumer's buffer, handed out and not settled, or waiting out
    /// a nack's delay) and delayed. Settling is batched, so an ack shows here once its
    /// batch is sent.
    async fn backlog(&mut self) -> Result<Option<u64>> {
        self.link
            .inner
            .backlog(&self.link.queue.url)
            .await
            .map(Some)
    }

    /// What the poller has already received into the consumer's buffer, taken as
    /// `receive` takes it; `None` when the buffer is empty.
    fn try_receive(&mut self) -> Option<Result<Delivery<SqsAcknowledger>>> {
        if let Err(closed) = self.link.inner.check_open() {
            return Some(Err(closed));
        }
        // Polled as `receive` polls it, with nothing to wake: unlike `try_recv`, which
        // parks the thread while a send is under way, this never waits.
        let mut nothing_to_wake = TaskContext::from_waker(Waker::noop());
        match poll_delivery(&mut self.deliveries, &mut nothing_to_wake) {
            Poll::Ready(received) => Some(received),
            Poll::Pending => None,
        }
    }
}

/// The next delivery in a consumer's buffer; [`Error::ShutDown`] once the poller is gone.
fn poll_delivery(
    deliveries: &mut mpsc::Receiver<Result<Delivery<SqsAcknowledger>>>,
    cx: &mut TaskContext<'_>,
) -> Poll<Result<Delivery<SqsAcknowledger>>> {
    deliveries
        .poll_recv(cx)
        .map(|received| received.unwrap_or(Err(SHUT_DOWN)))
}

/// Receives into the consumer's buffer while it has room. A poll in flight when the
/// consumer goes is finished, and what it brings is released at once (visibility 0),
/// so nothing waits out a visibility timeout because a consumer left.
async fn poll(
    link: Arc<QueueLink>,
    deliveries: mpsc::Sender<Result<Delivery<SqsAcknowledger>>>,
    mut closed: watch::Receiver<bool>,
) {
    let config = &link.inner.config;
    let wait = i32::try_from(whole_seconds(config.wait_time)).unwrap_or(20);
    let visibility = i32::try_from(whole_seconds(config.visibility_timeout)).unwrap_or(i32::MAX);
    // Receive only when a whole batch fits: asking for whatever room is left makes more,
    // smaller requests (AWS bills per request).
    let batch = deliveries.max_capacity().min(MAX_BATCH);
    // A receive long-polls: its timeouts are the configured ones plus the wait time.
    let receive_timeouts = link.inner.receive_timeouts();
    let limit = receive_timeouts
        .operation_timeout()
        .unwrap_or(config.operation_timeout);
    let mut failures = 0u32;
    loop {
        let room = tokio::select! {
            permits = deliveries.reserve_many(batch) => match permits {
                Ok(permits) => {
                    drop(permits);
                    deliveries.capacity().min(MAX_BATCH)
                }
                Err(_) => return,
            },
            _ = until_closed(&mut closed) => return,
        };
        let received_at = Instant::now();
        let answer = link
            .inner
            .sqs
            .receive_message()
            .queue_url(&link.queue.url)
            .max_number_of_messages(i32::try_from(room).unwrap_or(1))
            .wait_time_seconds(wait)
            .visibility_timeout(visibility)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(receive_timeouts.clone()),
            )
            .send()
            .await;
        match answer {
            Ok(output) => {
                failures = 0;
                // Once the channel is closed, nothing takes them: dropped, they are
                // released.
                let closing = *closed.borrow();
                for message in output.messages.unwrap_or_default() {
                    if let Some(delivery) = link.delivery(message, received_at) {
                        // Refused only when the consumer has gone: the delivery is dropped,
                        // which releases its message.
                        if !closing {
                            let _ = deliveries.try_send(Ok(delivery));
                        }
                    }
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let error = error::request_within(
                    &format!("receiving from SQS queue {}", link.queue.url),
                    err,
                    limit,
                );
                if deliveries.send(Err(error)).await.is_err() {
                    return;
                }
                let pause = Duration::from_millis(100 << failures.min(6)).min(MAX_RECEIVE_BACKOFF);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = until_closed(&mut closed) => return,
                }
            }
        }
    }
}

/// Extends the visibility of every message held longer than half its visibility timeout,
/// checking four times per timeout; stops when the link is gone.
async fn keep_leases(link: Weak<QueueLink>, timeout: Duration) {
    let half = timeout / 2;
    let seconds = i32::try_from(whole_seconds(timeout)).unwrap_or(i32::MAX);
    let mut ticks = tokio::time::interval(timeout / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(link) = link.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<String> = lock(&link.leases)
            .iter_mut()
            .filter(|(_, started)| now.duration_since(**started) >= half)
            .map(|(receipt, started)| {
                *started = now;
                receipt.clone()
            })
            .collect();
        for receipt in due {
            link.settle(Settle::Visibility {
                receipt,
                seconds,
                done: None,
            });
        }
    }
}

/// Gathers settles into batch requests: up to 10 each, or what arrived within the batch
/// window. Requests run concurrently; a flush waits for all of them.
async fn run_settler(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    mut settles: mpsc::UnboundedReceiver<Settle>,
    window: Duration,
    limit: Duration,
) {
    let mut in_flight = JoinSet::new();
    while let Some(first) = settles.recv().await {
        let mut deletes = Vec::new();
        let mut changes = Vec::new();
        let mut flushes = Vec::new();
        let deadline = Instant::now() + window;
        let mut next = Some(first);
        while let Some(settle) = next.take() {
            match settle {
                Settle::Delete(receipt) => deletes.push(receipt),
                Settle::Visibility {
                    receipt,
                    seconds,
                    done,
                } => changes.push((receipt, seconds, done)),
                Settle::Flush(done) => {
                    flushes.push(done);
                    break;
                }
            }
            if deletes.len() >= MAX_BATCH || changes.len() >= MAX_BATCH {
                break;
            }
            next = match settles.try_recv() {
                Ok(settle) => Some(settle),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if window.is_zero() => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, settles.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
        }
        if !deletes.is_empty() {
            in_flight.spawn(delete_batch(sqs.clone(), queue_url.clone(), deletes));
        }
        if !changes.is_empty() {
            in_flight.spawn(change_visibility_batch(
                sqs.clone(),
                queue_url.clone(),
                changes,
                limit,
            ));
        }
        while in_flight.try_join_next().is_some() {}
        if !flushes.is_empty() {
            while in_flight.join_next().await.is_some() {}
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn delete_batch(sqs: aws_sdk_sqs::Client, queue_url: String, receipts: Vec<String>) {
    let entries: Vec<_> = receipts
        .into_iter()
        .enumerate()
        .filter_map(|(index, receipt)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt)
                .build()
                .ok()
        })
        .collect();
    let count = entries.len();
    match sqs
        .delete_message_batch()
        .queue_url(&queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(output) => {
            for failed in output.failed() {
                tracing::warn!(
                    queue = %queue_url,
                    code = failed.code(),
                    message = failed.message(),
                    "SQS did not delete a handled message; it will be delivered again"
                );
            }
        }
        Err(err) => tracing::warn!(
            error = %error::request(&format!("deleting {count} handled messages from {queue_url}"), err),
            "they will be delivered again"
        ),
    }
}

type Change = (String, i32, Option<oneshot::Sender<Result<()>>>);

async fn change_visibility_batch(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    changes: Vec<Change>,
    limit: Duration,
) {
    let mut entries = Vec::with_capacity(changes.len());
    let mut waiting = Vec::with_capacity(changes.len());
    for (index, (receipt, seconds, done)) in changes.into_iter().enumerate() {
        let entry = ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(index.to_string())
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .build();
        match entry {
            Ok(entry) => {
                entries.push(entry);
                waiting.push((index.to_string(), done));
            }
            Err(err) => {
                if let Some(done) = done {
                    let _ = done.send(Err(Error::Encode(err.into())));
                }
            }
        }
    }
    let what = format!("changing the visibility of messages in {queue_url}");
    let answer = sqs
        .change_message_visibility_batch()
        .queue_url(&queue_url)
        .set_entries(Some(entries))
        .send()
        .await;
    match answer {
        Ok(output) => {
            for (id, done) in waiting {
                let failed = output.failed().iter().find(|f| f.id() == id);
                if let Some(failed) = failed {
                    tracing::debug!(queue = %queue_url, code = failed.code(), "a visibility change was refused");
                }
                if let Some(done) = done {
                    let _ = done.send(match failed {
                        Some(failed) => Err(error::entry(&what, failed.code(), failed.message())),
                        None => Ok(()),
                    });
                }
            }
        }
        Err(err) => {
            let err = error::request_within(&what, err, limit);
            tracing::debug!(error = %err, "visibility changes failed");
            for (_, done) in waiting {
                if let Some(done) = done {
                    let _ = done.send(Err(error::duplicate(&err)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A foreign producer's message of exactly the largest size (a body and nothing
    /// else), decoded as the consumer does and dead-lettered as the runtime does.
    #[test]
    fn a_foreign_message_at_the_size_limit_still_fits_as_a_dead_letter() {
        let body = "x".repeat(MAX_MESSAGE_SIZE);
        let delivered = convert::decode(
            Some(&body),
            &HashMap::new(),
            "6f1c2d3e-0000-4000-8000-000000000000",
            Some(1_700_000_000_000),
        );
        let dead_letter = delivered
            .clone()
            .with_header(header::DEAD_LETTER_ERROR, "it failed")
            .with_header(header::DEAD_LETTER_ATTEMPTS, "3");
        let encoded = fit_dead_letter(dead_letter).unwrap();
        assert!(
            encoded.size <= MAX_MESSAGE_SIZE,
            "{} bytes, over the limit of {MAX_MESSAGE_SIZE}",
            encoded.size
        );
        assert_eq!(encoded.body, body, "the payload is kept whole");

        // One with room for its id keeps it, and only the timestamp goes.
        let roomy = convert::decode(
            Some(&body[..MAX_MESSAGE_SIZE - 60]),
            &HashMap::new(),
            "6f1c2d3e-0000-4000-8000-000000000000",
            Some(1_700_000_000_000),
        );
        let encoded = fit_dead_letter(roomy.with_header(header::DEAD_LETTER_ERROR, "e")).unwrap();
        assert!(encoded.size <= MAX_MESSAGE_SIZE);
        let names: Vec<&str> = encoded.attributes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [header::MESSAGE_ID]);
    }

    #[test]
    fn a_visibility_never_passes_twelve_hours_from_the_receive() {
        assert_eq!(visibility_left(Duration::ZERO), 43_200);
        assert_eq!(visibility_left(Duration::from_millis(1)), 43_199);
        assert_eq!(visibility_left(Duration::from_secs(43_200)), 0);
        assert_eq!(visibility_left(Duration::MAX), 0);
    }
}
