//! Idempotent handling: each message id is handled once per handler, however often it is
//! delivered.

use crate::error::Result;
use crate::message::Message;
use async_trait::async_trait;
use hashbrown::hash_map::RawEntryMut;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
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
/// before a restart are not known to it. Each scope has a lock of its own, so handlers do
/// not wait on each other; an [`App`](crate::App) using this store calls it directly, with
/// no boxed future per message.
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
    scopes: Mutex<HashMap<String, Arc<ScopeIds>>>,
    limits: Limits,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    capacity: usize,
    ttl: Duration,
}

/// One scope's ids, with the lock and the wake-up its claims share.
#[derive(Debug)]
pub(crate) struct ScopeIds {
    ids: Mutex<Ids>,
    /// The map's own hasher, so that an id is hashed outside the lock, once per delivery.
    hasher: RandomState,
    released: Notify,
    limits: Limits,
}

/// A handled id's key is shared by the map and the eviction queue.
#[derive(Debug)]
struct Ids {
    entries: hashbrown::HashMap<Arc<str>, Entry, RandomState>,
    /// Handled ids in the order they were completed, with their hashes, for eviction.
    handled: VecDeque<Handled>,
    /// How many callers of `begin` wait for a claim in this scope to be released.
    waiting: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    InProgress,
    Handled(Instant),
}

#[derive(Debug)]
struct Handled {
    id: Arc<str>,
    hash: u64,
    at: Instant,
}

/// A message id, hashed once for all the operations of one delivery on the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdProbe<'a> {
    id: &'a str,
    /// The message's own shared id, kept by the store without a copy.
    shared: Option<&'a Arc<str>>,
    hash: u64,
}

impl IdProbe<'_> {
    fn to_key(self) -> Arc<str> {
        self.shared.cloned().unwrap_or_else(|| self.id.into())
    }
}

impl Ids {
    /// The entry of `probe`.
    fn entry<'a>(
        &'a mut self,
        probe: IdProbe<'_>,
    ) -> RawEntryMut<'a, Arc<str>, Entry, RandomState> {
        self.entries
            .raw_entry_mut()
            .from_key_hashed_nocheck(probe.hash, probe.id)
    }

    fn evict(&mut self, limits: Limits, now: Instant) {
        while let Some(oldest) = self.handled.front() {
            // The age is only worth reading while the capacity holds.
            if self.handled.len() <= limits.capacity && now.duration_since(oldest.at) < limits.ttl {
                break;
            }
            let Some(Handled { id, hash, at }) = self.handled.pop_front() else {
                break;
            };
            // The id may have been claimed and handled again since: only its latest
            // completion removes it.
            let entry = self
                .entries
                .raw_entry_mut()
                .from_hash(hash, |key| *key == id);
            if let RawEntryMut::Occupied(entry) = entry {
                if *entry.get() == Entry::Handled(at) {
                    entry.remove();
                }
            }
        }
    }
}

