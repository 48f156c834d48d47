//! [`KafkaConsumer`]: one librdkafka consumer per event-binder consumer, polled without
//! pause by a thread of its own, with the bookkeeping that turns per-message acks into
//! per-partition offsets.
//!
//! Kafka commits a position per partition, not single messages, and cannot un-read a
//! record. So each consumer keeps, per partition, the offsets it has read and not yet
//! settled (`pending`): the position committed is always the lowest pending one (or,
//! with none pending, the one after the last read), so a message is never committed past
//! before it was handled, whatever order concurrent handlers finish in. A nacked (or
//! dropped) delivery waits in a local redelivery queue and comes back from this consumer,
//! its attempt count one higher.
//!
//! The poller thread calls librdkafka's poll continuously, whatever the handlers do, so
//! the member never misses `max.poll.interval.ms` and its rebalance callbacks run on time.
//! It hands records to [`KafkaConsumer::receive`] (and to its no-waiting twin
//! `try_receive`, the runtime's fast path) in batches through a channel; once
//! the read-ahead limit is reached it pauses the assigned partitions (librdkafka then
//! fetches nothing more) and goes on polling, and it resumes them once half of what was
//! read ahead has been taken (a resumed partition's first fetch can take librdkafka's
//! `fetch.wait.max.ms`, so resuming early keeps the handlers fed).

use crate::channel::{shut_down, Inner};
use crate::convert::message_from;
use crate::error::{self, BACKEND};
use crate::names::Names;
use crate::producer::send_to;
use event_binder_core::{
    Acknowledger, Consumer, DeadLetterFailed, Delivery, Error, Message, Origin, Result,
    Subscription,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch, Notify};

/// What a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A group's topic, as the group's consumer group.
    Group,
    /// A topic from its end, with a consumer group of its own and no commits.
    Anonymous,
    /// A dead-letter topic, as the consumer group of the same name.
    DeadLetters,
}

type Client = BaseConsumer<Context>;

/// The most payload bytes the poller reads ahead before it
/// pauses the partitions, whatever the read-ahead count.
pub(crate) const READ_AHEAD_BYTES: usize = 64 * 1024 * 1024;
/// The longest the poller waits in one poll when it has nothing to hand over.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The shortest: the poller never spins, even with a commit interval of zero.
const MIN_POLL: Duration = Duration::from_millis(5);
/// The longest a nacked delivery waits before it is handed out again: a longer delay (up
/// to [`Duration::MAX`]) is taken as this one. Meanwhile its offset holds back its
/// partition's commit.
pub(crate) const MAX_NACK_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Yields deliveries for one subscription: what [`KafkaChannel::consumer`](crate::KafkaChannel)
/// and `dead_letters` open.
pub struct KafkaConsumer {
    subscription: Subscription,
    topic: Arc<str>,
    group_id: String,
    client: Arc<Client>,
    tracker: Arc<Tracker>,
    origin: Arc<Origin>,
    dead_letters: Arc<DeadLetterTarget>,
    closed: watch::Receiver<bool>,
    /// What the poller thread read, in batches; closing it stops the thread, which leaves
    /// the group.
    records: mpsc::UnboundedReceiver<Vec<Read>>,
    /// The records of the last batch taken, not handed out yet.
    taken: VecDeque<Read>,
    /// How much `records` holds.
    read_ahead: Arc<ReadAhead>,
    /// The poller thread, joined when the consumer is dropped.
    poller: Option<std::thread::JoinHandle<()>>,
    /// Where an anonymous consumer was assigned each partition (its end then): where it
    /// starts reading. Empty for the others, which start at the group's committed offset.
    assigned_at: HashMap<i32, i64>,
    /// How long a metadata or offset request may take (the connect timeout).
    request_timeout: Duration,
}

/// Where the dead letters of a consumer's deliveries go.
struct DeadLetterTarget {
    inner: Arc<Inner>,
    topic: String,
}

