//! Crash tests (issue #12): a consumer process, `crash-consumer`, is killed with SIGKILL at
//! random points, several times, while 10,000 messages flow through a broker, and
//! restarted after each kill. Each message's effect is a row under a unique constraint plus
//! one added to a counter (and one to a second counter, `twice`, when the row was there
//! already).
//!
//! Through the PostgreSQL transactional inbox (a test per broker), in the end every
//! published id has its row, there are exactly 10,000 rows, and the counter says 10,000:
//! none lost, none applied twice.
//!
//! With the Redis idempotency store (on RabbitMQ), whose record of a handled id is not in
//! the effect's transaction, a process killed between the two applies a message again
//! after its restart: in the end none is lost, every id is recorded as handled in Redis,
//! and at most the messages in flight at each kill (kills × concurrency) were applied
//! twice.
//!
//! Each test uses a name prefix, tables and Redis keys of its own, so runs on shared
//! services never meet. The services: RabbitMQ on 127.0.0.1:5672, Kafka at
//! `EVENT_BINDER_KAFKA_BOOTSTRAP` (127.0.0.1:9092), the moto SNS+SQS emulator on
//! 127.0.0.1:4566 (with the dummy AWS credentials in the environment), PostgreSQL at
//! `EVENT_BINDER_POSTGRES_URL`, Redis at `EVENT_BINDER_REDIS_URL` (127.0.0.1:6379, database
//! 0). Run with `-- --nocapture` to see the figures each test prints.

mod support;

use event_binder::redis::{RedisConfig, RedisStore};
use event_binder::{
    new_message_id, AnyChannel, Channel, Claim, ClaimKey, IdempotencyStore, Message, Publisher,
};
use redis::aio::MultiplexedConnection;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{unique, Db, Process, RedisKeys, Stats, Tables};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The consumer process.
const CONSUMER: &str = env!("CARGO_BIN_EXE_crash-consumer");
/// How many messages flow.
const MESSAGES: u64 = 10_000;
/// How many times the consumer is killed.
const KILLS: u64 = 4;
/// How many messages one publish sends.
const BATCH: usize = 100;
/// The destination and the group (each test's channel has a prefix of its own).
const DESTINATION: &str = "crash";
const GROUP: &str = "apply";
/// The name of the consumer's handler.
const HANDLER: &str = "apply";
/// How many messages the consumer handles at once with the Redis store (set explicitly:
/// the bound on the duplicates depends on it).
const REDIS_CONCURRENCY: u64 = 16;
/// The lease of the consumer's Redis store: a killed process's claims pass to the next one
/// after that.
const REDIS_LEASE: Duration = Duration::from_secs(3);

/// How the consumer keeps from applying a message twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotency {
    /// The PostgreSQL transactional inbox, the effect in its transaction: nothing is
    /// applied twice.
    Inbox,
    /// The Redis idempotency store, the effect in a transaction of its own: a message may
    /// be applied twice, if the process was killed between its effect and its record.
    Redis,
}

/// One broker's case.
struct Case {
    broker: &'static str,
    url: String,
    /// How far publishing may run ahead of the effects applied: the messages then flow
    /// while the consumer runs and is killed, rather than all being published first.
    window: u64,
    /// How long a consumer has to reach its kill point, and the last one to finish the
    /// work.
    finish_within: Duration,
    idempotency: Idempotency,
}

