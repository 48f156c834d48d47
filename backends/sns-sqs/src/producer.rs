//! Publishing: sends wait briefly for others to share a PublishBatch request.

use crate::channel::{until_closed, Inner};
use crate::config::MAX_MESSAGE_SIZE;
use crate::convert::{direct_deduplication_id, fifo_deduplication_id, fifo_group_id, Encoded};
use crate::error::{self, BACKEND};
use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use event_binder_core::{Error, Message, Producer, Result};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The most entries of one PublishBatch or SendMessageBatch request.
const MAX_BATCH: usize = 10;
/// The most PublishBatch requests in flight for one standard topic (a FIFO topic has one,
/// so a key's messages reach it in order).
const MAX_IN_FLIGHT: usize = 16;

/// One message waiting for its PublishBatch request.
struct Pending {
    encoded: Encoded,
    /// The message group and deduplication ids, for a FIFO topic.
    fifo: Option<(String, String)>,
    done: oneshot::Sender<Result<()>>,
}

/// The publish batcher of one topic: a task gathering sends into PublishBatch requests.
#[derive(Clone)]
pub(crate) struct PublishQueue {
    sender: mpsc::UnboundedSender<Pending>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl PublishQueue {
    /// Starts the batcher of a topic.
    pub(crate) fn start(inner: Arc<Inner>, topic_arn: String, fifo: bool) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let batcher = Batcher {
            sns: inner.sns.clone(),
            topic_arn,
            window: inner.config.batch_window,
            limit: inner.config.operation_timeout,
            max_in_flight: if fifo { 1 } else { MAX_IN_FLIGHT },
        };
        // The task holds no reference to the channel, so a channel dropped without
        // `close` ends it: the sender in the channel's table goes with it.
        let task = tokio::spawn(batcher.run(receiver, inner.closed()));
        PublishQueue {
            sender,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Waits for the batcher to send what is queued and stop (after the channel closed).
    pub(crate) async fn finish(self) {
        let task = crate::channel::lock(&self.task).take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::warn!(%err, "the publish batcher of an SNS topic failed");
            }
        }
    }

    /// Queues a message for the next PublishBatch request; the receiver gets its answer.
    fn enqueue(
        &self,
        encoded: Encoded,
        fifo: Option<(String, String)>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (done, answer) = oneshot::channel();
        self.sender
            .send(Pending {
                encoded,
                fifo,
                done,
            })
            .map_err(|_| Error::ShutDown("the sns-sqs channel"))?;
        Ok(answer)
    }
}

/// Waits for the answer to a queued message.
async fn answer(receiver: oneshot::Receiver<Result<()>>) -> Result<()> {
    receiver
        .await
        .unwrap_or(Err(Error::ShutDown("the sns-sqs channel")))
}

struct Batcher {
    sns: aws_sdk_sns::Client,
    topic_arn: String,
    window: Duration,
    /// The operation timeout, for the errors of requests that got no answer.
    limit: Duration,
    max_in_flight: usize,
}

