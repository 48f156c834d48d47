//! The outbox relay crash test (issue #12): events are written through a PostgreSQL
//! outbox in transactions, some of which roll back, while a relay process, `crash-relay`,
//! publishes them to RabbitMQ and is killed with SIGKILL at random points, several times,
//! and restarted. Every committed event arrives (duplicates allowed: the relay publishes at
//! least once, and they are counted); no event of a rolled-back transaction ever does.
//!
//! RabbitMQ on 127.0.0.1:5672 and PostgreSQL at `EVENT_BINDER_POSTGRES_URL`; a name prefix
//! and a table of its own, so runs on shared services never meet. Run with
//! `-- --nocapture` to see the figures it prints.

mod support;

use event_binder::postgres::sqlx::postgres::PgPoolOptions;
use event_binder::postgres::Outbox;
use event_binder::{AnyChannel, Channel, Consumer, Message, Publisher, Subscription};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{unique, Process, Tables};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The relay process.
const RELAY: &str = env!("CARGO_BIN_EXE_crash-relay");
/// How many transactions write events, and how many events each writes.
const TRANSACTIONS: usize = 500;
const PER_TRANSACTION: usize = 10;
/// How many of the transactions roll back (chosen at random).
const ROLLED_BACK: usize = 100;
/// How many events are committed.
const COMMITTED: usize = (TRANSACTIONS - ROLLED_BACK) * PER_TRANSACTION;
/// How many times the relay is killed.
const KILLS: usize = 4;
/// How far the writing may run ahead of the events received.
const WINDOW: usize = 300;
const DESTINATION: &str = "relayed";
const GROUP: &str = "check";

