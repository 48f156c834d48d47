//! The transactional inbox: a handler's writes and the record of its message as handled,
//! committed together before the message is acknowledged.

use crate::outbox::Outbox;
use crate::store::{PostgresStore, Shared};
use event_binder_core::{
    BoxError, Context, Error, FromContext, Layer, Message, NoState, NonRetryable, Result, Service,
};
use sqlx::{PgConnection, Postgres, Transaction};
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::sync::{Mutex, OwnedMappedMutexGuard};

/// What the inbox writes in the `holder` column of the ids it records.
const HOLDER: &str = "inbox";

/// A tower layer that runs each call of a handler in a database transaction of the
/// store's pool, recording the message id as handled in that same transaction: the
/// handler's writes (through its [`InboxTransaction`]) and the record commit together, and
/// the runtime acknowledges the message only after the commit. Effects are exactly once:
///
/// - the transaction begins by recording the id (in the store's table, under the handler's
///   scope); an id recorded already is skipped and acknowledged, the handler not called;
/// - two deliveries of one id at once (two instances, a redelivery) take turns on the
///   record's row lock: the second finds it handled, or runs if the first rolled back;
/// - a handler error, a panic, a timeout or a crash before the commit rolls everything back,
///   so the message comes again as if never handled;
/// - a crash after the commit, before the acknowledgement, delivers it again, and it is
///   skipped.
///
/// A database that fails (to begin, record or commit, or under the handler's feet) is not
/// the handler's failure: counting no attempt, the message waits, unacknowledged, and is
/// tried again after a backoff, as after a failed claim, saying why in the log.
///
/// A processor's outputs are written to an [`Outbox`] in the same transaction (give one
/// with [`with_outbox`](Self::with_outbox)), with the ids the runtime would give them;
/// without one, a processor's call fails (publishing them after the commit could lose
/// them).
///
/// ```no_run
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{App, BoxError, Handler, HandlerSpec};
/// use event_binder_postgres::{InboxTransaction, PostgresStore};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: i64 }
///
/// let store = PostgresStore::connect("postgres://app@127.0.0.1:5432/app").await?;
/// let reserve = Handler::from_fn(
///     HandlerSpec::new("reserve", "order-placed").group("inventory"),
///     |event: OrderPlaced, tx: InboxTransaction| async move {
///         let mut db = tx.connection().await?;
///         sqlx::query("INSERT INTO reservations (order_id) VALUES ($1)")
///             .bind(event.order_id)
///             .execute(&mut *db)
///             .await?;
///         Ok::<_, BoxError>(())
///     },
/// )
/// .layer(store.inbox());
/// let running = App::new(channel).handler(reserve).start().await?;
/// # running.shutdown().await }
/// ```
#[derive(Clone)]
pub struct Inbox {
    store: Arc<Shared>,
    outbox: Option<Outbox>,
}

impl PostgresStore {
    /// The transactional [`Inbox`] on this store's pool and table: wrap a handler in it
    /// with [`Handler::layer`](event_binder_core::Handler::layer) (or every handler of an
    /// app with [`App::layer`](event_binder_core::App::layer)).
    pub fn inbox(&self) -> Inbox {
        Inbox {
            store: self.shared().clone(),
            outbox: None,
        }
    }
}

impl Inbox {
    /// Writes a processor's outputs to `outbox` in the handler's transaction, to be
    /// published by its relay after the commit.
    pub fn with_outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// One call of the handler `inner`, in a transaction.
    async fn call<S>(
        self,
        mut inner: S,
        ctx: Context,
    ) -> std::result::Result<Vec<Message>, BoxError>
    where
        S: Service<Context, Response = Vec<Message>, Error = BoxError>,
    {
        let Some(scope) = ctx.idempotency_scope() else {
            return Err(Error::Config(
                "the inbox records message ids under the handler's scope: call the handler \
                 through an App"
                    .into(),
            )
            .into());
        };
        let db = &self.store.db;
        let mut tx = db.run("inbox begin", db.pool.begin()).await?;
        let fresh: Option<bool> = db
            .run("inbox record", async {
                sqlx::query_scalar(&self.store.table.record)
                    .bind(scope)
                    .bind(ctx.id())
                    .bind(HOLDER)
                    .bind(self.store.retention)
                    .fetch_optional(&mut *tx)
                    .await
            })
            .await?;
        if fresh.is_none() {
            tracing::debug!(message_id = ctx.id(), "already handled (inbox); skipping");
            // The transaction wrote nothing: how it ends does not matter.
            let _ = tx.rollback().await;
            return Ok(Vec::new());
        }
        let slot = Arc::new(Mutex::new(Some(tx)));
        let handled = inner
            .call(ctx.clone().with_extension(Slot(slot.clone())))
            .await;
        let Some(mut tx) = slot.lock().await.take() else {
            return Err(Error::Idempotency("the inbox transaction was taken".into()).into());
        };
        let outputs = match handled {
            Ok(outputs) => outputs,
            Err(error) => return Err(rolled_back(tx, error).await),
        };
        if !outputs.is_empty() {
            let Some(outbox) = &self.outbox else {
                let _ = tx.rollback().await;
                return Err(NonRetryable::new(
                    "a processor behind the inbox needs an outbox for its outputs \
                     (Inbox::with_outbox): published after the commit they could be lost",
                )
                .into());
            };
            let destination = ctx
                .handler()
                .and_then(|spec| spec.output_destination())
                .unwrap_or_default();
            for (index, output) in outputs.into_iter().enumerate() {
                outbox
                    .send(&mut tx, destination, ctx.derive_output(index, output))
                    .await
                    .map_err(into_store_error)?;
            }
        }
        db.run("inbox commit", tx.commit()).await?;
        Ok(Vec::new())
    }
}