impl Batcher {
    async fn run(
        self,
        mut receiver: mpsc::UnboundedReceiver<Pending>,
        mut closed: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let mut in_flight = JoinSet::new();
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(pending) => pending,
                None => tokio::select! {
                    received = receiver.recv() => match received {
                        Some(pending) => pending,
                        None => break,
                    },
                    // Closed (or the channel dropped): send what is queued, then stop.
                    _ = until_closed(&mut closed) => {
                        receiver.close();
                        match receiver.recv().await {
                            Some(pending) => pending,
                            None => break,
                        }
                    }
                },
            };
            let mut size = first.encoded.size;
            let mut batch = vec![first];
            let deadline = Instant::now() + this.window;
            while batch.len() < MAX_BATCH {
                let next = match receiver.try_recv() {
                    Ok(pending) => Some(pending),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) if this.window.is_zero() => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, receiver.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                };
                let Some(next) = next else { break };
                // SNS counts the whole batch against the 256 KiB limit.
                if size + next.encoded.size > MAX_MESSAGE_SIZE {
                    carried = Some(next);
                    break;
                }
                size += next.encoded.size;
                batch.push(next);
            }
            while in_flight.len() >= this.max_in_flight {
                in_flight.join_next().await;
            }
            let batcher = this.clone();
            in_flight.spawn(async move { batcher.send(batch).await });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Sends one PublishBatch request and answers every sender.
    async fn send(&self, batch: Vec<Pending>) {
        let mut entries = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for (index, pending) in batch.into_iter().enumerate() {
            let Pending {
                encoded,
                fifo,
                done,
            } = pending;
            let attributes = encoded.sns_attributes();
            let (group_id, deduplication_id) = fifo.unzip();
            let entry = PublishBatchRequestEntry::builder()
                .id(index.to_string())
                .message(encoded.body)
                .set_message_attributes(Some(attributes))
                .set_message_group_id(group_id)
                .set_message_deduplication_id(deduplication_id)
                .build();
            match entry {
                Ok(entry) => {
                    entries.push(entry);
                    waiting.push((index.to_string(), done));
                }
                Err(err) => {
                    let _ = done.send(Err(Error::Encode(err.into())));
                }
            }
        }
        if entries.is_empty() {
            return;
        }
        let what = format!("publishing to SNS topic {}", self.topic_arn);
        let answer = self
            .sns
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match answer {
            Ok(output) => {
                for (id, done) in waiting {
                    let result = if output.successful().iter().any(|ok| ok.id() == Some(&id)) {
                        Ok(())
                    } else if let Some(failed) = output.failed().iter().find(|f| f.id() == id) {
                        Err(error::entry(&what, failed.code(), failed.message()))
                    } else {
                        Err(Error::broker(
                            BACKEND,
                            format!("{what}: the answer does not mention the message"),
                        ))
                    };
                    let _ = done.send(result);
                }
            }
            Err(err) => {
                let err = error::request_within(&what, err, self.limit);
                for (_, done) in waiting {
                    let _ = done.send(Err(error::duplicate(&err)));
                }
            }
        }
    }
}

/// Sends to one destination's topic, through the topic's batcher: what
/// [`SnsSqsChannel::producer`](crate::SnsSqsChannel) opens.
pub struct SnsProducer {
    inner: Arc<Inner>,
    destination: String,
    queue: PublishQueue,
    fifo: bool,
}

impl SnsProducer {
    pub(crate) fn new(
        inner: Arc<Inner>,
        destination: String,
        queue: PublishQueue,
        fifo: bool,
    ) -> Self {
        SnsProducer {
            inner,
            destination,
            queue,
            fifo,
        }
    }

    /// Encodes a message and checks its size, before anything is sent.
    fn prepare(&self, message: &Message) -> Result<Outgoing> {
        self.inner.check_open()?;
        Outgoing::new(message, self.fifo)
    }
}

impl fmt::Debug for SnsProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsProducer")
            .field("destination", &self.destination)
            .field("fifo", &self.fifo)
            .finish_non_exhaustive()
    }
}

impl Producer for SnsProducer {
    fn destination(&self) -> &str {
        &self.destination
    }

    /// Returns once SNS has accepted the message (the PublishBatch answer).
    async fn send(&self, message: Message) -> Result<()> {
        let outgoing = self.prepare(&message)?;
        answer(self.queue.enqueue(outgoing.encoded, outgoing.fifo)?).await
    }

