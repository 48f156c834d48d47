//! Redis stopped and started again under a connected store: calls fail in time while it is
//! down, and the same store works again once it is back. Stops the Redis at
//! 127.0.0.1:6379 that every other test uses, so it runs alone (.config/nextest.toml), and
//! starts it again, as scripts/redis.sh does, even when it fails.

use event_binder_core::{Claim, ClaimKey, IdempotencyStore};
use event_binder_redis::{RedisConfig, RedisStore};
use std::future::Future;
use std::process::{Command, Stdio};
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
