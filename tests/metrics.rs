//! The runtime's metrics (issue #13), read back through metrics-util's `DebuggingRecorder`:
//! one scenario, run on every backend compiled in, where the handler succeeds, fails once
//! then succeeds, or always fails, a payload cannot be decoded, and some messages come twice;
//! every counter must equal what the run did, as the handler's own records and the dead
//! letters show it.
//!
//! The RabbitMQ, Kafka and SNS+SQS cases need their brokers (`scripts/rabbitmq.sh`,
//! `scripts/kafka.sh`, `scripts/sns-sqs.sh`; `scripts/test.sh` starts them and exports the
//! dummy AWS credentials moto accepts). Each case uses random names, so runs on a shared
//! broker never meet.

use event_binder::metrics::{
    DEAD_LETTERED_TOTAL, DESTINATION_LABEL, DUPLICATES_TOTAL, END_TO_END_LATENCY_SECONDS,
    FAILED_TOTAL, GROUP_LABEL, HANDLED_TOTAL, HANDLER_LABEL, HANDLING_DURATION_SECONDS, IN_FLIGHT,
    RECEIVED_TOTAL, RETRIED_TOTAL,
};
use event_binder::{
    AnyChannel, App, Batch, BatchFailure, BatchHandler, BoxError, Channel, Consumer, Context,
    Handler, HandlerSpec, Message, RetryPolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The longest any wait of a case may take (a bound, not a pause: each wait ends when its
/// condition holds). moto, serving every SNS+SQS test of a run, can be slow.
const LIMIT: Duration = Duration::from_secs(90);
/// How often a wait looks at its condition again.
const POLL: Duration = Duration::from_millis(20);
/// Events published once each, besides the undecodable one and the second copies.
const EVENTS: u64 = 20;
/// Attempts before a failing event is dead-lettered.
const MAX_ATTEMPTS: u32 = 3;
const HANDLER: &str = "bill";

/// What the handler does with event `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Succeeds,
    FailsOnce,
    AlwaysFails,
    /// Succeeds, and is published a second time, with the same id, once handled.
    Duplicated,
}

fn kind(n: u64) -> Kind {
    match n % 4 {
        0 => Kind::Succeeds,
        1 => Kind::FailsOnce,
        2 => Kind::AlwaysFails,
        _ => Kind::Duplicated,
    }
}

#[derive(serde::Deserialize)]
struct Event {
    n: u64,
}

/// A metric's name and labels, as the recorder keys it.
type MetricKey = (String, BTreeMap<String, String>);

/// Every value recorded in this process, summed over snapshots: taking a snapshot of a
/// `DebuggingRecorder` resets its counters and gauges and empties its histograms.
#[derive(Default)]
struct Totals {
    counters: HashMap<MetricKey, u64>,
    gauges: HashMap<MetricKey, f64>,
    histograms: HashMap<MetricKey, Vec<f64>>,
    units: HashMap<String, metrics::Unit>,
}

/// The process's recorder, installed by the first case. cargo-nextest (what CI and
/// `scripts/test.sh` run) gives every test a process of its own, so each case has a global
/// recorder to itself; under a plain `cargo test` the cases of this file share one, and each
/// reads only the metrics labelled with its own random destination.
fn recorder() -> &'static (Snapshotter, Mutex<Totals>) {
    static RECORDER: OnceLock<(Snapshotter, Mutex<Totals>)> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        (snapshotter, Mutex::new(Totals::default()))
    })
}

/// One binding's metrics, as recorded so far.
struct Observed {
    labels: BTreeMap<String, String>,
    totals: std::sync::MutexGuard<'static, Totals>,
}