#[tokio::test(flavor = "multi_thread")]
async fn relay_killed_mid_way() {
    let prefix = format!("crash-relay-{}-", unique());
    let url =
        format!("amqp://guest:guest@127.0.0.1:5672/%2f?prefix={prefix}&queue_expires_ms=120000");
    let mut tables = Tables::default();
    let table = tables.add(format!("crash_{}_outbox", unique()));
    let postgres = support::postgres_url();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&postgres)
        .await
        .unwrap_or_else(|err| panic!("connecting to the test database: {err}"));
    let outbox = Outbox::with_table(pool.clone(), &table)
        .await
        .unwrap_or_else(|err| panic!("creating the outbox: {err}"));

    let channel = AnyChannel::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    channel
        .provision(DESTINATION, Some(GROUP))
        .await
        .unwrap_or_else(|err| panic!("provisioning: {err}"));
    let received = Received::default();
    let consuming = tokio::spawn(consume(channel.clone(), received.clone()));

    // Which transactions roll back: ROLLED_BACK of them, at random.
    let mut rolled_back = HashSet::new();
    while rolled_back.len() < ROLLED_BACK {
        rolled_back.insert(support::random_below(TRANSACTIONS as u64) as usize);
    }
    let written = Written::default();
    let mut writing = Some(tokio::spawn(write(
        pool.clone(),
        outbox.clone(),
        rolled_back,
        written.clone(),
        received.clone(),
    )));

    let started = Instant::now();
    let mut killed_at = Vec::new();
    let low = COMMITTED * 5 / 100;
    let slice = (COMMITTED * 85 / 100 - low) / KILLS;
    for kill in 0..KILLS {
        let point = low + kill * slice + support::random_below(slice as u64) as usize;
        let name = format!("relay #{}", kill + 1);
        let mut relay = Process::spawn(&name, RELAY, &[&url, &postgres, &table]);
        relay.ready(Duration::from_secs(60)).await;
        until(Duration::from_secs(120), &mut relay, &mut writing, || {
            (received.distinct() >= point).then_some(()).ok_or_else(|| {
                format!(
                    "{point} distinct events not received: {}",
                    received.distinct()
                )
            })
        })
        .await;
        relay.kill().await;
        killed_at.push(received.distinct());
    }

    let mut relay = Process::spawn(
        &format!("relay #{} (the last)", KILLS + 1),
        RELAY,
        &[&url, &postgres, &table],
    );
    relay.ready(Duration::from_secs(60)).await;
    until(Duration::from_secs(180), &mut relay, &mut writing, || {
        (received.distinct() >= COMMITTED)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "not every committed event received: {} of {COMMITTED}",
                    received.distinct()
                )
            })
    })
    .await;
    finish(&mut writing).await;
    // The relay empties the outbox; stopped after that, it published all it will.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = outbox.pending().await.expect("counting the outbox");
        if pending == 0 {
            break;
        }
        relay.check_running().await;
        assert!(
            Instant::now() < deadline,
            "the outbox still holds {pending} events a minute after the last one arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop(Duration::from_secs(30)).await;
    let elapsed = started.elapsed();

    // A marker published after all that: once it arrives, so has everything before it (one
    // queue, one consumer).
    let marker = event_binder::new_message_id();
    Publisher::new(channel.clone())
        .send(
            DESTINATION,
            Message::new_with_id(marker.as_str(), "{\"marker\":true}"),
        )
        .await
        .expect("publishing the marker");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !received.contains(&marker) {
        assert!(
            !consuming.is_finished(),
            "the test's consumer stopped; see its error above"
        );
        assert!(
            Instant::now() < deadline,
            "the marker did not arrive within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consuming.abort();

    let counts = received.counts();
    let (committed, rolled_back) = written.ids();
    let missing = committed
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count();
    let from_rolled_back = rolled_back
        .iter()
        .filter(|id| counts.contains_key(*id))
        .count();
    let known: HashSet<&String> = committed.iter().chain(rolled_back.iter()).collect();
    let unknown = counts
        .keys()
        .filter(|id| **id != marker && !known.contains(id))
        .count();
    let deliveries: usize = counts
        .iter()
        .filter(|(id, _)| **id != marker)
        .map(|(_, n)| n)
        .sum();
    let distinct = counts.len() - 1;
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    println!(
        "crash relay rabbitmq: {} events written in {TRANSACTIONS} transactions, {} \
         committed, {} rolled back; {} SIGKILLs of the relay (at {killed_at:?} distinct \
         events received), {elapsed:.1?}: received {deliveries} deliveries of {distinct} \
         distinct events, {} duplicates ({duplicated} events more than once), lost \
         {missing}, from rolled-back transactions {from_rolled_back}",
        committed.len() + rolled_back.len(),
        committed.len(),
        rolled_back.len(),
        killed_at.len(),
        deliveries - distinct,
    );
    assert_eq!(committed.len(), COMMITTED);
    assert_eq!(missing, 0, "committed events that never arrived");
    assert_eq!(
        from_rolled_back, 0,
        "events of rolled-back transactions arrived"
    );
    assert_eq!(unknown, 0, "events that were never written arrived");
    channel.close().await.expect("closing the channel");
    pool.close().await;
    drop(tables);
}

/// The ids of the events written, committed or rolled back.
#[derive(Debug, Default, Clone)]
struct Written(Arc<Mutex<(Vec<String>, Vec<String>)>>);

impl Written {
    fn add(&self, committed: bool, ids: Vec<String>) {
        let mut lists = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if committed {
            lists.0.extend(ids);
        } else {
            lists.1.extend(ids);
        }
    }

    fn ids(&self) -> (Vec<String>, Vec<String>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The ids received, with how many times each came.
#[derive(Debug, Default, Clone)]
struct Received(Arc<Mutex<HashMap<String, usize>>>);

impl Received {
    fn add(&self, id: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(id.to_owned()).or_default() += 1;
    }

    fn distinct(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    fn counts(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Receives the group's deliveries, every one (no deduplication), acknowledging each.
async fn consume(channel: AnyChannel, received: Received) {
    let subscription = Subscription::new(DESTINATION).group(GROUP).prefetch(100);
    let mut consumer = channel
        .consumer(&subscription)
        .await
        .unwrap_or_else(|err| panic!("opening the test's consumer: {err}"));
    loop {
        let delivery = consumer
            .receive()
            .await
            .unwrap_or_else(|err| panic!("the test's consumer: {err}"));
        received.add(delivery.message().id());
        delivery
            .ack()
            .await
            .unwrap_or_else(|err| panic!("acknowledging: {err}"));
    }
}

/// Writes `TRANSACTIONS` transactions of `PER_TRANSACTION` events each through `outbox`,
/// rolling back those in `rolled_back`, never more than `WINDOW` committed events ahead of
/// those received.
async fn write(
    pool: event_binder::postgres::PgPool,
    outbox: Outbox,
    rolled_back: HashSet<usize>,
    written: Written,
    received: Received,
) -> Result<(), String> {
    let mut committed = 0;
    for transaction in 0..TRANSACTIONS {
        while committed > received.distinct() + WINDOW {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failed = |err: &dyn std::fmt::Display| format!("transaction {transaction}: {err}");
        let mut tx = pool.begin().await.map_err(|err| failed(&err))?;
        let mut ids = Vec::with_capacity(PER_TRANSACTION);
        for n in 0..PER_TRANSACTION {
            let event = serde_json::json!({ "transaction": transaction, "n": n });
            let id = outbox
                .publish(&mut tx, DESTINATION, &event)
                .await
                .map_err(|err| failed(&err))?;
            ids.push(id);
        }
        if rolled_back.contains(&transaction) {
            tx.rollback().await.map_err(|err| failed(&err))?;
            written.add(false, ids);
        } else {
            tx.commit().await.map_err(|err| failed(&err))?;
            written.add(true, ids);
            committed += PER_TRANSACTION;
        }
    }
    Ok(())
}

/// Waits until `condition` holds, checking every 10 ms; fails the test after `within`
/// (saying what `condition` said), or when `relay` exited or the writing failed.
async fn until(
    within: Duration,
    relay: &mut Process,
    writing: &mut Option<JoinHandle<Result<(), String>>>,
    mut condition: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + within;
    loop {
        let not_yet = match condition() {
            Ok(()) => return,
            Err(not_yet) => not_yet,
        };
        relay.check_running().await;
        if writing.as_ref().is_some_and(JoinHandle::is_finished) {
            finish(writing).await;
        }
        assert!(
            Instant::now() < deadline,
            "{} within {within:?}; stderr: {}",
            not_yet,
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the writing to end (a minute at most), failing the test if it failed.
async fn finish(writing: &mut Option<JoinHandle<Result<(), String>>>) {
    let Some(task) = writing.take() else {
        return;
    };
    match tokio::time::timeout(Duration::from_secs(60), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => panic!("writing the events: {err}"),
        Ok(Err(err)) => panic!("the writing task failed: {err}"),
        Err(_) => panic!("writing did not end within a minute of the last event received"),
    }
}
