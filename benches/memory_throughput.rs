//! Run with: `cargo bench --bench memory_throughput` (optionally `-- <messages>` for another
//! message count per run).
//!
//! Publish → handle throughput on the in-memory backend, against a raw tokio mpsc channel
//! carrying the same bytes into the same serde decode: issue #11's payload,
//! `{"id":1000000,"quantity":37}`, decoded into `Order { id: u64, quantity: u32 }` (the
//! bytes and struct `memory_cost` uses). Four loops that differ only in what carries the
//! messages and how many are handled at once:
//!
//! - raw: a bounded `tokio::sync::mpsc` channel; the consumer decodes each payload;
//! - backend: `MemoryChannel`'s producer and consumer driven by a plain loop (receive,
//!   decode, ack), one message at a time;
//! - runtime c1: the full service: an `App` with one handler (`Handler::from_fn`) taking the
//!   decoded `Order`, with idempotency (the default in-memory store, full after its first
//!   100,000 ids), retry bookkeeping and acknowledgement, concurrency 1;
//! - runtime c16: the same app with concurrency 16 (and so a prefetch of 16).
//!
//! Each loop: a fresh channel, the consumer attached before the first message, then one
//! publisher task and the consuming side running at the same time on a multi-thread tokio
//! runtime with 2 workers; the clock runs from the first send until the last message is
//! handled. Both fields of every decoded event go through `black_box`. After a discarded
//! warm-up of every loop, the loops are interleaved for 5 rounds (raw, backend, c1, c16,
//! raw, …). Prints every round, then best, median and worst msgs/s of each loop with its
//! spread (best − worst, as a share of the median), and the ratios issue #11 sets targets
//! for: runtime/raw (≥ 0.8, at both concurrencies) and c16/c1 (no slower), each the ratio
//! of the medians with the range of the per-round ratios beside it. A difference smaller
//! than the best-to-worst spread of either loop is reported as indistinguishable.

use event_binder::memory::{MemoryChannel, MemoryConfig, MemoryProducer};
use event_binder::{App, Channel, Consumer, Handler, HandlerSpec, Message, Producer, Subscription};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

mod support;
use support::{payload, Order};

/// Messages per measured run, unless the command line gives another count.
const MESSAGES: usize = 1_000_000;
/// Messages per loop in the discarded warm-up.
const WARM_UP: usize = 100_000;
const ROUNDS: usize = 5;
/// The bound of the raw channel and of the memory channel's queue.
const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Raw,
    Backend,
    Runtime(usize),
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Raw,
        Scenario::Backend,
        Scenario::Runtime(1),
        Scenario::Runtime(16),
    ];

    fn name(self) -> String {
        match self {
            Scenario::Raw => "raw mpsc".to_owned(),
            Scenario::Backend => "backend loop".to_owned(),
            Scenario::Runtime(concurrency) => format!("runtime c{concurrency}"),
        }
    }

    /// Runs `count` messages through the loop; the time from the first send until the
    /// last message is handled.
    async fn run(self, count: usize) -> Duration {
        match self {
            Scenario::Raw => raw(count).await,
            Scenario::Backend => backend(count).await,
            Scenario::Runtime(concurrency) => runtime(count, concurrency).await,
        }
    }
}

fn decode(payload: &[u8]) {
    let event: Order = serde_json::from_slice(payload).expect("decode");
    event.consume();
}

async fn raw(count: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(CAPACITY);
    let consumer = tokio::spawn(async move {
        for _ in 0..count {
            let payload = rx.recv().await.expect("raw channel closed early");
            decode(&payload);
        }
    });
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..count {
            tx.send(payload()).await.expect("raw send");
        }
    });
    producer.await.expect("raw producer");
    consumer.await.expect("raw consumer");
    start.elapsed()
}

fn channel() -> MemoryChannel {
    MemoryChannel::with_config(MemoryConfig::default().capacity(CAPACITY))
}

fn message() -> Message {
    Message::new(payload()).with_content_type("application/json")
}

/// Sends `count` messages from a task of its own.
fn publish(producer: MemoryProducer, count: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..count {
            producer.send(message()).await.expect("send");
        }
    })
}

async fn backend(count: usize) -> Duration {
    let channel = channel();
    let subscription = Subscription::new("orders").group("bench");
    let mut consumer = channel.consumer(&subscription).await.expect("consumer");
    let producer = channel.producer("orders").await.expect("producer");
    let consuming = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = consumer.receive().await.expect("receive");
            decode(delivery.message().payload());
            delivery.ack().await.expect("ack");
        }
    });
    let start = Instant::now();
    publish(producer, count).await.expect("backend producer");
    consuming.await.expect("backend consumer");
    start.elapsed()
}

