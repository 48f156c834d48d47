//! What the code costs per message, on the in-memory backend (no socket in the figures):
//! allocations counted by a counting global allocator, and instructions counted by
//! callgrind, as `shared/BENCHMARKS.md` part 2 and issue #11 ask. `scripts/cost.sh` does all
//! of it with the `cost` profile (`lto = "fat"`, `codegen-units = 1`), the build the issue's
//! figures are for:
//!
//! ```text
//! cargo bench --profile cost --bench memory_cost       # allocations per message
//! cargo bench --profile cost --bench memory_cost --no-run   # then, for instructions:
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     target/cost/deps/memory_cost-<hash> runtime-json 1000   # and again with 2000
//! ```
//!
//! `cargo bench --bench memory_cost` still works; it builds with the plain bench profile,
//! whose figures are not the ones the targets are stated for.
//!
//! Every message carries the same body, `{"id":1000000,"quantity":37}`, so the second half of
//! a run costs what the first does. The JSON scenarios decode it into `Order { id: u64,
//! quantity: u32 }`, which has no strings: the decode itself allocates nothing, so what is
//! counted is event-binder's, not serde's. The raw scenarios take the same bytes undecoded.
//!
//! Each scenario runs its messages once to warm up (queues, maps and the allocator reach
//! their working size, and the idempotency store, sized to the message count, is full),
//! then again inside `measured`, on a current-thread runtime so that
//! every task runs inside it. The cost per message is the difference between runs of 1,000
//! and 2,000 messages divided by 1,000, so fixed costs (starting an app, opening a consumer)
//! cancel out. Scenarios:
//!
//! - `raw-json`: a `tokio::sync::mpsc` channel carrying the payload bytes, decoded with serde;
//! - `backend-json`: `MemoryChannel` consumer in a plain loop: receive, decode, ack;
//! - `backend-raw`: the same loop reading the payload's length, no codec;
//! - `runtime-json`: an `App` with one handler (concurrency 1) taking the decoded `Order`;
//! - `runtime-raw`: the same handler taking `Raw` bytes, no codec;
//! - `runtime-layers`: `runtime-json` with four app-wide tower layers that do nothing
//!   (each service hands the call to the one it wraps): what a no-op layer costs;
//! - `runtime-batch`: an `App` with one batch handler taking `Vec<Order>`, 64 at a time;
//! - `publish`: building one message and `Producer::send` of it into a group's queue.
//!
//! The consuming scenarios find their messages already published (outside the measured
//! section), so they count the consuming side alone.
//!
//! Without arguments, every scenario is run at 1,000 and 2,000 messages and the allocations
//! per message are printed.

use event_binder::memory::{MemoryChannel, MemoryConfig};
use event_binder::{
    App, Batch, BatchHandler, Channel, Consumer, Context, Handler, HandlerSpec, Layer,
    MemoryIdempotencyStore, Message, Producer, Raw, Service, Subscription,
};
use serde::Deserialize;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Notify};

/// The batch size of `runtime-batch`, issue #11's.
const BATCH: usize = 64;

/// The body of every message, issue #11's: the same bytes each time.
const PAYLOAD: &[u8] = br#"{"id":1000000,"quantity":37}"#;

/// What the JSON scenarios decode `PAYLOAD` into: no strings, so serde allocates nothing.
#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    quantity: u32,
}

impl Order {
    /// Hands both fields to `black_box`, so the optimiser can drop neither the decode nor a
    /// field of it.
    fn consume(self) {
        black_box((self.id, self.quantity));
    }
}

