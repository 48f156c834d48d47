//! Handler throughput and requests per message on SNS+SQS (an emulator on
//! 127.0.0.1:4566; `scripts/sns-sqs.sh` starts moto there): the same scenario carried by
//! raw aws-sdk-sns/aws-sdk-sqs calls, by event-binder's `Producer`/`Consumer` in a plain
//! loop, and by the full runtime (`App` and a handler), interleaved over several rounds,
//! as `shared/BENCHMARKS.md` asks.
//!
//! Every run gets a fresh destination (topic `…bench-<id>`, group queue `…__g` subscribed
//! with raw message delivery, and its dead-letter queue), made by
//! `SnsSqsChannel::provision`; the raw side looks the queue up with GetQueueUrl and the
//! topic with CreateTopic (idempotent). Every side uses the same settings: long polling
//! of 1 s, visibility timeout 30 s, up to 10 messages per ReceiveMessage, message
//! attributes `All` and the system attributes `ApproximateReceiveCount` and
//! `SentTimestamp` (what the backend asks for).
//!
//! - **Raw**: SNS PublishBatch with 10 entries per request, 2 requests at once per 20
//!   messages (what the backend's `send_batch` of 20 amounts to); one consumer loop:
//!   ReceiveMessage, decode every body, then one DeleteMessageBatch for the batch received,
//!   then the next ReceiveMessage (one request in flight at a time).
//! - **Backend**: `Producer::send_batch` with 20 messages per call; `Consumer::receive`
//!   (prefetch 16, the default), decode, `ack` (the backend batches the deletes within its
//!   5 ms batch window, the default).
//! - **Runtime**: `App` with one handler, default settings (concurrency 16, which is also
//!   its consumer's prefetch); published like the backend side.
//!
//! Every loop decodes each payload with serde_json into the same struct and reads a field
//! through `black_box`. Each run first publishes one message and waits until its loop has
//! handled it (so the consumer is polling); the clock then runs from the start of the
//! measured publishing to the last message handled. The publisher runs in a task of its
//! own, concurrent with consuming, and never lets more than 40 messages wait published and
//! not handled (the same flow control on every side): moto's ReceiveMessage takes longer
//! the more messages the queue holds (about 20 ms with 10 queued, 0.2 s with 200, 1.3 s
//! with 1,000), so an unbounded backlog would measure moto's backlog, not the clients.
//!
//! Requests per message end to end: every SNS and SQS request made from the start of the
//! clock until the publisher is done and the deletes are flushed, divided by the messages.
//! For event-binder the channel's request counter (an SDK interceptor), for the raw side
//! counters around each call.
//!
//! `cargo bench -p event-binder-sns-sqs --bench throughput`; `BENCH_MESSAGES` (default
//! 10,000) and `BENCH_ROUNDS` (default 3) change the size.

