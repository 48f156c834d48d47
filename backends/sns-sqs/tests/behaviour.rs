//! What the SNS+SQS backend adds to the conformance suite, against the moto emulator on
//! 127.0.0.1:4566 (`scripts/sns-sqs.sh` installs and starts it): visibility extension for
//! slow handlers, FIFO destinations, attribute packing and binary payloads over the wire,
//! batching, foreign messages, anonymous queues cleaned up, dead letters of the largest
//! messages, clear errors, and `try_receive` alone serving what `receive` would.

use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use event_binder_core::conformance::traces::check_foreign_parent;
use event_binder_core::Delivery;
use event_binder_core::{
    header, App, Channel, Consumer, Context, Error, Handler, HandlerSpec, Message, Producer, Raw,
    RedriveOptions, Subscription,
};
use event_binder_sns_sqs::{
    SnsSqsChannel, SnsSqsConfig, SqsAcknowledger, SqsConsumer, MAX_MESSAGE_SIZE,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const URL: &str = "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1";
const LIMIT: Duration = Duration::from_secs(30);

/// A random suffix, so that names never meet those of another run.
fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

fn config() -> SnsSqsConfig {
    SnsSqsConfig::new(URL)
        .expect("the URL")
        .prefix(format!("beh-{}-", unique()))
        .credentials("test", "test")
}

async fn connect(config: SnsSqsConfig) -> SnsSqsChannel {
    SnsSqsChannel::with_config(config)
        .await
        .expect("connecting to moto on 127.0.0.1:4566 (run scripts/sns-sqs.sh)")
}

async fn receive(consumer: &mut SqsConsumer) -> Delivery<SqsAcknowledger> {
    tokio::time::timeout(LIMIT, consumer.receive())
        .await
        .expect("a delivery within the limit")
        .expect("receive")
}

/// A raw SQS client on the emulator, as a foreign producer or an operator would use it.
async fn raw_sqs() -> aws_sdk_sqs::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:4566")
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https(),
        )
        .load()
        .await;
    aws_sdk_sqs::Client::new(&shared)
}

/// The URL of the queue called `name`, as an operator would look it up.
async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap_or_else(|err| panic!("looking up queue {name}: {err}"))
        .queue_url
        .expect("a URL")
}

/// Counts calls per message number and wakes waiters on every change.
#[derive(Default)]
struct Calls {
    counts: Mutex<HashMap<u64, usize>>,
    changed: Notify,
}

impl Calls {
    fn record(&self, n: u64) {
        *self.counts.lock().unwrap().entry(n).or_default() += 1;
        self.changed.notify_waiters();
    }

    fn count(&self, n: u64) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(&n)
            .copied()
            .unwrap_or_default()
    }

    async fn wait_for(&self, n: u64, times: usize) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.count(n) >= times {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(LIMIT, waiting)
            .await
            .unwrap_or_else(|_| panic!("message {n} was not handled {times} time(s)"));
    }
}

