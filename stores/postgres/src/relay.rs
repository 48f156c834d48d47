//! The relay: publishes the outbox's committed rows to the broker, then deletes them.

use crate::outbox::{read_row, Outbox};
use event_binder_core::{Message, Publisher, Result};
use sqlx::postgres::PgListener;
use std::fmt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Publishes what an [`Outbox`] holds, once the transactions that wrote it have committed,
/// and deletes it from the table once the broker has it.
///
/// Any number of relays may run on one outbox at once (one per instance of a service):
/// each locks the rows it publishes (`FOR UPDATE SKIP LOCKED`), so none is published by two
/// at a time. The events of one destination and key are published in the order they were
/// written: a relay takes only the first unpublished row of each key, so the next waits
/// until it is published, by whichever relay. Keyless events are published in the order
/// written by each relay, in no particular order between relays.
///
/// Delivery to the broker is at least once: a relay that crashes (or fails to delete)
/// after publishing publishes those rows again, with the same ids; consumers recognise
/// them by their id. A relay waits for work on `LISTEN` of the outbox's channel, and looks
/// every [`poll_interval`](Self::poll_interval) as well (a notification missed while its
/// connection was down); a broker or database that fails makes it try again after a
/// backoff, up to [`poll_interval`](Self::poll_interval), saying why in the log.
///
/// ```no_run
/// # async fn demo(outbox: event_binder_postgres::Outbox, channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::Publisher;
///
/// let relay = outbox.relay(Publisher::new(channel)).start();
/// // … transactions write events through the outbox; the relay publishes them …
/// relay.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    outbox: Outbox,
    publisher: Publisher,
    batch_size: usize,
    poll_interval: Duration,
}

impl Outbox {
    /// A relay publishing this outbox's events with `publisher`; start it with
    /// [`Relay::start`].
    pub fn relay(&self, publisher: Publisher) -> Relay {
        Relay {
            outbox: self.clone(),
            publisher,
            batch_size: Relay::DEFAULT_BATCH_SIZE,
            poll_interval: Relay::DEFAULT_POLL_INTERVAL,
        }
    }
}

impl Relay {
    /// How many rows one round publishes at most, by default.
    pub const DEFAULT_BATCH_SIZE: usize = 100;
    /// How often a relay looks for rows without being notified, by default.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

    /// How many rows one round locks and publishes at most (at least 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// How often the relay looks for rows without being notified, and the longest it
    /// waits after a failure.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Publishes every row there is now, round after round, returning how many. What the
    /// started relay does whenever it wakes; on its own, for a test or a one-off job.
    ///
    /// A round takes one row of each key (the next waits for its predecessor), so a key
    /// with many rows waiting takes as many rounds: a round that found any row is followed
    /// by another.
    pub async fn publish_pending(&self) -> Result<u64> {
        let mut published = 0;
        loop {
            match self.publish_round().await? {
                0 => return Ok(published),
                round => published += round as u64,
            }
        }
    }

    /// Publishes one round: locks the next rows, sends them in order (consecutive rows of
    /// one destination as one batch), deletes what the broker took, commits. A destination
    /// the broker refuses keeps its rows for a later round, and the round's error says why;
    /// the other destinations are published meanwhile.
    async fn publish_round(&self) -> Result<usize> {
        let db = self.outbox.db();
        let table = self.outbox.outbox_table();
        let mut tx = db.run("relay begin", db.pool.begin()).await?;
        let rows = db
            .run("relay read", async {
                sqlx::query(&table.next)
                    .bind(i64::try_from(self.batch_size).unwrap_or(i64::MAX))
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(read_row)
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await?;
        let mut sent = Vec::with_capacity(rows.len());
        let mut failure = None;
        // A destination that failed takes no more rows this round (they would overtake the
        // failed ones); the others go on.
        let mut failed: Vec<String> = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while let Some((seq, destination, message)) = rows.next() {
            let mut seqs = vec![seq];
            let mut messages = vec![message];
            while let Some((seq, _, message)) =
                rows.next_if(|(_, next_destination, _)| *next_destination == destination)
            {
                seqs.push(seq);
                messages.push(message);
            }
            if failed.contains(&destination) {
                continue;
            }
            match self.send(&destination, messages).await {
                Ok(()) => sent.extend(seqs),
                Err(err) => {
                    failure.get_or_insert(err);
                    failed.push(destination);
                }
            }
        }
        if !sent.is_empty() {
            db.run("relay delete", async {
                sqlx::query(&table.delete)
                    .bind(&sent)
                    .execute(&mut *tx)
                    .await
            })
            .await?;
        }
        db.run("relay commit", tx.commit()).await?;
        match failure {
            Some(err) => Err(err),
            None => Ok(sent.len()),
        }
    }

    async fn send(&self, destination: &str, mut messages: Vec<Message>) -> Result<()> {
        if messages.len() == 1 {
            if let Some(message) = messages.pop() {
                return self.publisher.send(destination, message).await;
            }
        }
        self.publisher.send_batch(destination, messages).await
    }

    /// Starts the relay on a task of its own, until [`RunningRelay::shutdown`].
    pub fn start(self) -> RunningRelay {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(stopped));
        RunningRelay { stop, task }
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut listener = None;
        let mut failures = 0u32;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            let wait = match self.publish_pending().await {
                Ok(_) => {
                    failures = 0;
                    None
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let wait = self.backoff(failures);
                    tracing::warn!(
                        outbox = self.outbox.table(),
                        error = %err,
                        failures_in_a_row = failures,
                        retry_in = ?wait,
                        "the outbox relay failed to publish; the events stay in the outbox"
                    );
                    Some(wait)
                }
            };
            tokio::select! {
                biased;
                _ = stopped.changed() => return,
                () = tokio::time::sleep(wait.unwrap_or(self.poll_interval)) => {}
                woken = notified(&mut listener), if wait.is_none() => {
                    if !woken {
                        listener = None;
                    }
                }
            }
        }
    }

    /// Listens on the outbox's channel; `None` (said in the log) when the database cannot
    /// be reached, so that the relay polls meanwhile.
    async fn listen(&self) -> Option<PgListener> {
        let listening = async {
            let mut listener = PgListener::connect_with(&self.outbox.db().pool).await?;
            listener.listen(self.outbox.table()).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let db = self.outbox.db();
        match db.run("relay listen", listening).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::debug!(outbox = self.outbox.table(), error = %err, "the outbox relay polls until it can listen");
                None
            }
        }
    }

    /// The wait after `failures` failed rounds in a row: 50 ms doubling, at most the poll
    /// interval.
    fn backoff(&self, failures: u32) -> Duration {
        Duration::from_millis(50)
            .saturating_mul(1 << failures.min(16).saturating_sub(1))
            .min(self.poll_interval)
    }
}

/// Waits for a notification: `true` when one came, `false` when the connection failed.
async fn notified(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// A started [`Relay`]; stop it with [`shutdown`](Self::shutdown). Dropping it stops the
/// relay too, after the round it is in, without waiting for it.
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningRelay {
    /// Stops the relay after the round it is in, and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "the outbox relay task failed");
        }
    }
}
