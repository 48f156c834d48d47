//! [`KafkaConsumer`]: one librdkafka consumer per event-binder consumer, with the
//! bookkeeping that turns per-message acks into per-partition offsets.
//!
//! Kafka commits a position per partition, not single messages, and cannot un-read a
//! record. So each consumer keeps, per partition, the offsets it has read and not yet
//! settled (`pending`): the position committed is always the lowest pending one (or,
//! with none pending, the one after the last read), so a message is never committed past
//! before it was handled, whatever order concurrent handlers finish in. A nacked (or
//! dropped) delivery waits in a local redelivery queue and comes back from this consumer,
//! its attempt count one higher.

use crate::channel::Inner;
use crate::convert::message_from;
use crate::error::{self, BACKEND};
use crate::names::Names;
use crate::producer::send_to;
use async_trait::async_trait;
use event_binder_core::{
    Acknowledger, Consumer, Delivery, Error, Message, Origin, Result, Subscription,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

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

type Client = StreamConsumer<Context>;

/// Yields deliveries for one subscription.
pub(crate) struct KafkaConsumer {
    subscription: Subscription,
    topic: Arc<str>,
    group_id: String,
    client: Arc<Client>,
    tracker: Arc<Tracker>,
    origin: Arc<Origin>,
    dead_letters: Arc<DeadLetterTarget>,
    closed: watch::Receiver<bool>,
}

/// Where the dead letters of a consumer's deliveries go.
struct DeadLetterTarget {
    inner: Arc<Inner>,
    topic: String,
}

impl KafkaConsumer {
    /// Creates the topics it needs, joins the group (or, anonymous, assigns every
    /// partition at its current end) and returns once the subscription is active.
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
            commits,
            inner.config.drain_timeout,
            inner.config.commit_interval,
        ));
        let mut config = inner.config.client_config();
        config
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                if commits { "earliest" } else { "latest" },
            )
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100");
        let secrets = inner.secrets();
        let client: Client = config
            .create_with_context(Context {
                tracker: tracker.clone(),
            })
            .map_err(|err| error::broker("creating a consumer", &err, &secrets))?;
        let client = Arc::new(client);
        if commits {
            client.subscribe(&[&topic]).map_err(|err| {
                error::broker(&format!("subscribing to topic {topic}"), &err, &secrets)
            })?;
        } else {
            assign_at_end(&inner, &client, &topic).await?;
        }
        let dead_letters = Arc::new(DeadLetterTarget {
            topic: names.dead_letters.clone(),
            inner: inner.clone(),
        });
        Ok(KafkaConsumer {
            origin: Origin::new(subscription.destination(), subscription.group_name()),
            subscription,
            topic: topic.into(),
            group_id,
            client,
            tracker,
            dead_letters,
            closed: inner.closed(),
        })
    }

    fn delivery(&self, message: Arc<Message>, at: Position, attempt: u32) -> Delivery {
        let acker = Acker {
            client: self.client.clone(),
            tracker: self.tracker.clone(),
            dead_letters: self.dead_letters.clone(),
            message: message.clone(),
            at,
            attempt,
            settled: false,
        };
        Delivery::new(message, attempt, self.origin.clone(), Box::new(acker))
    }
}