impl KafkaConsumer {
    /// Creates the topics it needs, joins the group (or, anonymous, assigns every
    /// partition at its current end), starts the poller thread and returns once the
    /// subscription is active.
    pub(crate) async fn open(
        inner: Arc<Inner>,
        subscription: Subscription,
        names: Names,
        role: Role,
    ) -> Result<Self> {
        inner.check_open()?;
        let (topic, group_id) = match role {
            Role::Group => (names.topic.clone(), names.group.clone().unwrap_or_default()),
            Role::Anonymous => (
                names.topic.clone(),
                format!(
                    "{}..anonymous.{}",
                    names.topic,
                    uuid::Uuid::now_v7().simple()
                ),
            ),
            Role::DeadLetters => (names.dead_letters.clone(), names.dead_letter_group()),
        };
        inner.ensure_topic(&topic).await?;
        inner.ensure_topic(&names.dead_letters).await?;
        let commits = role != Role::Anonymous;
        let tracker = Arc::new(Tracker::new(
            topic.clone(),
            role,
            inner.config.drain_timeout,
            inner.config.commit_interval,
        ));
        let config = inner.config.consumer_config(&group_id, commits);
        let secrets = inner.secrets();
        let client: Client = config
            .create_with_context(Context {
                tracker: tracker.clone(),
            })
            .map_err(|err| error::creation("creating a consumer", &err, &secrets))?;
        let client = Arc::new(client);
        let assigned_at = if commits {
            client.subscribe(&[&topic]).map_err(|err| {
                error::broker(&format!("subscribing to topic {topic}"), &err, &secrets)
            })?;
            HashMap::new()
        } else {
            assign_at_end(&inner, &client, &topic).await?
        };
        let (sender, records) = mpsc::unbounded_channel();
        let read_ahead = Arc::new(ReadAhead::default());
        let poller = Poller {
            client: client.clone(),
            tracker: tracker.clone(),
            records: sender,
            closed: inner.closed(),
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            group_id: group_id.clone(),
            group: subscription.group_name().map(str::to_owned),
            read_ahead: read_ahead.clone(),
            limit: inner.config.read_ahead.max(1),
            paused: false,
        };
        let poller = std::thread::Builder::new()
            .name(format!("kafka-poll-{topic}"))
            .spawn(move || poller.run())
            .map_err(|err| {
                Error::broker(
                    BACKEND,
                    format!("starting the poller thread of a consumer of topic {topic}: {err}"),
                )
            })?;
        let dead_letters = Arc::new(DeadLetterTarget {
            topic: names.dead_letters.clone(),
            inner: inner.clone(),
        });
        let consumer = KafkaConsumer {
            origin: Origin::new(subscription.destination(), subscription.group_name()),
            subscription,
            topic: topic.into(),
            group_id,
            client,
            tracker,
            dead_letters,
            closed: inner.closed(),
            records,
            taken: VecDeque::new(),
            read_ahead,
            poller: Some(poller),
            assigned_at,
            request_timeout: inner.config.connect_timeout,
        };
        if role == Role::DeadLetters {
            // Time to reach the coordinator, plus time for a member already in the group to
            // settle its deliveries before it gives its partitions up.
            consumer
                .joined(inner.config.connect_timeout + inner.config.drain_timeout)
                .await?;
        }
        Ok(consumer)
    }

    /// Waits (up to `limit`) until the group has assigned this consumer its partitions.
    /// A dead-letter queue is read until a receive brings nothing for a while (a redrive
    /// stops there): before the join, which takes seconds (a new group's rebalance
    /// delay), it would look empty.
    async fn joined(&self, limit: Duration) -> Result<()> {
        let mut joined = self.tracker.joined.subscribe();
        // The sender lives in the tracker this consumer holds: the wait ends by the join or
        // by the limit, never by a closed channel.
        let in_time = tokio::time::timeout(limit, joined.wait_for(|joined| *joined))
            .await
            .is_ok();
        if in_time {
            return Ok(());
        }
        Err(Error::Timeout {
            what: format!(
                "joining consumer group {} to read topic {}",
                self.group_id, self.topic
            ),
            after: limit,
        })
    }

    /// What [`receive`](Consumer::receive) returns without waiting, in its order: the
    /// shutdown error once the channel is closed, else a redelivery that is due, else the
    /// next record taken (the batches the poller has already handed over are taken
    /// meanwhile, with no waiting), else the error of a poller that stopped. `Continue`
    /// when it would have to wait, with when the next redelivery is due (if one is queued).
    /// Shared by `receive` and [`try_receive`](Consumer::try_receive); cancel safe, as it
    /// never waits: a batch leaves the channel only into `taken`.
    fn now(&mut self) -> ControlFlow<Result<Delivery<KafkaAcknowledger>>, Option<Instant>> {
        loop {
            if *self.closed.borrow() {
                return ControlFlow::Break(Err(shut_down()));
            }
            let due = match self.tracker.next(Instant::now(), &mut self.taken) {
                Next::Redelivery(redelivery) => {
                    return ControlFlow::Break(Ok(self.delivery(
                        redelivery.message,
                        redelivery.at,
                        redelivery.attempt,
                    )));
                }
                Next::Read(Read { message, at }) => {
                    return ControlFlow::Break(Ok(self.delivery(message, at, 1)));
                }
                Next::DueAt(due) => Some(due),
                Next::Nothing => None,
            };
            // `taken` is empty now: take the next batch, if the poller handed one over.
            match self.records.try_recv() {
                Ok(batch) => self.take(batch),
                Err(TryRecvError::Empty) => return ControlFlow::Continue(due),
                Err(TryRecvError::Disconnected) => {
                    return ControlFlow::Break(Err(self.stopped_polling()));
                }
            }
        }
    }

    /// Takes a batch the poller handed over, to be handed out after the records taken
    /// before it.
    fn take(&mut self, batch: Vec<Read>) {
        self.read_ahead.count(&batch, false);
        self.taken.extend(batch);
    }

    /// The error once the poller thread has stopped (and closed its channel).
    fn stopped_polling(&self) -> Error {
        Error::broker(
            BACKEND,
            format!(
                "the consumer of topic {} (group {}) stopped polling",
                self.topic, self.group_id
            ),
        )
    }

    fn delivery(
        &self,
        message: Arc<Message>,
        at: Position,
        attempt: u32,
    ) -> Delivery<KafkaAcknowledger> {
        let acker = KafkaAcknowledger {
            client: self.client.clone(),
            tracker: self.tracker.clone(),
            dead_letters: self.dead_letters.clone(),
            message: message.clone(),
            at,
            attempt,
            settled: false,
        };
        Delivery::new(message, attempt, self.origin.clone(), acker)
    }
}

impl Drop for KafkaConsumer {
    /// Stops the poller thread and waits for it to leave the group, as dropping a
    /// librdkafka consumer does: the revocation first waits (up to the drain timeout) for
    /// the deliveries still out and commits what was handled. On a multi-threaded tokio
    /// runtime the wait lets the worker's other tasks (the handlers settling) move
    /// elsewhere meanwhile.
    fn drop(&mut self) {
        self.records.close();
        let Some(poller) = self.poller.take() else {
            return;
        };
        let join = move || {
            if poller.join().is_err() {
                tracing::warn!("the poller thread of a kafka consumer panicked");
            }
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(join),
            _ => join(),
        }
    }
}

