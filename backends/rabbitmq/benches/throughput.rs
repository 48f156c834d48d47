//! Run with: `scripts/rabbitmq.sh && cargo bench -p event-binder-rabbitmq` (add
//! `-- handle`, `-- publish` or `-- batch` to run only those scenarios).
//!
//! Throughput on a real RabbitMQ (127.0.0.1:5672, guest/guest), event-binder against raw
//! lapin, per `BENCHMARKS.md`. Two scenarios, each run by loops that differ only in what
//! carries the messages, interleaved round by round after a discarded warm-up round:
//!
//! **Handle** (consume, decode, ack): the queue is filled first, with the consumer already
//! attached; the clock runs from the start of consuming to the last ack (the runtime: the
//! last handler call). Every loop has prefetch 32, handles one message at a time (the app
//! runs with concurrency 1, its prefetch set by `RabbitConfig::prefetch`), decodes the same
//! JSON into the same struct with serde_json, reads a field through `black_box`, and acks
//! each message after decoding it.
//! - raw: lapin's consumer stream, `basic.ack` per delivery, awaited (lapin's examples);
//! - raw+: the same, with each ack queued on the channel (`Channel::basic_ack` polled once)
//!   without waiting for the write, which is what the backend does (the broker does not
//!   answer acks);
//! - backend: event-binder's `Consumer::receive` and `Delivery::ack` in a plain loop;
//! - runtime: an `App` with one handler (idempotency, retry bookkeeping, acks).
//!
//! **Publish** with confirms, persistent messages, mandatory, to a destination with one
//! durable group: one at a time, each waiting for its confirm; and in batches of 100
//! (published together, then all confirms awaited).
//! - raw: lapin's `basic_publish` on a confirm-mode channel;
//! - backend: event-binder's `Producer::send` / `send_batch`.
//!
//! All loops share one tokio runtime (multi-threaded, 2 workers) and one connection each;
//! names are fresh for every run and deleted after it. Prints the environment, then best,
//! median and worst msgs/s of each loop, the ratios of medians against raw (and
//! "indistinguishable" when the difference is within the larger best-to-worst spread), and how
//! much CPU the client used: well under one core means the loop was waiting on the broker.

use event_binder_core::{
    App, Channel, Consumer, Context, Handler, HandlerSpec, Message, Producer, RetryPolicy,
    Subscription,
};
use event_binder_rabbitmq::{RabbitChannel, RabbitConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

type BenchResult<T> = Result<T, Box<dyn StdError + Send + Sync>>;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PREFETCH: u16 = 32;
const ROUNDS: usize = 3;
const BATCH: usize = 100;
/// How long each timed run should last, roughly.
const RUN_TARGET: Duration = Duration::from_millis(2_500);
const WARM_UP_HANDLE: usize = 10_000;
const WARM_UP_PUBLISH: usize = 500;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    sku: String,
    quantity: u32,
    total_cents: u64,
}

/// The same payload bytes for every loop.
fn payload() -> BenchResult<Vec<u8>> {
    let event = OrderPlaced {
        order_id: 4_242_424,
        customer: "customer-004242".to_owned(),
        sku: "SKU-0001-BLUE".to_owned(),
        quantity: 3,
        total_cents: 12_345,
    };
    Ok(serde_json::to_vec(&event)?)
}

fn decode(payload: &[u8]) -> BenchResult<()> {
    let event: OrderPlaced = serde_json::from_slice(payload)?;
    black_box(event.quantity);
    Ok(())
}

fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

/// CPU time used by this process so far (Linux; zero elsewhere).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(after_name) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// One timed run: how many messages, how long, how much client CPU.
#[derive(Debug, Clone, Copy)]
struct Run {
    messages: usize,
    wall: Duration,
    cpu: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }

    fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

async fn timed<F: Future<Output = BenchResult<usize>>>(work: F) -> BenchResult<Run> {
    let (cpu, start) = (cpu_time(), Instant::now());
    let messages = work.await?;
    Ok(Run {
        messages,
        wall: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    })
}

/// A fresh destination and group, provisioned, with a channel of their own.
struct Fixture {
    channel: RabbitChannel,
    destination: String,
    group: String,
}

impl Fixture {
    async fn new() -> BenchResult<Self> {
        let config = RabbitConfig::new(URL)?
            .prefix(format!("bench-{}-", unique()))
            .prefetch(PREFETCH)
            .queue_expires(Duration::from_secs(600));
        let channel = RabbitChannel::with_config(config).await?;
        let (destination, group) = ("orders".to_owned(), "billing".to_owned());
        channel.provision(&destination, Some(&group)).await?;
        Ok(Fixture {
            channel,
            destination,
            group,
        })
    }

