//! Idempotent handling: each message id is handled once per handler, however often it is
//! delivered.

use crate::error::Result;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::Mutex;
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
/// It remembers at most `capacity` handled ids, each for at most `ttl`; the oldest are
/// forgotten first. It lives in one process: deliveries handled by another process or
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
    state: Mutex<State>,
    released: Notify,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Handled ids in the order they were completed, for eviction.
    handled: VecDeque<(String, Instant)>,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    InProgress,
    Handled(Instant),
}

impl MemoryIdempotencyStore {
    /// The default number of handled ids remembered.
    pub const DEFAULT_CAPACITY: usize = 100_000;
    /// The default time a handled id is remembered.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

    /// A store with the default capacity and TTL.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_CAPACITY, Self::DEFAULT_TTL)
    }

    /// A store remembering at most `capacity` ids (at least 1), each for at most `ttl`.
    pub fn with_limits(capacity: usize, ttl: Duration) -> Self {
        MemoryIdempotencyStore {
            state: Mutex::new(State::default()),
            released: Notify::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the maps consistent: every update is a
        // single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn evict(&self, state: &mut State, now: Instant) {
        while let Some((key, completed)) = state.handled.front() {
            let expired = now.duration_since(*completed) >= self.ttl;
            if state.handled.len() <= self.capacity && !expired {
                break;
            }
            if matches!(state.entries.get(key), Some(Entry::Handled(at)) if at == completed) {
                state.entries.remove(key);
            }
            state.handled.pop_front();
        }
    }
}

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self::new()
    }
}

fn entry_key(scope: &str, id: &str) -> String {
    let mut key = String::with_capacity(scope.len() + id.len() + 1);
    key.push_str(scope);
    key.push('\0');
    key.push_str(id);
    key
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn begin(&self, scope: &str, id: &str) -> Result<Claim> {
        let key = entry_key(scope, id);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.lock();
                let now = Instant::now();
                match state.entries.get(&key) {
                    Some(Entry::InProgress) => {}
                    Some(Entry::Handled(at)) if now.duration_since(*at) < self.ttl => {
                        return Ok(Claim::AlreadyHandled)
                    }
                    _ => {
                        state.entries.insert(key, Entry::InProgress);
                        return Ok(Claim::Acquired);
                    }
                }
            }
            released.await;
        }
    }

    async fn complete(&self, scope: &str, id: &str) -> Result<()> {
        let key = entry_key(scope, id);
        {
            let mut state = self.lock();
            let now = Instant::now();
            state.entries.insert(key.clone(), Entry::Handled(now));
            state.handled.push_back((key, now));
            self.evict(&mut state, now);
        }
        self.released.notify_waiters();
        Ok(())
    }

    async fn abandon(&self, scope: &str, id: &str) -> Result<()> {
        let key = entry_key(scope, id);
        {
            let mut state = self.lock();
            if matches!(state.entries.get(&key), Some(Entry::InProgress)) {
                state.entries.remove(&key);
            }
        }
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