use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use event_binder_core::{
    App, Channel, Consumer, Context, Handler, HandlerSpec, Message, Producer, Subscription,
};
use event_binder_sns_sqs::{RequestCounts, SnsSqsChannel, SnsSqsConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{timeout, timeout_at, Instant};

const ENDPOINT: &str = "http://127.0.0.1:4566";
const REGION: &str = "us-east-1";
/// Long polling, the same on every side (`wait_time_s` of the channel URL).
const WAIT_TIME_S: i32 = 1;
/// The visibility timeout, the same on every side (the backend's default).
const VISIBILITY_S: i32 = 30;
/// The most a run may take before the bench gives up on it.
const LIMIT: Duration = Duration::from_secs(300);
/// Messages per `send_batch` call (backend, runtime) and per group of concurrent
/// PublishBatch requests (raw).
const PUBLISH_CHUNK: usize = 20;
/// The most messages published and not yet handled (two chunks: the publisher can be one
/// chunk ahead of the one being consumed): the publisher waits for the consumer beyond
/// this, on every side, because moto's ReceiveMessage takes longer the more messages the
/// queue holds (about 20 ms with 10 queued, 0.2 s with 200, 1.3 s with 1,000), so an
/// unbounded backlog measures moto's backlog, not the clients.
const MAX_BACKLOG: u64 = 2 * PUBLISH_CHUNK as u64;
/// SNS's and SQS's batch size.
const BATCH: usize = 10;
/// The backend consumer's prefetch: the runtime's default concurrency, which is also the
/// prefetch of its consumer (and `Subscription::DEFAULT_PREFETCH`).
const PREFETCH: usize = App::DEFAULT_CONCURRENCY;
const GROUP: &str = "g";
const TARGET: f64 = 0.35;

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

/// What one run measured.
struct Run {
    rate: f64,
    /// Requests per operation during the measured run.
    requests: BTreeMap<String, u64>,
    /// Raw side only: the share of the run its consumer loop spent waiting on SQS.
    waiting: Option<f64>,
}

/// Flow control between a run's publisher and its consumer: at most [`MAX_BACKLOG`]
/// messages published and not handled.
#[derive(Default)]
struct Flow {
    published: AtomicU64,
    handled: AtomicU64,
    progress: Notify,
}

impl Flow {
    /// The consumer side handled (acknowledged) `n` messages.
    fn handled(&self, n: u64) {
        self.handled.fetch_add(n, Ordering::Relaxed);
        self.progress.notify_one();
    }

    /// Waits until `n` more messages fit in the backlog, and counts them published.
    async fn room(&self, n: u64) {
        loop {
            let progress = self.progress.notified();
            let outstanding = (self.published.load(Ordering::Relaxed) + n)
                .saturating_sub(self.handled.load(Ordering::Relaxed));
            if outstanding <= MAX_BACKLOG.max(n) {
                self.published.fetch_add(n, Ordering::Relaxed);
                return;
            }
            timeout(LIMIT, progress).await.unwrap_or_else(|_| {
                panic!("the consumer handled nothing for {LIMIT:?}; the publisher gives up")
            });
        }
    }
}

/// A fresh channel (its own request counter) and a fresh, provisioned destination.
async fn provisioned(prefix: &str) -> (SnsSqsChannel, String) {
    let url =
        format!("sns-sqs://{REGION}?endpoint={ENDPOINT}&wait_time_s={WAIT_TIME_S}&prefix={prefix}");
    let config = SnsSqsConfig::new(&url)
        .expect("URL")
        .visibility_timeout(Duration::from_secs(VISIBILITY_S as u64))
        .credentials("test", "test");
    let channel = SnsSqsChannel::with_config(config)
        .await
        .expect("connecting to 127.0.0.1:4566 (run scripts/sns-sqs.sh)");
    let destination = format!("bench-{}", unique());
    timeout(LIMIT, channel.provision(&destination, Some(GROUP)))
        .await
        .expect("provisioning in time")
        .expect("provision");
    (channel, destination)
}

/// Waits until the channel's request counts stop moving (a delete batch or the last long
/// poll finishing after the channel closed), at most a few seconds.
async fn settled_requests(channel: &SnsSqsChannel) -> RequestCounts {
    let mut last = channel.requests();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = channel.requests();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn counts_map(counts: &RequestCounts) -> BTreeMap<String, u64> {
    counts.iter().map(|(op, n)| (op.to_owned(), n)).collect()
}

// ---------------------------------------------------------------------------------------
// Raw SDK

/// The raw side's SDK clients, built like the backend builds its own.
#[derive(Clone)]
struct RawClients {
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
}

async fn raw_clients() -> RawClients {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .build();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(ENDPOINT)
        .http_client(http)
        .timeout_config(timeouts)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    RawClients {
        sns: aws_sdk_sns::Client::new(&shared),
        sqs: aws_sdk_sqs::Client::new(&shared),
    }
}

/// The raw side's requests, counted around each call.
#[derive(Default)]
struct RawCounts {
    publish_batch: AtomicU64,
    receive_message: AtomicU64,
    delete_message_batch: AtomicU64,
}

impl RawCounts {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.publish_batch.load(Ordering::Relaxed),
            self.receive_message.load(Ordering::Relaxed),
            self.delete_message_batch.load(Ordering::Relaxed),
        ]
    }

    fn since(&self, earlier: [u64; 3]) -> BTreeMap<String, u64> {
        let now = self.snapshot();
        ["PublishBatch", "ReceiveMessage", "DeleteMessageBatch"]
            .into_iter()
            .zip(now.iter().zip(earlier))
            .map(|(op, (now, earlier))| (op.to_owned(), now - earlier))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// PublishBatch, 10 entries per request, the requests of every chunk at once.
async fn raw_publish(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    payloads: &[Vec<u8>],
    counts: &RawCounts,
    flow: &Flow,
) {
    for chunk in payloads.chunks(PUBLISH_CHUNK) {
        flow.room(chunk.len() as u64).await;
        let mut requests = tokio::task::JoinSet::new();
        for batch in chunk.chunks(BATCH) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(index, payload)| {
                    PublishBatchRequestEntry::builder()
                        .id(index.to_string())
                        .message(String::from_utf8(payload.clone()).expect("UTF-8 JSON"))
                        .build()
                        .expect("entry")
                })
                .collect();
            let request = sns
                .publish_batch()
                .topic_arn(topic_arn)
                .set_publish_batch_request_entries(Some(entries));
            requests.spawn(request.send());
        }
        while let Some(answer) = requests.join_next().await {
            counts.publish_batch.fetch_add(1, Ordering::Relaxed);
            let output = answer
                .expect("a PublishBatch task")
                .unwrap_or_else(|err| panic!("raw PublishBatch: {}", DisplayErrorContext(&err)));
            assert!(
                output.failed().is_empty(),
                "raw PublishBatch: entries failed: {:?}",
                output.failed()
            );
        }
    }
}

