//! Run with: `cargo bench --bench memory_throughput`
//!
//! Publish → handle throughput of a ~100-byte JSON event on the in-memory backend, against a
//! raw tokio mpsc channel carrying the same bytes into the same serde decode. Three loops
//! that differ only in what carries the messages, interleaved for several rounds:
//!
//! - raw: a bounded `tokio::sync::mpsc` channel; the consumer decodes each payload;
//! - backend: `MemoryChannel`'s producer and consumer driven by a plain loop (decode, ack);
//! - runtime: the full service: an `App` with one handler (concurrency 1, like the loops),
//!   with idempotency, retry bookkeeping and acknowledgement.
//!
//! Each loop: one publisher task, one consumer, the consumer attached before the first
//! message, a field of every decoded event read through `black_box`. Prints best, median and
//! worst msgs/s of each loop and the runtime/raw ratio.

use event_binder::memory::{MemoryChannel, MemoryConfig};
use event_binder::{App, Channel, Context, Handler, HandlerSpec, Message, Subscription};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

mod support;
use support::{payload, OrderPlaced};

const MESSAGES: usize = 300_000;
const WARM_UP: usize = 30_000;
const ROUNDS: usize = 3;
const CAPACITY: usize = 10_000;

fn payloads(count: usize) -> Vec<bytes::Bytes> {
    (0..count as u64).map(payload).collect()
}

fn decode(payload: &[u8]) {
    let event: OrderPlaced = serde_json::from_slice(payload).expect("decode");
    black_box(event.quantity);
}

async fn raw(payloads: &[bytes::Bytes]) -> Duration {
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(CAPACITY);
    let count = payloads.len();
    let consumer = tokio::spawn(async move {
        for _ in 0..count {
            let payload = rx.recv().await.expect("raw channel closed early");
            decode(&payload);
        }
    });
    let start = Instant::now();
    let to_send = payloads.to_vec();
    let producer = tokio::spawn(async move {
        for payload in to_send {
            tx.send(payload).await.expect("raw send");
        }
    });
    producer.await.expect("raw producer");
    consumer.await.expect("raw consumer");
    start.elapsed()
}

fn channel() -> MemoryChannel {
    MemoryChannel::with_config(MemoryConfig::default().capacity(CAPACITY))
}

fn message(payload: &bytes::Bytes) -> Message {
    Message::new(payload.clone()).with_content_type("application/json")
}

async fn backend(payloads: &[bytes::Bytes]) -> Duration {
    let channel = channel();
    let subscription = Subscription::new("orders").group("bench");
    let mut consumer = channel.consumer(&subscription).await.expect("consumer");
    let producer = channel.producer("orders").await.expect("producer");
    let count = payloads.len();
    let consuming = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = consumer.receive().await.expect("receive");
            decode(delivery.message().payload());
            delivery.ack().await.expect("ack");
        }
    });
    let start = Instant::now();
    let to_send = payloads.to_vec();
    let producing = tokio::spawn(async move {
        for payload in &to_send {
            producer.send(message(payload)).await.expect("send");
        }
    });
    producing.await.expect("backend producer");
    consuming.await.expect("backend consumer");
    start.elapsed()
}

async fn runtime(payloads: &[bytes::Bytes]) -> Duration {
    let channel = channel();
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let count = payloads.len();
    let handler = {
        let (handled, done) = (handled.clone(), done.clone());
        Handler::from_fn(
            HandlerSpec::new("bench", "orders").group("bench"),
            move |event: OrderPlaced, _ctx: Context| {
                black_box(event.quantity);
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    done.notify_one();
                }
                async { Ok::<(), std::convert::Infallible>(()) }
            },
        )
    };
    let running = App::new(channel.clone())
        .concurrency(1)
        .handler(handler)
        .start()
        .await
        .expect("start");
    let producer = channel.producer("orders").await.expect("producer");
    let start = Instant::now();
    let to_send = payloads.to_vec();
    let producing = tokio::spawn(async move {
        for payload in &to_send {
            producer.send(message(payload)).await.expect("send");
        }
    });
    producing.await.expect("runtime producer");
    done.notified().await;
    let elapsed = start.elapsed();
    running.shutdown().await.expect("shutdown");
    elapsed
}

struct Figures {
    name: &'static str,
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
        let rates = self.sorted();
        rates[rates.len() / 2]
    }

    fn worst(&self) -> f64 {
        self.sorted()[0]
    }
}

fn environment() {
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
        "scenario: {MESSAGES} messages of ~100 bytes JSON per run, {ROUNDS} interleaved rounds, capacity {CAPACITY}"
    );
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    environment();
    let data = payloads(MESSAGES);
    let warm = payloads(WARM_UP);
    let mut raw_figures = Figures {
        name: "raw mpsc",
        rates: Vec::new(),
    };
    let mut backend_figures = Figures {
        name: "backend loop",
        rates: Vec::new(),
    };
    let mut runtime_figures = Figures {
        name: "runtime (App)",
        rates: Vec::new(),
    };
    tokio.block_on(async {
        raw(&warm).await;
        backend(&warm).await;
        runtime(&warm).await;
        for round in 1..=ROUNDS {
            for figures in [&mut raw_figures, &mut backend_figures, &mut runtime_figures] {
                let elapsed = match figures.name {
                    "raw mpsc" => raw(&data).await,
                    "backend loop" => backend(&data).await,
                    _ => runtime(&data).await,
                };
                let rate = MESSAGES as f64 / elapsed.as_secs_f64();
                println!("round {round}: {:<14} {rate:>12.0} msgs/s", figures.name);
                figures.rates.push(rate);
            }
        }
    });
    println!();
    println!(
        "{:<14} {:>12} {:>12} {:>12}",
        "loop", "best", "median", "worst"
    );
    for figures in [&raw_figures, &backend_figures, &runtime_figures] {
        println!(
            "{:<14} {:>12.0} {:>12.0} {:>12.0}",
            figures.name,
            figures.best(),
            figures.median(),
            figures.worst()
        );
    }
    for figures in [&backend_figures, &runtime_figures] {
        let ratio = figures.median() / raw_figures.median();
        let spread =
            (raw_figures.best() - raw_figures.worst()).max(figures.best() - figures.worst());
        let difference = (raw_figures.median() - figures.median()).abs();
        if difference < spread {
            println!(
                "{} / raw: indistinguishable (difference {difference:.0} msgs/s < spread {spread:.0})",
                figures.name
            );
        } else {
            println!("{} / raw (median): {ratio:.2}", figures.name);
        }
    }
}