impl Observed {
    /// Folds what was recorded since the last look into the totals, and reads the binding
    /// of `destination`.
    fn now(destination: &str) -> Observed {
        let (snapshotter, totals) = recorder();
        let mut totals = totals.lock().unwrap();
        for (key, unit, _, value) in snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let labels = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            let name = key.name().to_owned();
            if let Some(unit) = unit {
                totals.units.insert(name.clone(), unit);
            }
            let key = (name, labels);
            match value {
                DebugValue::Counter(value) => *totals.counters.entry(key).or_default() += value,
                DebugValue::Gauge(value) => *totals.gauges.entry(key).or_default() += value.0,
                DebugValue::Histogram(values) => totals
                    .histograms
                    .entry(key)
                    .or_default()
                    .extend(values.into_iter().map(|value| value.0)),
            }
        }
        let labels = totals
            .counters
            .keys()
            .map(|(_, labels)| labels)
            .find(|labels| labels.get(DESTINATION_LABEL).map(String::as_str) == Some(destination))
            .cloned()
            .unwrap_or_default();
        Observed { labels, totals }
    }

    fn key(&self, name: &str) -> MetricKey {
        (name.to_owned(), self.labels.clone())
    }

    fn counter(&self, name: &str) -> u64 {
        self.totals
            .counters
            .get(&self.key(name))
            .copied()
            .unwrap_or_default()
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.totals.gauges.get(&self.key(name)).copied()
    }

    fn histogram(&self, name: &str) -> &[f64] {
        self.totals
            .histograms
            .get(&self.key(name))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The names of every metric labelled with this binding's destination, each with its
    /// labels.
    fn all_of(&self, destination: &str) -> Vec<MetricKey> {
        let totals = &self.totals;
        totals
            .counters
            .keys()
            .chain(totals.gauges.keys())
            .chain(totals.histograms.keys())
            .filter(|(_, labels)| {
                labels.get(DESTINATION_LABEL).map(String::as_str) == Some(destination)
            })
            .cloned()
            .collect()
    }
}

/// What the handler saw: for each event, whether each of its calls succeeded.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<u64, Vec<bool>>>>);

impl Calls {
    fn of(&self, n: u64) -> Vec<bool> {
        self.0.lock().unwrap().get(&n).cloned().unwrap_or_default()
    }

    fn all(&self) -> HashMap<u64, Vec<bool>> {
        self.0.lock().unwrap().clone()
    }
}

/// Waits until `done` holds, failing after [`LIMIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// 12 random characters, for names no other run uses.
fn unique() -> String {
    let id = event_binder::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

impl Calls {
    /// Records a call of event `n` at `attempt`, and whether it succeeds.
    fn call(&self, n: u64, attempt: u32) -> bool {
        let succeeds = match kind(n) {
            Kind::Succeeds | Kind::Duplicated => true,
            Kind::FailsOnce => attempt > 1,
            Kind::AlwaysFails => false,
        };
        self.0.lock().unwrap().entry(n).or_default().push(succeeds);
        succeeds
    }
}

/// How the handler takes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    OneByOne,
    /// A batch handler, failing only the events that fail with a [`BatchFailure`].
    Batches,
}