#[derive(Debug, Deserialize)]
struct Job {
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_visibility_timeout_is_not_redelivered_while_it_runs() {
    let visibility = Duration::from_secs(2);
    let config = config().visibility_timeout(visibility);
    let (destination, group) = ("jobs", "workers");
    // Two members of one group, on two connections: without the extension, the second
    // would get the message once its visibility timeout ran out.
    let first = connect(config.clone()).await;
    let second = connect(config).await;
    first
        .provision(destination, Some(group))
        .await
        .expect("provision");
    let started = Arc::new(Calls::default());
    let finished = Arc::new(Calls::default());
    let handler = |started: Arc<Calls>, finished: Arc<Calls>| {
        Handler::from_fn(
            HandlerSpec::new("slow", destination).group(group),
            move |job: Job, _ctx: Context| {
                let (started, finished) = (started.clone(), finished.clone());
                async move {
                    started.record(job.n);
                    // The work itself takes three visibility timeouts.
                    tokio::time::sleep(visibility * 3).await;
                    finished.record(job.n);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
    };
    let apps = [
        App::new(first.clone())
            .handler(handler(started.clone(), finished.clone()))
            .start()
            .await
            .expect("first app"),
        App::new(second.clone())
            .handler(handler(started.clone(), finished.clone()))
            .start()
            .await
            .expect("second app"),
    ];
    first
        .producer(destination)
        .await
        .expect("producer")
        .send(Message::new(r#"{"n":1}"#))
        .await
        .expect("send");
    finished.wait_for(1, 1).await;
    // Watch one more visibility timeout after the handler finished: the message must not
    // come back either (it was deleted).
    tokio::time::sleep(visibility + Duration::from_secs(1)).await;
    for app in apps {
        app.shutdown().await.expect("shutdown");
    }
    assert_eq!(
        started.count(1),
        1,
        "the message was handled more than once"
    );
    let extensions = first.requests().get("ChangeMessageVisibilityBatch")
        + second.requests().get("ChangeMessageVisibilityBatch");
    assert!(extensions >= 1, "the visibility was never extended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_destination_keeps_order_per_key_and_drops_repeated_ids() {
    let destination = "ledger";
    let channel = connect(config().fifo(destination)).await;
    assert!(channel.topic_name(destination).unwrap().ends_with(".fifo"));
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("audit"))
        .await
        .expect("consumer");
    let producer = channel.producer(destination).await.expect("producer");
    let keys = ["alpha", "beta", "gamma"];
    let per_key = 20u64;
    let messages: Vec<Message> = (0..per_key)
        .flat_map(|n| {
            keys.iter()
                .map(move |key| Message::new(format!(r#"{{"n":{n}}}"#)).with_key(*key))
        })
        .collect();
    producer.send_batch(messages.clone()).await.expect("send");
    producer
        .send(messages[0].clone())
        .await
        .expect("sending a repeated id is accepted");
    let mut last: HashMap<String, u64> = HashMap::new();
    for _ in 0..messages.len() {
        let delivery = receive(&mut consumer).await;
        let key = delivery.message().key().expect("a key").to_owned();
        let job: Job = serde_json::from_slice(delivery.message().payload()).expect("json");
        if let Some(previous) = last.get(&key) {
            assert!(job.n > *previous, "key {key}: {} after {previous}", job.n);
        }
        last.insert(key, job.n);
        delivery.ack().await.expect("ack");
    }
    assert!(last.values().all(|n| *n == per_key - 1), "{last:?}");
    let repeated = tokio::time::timeout(Duration::from_secs(3), consumer.receive()).await;
    assert!(
        repeated.is_err(),
        "a repeated id was delivered: {repeated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_headers_and_binary_payloads_cross_the_wire_intact() {
    let channel = connect(config()).await;
    let mut consumer = channel
        .consumer(&Subscription::new("mixed").group("g"))
        .await
        .expect("consumer");
    let mut many = Message::new(vec![0u8, 255, 1, 2, 159]).with_key("k");
    for i in 0..14 {
        many = many.with_header(format!("h{i}"), format!("value {i}"));
    }
    many = many
        .with_header("with space", "x")
        .with_header("AWS.reserved", "y")
        .with_header("empty", "");
    let sent = [
        many,
        Message::new(Vec::new()),
        Message::new("tab\tcontrol\u{1}char").with_header("one", "1"),
    ];
    let producer = channel.producer("mixed").await.expect("producer");
    for message in &sent {
        producer.send(message.clone()).await.expect("send");
    }
    let mut received = HashMap::new();
    for _ in 0..sent.len() {
        let delivery = receive(&mut consumer).await;
        received.insert(
            delivery.message().id().to_owned(),
            delivery.message().clone(),
        );
        delivery.ack().await.expect("ack");
    }
    for message in &sent {
        let got = &received[message.id()];
        assert_eq!(
            got.payload(),
            message.payload(),
            "payload of {}",
            message.id()
        );
        assert_eq!(
            got.headers(),
            message.headers(),
            "headers of {}",
            message.id()
        );
        assert_eq!(got.key(), message.key());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_share_publish_batch_requests() {
    let channel = connect(config()).await;
    channel
        .provision("batched", Some("g"))
        .await
        .expect("provision");
    let producer = channel.producer("batched").await.expect("producer");
    let before = channel.requests();
    let messages: Vec<Message> = (0..95)
        .map(|n| Message::new(format!(r#"{{"n":{n}}}"#)))
        .collect();
    producer.send_batch(messages).await.expect("send");
    let used = channel.requests().since(&before);
    assert_eq!(used.get("PublishBatch"), 10, "{used:?}");
    assert_eq!(used.total(), 10, "{used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_a_foreign_producer_get_the_sqs_id() {
    let channel = connect(config()).await;
    let mut consumer = channel
        .consumer(&Subscription::new("raw").group("g"))
        .await
        .expect("consumer");
    let sqs = raw_sqs().await;
    let queue_url = queue_url(&sqs, &channel.queue_name("raw", "g").unwrap()).await;
    let sent = sqs
        .send_message()
        .queue_url(&queue_url)
        .message_body(r#"{"n":7}"#)
        .send()
        .await
        .expect("a raw send");
    let delivery = receive(&mut consumer).await;
    assert_eq!(Some(delivery.message().id()), sent.message_id());
    assert_eq!(delivery.message().payload().as_ref(), br#"{"n":7}"#);
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_queue_is_deleted_when_its_consumer_goes() {
    let channel = connect(config()).await;
    let topic_prefix = channel.topic_name("events").unwrap();
    let mut consumer = channel
        .consumer(&Subscription::new("events"))
        .await
        .expect("consumer");
    let sqs = raw_sqs().await;
    let anonymous_queues = || async {
        sqs.list_queues()
            .queue_name_prefix(format!("{topic_prefix}____"))
            .send()
            .await
            .expect("listing queues")
            .queue_urls
            .unwrap_or_default()
            .into_iter()
            .filter(|url| !url.ends_with("____dlq"))
            .count()
    };
    assert_eq!(anonymous_queues().await, 1);
    channel
        .producer("events")
        .await
        .expect("producer")
        .send(Message::new("{}"))
        .await
        .expect("send");
    receive(&mut consumer).await.ack().await.expect("ack");
    drop(consumer);
    let gone = async {
        while anonymous_queues().await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(LIMIT, gone)
        .await
        .expect("the anonymous queue was not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_sent_is_refused_before_any_request() {
    let channel = connect(config()).await;
    let producer = channel.producer("limits").await.expect("producer");
    let before = channel.requests();
    // 200 KiB of binary is under the limit as bytes, over it once base64 makes it text.
    let binary = Message::new(vec![0xffu8; 200 * 1024]);
    assert!(binary.encoded_len() < MAX_MESSAGE_SIZE);
    match producer.send(binary).await {
        Err(Error::PayloadTooLarge { actual, limit }) => {
            assert_eq!(limit, MAX_MESSAGE_SIZE);
            assert!(actual > MAX_MESSAGE_SIZE);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let long = "x".repeat(40);
    let refused = channel
        .consumer(&Subscription::new(&long).group(&long))
        .await;
    match refused {
        Err(Error::InvalidName { reason, .. }) => assert!(reason.contains("80"), "{reason}"),
        other => panic!("expected InvalidName, got {other:?}"),
    }
    assert_eq!(channel.requests().since(&before).total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_messages_at_the_size_limit_still_fit_their_queue() {
    let channel = connect(config()).await;
    let (destination, group) = ("large", "g");
    channel
        .provision(destination, Some(group))
        .await
        .expect("provision");
    let producer = channel.producer(destination).await.expect("producer");
    // One byte of payload is one byte of size here, so the refusal of a payload as large as
    // the limit tells the largest payload that fits.
    let probe = Message::new_with_id("full", "x".repeat(MAX_MESSAGE_SIZE));
    let full_len = match producer.send(probe).await {
        Err(Error::PayloadTooLarge { actual, .. }) => 2 * MAX_MESSAGE_SIZE - actual,
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    };
    // No room at all for the dead-letter headers, and room for them but not for the error.
    let full = Message::new_with_id("full", "x".repeat(full_len));
    let roomy = Message::new_with_id("roomy", "y".repeat(full_len - 1_024));
    producer
        .send(full)
        .await
        .expect("a message of the largest size");
    producer
        .send(roomy)
        .await
        .expect("a message 1 KiB under it");

    let error = "e".repeat(4_000);
    let running = App::new(channel.clone())
        .handler(Handler::from_fn(
            HandlerSpec::new("fails", destination)
                .group(group)
                .max_attempts(1),
            move |_: Raw, _ctx: Context| {
                let error = error.clone();
                async move { Err::<(), _>(std::io::Error::other(error)) }
            },
        ))
        .start()
        .await
        .expect("app");
    let mut dead_letters = channel
        .dead_letters(destination, Some(group))
        .await
        .expect("dead-letter consumer");
    let mut stored = HashMap::new();
    for _ in 0..2 {
        let delivery = receive(&mut dead_letters).await;
        stored.insert(
            delivery.message().id().to_owned(),
            delivery.message().clone(),
        );
        delivery.ack().await.expect("ack");
    }
    running.shutdown().await.expect("shutdown");

    let full = &stored["full"];
    assert_eq!(full.payload().len(), full_len);
    assert_eq!(full.headers().get(header::DEAD_LETTER_ERROR), None);
    assert_eq!(full.headers().get(header::DEAD_LETTER_ATTEMPTS), None);

    let roomy = &stored["roomy"];
    assert_eq!(roomy.payload().len(), full_len - 1_024);
    let error = roomy
        .headers()
        .get(header::DEAD_LETTER_ERROR)
        .expect("the error, shortened");
    assert!(error.starts_with("eee") && error.ends_with(" [shortened]"));
    assert!(error.len() < 1_024, "{} bytes", error.len());
    assert_eq!(roomy.headers().get(header::DEAD_LETTER_ATTEMPTS), Some("1"));
    assert_eq!(
        roomy.headers().get(header::DEAD_LETTER_DESTINATION),
        Some(destination)
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_clear_error_without_secrets() {
    let config = SnsSqsConfig::new(
        "sns-sqs://us-east-1?endpoint=http://127.0.0.1:9&connect_timeout_ms=2000",
    )
    .unwrap()
    .credentials("AKIDEXAMPLE", "very-secret-key");
    assert!(!format!("{config:?}").contains("very-secret-key"));
    let err = SnsSqsChannel::with_config(config).await.unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:9"), "{text}");
    assert!(!text.contains("very-secret-key") && !format!("{err:?}").contains("very-secret-key"));
}

/// A real TCP peer between the SDK and moto: it forwards both ways until it is told to
/// stall; from then on it accepts connections and reads requests but never forwards or
/// answers them (a hung load balancer, a stalled network). A connection that stalled
/// stays stalled; after `resume` new connections forward again.
struct StallingProxy {
    address: std::net::SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl StallingProxy {
    async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let address = listener.local_addr().expect("its address");
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let stalled = flag.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    if stalled.load(Ordering::SeqCst) {
                        // Hold the connection, read what comes, answer nothing.
                        while matches!(client.read(&mut buffer).await, Ok(n) if n > 0) {}
                        return;
                    }
                    let Ok(upstream) = tokio::net::TcpStream::connect("127.0.0.1:4566").await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_upstream, mut to_upstream) = upstream.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_upstream, &mut to_client).await;
                    });
                    let mut forwarding = true;
                    loop {
                        let n = match from_client.read(&mut buffer).await {
                            Ok(n) if n > 0 => n,
                            _ => return,
                        };
                        forwarding = forwarding && !stalled.load(Ordering::SeqCst);
                        if forwarding && to_upstream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StallingProxy { address, stalled }
    }

    fn url(&self) -> String {
        format!(
            "sns-sqs://us-east-1?endpoint=http://{}&wait_time_s=1",
            self.address
        )
    }

    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn resume(&self) {
        self.stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Well above every timeout configured below: a request that outlives it hung.
const HUNG: Duration = Duration::from_secs(20);

fn stalling_config(proxy: &StallingProxy) -> SnsSqsConfig {
    SnsSqsConfig::new(&proxy.url())
        .expect("the URL")
        .prefix(format!("stall-{}-", unique()))
        .credentials("test", "test")
        .attempt_timeout(Duration::from_millis(300))
        .operation_timeout(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_an_endpoint_that_never_answers_times_out() {
    let proxy = StallingProxy::start().await;
    let config = stalling_config(&proxy);
    let operation_timeout = config.operation_timeout;
    let channel = connect(config).await;
    let producer = channel.producer("stalled").await.expect("producer");
    proxy.stall();
    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(HUNG, producer.send(Message::new("{}")))
        .await
        .expect("the publish hung instead of timing out");
    let took = started.elapsed();
    match sent {
        Err(Error::Timeout { what, after }) => {
            assert_eq!(after, operation_timeout);
            assert!(what.contains("publishing to SNS topic"), "{what}");
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    assert!(
        took < operation_timeout + Duration::from_secs(2),
        "the publish failed only after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_from_an_endpoint_that_never_answers_times_out_and_recovers() {
    let proxy = StallingProxy::start().await;
    let channel = connect(stalling_config(&proxy)).await;
    let config = channel.config().clone();
    let mut consumer = channel
        .consumer(&Subscription::new("stalled").group("g"))
        .await
        .expect("consumer");
    let producer = channel.producer("stalled").await.expect("producer");
    proxy.stall();
    let received = tokio::time::timeout(HUNG, consumer.receive())
        .await
        .expect("the receive hung instead of timing out");
    match received {
        // A receive long-polls: its bound is the operation timeout plus the wait time.
        Err(Error::Timeout { what, after }) => {
            assert_eq!(after, config.operation_timeout + config.wait_time);
            assert!(what.contains("receiving from SQS queue"), "{what}");
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    // The poller carries on once the endpoint answers again.
    proxy.resume();
    let message = Message::new(r#"{"n":1}"#);
    producer.send(message.clone()).await.expect("send");
    let delivery = loop {
        match tokio::time::timeout(LIMIT, consumer.receive())
            .await
            .expect("no delivery after the endpoint came back")
        {
            Ok(delivery) => break delivery,
            // Receives sent while it was stalled may still time out.
            Err(Error::Timeout { .. }) => continue,
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(delivery.message().id(), message.id());
    delivery.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_policy_already_there_is_merged_not_overwritten() {
    let config = config();
    let (destination, group) = ("guarded", "g");
    let channel = connect(config.clone()).await;
    channel
        .provision(destination, Some(group))
        .await
        .expect("provision");
    let sqs = raw_sqs().await;
    let queue_url = queue_url(&sqs, &channel.queue_name(destination, group).unwrap()).await;
    let policy_statements = || async {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::Policy)
            .send()
            .await
            .expect("reading the policy");
        let policy = attributes
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::Policy))
            .expect("a policy")
            .clone();
        let policy: serde_json::Value = serde_json::from_str(&policy).expect("JSON");
        policy["Statement"].as_array().expect("statements").clone()
    };
    let sid = |statement: &serde_json::Value| statement["Sid"].as_str().map(str::to_owned);
    let ours = policy_statements().await;
    assert_eq!(ours.len(), 1, "{ours:?}");
    // An operator replaces the policy with one of their own.
    let foreign = serde_json::json!({
        "Sid": "operator-reads",
        "Effect": "Allow",
        "Principal": { "AWS": "arn:aws:iam::123456789012:root" },
        "Action": "sqs:ReceiveMessage",
        "Resource": "*"
    });
    sqs.set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::Policy,
            serde_json::json!({ "Version": "2012-10-17", "Statement": [foreign] }).to_string(),
        )
        .send()
        .await
        .expect("setting a foreign policy");
    // Another instance starts and subscribes the group again, twice.
    for _ in 0..2 {
        let again = connect(config.clone()).await;
        again
            .provision(destination, Some(group))
            .await
            .expect("provision again");
        let statements = policy_statements().await;
        let sids: Vec<_> = statements.iter().map(sid).collect();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(
            sids.contains(&Some("operator-reads".into())),
            "the foreign statement was dropped: {statements:?}"
        );
        assert_eq!(
            sids.iter().filter(|s| **s == sid(&ours[0])).count(),
            1,
            "{statements:?}"
        );
    }
    // With the statement in place, nothing more is written.
    let last = connect(config).await;
    last.provision(destination, Some(group))
        .await
        .expect("provision");
    assert_eq!(last.requests().get("SetQueueAttributes"), 0);
    // And the topic still reaches the queue.
    let mut consumer = last
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    last.producer(destination)
        .await
        .expect("producer")
        .send(Message::new("{}"))
        .await
        .expect("send");
    receive(&mut consumer).await.ack().await.expect("ack");
}

#[tokio::test]
async fn a_config_out_of_range_is_refused_when_connecting() {
    let mut config = config();
    // Set straight on the public field, past the setters' rounding.
    config.visibility_timeout = Duration::ZERO;
    match SnsSqsChannel::with_config(config).await {
        Err(Error::Config(reason)) => {
            assert!(
                reason.contains("SnsSqsConfig::visibility_timeout"),
                "{reason}"
            );
            assert!(reason.contains("1 s to 12 hours"), "{reason}");
        }
        other => panic!("expected Error::Config, got {other:?}"),
    }
    let mut config = self::config();
    config.attempt_timeout = Duration::ZERO;
    assert!(matches!(
        SnsSqsChannel::with_config(config).await,
        Err(Error::Config(reason)) if reason.contains("attempt_timeout")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_a_delay_hides_the_message_for_that_long_and_caps_it() {
    let channel = connect(config()).await;
    let (destination, group) = ("delayed", "g");
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    let producer = channel.producer(destination).await.expect("producer");
    producer.send(Message::new("{}")).await.expect("send");
    let delay = Duration::from_millis(2_500);
    let nacked = std::time::Instant::now();
    receive(&mut consumer)
        .await
        .nack(Some(delay))
        .await
        .expect("nack");
    let again = receive(&mut consumer).await;
    let hidden = nacked.elapsed();
    // Whole seconds, rounded up: 3 s.
    assert!(
        hidden >= Duration::from_millis(2_900),
        "back after {hidden:?}, before the delay"
    );
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("ack");
    // Far past SQS's 12 hours: capped, not refused, and no panic. (Moto counts the 12
    // hours from the send, AWS from the receive: a message received at once satisfies
    // both.)
    producer.send(Message::new("{}")).await.expect("send");
    receive(&mut consumer)
        .await
        .nack(Some(Duration::MAX))
        .await
        .expect("a capped nack");
    // Sends the ack's delete.
    channel.close().await.expect("close");
    let sqs = raw_sqs().await;
    let queue_url = queue_url(&sqs, &channel.queue_name(destination, group).unwrap()).await;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("attributes");
    let count = |name| {
        attributes
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    use aws_sdk_sqs::types::QueueAttributeName as A;
    assert_eq!(count(A::ApproximateNumberOfMessagesNotVisible), "1");
    assert_eq!(count(A::ApproximateNumberOfMessages), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_stored_keeps_the_message_and_backs_off() {
    let channel = connect(config()).await;
    let (destination, group) = ("broken-dlq", "g");
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    let producer = channel.producer(destination).await.expect("producer");
    let sent = Message::new("{}");
    producer.send(sent.clone()).await.expect("send");
    // The third delivery: its backoff (4 s) is well above the poller's long poll (1 s).
    for _ in 0..2 {
        receive(&mut consumer).await.nack(None).await.expect("nack");
    }
    let delivery = receive(&mut consumer).await;
    assert_eq!(delivery.attempt(), 3);
    // An operator deletes the dead-letter queue: dead letters now fail.
    let sqs = raw_sqs().await;
    let dead_letter_queue = queue_url(
        &sqs,
        &channel
            .dead_letter_queue_name(destination, Some(group))
            .unwrap(),
    )
    .await;
    sqs.delete_queue()
        .queue_url(&dead_letter_queue)
        .send()
        .await
        .expect("deleting the dead-letter queue");
    delivery
        .dead_letter("the handler gave up", 3)
        .await
        .expect_err("a dead letter to a deleted queue fails");
    let failed = std::time::Instant::now();
    // Kept, and back only after the backoff: not at once, again and again.
    let again = receive(&mut consumer).await;
    let hidden = failed.elapsed();
    assert_eq!(again.message().id(), sent.id());
    assert!(
        hidden >= event_binder_core::dead_letter_retry_delay(3) - Duration::from_millis(100),
        "back after {hidden:?}, without a backoff"
    );
    again.ack().await.expect("ack");
    channel.close().await.expect("close");
}

/// The next delivery `try_receive` has, asked again (without ever calling `receive`) until
/// one is there, failing the test if none comes within `LIMIT`.
async fn try_next(consumer: &mut SqsConsumer) -> Delivery<SqsAcknowledger> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(received) = consumer.try_receive() {
            return received.expect("try_receive");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `try_receive` alone (the runtime's fast path) serves what `receive` would: every
/// message, a nacked one again with its attempt counted; acks (settled at once, with no
/// waiting) delete their messages; and once the channel is closed, the shutdown error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_receive_serves_what_receive_would_without_waiting() {
    let channel = connect(config()).await;
    let (destination, group) = ("fast", "g");
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group(group))
        .await
        .expect("consumer");
    assert!(consumer.try_receive().is_none(), "nothing published yet");
    let messages: Vec<Message> = (0..5).map(|n| Message::new(format!("{n}"))).collect();
    let mut ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
    let producer = channel.producer(destination).await.expect("producer");
    producer.send_batch(messages).await.expect("send");

    let mut first_deliveries = Vec::new();
    let mut nacked = None;
    let mut redelivered = false;
    while first_deliveries.len() < ids.len() || !redelivered {
        let delivery = try_next(&mut consumer).await;
        let id = delivery.message().id().to_owned();
        if delivery.attempt() > 1 {
            assert_eq!((Some(&id), delivery.attempt()), (nacked.as_ref(), 2));
            assert!(!redelivered, "redelivered once");
            redelivered = true;
            delivery.ack().await.expect("ack");
        } else if nacked.is_none() {
            nacked = Some(id.clone());
            delivery.nack(None).await.expect("nack");
            first_deliveries.push(id);
        } else {
            delivery.ack().await.expect("ack");
            first_deliveries.push(id);
        }
    }
    first_deliveries.sort();
    ids.sort();
    assert_eq!(first_deliveries, ids, "every message once");

    // Closing sends the acks' deletes: nothing is left in the queue, hidden or not.
    channel.close().await.expect("close");
    assert!(
        matches!(consumer.try_receive(), Some(Err(Error::ShutDown(_)))),
        "closed: the shutdown error"
    );
    let sqs = raw_sqs().await;
    let queue_url = queue_url(&sqs, &channel.queue_name(destination, group).unwrap()).await;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("attributes");
    let count = |name| {
        attributes
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    use aws_sdk_sqs::types::QueueAttributeName as A;
    assert_eq!(count(A::ApproximateNumberOfMessagesNotVisible), "0");
    assert_eq!(count(A::ApproximateNumberOfMessages), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_traceparent_is_the_parent_of_the_handlers_span() {
    use aws_sdk_sqs::types::MessageAttributeValue;
    let channel = connect(config()).await;
    let queue = channel.queue_name("traced", "g").unwrap();
    check_foreign_parent(channel, "traced", LIMIT, |foreign| async move {
        let sqs = raw_sqs().await;
        let queue_url = queue_url(&sqs, &queue).await;
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(r#"{"order":1}"#)
            .message_attributes(
                "traceparent",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(&foreign.traceparent)
                    .build()
                    .expect("an attribute"),
            )
            .send()
            .await
            .expect("a raw send");
    })
    .await;
}

/// Nothing more arrives at `consumer` within a few seconds.
async fn assert_nothing_for(consumer: &mut SqsConsumer, who: &str) {
    let extra = tokio::time::timeout(Duration::from_secs(3), consumer.receive()).await;
    assert!(extra.is_err(), "{who} got a message: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_group_reaches_that_group_only_intact() {
    let channel = connect(config()).await;
    let destination = "to-group";
    let mut a = channel
        .consumer(&Subscription::new(destination).group("a"))
        .await
        .expect("consumer a");
    let mut b = channel
        .consumer(&Subscription::new(destination).group("b"))
        .await
        .expect("consumer b");
    let mut anonymous = channel
        .consumer(&Subscription::new(destination))
        .await
        .expect("anonymous consumer");
    // 23 messages: three SendMessageBatch requests of up to 10; one packs its headers and
    // one has a binary payload, as a dead letter may.
    let mut sent: Vec<Message> = (0..21)
        .map(|n| {
            Message::new(format!(r#"{{"n":{n}}}"#))
                .with_key(format!("k{n}"))
                .with_header("tenant", "acme")
                .with_content_type("application/json")
        })
        .collect();
    let mut packed = Message::new("packed").with_key("many");
    for i in 0..12 {
        packed = packed.with_header(format!("h{i}"), i.to_string());
    }
    sent.push(packed);
    sent.push(Message::new(vec![0u8, 255, 1]).with_header("one", "1"));
    let before = channel.requests();
    channel
        .send_to_group(destination, "a", sent.clone())
        .await
        .expect("send_to_group");
    let used = channel.requests().since(&before);
    assert_eq!(used.get("SendMessageBatch"), 3, "{used:?}");
    assert_eq!(
        used.get("PublishBatch") + used.get("Publish"),
        0,
        "{used:?}"
    );

    let mut received = HashMap::new();
    for _ in 0..sent.len() {
        let delivery = receive(&mut a).await;
        let message = delivery.message().clone();
        received.insert(message.id().to_owned(), message);
        delivery.ack().await.expect("ack");
    }
    for message in &sent {
        let got = received
            .get(message.id())
            .unwrap_or_else(|| panic!("message {} did not reach group a", message.id()));
        assert_eq!(
            got.payload(),
            message.payload(),
            "payload of {}",
            message.id()
        );
        assert_eq!(got.key(), message.key(), "key of {}", message.id());
        assert_eq!(
            got.headers(),
            message.headers(),
            "headers of {}",
            message.id()
        );
        assert_eq!(got.content_type(), message.content_type());
        assert_eq!(got.timestamp_millis(), message.timestamp_millis());
    }
    assert_nothing_for(&mut b, "group b").await;
    assert_nothing_for(&mut anonymous, "the anonymous subscription").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_group_provisions_a_group_never_consumed() {
    let channel = connect(config()).await;
    let sent = Message::new("{}").with_key("k");
    channel
        .send_to_group("unseen", "late", vec![sent.clone()])
        .await
        .expect("send_to_group");
    let mut late = channel
        .consumer(&Subscription::new("unseen").group("late"))
        .await
        .expect("consumer");
    let delivery = receive(&mut late).await;
    assert_eq!(delivery.message().id(), sent.id());
    assert_eq!(delivery.message().key(), Some("k"));
    delivery.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_group_refuses_what_cannot_be_sent_before_any_request() {
    let channel = connect(config()).await;
    let before = channel.requests();
    let fits = Message::new("{}");
    let too_large = Message::new(vec![0xffu8; 200 * 1024]);
    match channel
        .send_to_group("limits", "g", vec![fits, too_large])
        .await
    {
        Err(Error::PayloadTooLarge { limit, .. }) => assert_eq!(limit, MAX_MESSAGE_SIZE),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(matches!(
        channel
            .send_to_group("limits", "", vec![Message::new("{}")])
            .await,
        Err(Error::InvalidName { .. })
    ));
    assert_eq!(channel.requests().since(&before).total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_group_on_a_fifo_destination_keeps_order_per_key_for_that_group_only() {
    let destination = "fifo-to-group";
    let channel = connect(fifo_config()).await;
    assert!(channel
        .queue_name(destination, "a")
        .unwrap()
        .ends_with(".fifo"));
    let mut a = channel
        .consumer(&Subscription::new(destination).group("a"))
        .await
        .expect("consumer a");
    let mut b = channel
        .consumer(&Subscription::new(destination).group("b"))
        .await
        .expect("consumer b");
    let keys = ["alpha", "beta"];
    let per_key = 8u64;
    let sent: Vec<Message> = (0..per_key)
        .flat_map(|n| {
            keys.iter().map(move |key| {
                Message::new(format!(r#"{{"n":{n}}}"#))
                    .with_key(*key)
                    .with_header("tenant", "acme")
            })
        })
        .collect();
    channel
        .send_to_group(destination, "a", sent.clone())
        .await
        .expect("send_to_group");
    let mut last: HashMap<String, u64> = HashMap::new();
    for _ in 0..sent.len() {
        let delivery = receive(&mut a).await;
        let message = delivery.message();
        let original = sent
            .iter()
            .find(|m| m.id() == message.id())
            .expect("a message sent");
        assert_eq!(message.key(), original.key());
        assert_eq!(message.headers(), original.headers());
        let key = message.key().expect("a key").to_owned();
        let job: Job = serde_json::from_slice(message.payload()).expect("json");
        if let Some(previous) = last.get(&key) {
            assert!(job.n > *previous, "key {key}: {} after {previous}", job.n);
        }
        last.insert(key, job.n);
        delivery.ack().await.expect("ack");
    }
    assert!(last.values().all(|n| *n == per_key - 1), "{last:?}");
    assert_nothing_for(&mut b, "group b").await;
}

fn fifo_config() -> SnsSqsConfig {
    SnsSqsConfig::new(&format!("{URL}&fifo=*"))
        .expect("the URL")
        .prefix(format!("beh-{}-", unique()))
        .credentials("test", "test")
}

/// SNS hands a publish's deduplication id (the message id) on to the FIFO queue, and SQS
/// drops a later message with the same one while answering that it was sent: for 5
/// minutes on AWS, while the first is still queued on moto (which is how this shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_redriven_copy_is_not_taken_for_a_repeat_of_its_publish() {
    let destination = "fifo-dedup";
    let channel = connect(fifo_config()).await;
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("a"))
        .await
        .expect("consumer");
    let sent = Message::new("{}").with_key("k");
    let producer = channel.producer(destination).await.expect("producer");
    producer.send(sent.clone()).await.expect("send");
    let copy = sent.clone().with_header(header::REDRIVE_COUNT, "1");
    for _ in 0..2 {
        // The second is a redrive sent again: a repeat, dropped.
        channel
            .send_to_group(destination, "a", vec![copy.clone()])
            .await
            .expect("send_to_group");
    }
    let mut redrive_counts = Vec::new();
    for _ in 0..2 {
        let delivery = receive(&mut consumer).await;
        assert_eq!(delivery.message().id(), sent.id());
        let count = delivery.message().headers().get(header::REDRIVE_COUNT);
        redrive_counts.push(count.map(str::to_owned));
        delivery.ack().await.expect("ack");
    }
    assert_eq!(redrive_counts, [None, Some("1".to_owned())]);
    assert_nothing_for(&mut consumer, "the group, with a repeated redrive,").await;
}

/// Dead letters wait in a standard queue; a redrive takes them back to the group's FIFO
/// queue, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_dead_letter_is_redriven_to_its_group_every_time() {
    let destination = "fifo-redrive";
    let channel = connect(fifo_config()).await;
    let mut consumer = channel
        .consumer(&Subscription::new(destination).group("a"))
        .await
        .expect("consumer");
    let sent = Message::new("{}").with_key("k");
    let producer = channel.producer(destination).await.expect("producer");
    producer.send(sent.clone()).await.expect("send");
    for redrives in 1..=2 {
        let delivery = receive(&mut consumer).await;
        assert_eq!(delivery.message().id(), sent.id());
        delivery
            .dead_letter("a bug", 1)
            .await
            .expect("dead-lettering");
        let moved = channel
            .redrive(destination, "a", &RedriveOptions::new())
            .await
            .expect("redrive");
        assert_eq!(moved.len(), 1, "redrive {redrives}");
        let back = receive(&mut consumer).await;
        assert_eq!(back.message().id(), sent.id());
        assert_eq!(
            back.message().headers().get(header::REDRIVE_COUNT),
            Some(redrives.to_string().as_str())
        );
        back.nack(None).await.expect("nack");
    }
}
