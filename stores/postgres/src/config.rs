//! The configuration of a PostgreSQL store.

use event_binder_core::{hide_secrets, is_secret_param, redact_url, Error, Result};
use sqlx::postgres::PgConnectOptions;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How a [`PostgresStore`](crate::PostgresStore) connects, where it keeps its ids and for how
/// long.
///
/// [`new`](Self::new) takes the database URL,
/// `postgres://user:password@host:port/database`; the other settings have defaults, set
/// with the methods of the same names. [`Default`] gives a configuration without a URL, for
/// [`PostgresStore::from_pool`](crate::PostgresStore::from_pool). Its `Debug` never shows
/// the password.
///
/// ```
/// use event_binder_postgres::PostgresConfig;
/// use std::time::Duration;
///
/// let config = PostgresConfig::new("postgres://app:secret@127.0.0.1:5432/app")?
///     .table("billing_handled")
///     .lease(Duration::from_secs(60))
///     .retention(Duration::from_secs(24 * 60 * 60));
/// assert_eq!(config.table, "billing_handled");
/// assert_eq!(config.effective_purge_interval(), Duration::from_secs(60 * 60));
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), event_binder_core::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The database URL, with its password: never shown.
    url: Option<String>,
    /// The table of handled ids and claims: ASCII letters, digits and `_`, not starting with
    /// a digit, at most 50 characters, optionally as `schema.table` (the schema must
    /// exist). Used exactly as written (quoted): `Handled` and `handled` are two tables.
    /// Default [`DEFAULT_TABLE`](Self::DEFAULT_TABLE).
    pub table: String,
    /// How long a claim lasts if its holder neither completes nor abandons it (it crashed):
    /// after it another holder can take the id over. Longer than a handler's longest run;
    /// at least a millisecond. Default 5 minutes.
    pub lease: Duration,
    /// How long a handled id is remembered after it completed. Default 7 days. Reckoned on
    /// the database's clock, from when it records the completion; the store keeps the id a
    /// second more, so that it is remembered for at least this long after
    /// [`complete`](event_binder_core::IdempotencyStore::complete) returned, commit and
    /// network time included.
    pub retention: Duration,
    /// How often the store deletes the rows past their retention; `None` (the default)
    /// takes a quarter of the retention, at most an hour (see
    /// [`effective_purge_interval`](Self::effective_purge_interval)). At least a second.
    pub purge_interval: Option<Duration>,
    /// The most connections the store's own pool opens. Default 20: an [`Inbox`](crate::Inbox)
    /// call holds one for its whole transaction, so handlers behind it wait for connections
    /// when their concurrency together (16 each by default) is above this.
    pub max_connections: u32,
    /// The longest a call waits for a connection, connecting included: a database that is
    /// down makes calls fail after it, not hang. Default 5 seconds.
    pub connect_timeout: Duration,
    /// The longest one call of the store (`begin`, `complete`, `abandon`, a purge) may take
    /// in all, waiting for a connection included. Default 10 seconds.
    pub query_timeout: Duration,
    /// Whether connecting creates the table and its index if missing (see
    /// [`PostgresStore::migrate`](crate::PostgresStore::migrate)). Default `true`; turn it
    /// off where the application's user may not create tables and the table was created
    /// beforehand.
    pub create_table: bool,
}