/// Assigns every partition of `topic` at its high watermark, read now: whatever is
/// published once this returns is seen, nothing before.
async fn assign_at_end(inner: &Inner, client: &Arc<Client>, topic: &str) -> Result<()> {
    let client = client.clone();
    let topic_name = topic.to_owned();
    let timeout = inner.config.connect_timeout;
    let assigned = tokio::task::spawn_blocking(move || {
        let metadata = client.fetch_metadata(Some(&topic_name), timeout)?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic_name)
            .flat_map(|t| t.partitions())
        {
            let (_, high) = client.fetch_watermarks(&topic_name, partition.id(), timeout)?;
            assignment.add_partition_offset(&topic_name, partition.id(), Offset::Offset(high))?;
        }
        client.assign(&assignment)?;
        Ok::<usize, rdkafka::error::KafkaError>(assignment.count())
    })
    .await
    .map_err(|err| Error::broker(BACKEND, format!("assigning topic {topic} failed: {err}")))?;
    match assigned {
        Ok(0) => Err(Error::broker(
            BACKEND,
            format!("topic {topic} has no partitions in the cluster's metadata"),
        )),
        Ok(_) => Ok(()),
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

/// What a record read from the client became.
struct Read {
    message: Arc<Message>,
    at: Position,
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Redeliveries that are due come first, then records in the order librdkafka hands
    /// them over. Cancel safe: a record is taken from librdkafka only when it is returned.
    /// Errors librdkafka reports while consuming (a broker that went away, a topic not yet
    /// in the metadata) are logged and waited out: it recovers by itself.
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            if *self.closed.borrow() {
                return Err(Error::ShutDown("the kafka channel"));
            }
            let woken = self.tracker.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let next_due = match self.tracker.take_due(Instant::now()) {
                Due::Ready(redelivery) => {
                    return Ok(self.delivery(
                        redelivery.message,
                        redelivery.at,
                        redelivery.attempt,
                    ));
                }
                Due::At(due) => Some(due),
                Due::Nothing => None,
            };
            let client = self.client.clone();
            let tracker = self.tracker.clone();
            let read = async move {
                let record = client.recv().await;
                record.map(|record| {
                    let at = tracker.read(record.partition(), record.offset());
                    Read {
                        message: Arc::new(message_from(&record)),
                        at,
                    }
                })
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
                    return Err(Error::ShutDown("the kafka channel"));
                }
                () = &mut woken => {}
                () = due => {}
                read = read => match read {
                    Ok(Read { message, at }) => return Ok(self.delivery(message, at, 1)),
                    Err(err) => {
                        tracing::warn!(
                            topic = %self.topic,
                            group = %self.group_id,
                            error = %error::scrub(&err.to_string(), &self.dead_letters.inner.secrets()),
                            "kafka consumer error; librdkafka retries by itself"
                        );
                    }
                },
            }
        }
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

/// What the redelivery queue has.
enum Due {
    Ready(Redelivery),
    At(Instant),
    Nothing,
}

/// One partition's bookkeeping while it is assigned to this consumer.
#[derive(Debug)]
struct Partition {
    generation: u64,
    /// Offsets read and not yet acked (handed out, or waiting for redelivery).
    pending: BTreeSet<i64>,
    /// The offset after the highest one read.
    next: i64,
    /// The position to commit: everything below it is handled.
    stored: i64,
    /// The last position committed (or sent to be).
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
    /// When offsets were last committed.
    last_commit: Option<Instant>,
}

/// The bookkeeping one consumer and its deliveries share (and the rebalance callbacks).
struct Tracker {
    topic: String,
    commits: bool,
    drain_timeout: Duration,
    commit_interval: Duration,
    state: Mutex<State>,
    /// Signalled whenever a delivery is settled (for the drain before a revocation).
    settled: Condvar,
    /// Woken whenever a redelivery is queued.
    wake: Notify,
}

