//! What the Redis store does beyond the conformance suite: the keys and their expiry, key
//! prefixes, ids of any shape, and errors that come in time and hide the password. Against
//! the Redis at 127.0.0.1:6379 (`scripts/redis.sh` starts it).

use event_binder_core::{Claim, ClaimKey, Error, IdempotencyStore};
use event_binder_redis::{RedisConfig, RedisStore};
use redis::aio::MultiplexedConnection;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const URL: &str = "redis://127.0.0.1:6379/0";

/// A key prefix no other test or run uses.
fn unique_prefix() -> String {
    format!("event-binder-test:{}:", event_binder_core::new_message_id())
}

/// A store on the test Redis with `prefix`, `lease` and `retention`.
async fn store(prefix: &str, lease: Duration, retention: Duration) -> RedisStore {
    RedisStore::with_config(
        RedisConfig::new(URL)
            .prefix(prefix)
            .lease(lease)
            .retention(retention),
    )
    .await
    .expect("connecting to the Redis at 127.0.0.1:6379 (scripts/redis.sh starts it)")
}

/// A plain connection to the test Redis, to look at what the store wrote.
async fn redis() -> MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the Redis at 127.0.0.1:6379")
}

async fn get(redis: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(redis).await.unwrap()
}

async fn pttl(redis: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap()
}