impl ScopeIds {
    fn new(limits: Limits) -> Self {
        let entries = hashbrown::HashMap::with_hasher(RandomState::new());
        ScopeIds {
            hasher: entries.hasher().clone(),
            ids: Mutex::new(Ids {
                entries,
                handled: VecDeque::new(),
                waiting: 0,
            }),
            released: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ids> {
        // A panic while holding this lock leaves the maps consistent: every update is a
        // single insert or remove.
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `id` ready for the calls of one delivery; `shared`, if given, is the same id as the
    /// message shares it.
    pub(crate) fn probe<'a>(&self, id: &'a str, shared: Option<&'a Arc<str>>) -> IdProbe<'a> {
        IdProbe {
            id,
            shared,
            hash: self.hasher.hash_one(id),
        }
    }

    /// Claims `id`, or says it was handled; `None` while another caller holds its claim.
    fn try_begin(&self, probe: IdProbe<'_>) -> Option<Claim> {
        let ttl = self.limits.ttl;
        match self.lock().entry(probe) {
            RawEntryMut::Occupied(mut entry) => match *entry.get() {
                Entry::InProgress => None,
                Entry::Handled(at) if at.elapsed() < ttl => Some(Claim::AlreadyHandled),
                Entry::Handled(_) => {
                    entry.insert(Entry::InProgress);
                    Some(Claim::Acquired)
                }
            },
            RawEntryMut::Vacant(entry) => {
                entry.insert_hashed_nocheck(probe.hash, probe.to_key(), Entry::InProgress);
                Some(Claim::Acquired)
            }
        }
    }

    pub(crate) async fn begin(&self, probe: IdProbe<'_>) -> Claim {
        if let Some(claim) = self.try_begin(probe) {
            return claim;
        }
        self.lock().waiting += 1;
        let _waiting = Waiting(self);
        loop {
            // Listening before looking again: a release between the look and the wait
            // still wakes this caller.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(claim) = self.try_begin(probe) {
                return claim;
            }
            released.await;
        }
    }

    pub(crate) fn complete(&self, probe: IdProbe<'_>) {
        let now = Instant::now();
        let waiting = {
            let mut ids = self.lock();
            let id = match ids.entry(probe) {
                RawEntryMut::Occupied(mut entry) => {
                    let (key, entry) = entry.get_key_value_mut();
                    *entry = Entry::Handled(now);
                    key.clone()
                }
                RawEntryMut::Vacant(entry) => {
                    let key = probe.to_key();
                    entry.insert_hashed_nocheck(probe.hash, key.clone(), Entry::Handled(now));
                    key
                }
            };
            ids.handled.push_back(Handled {
                id,
                hash: probe.hash,
                at: now,
            });
            ids.evict(self.limits, now);
            ids.waiting
        };
        if waiting > 0 {
            self.released.notify_waiters();
        }
    }

    pub(crate) fn abandon(&self, probe: IdProbe<'_>) {
        let waiting = {
            let mut ids = self.lock();
            if let RawEntryMut::Occupied(entry) = ids.entry(probe) {
                if *entry.get() == Entry::InProgress {
                    entry.remove();
                }
            }
            ids.waiting
        };
        if waiting > 0 {
            self.released.notify_waiters();
        }
    }
}

/// Counts a caller of [`ScopeIds::begin`] as waiting until it returns or is dropped.
struct Waiting<'a>(&'a ScopeIds);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
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
            limits: Limits {
                capacity: capacity.max(1),
                ttl,
            },
        }
    }

    /// The ids of `scope`, created on first use.
    pub(crate) fn scope(&self, scope: &str) -> Arc<ScopeIds> {
        let mut scopes = self
            .scopes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ids) = scopes.get(scope) {
            return ids.clone();
        }
        let ids = Arc::new(ScopeIds::new(self.limits));
        scopes.insert(scope.to_owned(), ids.clone());
        ids
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
        let ids = self.scope(scope);
        Ok(ids.begin(ids.probe(id, None)).await)
    }

    async fn complete(&self, scope: &str, id: &str) -> Result<()> {
        let ids = self.scope(scope);
        ids.complete(ids.probe(id, None));
        Ok(())
    }

    async fn abandon(&self, scope: &str, id: &str) -> Result<()> {
        let ids = self.scope(scope);
        ids.abandon(ids.probe(id, None));
        Ok(())
    }
}

/// An app's idempotency store: the in-memory one, called directly, or any other through
/// its trait.
#[derive(Debug, Clone)]
pub(crate) enum AppStore {
    Memory(Arc<MemoryIdempotencyStore>),
    Other(Arc<dyn IdempotencyStore>),
}

impl AppStore {
    pub(crate) fn new<S: IdempotencyStore + 'static>(store: S) -> Self {
        let store = Arc::new(store);
        let any: Arc<dyn Any + Send + Sync> = store.clone();
        match any.downcast::<MemoryIdempotencyStore>() {
            Ok(memory) => AppStore::Memory(memory),
            Err(any) => match any.downcast::<Arc<MemoryIdempotencyStore>>() {
                Ok(shared) => AppStore::Memory(Arc::clone(&shared)),
                Err(_) => AppStore::Other(store),
            },
        }
    }

    /// The store as one handler uses it, for ids of `scope`.
    pub(crate) fn scoped(&self, scope: Arc<str>) -> ScopedStore {
        match self {
            AppStore::Memory(memory) => ScopedStore::Memory(memory.scope(&scope)),
            AppStore::Other(store) => ScopedStore::Other {
                store: store.clone(),
                scope,
            },
        }
    }
}

/// One handler's view of the app's store.
#[derive(Debug)]
pub(crate) enum ScopedStore {
    Memory(Arc<ScopeIds>),
    Other {
        store: Arc<dyn IdempotencyStore>,
        scope: Arc<str>,
    },
}

