//! `crash-relay`: the outbox relay process that the relay crash test kills.
//!
//! It publishes what a PostgreSQL outbox table holds to a broker, as a service's relay
//! does, until it is stopped or killed.
//!
//! ```text
//! crash-relay CHANNEL_URL POSTGRES_URL OUTBOX_TABLE
//! ```
//!
//! The outbox table is created if it is missing. `CRASH_RELAY_BATCH` sets how many rows one
//! round publishes at most (the relay's default otherwise). It prints `ready` on stdout once
//! the relay runs, and stops gracefully on SIGTERM or ctrl-c, and also when its stdin is
//! closed if `CRASH_STDIN_SHUTDOWN=1`. Any error is one line on stderr and a non-zero exit
//! status.

#[path = "../shutdown.rs"]
mod shutdown;

use event_binder::postgres::sqlx::postgres::PgPoolOptions;
use event_binder::postgres::Outbox;
use event_binder::{AnyChannel, Channel, Publisher};
use std::process::ExitCode;

/// The arguments, in the order given on the command line.
const USAGE: &str = "usage: crash-relay CHANNEL_URL POSTGRES_URL OUTBOX_TABLE";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crash-relay: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let given: Vec<String> = std::env::args().skip(1).collect();
    let [url, postgres, table]: [String; 3] = given
        .try_into()
        .map_err(|given: Vec<String>| format!("{} arguments given; {USAGE}", given.len()))?;
    let batch = match std::env::var("CRASH_RELAY_BATCH") {
        Ok(text) => Some(
            text.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("CRASH_RELAY_BATCH={text:?}: not a positive number"))?,
        ),
        Err(_) => None,
    };
    let stdin_shutdown = std::env::var("CRASH_STDIN_SHUTDOWN").is_ok_and(|v| v == "1");

    let channel = AnyChannel::connect(&url)
        .await
        .map_err(|err| format!("connecting to the broker: {err}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&postgres)
        .await
        .map_err(|err| format!("connecting to PostgreSQL: {err}"))?;
    let outbox = Outbox::with_table(pool, &table)
        .await
        .map_err(|err| format!("opening the outbox {table:?}: {err}"))?;
    let mut relay = outbox.relay(Publisher::new(channel.clone()));
    if let Some(batch) = batch {
        relay = relay.batch_size(batch);
    }
    let running = relay.start();
    println!("ready");

    shutdown::stopped(stdin_shutdown).await?;
    running.shutdown().await;
    channel
        .close()
        .await
        .map_err(|err| format!("closing the channel: {err}"))
}
