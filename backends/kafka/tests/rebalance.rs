//! Consumer groups that change while a stream flows: a second member joins mid-stream, and
//! a group's only member stops (gracefully) mid-stream and a new one takes over. Nothing
//! may be lost, and (nothing having crashed) nothing may be handled twice. On a real
//! broker (`EVENT_BINDER_KAFKA_BOOTSTRAP`, by default 127.0.0.1:9092, where
//! `scripts/kafka.sh` starts tansu).
//!
//! The members are slower than the stream, so at the revocation librdkafka holds records it
//! fetched and the member has not read yet: it drops them, the member commits the offset
//! after the last record it handled, and the partition's next owner resumes there. The
//! stream is sent in batches (`send_batch`), so several records share a record batch and
//! that offset is often inside one: the broker must answer a fetch from the middle of a
//! batch with that batch (`records_sent_together_are_read_from_any_offset` checks it
//! alone). tansu 0.6.0 as published on crates.io did not; the later build the tests run on
//! does.

mod support;

use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
use event_binder_kafka::{KafkaChannel, KafkaProducer};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::{broker, channel, unique};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest wait for anything expected. Group rebalances on tansu have been seen to take
/// over 25 s.
const LIMIT: Duration = Duration::from_secs(90);
/// How long the test watches for a late duplicate once everything has been handled.
const QUIET: Duration = Duration::from_secs(2);
/// Records each member must handle: before the second joins, and each after it joined.
const ENOUGH: usize = 100;
/// A bound on the stream, should the conditions that stop it never come.
const MAX_RECORDS: usize = 50_000;

/// What the members handled: who handled each id, how many each handled, the first failure.
#[derive(Default)]
struct Log {
    by_id: HashMap<String, Vec<&'static str>>,
    by_member: HashMap<&'static str, usize>,
    failure: Option<String>,
}

impl Log {
    fn count(&self, member: &str) -> usize {
        self.by_member.get(member).copied().unwrap_or(0)
    }
}

/// The log, and a signal on each change so that waits are on conditions.
struct Handled {
    log: Mutex<Log>,
    changed: watch::Sender<u64>,
}