impl Tracker {
    fn new(
        topic: String,
        commits: bool,
        drain_timeout: Duration,
        commit_interval: Duration,
    ) -> Self {
        Tracker {
            topic,
            commits,
            drain_timeout,
            commit_interval,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a record read from librdkafka, now handed out.
    fn read(&self, partition: i32, offset: i64) -> Position {
        let mut state = self.lock();
        let generation = state.generation;
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
        entry.pending.insert(offset);
        entry.next = entry.next.max(offset + 1);
        entry.handed_out += 1;
        Position {
            partition,
            offset,
            generation: entry.generation,
        }
    }

    /// The positions committed for the partitions the last rebalance revoked, forgotten.
    fn take_released(&self) -> HashMap<i32, i64> {
        std::mem::take(&mut self.lock().released)
    }

    /// Takes the first redelivery that is due, else says when the next one is.
    fn take_due(&self, now: Instant) -> Due {
        let mut state = self.lock();
        let due = state
            .redeliveries
            .iter()
            .position(|r| r.due <= now)
            .and_then(|index| state.redeliveries.remove(index));
        match due {
            Some(mut redelivery) => {
                let current = state
                    .partitions
                    .get_mut(&redelivery.at.partition)
                    .filter(|p| p.generation == redelivery.at.generation);
                if let Some(partition) = current {
                    partition.handed_out += 1;
                    redelivery.attempt = redelivery.attempt.saturating_add(1);
                    Due::Ready(redelivery)
                } else {
                    // Its partition was revoked meanwhile: its new owner reads it again.
                    drop(state);
                    self.take_due(now)
                }
            }
            None => state
                .redeliveries
                .iter()
                .map(|r| r.due)
                .min()
                .map_or(Due::Nothing, Due::At),
        }
    }

    /// Settles a handed-out delivery as done; stores the new commit position if it moved.
    fn ack(&self, client: &Client, at: Position) {
        let mut state = self.lock();
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
        let due = state
            .last_commit
            .is_none_or(|last| last.elapsed() >= self.commit_interval);
        let offsets = if due {
            self.to_commit(&mut state)
        } else {
            None
        };
        drop(state);
        if let Some(offsets) = offsets {
            if let Err(err) = client.commit(&offsets, CommitMode::Async) {
                tracing::debug!(topic = %self.topic, error = %err, "commit not sent");
            }
        }
        self.settled.notify_all();
    }

    /// The positions that moved since they were last committed, marked committed.
    fn to_commit(&self, state: &mut State) -> Option<TopicPartitionList> {
        if !self.commits {
            return None;
        }
        let mut offsets = TopicPartitionList::new();
        for (number, partition) in &mut state.partitions {
            if partition.stored > partition.committed {
                let added = offsets.add_partition_offset(
                    &self.topic,
                    *number,
                    Offset::Offset(partition.stored),
                );
                if added.is_ok() {
                    partition.committed = partition.stored;
                }
            }
        }
        state.last_commit = Some(Instant::now());
        (offsets.count() > 0).then_some(offsets)
    }

    /// Puts a handed-out delivery back in the redelivery queue, due after `delay`.
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
        state.redeliveries.push_back(Redelivery {
            due: Instant::now() + delay,
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
    /// abandoned (their partition's new owner reads them again) and queued redeliveries of
    /// those partitions are dropped, for the same reason.
    fn drain(&self, revoked: &[i32]) -> Option<TopicPartitionList> {
        let deadline = Instant::now() + self.drain_timeout;
        let outstanding = |state: &State| {
            revoked.iter().any(|p| {
                state
                    .partitions
                    .get(p)
                    .is_some_and(|partition| partition.handed_out > 0)
            })
        };
        let wait = || {
            let mut state = self.lock();
            while outstanding(&state) {
                let left = deadline.saturating_duration_since(Instant::now());
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
        };
        let must_wait = outstanding(&self.lock());
        if must_wait {
            // Handlers settle on other tasks: let this worker's tasks move elsewhere
            // while it blocks (on a current-thread runtime they cannot run meanwhile, so
            // the drain then ends at its timeout).
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
        }
        let mut state = self.lock();
        let offsets = self.to_commit(&mut state);
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
                if let Err(err) = consumer.assign(partitions) {
                    tracing::warn!(topic = %tracker.topic, error = %err, "assignment failed");
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

/// Settles one delivery.
struct Acker {
    client: Arc<Client>,
    tracker: Arc<Tracker>,
    dead_letters: Arc<DeadLetterTarget>,
    message: Arc<Message>,
    at: Position,
    attempt: u32,
    settled: bool,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("topic", &self.tracker.topic)
            .field("partition", &self.at.partition)
            .field("offset", &self.at.offset)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Acknowledger for Acker {
    /// Marks the record handled; its offset is committed once everything before it in
    /// its partition is handled too.
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.settled = true;
        self.tracker.ack(&self.client, self.at);
        Ok(())
    }

    /// Queues the record for redelivery by this consumer, after `delay` if given.
    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<()> {
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
    /// then acks the record. If the send fails, the record is queued for redelivery and
    /// the error returned.
    async fn dead_letter(mut self: Box<Self>, dead_letter: Message) -> Result<()> {
        let target = self.dead_letters.clone();
        let sent = send_to(&target.inner, &target.topic, &dead_letter).await;
        self.settled = true;
        match sent {
            Ok(()) => {
                self.tracker.ack(&self.client, self.at);
                Ok(())
            }
            Err(err) => {
                self.tracker
                    .requeue(self.message.clone(), self.at, self.attempt, Duration::ZERO);
                Err(err)
            }
        }
    }
}

impl Drop for Acker {
    /// An unsettled delivery goes back to the redelivery queue.
    fn drop(&mut self) {
        if !self.settled {
            self.tracker
                .requeue(self.message.clone(), self.at, self.attempt, Duration::ZERO);
        }
    }
}
