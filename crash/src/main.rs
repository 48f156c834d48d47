//! `crash-consumer`: the consumer process that the crash tests kill.
//!
//! It consumes one destination's group on any broker and applies one effect per message:
//! in one PostgreSQL transaction it inserts the message id into an effects table (`id text
//! PRIMARY KEY`, `ON CONFLICT DO NOTHING`) and adds one to a counter table's `n` (and to its
//! `twice` when the id was there already: the effect was applied twice).
//!
//! ```text
//! crash-consumer CHANNEL_URL DESTINATION GROUP POSTGRES_URL HANDLED_TABLE EFFECTS_TABLE COUNTER_TABLE
//! ```
//!
//! How it keeps from applying a message twice depends on `CRASH_STORE`:
//!
//! - `inbox` (the default): the PostgreSQL transactional inbox. The effect is applied in
//!   the inbox's transaction, which records the id as handled in `HANDLED_TABLE` (created
//!   if missing) and commits before the message is acknowledged: nothing is applied twice.
//! - `redis`: the app's idempotency store is the Redis store, at `CRASH_REDIS_URL`
//!   (`redis://127.0.0.1:6379/0` by default), its keys under `CRASH_REDIS_PREFIX` (required:
//!   one per test), with a lease of `CRASH_REDIS_LEASE_MS` ms (3,000 by default, so that a
//!   killed process's claims pass to the next one quickly) and a retention of an hour. The
//!   runtime claims each id in Redis before the handler runs and records it as handled
//!   after; the handler applies the effect in a transaction of its own. A process killed
//!   between a commit and the record in Redis applies that message again after its restart:
//!   duplicates are possible, at most the messages in flight at each kill. `HANDLED_TABLE`
//!   is not used.
//!
//! The effects and counter tables must exist (the counter with one row, `n` and `twice`
//! `bigint`). `CRASH_CONCURRENCY` sets how many messages are handled at once (16 by
//! default).
//!
//! On stdout it prints `ready` once consuming, then, whenever they changed (at most every
//! 50 ms), `stats deliveries=… applied=… skipped=… failed=…`. With the inbox: the calls
//! reaching the inbox, those that ran the handler and committed, those the inbox skipped as
//! already handled, and those that failed. With Redis: the claims asked of the store, those
//! whose handler ran and committed, those the store answered as already handled, and those
//! that failed (the store or the handler), followed by `held=…`: those the store answered
//! as claimed by another holder (a killed process's, until its lease runs out), which go
//! back to the broker for later. It stops gracefully (in-flight messages finished and
//! acknowledged) on SIGTERM or ctrl-c, and also when its stdin is closed if
//! `CRASH_STDIN_SHUTDOWN=1` (so that it never outlives the test that started it). Any
//! error is one line on stderr and a non-zero exit status.

mod shutdown;

use async_trait::async_trait;
use event_binder::postgres::sqlx::postgres::PgPoolOptions;
use event_binder::postgres::{sqlx, InboxTransaction, PgPool, PostgresConfig, PostgresStore};
use event_binder::redis::{RedisConfig, RedisStore};
use event_binder::{
    layer_fn, AnyChannel, App, BoxError, Channel, Claim, ClaimKey, Context, Handler, HandlerSpec,
    IdempotencyStore, Message, MessageId, Service,
};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

/// The arguments, in the order given on the command line.
const USAGE: &str = "usage: crash-consumer CHANNEL_URL DESTINATION GROUP POSTGRES_URL \
                     HANDLED_TABLE EFFECTS_TABLE COUNTER_TABLE";

/// How many messages are handled at once, unless `CRASH_CONCURRENCY` says otherwise.
const DEFAULT_CONCURRENCY: usize = 16;

/// The Redis store's URL, unless `CRASH_REDIS_URL` says otherwise.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The Redis store's lease, unless `CRASH_REDIS_LEASE_MS` says otherwise: short, so that
/// a killed process's claims pass to the next one within seconds.
const DEFAULT_REDIS_LEASE: Duration = Duration::from_secs(3);