async fn delete(redis: &mut MultiplexedConnection, keys: &[String]) {
    let () = redis::cmd("DEL")
        .arg(keys)
        .query_async(redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn claims_expire_with_the_lease_and_handled_ids_with_the_retention() {
    let lease = Duration::from_secs(60);
    let retention = Duration::from_secs(600);
    let store = store(&unique_prefix(), lease, retention).await;
    let mut redis = redis().await;
    let key = ClaimKey::new("orders/billing/bill", "id-1", "holder-a");
    let redis_key = store.key(key.scope, key.id);
    assert_eq!(
        redis_key,
        format!("{}19:orders/billing/bill:id-1", store.prefix())
    );

    assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
    assert_eq!(
        get(&mut redis, &redis_key).await.as_deref(),
        Some("claimed:holder-a")
    );
    let ttl = pttl(&mut redis, &redis_key).await;
    assert!(
        (55_000..=60_000).contains(&ttl),
        "PTTL {ttl} ms after begin, lease {lease:?}"
    );

    // Held: retry when the lease runs out, at most MAX_RETRY_IN from now.
    let other = ClaimKey::new(key.scope, key.id, "holder-b");
    assert_eq!(
        store.begin(other).await.unwrap(),
        Claim::HeldElsewhere {
            retry_in: RedisStore::MAX_RETRY_IN
        }
    );

    store.complete(key).await.unwrap();
    assert_eq!(
        get(&mut redis, &redis_key).await.as_deref(),
        Some("handled")
    );
    let ttl = pttl(&mut redis, &redis_key).await;
    assert!(
        (595_000..=600_000).contains(&ttl),
        "PTTL {ttl} ms after complete, retention {retention:?}"
    );
    delete(&mut redis, &[redis_key]).await;
}

#[tokio::test]
async fn retry_in_is_what_is_left_of_a_short_lease() {
    let lease = Duration::from_secs(3);
    let store = store(&unique_prefix(), lease, Duration::from_secs(60)).await;
    let held = ClaimKey::new("s", "id", "holder-a");
    assert_eq!(store.begin(held).await.unwrap(), Claim::Acquired);
    let claim = store
        .begin(ClaimKey::new("s", "id", "holder-b"))
        .await
        .unwrap();
    let Claim::HeldElsewhere { retry_in } = claim else {
        panic!("expected HeldElsewhere, got {claim:?}");
    };
    assert!(
        retry_in > Duration::from_secs(2) && retry_in <= lease,
        "retry_in {retry_in:?} with a lease of {lease:?}"
    );
    store.abandon(held).await.unwrap();
}

#[tokio::test]
async fn prefixes_isolate_stores() {
    let long = Duration::from_secs(60);
    let (one, two) = (unique_prefix(), unique_prefix());
    let (one, two) = (store(&one, long, long).await, store(&two, long, long).await);
    let key = ClaimKey::new("scope", "id", "holder");
    assert_eq!(one.begin(key).await.unwrap(), Claim::Acquired);
    one.complete(key).await.unwrap();
    assert_eq!(two.begin(key).await.unwrap(), Claim::Acquired);
    assert_eq!(one.begin(key).await.unwrap(), Claim::AlreadyHandled);

    let mut redis = redis().await;
    let (key_one, key_two) = (one.key("scope", "id"), two.key("scope", "id"));
    assert_ne!(key_one, key_two);
    assert_eq!(get(&mut redis, &key_one).await.as_deref(), Some("handled"));
    assert_eq!(
        get(&mut redis, &key_two).await.as_deref(),
        Some("claimed:holder")
    );
    delete(&mut redis, &[key_one, key_two]).await;
}

#[tokio::test]
async fn colons_in_scopes_and_ids_never_collide() {
    let long = Duration::from_secs(60);
    let store = store(&unique_prefix(), long, long).await;
    let pairs = [("a:b", "c"), ("a", "b:c"), ("a:", ":b:c"), ("", "a:b:c")];
    for (scope, id) in pairs {
        let key = ClaimKey::new(scope, id, "holder");
        assert_eq!(
            store.begin(key).await.unwrap(),
            Claim::Acquired,
            "scope {scope:?} id {id:?} met another pair's key"
        );
        store.complete(key).await.unwrap();
    }
    let keys: Vec<String> = pairs.iter().map(|(s, i)| store.key(s, i)).collect();
    for (n, key) in keys.iter().enumerate() {
        assert!(!keys[..n].contains(key), "{key} twice");
    }
    delete(&mut redis().await, &keys).await;
}

#[tokio::test]
async fn ids_of_any_length_and_script_are_kept_as_given() {
    let long = Duration::from_secs(60);
    let store = store(&unique_prefix(), long, long).await;
    let id = "ünïcødé-🦀-日本語-".repeat(20);
    assert!(
        id.chars().count() > 200,
        "{} characters",
        id.chars().count()
    );
    let scope = "événements/计费/处理";
    let key = ClaimKey::new(scope, &id, "holder-ü");
    assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
    store.complete(key).await.unwrap();
    assert_eq!(store.begin(key).await.unwrap(), Claim::AlreadyHandled);
    // An id that differs in its last character only is another id.
    let mut other = id.clone();
    other.push('!');
    let other = ClaimKey::new(scope, &other, "holder-ü");
    assert_eq!(store.begin(other).await.unwrap(), Claim::Acquired);
    store.abandon(other).await.unwrap();

    let mut redis = redis().await;
    let redis_key = store.key(scope, &id);
    assert!(redis_key.ends_with(&format!("{}:{scope}:{id}", scope.len())));
    assert_eq!(
        get(&mut redis, &redis_key).await.as_deref(),
        Some("handled")
    );
    delete(&mut redis, &[redis_key]).await;
}

#[tokio::test]
async fn a_store_with_a_password_never_shows_it() {
    // A user of this test's own, with a password, removed before the end.
    let user = format!("event-binder-test-{}", event_binder_core::new_message_id());
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", ">hunter2", "~*", "+@all"][..])
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let long = Duration::from_secs(60);
    let connected = RedisStore::with_config(
        RedisConfig::new(format!("redis://{user}:hunter2@127.0.0.1:6379/0"))
            .prefix(unique_prefix())
            .lease(long)
            .retention(long),
    )
    .await;
    let delete_user = || async {
        let _: i64 = redis::cmd("ACL")
            .arg(&["DELUSER", &user][..])
            .query_async(&mut redis().await)
            .await
            .unwrap();
    };
    let store = match connected {
        Ok(store) => store,
        Err(err) => {
            delete_user().await;
            panic!("connecting with the test user's password: {err}");
        }
    };
    let key = ClaimKey::new("s", "id", "holder");
    let claimed = store.begin(key).await;
    for shown in [store.to_string(), format!("{store:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains(&format!("redis://{user}:***@127.0.0.1:6379/0")),
            "{shown}"
        );
    }

    // Redis closes the user's connections; connecting again is refused.
    delete_user().await;
    assert_eq!(claimed.unwrap(), Claim::Acquired);
    let err = store
        .complete(key)
        .await
        .expect_err("the user is gone: complete fails");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

/// The error of connecting with `config`, checked to come within its timeout (and a
/// margin) and to hide the password `hunter2`.
async fn connect_error(config: RedisConfig, timeout: Duration) -> Error {
    let started = Instant::now();
    let err = RedisStore::with_config(config.timeout(timeout))
        .await
        .expect_err("connecting should fail");
    let took = started.elapsed();
    assert!(
        took < timeout + Duration::from_secs(1),
        "the error took {took:?}, with a timeout of {timeout:?}"
    );
    let (shown, debug) = (err.to_string(), format!("{err:?}"));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(matches!(err, Error::Idempotency(_)), "{debug}");
    err
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_in_time_without_the_password() {
    // Nothing listens on port 1.
    let err = connect_error(
        RedisConfig::new("redis://:hunter2@127.0.0.1:1/0"),
        Duration::from_secs(2),
    )
    .await;
    let shown = err.to_string();
    assert!(shown.contains("connect"), "{shown}");
    assert!(shown.contains("redis://***@127.0.0.1:1/0"), "{shown}");
}

#[tokio::test]
async fn a_wrong_password_is_an_error_in_time_without_the_password() {
    for url in [
        "redis://:hunter2@127.0.0.1:6379/0",
        "redis://someone:hunter2@127.0.0.1:6379/0",
        "redis://someone:hunter%32@127.0.0.1:6379/0",
    ] {
        let err = connect_error(RedisConfig::new(url), Duration::from_secs(3)).await;
        assert!(err.to_string().contains("connect"), "{err}");
    }
}

#[tokio::test]
async fn a_redis_that_never_answers_is_an_error_in_time() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts connections and holds them, never answering.
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let err = connect_error(
        RedisConfig::new(format!("redis://:hunter2@127.0.0.1:{port}/0")),
        Duration::from_secs(1),
    )
    .await;
    assert!(err.to_string().contains("connect"), "{err}");
    held.abort();
}

/// A TCP proxy to the test Redis whose connections can be frozen: they stay open but
/// carry nothing more, as a connection to a host that vanished without closing it does.
/// Connections opened after a freeze carry on as usual.
struct Proxy {
    port: u16,
    connections: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let registered = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (freeze, frozen) = oneshot::channel::<()>();
                registered.lock().unwrap().push(freeze);
                tokio::spawn(async move {
                    let mut server = TcpStream::connect("127.0.0.1:6379").await.unwrap();
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = frozen => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Proxy { port, connections }
    }

    fn freeze(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_is_replaced() {
    let proxy = Proxy::start().await;
    let timeout = Duration::from_secs(1);
    let store = RedisStore::with_config(
        RedisConfig::new(format!("redis://127.0.0.1:{}/0", proxy.port))
            .prefix(unique_prefix())
            .timeout(timeout),
    )
    .await
    .unwrap();
    let first = ClaimKey::new("s", "first", "holder");
    assert_eq!(store.begin(first).await.unwrap(), Claim::Acquired);

    proxy.freeze();
    let started = Instant::now();
    let second = ClaimKey::new("s", "second", "holder");
    let err = store
        .begin(second)
        .await
        .expect_err("a frozen connection answers nothing");
    assert!(matches!(err, Error::Idempotency(_)), "{err:?}");
    assert!(
        started.elapsed() < timeout + Duration::from_secs(1),
        "the error took {:?}, with a timeout of {timeout:?}",
        started.elapsed()
    );

    // The next call goes over a new connection.
    let claim = tokio::time::timeout(Duration::from_secs(5), store.begin(second))
        .await
        .expect("an answer over a new connection")
        .expect("begin over a new connection");
    // The frozen connection never passed the first try on.
    assert_eq!(claim, Claim::Acquired);
    store.abandon(first).await.unwrap();
    store.abandon(second).await.unwrap();
}
