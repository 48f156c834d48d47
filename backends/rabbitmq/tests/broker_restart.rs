//! 10,000 messages flow through a handler while the RabbitMQ application is stopped and
//! started again (`rabbitmqctl stop_app` / `start_app`): every message is handled, none is
//! lost. Its own test binary, so that it never runs alongside other tests of this crate.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (`scripts/rabbitmq.sh`) and `rabbitmqctl` with the
//! rights to stop and start it; fails, never skips, without them.

use event_binder_core::conformance::{CountingStore, Recorder};
use event_binder_core::{
    App, Channel, Context, Error, Handler, HandlerSpec, Message, Producer, RetryPolicy,
};
use event_binder_rabbitmq::{RabbitChannel, RabbitConfig};
use serde::Deserialize;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MESSAGES: u64 = 10_000;
const BATCH: usize = 100;
/// How long the whole flow may take, outage included.
const LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, Deserialize)]
struct Numbered {
    n: u64,
}

/// Runs `rabbitmqctl` with these arguments, failing the test if it cannot.
fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run `rabbitmqctl {}` ({err}); this test needs rabbitmqctl on the PATH with the rights to stop and start RabbitMQ", args.join(" "))
        });
    assert!(
        output.status.success(),
        "`rabbitmqctl {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn start_broker() {
    rabbitmqctl(&["-q", "start_app"]);
    rabbitmqctl(&["-q", "--timeout", "120", "await_startup"]);
}

/// Starts the RabbitMQ application again when dropped, unless it was started already: a
/// failing test never leaves the broker stopped.
struct StoppedBroker {
    stopped: bool,
}

impl StoppedBroker {
    fn stop() -> Self {
        rabbitmqctl(&["-q", "stop_app"]);
        StoppedBroker { stopped: true }
    }

    fn start(mut self) {
        start_broker();
        self.stopped = false;
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if self.stopped {
            start_broker();
        }
    }
}

/// Waits (bounded) until the channel's connection is up or down as wanted.
async fn wait_connected(channel: &RabbitChannel, connected: bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    while channel.is_connected() != connected {
        assert!(
            Instant::now() < deadline,
            "the channel did not see the connection {} within {limit:?}",
            if connected { "come back" } else { "go" }
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_across_a_broker_restart() {
    rabbitmqctl(&["-q", "--timeout", "60", "await_startup"]);
    let id = event_binder_core::new_message_id().replace('-', "");
    let prefix = format!("restart-{}-", &id[id.len() - 12..]);
    let config = RabbitConfig::new(URL)
        .expect("the URL")
        .prefix(prefix)
        .queue_expires(Duration::from_secs(600))
        .send_timeout(Duration::from_secs(120))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let channel = RabbitChannel::with_config(config)
        .await
        .expect("connecting to RabbitMQ on 127.0.0.1:5672 (run scripts/rabbitmq.sh)");
    let (destination, group) = ("numbers", "counter");
    channel
        .provision(destination, Some(group))
        .await
        .expect("provisioning the group");

    let tally = Recorder::<u64>::new();
    let handler = {
        let tally = tally.clone();
        Handler::from_fn(
            HandlerSpec::new("count", destination).group(group),
            move |event: Numbered, _ctx: Context| {
                let tally = tally.clone();
                async move {
                    tally.record(event.n);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let store = Arc::new(CountingStore::default());
    let app = App::new(channel.clone())
        .idempotency(store.clone())
        .concurrency(32)
        .retry(RetryPolicy::new(3))
        .handler(handler)
        .start()
        .await
        .expect("starting the app");

    let producer = Arc::new(
        channel
            .producer(destination)
            .await
            .expect("opening a producer"),
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = {
        let (producer, sent) = (producer.clone(), sent.clone());
        tokio::spawn(async move {
            let messages: Vec<Message> = (0..MESSAGES)
                .map(|n| {
                    Message::new(format!(r#"{{"n":{n}}}"#)).with_content_type("application/json")
                })
                .collect();
            for batch in messages.chunks(BATCH) {
                producer.send_batch(batch.to_vec()).await?;
                sent.fetch_add(batch.len(), Ordering::SeqCst);
            }
            Ok::<(), event_binder_core::Error>(())
        })
    };

    // A second channel whose sends give up quickly: during the outage they must fail
    // with a clear timeout, not vanish.
    let impatient = RabbitChannel::with_config(
        RabbitConfig::new(URL)
            .expect("the URL")
            .prefix(format!("{}impatient-", channel.config().prefix))
            .queue_expires(Duration::from_secs(600))
            .send_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("connecting a second channel");
    impatient
        .provision("probe", Some("g"))
        .await
        .expect("provisioning the probe's group");
    let probe = impatient
        .producer("probe")
        .await
        .expect("opening the probe's producer");

    tally
        .wait_for(LIMIT, "the flow to be under way", |handled| {
            handled.len() >= 1_000 && sent.load(Ordering::SeqCst) >= 2_000
        })
        .await;
    let stopped_at = Instant::now();
    let (sent_before, handled_before) = (sent.load(Ordering::SeqCst), tally.distinct());
    let broker = tokio::task::spawn_blocking(StoppedBroker::stop)
        .await
        .expect("stopping the broker");
    wait_connected(&channel, false, Duration::from_secs(30)).await;
    match probe.send(Message::new("{}")).await {
        Err(Error::Timeout { what, after }) => {
            assert_eq!(after, Duration::from_millis(300));
            assert!(what.contains("unreachable"), "{what}");
        }
        other => panic!("a send during the outage must time out clearly, got {other:?}"),
    }
    tokio::task::spawn_blocking(move || broker.start())
        .await
        .expect("starting the broker again");
    wait_connected(&channel, true, Duration::from_secs(60)).await;
    let outage = stopped_at.elapsed();

    tally
        .wait_for(
            LIMIT,
            "every message to be handled after the restart",
            |handled| handled.len() == usize::try_from(MESSAGES).unwrap_or(usize::MAX),
        )
        .await;
    timeout(LIMIT, publishing)
        .await
        .expect("the publisher to finish")
        .expect("the publisher task")
        .expect("publishing through the restart");
    app.shutdown().await.expect("shutting the app down");

    let handled = tally.snapshot();
    let missing: Vec<u64> = (0..MESSAGES).filter(|n| !handled.contains_key(n)).collect();
    let duplicates: Vec<(u64, usize)> = handled
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(n, count)| (*n, *count))
        .collect();
    println!(
        "broker restart: {MESSAGES} messages; stopped after {sent_before} sent and \
         {handled_before} handled; outage {outage:.1?}; {} duplicate deliveries kept from the \
         handler by idempotency; {} handled more than once: {:?}",
        store.duplicates(),
        duplicates.len(),
        &duplicates[..duplicates.len().min(20)]
    );
    assert!(missing.is_empty(), "lost across the restart: {missing:?}");
    assert!(
        handled.keys().all(|n| *n < MESSAGES),
        "handled messages that were never sent"
    );
    channel.close().await.expect("closing the channel");
    impatient.close().await.expect("closing the second channel");
}