    fn queue(&self) -> BenchResult<String> {
        Ok(self.channel.queue_name(&self.destination, &self.group)?)
    }

    /// Fills the group's queue with `count` messages.
    async fn fill(&self, payload: &[u8], count: usize) -> BenchResult<()> {
        let producer = self.channel.producer(&self.destination).await?;
        let mut left = count;
        while left > 0 {
            let batch = left.min(1_000);
            let messages = (0..batch)
                .map(|_| Message::new(payload.to_vec()).with_content_type("application/json"))
                .collect();
            producer.send_batch(messages).await?;
            left -= batch;
        }
        Ok(())
    }

    /// Deletes the exchange and queues, and closes the channel.
    async fn remove(self) -> BenchResult<()> {
        let connection = raw_connection().await?;
        let raw = connection.create_channel().await?;
        let dead_letters = self
            .channel
            .dead_letter_queue_name(&self.destination, Some(&self.group))?;
        for queue in [self.queue()?, dead_letters] {
            raw.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        let exchange = self.channel.exchange_name(&self.destination)?;
        raw.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        self.channel.close().await?;
        Ok(())
    }
}

async fn raw_connection() -> BenchResult<Connection> {
    Ok(Connection::connect(URL, ConnectionProperties::default()).await?)
}

// ---- Handle ----------------------------------------------------------------------------

/// How the raw loop acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawAck {
    /// `delivery.acker.ack(..).await`: waits until lapin has written the frame.
    Awaited,
    /// `channel.basic_ack(..)` polled once: the frame is queued on the channel and not
    /// waited for, as the backend does (the broker does not answer acks either way).
    HandedOver,
}

async fn handle_raw(payload: &[u8], count: usize, ack: RawAck) -> BenchResult<Run> {
    let fixture = Fixture::new().await?;
    let connection = raw_connection().await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            fixture.queue()?.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    fixture.fill(payload, count).await?;
    let run = timed(async {
        for _ in 0..count {
            let next =
                poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut consumer), cx)).await;
            let delivery = next.ok_or("the raw consumer ended early")??;
            decode(&delivery.data)?;
            if ack == RawAck::Awaited {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            } else {
                let acking = channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default());
                let mut acking = std::pin::pin!(acking);
                let mut context = std::task::Context::from_waker(std::task::Waker::noop());
                if let std::task::Poll::Ready(acked) = acking.as_mut().poll(&mut context) {
                    acked?;
                }
            }
        }
        Ok(count)
    })
    .await?;
    drop(consumer);
    drop(channel);
    drop(connection);
    fixture.remove().await?;
    Ok(run)
}

async fn handle_backend(payload: &[u8], count: usize) -> BenchResult<Run> {
    let fixture = Fixture::new().await?;
    let subscription = Subscription::new(&fixture.destination).group(&fixture.group);
    let mut consumer = fixture.channel.consumer(&subscription).await?;
    fixture.fill(payload, count).await?;
    let run = timed(async {
        for _ in 0..count {
            let delivery = consumer.receive().await?;
            decode(delivery.message().payload())?;
            delivery.ack().await?;
        }
        Ok(count)
    })
    .await?;
    drop(consumer);
    fixture.remove().await?;
    Ok(run)
}

async fn handle_runtime(payload: &[u8], count: usize) -> BenchResult<Run> {
    let fixture = Fixture::new().await?;
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (open, gate) = tokio::sync::watch::channel(false);
    let handler = {
        let (handled, done) = (handled.clone(), done.clone());
        Handler::from_fn(
            HandlerSpec::new("bench", fixture.destination.as_str()).group(fixture.group.as_str()),
            move |event: OrderPlaced, _ctx: Context| {
                let (handled, done, mut gate) = (handled.clone(), done.clone(), gate.clone());
                async move {
                    if !*gate.borrow() {
                        gate.wait_for(|open| *open)
                            .await
                            .map_err(|_| "gate dropped")?;
                    }
                    black_box(event.quantity);
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == count {
                        done.notify_one();
                    }
                    Ok::<(), &'static str>(())
                }
            },
        )
    };
    let running = App::new(fixture.channel.clone())
        .concurrency(1)
        .retry(RetryPolicy::new(1))
        .handler(handler)
        .start()
        .await?;
    fixture.fill(payload, count).await?;
    let run = timed(async {
        open.send_replace(true);
        done.notified().await;
        Ok(count)
    })
    .await?;
    running.shutdown().await?;
    fixture.remove().await?;
    Ok(run)
}

// ---- Publish ---------------------------------------------------------------------------

