//! `crash-consumer`: the consumer process that the crash tests kill.
//!
//! It consumes one destination's group on any broker and applies one effect per message
//! through the PostgreSQL transactional inbox: in the handler's transaction it inserts the
//! message id into an effects table (`id text PRIMARY KEY`) and adds one to a counter
//! table's `n` (and to its `twice` when the id was there already, which the inbox should
//! make impossible). The inbox records the id as handled in that same transaction and
//! commits before the message is acknowledged.
//!
//! ```text
//! crash-consumer CHANNEL_URL DESTINATION GROUP POSTGRES_URL HANDLED_TABLE EFFECTS_TABLE COUNTER_TABLE
//! ```
//!
//! The effects and counter tables must exist (the counter with one row, `n` and `twice`
//! `bigint`); the inbox creates its own table, `HANDLED_TABLE`, if it is missing.
//! `CRASH_CONCURRENCY` sets how many messages are handled at once (16 by default).
//!
//! On stdout it prints `ready` once consuming, then, whenever they changed (at most every
//! 50 ms), `stats deliveries=… applied=… skipped=… failed=…`: the calls reaching the inbox,
//! those that ran the handler and committed, those the inbox skipped as already handled,
//! and those that failed. It stops gracefully (in-flight messages finished and
//! acknowledged) on SIGTERM or ctrl-c, and also when its stdin is closed if
//! `CRASH_STDIN_SHUTDOWN=1` (so that it never outlives the test that started it). Any
//! error is one line on stderr and a non-zero exit status.

mod shutdown;

use event_binder::postgres::{sqlx, InboxTransaction, PostgresConfig, PostgresStore};
use event_binder::{
    layer_fn, AnyChannel, App, BoxError, Channel, Context, Handler, HandlerSpec, Message,
    MessageId, Service,
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

/// What the command line says.
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
        })
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
    let config = PostgresConfig::new(&args.postgres)
        .map_err(|err| format!("the PostgreSQL URL: {err}"))?
        .table(args.handled.as_str());
    let store = PostgresStore::with_config(config)
        .await
        .map_err(|err| format!("connecting to PostgreSQL: {err}"))?;

    let stats = Arc::new(Stats::default());
    let handler = apply(&args, &store, stats.clone());
    let running = App::new(channel.clone())
        .concurrency(args.concurrency)
        .handler(handler)
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

/// The handler: one effect row and one count per message, in the inbox's transaction.
fn apply(
    args: &Args,
    store: &PostgresStore,
    stats: Arc<Stats>,
) -> Handler<impl event_binder::HandlerService> {
    let insert: Arc<str> = format!(
        "INSERT INTO \"{}\" (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        args.effects
    )
    .into();
    let count: Arc<str> = format!(
        "UPDATE \"{}\" SET n = n + 1, twice = twice + $1",
        args.counter
    )
    .into();
    Handler::from_fn(
        HandlerSpec::new("apply", args.destination.as_str()).group(args.group.as_str()),
        move |_event: serde_json::Value, id: MessageId, tx: InboxTransaction, ctx: Context| {
            let insert = insert.clone();
            let count = count.clone();
            async move {
                if let Some(called) = ctx.extension::<Called>() {
                    called.0.store(true, Ordering::Relaxed);
                }
                let mut db = tx.connection().await?;
                let inserted = sqlx::query(&insert)
                    .bind(&*id)
                    .execute(&mut *db)
                    .await?
                    .rows_affected();
                sqlx::query(&count)
                    .bind(i64::from(inserted == 0))
                    .execute(&mut *db)
                    .await?;
                Ok::<_, BoxError>(())
            }
        },
    )
    .layer(store.inbox())
    .layer(layer_fn(move |inner| Counting {
        inner,
        stats: stats.clone(),
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

/// What happened to the calls reaching the inbox.
#[derive(Debug, Default)]
struct Stats {
    deliveries: AtomicU64,
    applied: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> [u64; 4] {
        [
            self.deliveries.load(Ordering::Relaxed),
            self.applied.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ]
    }

    fn print(&self) {
        let [deliveries, applied, skipped, failed] = self.snapshot();
        println!(
            "stats deliveries={deliveries} applied={applied} skipped={skipped} failed={failed}"
        );
    }
}

/// Set by the handler when it runs: a call that succeeded without it was skipped by the
/// inbox.
#[derive(Debug, Clone)]
struct Called(Arc<AtomicBool>);

/// The layer around the inbox that counts its calls into [`Stats`].
#[derive(Debug, Clone)]
struct Counting<S> {
    inner: S,
    stats: Arc<Stats>,
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
        let called = Arc::new(AtomicBool::new(false));
        let ctx = ctx.with_extension(Called(called.clone()));
        Box::pin(async move {
            stats.deliveries.fetch_add(1, Ordering::Relaxed);
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
