//! The transactional outbox: events written in the caller's transaction, published by a
//! relay once it commits.

use crate::db::Db;
use crate::error::Context;
use crate::table::OutboxTable;
use event_binder_core::{
    header, millis_since_epoch, time_from_millis, validate_destination, write_trace_context,
    Encode, Headers, Message, Result,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Events written into a table inside the caller's own transaction, and published to the
/// broker by a [`Relay`](crate::Relay) once that transaction commits: the write and its
/// event happen together or not at all.
///
/// [`publish`](Self::publish) gives the event its message id when it is written; the relay
/// publishes it with that id, at least once (again if a relay crashed after publishing and
/// before marking it sent), so consumers recognise a repeat by its id, as an
/// [`App`](event_binder_core::App) does. A rolled-back transaction publishes nothing.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use event_binder_postgres::Outbox;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { order_id: i64 }
///
/// let outbox = Outbox::new(pool.clone()).await?; // creates the table if missing
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(42_i64).execute(&mut *tx).await?;
/// outbox.publish(&mut tx, "order-placed", &OrderPlaced { order_id: 42 }).await?;
/// tx.commit().await?; // now, and only now, the relay sees the event
/// # Ok(()) }
/// ```
///
/// # The table
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "event_binder_outbox" (
///     seq           bigserial PRIMARY KEY,  -- the order events are published in
///     destination   text   NOT NULL,
///     id            text   NOT NULL,        -- the message id, assigned when written
///     msg_key       text,                   -- the ordering key
///     header_names  text[] NOT NULL,
///     header_values text[] NOT NULL,
///     content_type  text,
///     payload       bytea  NOT NULL,
///     timestamp_ms  bigint NOT NULL,
///     written_at    timestamptz NOT NULL DEFAULT now()
/// );
/// CREATE INDEX IF NOT EXISTS "event_binder_outbox_order"
///     ON "event_binder_outbox" (destination, msg_key, seq);
/// ```
///
/// A row is deleted once published. Writing one notifies the channel named as the table
/// (`pg_notify`), which PostgreSQL delivers on commit only.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    table: OutboxTable,
}

impl Outbox {
    /// The outbox table when none is named.
    pub const DEFAULT_TABLE: &'static str = "event_binder_outbox";

    /// The outbox in table [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) of `pool`'s database,
    /// creating it if it is missing.
    pub async fn new(pool: PgPool) -> Result<Self> {
        Self::with_table(pool, Self::DEFAULT_TABLE).await
    }

    /// The outbox in table `table` (named as
    /// [`PostgresConfig::table`](crate::PostgresConfig::table) says), creating it if it is
    /// missing; several services may share a database, each with its own table.
    pub async fn with_table(pool: PgPool, table: &str) -> Result<Self> {
        let table = OutboxTable::new(table)?;
        let db = Db::of_pool(pool, &table.schema.name.name, Vec::new(), QUERY_TIMEOUT);
        db.create(&table.schema).await?;
        Ok(Outbox {
            inner: Arc::new(Inner { db, table }),
        })
    }

    /// Writes `event` for `destination` in the transaction `tx` (any open connection: a
    /// `&mut *transaction`, or an [`InboxConnection`](crate::InboxConnection)), returning
    /// the id of its message. Published once the transaction commits.
    pub async fn publish<E: Encode + ?Sized>(
        &self,
        tx: &mut PgConnection,
        destination: &str,
        event: &E,
    ) -> Result<String> {
        let message = event.encode()?.into_message();
        let id = message.id().to_owned();
        self.send(tx, destination, message).await?;
        Ok(id)
    }

    /// Like [`publish`](Self::publish), with an ordering key: the events of one destination
    /// and key are published in the order they were written (their transactions' order,
    /// when those write under one lock, such as the aggregate's row).
    pub async fn publish_keyed<E: Encode + ?Sized>(
        &self,
        tx: &mut PgConnection,
        destination: &str,
        key: &str,
        event: &E,
    ) -> Result<String> {
        let message = event.encode()?.into_message().with_key(key);
        let id = message.id().to_owned();
        self.send(tx, destination, message).await?;
        Ok(id)
    }

    /// Writes a message as it is (its id, key and headers kept) in the transaction `tx`.
    /// An invalid destination is refused here, not found by the relay later. With the
    /// feature `otel`, the trace context of the current span goes with it (unless the
    /// message has one), so that its handler's span continues the writer's trace.
    pub async fn send(
        &self,
        tx: &mut PgConnection,
        destination: &str,
        mut message: Message,
    ) -> Result<()> {
        validate_destination(destination)?;
        if !message.headers().contains(header::TRACEPARENT) {
            write_trace_context(&mut message);
        }
        let (names, values): (Vec<&str>, Vec<&str>) = message.headers().iter().unzip();
        let timestamp = i64::try_from(millis_since_epoch(message.timestamp())).unwrap_or(0);
        let table = &self.inner.table;
        self.inner
            .db
            .run("outbox write", async {
                sqlx::query(&table.insert)
                    .bind(destination)
                    .bind(message.id())
                    .bind(message.key())
                    .bind(&names)
                    .bind(&values)
                    .bind(message.content_type())
                    .bind(message.payload().as_ref())
                    .bind(timestamp)
                    .bind(&table.schema.name.name)
                    .execute(&mut *tx)
                    .await
                    .map(drop)
            })
            .await
    }

    /// How many messages wait to be published.
    pub async fn pending(&self) -> Result<u64> {
        let db = &self.inner.db;
        let count: i64 = db
            .run("outbox count", async {
                sqlx::query_scalar(&self.inner.table.count)
                    .fetch_one(&db.pool)
                    .await
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The table, as named.
    pub fn table(&self) -> &str {
        &self.inner.table.schema.name.name
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn outbox_table(&self) -> &OutboxTable {
        &self.inner.table
    }

    pub(crate) fn context(&self) -> &Context {
        &self.inner.db.context
    }
}

/// How long one statement of the outbox may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A row read back: its sequence number, destination and message.
pub(crate) fn read_row(row: &PgRow) -> std::result::Result<(i64, String, Message), sqlx::Error> {
    let names: Vec<String> = row.try_get("header_names")?;
    let values: Vec<String> = row.try_get("header_values")?;
    let mut headers = Headers::new();
    for (name, value) in names.into_iter().zip(values) {
        headers.insert(name, value);
    }
    let payload: Vec<u8> = row.try_get("payload")?;
    let id: String = row.try_get("id")?;
    let timestamp: i64 = row.try_get("timestamp_ms")?;
    let mut message = Message::new_with_id(id, payload)
        .with_optional_key(row.try_get("msg_key")?)
        .with_headers(headers)
        .with_timestamp(time_from_millis(u64::try_from(timestamp).unwrap_or(0)));
    if let Some(content_type) = row.try_get::<Option<String>, _>("content_type")? {
        message = message.with_content_type(content_type);
    }
    Ok((row.try_get("seq")?, row.try_get("destination")?, message))
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.table())
            .field("database", &self.context().location)
            .finish()
    }
}