    /// Checks every message first (nothing is sent if one is refused), then queues all of
    /// them at once, so they share PublishBatch requests, and waits for every answer.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        let prepared = messages
            .iter()
            .map(|message| self.prepare(message))
            .collect::<Result<Vec<_>>>()?;
        let answers = prepared
            .into_iter()
            .map(|outgoing| self.queue.enqueue(outgoing.encoded, outgoing.fifo))
            .collect::<Result<Vec<_>>>()?;
        let mut first_error = None;
        for receiver in answers {
            if let Err(err) = answer(receiver).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A message ready to go, checked before anything is sent: encoded, within the size
/// limit, with its FIFO ids on a FIFO destination.
pub(crate) struct Outgoing {
    id: String,
    encoded: Encoded,
    /// The message group and deduplication ids, for a FIFO destination.
    fifo: Option<(String, String)>,
}

impl Outgoing {
    /// Encodes a message for a topic.
    pub(crate) fn new(message: &Message, fifo: bool) -> Result<Self> {
        let ids = fifo.then(|| (fifo_group_id(message), fifo_deduplication_id(message)));
        Self::with_fifo_ids(message, ids)
    }

    /// Encodes a message for one group's queue of a topic, sent there directly: see
    /// [`direct_deduplication_id`] for why its deduplication id differs.
    pub(crate) fn direct(message: &Message, fifo: bool) -> Result<Self> {
        let ids = fifo.then(|| (fifo_group_id(message), direct_deduplication_id(message)));
        Self::with_fifo_ids(message, ids)
    }

    fn with_fifo_ids(message: &Message, fifo: Option<(String, String)>) -> Result<Self> {
        let encoded = Encoded::new(message)?;
        let size = encoded.size.max(message.encoded_len());
        if size > MAX_MESSAGE_SIZE {
            return Err(Error::PayloadTooLarge {
                actual: size,
                limit: MAX_MESSAGE_SIZE,
            });
        }
        Ok(Outgoing {
            id: message.id().to_owned(),
            encoded,
            fifo,
        })
    }
}

/// Sends messages straight to one SQS queue, bypassing its topic, in SendMessageBatch
/// requests of up to 10 entries and 256 KiB. The queue is subscribed with raw message
/// delivery, so a body and attributes sent here are what a publish would have put there,
/// and its consumers decode both alike. Requests go one after the other, so that a FIFO
/// queue gets a key's messages in order; the first that fails, or has an entry refused,
/// ends the send with an error naming every message of it not accepted; later ones are
/// not sent, and the error tells the caller to send them again.
pub(crate) async fn send_to_queue(
    inner: &Inner,
    queue_url: &str,
    outgoing: Vec<Outgoing>,
) -> Result<()> {
    let what = format!("sending to SQS queue {queue_url}");
    let mut outgoing = outgoing.into_iter().peekable();
    while let Some(first) = outgoing.next() {
        // SQS counts the whole batch against the 256 KiB limit, as SNS does.
        let mut size = first.encoded.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match outgoing.next_if(|next| size + next.encoded.size <= MAX_MESSAGE_SIZE) {
                Some(next) => {
                    size += next.encoded.size;
                    batch.push(next);
                }
                None => break,
            }
        }
        inner.check_open()?;
        send_message_batch(inner, queue_url, &what, batch).await?;
    }
    Ok(())
}

/// Sends one SendMessageBatch request; an error unless SQS accepted every entry.
async fn send_message_batch(
    inner: &Inner,
    queue_url: &str,
    what: &str,
    batch: Vec<Outgoing>,
) -> Result<()> {
    let mut entries = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(batch.len());
    for (index, outgoing) in batch.into_iter().enumerate() {
        let Outgoing { id, encoded, fifo } = outgoing;
        let attributes = encoded.sqs_attributes();
        let (group_id, deduplication_id) = fifo.unzip();
        let entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(encoded.body)
            .set_message_attributes(Some(attributes))
            .set_message_group_id(group_id)
            .set_message_deduplication_id(deduplication_id)
            .build()
            .map_err(|err| Error::Encode(err.into()))?;
        entries.push(entry);
        ids.push(id);
    }
    let output = inner
        .sqs
        .send_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|err| inner.request_error(what, err))?;
    let refused: Vec<String> = ids
        .iter()
        .enumerate()
        .filter_map(|(index, id)| {
            let index = index.to_string();
            if output.successful().iter().any(|ok| ok.id() == index) {
                return None;
            }
            Some(match output.failed().iter().find(|f| f.id() == index) {
                Some(failed) => format!(
                    "message {id:?}: {} ({})",
                    failed.code(),
                    failed.message().unwrap_or("no message")
                ),
                None => format!("message {id:?}: the answer does not mention it"),
            })
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::broker(
        BACKEND,
        format!(
            "{what}: {} of the {} messages of a request not accepted (the messages after \
             them were not sent): {}",
            refused.len(),
            ids.len(),
            refused.join("; ")
        ),
    ))
}