/// The properties event-binder sets, so that raw lapin sends the same bytes.
fn raw_properties() -> BasicProperties {
    let millis = event_binder_core::millis_since_epoch(SystemTime::now());
    let mut headers = FieldTable::default();
    headers.insert(
        "message-timestamp".into(),
        AMQPValue::LongString(LongString::from(millis.to_string())),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_timestamp(millis / 1000)
        .with_message_id(ShortString::from(event_binder_core::new_message_id()))
        .with_content_type("application/json".into())
        .with_headers(headers)
}

fn confirmed(confirmation: Confirmation) -> BenchResult<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("not confirmed: {other:?}").into()),
    }
}

async fn publish_raw(payload: &[u8], count: usize, batch: usize) -> BenchResult<Run> {
    let fixture = Fixture::new().await?;
    let connection = raw_connection().await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = fixture.channel.exchange_name(&fixture.destination)?;
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let run = timed(async {
        let mut sent = 0;
        while sent < count {
            let size = batch.min(count - sent);
            let mut confirms = Vec::with_capacity(size);
            for _ in 0..size {
                confirms.push(
                    channel
                        .basic_publish(
                            exchange.as_str().into(),
                            "".into(),
                            options,
                            payload,
                            raw_properties(),
                        )
                        .await?,
                );
            }
            for confirm in confirms {
                confirmed(confirm.await?)?;
            }
            sent += size;
        }
        Ok(count)
    })
    .await?;
    drop(channel);
    drop(connection);
    fixture.remove().await?;
    Ok(run)
}

async fn publish_backend(payload: &[u8], count: usize, batch: usize) -> BenchResult<Run> {
    let fixture = Fixture::new().await?;
    let producer = fixture.channel.producer(&fixture.destination).await?;
    let message = || Message::new(payload.to_vec()).with_content_type("application/json");
    let run = timed(async {
        let mut sent = 0;
        while sent < count {
            let size = batch.min(count - sent);
            if size == 1 {
                producer.send(message()).await?;
            } else {
                producer
                    .send_batch((0..size).map(|_| message()).collect())
                    .await?;
            }
            sent += size;
        }
        Ok(count)
    })
    .await?;
    drop(producer);
    fixture.remove().await?;
    Ok(run)
}

// ---- Reporting -------------------------------------------------------------------------

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn locked_version(name: &str) -> String {
    let lock = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    let Ok(text) = std::fs::read_to_string(lock) else {
        return "unknown".to_owned();
    };
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                return version.trim_matches('"').to_owned();
            }
        }
    }
    "unknown".to_owned()
}

fn print_environment(payload: &[u8]) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("event-binder-rabbitmq throughput (BENCHMARKS.md, part 1)");
    println!("  cpu:      {cpu}, {cores} cores (the broker runs on the same machine)");
    println!("  rustc:    {}", command_output("rustc", &["-V"]));
    println!(
        "  crates:   event-binder-rabbitmq {}, lapin {}, tokio {}",
        env!("CARGO_PKG_VERSION"),
        locked_version("lapin"),
        locked_version("tokio")
    );
    println!(
        "  broker:   RabbitMQ {} on 127.0.0.1:5672",
        command_output("rabbitmqctl", &["-q", "version"])
    );
    println!(
        "  profile:  {}",
        if cfg!(debug_assertions) {
            "debug (numbers are not representative)"
        } else {
            "release (cargo bench)"
        }
    );
    println!(
        "  setup:    tokio multi-thread, 2 workers; prefetch {PREFETCH}; one message at a time; \
         {}-byte JSON payload; persistent messages; {ROUNDS} rounds after a warm-up",
        payload.len()
    );
    println!();
}

/// Best, median and worst rate of a loop's runs, and the client CPU they used.
#[derive(Debug, Clone, Copy)]
struct Summary {
    best: f64,
    median: f64,
    worst: f64,
    cores: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    let mut rates: Vec<f64> = runs.iter().map(Run::rate).collect();
    rates.sort_by(f64::total_cmp);
    Summary {
        best: rates.last().copied().unwrap_or_default(),
        median: rates.get(rates.len() / 2).copied().unwrap_or_default(),
        worst: rates.first().copied().unwrap_or_default(),
        cores: runs.iter().map(Run::cores).sum::<f64>() / runs.len().max(1) as f64,
    }
}

