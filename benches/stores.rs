//! Handled msgs/s with each idempotency store, against the in-memory one (issue #12's
//! benchmark): an `App` on the in-memory backend, one handler decoding issue #11's
//! `{"id":…,"quantity":37}` into `Order` at the default concurrency, its messages published
//! before it starts; the clock runs from the start until the last one is handled. The
//! stores alternate over 3 rounds. Needs PostgreSQL (scripts/postgres.sh) and Redis
//! (scripts/redis.sh) on 127.0.0.1, as the tests do:
//!
//! ```text
//! cargo bench --bench stores --features postgres,redis
//! ```
//!
//! `postgres-inbox` runs the same handler through the PostgreSQL transactional inbox (one
//! transaction a message: record the id, commit) with the default in-memory store.

use event_binder::memory::MemoryChannel;
use event_binder::postgres::{Inbox, PostgresConfig, PostgresStore};
use event_binder::redis::{RedisConfig, RedisStore};
use event_binder::{App, Channel, Handler, HandlerSpec, IdempotencyStore, Message, Producer};
use serde::Deserialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Messages a run.
const COUNT: usize = 5_000;
/// Rounds, each running every store once.
const ROUNDS: usize = 3;
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "redis://127.0.0.1:6379/0";

#[derive(Deserialize)]
struct Order {
    id: u64,
    quantity: u32,
}

/// A name no other run uses.
fn unique() -> String {
    let id = event_binder::new_message_id().replace('-', "");
    format!("bench_{}", &id[id.len() - 12..])
}

/// Handles `COUNT` messages with `store`, the handler wrapped in `inbox` if given; the time
/// it took.
async fn run(store: impl IdempotencyStore + 'static, inbox: Option<Inbox>) -> Duration {
    let channel = MemoryChannel::new();
    let producer = channel.producer("orders").await.expect("producer");
    channel
        .provision("orders", Some("bench"))
        .await
        .expect("provision");
    for n in 0..COUNT {
        let body = format!(r#"{{"id":{n},"quantity":37}}"#);
        producer
            .send(Message::new(body).with_content_type("application/json"))
            .await
            .expect("send");
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (handled, done) = (handled.clone(), done.clone());
        Handler::from_fn(
            HandlerSpec::new("bench", "orders").group("bench"),
            move |order: Order| {
                std::hint::black_box((order.id, order.quantity));
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == COUNT {
                    done.notify_one();
                }
                async { Ok::<(), std::convert::Infallible>(()) }
            },
        )
    };
    let start = Instant::now();
    let app = App::new(channel).idempotency(store);
    let running = match inbox {
        Some(inbox) => app.handler(handler.layer(inbox)).start().await,
        None => app.handler(handler).start().await,
    }
    .expect("start");
    done.notified().await;
    let elapsed = start.elapsed();
    running.shutdown().await.expect("shutdown");
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let table = unique();
    let postgres = PostgresStore::with_config(
        PostgresConfig::new(POSTGRES)
            .expect("the PostgreSQL URL")
            .table(table.clone()),
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (run scripts/postgres.sh)");
    let redis = Arc::new(
        RedisStore::with_config(RedisConfig::new(REDIS).prefix(format!("{table}:")))
            .await
            .expect("Redis on 127.0.0.1:6379 (run scripts/redis.sh)"),
    );
    println!("{COUNT} messages a run, {ROUNDS} rounds, default concurrency, memory:// backend");
    let names = ["memory", "postgres", "redis", "postgres-inbox"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 1..=ROUNDS {
        for (index, name) in names.iter().enumerate() {
            let took = match index {
                0 => run(event_binder::MemoryIdempotencyStore::new(), None).await,
                1 => run(postgres.clone(), None).await,
                2 => run(redis.clone(), None).await,
                _ => {
                    let inbox = Some(postgres.inbox());
                    run(event_binder::MemoryIdempotencyStore::new(), inbox).await
                }
            };
            let rate = COUNT as f64 / took.as_secs_f64();
            println!("round {round}: {name:<9} {rate:>10.0} msgs/s");
            rates[index].push(rate);
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect();
    println!("\nstore       median msgs/s   best     worst   vs memory");
    for (index, name) in names.iter().enumerate() {
        let (best, worst) = (rates[index][ROUNDS - 1], rates[index][0]);
        let ratio = medians[index] / medians[0];
        println!(
            "{name:<10} {:>12.0} {best:>8.0} {worst:>8.0}   {ratio:.3}",
            medians[index]
        );
    }
    sqlx_drop(&postgres, &table).await;
}

/// Drops the run's table.
async fn sqlx_drop(store: &PostgresStore, table: &str) {
    let drop = format!(r#"DROP TABLE IF EXISTS "{table}""#);
    if let Err(err) = event_binder::postgres::sqlx::query(&drop)
        .execute(store.pool())
        .await
    {
        eprintln!("could not drop table {table}: {err}");
    }
}
