//! event-binder on PostgreSQL: the idempotency store (which message ids each handler has
//! handled, and who is handling one now, kept in a table that every instance of a service
//! shares and that outlives restarts), the transactional [`Inbox`] (a handler's writes and
//! the record of its message committed together: exactly-once effects) and the
//! transactional [`Outbox`] with its [`Relay`] (events written in the caller's transaction,
//! published once it commits).
//!
//! [`PostgresStore`] implements [`IdempotencyStore`](event_binder_core::IdempotencyStore):
//! give it to an [`App`](event_binder_core::App) with
//! [`idempotency`](event_binder_core::App::idempotency), and a message delivered twice, to
//! two instances at once or again after a crash, runs its handler once. It talks to
//! PostgreSQL through [sqlx](https://docs.rs/sqlx), the driver most Rust services already
//! use, so that a handler is handed a transaction of the same pool for its own writes (the
//! [`Inbox`]).
//!
//! ```no_run
//! # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
//! use event_binder_core::App;
//! use event_binder_postgres::PostgresStore;
//!
//! // Creates the table `event_binder_handled` if it is missing.
//! let store = PostgresStore::connect("postgres://app:secret@127.0.0.1:5432/app").await?;
//! let running = App::new(channel).idempotency(store).start().await?;
//! // … handlers run; each message id is handled once per handler …
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # What it guarantees
//!
//! - **One handler run per id.** [`begin`](event_binder_core::IdempotencyStore::begin) claims
//!   an id with one atomic `INSERT … ON CONFLICT … DO UPDATE … WHERE` statement: of any
//!   number of instances claiming one id at once, exactly one acquires it; the others are
//!   told [`HeldElsewhere`](event_binder_core::Claim::HeldElsewhere) (with the time left on
//!   the claim's lease, at most 30 s, as when to try again) or, once it completed,
//!   [`AlreadyHandled`](event_binder_core::Claim::AlreadyHandled). A claim is not
//!   reentrant: the same holder asking again is refused too.
//! - **Leases.** A claim lasts the store's lease ([`PostgresConfig::lease`], 5 minutes by
//!   default): if its holder crashes, another can take the id over once the lease has run
//!   out. Keep the lease longer than a handler's longest run (bound it with a handler
//!   timeout), or a slow handler's id can be taken over while it still runs.
//! - **Retention.** A completed id is remembered for the retention
//!   ([`PostgresConfig::retention`], 7 days by default, and a second more so that it is at
//!   least that long after `complete` returned), written into its row when it completes,
//!   so stores with different retentions can share a table. A background task
//!   of the store deletes the rows past it every
//!   [`purge_interval`](PostgresConfig::purge_interval); correctness does not depend on it,
//!   as a row past its retention counts as absent.
//! - **One clock.** Leases and retention are reckoned on the database's clock (`now()`),
//!   never the client's: instances whose clocks disagree still agree on them.
//! - **No secrets shown.** The store's `Debug` and `Display`, its configuration's and its
//!   errors never show the password of the URL.
//!
//! # The table
//!
//! Created when the store connects (`CREATE TABLE IF NOT EXISTS`, safe to run by many
//! instances at once; see [`PostgresStore::migrate`]), named by [`PostgresConfig::table`]:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "event_binder_handled" (
//!     scope        text        NOT NULL,  -- the handler's scope
//!     id           text        NOT NULL,  -- the message id
//!     holder       text        NOT NULL,  -- who claimed (or completed) it last
//!     lease_until  timestamptz,           -- a claim's lease end; NULL once handled
//!     handled_at   timestamptz,           -- when it completed; NULL while claimed
//!     forget_after timestamptz NOT NULL,  -- when the row may be forgotten
//!     PRIMARY KEY (scope, id),
//!     CHECK ((lease_until IS NULL) <> (handled_at IS NULL))
//! );
//! CREATE INDEX IF NOT EXISTS "event_binder_handled_forget_after"
//!     ON "event_binder_handled" (forget_after);
//! ```
//!
//! A handled row's `forget_after` is its completion time plus the retention (and a second's
//! grace); a claim's is its lease end plus that, so that the claims of holders that never came back are
//! cleaned up too. Scopes and ids are stored as `text`: an id holding a NUL character,
//! which PostgreSQL text cannot hold, fails its claim with an error.
//!
//! # Connections
//!
//! [`PostgresStore::connect`] and [`PostgresStore::with_config`] open a pool of their own
//! (URL `postgres://user:password@host:port/database`; no TLS yet, so `sslmode=require`
//! fails); [`PostgresStore::from_pool`] shares an application's [`PgPool`]. A database that
//! is down makes each call fail within [`PostgresConfig::connect_timeout`] (an error, the
//! message comes back later), and the pool reconnects once it is up again.

mod config;
mod db;
mod error;
mod inbox;
mod outbox;
mod relay;
mod store;
mod table;

pub use config::PostgresConfig;
pub use error::PostgresStoreError;
pub use inbox::{Inbox, InboxConnection, InboxService, InboxTransaction};
pub use outbox::Outbox;
pub use relay::{Relay, RunningRelay};
pub use store::PostgresStore;

/// The sqlx this crate is built with, for building a [`PgPool`] to share with
/// [`PostgresStore::from_pool`].
pub use sqlx;
/// A pool of PostgreSQL connections (sqlx's).
pub use sqlx::PgPool;
