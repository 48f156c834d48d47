//! The Redis idempotency store of event-binder: which message ids were handled, kept in
//! Redis, so that every instance of a service, and the same instance after a restart, skips
//! what one of them handled already.
//!
//! [`RedisStore`] implements [`IdempotencyStore`]: give it to an app with
//! [`App::idempotency`](event_binder_core::App::idempotency).
//!
//! ```no_run
//! # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
//! use event_binder_core::{App, Context, Handler, HandlerSpec, Raw};
//! use event_binder_redis::{RedisConfig, RedisStore};
//! use std::time::Duration;
//!
//! // The defaults: prefix `event-binder:handled:`, a lease of 5 minutes, a retention of 7 days.
//! let store = RedisStore::connect("redis://:secret@127.0.0.1:6379/0").await?;
//! # let _ = store;
//! // Or with settings of its own.
//! let store = RedisStore::with_config(
//!     RedisConfig::new("redis://:secret@127.0.0.1:6379/0")
//!         .prefix("billing:handled:")
//!         .lease(Duration::from_secs(60))
//!         .retention(Duration::from_secs(3 * 24 * 60 * 60)),
//! )
//! .await?;
//!
//! let app = App::new(channel)
//!     .idempotency(store)
//!     .handler(Handler::from_fn(
//!         HandlerSpec::new("bill", "orders").group("billing"),
//!         |_event: Raw, _ctx: Context| async move { Ok::<_, std::io::Error>(()) },
//!     ));
//! let running = app.start().await?;
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # What it keeps
//!
//! One Redis key per (scope, message id), under the store's prefix:
//! `{prefix}{byte length of the scope}:{scope}:{id}`; the length makes the key unambiguous
//! whatever `:` the scope and the id contain ([`RedisStore::key`]). Its value is `handled`
//! for a handled id, or `claimed:{holder}` while a holder handles it. A claim expires with
//! the store's lease and a handled id with its retention, by Redis's own key expiry: Redis
//! forgets them by itself, and a claim whose holder crashed is free again once its lease
//! has run out. Every check-and-set is atomic (a Lua script, or one `SET`), so two
//! instances claiming one id at once never both acquire it.
//!
//! # Durability
//!
//! Handled ids survive a restart of Redis only if Redis persists them: configure it with
//! the append-only file (`appendonly yes`, with `appendfsync everysec` or `always`) for
//! durability. Without it (no persistence, or only RDB snapshots, which lose what was
//! written since the last one), a Redis restart forgets handled ids and claims: messages
//! delivered again after that are handled again. At-least-once delivery still holds;
//! duplicates become possible. Likewise, a Redis whose `maxmemory-policy` is not
//! `noeviction` may evict handled ids (every key of the store has an expiry) when its
//! memory runs short.
//!
//! # Connection
//!
//! The store holds one multiplexed connection, re-established in the background when it
//! is lost ([`redis::aio::ConnectionManager`]). Every call answers within the configured
//! [timeout](RedisConfig::timeout): while Redis is down, calls fail with
//! [`Error::Idempotency`] (the runtime hands the message back to the broker, to be delivered
//! again) and succeed again once it is back. Neither errors, `Debug` nor `Display` ever
//! show the password of the URL.

use async_trait::async_trait;
use event_binder_core::{
    hide_secrets, redact_url, Claim, ClaimKey, Error, IdempotencyStore, Result,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError, RedisResult, Script};
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The value of a handled id's key.
const HANDLED: &str = "handled";
/// What the value of a claimed id's key starts with, followed by the holder.
const CLAIMED: &str = "claimed:";

/// What the begin script answers first: the id was acquired, is handled, or is claimed.
const ACQUIRED: i64 = 0;
const ALREADY_HANDLED: i64 = 1;
const HELD: i64 = 2;