/// Counts calls into the allocator, then defers to the system allocator.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Debug, Clone, Copy)]
enum Scenario {
    RawJson,
    BackendJson,
    BackendRaw,
    RuntimeJson,
    RuntimeRaw,
    RuntimeLayers,
    RuntimeBatch,
    Publish,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::RawJson,
        Scenario::BackendJson,
        Scenario::BackendRaw,
        Scenario::RuntimeJson,
        Scenario::RuntimeRaw,
        Scenario::RuntimeLayers,
        Scenario::RuntimeBatch,
        Scenario::Publish,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::RawJson => "raw-json",
            Scenario::BackendJson => "backend-json",
            Scenario::BackendRaw => "backend-raw",
            Scenario::RuntimeJson => "runtime-json",
            Scenario::RuntimeRaw => "runtime-raw",
            Scenario::RuntimeLayers => "runtime-layers",
            Scenario::RuntimeBatch => "runtime-batch",
            Scenario::Publish => "publish",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a scenario works on, made outside the measured section: the group's queue, and
/// for the consuming scenarios the messages already published into it.
struct Fixture {
    channel: MemoryChannel,
    count: usize,
    /// `PAYLOAD` as static bytes: a clone per message is a copy of the handle, with no
    /// reference count to touch, so handing the body over adds nothing to the figures.
    payload: bytes::Bytes,
    store: Arc<MemoryIdempotencyStore>,
}

impl Fixture {
    async fn new(scenario: Scenario, count: usize, store: Arc<MemoryIdempotencyStore>) -> Self {
        let channel =
            MemoryChannel::with_config(MemoryConfig::new().capacity(count.max(1) * 2 + 16));
        channel
            .provision(DESTINATION, Some(GROUP))
            .await
            .expect("provision");
        let fixture = Fixture {
            channel,
            count,
            payload: bytes::Bytes::from_static(PAYLOAD),
            store,
        };
        if !matches!(scenario, Scenario::Publish | Scenario::RawJson) {
            fixture.publish_all().await;
        }
        fixture
    }

    async fn publish_all(&self) {
        let producer = self.channel.producer(DESTINATION).await.expect("producer");
        for _ in 0..self.count {
            producer
                .send(Message::new(self.payload.clone()).with_content_type("application/json"))
                .await
                .expect("send");
        }
    }
}

const DESTINATION: &str = "orders";
const GROUP: &str = "cost";

/// Runs `scenario` over `count` messages; the only function callgrind collects in.
#[inline(never)]
fn measured(runtime: &Runtime, scenario: Scenario, fixture: &Fixture) {
    runtime.block_on(run(scenario, fixture));
}

async fn run(scenario: Scenario, fixture: &Fixture) {
    let count = fixture.count;
    match scenario {
        Scenario::RawJson => {
            let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(count.max(1));
            for _ in 0..count {
                tx.send(fixture.payload.clone()).await.expect("send");
            }
            drop(tx);
            while let Some(payload) = rx.recv().await {
                let event: Order = serde_json::from_slice(&payload).expect("decode");
                event.consume();
            }
        }
        Scenario::BackendJson | Scenario::BackendRaw => {
            let mut consumer = fixture
                .channel
                .consumer(&Subscription::new(DESTINATION).group(GROUP))
                .await
                .expect("consumer");
            for _ in 0..count {
                let delivery = consumer.receive().await.expect("receive");
                let payload = delivery.message().payload();
                if matches!(scenario, Scenario::BackendJson) {
                    let event: Order = serde_json::from_slice(payload).expect("decode");
                    event.consume();
                } else {
                    black_box(payload.len());
                }
                delivery.ack().await.expect("ack");
            }
        }
        Scenario::RuntimeJson
        | Scenario::RuntimeRaw
        | Scenario::RuntimeLayers
        | Scenario::RuntimeBatch => {
            let handled = Arc::new(AtomicU64::new(0));
            let done = Arc::new(Notify::new());
            let spec = HandlerSpec::new("cost", DESTINATION).group(GROUP);
            let counter = {
                let (handled, done) = (handled.clone(), done.clone());
                move || {
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == count as u64 {
                        done.notify_one();
                    }
                }
            };
            let app = App::new(fixture.channel.clone())
                .idempotency(fixture.store.clone())
                .concurrency(1);
            let decoded = {
                let counter = counter.clone();
                move |event: Order| {
                    event.consume();
                    counter();
                    async { Ok::<(), std::convert::Infallible>(()) }
                }
            };
            // Each handler keeps its own type: each scenario builds its own app.
            let running = match scenario {
                Scenario::RuntimeBatch => {
                    let spec = spec.batch(BATCH, Duration::from_millis(50));
                    app.batch_handler(BatchHandler::from_fn(
                        spec,
                        move |events: Vec<Order>, _batch: Batch| {
                            for event in events {
                                event.consume();
                                counter();
                            }
                            async { Ok::<(), std::convert::Infallible>(()) }
                        },
                    ))
                    .start()
                    .await
                }
                Scenario::RuntimeRaw => {
                    app.handler(Handler::from_fn(spec, move |event: Raw| {
                        black_box(event.0.len());
                        counter();
                        async { Ok::<(), std::convert::Infallible>(()) }
                    }))
                    .start()
                    .await
                }
                Scenario::RuntimeLayers => {
                    app.layer(PassThrough)
                        .layer(PassThrough)
                        .layer(PassThrough)
                        .layer(PassThrough)
                        .handler(Handler::from_fn(spec, decoded))
                        .start()
                        .await
                }
                _ => app.handler(Handler::from_fn(spec, decoded)).start().await,
            }
            .expect("start");
            if count > 0 {
                done.notified().await;
            }
            running.shutdown().await.expect("shutdown");
        }
        Scenario::Publish => fixture.publish_all().await,
    }
}

/// A layer that does nothing: its service hands every call to the one it wraps, as a
/// middleware with nothing to do at the moment does.
#[derive(Debug, Clone, Copy)]
struct PassThrough;

impl<S> Layer<S> for PassThrough {
    type Service = Passing<S>;