async fn run_raw(raw: &RawClients, prefix: &str, payloads: &[Vec<u8>]) -> Run {
    let (channel, destination) = provisioned(prefix).await;
    let queue_name = channel.queue_name(&destination, GROUP).expect("queue name");
    let topic_name = channel.topic_name(&destination).expect("topic name");
    channel.close().await.expect("close");
    let queue_url = raw
        .sqs
        .get_queue_url()
        .queue_name(&queue_name)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GetQueueUrl: {}", DisplayErrorContext(&err)))
        .queue_url()
        .expect("a queue URL")
        .to_owned();
    let topic_arn = raw
        .sns
        .create_topic()
        .name(&topic_name)
        .send()
        .await
        .unwrap_or_else(|err| panic!("CreateTopic: {}", DisplayErrorContext(&err)))
        .topic_arn()
        .expect("a topic ARN")
        .to_owned();
    let counts = Arc::new(RawCounts::default());
    let flow = Arc::new(Flow::default());
    let total = payloads.len() as u64;
    let mut measured = Some(payloads.to_vec());
    raw_publish(&raw.sns, &topic_arn, &payloads[..1], &counts, &flow).await;
    let deadline = Instant::now() + LIMIT;
    let mut started = None;
    let mut before = [0; 3];
    let mut publisher = None;
    let mut waiting = Duration::ZERO;
    let mut seen = 0u64;
    while seen < total + 1 {
        let asked = Instant::now();
        let Ok(received) = timeout_at(
            deadline,
            raw.sqs
                .receive_message()
                .queue_url(&queue_url)
                .max_number_of_messages(BATCH as i32)
                .wait_time_seconds(WAIT_TIME_S)
                .visibility_timeout(VISIBILITY_S)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send(),
        )
        .await
        else {
            panic!("raw side: {seen} of {} messages in {LIMIT:?}", total + 1)
        };
        let received = received
            .unwrap_or_else(|err| panic!("raw ReceiveMessage: {}", DisplayErrorContext(&err)));
        counts.receive_message.fetch_add(1, Ordering::Relaxed);
        waiting += asked.elapsed();
        let messages = received.messages();
        let mut entries = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let order: Order =
                serde_json::from_str(message.body().unwrap_or_default()).expect("decode");
            black_box(order.amount_cents);
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(message.receipt_handle().expect("a receipt handle"))
                    .build()
                    .expect("entry"),
            );
        }
        if !entries.is_empty() {
            let asked = Instant::now();
            let Ok(deleted) = timeout_at(
                deadline,
                raw.sqs
                    .delete_message_batch()
                    .queue_url(&queue_url)
                    .set_entries(Some(entries))
                    .send(),
            )
            .await
            else {
                panic!("raw side: DeleteMessageBatch not answered within {LIMIT:?}")
            };
            let deleted = deleted.unwrap_or_else(|err| {
                panic!("raw DeleteMessageBatch: {}", DisplayErrorContext(&err))
            });
            counts.delete_message_batch.fetch_add(1, Ordering::Relaxed);
            waiting += asked.elapsed();
            assert!(
                deleted.failed().is_empty(),
                "raw DeleteMessageBatch: entries failed: {:?}",
                deleted.failed()
            );
        }
        seen += messages.len() as u64;
        flow.handled(messages.len() as u64);
        if started.is_none() && seen > 0 {
            started = Some(Instant::now());
            before = counts.snapshot();
            waiting = Duration::ZERO;
            let (sns, topic_arn, counts, flow, payloads) = (
                raw.sns.clone(),
                topic_arn.clone(),
                counts.clone(),
                flow.clone(),
                measured.take().unwrap_or_default(),
            );
            publisher = Some(tokio::spawn(async move {
                raw_publish(&sns, &topic_arn, &payloads, &counts, &flow).await;
            }));
        }
    }
    let elapsed = started.expect("the first message").elapsed();
    if let Some(publisher) = publisher {
        timeout_at(deadline, publisher)
            .await
            .expect("the raw publisher done in time")
            .expect("the raw publisher");
    }
    Run {
        rate: total as f64 / elapsed.as_secs_f64(),
        requests: counts.since(before),
        waiting: Some(waiting.as_secs_f64() / elapsed.as_secs_f64()),
    }
}