impl Handled {
    fn new() -> Arc<Self> {
        Arc::new(Handled {
            log: Mutex::new(Log::default()),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Log)) {
        change(&mut self.lock());
        self.changed.send_modify(|version| *version += 1);
    }

    fn fail(&self, failure: String) {
        self.update(|log| {
            log.failure.get_or_insert(failure);
        });
    }

    /// Waits up to `limit` for `condition`; `false` if it did not come. Panics on a
    /// failure reported by a member or the producer.
    async fn wait(&self, limit: Duration, condition: impl Fn(&Log) -> bool) -> bool {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let log = self.lock();
                if let Some(failure) = &log.failure {
                    panic!("{failure}");
                }
                if condition(&log) {
                    return true;
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Like [`wait`](Self::wait), failing the test with `what` on a timeout.
    async fn expect(&self, limit: Duration, what: &str, condition: impl Fn(&Log) -> bool) {
        if !self.wait(limit, condition).await {
            let log = self.lock();
            panic!(
                "timed out after {limit:?} waiting for {what} (handled so far: {:?})",
                log.by_member
            );
        }
    }
}

/// Handlers a member runs at once.
const CONCURRENCY: usize = 2;
/// What each handler takes, standing for its work: a member (about 100 records a second)
/// is slower than the stream (about 200), so records librdkafka fetched are still queued,
/// unread, when partitions are revoked, and handlers are in flight.
const WORK: Duration = Duration::from_millis(20);

/// A group member that handles every delivery (records it, works, acks), `CONCURRENCY`
/// at a time, until told to stop: it then stops receiving, lets the handlers in flight
/// finish and ack, and drops its consumer (which commits and leaves the group).
async fn member(
    channel: &KafkaChannel,
    destination: &str,
    group: &str,
    name: &'static str,
    handled: Arc<Handled>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .unwrap_or_else(|err| panic!("member {name}: consumer: {err}"));
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    tokio::spawn(async move {
        let mut handlers = tokio::task::JoinSet::new();
        loop {
            let slot = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore"),
            };
            let delivery = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                delivery = consumer.receive() => match delivery {
                    Ok(delivery) => delivery,
                    Err(err) => return handled.fail(format!("member {name}: receive: {err}")),
                },
            };
            let handled = handled.clone();
            handlers.spawn(async move {
                let id = delivery.message().id().to_owned();
                handled.update(|log| {
                    log.by_id.entry(id).or_default().push(name);
                    *log.by_member.entry(name).or_default() += 1;
                });
                tokio::time::sleep(WORK).await;
                if let Err(err) = delivery.ack().await {
                    handled.fail(format!("member {name}: ack: {err}"));
                }
                drop(slot);
            });
            while handlers.try_join_next().is_some() {}
        }
        while handlers.join_next().await.is_some() {}
        drop(consumer);
    })
}

/// Records sent together, per `send_batch`: they share record batches.
const BATCH: usize = 5;

/// Sends a steady stream of records `m000000`, `m000001`, … in batches of `BATCH` until
/// told to stop; returns the ids of those sent.
fn stream(
    producer: KafkaProducer,
    mut stop: watch::Receiver<bool>,
    handled: Arc<Handled>,
) -> JoinHandle<Vec<String>> {
    let message = |n: usize| Message::new_with_id(format!("m{n:06}"), format!(r#"{{"n":{n}}}"#));
    tokio::spawn(async move {
        let mut sent = Vec::new();
        // About 200 records a second, `BATCH` at a time.
        let mut pace = tokio::time::interval(Duration::from_millis(5 * BATCH as u64));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow_and_update() && sent.len() < MAX_RECORDS {
            pace.tick().await;
            let batch: Vec<Message> = (sent.len()..sent.len() + BATCH).map(message).collect();
            let ids: Vec<String> = batch.iter().map(|m| m.id().to_owned()).collect();
            match producer.send_batch(batch).await {
                Ok(()) => sent.extend(ids),
                Err(err) => {
                    handled.fail(format!("send after {} records: {err}", sent.len()));
                    break;
                }
            }
        }
        sent
    })
}

/// `m000003, m000004, m000005, m000009` → `m000003..=m000005 (3), m000009 (1)`.
fn runs(ids: &BTreeSet<String>) -> String {
    let numbers: Vec<usize> = ids.iter().filter_map(|id| id[1..].parse().ok()).collect();
    let mut out: Vec<String> = Vec::new();
    let mut start = 0;
    for i in 1..=numbers.len() {
        if i == numbers.len() || numbers[i] != numbers[i - 1] + 1 {
            let (first, last) = (numbers[start], numbers[i - 1]);
            out.push(if first == last {
                format!("m{first:06} (1)")
            } else {
                format!("m{first:06}..=m{last:06} ({})", last - first + 1)
            });
            start = i;
        }
    }
    out.join(", ")
}

/// What changes in the group mid-stream.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Member `b` joins `a`.
    Join,
    /// Member `a` stops; member `b` starts.
    Restart,
}

/// Member `a` consumes a stream; mid-stream, member `b` joins (or `a` stops and `b`
/// starts); both go on handling; the stream stops; every record sent must be handled
/// exactly once.
async fn group_changes_mid_stream(change: Change) {
    let prefix = format!("rebalance-{}-", unique());
    let (destination, group) = ("stream", "g");
    let handled = Handled::new();
    let (stop_members, members_stopped) = watch::channel(false);
    let (stop_a, a_stopped) = watch::channel(false);
    let first = channel(&prefix).await;
    first
        .provision(destination, Some(group))
        .await
        .expect("provision");
    let a = member(&first, destination, group, "a", handled.clone(), a_stopped).await;
    let sender = channel(&prefix).await;
    let producer = sender.producer(destination).await.expect("producer");
    let (stop, stopped) = watch::channel(false);
    let stream = stream(producer, stopped, handled.clone());

    handled
        .expect(LIMIT, "member a to handle the start of the stream", |log| {
            log.count("a") >= ENOUGH
        })
        .await;
    if let Change::Restart = change {
        stop_a.send_replace(true);
        tokio::time::timeout(LIMIT, a)
            .await
            .expect("member a to stop in time")
            .expect("member a");
    }
    let second = channel(&prefix).await;
    let b = member(
        &second,
        destination,
        group,
        "b",
        handled.clone(),
        members_stopped.clone(),
    )
    .await;
    let changed = Instant::now();
    handled
        .expect(
            LIMIT,
            "member b, started mid-stream, to handle records",
            |log| log.count("b") >= ENOUGH,
        )
        .await;
    let taken_over_in = changed.elapsed();
    if let Change::Join = change {
        let a_then = handled.lock().count("a");
        handled
            .expect(
                LIMIT,
                "member a to go on handling after the rebalance",
                |log| log.count("a") >= a_then + ENOUGH,
            )
            .await;
    }
    stop.send_replace(true);
    let sent = tokio::time::timeout(LIMIT, stream)
        .await
        .expect("the stream to stop in time")
        .expect("the stream task");
    let sent_set: BTreeSet<String> = sent.iter().cloned().collect();
    assert_eq!(sent_set.len(), sent.len(), "the stream sent an id twice");
    let all_handled = handled
        .wait(LIMIT, |log| {
            sent_set.iter().all(|id| log.by_id.contains_key(id))
        })
        .await;
    // Watch for a late duplicate: something that must not happen, so no condition to await.
    if all_handled {
        tokio::time::sleep(QUIET).await;
    }
    stop_members.send_replace(true);
    stop_a.send_replace(true);
    b.abort();
    let log = std::mem::take(&mut *handled.lock());
    for channel in [&first, &second, &sender] {
        channel.close().await.expect("close");
    }

    let missing: BTreeSet<String> = sent_set
        .iter()
        .filter(|id| !log.by_id.contains_key(*id))
        .cloned()
        .collect();
    let duplicated: Vec<(&String, &Vec<&str>)> =
        log.by_id.iter().filter(|(_, by)| by.len() > 1).collect();
    let unexpected: Vec<&String> = log
        .by_id
        .keys()
        .filter(|id| !sent_set.contains(*id))
        .collect();
    eprintln!(
        "{change:?}: {} sent, handled by member {:?}; member b had handled {ENOUGH} {:.1?} after it started",
        sent.len(),
        log.by_member,
        taken_over_in
    );
    assert!(
        missing.is_empty(),
        "{} of {} records never handled: {}",
        missing.len(),
        sent.len(),
        runs(&missing)
    );
    assert!(duplicated.is_empty(), "handled twice: {duplicated:?}");
    assert!(unexpected.is_empty(), "handled, never sent: {unexpected:?}");
    assert_eq!(log.by_member.values().sum::<usize>(), sent.len());
}

/// The backend's rebalance: a member joins a group mid-stream; nothing is lost, nothing is
/// handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_mid_stream_loses_and_repeats_nothing() {
    group_changes_mid_stream(Change::Join).await;
}

/// A group restarted mid-stream: its member stops gracefully (finishing and acking what it
/// holds) and a new one takes over where it committed; nothing is lost, nothing is handled
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_restarted_mid_stream_loses_and_repeats_nothing() {
    group_changes_mid_stream(Change::Restart).await;
}

/// The offset of the first record a fresh raw consumer reads from `partition` of `topic`
/// when assigned at `offset`; `None` if none comes within `limit`.
async fn first_offset_from(
    topic: &str,
    partition: i32,
    offset: i64,
    limit: Duration,
) -> Option<i64> {
    offsets_read_from(topic, partition, Offset::Offset(offset), 1, limit)
        .await
        .first()
        .copied()
}

/// The offsets of the records of `partition` of `topic`, read from its beginning by a
/// fresh raw consumer until `count` came or `limit` passed.
async fn offsets_read(topic: &str, partition: i32, count: usize, limit: Duration) -> Vec<i64> {
    offsets_read_from(topic, partition, Offset::Beginning, count, limit).await
}

/// The offsets of the records of `partition` of `topic`, read from `start` by a fresh raw
/// consumer until `count` came or `limit` passed.
async fn offsets_read_from(
    topic: &str,
    partition: i32,
    start: Offset,
    count: usize,
    limit: Duration,
) -> Vec<i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker())
            .set("group.id", format!("rebalance-probe-{}", unique()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("a raw consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, partition, start)
            .expect("the assignment");
        consumer.assign(&assignment).expect("assign");
        let mut read = Vec::new();
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if read.len() >= count {
                break;
            }
            match consumer.poll(left.min(Duration::from_millis(200))) {
                Some(Ok(record)) => read.push(record.offset()),
                Some(Err(err)) => panic!("consuming {topic} from {start:?}: {err}"),
                None => {}
            }
        }
        read
    })
    .await
    .expect("the consuming thread")
}

/// What the tests above rely on: records sent together share record batches, and a
/// consumer assigned at any offset between them (in the middle of a batch) gets that very
/// record first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sent_together_are_read_from_any_offset() {
    let prefix = format!("rebalance-{}-", unique());
    let channel = support::channel_with(&prefix, 1, "").await;
    let destination = "together";
    let producer = channel.producer(destination).await.expect("producer");
    producer
        .send_batch(
            (0..12)
                .map(|n| Message::new(format!(r#"{{"n":{n}}}"#)))
                .collect(),
        )
        .await
        .expect("send");
    let topic = channel.topic_name(destination).expect("topic");
    // Found by reading, not from the watermarks: tansu's high watermark is the last batch's
    // first offset + 1.
    let partition = 0;
    let read = offsets_read(&topic, partition, 12, LIMIT).await;
    assert_eq!(read.len(), 12, "{read:?}");
    let (low, high) = (read[0], read[11] + 1);
    assert_eq!(high - low, 12, "{read:?}");
    for offset in low..high {
        assert_eq!(
            first_offset_from(&topic, partition, offset, LIMIT).await,
            Some(offset),
            "assigned at {offset}"
        );
    }
    channel.close().await.expect("close");
}