    fn layer(&self, inner: S) -> Passing<S> {
        Passing(inner)
    }
}

/// The service of [`PassThrough`].
#[derive(Debug, Clone)]
struct Passing<S>(S);

impl<S: Service<Context>> Service<Context> for Passing<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Context) -> S::Future {
        self.0.call(request)
    }
}

/// Allocations made by one measured run of `count` messages.
fn allocations(runtime: &Runtime, scenario: Scenario, count: usize) -> u64 {
    let fixture = prepare(runtime, scenario, count);
    let region = Region::new(GLOBAL);
    measured(runtime, scenario, &fixture);
    let change = region.change();
    (change.allocations + change.reallocations) as u64
}

/// The fixture to measure, after a warm-up run over as many messages that leaves the
/// idempotency store full, as in a service that has run for a while: from then on each
/// handled id evicts the oldest.
fn prepare(runtime: &Runtime, scenario: Scenario, count: usize) -> Fixture {
    let store = Arc::new(MemoryIdempotencyStore::with_limits(
        count,
        Duration::from_secs(3_600),
    ));
    runtime.block_on(async {
        let warm_up = Fixture::new(scenario, count, store.clone()).await;
        run(scenario, &warm_up).await;
        Fixture::new(scenario, count, store).await
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    if let Some(name) = args.next() {
        let Some(scenario) = Scenario::parse(&name) else {
            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
            eprintln!("unknown scenario {name:?}; one of {}", names.join(", "));
            std::process::exit(2);
        };
        let count = args.next().and_then(|c| c.parse().ok()).unwrap_or(1_000);
        let fixture = prepare(&runtime, scenario, count);
        measured(&runtime, scenario, &fixture);
        return;
    }
    println!("allocations per message (difference between 2,000 and 1,000 messages / 1,000):");
    for scenario in Scenario::ALL {
        let small = allocations(&runtime, scenario, 1_000);
        let large = allocations(&runtime, scenario, 2_000);
        let per_message = large.saturating_sub(small) as f64 / 1_000.0;
        println!("  {:<14} {per_message:>6.2}", scenario.name());
    }
}