/// `KEYS[1]`: the id's key; `ARGV[1]`: the claim's value; `ARGV[2]`: the lease in ms.
/// Answers `{state, remaining lease in ms}`.
const BEGIN: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return {0, 0}
end
if current == 'handled' then
    return {1, 0}
end
return {2, redis.call('PTTL', KEYS[1])}
";

/// `KEYS[1]`: the id's key; `ARGV[1]`: the holder's claim. Deletes the key only if it is
/// that claim.
const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// The longest lease or retention Redis is given (it refuses expiry times that overflow).
const MAX_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How [`RedisStore`] connects and how long it keeps claims and handled ids.
///
/// ```
/// use event_binder_redis::RedisConfig;
/// use std::time::Duration;
///
/// let config = RedisConfig::new("redis://:hunter2@127.0.0.1:6379/0")
///     .prefix("orders:handled:")
///     .lease(Duration::from_secs(60))
///     .retention(Duration::from_secs(24 * 60 * 60))
///     .timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    prefix: String,
    lease: Duration,
    retention: Duration,
    timeout: Duration,
}

impl RedisConfig {
    /// The default prefix of every key the store writes.
    pub const DEFAULT_PREFIX: &'static str = "event-binder:handled:";
    /// The default lease: how long a claim lasts if its holder neither completes nor
    /// abandons it.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5 * 60);
    /// The default retention: how long a handled id is remembered.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    /// The default timeout of connecting and of each call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The defaults, for the Redis at `url`: `redis://[[user]:password@]host[:port][/db]`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            lease: Self::DEFAULT_LEASE,
            retention: Self::DEFAULT_RETENTION,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// The prefix of every key the store writes ([`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX)
    /// by default): stores with different prefixes share nothing.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a claim lasts if its holder neither completes nor abandons it (a crashed
    /// instance): another instance can claim the id after that. It must outlast the
    /// handler's longest run (bound it with a handler timeout). At least 1 ms;
    /// [`DEFAULT_LEASE`](Self::DEFAULT_LEASE) by default.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a handled id is remembered: a message delivered again within it is
    /// skipped. At least 1 ms; [`DEFAULT_RETENTION`](Self::DEFAULT_RETENTION) by default.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long connecting, and each call of the store, may take before it fails: a Redis
    /// that is down or unreachable gives an error within it, not a hang. More than zero;
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT) by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What went wrong in the Redis store. It converts into [`event_binder_core::Error`]: an
/// invalid URL or setting into [`Error::Config`], the others into [`Error::Idempotency`].
/// No variant ever holds the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL or a setting of [`RedisConfig`] is invalid.
    #[error("Redis store: invalid configuration for {url}: {reason}")]
    InvalidConfig {
        /// The URL, its password replaced with `***`.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Redis refused or failed an operation, or could not be reached.
    #[error("{operation} on Redis at {url} failed: {message}")]
    Redis {
        /// What the store was doing: `connect`, `begin`, `complete` or `abandon`.
        operation: &'static str,
        /// The URL, its password replaced with `***`.
        url: String,
        /// What the Redis client said, any password in it replaced with `***`.
        message: String,
    },
    /// Redis gave no answer in time.
    #[error("{operation} on Redis at {url} gave no answer within {after:?}")]
    Timeout {
        /// What the store was doing: `connect`, `begin`, `complete` or `abandon`.
        operation: &'static str,
        /// The URL, its password replaced with `***`.
        url: String,
        /// The store's timeout.
        after: Duration,
    },
}

impl From<RedisStoreError> for Error {
    fn from(err: RedisStoreError) -> Self {
        match err {
            RedisStoreError::InvalidConfig { .. } => Error::Config(err.to_string()),
            err => Error::Idempotency(Box::new(err)),
        }
    }
}

