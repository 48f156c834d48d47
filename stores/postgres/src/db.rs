//! What the store, the inbox and the outbox share: a pool, the context of their errors,
//! the bound on each statement, and creating their tables.

use crate::error::Context;
use crate::table::Schema;
use event_binder_core::{Error, Result};
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

/// A pool, and how its statements' failures are told. No `Debug`: its context holds the
/// password, to hide it.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) pool: PgPool,
    pub(crate) context: Context,
    /// The longest a statement may take before it counts as failed.
    pub(crate) query_timeout: Duration,
}

impl Db {
    /// The statements of the table `table` on `pool`, whose errors hide `secrets`.
    pub(crate) fn of_pool(
        pool: PgPool,
        table: &str,
        secrets: Vec<String>,
        query_timeout: Duration,
    ) -> Self {
        let context = Context {
            table: table.to_owned(),
            location: location(&pool.connect_options()),
            secrets,
            acquire_timeout: pool.options().get_acquire_timeout(),
        };
        Db {
            pool,
            context,
            query_timeout,
        }
    }

    /// Runs `work` within the query timeout, its errors as the store's errors.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = std::result::Result<T, sqlx::Error>>,
    ) -> Result<T> {
        timeout_of(&self.context, operation, self.query_timeout, work).await
    }

    /// Creates the table and index of `schema` if they are missing. Safe to run by many
    /// instances at once (they take turns on an advisory lock of the table's name); when
    /// both exist it only looks at the catalog, so it needs no right to create tables then.
    pub(crate) async fn create(&self, schema: &Schema) -> Result<()> {
        if self.exists(schema, "create table").await? {
            return Ok(());
        }
        self.run("create table", async {
            let mut transaction = self.pool.begin().await?;
            sqlx::query(Schema::LOCK)
                .bind(&schema.name.name)
                .execute(&mut *transaction)
                .await?;
            for statement in &schema.statements {
                sqlx::query(statement).execute(&mut *transaction).await?;
            }
            transaction.commit().await
        })
        .await?;
        tracing::debug!(table = %schema.name.name, "PostgreSQL table ready");
        Ok(())
    }

    /// Fails unless the table and index of `schema` exist, saying how to create them.
    pub(crate) async fn check(&self, schema: &Schema, create_with: &str) -> Result<()> {
        if self.exists(schema, "check table").await? {
            return Ok(());
        }
        Err(Error::Config(format!(
            "PostgreSQL: table {} (or its index) does not exist at {}: create it with \
             {create_with}",
            schema.name.name, self.context.location
        )))
    }

    async fn exists(&self, schema: &Schema, operation: &'static str) -> Result<bool> {
        let (table, index) = schema.regclass_names();
        self.run(operation, async {
            sqlx::query_scalar::<_, bool>(Schema::EXISTS)
                .bind(table)
                .bind(index)
                .fetch_one(&self.pool)
                .await
        })
        .await
    }
}

/// `work` within `after`, its errors (and running out of time) as the store's errors.
pub(crate) async fn timeout_of<T>(
    context: &Context,
    operation: &'static str,
    after: Duration,
    work: impl Future<Output = std::result::Result<T, sqlx::Error>>,
) -> Result<T> {
    match tokio::time::timeout(after, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(context.sqlx(operation, &err)),
        Err(_) => Err(context.timeout(operation, after)),
    }
}

/// `d` as a PostgreSQL interval, rounded up to the microsecond. Checked beforehand
/// ([`PostgresConfig::check`](crate::PostgresConfig)) to be at most a hundred years.
pub(crate) fn interval(d: Duration) -> PgInterval {
    let micros = d.as_nanos().div_ceil(1_000);
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(micros).unwrap_or(i64::MAX),
    }
}

/// `postgres://user@host:port/database`: where a pool connects, without the password.
pub(crate) fn location(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!(
        "postgres://{}@{host}/{}",
        options.get_username(),
        options.get_database().unwrap_or_default()
    )
}