/// How long the Redis store remembers a handled id: longer than any test runs, and its keys
/// go by themselves if a test could not delete them.
const REDIS_RETENTION: Duration = Duration::from_secs(60 * 60);

/// How the consumer keeps from applying a message twice (`CRASH_STORE`).
enum Idempotency {
    /// The PostgreSQL transactional inbox, the effect in its transaction.
    Inbox,
    /// The app's idempotency store is the Redis store; the effect is a transaction of its
    /// own.
    Redis {
        url: String,
        prefix: String,
        lease: Duration,
    },
}

/// What the command line and the environment say.
struct Args {
    url: String,
    destination: String,
    group: String,
    postgres: String,
    handled: String,
    effects: String,
    counter: String,
    concurrency: usize,
    stdin_shutdown: bool,
    idempotency: Idempotency,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let given: Vec<String> = std::env::args().skip(1).collect();
        let [url, destination, group, postgres, handled, effects, counter]: [String; 7] = given
            .try_into()
            .map_err(|given: Vec<String>| format!("{} arguments given; {USAGE}", given.len()))?;
        for (what, table) in [("EFFECTS_TABLE", &effects), ("COUNTER_TABLE", &counter)] {
            let plain =
                !table.is_empty() && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(format!(
                    "{what} {table:?}: only ASCII letters, digits and '_' are allowed"
                ));
            }
        }
        let concurrency = match std::env::var("CRASH_CONCURRENCY") {
            Ok(text) => text
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("CRASH_CONCURRENCY={text:?}: not a positive number"))?,
            Err(_) => DEFAULT_CONCURRENCY,
        };
        let stdin_shutdown = std::env::var("CRASH_STDIN_SHUTDOWN").is_ok_and(|v| v == "1");
        Ok(Args {
            url,
            destination,
            group,
            postgres,
            handled,
            effects,
            counter,
            concurrency,
            stdin_shutdown,
            idempotency: Idempotency::parse()?,
        })
    }
}