/// The RabbitMQ URL of a test whose names start with `prefix`.
fn rabbitmq_url(prefix: &str) -> String {
    // The group's queue expires on the broker two minutes after its last use.
    format!("amqp://guest:guest@127.0.0.1:5672/%2f?prefix={prefix}&queue_expires_ms=120000")
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_consumer_killed_mid_stream() {
    let prefix = format!("crash-{}-", unique());
    consumer_killed_mid_stream(Case {
        broker: "rabbitmq",
        url: rabbitmq_url(&prefix),
        window: 2_000,
        finish_within: Duration::from_secs(180),
        idempotency: Idempotency::Inbox,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_consumer_with_redis_store_killed_mid_stream() {
    let prefix = format!("crash-{}-", unique());
    consumer_killed_mid_stream(Case {
        broker: "rabbitmq",
        url: rabbitmq_url(&prefix),
        window: 2_000,
        finish_within: Duration::from_secs(180),
        idempotency: Idempotency::Redis,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_consumer_killed_mid_stream() {
    let prefix = format!("crash-{}-", unique());
    consumer_killed_mid_stream(Case {
        broker: "kafka",
        // A killed member's partitions go to the next one once its session has timed out:
        // 6 s rather than the backend's 10 s.
        url: format!(
            "kafka://{}?prefix={prefix}&session.timeout.ms=6000",
            support::kafka_broker()
        ),
        window: 2_000,
        finish_within: Duration::from_secs(180),
        idempotency: Idempotency::Inbox,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_sqs_consumer_killed_mid_stream() {
    let prefix = format!("crash-{}-", unique());
    consumer_killed_mid_stream(Case {
        broker: "sns-sqs",
        // What a killed consumer held comes back after the visibility timeout: 5 s rather
        // than 30 (a handler takes milliseconds). A short long-poll, and a request attempt
        // given the whole operation's time, as tests/it/sns_sqs.rs does for moto.
        url: format!(
            "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1\
             &attempt_timeout_ms=30000&visibility_timeout_s=5&prefix={prefix}"
        ),
        // moto's receives and sends slow down as a queue grows (it scans the whole queue for
        // each message): keep it short.
        window: 80,
        finish_within: Duration::from_secs(300),
        idempotency: Idempotency::Inbox,
    })
    .await;
}

/// The test every broker runs, with the inbox or the Redis store: publish, kill the
/// consumer `KILLS` times at random points, restart it, check the effects.
async fn consumer_killed_mid_stream(case: Case) {
    let Case {
        broker,
        url,
        window,
        finish_within,
        idempotency,
    } = case;
    let what = match idempotency {
        Idempotency::Inbox => broker.to_owned(),
        Idempotency::Redis => format!("{broker} with the Redis store"),
    };
    let suffix = unique();
    let mut tables = Tables::default();
    let handled = tables.add(format!("crash_{suffix}_handled"));
    let effects = tables.add(format!("crash_{suffix}_effects"));
    let counter = tables.add(format!("crash_{suffix}_counter"));
    let mut db = Db::connect().await;
    db.execute(&format!("CREATE TABLE \"{effects}\" (id text PRIMARY KEY)"))
        .await;
    db.execute(&format!(
        "CREATE TABLE \"{counter}\" (n bigint NOT NULL, twice bigint NOT NULL)"
    ))
    .await;
    db.execute(&format!("INSERT INTO \"{counter}\" VALUES (0, 0)"))
        .await;
    // The effects applied, each once however many times it was: the rows (the effect's
    // row and count share a transaction).
    let applied_sql = format!("SELECT n - twice FROM \"{counter}\"");
    let redis = match idempotency {
        Idempotency::Inbox => None,
        Idempotency::Redis => Some(Redis::connect(&suffix).await),
    };
    let env = redis.as_ref().map(Redis::env).unwrap_or_default();

    let channel = AnyChannel::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("{what}: connecting to {url}: {err}"));
    channel
        .provision(DESTINATION, Some(GROUP))
        .await
        .unwrap_or_else(|err| panic!("{what}: provisioning: {err}"));

    let ids: Arc<Vec<String>> = Arc::new((0..MESSAGES).map(|_| new_message_id()).collect());
    let published = Arc::new(AtomicU64::new(0));
    let mut publishing = Publishing(Some(tokio::spawn(publish(
        channel.clone(),
        ids.clone(),
        applied_sql.clone(),
        window,
        published.clone(),
    ))));

    let postgres = support::postgres_url();
    let args = [
        url.as_str(),
        DESTINATION,
        GROUP,
        postgres.as_str(),
        handled.as_str(),
        effects.as_str(),
        counter.as_str(),
    ];
    let points = kill_points();
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut killed_at = Vec::new();
    let mut first_delivery_after = Vec::new();
    let mut run = Run {
        db: &mut db,
        applied_sql: &applied_sql,
        publishing: &mut publishing,
        published: &published,
    };
    for (kill, &point) in points.iter().enumerate() {
        let name = format!("{what}: consumer #{}", kill + 1);
        let mut consumer = Process::spawn_with_env(&name, CONSUMER, &args, &env);
        let first = run.until_applied(&mut consumer, point, finish_within).await;
        consumer.kill().await;
        killed_at.push(run.db.scalar(&applied_sql).await);
        stats.add(consumer.stats());
        first_delivery_after.push(first);
    }
    let name = format!("{what}: consumer #{} (the last)", KILLS + 1);
    let mut consumer = Process::spawn_with_env(&name, CONSUMER, &args, &env);
    let first = run
        .until_applied(&mut consumer, MESSAGES, finish_within)
        .await;
    first_delivery_after.push(first);
    publishing.finish().await;
    if let Some(redis) = &redis {
        // Every effect is applied, but a message applied by a killed process and not
        // recorded comes again (once the killed claim's lease ran out), to be applied and
        // recorded now: wait for that, so that the figures below are final.
        redis
            .until_recorded(&ids, &mut consumer, finish_within)
            .await;
    }
    // A graceful stop: whatever is still in flight (redeliveries, skipped as already
    // handled) finishes first, so the counts below are final.
    consumer.stop(Duration::from_secs(60)).await;
    stats.add(consumer.stats());
    let elapsed = started.elapsed();

    let rows = db
        .scalar(&format!("SELECT count(*) FROM \"{effects}\""))
        .await;
    let counted = db.scalar(&format!("SELECT n FROM \"{counter}\"")).await;
    let twice = db.scalar(&format!("SELECT twice FROM \"{counter}\"")).await;
    let recorded = match &redis {
        None => {
            db.scalar(&format!("SELECT count(*) FROM \"{handled}\""))
                .await
        }
        Some(redis) => redis.handled(&ids).await,
    };
    let present: HashSet<String> = db
        .strings(&format!("SELECT id FROM \"{effects}\""))
        .await
        .into_iter()
        .collect();
    let lost = ids.iter().filter(|id| !present.contains(*id)).count();
    let published_ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let unknown = present
        .iter()
        .filter(|id| !published_ids.contains(id.as_str()))
        .count();
    let twice_at_most = match idempotency {
        Idempotency::Inbox => 0,
        Idempotency::Redis => KILLS * REDIS_CONCURRENCY,
    };
    let calls = match idempotency {
        Idempotency::Inbox => format!(
            "inbox calls {} (applied {}, skipped as already handled {}, failed {})",
            stats.deliveries, stats.applied, stats.skipped, stats.failed
        ),
        Idempotency::Redis => format!(
            "claims asked of Redis {} (applied {}, skipped as already handled {}, held by \
             another holder {}, failed {})",
            stats.deliveries, stats.applied, stats.skipped, stats.held, stats.failed
        ),
    };
    let store = match idempotency {
        Idempotency::Inbox => "by the inbox",
        Idempotency::Redis => "as handled in Redis",
    };
    println!(
        "crash {what}: {MESSAGES} messages, {} SIGKILLs (at {killed_at:?} effects applied; \
         first delivery of each start after {first_delivery_after:.1?}), {elapsed:.1?}: \
         effect rows {rows}, counter {counted}, lost {lost}, applied twice {twice} (at most \
         {twice_at_most}), ids recorded {store} {recorded}; {calls}, as the processes last \
         reported before their ends",
        killed_at.len(),
    );
    assert_eq!(lost, 0, "{what}: published messages with no effect");
    assert_eq!(unknown, 0, "{what}: effects of ids never published");
    assert_eq!(rows, MESSAGES as i64, "{what}: effect rows");
    assert_eq!(counted, rows + twice, "{what}: the counter");
    assert!(
        (0..=twice_at_most as i64).contains(&twice),
        "{what}: {twice} effects applied twice, more than {twice_at_most}"
    );
    assert_eq!(recorded, MESSAGES as i64, "{what}: ids recorded {store}");
    assert_eq!(killed_at.len() as u64, KILLS);
    channel
        .close()
        .await
        .unwrap_or_else(|err| panic!("{what}: closing: {err}"));
    drop(tables);
    drop(redis);
}

/// The Redis side of a test with the Redis store: the consumer's settings, what it
/// recorded, and its keys, deleted when this is dropped.
struct Redis {
    /// The store as the consumer's (the same URL and prefix): its key layout, and its own
    /// answer to whether an id was handled.
    store: RedisStore,
    conn: MultiplexedConnection,
    /// The handler's scope in the store: `{destination}/{group}/{handler}`, as the runtime
    /// makes it.
    scope: String,
    keys: RedisKeys,
}

impl Redis {
    /// Connects to the test Redis, for keys under a prefix of the test's `suffix`.
    async fn connect(suffix: &str) -> Redis {
        let url = support::redis_url();
        let prefix = format!("event-binder-crash:{suffix}:");
        let keys = RedisKeys::new(url.clone(), prefix.clone());
        let store = RedisStore::with_config(
            RedisConfig::new(url.as_str())
                .prefix(prefix.as_str())
                .lease(REDIS_LEASE),
        )
        .await
        .unwrap_or_else(|err| panic!("connecting to Redis at {url}: {err}"));
        let conn = redis::Client::open(url.as_str())
            .unwrap_or_else(|err| panic!("the Redis URL {url}: {err}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| panic!("connecting to Redis at {url}: {err}"));
        Redis {
            store,
            conn,
            scope: format!("{DESTINATION}/{GROUP}/{HANDLER}"),
            keys,
        }
    }

    /// The consumer's environment: the Redis store, with this test's prefix.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("CRASH_STORE", "redis".to_owned()),
            ("CRASH_REDIS_URL", self.keys.url.clone()),
            ("CRASH_REDIS_PREFIX", self.keys.prefix.clone()),
            ("CRASH_REDIS_LEASE_MS", REDIS_LEASE.as_millis().to_string()),
            ("CRASH_CONCURRENCY", REDIS_CONCURRENCY.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// How many of `ids` have their key say `handled`, read in one `MGET` per thousand.
    async fn recorded(&self, ids: &[String]) -> usize {
        let mut conn = self.conn.clone();
        let mut recorded = 0;
        for chunk in ids.chunks(1_000) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| self.store.key(&self.scope, id))
                .collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|err| panic!("reading the store's keys: {err}"));
            recorded += values
                .iter()
                .filter(|value| value.as_deref() == Some("handled"))
                .count();
        }
        recorded
    }

    /// Waits until every one of `ids` is recorded as handled, failing the test after
    /// `within` (or when the consumer exits).
    async fn until_recorded(&self, ids: &[String], consumer: &mut Process, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let recorded = self.recorded(ids).await;
            if recorded == ids.len() {
                return;
            }
            consumer.check_running().await;
            assert!(
                Instant::now() < deadline,
                "{}: {recorded} of {} ids recorded as handled in Redis after {within:?}; \
                 stderr: {}",
                consumer.name(),
                ids.len(),
                consumer.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many of `ids` the store says are handled, asked as the runtime asks, by a holder
    /// of its own: [`Claim::AlreadyHandled`]. (A claim it acquires instead it abandons.)
    async fn handled(&self, ids: &[String]) -> i64 {
        let holder = new_message_id();
        let mut handled = 0;
        for id in ids {
            let key = ClaimKey::new(&self.scope, id, &holder);
            match self.store.begin(key).await {
                Ok(Claim::AlreadyHandled) => handled += 1,
                Ok(Claim::Acquired) => {
                    let _ = self.store.abandon(key).await;
                }
                Ok(_) => {}
                Err(err) => panic!("asking the Redis store about {id}: {err}"),
            }
        }
        handled
    }
}

/// `KILLS` random points, as numbers of effects applied: one in each of `KILLS` equal
/// slices of 5 % to 90 % of the messages.
fn kill_points() -> Vec<u64> {
    let low = MESSAGES * 5 / 100;
    let high = MESSAGES * 90 / 100;
    let slice = (high - low) / KILLS;
    (0..KILLS)
        .map(|kill| low + kill * slice + support::random_below(slice))
        .collect()
}

/// Publishes `ids` in batches of `BATCH`, never more than `window` ahead of the effects
/// applied (the counter `applied_sql` reads), counting them in `published`.
async fn publish(
    channel: AnyChannel,
    ids: Arc<Vec<String>>,
    applied_sql: String,
    window: u64,
    published: Arc<AtomicU64>,
) -> Result<(), String> {
    let publisher = Publisher::new(channel);
    let mut db = Db::connect().await;
    for (batch, chunk) in ids.chunks(BATCH).enumerate() {
        loop {
            let applied = u64::try_from(db.scalar(&applied_sql).await).unwrap_or(0);
            if published.load(Ordering::Relaxed) <= applied + window {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let messages = chunk
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let n = batch * BATCH + index;
                Message::new_with_id(id.as_str(), format!("{{\"n\":{n}}}"))
            })
            .collect();
        publisher
            .send_batch(DESTINATION, messages)
            .await
            .map_err(|err| format!("publishing batch {batch}: {err}"))?;
        published.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// What waiting on a consumer's progress looks at.
struct Run<'a> {
    db: &'a mut Db,
    applied_sql: &'a str,
    publishing: &'a mut Publishing,
    published: &'a AtomicU64,
}

impl Run<'_> {
    /// Waits until `consumer`, just started, is ready and the counter reached `target`,
    /// failing the test after `within` (or when the consumer or publishing failed).
    /// Returns how long after its start the consumer had its first delivery, if it had one.
    async fn until_applied(
        &mut self,
        consumer: &mut Process,
        target: u64,
        within: Duration,
    ) -> Option<Duration> {
        let spawned = Instant::now();
        consumer.ready(Duration::from_secs(60)).await;
        let deadline = Instant::now() + within;
        let mut first = None;
        loop {
            let applied = self.db.scalar(self.applied_sql).await;
            if first.is_none() && consumer.stats().deliveries > 0 {
                first = Some(spawned.elapsed());
            }
            if applied >= target as i64 {
                return first;
            }
            consumer.check_running().await;
            self.publishing.check().await;
            assert!(
                Instant::now() < deadline,
                "{}: {target} effects not reached within {within:?}: counter {applied}, \
                 {} of {MESSAGES} published; stderr: {}",
                consumer.name(),
                self.published.load(Ordering::Relaxed),
                consumer.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The publishing task.
struct Publishing(Option<JoinHandle<Result<(), String>>>);

impl Publishing {
    /// Fails the test if publishing failed.
    async fn check(&mut self) {
        if self.0.as_ref().is_some_and(JoinHandle::is_finished) {
            self.finish().await;
        }
    }

    /// Waits for publishing to end (a minute at most), failing the test if it failed.
    async fn finish(&mut self) {
        let Some(task) = self.0.take() else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("{err}"),
            Ok(Err(err)) => panic!("the publishing task failed: {err}"),
            Err(_) => panic!("publishing did not end within a minute of the last effect"),
        }
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
