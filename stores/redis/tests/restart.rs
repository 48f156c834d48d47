//! Redis stopped and started again under a connected store: calls fail in time while it is
//! down, and the same store works again once it is back; an app whose idempotency store
//! it is holds its messages meanwhile and handles each once after. Stops the Redis at
//! 127.0.0.1:6379 that every other test uses, so each test runs alone
//! (.config/nextest.toml; with `cargo test`, `--test-threads=1`), and starts it again, as
//! scripts/redis.sh does, even when it fails.

use async_trait::async_trait;
use event_binder_core::{
    App, Channel, Claim, ClaimKey, Handler, HandlerSpec, IdempotencyStore, Message, MessageId,
    Producer, Raw, RetryPolicy,
};
use event_binder_memory::MemoryChannel;
use event_binder_redis::{RedisConfig, RedisStore};
use std::collections::HashMap;
use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long Redis may take to start or stop.
const STARTUP: Duration = Duration::from_secs(30);
/// The store's timeout.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The command scripts/redis.sh starts Redis with.
const REDIS_SERVER: [&str; 15] = [
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];

/// Whether Redis answers a PING on 127.0.0.1:6379.
fn answers() -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
}

/// Waits until Redis answers (`true`) or does not (`false`); says whether it did in time.
fn wait_until_answering(answering: bool) -> bool {
    let deadline = Instant::now() + STARTUP;
    while answers() != answering {
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
    true
}

/// Starts Redis unless it answers, and waits until it does.
fn start_redis() -> Result<(), String> {
    if answers() {
        return Ok(());
    }
    let status = Command::new("redis-server")
        .args(REDIS_SERVER)
        .status()
        .map_err(|err| format!("could not run redis-server: {err}"))?;
    if !status.success() {
        return Err(format!(
            "redis-server exited with {status}; see /var/log/redis/ci.log"
        ));
    }
    if !wait_until_answering(true) {
        return Err(format!(
            "Redis did not answer within {STARTUP:?}; see /var/log/redis/ci.log"
        ));
    }
    Ok(())
}

/// Stops Redis, forgetting what it held, and waits until it no longer answers.
fn stop_redis() {
    // It closes the connection as it stops: redis-cli's own status says nothing.
    let _ = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running redis-cli");
    assert!(
        wait_until_answering(false),
        "Redis still answers {STARTUP:?} after `shutdown nosave`"
    );
}

/// Starts Redis again when dropped, whether the test passed or not.
struct StartsRedisAgain;

impl Drop for StartsRedisAgain {
    fn drop(&mut self) {
        if let Err(err) = start_redis() {
            // Not a panic: this may run while the test panics already.
            eprintln!("could not start Redis again after the restart test: {err}");
        }
    }
}

/// Checks that `call` of `operation` fails within the store's timeout (and a margin).
async fn fails_in_time<T: std::fmt::Debug>(
    operation: &str,
    call: impl Future<Output = event_binder_core::Result<T>>,
) {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| panic!("{operation} hung while Redis was down"));
    let took = started.elapsed();
    let err = answer.expect_err("a call while Redis is down fails");
    assert!(
        took < TIMEOUT + Duration::from_secs(1),
        "{operation} failed after {took:?}, with a timeout of {TIMEOUT:?}: {err}"
    );
    assert!(err.to_string().contains(operation), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fails_in_time_while_redis_is_down_and_works_once_it_is_back() {
    start_redis().expect("Redis before the test");
    let store = RedisStore::with_config(
        RedisConfig::new("redis://127.0.0.1:6379/0")
            .prefix(format!(
                "event-binder-test:{}:",
                event_binder_core::new_message_id()
            ))
            .timeout(TIMEOUT),
    )
    .await
    .expect("connecting to the Redis at 127.0.0.1:6379");
    let before = ClaimKey::new("restart", "before", "holder");
    assert_eq!(store.begin(before).await.unwrap(), Claim::Acquired);
    store.complete(before).await.unwrap();

    let _restart = StartsRedisAgain;
    stop_redis();

    let during = ClaimKey::new("restart", "during", "holder");
    fails_in_time("begin", store.begin(during)).await;
    fails_in_time("complete", store.complete(during)).await;
    fails_in_time("abandon", store.abandon(during)).await;

    start_redis().expect("starting Redis again");
    // The same store, over the connection its manager opens again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut failures = Vec::new();
    let claim = loop {
        match store.begin(during).await {
            Ok(claim) => break claim,
            Err(err) if Instant::now() < deadline => {
                failures.push(err.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!(
                "the store did not work again after Redis came back: {err}; before: {failures:?}"
            ),
        }
    };
    assert!(
        failures.len() <= 1,
        "{} failures after Redis came back: {failures:?}",
        failures.len()
    );
    assert_eq!(claim, Claim::Acquired);
    store.complete(during).await.unwrap();
    assert_eq!(store.begin(during).await.unwrap(), Claim::AlreadyHandled);
    // This Redis persists nothing (`--save "" --appendonly no`): the id handled before the
    // restart is forgotten, and would be handled again. A durable Redis uses AOF.
    assert_eq!(store.begin(before).await.unwrap(), Claim::Acquired);
    store.abandon(before).await.unwrap();
}

/// The Redis store, counting the calls that failed: the runtime asks it for a claim before
/// each handler call, so its failed `begin`s are the deliveries handed back unhandled.
#[derive(Debug)]
struct CountingFailures {
    inner: RedisStore,
    failed_begins: AtomicUsize,
    failed_completes: AtomicUsize,
}

#[async_trait]
impl IdempotencyStore for CountingFailures {
    async fn begin(&self, key: ClaimKey<'_>) -> event_binder_core::Result<Claim> {
        let claim = self.inner.begin(key).await;
        if claim.is_err() {
            self.failed_begins.fetch_add(1, Ordering::SeqCst);
        }
        claim
    }

    async fn complete(&self, key: ClaimKey<'_>) -> event_binder_core::Result<()> {
        let completed = self.inner.complete(key).await;
        if completed.is_err() {
            self.failed_completes.fetch_add(1, Ordering::SeqCst);
        }
        completed
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> event_binder_core::Result<()> {
        self.inner.abandon(key).await
    }
}

/// Polls `condition` every 20 ms until it holds, failing the test after `within`.
async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_holds_messages_while_redis_is_down_and_handles_each_once_after() {
    const COUNT: usize = 600;
    start_redis().expect("Redis before the test");
    let prefix = format!("event-binder-test:{}:", event_binder_core::new_message_id());
    let store = Arc::new(CountingFailures {
        inner: RedisStore::with_config(
            RedisConfig::new("redis://127.0.0.1:6379/0")
                .prefix(prefix.as_str())
                // What a failing run leaves behind goes by itself.
                .retention(Duration::from_secs(10 * 60))
                .timeout(TIMEOUT),
        )
        .await
        .expect("connecting to the Redis at 127.0.0.1:6379"),
        failed_begins: AtomicUsize::new(0),
        failed_completes: AtomicUsize::new(0),
    });
    // How many times the handler ran for each id.
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = calls.clone();
    let handler = Handler::from_fn(
        HandlerSpec::new("count", "orders").group("effects"),
        move |_event: Raw, id: MessageId| {
            let counted = counted.clone();
            async move {
                *counted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(id.to_string())
                    .or_default() += 1;
                Ok::<_, std::io::Error>(())
            }
        },
    );
    let handled = || calls.lock().unwrap_or_else(PoisonError::into_inner).len();
    let bus = MemoryChannel::new();
    bus.provision("orders", Some("effects")).await.unwrap();
    let running = App::new(bus.clone())
        // Two attempts only: a Redis outage must use none of them.
        .retry(RetryPolicy::new(2).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .idempotency(store.clone())
        .handler(handler)
        .start()
        .await
        .unwrap();
    let producer = bus.producer("orders").await.unwrap();
    let publishing = tokio::spawn(async move {
        for n in 0..COUNT {
            producer
                .send(Message::new_with_id(format!("m-{n:04}"), "{}"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    eventually(
        "the first messages handled",
        Duration::from_secs(30),
        || handled() >= 50,
    )
    .await;

    let _restart = StartsRedisAgain;
    tokio::task::spawn_blocking(stop_redis)
        .await
        .expect("stopping Redis");
    // Down: deliveries keep coming, and their claims fail, several times in a row.
    let failures_before = store.failed_begins.load(Ordering::SeqCst);
    let handled_before = handled();
    eventually(
        "claims failing while Redis is down",
        Duration::from_secs(30),
        || store.failed_begins.load(Ordering::SeqCst) >= failures_before + 5,
    )
    .await;
    let handled_down = handled();
    tokio::task::spawn_blocking(start_redis)
        .await
        .unwrap()
        .expect("starting Redis again");

    publishing.await.unwrap();
    eventually(
        "every message handled after the restart",
        Duration::from_secs(60),
        || handled() >= COUNT,
    )
    .await;
    running.shutdown().await.unwrap();
    let calls = calls.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let twice: Vec<(&String, &usize)> = calls.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "ids handled more than once: {twice:?}");
    assert_eq!(calls.len(), COUNT, "ids handled");
    assert_eq!(
        bus.dead_lettered("orders", Some("effects")),
        0,
        "dead letters"
    );
    println!(
        "app across a Redis restart: {COUNT} messages, {handled_before} handled before the \
         stop, {} while down (claims taken before it), {} claims and {} records failed on \
         Redis; 0 lost, 0 handled twice, 0 dead letters",
        handled_down - handled_before,
        store.failed_begins.load(Ordering::SeqCst),
        store.failed_completes.load(Ordering::SeqCst),
    );
    delete_keys(&prefix).await;
}

/// Deletes the keys under `prefix` (which holds no `SCAN` pattern character), best effort.
async fn delete_keys(prefix: &str) {
    let deleted = async {
        let client = redis::Client::open("redis://127.0.0.1:6379/0")?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                return Ok::<_, redis::RedisError>(());
            }
            cursor = next;
        }
    };
    if let Err(err) = deleted.await {
        eprintln!("deleting the test's keys under {prefix}: {err}");
    }
}