/// A durable [`IdempotencyStore`] in Redis. See [the crate docs](crate) for what it keeps
/// and what durability it needs from Redis.
///
/// Each call is one round trip (a Lua script, or one `SET`). [`begin`](IdempotencyStore::begin)
/// on an id another claim holds answers [`Claim::HeldElsewhere`] at once, with the time
/// left on that claim's lease as `retry_in` (between [`MIN_RETRY_IN`](Self::MIN_RETRY_IN)
/// and [`MAX_RETRY_IN`](Self::MAX_RETRY_IN)); claims are not reentrant.
pub struct RedisStore {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    connection: Mutex<Connection>,
    /// The URL, password hidden.
    url: String,
    /// The password as written in the URL and as decoded, hidden from error texts.
    secrets: Vec<String>,
    prefix: String,
    lease_ms: u64,
    retention_ms: u64,
    lease: Duration,
    retention: Duration,
    timeout: Duration,
    begin: Script,
    abandon: Script,
}

/// The store's connection manager, and how many times it was replaced.
struct Connection {
    manager: ConnectionManager,
    generation: u64,
}

impl RedisStore {
    /// The shortest `retry_in` of [`Claim::HeldElsewhere`].
    pub const MIN_RETRY_IN: Duration = Duration::from_millis(10);
    /// The longest `retry_in` of [`Claim::HeldElsewhere`], however long the claim's lease
    /// still runs: its holder usually completes or abandons it well before.
    pub const MAX_RETRY_IN: Duration = Duration::from_secs(30);