// ---------------------------------------------------------------------------------------
// event-binder

async fn publish(channel: &SnsSqsChannel, destination: &str, payloads: &[Vec<u8>], flow: &Flow) {
    let producer = channel.producer(destination).await.expect("producer");
    for chunk in payloads.chunks(PUBLISH_CHUNK) {
        flow.room(chunk.len() as u64).await;
        let batch = chunk.iter().map(|p| Message::new(p.clone())).collect();
        producer.send_batch(batch).await.expect("publishing");
    }
}

/// Publishes in a task of its own, so that consuming overlaps publishing.
fn spawn_publish(
    channel: &SnsSqsChannel,
    destination: &str,
    payloads: Vec<Vec<u8>>,
    flow: &Arc<Flow>,
) -> tokio::task::JoinHandle<()> {
    let (channel, destination, flow) = (channel.clone(), destination.to_owned(), flow.clone());
    tokio::spawn(async move { publish(&channel, &destination, &payloads, &flow).await })
}

async fn run_backend(prefix: &str, payloads: &[Vec<u8>]) -> Run {
    let (channel, destination) = provisioned(prefix).await;
    let total = payloads.len() as u64;
    let mut measured = Some(payloads.to_vec());
    let mut consumer = channel
        .consumer(
            &Subscription::new(&destination)
                .group(GROUP)
                .prefetch(PREFETCH as u16),
        )
        .await
        .expect("consumer");
    let flow = Arc::new(Flow::default());
    publish(&channel, &destination, &payloads[..1], &flow).await;
    let deadline = Instant::now() + LIMIT;
    let mut started = None;
    let mut before = RequestCounts::default();
    let mut publisher = None;
    for seen in 0..=total {
        let delivery = timeout_at(deadline, consumer.receive())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "backend side: {seen} of {} messages in {LIMIT:?}",
                    total + 1
                )
            })
            .expect("receive");
        let order: Order = serde_json::from_slice(delivery.message().payload()).expect("decode");
        black_box(order.amount_cents);
        delivery.ack().await.expect("ack");
        flow.handled(1);
        if seen == 0 {
            started = Some(Instant::now());
            before = channel.requests();
            publisher = Some(spawn_publish(
                &channel,
                &destination,
                measured.take().unwrap_or_default(),
                &flow,
            ));
        }
    }
    let elapsed = started.expect("the first message").elapsed();
    if let Some(publisher) = publisher {
        timeout_at(deadline, publisher)
            .await
            .expect("the publisher done in time")
            .expect("the publisher");
    }
    // Sends the queued deletes while the consumer is still there.
    timeout(LIMIT, channel.close())
        .await
        .expect("closing in time")
        .expect("close");
    drop(consumer);
    let requests = settled_requests(&channel).await.since(&before);
    Run {
        rate: total as f64 / elapsed.as_secs_f64(),
        requests: counts_map(&requests),
        waiting: None,
    }
}

