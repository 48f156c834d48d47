//! What the PostgreSQL store's tests share: the test database, unique table names, and
//! tables dropped when a test ends, whether it passed or not.

#![allow(dead_code, unreachable_pub)]

use event_binder_postgres::sqlx::{self, Connection, PgConnection};
use event_binder_postgres::{PostgresConfig, PostgresStore};
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