async fn runtime(count: usize, concurrency: usize) -> Duration {
    let channel = channel();
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (handled, done) = (handled.clone(), done.clone());
        Handler::from_fn(
            HandlerSpec::new("bench", "orders")
                .group("bench")
                .concurrency(concurrency),
            move |event: Order| {
                event.consume();
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    done.notify_one();
                }
                async { Ok::<(), std::convert::Infallible>(()) }
            },
        )
    };
    let running = App::new(channel.clone())
        .handler(handler)
        .start()
        .await
        .expect("start");
    let producer = channel.producer("orders").await.expect("producer");
    let start = Instant::now();
    publish(producer, count).await.expect("runtime producer");
    done.notified().await;
    let elapsed = start.elapsed();
    running.shutdown().await.expect("shutdown");
    elapsed
}

/// The msgs/s of one loop, one figure per round.
struct Figures {
    scenario: Scenario,
    rates: Vec<f64>,
}

impl Figures {
    fn sorted(&self) -> Vec<f64> {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates
    }

    fn best(&self) -> f64 {
        *self.sorted().last().expect("a round")
    }

    fn median(&self) -> f64 {
        median(self.sorted())
    }

    fn worst(&self) -> f64 {
        self.sorted()[0]
    }

    fn spread(&self) -> f64 {
        self.best() - self.worst()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// Prints `numerator / denominator`: the ratio of the medians, the range of the per-round
/// ratios, and the verdict against `target` (a ratio the medians should reach), if any.
fn ratio(label: &str, numerator: &Figures, denominator: &Figures, target: Option<f64>) {
    let of_medians = numerator.median() / denominator.median();
    let per_round: Vec<f64> = numerator
        .rates
        .iter()
        .zip(&denominator.rates)
        .map(|(n, d)| n / d)
        .collect();
    let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let high = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let difference = (numerator.median() - denominator.median()).abs();
    let spread = numerator.spread().max(denominator.spread());
    let verdict = if difference < spread {
        format!("indistinguishable (difference {difference:.0} msgs/s < spread {spread:.0})")
    } else {
        match target {
            Some(target) if of_medians >= target => format!("meets target >= {target:.2}"),
            Some(target) => format!("below target >= {target:.2}"),
            None => "no target".to_owned(),
        }
    };
    println!("{label:<22} {of_medians:>6.2}   rounds {low:.2}..{high:.2}   {verdict}");
}

fn environment(messages: usize) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cpu: {cpu}");
    println!(
        "cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("rustc: {}", rustc.trim());
    println!(
        "event-binder {}, tokio multi-thread runtime with 2 workers, profile: {}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "scenario: {messages} messages of {} bytes JSON per run, decoded into Order {{ id: u64, quantity: u32 }}, \
         {WARM_UP} to warm up, {ROUNDS} interleaved rounds, capacity {CAPACITY}",
        support::PAYLOAD.len()
    );
}

fn main() {
    let messages = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .map(|arg| arg.parse().expect("a message count"))
        .unwrap_or(MESSAGES);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    environment(messages);
    let mut figures: Vec<Figures> = Scenario::ALL
        .into_iter()
        .map(|scenario| Figures {
            scenario,
            rates: Vec::with_capacity(ROUNDS),
        })
        .collect();
    tokio.block_on(async {
        for scenario in Scenario::ALL {
            scenario.run(WARM_UP.min(messages)).await;
        }
        for round in 1..=ROUNDS {
            for loop_figures in &mut figures {
                let elapsed = loop_figures.scenario.run(messages).await;
                let rate = messages as f64 / elapsed.as_secs_f64();
                println!(
                    "round {round}: {:<14} {rate:>12.0} msgs/s",
                    loop_figures.scenario.name()
                );
                loop_figures.rates.push(rate);
            }
        }
    });
    println!();
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>8}",
        "loop", "best", "median", "worst", "spread"
    );
    for loop_figures in &figures {
        println!(
            "{:<14} {:>12.0} {:>12.0} {:>12.0} {:>7.1}%",
            loop_figures.scenario.name(),
            loop_figures.best(),
            loop_figures.median(),
            loop_figures.worst(),
            100.0 * loop_figures.spread() / loop_figures.median()
        );
    }
    println!();
    println!("ratio (of medians)     value    per-round range   verdict");
    let [raw, backend, c1, c16] = &figures[..] else {
        unreachable!("one figure per scenario");
    };
    ratio("backend / raw", backend, raw, None);
    ratio("runtime c1 / raw", c1, raw, Some(0.8));
    ratio("runtime c16 / raw", c16, raw, Some(0.8));
    ratio("runtime c16 / c1", c16, c1, Some(1.0));
}
