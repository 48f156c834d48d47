//! The store's error: what failed, on which table, and why, without the password.

use event_binder_core::{hide_secrets, Error};
use std::time::Duration;

/// A failure of the PostgreSQL store, inside
/// [`Error::Idempotency`](event_binder_core::Error::Idempotency): which operation failed, on
/// which table and database, and why (the database's message and SQLSTATE, or what the
/// connection did). It never holds the password: the driver's error is kept as text, with
/// the password removed.
///
/// ```
/// use event_binder_postgres::PostgresStoreError;
///
/// # fn demo(err: event_binder_core::Error) {
/// if let event_binder_core::Error::Idempotency(source) = &err {
///     if let Some(err) = source.downcast_ref::<PostgresStoreError>() {
///         println!("{} failed with SQLSTATE {:?}", err.operation(), err.code());
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("PostgreSQL store (table {table} at {location}): {operation} failed: {message}")]
pub struct PostgresStoreError {
    operation: &'static str,
    table: String,
    location: String,
    message: String,
    code: Option<String>,
}

impl PostgresStoreError {
    /// What was being done: `connect`, `create table`, `begin`, `complete`, `abandon` or
    /// `purge`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The table, as configured.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The database's SQLSTATE error code, when the database refused the statement (for
    /// example `42501` for a missing privilege); `None` when it could not be reached.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl From<PostgresStoreError> for Error {
    fn from(err: PostgresStoreError) -> Self {
        Error::Idempotency(Box::new(err))
    }
}

/// Where a store's errors come from, and what they must not show.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The table, as configured.
    pub(crate) table: String,
    /// `postgres://user@host:port/database`: never with the password.
    pub(crate) location: String,
    /// The password, as written in the URL and decoded, hidden in whatever an error says.
    pub(crate) secrets: Vec<String>,
    /// How long the pool waits for a connection, for the message when it gave up.
    pub(crate) acquire_timeout: Duration,
}

impl Context {
    /// The error of `operation`, failed with the driver's `err`.
    pub(crate) fn sqlx(&self, operation: &'static str, err: &sqlx::Error) -> Error {
        let (message, code) = match err {
            sqlx::Error::PoolTimedOut => (
                format!(
                    "no connection to the database within {:?}: is PostgreSQL running and \
                     reachable there?",
                    self.acquire_timeout
                ),
                None,
            ),
            sqlx::Error::Io(io) => (format!("cannot reach the database: {io}"), None),
            sqlx::Error::Database(db) => (
                format!("the database refused it: {}", db.message()),
                db.code().map(|code| code.into_owned()),
            ),
            sqlx::Error::PoolClosed => ("the connection pool was closed".to_owned(), None),
            other => (other.to_string(), None),
        };
        self.error(operation, message, code)
    }

    /// The error of `operation` that gave no answer within `after`.
    pub(crate) fn timeout(&self, operation: &'static str, after: Duration) -> Error {
        self.error(
            operation,
            format!("the database gave no answer within {after:?}"),
            None,
        )
    }

    fn error(&self, operation: &'static str, message: String, code: Option<String>) -> Error {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        PostgresStoreError {
            operation,
            table: self.table.clone(),
            location: self.location.clone(),
            message: hide_secrets(&message, &secrets),
            code,
        }
        .into()
    }
}
