//! What the PostgreSQL store's tests share: the test database, unique table names, and
//! tables dropped when a test ends, whether it passed or not.

#![allow(dead_code, unreachable_pub)]

use event_binder_core::{BoxError, Handler, HandlerService, HandlerSpec, MessageId};
use event_binder_postgres::sqlx::{self, Connection, PgConnection};
use event_binder_postgres::{InboxTransaction, PostgresConfig, PostgresStore};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The test database (scripts/postgres.sh sets it up): `EVENT_BINDER_POSTGRES_URL`, or the
/// local server's database `test` as user `postgres`.
pub fn url() -> String {
    std::env::var("EVENT_BINDER_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `prefix` with a random suffix: a table name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{:016x}",
        RandomState::new().hash_one(std::process::id())
    )
}

/// A configuration for the test database, on `table`.
pub fn config(table: &str) -> PostgresConfig {
    PostgresConfig::new(&url())
        .expect("the test database URL")
        .table(table)
}

/// A store on `table` of the test database, with the defaults otherwise.
pub async fn store(table: &str) -> PostgresStore {
    PostgresStore::with_config(config(table))
        .await
        .unwrap_or_else(|err| panic!("connecting to the test database failed: {err}"))
}

/// A table of its own for one test, dropped when this is dropped (at the end of the test,
/// or when it panics).
#[derive(Debug)]
pub struct TempTable {
    pub name: String,
}

impl TempTable {
    pub fn new(prefix: &str) -> Self {
        TempTable {
            name: unique(prefix),
        }
    }

    /// How many rows the table holds.
    pub async fn count(&self) -> i64 {
        self.query_scalar(&format!("SELECT count(*) FROM \"{}\"", self.name))
            .await
    }

    /// How many rows of `scope` the table holds.
    pub async fn count_scope(&self, scope: &str) -> i64 {
        let mut conn = connection().await;
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\" WHERE scope = $1",
            self.name
        ))
        .bind(scope)
        .fetch_one(&mut conn)
        .await
        .expect("counting rows")
    }

    async fn query_scalar(&self, sql: &str) -> i64 {
        let mut conn = connection().await;
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }
}

impl Drop for TempTable {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread of its own: this may run inside the test's runtime, which cannot block.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop a test table");
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&url()).await?;
                sqlx::query(&format!("DROP TABLE IF EXISTS \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .map(drop)
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("dropping test table {}: {err}", self.name),
            Err(_) => eprintln!("dropping test table {} panicked", self.name),
        }
    }
}

/// A connection of the test's own to the test database.
pub async fn connection() -> PgConnection {
    PgConnection::connect(&url())
        .await
        .unwrap_or_else(|err| panic!("connecting to the test database failed: {err}"))
}

/// Waits until `condition` holds, checking every 100 ms, failing after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What handlers write: one row per message id (unique), and a counter beside it.
pub struct Effects {
    pub rows: TempTable,
    pub counter: TempTable,
}

impl Effects {
    pub async fn new() -> Self {
        let effects = Effects {
            rows: TempTable::new("inbox_effects"),
            counter: TempTable::new("inbox_counter"),
        };
        let mut conn = connection().await;
        for sql in [
            format!(
                "CREATE TABLE \"{}\" (id text PRIMARY KEY)",
                effects.rows.name
            ),
            format!(
                "CREATE TABLE \"{}\" (n bigint NOT NULL)",
                effects.counter.name
            ),
            format!("INSERT INTO \"{}\" VALUES (0)", effects.counter.name),
        ] {
            sqlx::query(&sql).execute(&mut conn).await.expect(&sql);
        }
        effects
    }

    /// Applies the effect of message `id` in the inbox's transaction.
    pub async fn apply(
        rows: &str,
        counter: &str,
        id: &str,
        tx: &InboxTransaction,
    ) -> Result<(), BoxError> {
        let mut db = tx.connection().await?;
        sqlx::query(&format!("INSERT INTO \"{rows}\" (id) VALUES ($1)"))
            .bind(id)
            .execute(&mut *db)
            .await?;
        sqlx::query(&format!("UPDATE \"{counter}\" SET n = n + 1"))
            .execute(&mut *db)
            .await?;
        Ok(())
    }

    /// A handler applying each message's effect, through `store`'s inbox.
    pub fn handler(
        &self,
        store: &PostgresStore,
        concurrency: usize,
    ) -> Handler<impl HandlerService> {
        let (rows, counter) = (self.rows.name.clone(), self.counter.name.clone());
        Handler::from_fn(
            HandlerSpec::new("apply", "orders")
                .group("effects")
                .concurrency(concurrency),
            move |_event: serde_json::Value, id: MessageId, tx: InboxTransaction| {
                let (rows, counter) = (rows.clone(), counter.clone());
                async move { Effects::apply(&rows, &counter, &id, &tx).await }
            },
        )
        .layer(store.inbox())
    }

    pub async fn ids(&self) -> Vec<String> {
        let mut conn = connection().await;
        sqlx::query_scalar(&format!(
            "SELECT id FROM \"{}\" ORDER BY id",
            self.rows.name
        ))
        .fetch_all(&mut conn)
        .await
        .expect("reading the effects")
    }

    pub async fn applied(&self, id: &str) -> bool {
        self.ids().await.iter().any(|applied| applied == id)
    }

    pub async fn counter(&self) -> i64 {
        let mut conn = connection().await;
        sqlx::query_scalar(&format!("SELECT n FROM \"{}\"", self.counter.name))
            .fetch_one(&mut conn)
            .await
            .expect("reading the counter")
    }
}