async fn run_runtime(prefix: &str, payloads: &[Vec<u8>]) -> Run {
    let (channel, destination) = provisioned(prefix).await;
    let total = payloads.len() as u64;
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let first = Arc::new(Notify::new());
    let flow = Arc::new(Flow::default());
    let handler = {
        let (handled, done, first, flow) =
            (handled.clone(), done.clone(), first.clone(), flow.clone());
        Handler::from_fn(
            HandlerSpec::new("bench", destination.as_str()).group(GROUP),
            move |order: Order, _ctx: Context| {
                let (handled, done, first, flow) =
                    (handled.clone(), done.clone(), first.clone(), flow.clone());
                async move {
                    black_box(order.amount_cents);
                    flow.handled(1);
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
        .handler(handler)
        .start()
        .await
        .expect("app");
    publish(&channel, &destination, &payloads[..1], &flow).await;
    timeout(LIMIT, first.notified())
        .await
        .expect("the first message handled in time");
    let measured = payloads.to_vec();
    let started = Instant::now();
    let before = channel.requests();
    let publisher = spawn_publish(&channel, &destination, measured, &flow);
    timeout(LIMIT, done.notified()).await.unwrap_or_else(|_| {
        panic!(
            "runtime side: {} of {} messages in {LIMIT:?}",
            handled.load(Ordering::Relaxed),
            total + 1
        )
    });
    let elapsed = started.elapsed();
    timeout(LIMIT, publisher)
        .await
        .expect("the publisher done in time")
        .expect("the publisher");
    // Shutting down waits for the last acks to be queued; closing sends them.
    timeout(LIMIT, running.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");
    timeout(LIMIT, channel.close())
        .await
        .expect("closing in time")
        .expect("close");
    let requests = settled_requests(&channel).await.since(&before);
    Run {
        rate: total as f64 / elapsed.as_secs_f64(),
        requests: counts_map(&requests),
        waiting: None,
    }
}

async fn run(side: Side, raw: &RawClients, prefix: &str, payloads: &[Vec<u8>]) -> Run {
    match side {
        Side::Raw => run_raw(raw, prefix, payloads).await,
        Side::Backend => run_backend(prefix, payloads).await,
        Side::Runtime => run_runtime(prefix, payloads).await,
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() - 1],
        values[values.len() / 2],
        values[0],
    )
}

fn per_message(requests: &BTreeMap<String, u64>, messages: u64) -> f64 {
    requests.values().sum::<u64>() as f64 / messages as f64
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The version of a crate in the workspace's Cargo.lock.
fn locked_version(lock: &str, name: &str) -> String {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            if let Some(version) = lines
                .next()
                .and_then(|l| l.strip_prefix("version = \""))
                .and_then(|l| l.strip_suffix('"'))
            {
                return version.to_owned();
            }
        }
    }
    "?".into()
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
    let rustc = command_output("rustc", &["--version"])
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("cpu: {cpu}; cores: {cores}; {rustc}; profile: {profile}");
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
        .unwrap_or_default();
    println!(
        "event-binder-sns-sqs {}, aws-sdk-sns {}, aws-sdk-sqs {}, aws-config {}, \
         aws-smithy-http-client {} (rustls, ring)",
        env!("CARGO_PKG_VERSION"),
        locked_version(&lock, "aws-sdk-sns"),
        locked_version(&lock, "aws-sdk-sqs"),
        locked_version(&lock, "aws-config"),
        locked_version(&lock, "aws-smithy-http-client"),
    );
    let cache = std::env::var("EVENT_BINDER_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/event-binder",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let moto = command_output(
        &format!("{cache}/moto-5.2.5/bin/pip"),
        &["show", "--disable-pip-version-check", "moto"],
    )
    .and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("Version: ").map(|v| v.trim().to_owned()))
    })
    .map_or_else(
        || "moto (version not found; scripts/sns-sqs.sh installs 5.2.5)".to_owned(),
        |version| format!("moto {version}"),
    );
    println!(
        "broker: whatever answers on {ENDPOINT} (scripts/sns-sqs.sh starts {moto}, in memory), \
         region {REGION}"
    );
    println!(
        "tokio multi-thread, 2 workers; long polling {WAIT_TIME_S} s, visibility {VISIBILITY_S} s, \
         up to {BATCH} per ReceiveMessage; publishing: {PUBLISH_CHUNK} messages per send_batch \
         (raw: {} PublishBatch requests of {BATCH} at once), at most {MAX_BACKLOG} messages \
         published and not handled; backend prefetch {PREFETCH}, \
         runtime concurrency (and prefetch) {PREFETCH}, batch window 5 ms (default)",
        PUBLISH_CHUNK / BATCH
    );
}

fn main() {
    let count: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .max(1);
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
        let prefix = format!("bench-{}-", unique());
        let raw = raw_clients().await;
        let payloads = payloads(count);
        let sides = [Side::Raw, Side::Backend, Side::Runtime];
        // Warm-up, discarded.
        let warm_up = payloads.len().min(1_000);
        for side in sides {
            run(side, &raw, &prefix, &payloads[..warm_up]).await;
        }
        let mut runs: Vec<Vec<Run>> = sides.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for (index, side) in sides.iter().enumerate() {
                let result = run(*side, &raw, &prefix, &payloads).await;
                let waiting = result.waiting.map_or(String::new(), |share| {
                    format!(
                        " (consumer waiting on SQS {:.0}% of the run)",
                        share * 100.0
                    )
                });
                println!(
                    "round {}: {:<7} {:>6.0} msg/s, {:.4} requests/msg{waiting}",
                    round + 1,
                    format!("{side:?}"),
                    result.rate,
                    per_message(&result.requests, count),
                );
                runs[index].push(result);
            }
        }
        println!();
        println!(
            "{count} messages per run, {rounds} rounds (a warm-up round of {warm_up} discarded)"
        );
        let mut medians = Vec::new();
        let mut spreads = Vec::new();
        for (side, runs) in sides.iter().zip(&runs) {
            let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
            let (best, median, worst) = summary(&mut rates);
            println!(
                "{:<7} best {best:>6.0}, median {median:>6.0}, worst {worst:>6.0} msg/s",
                format!("{side:?}:")
            );
            medians.push(median);
            spreads.push(best - worst);
        }
        for (index, side) in [(1, Side::Backend), (2, Side::Runtime)] {
            let ratio = medians[index] / medians[0];
            let spread = spreads[0].max(spreads[index]);
            let verdict = if (medians[index] - medians[0]).abs() < spread {
                "indistinguishable from raw (difference below the best-to-worst spread)"
            } else {
                "distinguishable (difference above the best-to-worst spread)"
            };
            println!("{side:?}/Raw median ratio: {ratio:.3} ({verdict})");
        }
        if let Some(waiting) = runs[0]
            .iter()
            .filter_map(|r| r.waiting)
            .min_by(f64::total_cmp)
        {
            println!(
                "the raw consumer loop spent at least {:.0}% of every run waiting on SQS \
                 (broker-bound{})",
                waiting * 100.0,
                if waiting > 0.9 { "" } else { " in part" }
            );
        }
        println!();
        println!(
            "requests per message end to end (publish + receive + delete; target <= {TARGET}, \
             a naive client makes 3):"
        );
        for (side, runs) in sides.iter().zip(&runs) {
            let mut each: Vec<f64> = runs
                .iter()
                .map(|r| per_message(&r.requests, count))
                .collect();
            let all: Vec<String> = each.iter().map(|v| format!("{v:.4}")).collect();
            let (_, median, _) = summary(&mut each);
            let verdict = if median <= TARGET { "meets" } else { "misses" };
            println!(
                "  {:<8} median {median:.4} ({verdict} the target; rounds: {})",
                format!("{side:?}:"),
                all.join(", ")
            );
            let mut total: BTreeMap<&str, u64> = BTreeMap::new();
            for run in runs {
                for (op, n) in &run.requests {
                    *total.entry(op).or_default() += n;
                }
            }
            let messages = count * runs.len() as u64;
            for (op, n) in total {
                println!(
                    "      {op:<28} {:.4}/msg, {:>5.2} msgs per request ({n} over {} runs)",
                    n as f64 / messages as f64,
                    messages as f64 / n as f64,
                    runs.len()
                );
            }
        }
    });
}