/// Rolls `tx` back after the handler failed with `error`. When the database is what failed
/// (the rollback fails too, or the error is the driver's losing its connection), the error
/// becomes a store failure, so that the message is not dead-lettered for it.
async fn rolled_back(tx: Transaction<'static, Postgres>, error: BoxError) -> BoxError {
    let rollback = tx.rollback().await;
    if rollback.is_err() || connection_lost(&*error) {
        return Error::Idempotency(
            format!("the database failed while the handler ran: {error}").into(),
        )
        .into();
    }
    error
}

/// Whether `error`, or one of its sources, is the driver's losing the database.
fn connection_lost(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
        ) = error.downcast_ref::<sqlx::Error>()
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// An outbox error inside the inbox: a store failure (the message comes back), unless the
/// output itself is refused (an invalid destination), which no retry fixes.
fn into_store_error(error: Error) -> BoxError {
    match error {
        Error::Idempotency(_) => error.into(),
        refused => NonRetryable::new(refused).into(),
    }
}

impl<S> Layer<S> for Inbox {
    type Service = InboxService<S>;

    fn layer(&self, inner: S) -> InboxService<S> {
        InboxService {
            inbox: self.clone(),
            inner,
        }
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("table", &self.store.table.name())
            .field("database", &self.store.db.context.location)
            .field("outbox", &self.outbox)
            .finish()
    }
}

/// A handler wrapped in an [`Inbox`].
#[derive(Clone, Debug)]
pub struct InboxService<S> {
    inbox: Inbox,
    inner: S,
}

impl<S> Service<Context> for InboxService<S>
where
    S: Service<Context, Response = Vec<Message>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Vec<Message>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Vec<Message>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        // The clone that was made ready is the one called (tower's rule).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(self.inbox.clone().call(ready, ctx))
    }
}

/// The transaction of one call, shared by the inbox and the handler's argument.
type SharedTransaction = Arc<Mutex<Option<Transaction<'static, Postgres>>>>;

/// How the inbox hands the transaction to the handler's [`InboxTransaction`].
#[derive(Clone)]
struct Slot(SharedTransaction);

/// A handler argument: the database transaction the [`Inbox`] runs this call in. What the
/// handler writes through it commits together with the record of its message as handled,
/// or not at all.
///
/// In a handler not wrapped in an inbox, [`connection`](Self::connection) fails.
#[derive(Clone)]
pub struct InboxTransaction(Option<SharedTransaction>);

impl FromContext for InboxTransaction {
    type State = NoState;

    fn from_context(ctx: &Context) -> Self {
        InboxTransaction(ctx.extension::<Slot>().map(|slot| slot.0.clone()))
    }
}

impl InboxTransaction {
    /// The transaction's connection, for the handler's statements: `&mut *connection` is
    /// a `&mut PgConnection`, a sqlx executor (and what [`Outbox::publish`] takes). Held
    /// until dropped; take it again for later statements if needed.
    pub async fn connection(&self) -> Result<InboxConnection> {
        let Some(slot) = &self.0 else {
            return Err(Error::Config(
                "this handler takes an InboxTransaction but is not wrapped in an Inbox: add \
                 .layer(store.inbox()) to it"
                    .into(),
            ));
        };
        let guard = slot.clone().lock_owned().await;
        tokio::sync::OwnedMutexGuard::try_map(guard, |tx| tx.as_deref_mut())
            .map(InboxConnection)
            .map_err(|_| {
                Error::Config(
                    "the inbox transaction is over: use it only while the handler runs".into(),
                )
            })
    }
}

impl fmt::Debug for InboxTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxTransaction")
            .field("in_inbox", &self.0.is_some())
            .finish()
    }
}

/// The connection of an [`InboxTransaction`], in its transaction; dereferences to a
/// [`PgConnection`].
pub struct InboxConnection(
    OwnedMappedMutexGuard<Option<Transaction<'static, Postgres>>, PgConnection>,
);

impl Deref for InboxConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for InboxConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl fmt::Debug for InboxConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxConnection").finish_non_exhaustive()
    }
}