impl Idempotency {
    /// `CRASH_STORE` and, for `redis`, the `CRASH_REDIS_…` settings.
    fn parse() -> Result<Idempotency, String> {
        let store = std::env::var("CRASH_STORE").unwrap_or_default();
        match store.as_str() {
            "" | "inbox" => Ok(Idempotency::Inbox),
            "redis" => {
                let url = std::env::var("CRASH_REDIS_URL")
                    .unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
                let prefix = std::env::var("CRASH_REDIS_PREFIX")
                    .ok()
                    .filter(|prefix| !prefix.is_empty())
                    .ok_or("CRASH_STORE=redis needs CRASH_REDIS_PREFIX: the prefix of its keys")?;
                let lease = match std::env::var("CRASH_REDIS_LEASE_MS") {
                    Ok(text) => text
                        .parse()
                        .ok()
                        .filter(|&ms| ms > 0)
                        .map(Duration::from_millis)
                        .ok_or_else(|| {
                            format!("CRASH_REDIS_LEASE_MS={text:?}: not a positive number")
                        })?,
                    Err(_) => DEFAULT_REDIS_LEASE,
                };
                Ok(Idempotency::Redis { url, prefix, lease })
            }
            other => Err(format!(
                "CRASH_STORE={other:?}: `inbox` (the default) or `redis`"
            )),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crash-consumer: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = Args::parse()?;
    let channel = AnyChannel::connect(&args.url)
        .await
        .map_err(|err| format!("connecting to the broker: {err}"))?;
    let stats = Arc::new(Stats::new(matches!(
        args.idempotency,
        Idempotency::Redis { .. }
    )));
    let app = App::new(channel.clone()).concurrency(args.concurrency);
    let app = match &args.idempotency {
        Idempotency::Inbox => {
            let config = PostgresConfig::new(&args.postgres)
                .map_err(|err| format!("the PostgreSQL URL: {err}"))?
                .table(args.handled.as_str());
            let store = PostgresStore::with_config(config)
                .await
                .map_err(|err| format!("connecting to PostgreSQL: {err}"))?;
            app.handler(apply_in_inbox(&args, &store, stats.clone()))
        }
        Idempotency::Redis { url, prefix, lease } => {
            let pool = PgPoolOptions::new()
                .max_connections(u32::try_from(args.concurrency).unwrap_or(u32::MAX))
                .connect(&args.postgres)
                .await
                .map_err(|err| format!("connecting to PostgreSQL: {err}"))?;
            let store = RedisStore::with_config(
                RedisConfig::new(url.as_str())
                    .prefix(prefix.as_str())
                    .lease(*lease)
                    .retention(REDIS_RETENTION),
            )
            .await
            .map_err(|err| format!("connecting to Redis: {err}"))?;
            app.idempotency(CountingStore {
                inner: store,
                stats: stats.clone(),
            })
            .handler(apply_alone(&args, pool, stats.clone()))
        }
    };
    let running = app
        .start()
        .await
        .map_err(|err| format!("starting the app: {err}"))?;
    println!("ready");
    let reporter = tokio::spawn(report(stats.clone()));

    shutdown::stopped(args.stdin_shutdown).await?;
    let shutdown = running.shutdown().await;
    reporter.abort();
    stats.print();
    shutdown.map_err(|err| format!("shutting down: {err}"))?;
    channel
        .close()
        .await
        .map_err(|err| format!("closing the channel: {err}"))
}

/// The SQL of the effect: the insert of the id, and the count (bound to 1 when the insert
/// found the id there already, 0 otherwise).
fn effect_sql(args: &Args) -> (Arc<str>, Arc<str>) {
    let insert = format!(
        "INSERT INTO \"{}\" (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        args.effects
    );
    let count = format!(
        "UPDATE \"{}\" SET n = n + 1, twice = twice + $1",
        args.counter
    );
    (insert.into(), count.into())
}

/// Applies the effect of message `id` on `db`: its row, and one count (and one twice when
/// the row was there already).
async fn apply_effect(
    db: &mut sqlx::PgConnection,
    insert: &str,
    count: &str,
    id: &str,
) -> Result<(), BoxError> {
    let inserted = sqlx::query(insert)
        .bind(id)
        .execute(&mut *db)
        .await?
        .rows_affected();
    sqlx::query(count)
        .bind(i64::from(inserted == 0))
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// Tells [`Counting`] that the handler ran.
fn mark_called(ctx: &Context) {
    if let Some(called) = ctx.extension::<Called>() {
        called.0.store(true, Ordering::Relaxed);
    }
}

/// The handler with the inbox: one effect row and one count per message, in the inbox's
/// transaction.
fn apply_in_inbox(
    args: &Args,
    store: &PostgresStore,
    stats: Arc<Stats>,
) -> Handler<impl event_binder::HandlerService> {
    let (insert, count) = effect_sql(args);
    Handler::from_fn(
        HandlerSpec::new("apply", args.destination.as_str()).group(args.group.as_str()),
        move |_event: serde_json::Value, id: MessageId, tx: InboxTransaction, ctx: Context| {
            let insert = insert.clone();
            let count = count.clone();
            async move {
                mark_called(&ctx);
                let mut db = tx.connection().await?;
                apply_effect(&mut db, &insert, &count, &id).await
            }
        },
    )
    .layer(store.inbox())
    .layer(layer_fn(move |inner| Counting {
        inner,
        stats: stats.clone(),
        counts_deliveries: true,
    }))
}

/// The handler without the inbox (the app's idempotency store keeps it from running twice,
/// as far as it can): one effect row and one count per message, in a transaction of its
/// own.
fn apply_alone(
    args: &Args,
    pool: PgPool,
    stats: Arc<Stats>,
) -> Handler<impl event_binder::HandlerService> {
    let (insert, count) = effect_sql(args);
    Handler::from_fn(
        HandlerSpec::new("apply", args.destination.as_str()).group(args.group.as_str()),
        move |_event: serde_json::Value, id: MessageId, ctx: Context| {
            let insert = insert.clone();
            let count = count.clone();
            let pool = pool.clone();
            async move {
                mark_called(&ctx);
                let mut tx = pool.begin().await?;
                apply_effect(&mut tx, &insert, &count, &id).await?;
                tx.commit().await?;
                Ok::<_, BoxError>(())
            }
        },
    )
    .layer(layer_fn(move |inner| Counting {
        inner,
        stats: stats.clone(),
        // The store counts the deliveries: it sees every one, the handler only those it
        // claimed.
        counts_deliveries: false,
    }))
}

/// Prints the stats whenever they changed, every 50 ms at most.
async fn report(stats: Arc<Stats>) {
    let mut shown = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stats.snapshot();
        if shown != Some(now) {
            stats.print();
            shown = Some(now);
        }
    }
}

/// What happened to the deliveries: see the crate docs for what each count is with the
/// inbox and with Redis.
#[derive(Debug, Default)]
struct Stats {
    deliveries: AtomicU64,
    applied: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    held: AtomicU64,
    /// Whether `held` is printed (with Redis).
    shows_held: bool,
}

impl Stats {
    fn new(shows_held: bool) -> Stats {
        Stats {
            shows_held,
            ..Stats::default()
        }
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            self.deliveries.load(Ordering::Relaxed),
            self.applied.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.held.load(Ordering::Relaxed),
        ]
    }

    fn print(&self) {
        let [deliveries, applied, skipped, failed, held] = self.snapshot();
        if self.shows_held {
            println!(
                "stats deliveries={deliveries} applied={applied} skipped={skipped} \
                 failed={failed} held={held}"
            );
        } else {
            println!(
                "stats deliveries={deliveries} applied={applied} skipped={skipped} \
                 failed={failed}"
            );
        }
    }
}

/// Set by the handler when it runs: a call that succeeded without it was skipped by the
/// inbox.
#[derive(Debug, Clone)]
struct Called(Arc<AtomicBool>);

/// The layer around the inbox (or the handler alone) that counts its calls into [`Stats`].
#[derive(Debug, Clone)]
struct Counting<S> {
    inner: S,
    stats: Arc<Stats>,
    /// Whether each call counts as a delivery (with the inbox; with Redis, the store counts
    /// them).
    counts_deliveries: bool,
}

impl<S> Service<Context> for Counting<S>
where
    S: Service<Context, Response = Vec<Message>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Vec<Message>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<Message>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        // The clone that was made ready is the one called (tower's rule).
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let stats = self.stats.clone();
        let counts_deliveries = self.counts_deliveries;
        let called = Arc::new(AtomicBool::new(false));
        let ctx = ctx.with_extension(Called(called.clone()));
        Box::pin(async move {
            if counts_deliveries {
                stats.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            let result = ready.call(ctx).await;
            let outcome = match (&result, called.load(Ordering::Relaxed)) {
                (Ok(_), true) => &stats.applied,
                (Ok(_), false) => &stats.skipped,
                (Err(_), _) => &stats.failed,
            };
            outcome.fetch_add(1, Ordering::Relaxed);
            result
        })
    }
}

/// The app's idempotency store with Redis: the Redis store, its answers to claims counted
/// into [`Stats`].
#[derive(Debug)]
struct CountingStore {
    inner: RedisStore,
    stats: Arc<Stats>,
}

#[async_trait]
impl IdempotencyStore for CountingStore {
    async fn begin(&self, key: ClaimKey<'_>) -> event_binder::Result<Claim> {
        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
        let claim = self.inner.begin(key).await;
        match &claim {
            Ok(Claim::AlreadyHandled) => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Claim::HeldElsewhere { .. }) => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            // Counted once the handler has run.
            Ok(_) => {}
        }
        claim
    }

    async fn complete(&self, key: ClaimKey<'_>) -> event_binder::Result<()> {
        let completed = self.inner.complete(key).await;
        if let Err(err) = &completed {
            // The runtime acknowledges the message all the same: say so where a failing test
            // shows it.
            eprintln!("crash-consumer: recording {} as handled: {err}", key.id);
        }
        completed
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> event_binder::Result<()> {
        self.inner.abandon(key).await
    }
}
