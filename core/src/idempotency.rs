//! Idempotent handling: each message id is handled once per handler, however often it is
//! delivered.

use crate::error::Result;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The answer of [`IdempotencyStore::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The id is not handled yet and is now claimed by the caller, who must call
    /// [`complete`](IdempotencyStore::complete) or [`abandon`](IdempotencyStore::abandon).
    Acquired,
    /// The id was handled already: skip it.
    AlreadyHandled,
}

/// Remembers which message ids were handled, per scope (one scope per handler).
///
/// An id counts as handled only once [`complete`](Self::complete) was called for it, that
/// is after its handler succeeded. While one caller holds a claim, [`begin`](Self::begin)
/// for the same id waits, so two concurrent deliveries of one id run the handler once.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + Debug {
    /// Claims `id` in `scope`, waiting while another claim on it is in progress.
    async fn begin(&self, scope: &str, id: &str) -> Result<Claim>;

    /// Records `id` as handled and releases the claim.
    async fn complete(&self, scope: &str, id: &str) -> Result<()>;

    /// Releases the claim without recording `id` as handled (the handler failed).
    async fn abandon(&self, scope: &str, id: &str) -> Result<()>;
}

#[async_trait]
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for std::sync::Arc<S> {
    async fn begin(&self, scope: &str, id: &str) -> Result<Claim> {
        (**self).begin(scope, id).await
    }

    async fn complete(&self, scope: &str, id: &str) -> Result<()> {
        (**self).complete(scope, id).await
    }

    async fn abandon(&self, scope: &str, id: &str) -> Result<()> {
        (**self).abandon(scope, id).await
    }
}

/// An in-memory [`IdempotencyStore`], bounded in size and age.
///
/// It remembers at most `capacity` handled ids per scope, each for at most `ttl`; the
/// oldest are forgotten first. It lives in one process: deliveries handled by another process or
/// before a restart are not known to it.
///
/// ```
/// use event_binder_core::{Claim, IdempotencyStore, MemoryIdempotencyStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryIdempotencyStore::new();
/// assert_eq!(store.begin("billing", "id-1").await?, Claim::Acquired);
/// store.complete("billing", "id-1").await?;
/// assert_eq!(store.begin("billing", "id-1").await?, Claim::AlreadyHandled);
/// assert_eq!(store.begin("shipping", "id-1").await?, Claim::Acquired);
/// # Ok::<(), event_binder_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryIdempotencyStore {
    scopes: Mutex<HashMap<String, Scope>>,
    released: Notify,
    capacity: usize,
    ttl: Duration,
}

/// One scope's ids. A handled id's key is shared by the map and the eviction queue.
#[derive(Debug, Default)]
struct Scope {
    entries: HashMap<Arc<str>, Entry>,
    /// Handled ids in the order they were completed, for eviction.
    handled: VecDeque<(Arc<str>, Instant)>,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    InProgress,
    Handled(Instant),
}

impl Scope {
    fn evict(&mut self, capacity: usize, ttl: Duration, now: Instant) {
        while let Some((key, completed)) = self.handled.front() {
            let expired = now.duration_since(*completed) >= ttl;
            if self.handled.len() <= capacity && !expired {
                break;
            }
            if matches!(self.entries.get(key), Some(Entry::Handled(at)) if at == completed) {
                self.entries.remove(key);
            }
            self.handled.pop_front();
        }
    }
}

impl MemoryIdempotencyStore {
    /// The default number of handled ids remembered per scope.
    pub const DEFAULT_CAPACITY: usize = 100_000;
    /// The default time a handled id is remembered.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

    /// A store with the default capacity and TTL.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_CAPACITY, Self::DEFAULT_TTL)
    }

    /// A store remembering at most `capacity` ids (at least 1) per scope, each for at most
    /// `ttl`.
    pub fn with_limits(capacity: usize, ttl: Duration) -> Self {
        MemoryIdempotencyStore {
            scopes: Mutex::new(HashMap::new()),
            released: Notify::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Runs `update` on a scope's ids under the lock.
    fn with_scope<T>(&self, scope: &str, update: impl FnOnce(&mut Scope) -> T) -> T {
        // A panic while holding this lock leaves the maps consistent: every update is a
        // single insert or remove.
        let mut scopes = self
            .scopes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ids) = scopes.get_mut(scope) {
            return update(ids);
        }
        update(scopes.entry(scope.to_owned()).or_default())
    }
}

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn begin(&self, scope: &str, id: &str) -> Result<Claim> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let claim = self.with_scope(scope, |ids| {
                let now = Instant::now();
                match ids.entries.get(id) {
                    Some(Entry::InProgress) => None,
                    Some(Entry::Handled(at)) if now.duration_since(*at) < self.ttl => {
                        Some(Claim::AlreadyHandled)
                    }
                    _ => {
                        ids.entries.insert(id.into(), Entry::InProgress);
                        Some(Claim::Acquired)
                    }
                }
            });
            match claim {
                Some(claim) => return Ok(claim),
                None => released.await,
            }
        }
    }

    async fn complete(&self, scope: &str, id: &str) -> Result<()> {
        self.with_scope(scope, |ids| {
            let now = Instant::now();
            let key = ids
                .entries
                .get_key_value(id)
                .map_or_else(|| Arc::from(id), |(key, _)| key.clone());
            ids.entries.insert(key.clone(), Entry::Handled(now));
            ids.handled.push_back((key, now));
            ids.evict(self.capacity, self.ttl, now);
        });
        self.released.notify_waiters();
        Ok(())
    }

    async fn abandon(&self, scope: &str, id: &str) -> Result<()> {
        self.with_scope(scope, |ids| {
            if matches!(ids.entries.get(id), Some(Entry::InProgress)) {
                ids.entries.remove(id);
            }
        });
        self.released.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn abandoned_ids_can_be_claimed_again() {
        let store = MemoryIdempotencyStore::new();
        assert_eq!(store.begin("s", "a").await.unwrap(), Claim::Acquired);
        store.abandon("s", "a").await.unwrap();
        assert_eq!(store.begin("s", "a").await.unwrap(), Claim::Acquired);
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_and_then_skips() {
        let store = Arc::new(MemoryIdempotencyStore::new());
        assert_eq!(store.begin("s", "a").await.unwrap(), Claim::Acquired);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.begin("s", "a").await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        store.complete("s", "a").await.unwrap();
        assert_eq!(waiter.await.unwrap(), Claim::AlreadyHandled);
    }

    #[tokio::test]
    async fn capacity_forgets_the_oldest() {
        let store = MemoryIdempotencyStore::with_limits(2, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            store.begin("s", id).await.unwrap();
            store.complete("s", id).await.unwrap();
        }
        assert_eq!(store.begin("s", "a").await.unwrap(), Claim::Acquired);
        assert_eq!(store.begin("s", "c").await.unwrap(), Claim::AlreadyHandled);
    }

    #[tokio::test]
    async fn expired_ids_are_forgotten() {
        let store = MemoryIdempotencyStore::with_limits(10, Duration::ZERO);
        store.begin("s", "a").await.unwrap();
        store.complete("s", "a").await.unwrap();
        assert_eq!(store.begin("s", "a").await.unwrap(), Claim::Acquired);
    }
}
