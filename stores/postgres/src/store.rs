//! The store: claims, completions and releases as SQL statements, and the purge.

use crate::config::PostgresConfig;
use crate::db::{interval, location, timeout_of, Db};
use crate::error::Context;
use crate::table::{Table, PURGE_BATCH};
use async_trait::async_trait;
use event_binder_core::{Claim, ClaimKey, Error, IdempotencyStore, Result};
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// The shortest `retry_in` of [`Claim::HeldElsewhere`].
const MIN_RETRY: Duration = Duration::from_millis(10);
/// The longest `retry_in` of [`Claim::HeldElsewhere`]: a claim held for long is asked about
/// again at least this often, so that its release is noticed soon enough.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How much longer than the retention a handled id is kept: the database reads its clock
/// before the completion commits and its answer reaches the caller, and the id must be
/// remembered for at least the retention after `complete` returned.
pub(crate) const RETENTION_GRACE: Duration = Duration::from_secs(1);
/// How often `begin` claims again when the row it was refused by went away before it could
/// be read (released, or its lease ran out, meanwhile).
const CLAIM_ATTEMPTS: usize = 3;

/// A durable [`IdempotencyStore`] in a PostgreSQL table, shared by every instance of a
/// service (see the [crate documentation](crate) for what it guarantees and the table).
///
/// Cloning it is cheap and shares the pool. A task of its own deletes the rows past their
/// retention every [`purge_interval`](Self::purge_interval); it stops when the last clone is
/// dropped. `Debug` and `Display` show the table and the database, never the password.
///
/// ```no_run
/// # async fn demo() -> event_binder_core::Result<()> {
/// use event_binder_core::{Claim, ClaimKey, IdempotencyStore};
/// use event_binder_postgres::{PostgresConfig, PostgresStore};
/// use std::time::Duration;
///
/// let config = PostgresConfig::new("postgres://app:secret@127.0.0.1:5432/app")?
///     .lease(Duration::from_secs(60));
/// let store = PostgresStore::with_config(config).await?;
/// let key = ClaimKey::new("orders/billing/bill", "message-1", "instance-1");
/// assert_eq!(store.begin(key).await?, Claim::Acquired);
/// store.complete(key).await?;
/// assert_eq!(store.begin(key).await?, Claim::AlreadyHandled);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// What a store's clones share; dropping it stops the purge.
struct Inner {
    shared: Arc<Shared>,
    purge: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.purge.abort();
    }
}