/// A message id as one handler's store looks it up: hashed once per delivery in memory,
/// as given for other stores.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreId<'a> {
    Memory(IdProbe<'a>),
    Other(&'a str),
}

impl ScopedStore {
    /// The id of `message`, ready for the calls of one delivery.
    pub(crate) fn id<'a>(&self, message: &'a Message) -> StoreId<'a> {
        match self {
            ScopedStore::Memory(ids) => {
                StoreId::Memory(ids.probe(message.id(), Some(message.shared_id())))
            }
            ScopedStore::Other { .. } => StoreId::Other(message.id()),
        }
    }

    /// As [`begin`](Self::begin), but `None` at once for an id claimed already, where the
    /// store can tell (in memory): a batch holding its own claim on the id must not wait
    /// for itself. Other stores wait as `begin` does, so check the batch first.
    pub(crate) async fn begin_unless_held(&self, id: StoreId<'_>) -> Result<Option<Claim>> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => Ok(ids.try_begin(probe)),
            _ => self.begin(id).await.map(Some),
        }
    }

    /// Whether [`begin_unless_held`](Self::begin_unless_held) tells a held claim.
    pub(crate) fn tells_held_claims(&self) -> bool {
        matches!(self, ScopedStore::Memory(_))
    }

    pub(crate) async fn begin(&self, id: StoreId<'_>) -> Result<Claim> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => Ok(ids.begin(probe).await),
            (ScopedStore::Other { store, scope }, StoreId::Other(id)) => {
                store.begin(scope, id).await
            }
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn complete(&self, id: StoreId<'_>) -> Result<()> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => {
                ids.complete(probe);
                Ok(())
            }
            (ScopedStore::Other { store, scope }, StoreId::Other(id)) => {
                store.complete(scope, id).await
            }
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn abandon(&self, id: StoreId<'_>) -> Result<()> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => {
                ids.abandon(probe);
                Ok(())
            }
            (ScopedStore::Other { store, scope }, StoreId::Other(id)) => {
                store.abandon(scope, id).await
            }
            _ => Err(mismatch()),
        }
    }

    /// Releases a claim from a place that cannot wait (a `Drop`): at once in memory, in a
    /// task of its own for other stores.
    pub(crate) fn abandon_in_background(&self, id: StoreId<'_>) {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => ids.abandon(probe),
            (ScopedStore::Other { store, scope }, StoreId::Other(id)) => {
                let (store, scope, id) = (store.clone(), scope.clone(), id.to_owned());
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    tracing::warn!(message_id = %id, "no runtime to release a claim on; it stays until the store forgets it");
                    return;
                };
                runtime.spawn(async move {
                    if let Err(err) = store.abandon(&scope, &id).await {
                        tracing::warn!(message_id = %id, error = %err, "idempotency store failed to release a claim");
                    }
                });
            }
            _ => tracing::error!("{}", mismatch()),
        }
    }
}

/// An id made by one store's [`ScopedStore::id`] given to another: a bug of the runtime.
fn mismatch() -> crate::Error {
    crate::Error::Unsupported(
        "an id prepared for one idempotency store was given to another".into(),
    )
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

    /// A store where id `a` of scope `s` is claimed, and a second caller waiting for it.
    async fn a_claim_and_a_waiter() -> (Arc<MemoryIdempotencyStore>, tokio::task::JoinHandle<Claim>)
    {
        let store = Arc::new(MemoryIdempotencyStore::new());
        assert_eq!(store.begin("s", "a").await.unwrap(), Claim::Acquired);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.begin("s", "a").await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        (store, waiter)
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_and_then_skips() {
        let (store, waiter) = a_claim_and_a_waiter().await;
        store.complete("s", "a").await.unwrap();
        assert_eq!(waiter.await.unwrap(), Claim::AlreadyHandled);
    }

    #[tokio::test]
    async fn an_abandoned_claim_passes_to_a_waiting_caller() {
        let (store, waiter) = a_claim_and_a_waiter().await;
        store.abandon("s", "a").await.unwrap();
        assert_eq!(waiter.await.unwrap(), Claim::Acquired);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_stops_counting_as_waiting() {
        let store = MemoryIdempotencyStore::new();
        let ids = store.scope("s");
        let a = ids.probe("a", None);
        assert_eq!(ids.begin(a).await, Claim::Acquired);
        let waiting = tokio::time::timeout(Duration::ZERO, ids.begin(a)).await;
        assert!(waiting.is_err(), "the claim is held");
        assert_eq!(ids.lock().waiting, 0);
        ids.complete(a);
        assert_eq!(ids.begin(a).await, Claim::AlreadyHandled);
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