fn report(scenario: &str, loops: &[(&str, Vec<Run>)]) {
    println!("{scenario}");
    let baselines: Vec<(&str, Summary)> = loops
        .iter()
        .filter(|(name, _)| name.starts_with("raw"))
        .map(|(name, runs)| (*name, summarize(runs)))
        .collect();
    for (name, runs) in loops {
        let this = summarize(runs);
        let messages = runs.first().map_or(0, |run| run.messages);
        let mut notes = vec![if this.cores < 0.9 {
            format!(
                "client {:.2} cores (waiting on the broker: broker-bound)",
                this.cores
            )
        } else {
            format!("client {:.2} cores", this.cores)
        }];
        if !name.starts_with("raw") {
            for (raw, base) in &baselines {
                let ratio = this.median / base.median;
                let spread = (base.best - base.worst).max(this.best - this.worst);
                if (this.median - base.median).abs() < spread {
                    notes.push(format!(
                        "{ratio:.3} of {raw} (indistinguishable: within the spread)"
                    ));
                } else {
                    notes.push(format!("{ratio:.3} of {raw}"));
                }
            }
        }
        println!(
            "  {name:<8} best {:>7.0}  median {:>7.0}  worst {:>7.0} msgs/s  ({messages}/run)  {}",
            this.best,
            this.median,
            this.worst,
            notes.join("; ")
        );
    }
    println!();
}

/// How many messages make a run of about [`RUN_TARGET`] at this rate.
fn sized(rate: f64, least: usize) -> usize {
    ((rate * RUN_TARGET.as_secs_f64()) as usize).clamp(least, 200_000)
}

type Loop<'a> = Box<
    dyn Fn(usize) -> Pin<Box<dyn Future<Output = BenchResult<Run>> + Send + 'a>> + Send + Sync + 'a,
>;

/// Interleaves the loops: a warm-up round (discarded, also sizing the runs), then [`ROUNDS`].
async fn compare<'a>(
    loops: &[(&'static str, Loop<'a>)],
    warm_up: usize,
) -> BenchResult<Vec<(&'static str, Vec<Run>)>> {
    let mut slowest = f64::INFINITY;
    for (_, run) in loops {
        slowest = slowest.min(run(warm_up).await?.rate());
    }
    let count = sized(slowest, warm_up);
    let mut results: Vec<(&'static str, Vec<Run>)> =
        loops.iter().map(|(name, _)| (*name, Vec::new())).collect();
    for _ in 0..ROUNDS {
        for ((_, run), (_, runs)) in loops.iter().zip(results.iter_mut()) {
            runs.push(run(count).await?);
        }
    }
    Ok(results)
}

/// Whether to run a scenario: all of them, unless the command line names some
/// (`cargo bench -p event-binder-rabbitmq -- publish batch`).
fn selected(scenario: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|name| scenario.contains(name.as_str()))
}

async fn bench() -> BenchResult<()> {
    let payload = payload()?;
    print_environment(&payload);
    let payload = payload.as_slice();

    let handle: Vec<(&'static str, Loop)> = vec![
        (
            "raw",
            Box::new(move |n| Box::pin(handle_raw(payload, n, RawAck::Awaited))),
        ),
        (
            "raw+",
            Box::new(move |n| Box::pin(handle_raw(payload, n, RawAck::HandedOver))),
        ),
        (
            "backend",
            Box::new(move |n| Box::pin(handle_backend(payload, n))),
        ),
        (
            "runtime",
            Box::new(move |n| Box::pin(handle_runtime(payload, n))),
        ),
    ];
    if selected("handle") {
        let results = compare(&handle, WARM_UP_HANDLE).await?;
        report(
            "Handle: consume, decode, ack (prefetch 32, one at a time)\n  \
         (raw awaits each ack's write, as lapin's examples do; raw+ queues acks on the \
         channel without waiting, as the backend does)",
            &results,
        );
    }

    let single: Vec<(&'static str, Loop)> = vec![
        (
            "raw",
            Box::new(move |n| Box::pin(publish_raw(payload, n, 1))),
        ),
        (
            "backend",
            Box::new(move |n| Box::pin(publish_backend(payload, n, 1))),
        ),
    ];
    if selected("publish") {
        let results = compare(&single, WARM_UP_PUBLISH).await?;
        report("Publish with confirms, one at a time", &results);
    }

    let batched: Vec<(&'static str, Loop)> = vec![
        (
            "raw",
            Box::new(move |n| Box::pin(publish_raw(payload, n, BATCH))),
        ),
        (
            "backend",
            Box::new(move |n| Box::pin(publish_backend(payload, n, BATCH))),
        ),
    ];
    if selected("batch") {
        let results = compare(&batched, WARM_UP_PUBLISH * 10).await?;
        report(
            &format!("Publish with confirms, batches of {BATCH}"),
            &results,
        );
    }
    Ok(())
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot build a tokio runtime: {err}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    // On a worker thread, like the app's tasks, rather than on the thread that blocks.
    let outcome = runtime.block_on(async {
        tokio::spawn(bench())
            .await
            .unwrap_or_else(|join| Err(format!("the benchmark task failed: {join}").into()))
    });
    if let Err(err) = outcome {
        eprintln!("the benchmark failed: {err} (is RabbitMQ up? run scripts/rabbitmq.sh)");
        std::process::exit(1);
    }
    println!("({:.0?} in all)", started.elapsed());
}