/// What the store, its purge task and its inbox use.
pub(crate) struct Shared {
    pub(crate) db: Db,
    pub(crate) table: Table,
    lease: PgInterval,
    /// The retention plus [`RETENTION_GRACE`]: how long a handled id is kept.
    pub(crate) retention: PgInterval,
    lease_duration: Duration,
    retention_duration: Duration,
    purge_interval: Duration,
    create_table: bool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`)
    /// with the defaults of [`PostgresConfig`], creating the table if it is missing.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(PostgresConfig::new(url)?).await
    }

    /// Connects as `config` says, with a pool of its own, creating the table if it is missing
    /// (unless [`PostgresConfig::create_table`] is off). Fails within the connect timeout
    /// when the database cannot be reached; a bad table name or setting is an
    /// [`Error::Config`].
    pub async fn with_config(config: PostgresConfig) -> Result<Self> {
        let Some(url) = config.url() else {
            return Err(Error::Config(
                "PostgreSQL store: the configuration has no URL: make it with \
                 PostgresConfig::new(url), or give a pool to PostgresStore::from_pool"
                    .into(),
            ));
        };
        config.check()?;
        let table = Table::new(&config.table)?;
        let options = PgConnectOptions::from_str(url).map_err(|err| {
            Error::Config(format!(
                "invalid PostgreSQL URL {}: {err}",
                config.redacted_url().unwrap_or_default()
            ))
        })?;
        let context = Context {
            table: table.name().to_owned(),
            location: location(&options),
            secrets: config.secrets(),
            acquire_timeout: config.connect_timeout,
        };
        // Lazy: the first statement (creating the table, or checking it is there) connects,
        // within the same bound as every later one.
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options);
        let connected = timeout_of(&context, "connect", config.query_timeout, async {
            pool.acquire().await.map(drop)
        })
        .await;
        if let Err(err) = connected {
            pool.close().await;
            return Err(err);
        }
        let db = Db {
            pool,
            context,
            query_timeout: config.query_timeout,
        };
        Self::start(db, table, &config).await
    }

    /// A store on the application's `pool`, creating the table if it is missing (unless
    /// [`PostgresConfig::create_table`] is off). The URL, `max_connections` and
    /// `connect_timeout` of `config` are not used: the pool has its own.
    pub async fn from_pool(pool: PgPool, config: PostgresConfig) -> Result<Self> {
        config.check()?;
        let table = Table::new(&config.table)?;
        let db = Db::of_pool(pool, table.name(), config.secrets(), config.query_timeout);
        Self::start(db, table, &config).await
    }

    /// Creates the table, migrates it, and starts the purge.
    async fn start(db: Db, table: Table, config: &PostgresConfig) -> Result<Self> {
        let shared = Arc::new(Shared {
            db,
            table,
            lease: interval(config.lease),
            retention: interval(config.retention + RETENTION_GRACE),
            lease_duration: config.lease,
            retention_duration: config.retention,
            purge_interval: config.effective_purge_interval(),
            create_table: config.create_table,
        });
        if shared.create_table {
            shared.db.create(&shared.table.schema).await?;
        } else {
            shared
                .db
                .check(&shared.table.schema, "PostgresStore::migrate")
                .await?;
        }
        let purge = tokio::spawn(purge_periodically(shared.clone()));
        tracing::debug!(store = %shared, "PostgreSQL idempotency store ready");
        Ok(PostgresStore {
            inner: Arc::new(Inner { shared, purge }),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Creates the table and its index if they are missing: what connecting does (unless
    /// [`PostgresConfig::create_table`] is off), exposed for deployments that create tables
    /// in a migration step of their own.
    ///
    /// Idempotent, and safe to run by many instances at once (they take turns on an
    /// advisory lock of the table's name); when the table and index exist already it only
    /// looks at the catalog, so it needs no right to create tables then. See the
    /// [crate documentation](crate#the-table) for the schema.
    pub async fn migrate(&self) -> Result<()> {
        let shared = self.shared();
        shared.db.create(&shared.table.schema).await
    }

    /// Deletes the rows past their retention now, returning how many: what the store's own
    /// task does every [`purge_interval`](Self::purge_interval).
    pub async fn purge(&self) -> Result<u64> {
        self.shared().purge().await
    }

    /// The pool the store uses: its own, or the one given to [`from_pool`](Self::from_pool).
    pub fn pool(&self) -> &PgPool {
        &self.shared().db.pool
    }

    /// The table, as configured.
    pub fn table(&self) -> &str {
        self.shared().table.name()
    }

    /// How long a claim lasts if its holder neither completes nor abandons it.
    pub fn lease(&self) -> Duration {
        self.shared().lease_duration
    }

    /// How long a handled id is remembered.
    pub fn retention(&self) -> Duration {
        self.shared().retention_duration
    }

    /// How often the store deletes the rows past their retention.
    pub fn purge_interval(&self) -> Duration {
        self.shared().purge_interval
    }
}

impl Shared {
    async fn purge(&self) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let batch = self
                .db
                .run("purge", async {
                    sqlx::query(&self.table.purge)
                        .bind(PURGE_BATCH)
                        .execute(&self.db.pool)
                        .await
                })
                .await?
                .rows_affected();
            deleted += batch;
            if batch < PURGE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim> {
        self.db
            .run("begin", async {
                for _ in 0..CLAIM_ATTEMPTS {
                    let acquired = sqlx::query(&self.table.claim)
                        .bind(key.scope)
                        .bind(key.id)
                        .bind(key.holder)
                        .bind(self.lease)
                        .bind(self.retention)
                        .fetch_optional(&self.db.pool)
                        .await?;
                    if acquired.is_some() {
                        return Ok(Claim::Acquired);
                    }
                    let row = sqlx::query(&self.table.look)
                        .bind(key.scope)
                        .bind(key.id)
                        .fetch_optional(&self.db.pool)
                        .await?;
                    if let Some(claim) = row.map(|row| refusal(&row)).transpose()?.flatten() {
                        return Ok(claim);
                    }
                    // Released, or its lease ran out, between the two statements: claim again.
                }
                Ok(Claim::HeldElsewhere {
                    retry_in: MIN_RETRY,
                })
            })
            .await
    }

    async fn complete(&self, key: ClaimKey<'_>) -> Result<()> {
        self.db
            .run("complete", async {
                sqlx::query(&self.table.complete)
                    .bind(key.scope)
                    .bind(key.id)
                    .bind(key.holder)
                    .bind(self.retention)
                    .execute(&self.db.pool)
                    .await
                    .map(drop)
            })
            .await
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()> {
        self.db
            .run("abandon", async {
                sqlx::query(&self.table.abandon)
                    .bind(key.scope)
                    .bind(key.id)
                    .bind(key.holder)
                    .execute(&self.db.pool)
                    .await
                    .map(drop)
            })
            .await
    }
}

/// What the row that refused a claim says: handled, or held for some time yet; `None` when
/// it no longer refuses (released or run out meanwhile).
fn refusal(row: &PgRow) -> std::result::Result<Option<Claim>, sqlx::Error> {
    if row.try_get::<bool, _>("handled")? {
        return Ok(Some(Claim::AlreadyHandled));
    }
    if !row.try_get::<bool, _>("held")? {
        return Ok(None);
    }
    let remaining = row.try_get::<Option<f64>, _>("remaining")?.unwrap_or(0.0);
    let retry_in = Duration::try_from_secs_f64(remaining)
        .unwrap_or(MIN_RETRY)
        .clamp(MIN_RETRY, MAX_RETRY);
    Ok(Some(Claim::HeldElsewhere { retry_in }))
}

/// Deletes the rows past their retention every purge interval, for as long as the store
/// lives (its handle aborts this task); failures are logged, and tried again next time.
async fn purge_periodically(shared: Arc<Shared>) {
    let every = shared.purge_interval;
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match shared.purge().await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::debug!(table = %shared.table.name(), deleted, "purged handled ids past their retention")
            }
            Err(err) => {
                tracing::warn!(table = %shared.table.name(), error = %err, "purging handled ids past their retention failed; trying again in {every:?}")
            }
        }
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL idempotency store (table {} at {}, lease {:?}, retention {:?})",
            self.table.name(),
            self.db.context.location,
            self.lease_duration,
            self.retention_duration
        )
    }
}

impl fmt::Display for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.shared(), f)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("PostgresStore")
            .field("table", &shared.table.name())
            .field("database", &shared.db.context.location)
            .field("lease", &shared.lease_duration)
            .field("retention", &shared.retention_duration)
            .field("purge_interval", &shared.purge_interval)
            .field("query_timeout", &shared.db.query_timeout)
            .field("connections", &shared.db.pool.size())
            .finish()
    }
}

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim> {
        self.shared().begin(key).await
    }

    async fn complete(&self, key: ClaimKey<'_>) -> Result<()> {
        self.shared().complete(key).await
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()> {
        self.shared().abandon(key).await
    }
}