    /// Connects to the Redis at `url` (`redis://[[user]:password@]host[:port][/db]`) with
    /// the defaults of [`RedisConfig`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(RedisConfig::new(url)).await
    }

    /// Connects as `config` says. Fails with [`Error::Config`] for an invalid URL or
    /// setting, and with [`Error::Idempotency`] when Redis cannot be reached or refuses the
    /// credentials (within the configured timeout).
    pub async fn with_config(config: RedisConfig) -> Result<Self> {
        let RedisConfig {
            url: raw_url,
            prefix,
            lease,
            retention,
            timeout,
        } = config;
        let url = redact_url(&raw_url);
        let mut secrets: Vec<String> = url_password(&raw_url)
            .filter(|password| !password.is_empty())
            .map(str::to_owned)
            .into_iter()
            .collect();
        let invalid = |reason: String, secrets: &[String]| RedisStoreError::InvalidConfig {
            url: url.clone(),
            reason: hide(&reason, secrets),
        };
        let info = raw_url
            .as_str()
            .into_connection_info()
            .map_err(|err| invalid(err.to_string(), &secrets))?;
        if let Some(password) = info.redis_settings().password() {
            if !password.is_empty() && !secrets.iter().any(|s| s == password) {
                secrets.push(password.to_owned());
            }
        }
        let lease_ms = expiry_ms("lease", lease).map_err(|reason| invalid(reason, &secrets))?;
        let retention_ms =
            expiry_ms("retention", retention).map_err(|reason| invalid(reason, &secrets))?;
        if timeout.is_zero() {
            return Err(invalid("the timeout must be more than zero".into(), &secrets).into());
        }
        let client = redis::Client::open(info).map_err(|err| invalid(err.to_string(), &secrets))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // A few quick attempts, then the error; the next call tries again.
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let connecting = ConnectionManager::new_with_config(client.clone(), manager_config.clone());
        let manager = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(err)) => {
                return Err(RedisStoreError::Redis {
                    operation: "connect",
                    url,
                    message: hide(&err.to_string(), &secrets),
                }
                .into())
            }
            Err(_) => {
                return Err(RedisStoreError::Timeout {
                    operation: "connect",
                    url,
                    after: timeout,
                }
                .into())
            }
        };
        Ok(RedisStore {
            client,
            manager_config,
            connection: Mutex::new(Connection {
                manager,
                generation: 0,
            }),
            url,
            secrets,
            prefix,
            lease_ms,
            retention_ms,
            lease,
            retention,
            timeout,
            begin: Script::new(BEGIN),
            abandon: Script::new(ABANDON),
        })
    }

    /// The Redis key of `id` in `scope`: `{prefix}{byte length of scope}:{scope}:{id}`,
    /// for looking at what the store keeps with `redis-cli`.
    ///
    /// ```no_run
    /// # async fn demo() -> event_binder_core::Result<()> {
    /// let store = event_binder_redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// assert_eq!(store.key("orders/billing/bill", "42"), "event-binder:handled:19:orders/billing/bill:42");
    /// # Ok(()) }
    /// ```
    pub fn key(&self, scope: &str, id: &str) -> String {
        format!("{}{}:{scope}:{id}", self.prefix, scope.len())
    }

    /// The prefix of every key of this store.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How long a claim lasts if its holder neither completes nor abandons it.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long a handled id is remembered.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The connection manager to send a call on, and its generation.
    fn manager(&self) -> (ConnectionManager, u64) {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (connection.manager.clone(), connection.generation)
    }

    /// Replaces the connection manager of `generation` (not a newer one) with a new one
    /// that connects on first use: a connection that stopped answering is never given
    /// another call, while the manager only replaces connections it sees closed.
    fn renew(&self, generation: u64) {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connection.generation != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.manager_config.clone(),
        ) {
            Ok(manager) => {
                tracing::warn!(url = %self.url, "Redis gave no answer in time; opening a new connection");
                connection.manager = manager;
                connection.generation += 1;
            }
            Err(err) => {
                tracing::warn!(url = %self.url, error = %hide(&err.to_string(), &self.secrets), "could not renew the Redis connection");
            }
        }
    }

    /// Runs `call` on the connection, within the store's timeout; once more at once if the
    /// connection was lost (the manager reconnects meanwhile). Every call is idempotent but
    /// `begin`'s, whose second attempt answers [`Claim::HeldElsewhere`] if the first one
    /// acquired the claim but its answer was lost: as a retried delivery would.
    async fn call<T, F, Fut>(&self, operation: &'static str, call: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (manager, generation) = self.manager();
        let attempts = async {
            match call(manager).await {
                Err(err) if err.is_connection_dropped() || err.is_unrecoverable_error() => {
                    tracing::debug!(url = %self.url, operation, error = %hide(&err.to_string(), &self.secrets), "Redis connection lost; trying again");
                    call(self.manager().0).await
                }
                answer => answer,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if err.is_timeout() {
                    self.renew(generation);
                }
                Err(self.error(operation, &err).into())
            }
            Err(_) => {
                self.renew(generation);
                Err(RedisStoreError::Timeout {
                    operation,
                    url: self.url.clone(),
                    after: self.timeout,
                }
                .into())
            }
        }
    }

    fn error(&self, operation: &'static str, err: &RedisError) -> RedisStoreError {
        RedisStoreError::Redis {
            operation,
            url: self.url.clone(),
            message: hide(&err.to_string(), &self.secrets),
        }
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim> {
        let redis_key = self.key(key.scope, key.id);
        let claim = format!("{CLAIMED}{}", key.holder);
        let (redis_key, claim) = (&redis_key, &claim);
        let (state, pttl): (i64, i64) = self
            .call("begin", |mut manager| async move {
                self.begin
                    .key(redis_key)
                    .arg(claim)
                    .arg(self.lease_ms)
                    .invoke_async(&mut manager)
                    .await
            })
            .await?;
        Ok(match state {
            ACQUIRED => Claim::Acquired,
            ALREADY_HANDLED => Claim::AlreadyHandled,
            HELD => Claim::HeldElsewhere {
                retry_in: retry_in(pttl),
            },
            other => {
                return Err(RedisStoreError::Redis {
                    operation: "begin",
                    url: self.url.clone(),
                    message: format!("unexpected answer {other} of the claim script"),
                }
                .into())
            }
        })
    }

    async fn complete(&self, key: ClaimKey<'_>) -> Result<()> {
        let redis_key = &self.key(key.scope, key.id);
        self.call("complete", |mut manager| async move {
            redis::cmd("SET")
                .arg(redis_key)
                .arg(HANDLED)
                .arg("PX")
                .arg(self.retention_ms)
                .query_async::<()>(&mut manager)
                .await
        })
        .await
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()> {
        let redis_key = self.key(key.scope, key.id);
        let claim = format!("{CLAIMED}{}", key.holder);
        let (redis_key, claim) = (&redis_key, &claim);
        self.call("abandon", |mut manager| async move {
            self.abandon
                .key(redis_key)
                .arg(claim)
                .invoke_async::<i64>(&mut manager)
                .await
        })
        .await?;
        Ok(())
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Redis idempotency store at {} (prefix {:?})",
            self.url, self.prefix
        )
    }
}