impl PostgresConfig {
    /// The default [`table`](Self::table): `event_binder_handled`.
    pub const DEFAULT_TABLE: &'static str = "event_binder_handled";
    /// The default [`lease`](Self::lease): 5 minutes.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5 * 60);
    /// The default [`retention`](Self::retention): 7 days.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    /// The longest default purge interval: an hour.
    pub const MAX_DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);
    /// The shortest purge interval: a second.
    pub const MIN_PURGE_INTERVAL: Duration = Duration::from_secs(1);
    /// The default [`max_connections`](Self::max_connections): 20.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 20;
    /// The default [`connect_timeout`](Self::connect_timeout): 5 seconds.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`query_timeout`](Self::query_timeout): 10 seconds.
    pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
    /// The longest lease or retention: a hundred years (PostgreSQL's timestamps end in
    /// 294276).
    pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

    /// The defaults, connecting to `url` (`postgres://` or `postgresql://`; user, password,
    /// host, port and database as libpq's URLs have them, and sqlx's query parameters).
    /// A URL that cannot be read is an [`Error::Config`] that does not show the password.
    pub fn new(url: &str) -> Result<Self> {
        let invalid = |reason: &str| {
            Error::Config(format!(
                "invalid PostgreSQL URL {}: {}",
                redact_url(url),
                hide_secrets(
                    reason,
                    &secrets_of(url)
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                )
            ))
        };
        let parsed = url::Url::parse(url).map_err(|err| invalid(&err.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(invalid("the scheme must be postgres:// or postgresql://"));
        }
        PgConnectOptions::from_str(url).map_err(|err| invalid(&err.to_string()))?;
        Ok(PostgresConfig {
            url: Some(url.to_owned()),
            ..PostgresConfig::default()
        })
    }

    /// Sets [`table`](Self::table).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets [`lease`](Self::lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`retention`](Self::retention).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`purge_interval`](Self::purge_interval): how often the rows past their
    /// retention are deleted.
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = Some(interval);
        self
    }

    /// How often the rows past their retention are deleted:
    /// [`purge_interval`](Self::purge_interval) if set, else a quarter of the retention, at most
    /// [`MAX_DEFAULT_PURGE_INTERVAL`](Self::MAX_DEFAULT_PURGE_INTERVAL); never less than
    /// [`MIN_PURGE_INTERVAL`](Self::MIN_PURGE_INTERVAL).
    pub fn effective_purge_interval(&self) -> Duration {
        self.purge_interval
            .unwrap_or_else(|| (self.retention / 4).min(Self::MAX_DEFAULT_PURGE_INTERVAL))
            .max(Self::MIN_PURGE_INTERVAL)
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`query_timeout`](Self::query_timeout).
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Sets [`create_table`](Self::create_table).
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// The URL with its password hidden, if one was given.
    pub fn redacted_url(&self) -> Option<String> {
        self.url.as_deref().map(redact_url)
    }

    /// The URL, password included: for the driver only.
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The password in the URL, as written and decoded: what errors must not show.
    pub(crate) fn secrets(&self) -> Vec<String> {
        self.url.as_deref().map(secrets_of).unwrap_or_default()
    }

    /// Fails with an [`Error::Config`] on settings no store can run with.
    pub(crate) fn check(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::Config(format!("PostgreSQL store: {reason}")));
        if self.lease < Duration::from_millis(1) {
            return invalid(format!(
                "a lease of {:?} lets any claim be taken over at once: give at least 1ms",
                self.lease
            ));
        }
        for (what, value) in [("lease", self.lease), ("retention", self.retention)] {
            if value > Self::MAX_DURATION {
                return invalid(format!(
                    "a {what} of {value:?} is longer than the longest supported, {:?}",
                    Self::MAX_DURATION
                ));
            }
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        for (what, value) in [
            ("connect_timeout", self.connect_timeout),
            ("query_timeout", self.query_timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{what} must not be zero"));
            }
        }
        Ok(())
    }
}

impl Default for PostgresConfig {
    /// The defaults, without a URL: for
    /// [`PostgresStore::from_pool`](crate::PostgresStore::from_pool).
    fn default() -> Self {
        PostgresConfig {
            url: None,
            table: Self::DEFAULT_TABLE.to_owned(),
            lease: Self::DEFAULT_LEASE,
            retention: Self::DEFAULT_RETENTION,
            purge_interval: None,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            query_timeout: Self::DEFAULT_QUERY_TIMEOUT,
            create_table: true,
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("table", &self.table)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("purge_interval", &self.purge_interval)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("create_table", &self.create_table)
            .finish()
    }
}

/// The secrets of `url`: its password (as written and percent-decoded) and the values of
/// secret query parameters (`password=`).
fn secrets_of(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password() {
        secrets.push(password.to_owned());
        secrets.push(percent_decode(password));
    }
    for (name, value) in parsed.query_pairs() {
        if is_secret_param(&name) {
            secrets.push(value.into_owned());
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    secrets
}

/// `%XX` sequences decoded, as the driver reads a password; invalid ones kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_showing_the_password() {
        let config = PostgresConfig::new("postgres://u:p%40ss@h:5432/db?password=q").unwrap();
        assert_eq!(config.secrets(), ["p%40ss", "p@ss", "q"]);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("p%40ss") && !shown.contains("=q"),
            "{shown}"
        );
        for bad in [
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@h:notaport/db",
            "postgres://u:hunter2@[bad/db",
        ] {
            let err = PostgresConfig::new(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_purge_interval_follows_the_retention() {
        let config = PostgresConfig::default();
        assert_eq!(config.effective_purge_interval(), Duration::from_secs(3600));
        let config = config.retention(Duration::from_secs(60));
        assert_eq!(config.effective_purge_interval(), Duration::from_secs(15));
        let config = config.retention(Duration::from_millis(100));
        assert_eq!(config.effective_purge_interval(), Duration::from_secs(1));
        let config = config.purge_interval(Duration::from_secs(7));
        assert_eq!(config.effective_purge_interval(), Duration::from_secs(7));
    }

    #[test]
    fn impossible_settings_are_config_errors() {
        let ok = PostgresConfig::default();
        assert!(ok.check().is_ok());
        for bad in [
            ok.clone().lease(Duration::ZERO),
            ok.clone().retention(Duration::MAX),
            ok.clone().max_connections(0),
            ok.clone().connect_timeout(Duration::ZERO),
        ] {
            assert!(matches!(bad.check(), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