/// Assigns every partition of `topic` at its high watermark, read now: whatever is
/// published once this returns is seen, nothing before. Returns those watermarks.
async fn assign_at_end(
    inner: &Inner,
    client: &Arc<Client>,
    topic: &str,
) -> Result<HashMap<i32, i64>> {
    let client = client.clone();
    let topic_name = topic.to_owned();
    let timeout = inner.config.connect_timeout;
    let assigned = tokio::task::spawn_blocking(move || {
        let metadata = client.fetch_metadata(Some(&topic_name), timeout)?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in partitions_of(&metadata, &topic_name) {
            let (_, high) = client.fetch_watermarks(&topic_name, partition, timeout)?;
            assignment.add_partition_offset(&topic_name, partition, Offset::Offset(high))?;
            ends.insert(partition, high);
        }
        client.assign(&assignment)?;
        Ok::<_, rdkafka::error::KafkaError>(ends)
    })
    .await
    .map_err(|err| Error::broker(BACKEND, format!("assigning topic {topic} failed: {err}")))?;
    match assigned {
        Ok(ends) if ends.is_empty() => Err(Error::broker(
            BACKEND,
            format!("topic {topic} has no partitions in the cluster's metadata"),
        )),
        Ok(ends) => Ok(ends),
        Err(err) => Err(error::broker(
            &format!("assigning the partitions of topic {topic} at their end"),
            &err,
            &inner.secrets(),
        )),
    }
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("subscription", &self.subscription)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

/// A record read by the poller, waiting to be handed out.
struct Read {
    message: Arc<Message>,
    at: Position,
}

/// What the poller has put in the channel and the consumer has not taken yet.
#[derive(Debug, Default)]
struct ReadAhead {
    records: AtomicUsize,
    /// Of payload.
    bytes: AtomicUsize,
}

impl ReadAhead {
    /// Counts a batch put in the channel (`added`) or taken from it.
    fn count(&self, batch: &[Read], added: bool) {
        let bytes: usize = batch.iter().map(|read| read.message.payload().len()).sum();
        if added {
            self.records.fetch_add(batch.len(), Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.records.fetch_sub(batch.len(), Ordering::Relaxed);
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Whether at least `limit` records (or [`READ_AHEAD_BYTES`]), each divided by
    /// `divisor`, are read ahead.
    fn over(&self, limit: usize, divisor: usize) -> bool {
        self.records.load(Ordering::Relaxed) >= limit / divisor
            || self.bytes.load(Ordering::Relaxed) >= READ_AHEAD_BYTES / divisor
    }
}

/// The most records the poller takes from librdkafka at once (one hand-over).
const BATCH: usize = 128;

/// The thread that drives one librdkafka consumer: polls it without pause (serving
/// heartbeats, `max.poll.interval.ms` and rebalances), hands the records read to the
/// consumer in batches, and commits handled positions once per interval.
struct Poller {
    client: Arc<Client>,
    tracker: Arc<Tracker>,
    records: mpsc::UnboundedSender<Vec<Read>>,
    closed: watch::Receiver<bool>,
    secrets: Vec<String>,
    group_id: String,
    /// The logical group of the subscription (`None`: anonymous): the records addressed to
    /// another group (see [`GROUP_HEADER`](crate::GROUP_HEADER)) are skipped.
    group: Option<String>,
    /// What the channel holds.
    read_ahead: Arc<ReadAhead>,
    /// The most records read ahead before the partitions are paused.
    limit: usize,
    /// Whether the assigned partitions are paused: from when `limit` records (or
    /// [`READ_AHEAD_BYTES`]) are read ahead until half of them are taken. Resuming that
    /// early keeps the handlers fed while librdkafka fetches again.
    paused: bool,
}

impl Poller {
    /// Polls until the consumer is dropped or the channel closes, then leaves the group
    /// (whose revocation waits for the deliveries out and commits, as in a rebalance).
    fn run(mut self) {
        let idle = self.tracker.commit_interval.clamp(MIN_POLL, IDLE_POLL);
        let mut batch: Vec<(i32, i64, Option<Message>)> = Vec::with_capacity(BATCH);
        while !self.records.is_closed() && !*self.closed.borrow() {
            if self.paused && !self.read_ahead.over(self.limit, 2) {
                self.pause_or_resume(false);
            }
            self.tracker.commit_if_due(&self.client);
            // Wait for a first record, then take what librdkafka has ready.
            let mut wait = if self.paused { MIN_POLL } else { idle };
            while batch.len() < BATCH {
                match self.client.poll(wait) {
                    None => break,
                    Some(Ok(record)) => {
                        let message = message_from(&record, self.group.as_deref());
                        batch.push((record.partition(), record.offset(), message));
                    }
                    Some(Err(err)) => {
                        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
                        tracing::warn!(
                            topic = %self.tracker.topic,
                            group = %self.group_id,
                            error = %event_binder_core::hide_secrets(&err.to_string(), &secrets),
                            "kafka consumer error; librdkafka retries by itself"
                        );
                        break;
                    }
                }
                wait = Duration::ZERO;
            }
            if batch.is_empty() {
                continue;
            }
            let reads = self.tracker.read(batch.drain(..));
            if reads.is_empty() {
                // Every record was for another group: nothing to hand over.
                continue;
            }
            self.read_ahead.count(&reads, true);
            if self.records.send(reads).is_err() {
                break;
            }
            if !self.paused && self.read_ahead.over(self.limit, 1) {
                self.pause_or_resume(true);
            }
        }
        self.close();
    }

    /// Pauses (or resumes) every partition assigned now.
    fn pause_or_resume(&mut self, pause: bool) {
        let done = self.client.assignment().and_then(|assignment| {
            if pause {
                self.client.pause(&assignment)
            } else {
                self.client.resume(&assignment)
            }
        });
        match done {
            Ok(()) => self.paused = pause,
            Err(err) => {
                tracing::warn!(topic = %self.tracker.topic, error = %err, pause, "pausing or resuming the partitions failed");
            }
        }
    }

    /// Leaves the group here, on this thread: the revocation waits (up to the drain
    /// timeout) for the deliveries still out and commits what was handled.
    fn close(self) {
        if let Err(err) = self.client.close_queue() {
            tracing::debug!(topic = %self.tracker.topic, error = %err, "closing the consumer failed");
            return;
        }
        while !self.client.closed() {
            self.client.poll(IDLE_POLL);
        }
    }
}

/// The partitions of `topic` in `metadata`.
fn partitions_of<'a>(metadata: &'a Metadata, topic: &'a str) -> impl Iterator<Item = i32> + 'a {
    metadata
        .topics()
        .iter()
        .filter(move |t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .map(|partition| partition.id())
}

/// What [`KafkaConsumer::backlog`] counts, with blocking requests.
fn backlog(
    client: &Client,
    tracker: &Tracker,
    assigned_at: &HashMap<i32, i64>,
    timeout: Duration,
) -> KafkaResult<u64> {
    let topic = tracker.topic.as_str();
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = partitions_of(&metadata, topic).collect();
    let committed = if tracker.commits {
        let mut list = TopicPartitionList::new();
        for &partition in &partitions {
            list.add_partition(topic, partition);
        }
        client.committed_offsets(list, timeout)?
    } else {
        TopicPartitionList::new()
    };
    let mut total = 0u64;
    for partition in partitions {
        let (low, high) = client.fetch_watermarks(topic, partition, timeout)?;
        let group = committed
            .find_partition(topic, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            });
        let start = tracker
            .position(partition)
            .or(group)
            .or_else(|| assigned_at.get(&partition).copied())
            .unwrap_or(low);
        total = total.saturating_add(u64::try_from(high - start.max(low)).unwrap_or(0));
    }
    Ok(total)
}

impl Consumer for KafkaConsumer {
    type Acknowledger = KafkaAcknowledger;

    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Redeliveries that are due come first, then records in the order librdkafka hands
    /// them over. Cancel safe: a record is taken from the buffer only when it is returned.
    /// Errors librdkafka reports while consuming (a broker that went away, a topic not yet
    /// in the metadata) are logged and waited out: it recovers by itself.
    async fn receive(&mut self) -> Result<Delivery<KafkaAcknowledger>> {
        loop {
            // Without registering for wake-ups first when something is ready (the fast path);
            // else registered, then asked again, so that no redelivery queued meanwhile is
            // missed.
            if let ControlFlow::Break(received) = self.now() {
                return received;
            }
            // Held apart from `self`, which the steps below borrow mutably (the slow path
            // only: this is an atomic count).
            let tracker = self.tracker.clone();
            let woken = tracker.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let next_due = match self.now() {
                ControlFlow::Break(received) => return received,
                ControlFlow::Continue(due) => due,
            };
            let due = async move {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut closed = self.closed.clone();
            tokio::select! {
                biased;
                _ = closed.wait_for(|closed| *closed) => {
                    return Err(shut_down());
                }
                () = &mut woken => {}
                () = due => {}
                batch = self.records.recv() => match batch {
                    Some(batch) => self.take(batch),
                    None => return Err(self.stopped_polling()),
                },
            }
        }
    }

    /// For each partition of the topic, its end (high watermark) less where the
    /// subscription stands: this consumer's own position (below the first record it read
    /// and has not settled) in a partition it holds; the group's committed offset in the
    /// others (the start of the partition where the group committed none); for an
    /// anonymous subscription, where it was assigned. Records read ahead, handed out, or
    /// waiting to be redelivered count until acked; records addressed to another group
    /// count until a consumer of the group passes them.
    async fn backlog(&mut self) -> Result<Option<u64>> {
        let (client, tracker) = (self.client.clone(), self.tracker.clone());
        let assigned_at = self.assigned_at.clone();
        let timeout = self.request_timeout;
        let counted =
            tokio::task::spawn_blocking(move || backlog(&client, &tracker, &assigned_at, timeout))
                .await
                .map_err(|err| {
                    Error::broker(BACKEND, format!("counting the backlog failed: {err}"))
                })?;
        counted.map(Some).map_err(|err| {
            error::broker(
                &format!("counting the backlog of topic {}", self.topic),
                &err,
                &self.dead_letters.inner.secrets(),
            )
        })
    }

    /// What `receive` would return now, in the same order, without waiting: `None` when it
    /// would wait.
    fn try_receive(&mut self) -> Option<Result<Delivery<KafkaAcknowledger>>> {
        self.now().break_value()
    }
}

/// Where a delivery was read: its partition and offset, and the assignment it was read in.
#[derive(Debug, Clone, Copy)]
struct Position {
    partition: i32,
    offset: i64,
    generation: u64,
}

/// A delivery waiting to be handed out again.
struct Redelivery {
    due: Instant,
    message: Arc<Message>,
    at: Position,
    attempt: u32,
}

/// What a consumer hands out next.
enum Next {
    /// A redelivery that is due.
    Redelivery(Redelivery),
    /// A record read.
    Read(Read),
    /// Nothing before the next redelivery is due, then.
    DueAt(Instant),
    /// Nothing.
    Nothing,
}

/// One partition's bookkeeping while it is assigned to this consumer.
#[derive(Debug)]
struct Partition {
    generation: u64,
    /// Offsets read and not yet acked (buffered, handed out, or waiting for redelivery).
    pending: BTreeSet<i64>,
    /// The offset after the highest one read.
    next: i64,
    /// The position to commit: everything below it is handled.
    stored: i64,
    /// The last position the broker confirmed committed.
    committed: i64,
    /// Deliveries handed out and not yet settled.
    handed_out: usize,
}

impl Partition {
    /// The offset to commit: everything below it has been handled.
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

#[derive(Default)]
struct State {
    partitions: HashMap<i32, Partition>,
    redeliveries: VecDeque<Redelivery>,
    /// Bumped whenever partitions are revoked: deliveries read before no longer count.
    generation: u64,
    /// The positions committed for the partitions revoked by the last rebalance.
    released: HashMap<i32, i64>,
    /// When offsets were last sent to be committed.
    last_commit: Option<Instant>,
}

/// The bookkeeping one consumer and its deliveries share (and the poller thread, and the
/// rebalance and commit callbacks).
struct Tracker {
    topic: String,
    commits: bool,
    /// Reading dead letters: a record handed back after a later one of its partition was
    /// settled moves to the end of the topic (see [`KafkaAcknowledger::nack`]).
    dead_letters: bool,
    drain_timeout: Duration,
    commit_interval: Duration,
    state: Mutex<State>,
    /// Signalled whenever a delivery is settled (for the drain before a revocation).
    settled: Condvar,
    /// Woken whenever a redelivery is queued.
    wake: Notify,
    /// `true` once the group has assigned this member its partitions: what the consumer
    /// of dead letters waits for before it opens.
    joined: watch::Sender<bool>,
}

impl Tracker {
    fn new(topic: String, role: Role, drain_timeout: Duration, commit_interval: Duration) -> Self {
        Tracker {
            topic,
            commits: role != Role::Anonymous,
            dead_letters: role == Role::DeadLetters,
            drain_timeout,
            commit_interval,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            wake: Notify::new(),
            joined: watch::Sender::new(false),
        }
    }

    /// The position of a partition this consumer holds: everything below it is handled.
    fn position(&self, partition: i32) -> Option<i64> {
        self.lock()
            .partitions
            .get(&partition)
            .map(Partition::position)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the records read from librdkafka (not handed out yet): each one's offset
    /// holds back its partition's commit until it is acked. A record without a message
    /// (addressed to another group) counts as read and acked at once, so the commit moves
    /// past it as soon as everything before it is handled, and it holds back nothing after.
    fn read(&self, records: impl Iterator<Item = (i32, i64, Option<Message>)>) -> Vec<Read> {
        let mut state = self.lock();
        let generation = state.generation;
        records
            .filter_map(|(partition, offset, message)| {
                let entry = state
                    .partitions
                    .entry(partition)
                    .or_insert_with(|| Partition {
                        generation,
                        pending: BTreeSet::new(),
                        next: offset,
                        stored: offset,
                        committed: offset,
                        handed_out: 0,
                    });
                entry.next = entry.next.max(offset + 1);
                let Some(message) = message else {
                    entry.stored = entry.stored.max(entry.position());
                    return None;
                };
                entry.pending.insert(offset);
                Some(Read {
                    message: Arc::new(message),
                    at: Position {
                        partition,
                        offset,
                        generation: entry.generation,
                    },
                })
            })
            .collect()
    }

    /// What to hand out next: the first redelivery that is due, else the first of `taken`
    /// whose partition is still assigned (those of partitions revoked since they were read
    /// are dropped: the partition's new owner reads them again), marked handed out; else
    /// when the next redelivery is due.
    fn next(&self, now: Instant, taken: &mut VecDeque<Read>) -> Next {
        let mut state = self.lock();
        while let Some(index) = state.redeliveries.iter().position(|r| r.due <= now) {
            let Some(mut redelivery) = state.redeliveries.remove(index) else {
                break;
            };
            let current = state
                .partitions
                .get_mut(&redelivery.at.partition)
                .filter(|p| p.generation == redelivery.at.generation);
            if let Some(partition) = current {
                partition.handed_out += 1;
                redelivery.attempt = redelivery.attempt.saturating_add(1);
                return Next::Redelivery(redelivery);
            }
            // Its partition was revoked meanwhile: its new owner reads it again.
        }
        while let Some(read) = taken.pop_front() {
            let current = state
                .partitions
                .get_mut(&read.at.partition)
                .filter(|p| p.generation == read.at.generation);
            if let Some(partition) = current {
                partition.handed_out += 1;
                return Next::Read(read);
            }
        }
        state
            .redeliveries
            .iter()
            .map(|r| r.due)
            .min()
            .map_or(Next::Nothing, Next::DueAt)
    }

    /// The positions committed for the partitions the last rebalance revoked, forgotten.
    fn take_released(&self) -> HashMap<i32, i64> {
        std::mem::take(&mut self.lock().released)
    }

    /// Settles a handed-out delivery as done. The position it moves is committed by the
    /// poller thread (`client` is not needed for that: the commit is the poller's).
    fn ack(&self, _client: &Client, at: Position) {
        Self::settle(&mut self.lock(), at);
        self.settled.notify_all();
    }

    /// The bookkeeping of an ack: the offset is no longer pending, and the position to
    /// commit moves if it can.
    fn settle(state: &mut State, at: Position) {
        let Some(partition) = state
            .partitions
            .get_mut(&at.partition)
            .filter(|p| p.generation == at.generation)
        else {
            // Read before a revocation: the partition's new owner decides about it.
            return;
        };
        partition.pending.remove(&at.offset);
        partition.handed_out = partition.handed_out.saturating_sub(1);
        partition.stored = partition.stored.max(partition.position());
    }

    /// Commits the positions that moved if the commit interval has passed since the last
    /// commit: synchronously (on the poller thread), so that they count as committed only
    /// once the broker confirmed them; a commit that fails is tried again after the next
    /// interval. (librdkafka reports nothing back for an asynchronous commit here.)
    fn commit_if_due(&self, client: &Client) {
        if let Some(offsets) = self.due_commit(Instant::now()) {
            let result = client.commit(&offsets, CommitMode::Sync);
            self.committed(&result, &offsets);
        }
    }

    /// The positions to commit now, if any moved and the interval since the last commit
    /// has passed.
    fn due_commit(&self, now: Instant) -> Option<TopicPartitionList> {
        self.due(&mut self.lock(), now)
    }

    /// Like [`due_commit`](Self::due_commit), with the state locked.
    fn due(&self, state: &mut State, now: Instant) -> Option<TopicPartitionList> {
        let due = state
            .last_commit
            .is_none_or(|last| now.saturating_duration_since(last) >= self.commit_interval);
        if due {
            self.to_commit(state, now)
        } else {
            None
        }
    }

    /// The positions that moved since they were last confirmed committed. They count as
    /// committed only once the broker confirms it ([`committed`](Self::committed)), so a
    /// commit that fails is sent again after the next interval.
    fn to_commit(&self, state: &mut State, now: Instant) -> Option<TopicPartitionList> {
        if !self.commits {
            return None;
        }
        let mut offsets = TopicPartitionList::new();
        for (number, partition) in &state.partitions {
            if partition.stored > partition.committed {
                if let Err(err) = offsets.add_partition_offset(
                    &self.topic,
                    *number,
                    Offset::Offset(partition.stored),
                ) {
                    tracing::debug!(topic = %self.topic, error = %err, "offset not added");
                }
            }
        }
        if offsets.count() == 0 {
            return None;
        }
        state.last_commit = Some(now);
        Some(offsets)
    }

    /// The result of a commit: if the broker confirmed it, those positions are committed.
    fn committed(&self, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(err) = result {
            tracing::debug!(topic = %self.topic, error = %err, "commit failed; sent again after the commit interval");
            return;
        }
        let mut state = self.lock();
        for element in offsets.elements_for_topic(&self.topic) {
            if let (Some(partition), Offset::Offset(offset)) = (
                state.partitions.get_mut(&element.partition()),
                element.offset(),
            ) {
                partition.committed = partition.committed.max(offset);
            }
        }
    }

    /// Whether a record after `at` in its partition, read by this consumer, is settled
    /// already: `at` unsettled would then hold the partition's commit below it, and the
    /// next reader would read that record again.
    fn settled_after(&self, at: Position) -> bool {
        let state = self.lock();
        state
            .partitions
            .get(&at.partition)
            .filter(|p| p.generation == at.generation)
            .is_some_and(|p| {
                let read_after = usize::try_from(p.next - at.offset - 1).unwrap_or(0);
                p.pending.range(at.offset + 1..).count() < read_after
            })
    }

    /// Puts a handed-out delivery back in the redelivery queue, due after `delay` (at
    /// most [`MAX_NACK_DELAY`]).
    fn requeue(&self, message: Arc<Message>, at: Position, attempt: u32, delay: Duration) {
        let mut state = self.lock();
        let Some(partition) = state
            .partitions
            .get_mut(&at.partition)
            .filter(|p| p.generation == at.generation)
        else {
            return;
        };
        partition.handed_out = partition.handed_out.saturating_sub(1);
        let now = Instant::now();
        state.redeliveries.push_back(Redelivery {
            due: now + delay.min(MAX_NACK_DELAY),
            message,
            at,
            attempt,
        });
        drop(state);
        self.settled.notify_all();
        self.wake.notify_waiters();
    }

    /// Before partitions are revoked: waits (up to the drain timeout) for the deliveries
    /// handed out from them to be settled, then forgets them: deliveries still out are
    /// abandoned (their partition's new owner reads them again), and records buffered and
    /// queued redeliveries of those partitions are dropped, for the same reason. Runs on
    /// the poller thread, so blocking here holds up no handler.
    fn drain(&self, revoked: &[i32]) -> Option<TopicPartitionList> {
        let start = Instant::now();
        let outstanding = |state: &State| {
            revoked.iter().any(|p| {
                state
                    .partitions
                    .get(p)
                    .is_some_and(|partition| partition.handed_out > 0)
            })
        };
        let mut state = self.lock();
        while outstanding(&state) {
            let left = self.drain_timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                tracing::warn!(topic = %self.topic, "deliveries still unsettled when their partitions were revoked; their new owner reads them again");
                break;
            }
            state = self
                .settled
                .wait_timeout(state, left)
                .map(|(state, _)| state)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let offsets = self.to_commit(&mut state, Instant::now());
        state.generation += 1;
        state.released.clear();
        for partition in revoked {
            if let Some(taken) = state.partitions.remove(partition) {
                if self.commits {
                    state.released.insert(*partition, taken.stored);
                }
            }
        }
        state
            .redeliveries
            .retain(|r| !revoked.contains(&r.at.partition));
        offsets
    }
}

/// librdkafka's callbacks for one consumer: the rebalance hooks.
pub(crate) struct Context {
    tracker: Arc<Tracker>,
}

impl ClientContext for Context {}

impl Context {
    /// The partitions of a revocation.
    fn partitions(list: &TopicPartitionList) -> Vec<i32> {
        list.elements().iter().map(|e| e.partition()).collect()
    }
}

impl ConsumerContext for Context {
    /// The eager protocol, done here rather than by rdkafka's default so that:
    ///
    /// - on revocation, what is in flight for the revoked partitions is finished
    ///   (bounded by the drain timeout) and their positions are committed synchronously
    ///   before the partitions go;
    /// - on assignment, a partition this consumer gave up in the rebalance just before is
    ///   assigned explicitly at the position it committed then (the revocation is a
    ///   barrier: no member reads a partition between its revocation and the next
    ///   assignment, so that is the group's committed offset), rather than left to
    ///   librdkafka's own bookkeeping.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let tracker = &self.tracker;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let resume = tracker.take_released();
                for partition in Self::partitions(partitions) {
                    if let Some(position) = resume.get(&partition) {
                        if let Err(err) = partitions.set_partition_offset(
                            &tracker.topic,
                            partition,
                            Offset::Offset(*position),
                        ) {
                            tracing::warn!(topic = %tracker.topic, partition, error = %err,
                                "cannot set the resume position");
                        }
                    }
                }
                match consumer.assign(partitions) {
                    Ok(()) => {
                        tracker.joined.send_replace(true);
                    }
                    Err(err) => {
                        tracing::warn!(topic = %tracker.topic, error = %err, "assignment failed");
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Some(offsets) = tracker.drain(&Self::partitions(partitions)) {
                    if let Err(err) = consumer.commit(&offsets, CommitMode::Sync) {
                        tracing::warn!(topic = %tracker.topic, error = %err,
                            "commit before the revocation failed; the new owner reads again what was handled since the last commit");
                    }
                }
                if let Err(err) = consumer.unassign() {
                    tracing::warn!(topic = %tracker.topic, error = %err, "unassignment failed");
                }
            }
            other => {
                tracing::warn!(topic = %tracker.topic, error = ?other, "rebalance failed");
                if let Err(err) = consumer.unassign() {
                    tracing::warn!(topic = %tracker.topic, error = %err, "unassignment failed");
                }
            }
        }
    }
}

/// Settles one delivery of a [`KafkaConsumer`].
pub struct KafkaAcknowledger {
    client: Arc<Client>,
    tracker: Arc<Tracker>,
    dead_letters: Arc<DeadLetterTarget>,
    message: Arc<Message>,
    at: Position,
    attempt: u32,
    settled: bool,
}

impl fmt::Debug for KafkaAcknowledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAcknowledger")
            .field("topic", &self.tracker.topic)
            .field("partition", &self.at.partition)
            .field("offset", &self.at.offset)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl KafkaAcknowledger {
    /// Marks the record handled (once): its offset is committed once everything before it
    /// in its partition is handled too. Synchronous: the tracker's bookkeeping only, the
    /// commit is the poller thread's.
    fn acked(&mut self) {
        if !self.settled {
            self.settled = true;
            self.tracker.ack(&self.client, self.at);
        }
    }
}

impl Acknowledger for KafkaAcknowledger {
    /// Acking never waits here: see [`ack`](Self::ack).
    fn try_ack(&mut self) -> Option<Result<()>> {
        self.acked();
        Some(Ok(()))
    }

    /// Marks the record handled; its offset is committed once everything before it in
    /// its partition is handled too.
    async fn ack(mut self) -> Result<()> {
        self.acked();
        Ok(())
    }

    /// Queues the record for redelivery by this consumer, after `delay` if given (at most
    /// a day: a longer delay is taken as a day).
    ///
    /// A dead letter (read through
    /// [`Channel::dead_letters`](event_binder_core::Channel::dead_letters)) handed back
    /// without a delay after a later record of its partition was acked (a redrive or purge
    /// by id took that one) is sent to the end of the dead-letter topic instead, and the
    /// record acked: Kafka cannot take a record out of the middle of a partition, and a
    /// commit held below the one taken would bring it back to the next reader.
    async fn nack(mut self, delay: Option<Duration>) -> Result<()> {
        if delay.is_none() && self.tracker.dead_letters && self.tracker.settled_after(self.at) {
            let target = self.dead_letters.clone();
            send_to(&target.inner, &target.topic, &self.message).await?;
            self.acked();
            return Ok(());
        }
        self.settled = true;
        self.tracker.requeue(
            self.message.clone(),
            self.at,
            self.attempt,
            delay.unwrap_or_default(),
        );
        Ok(())
    }

    /// Sends the dead letter to the dead-letter topic and waits for its delivery report,
    /// then acks the record. If the send fails, the record stays unsettled and is handed
    /// back with the error.
    async fn dead_letter(mut self, dead_letter: Message) -> Result<(), DeadLetterFailed<Self>> {
        let target = self.dead_letters.clone();
        match send_to(&target.inner, &target.topic, &dead_letter).await {
            Ok(()) => {
                self.acked();
                Ok(())
            }
            Err(error) => Err(DeadLetterFailed::new(error, self)),
        }
    }
}

impl Drop for KafkaAcknowledger {
    /// An unsettled delivery goes back to the redelivery queue.
    fn drop(&mut self) {
        if !self.settled {
            self.tracker
                .requeue(self.message.clone(), self.at, self.attempt, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(commit_interval: Duration) -> Tracker {
        Tracker::new("t".into(), Role::Group, Duration::ZERO, commit_interval)
    }

    /// Reads `offset` of partition 0 (not handed out yet).
    fn read(tracker: &Tracker, offset: i64) -> Read {
        let mut reads = tracker.read([(0, offset, Some(Message::new("{}")))].into_iter());
        reads.pop().expect("one read")
    }

    /// Reads and hands out `offset` of partition 0.
    fn handed_out(tracker: &Tracker, offset: i64) -> Position {
        let mut taken = VecDeque::from([read(tracker, offset)]);
        match tracker.next(Instant::now(), &mut taken) {
            Next::Read(read) => read.at,
            _ => panic!("the record read is handed out"),
        }
    }

    fn settle(tracker: &Tracker, at: Position) {
        Tracker::settle(&mut tracker.lock(), at);
    }

    #[test]
    fn a_record_behind_a_settled_one_is_told_apart() {
        let tracker = tracker(Duration::ZERO);
        let first = handed_out(&tracker, 0);
        let middle = handed_out(&tracker, 1);
        let last = handed_out(&tracker, 2);
        assert!(!tracker.settled_after(first), "nothing settled yet");
        settle(&tracker, middle);
        assert!(tracker.settled_after(first), "1 settled after 0");
        assert!(!tracker.settled_after(last), "nothing read after 2");
    }

    fn offset_of(offsets: &TopicPartitionList) -> Option<i64> {
        match offsets.find_partition("t", 0)?.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    #[test]
    fn a_position_counts_as_committed_only_once_the_commit_succeeded() {
        let tracker = tracker(Duration::ZERO);
        let at = handed_out(&tracker, 5);
        settle(&tracker, at);
        let sent = tracker.due_commit(Instant::now()).expect("a commit");
        assert_eq!(offset_of(&sent), Some(6));
        // The commit failed: the position must go out again.
        tracker.committed(
            &Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
            )),
            &sent,
        );
        let again = tracker
            .due_commit(Instant::now())
            .expect("a failed commit is retried");
        assert_eq!(offset_of(&again), Some(6));
        // Confirmed: nothing more to commit.
        tracker.committed(&Ok(()), &again);
        assert!(tracker.due_commit(Instant::now()).is_none());
    }

    #[test]
    fn an_unconfirmed_commit_is_sent_again_after_the_interval_only() {
        let interval = Duration::from_secs(60);
        let tracker = tracker(interval);
        let at = handed_out(&tracker, 0);
        settle(&tracker, at);
        let now = Instant::now();
        assert!(
            tracker.due_commit(now).is_some(),
            "the first commit goes out at once"
        );
        assert!(
            tracker.due_commit(now).is_none(),
            "not again within the interval"
        );
        assert!(
            tracker.due_commit(now + interval).is_some(),
            "again after it"
        );
    }

    #[test]
    fn buffered_records_hold_back_the_commit_and_are_dropped_on_revocation() {
        let tracker = tracker(Duration::ZERO);
        let first = handed_out(&tracker, 0);
        let buffered = read(&tracker, 1);
        settle(&tracker, first);
        let sent = tracker.due_commit(Instant::now()).expect("a commit");
        assert_eq!(offset_of(&sent), Some(1), "not past the buffered record");
        tracker.drain(&[0]);
        let mut taken = VecDeque::from([buffered]);
        assert!(
            matches!(tracker.next(Instant::now(), &mut taken), Next::Nothing),
            "revoked: not handed out"
        );
        assert!(taken.is_empty(), "and dropped");
    }

    #[test]
    fn a_record_for_another_group_is_committed_past_in_order() {
        let tracker = tracker(Duration::ZERO);
        let first = handed_out(&tracker, 0);
        let reads = tracker.read([(0, 1, None)].into_iter());
        assert!(reads.is_empty(), "a skipped record is not handed out");
        assert!(
            tracker.due_commit(Instant::now()).is_none(),
            "not past the unsettled record before it"
        );
        settle(&tracker, first);
        let sent = tracker.due_commit(Instant::now()).expect("a commit");
        assert_eq!(
            offset_of(&sent),
            Some(2),
            "past both once the first is acked"
        );
        tracker.committed(&Ok(()), &sent);
        tracker.read([(0, 2, None)].into_iter());
        let sent = tracker.due_commit(Instant::now()).expect("a commit");
        assert_eq!(offset_of(&sent), Some(3), "a skip alone moves the commit");
    }

    #[test]
    fn the_longest_nack_delay_is_capped() {
        let tracker = tracker(Duration::ZERO);
        let at = handed_out(&tracker, 0);
        let before = Instant::now();
        tracker.requeue(Arc::new(Message::new("{}")), at, 1, Duration::MAX);
        match tracker.next(before, &mut VecDeque::new()) {
            Next::DueAt(due) => {
                assert!(due >= before + MAX_NACK_DELAY);
                assert!(due <= Instant::now() + MAX_NACK_DELAY);
            }
            _ => panic!("the nacked delivery waits"),
        }
    }
}