/// `retry_in` for a claim with `pttl` ms left (negative if Redis knows no expiry).
fn retry_in(pttl: i64) -> Duration {
    let left = u64::try_from(pttl).map_or(RedisStore::MAX_RETRY_IN, Duration::from_millis);
    left.clamp(RedisStore::MIN_RETRY_IN, RedisStore::MAX_RETRY_IN)
}

/// `expiry` in whole milliseconds, at least 1, for `PX`.
fn expiry_ms(what: &str, expiry: Duration) -> std::result::Result<u64, String> {
    if expiry < Duration::from_millis(1) {
        return Err(format!("the {what} must be at least 1 ms, not {expiry:?}"));
    }
    if expiry > MAX_EXPIRY {
        return Err(format!(
            "the {what} must be at most {MAX_EXPIRY:?}, not {expiry:?}"
        ));
    }
    // At most MAX_EXPIRY: it fits.
    Ok(u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX))
}

/// The password of `scheme://user:password@host…` as written (percent-encoded or not).
fn url_password(url: &str) -> Option<&str> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |end| start + end);
    let at = url[start..authority_end].rfind('@')? + start;
    url[start..at].split_once(':').map(|(_, password)| password)
}

/// `text` with each of `secrets` replaced with `***`.
fn hide(text: &str, secrets: &[String]) -> String {
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    hide_secrets(text, &secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_in_is_bounded() {
        assert_eq!(retry_in(0), RedisStore::MIN_RETRY_IN);
        assert_eq!(retry_in(-1), RedisStore::MAX_RETRY_IN);
        assert_eq!(retry_in(1_500), Duration::from_millis(1_500));
        assert_eq!(retry_in(300_000), RedisStore::MAX_RETRY_IN);
    }

    #[test]
    fn the_password_is_found_as_written() {
        assert_eq!(url_password("redis://:p%40ss@h:6379/0"), Some("p%40ss"));
        assert_eq!(url_password("redis://u:pw@h"), Some("pw"));
        assert_eq!(url_password("redis://u@h"), None);
        assert_eq!(url_password("redis://h:6379/0?a=b@c"), None);
    }

    #[test]
    fn expiries_are_checked() {
        assert!(expiry_ms("lease", Duration::ZERO).is_err());
        assert!(expiry_ms("lease", Duration::from_micros(999)).is_err());
        assert_eq!(expiry_ms("lease", Duration::from_millis(1)), Ok(1));
        assert!(expiry_ms("lease", Duration::MAX).is_err());
    }

    #[tokio::test]
    async fn invalid_settings_are_config_errors_without_the_password() {
        for config in [
            RedisConfig::new("redis://:hunter2@127.0.0.1:6379").lease(Duration::ZERO),
            RedisConfig::new("redis://:hunter2@127.0.0.1:6379").retention(Duration::ZERO),
            RedisConfig::new("redis://:hunter2@127.0.0.1:6379").timeout(Duration::ZERO),
            RedisConfig::new("notredis://:hunter2@127.0.0.1:6379"),
        ] {
            let err = RedisStore::with_config(config).await.unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
    }
}