/// The scenario, on the channel `url` opens.
async fn counters_equal_what_the_run_did(url: &str, shape: Shape) {
    // Before the app starts: each binding takes its handles at start.
    recorder();
    let suffix = unique();
    let destination = format!("metrics-{suffix}");
    let group = format!("g-{suffix}");
    let channel = AnyChannel::connect(url).await.expect("connect");
    let calls = Calls::default();
    let spec = HandlerSpec::new(HANDLER, destination.as_str()).group(group.as_str());
    let app = App::new(channel.clone()).retry(
        RetryPolicy::new(MAX_ATTEMPTS).backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    let app = match shape {
        Shape::OneByOne => {
            let calls = calls.clone();
            app.handler(Handler::from_fn(spec, move |event: Event, ctx: Context| {
                let succeeds = calls.call(event.n, ctx.attempt());
                async move {
                    if succeeds {
                        Ok(())
                    } else {
                        Err(BoxError::from(format!("event {} fails", event.n)))
                    }
                }
            }))
        }
        Shape::Batches => {
            let calls = calls.clone();
            let spec = spec.batch(8, Duration::from_millis(20));
            app.batch_handler(BatchHandler::from_fn(
                spec,
                move |events: Vec<Event>, batch: Batch| {
                    let failure = events.iter().zip(batch.contexts()).enumerate().fold(
                        BatchFailure::new(),
                        |failure, (index, (event, ctx))| {
                            if calls.call(event.n, ctx.attempt()) {
                                failure
                            } else {
                                failure.fail(index, format!("event {} fails", event.n))
                            }
                        },
                    );
                    async move {
                        if failure.is_empty() {
                            Ok(())
                        } else {
                            Err(failure)
                        }
                    }
                },
            ))
        }
    };
    let mut dead_letters = channel
        .dead_letters(&destination, Some(&group))
        .await
        .expect("opening the dead letters");
    let running = app.start().await.expect("start");
    let publisher = running.publisher().clone();
    let events: Vec<Message> = (0..EVENTS)
        .map(|n| Message::new(format!(r#"{{"n":{n}}}"#)))
        .collect();
    let undecodable = Message::new("{this is not json");
    for message in events.iter().chain([&undecodable]) {
        publisher
            .send(&destination, message.clone())
            .await
            .expect("publish");
    }

    // Every event settled: the handler's records, and the dead letters received.
    let dead_ids = Arc::new(Mutex::new(HashSet::new()));
    let receiving = {
        let dead_ids = dead_ids.clone();
        tokio::spawn(async move {
            loop {
                let dead = dead_letters.receive().await.expect("receive a dead letter");
                dead_ids
                    .lock()
                    .unwrap()
                    .insert(dead.message().id().to_owned());
                dead.ack().await.expect("ack a dead letter");
            }
        })
    };
    let expected_dead: HashSet<String> = (0..EVENTS)
        .filter(|&n| kind(n) == Kind::AlwaysFails)
        .map(|n| events[n as usize].id().to_owned())
        .chain([undecodable.id().to_owned()])
        .collect();
    wait_until("every event to be handled or dead-lettered", || {
        let calls = calls.all();
        let settled = (0..EVENTS).all(|n| {
            let calls = calls.get(&n).map(Vec::as_slice).unwrap_or_default();
            match kind(n) {
                Kind::AlwaysFails => calls.len() == MAX_ATTEMPTS as usize,
                _ => calls.last() == Some(&true),
            }
        });
        settled && *dead_ids.lock().unwrap() == expected_dead
    })
    .await;

    // Handled: now the second copies are duplicates.
    let copies: Vec<&Message> = (0..EVENTS)
        .filter(|&n| kind(n) == Kind::Duplicated)
        .map(|n| &events[n as usize])
        .collect();
    for copy in &copies {
        publisher
            .send(&destination, (*copy).clone())
            .await
            .expect("publish a second copy");
    }

    // What the run did, as the handler and the dead letters saw it.
    let calls_seen = calls.all();
    let handled = calls_seen
        .values()
        .filter(|calls| calls.last() == Some(&true))
        .count() as u64;
    let failed_calls = calls_seen.values().flatten().filter(|ok| !**ok).count() as u64;
    // A failed call followed by another call of the same event was retried.
    let retried = calls_seen
        .values()
        .map(|calls| calls[..calls.len() - 1].iter().filter(|ok| !**ok).count() as u64)
        .sum::<u64>();
    let dead_lettered = dead_ids.lock().unwrap().len() as u64;
    // The undecodable payload fails without a handler call.
    let failed = failed_calls + 1;
    let duplicates = copies.len() as u64;
    // Retries wait in process: each delivery was taken once.
    let received = handled + dead_lettered + duplicates;

    // The copies reach no handler: wait for the binding to have taken them.
    wait_until("the second copies to be taken", || {
        Observed::now(&destination).counter(RECEIVED_TOTAL) >= received
    })
    .await;
    // Settles what is in flight.
    running.shutdown().await.expect("shutdown");
    receiving.abort();

    // The scenario ran as written; the metrics must say exactly what it did.
    for n in 0..EVENTS {
        let expected: &[bool] = match kind(n) {
            Kind::Succeeds | Kind::Duplicated => &[true],
            Kind::FailsOnce => &[false, true],
            Kind::AlwaysFails => &[false; MAX_ATTEMPTS as usize],
        };
        assert_eq!(calls.of(n), expected, "the calls of event {n}");
    }
    let metrics = Observed::now(&destination);
    assert_eq!(
        metrics.labels,
        BTreeMap::from([
            (DESTINATION_LABEL.to_owned(), destination.clone()),
            (GROUP_LABEL.to_owned(), group.clone()),
            (HANDLER_LABEL.to_owned(), HANDLER.to_owned()),
        ])
    );
    for (name, value) in [
        (RECEIVED_TOTAL, received),
        (HANDLED_TOTAL, handled),
        (FAILED_TOTAL, failed),
        (RETRIED_TOTAL, retried),
        (DEAD_LETTERED_TOTAL, dead_lettered),
        (DUPLICATES_TOTAL, duplicates),
    ] {
        assert_eq!(metrics.counter(name), value, "{name}");
    }
    assert_eq!(metrics.gauge(IN_FLIGHT), Some(0.0), "{IN_FLIGHT}");
    for name in [HANDLING_DURATION_SECONDS, END_TO_END_LATENCY_SECONDS] {
        let samples = metrics.histogram(name);
        assert_eq!(samples.len() as u64, handled, "{name}: {samples:?}");
        assert!(
            samples
                .iter()
                .all(|&seconds| (0.0..LIMIT.as_secs_f64()).contains(&seconds)),
            "{name}: {samples:?}"
        );
        assert_eq!(
            metrics.totals.units.get(name),
            Some(&metrics::Unit::Seconds),
            "{name}"
        );
    }
    // Every metric of the binding, with the binding's labels and no others.
    let mut names: Vec<String> = metrics
        .all_of(&destination)
        .into_iter()
        .map(|(name, labels)| {
            assert_eq!(labels, metrics.labels, "the labels of {name}");
            name
        })
        .collect();
    names.sort();
    let mut expected_names = vec![
        RECEIVED_TOTAL,
        HANDLED_TOTAL,
        FAILED_TOTAL,
        RETRIED_TOTAL,
        DEAD_LETTERED_TOTAL,
        DUPLICATES_TOTAL,
        HANDLING_DURATION_SECONDS,
        END_TO_END_LATENCY_SECONDS,
        IN_FLIGHT,
    ];
    expected_names.sort_unstable();
    assert_eq!(names, expected_names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_counters_equal_what_the_run_did() {
    counters_equal_what_the_run_did("memory://", Shape::OneByOne).await;
}

/// The batch path counts the same way; duplicates here are copies sent once the first was
/// handled, found by the idempotency store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_batch_counters_equal_what_the_run_did() {
    counters_equal_what_the_run_did("memory://", Shape::Batches).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_counters_equal_what_the_run_did() {
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=metrics-{}-&queue_expires_ms=120000",
        unique()
    );
    counters_equal_what_the_run_did(&url, Shape::OneByOne).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_counters_equal_what_the_run_did() {
    let broker = std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|broker| !broker.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let url = format!("kafka://{broker}?prefix=metrics-{}-", unique());
    counters_equal_what_the_run_did(&url, Shape::OneByOne).await;
}

#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_sqs_counters_equal_what_the_run_did() {
    // A request attempt is given the whole operation's time: moto, loaded by the other
    // tests, can take over the default 10 s (as in tests/it/sns_sqs.rs).
    let url = format!(
        "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1&attempt_timeout_ms=30000&prefix=metrics-{}-",
        unique()
    );
    counters_equal_what_the_run_did(&url, Shape::OneByOne).await;
}
