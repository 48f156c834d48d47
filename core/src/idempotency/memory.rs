//! The in-memory idempotency store.

use super::{Claim, ClaimKey, IdempotencyStore};
use crate::error::Result;
use async_trait::async_trait;
use hashbrown::hash_map::RawEntryMut;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// An in-memory [`IdempotencyStore`], bounded in size and age.
///
/// It remembers at most `capacity` handled ids per scope, each for at most its retention;
/// the oldest are forgotten first. It lives in one process: deliveries handled by another
/// process or before a restart are not known to it (a durable store is). Each scope has a
/// lock of its own, so handlers do not wait on each other; an [`App`](crate::App) using this
/// store calls it directly, with no boxed future per message, and its claims need no lease
/// (the app releases each, whatever happens, and a crash takes the store with it). A
/// `begin` on an id claimed by another caller waits until that claim is released, or its
/// lease runs out.
///
/// ```
/// use event_binder_core::{Claim, ClaimKey, IdempotencyStore, MemoryIdempotencyStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryIdempotencyStore::new();
/// let billing = ClaimKey::new("billing", "id-1", "instance-1");
/// assert_eq!(store.begin(billing).await?, Claim::Acquired);
/// store.complete(billing).await?;
/// assert_eq!(store.begin(billing).await?, Claim::AlreadyHandled);
/// let shipping = ClaimKey::new("shipping", "id-1", "instance-1");
/// assert_eq!(store.begin(shipping).await?, Claim::Acquired);
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
    retention: Duration,
    lease: Duration,
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

#[derive(Debug)]
enum Entry {
    /// Claimed; with a lease when claimed through [`IdempotencyStore::begin`]. Boxed, so
    /// that the app's own claims, which have none, keep the entries of the map small.
    InProgress(Option<Box<Lease>>),
    Handled(Instant),
}

/// Who holds a claim taken through [`IdempotencyStore::begin`], and until when.
#[derive(Debug)]
struct Lease {
    holder: Arc<str>,
    until: Instant,
}

/// Who asks for a claim through [`IdempotencyStore::begin`], for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimant<'a> {
    holder: &'a str,
    lease: Duration,
}

impl Claimant<'_> {
    fn lease(self, now: Instant) -> Box<Lease> {
        Box::new(Lease {
            holder: self.holder.into(),
            until: now + self.lease,
        })
    }
}

/// Why [`ScopeIds::try_begin`] did not answer: another claim holds the id, until this
/// instant if it has a lease.
pub(crate) struct Held(Option<Instant>);

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
            if self.handled.len() <= limits.capacity
                && now.duration_since(oldest.at) < limits.retention
            {
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
                if matches!(entry.get(), Entry::Handled(handled) if *handled == at) {
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

    /// Claims `id` (for `claimant`'s lease, if given), or says it was handled; `Err` while
    /// another caller holds its claim.
    pub(crate) fn try_begin(
        &self,
        probe: IdProbe<'_>,
        claimant: Option<Claimant<'_>>,
    ) -> std::result::Result<Claim, Held> {
        let retention = self.limits.retention;
        // The clock is read only for claims with a lease: the app's own need none.
        let now = claimant.map(|_| Instant::now());
        let claimed = || Entry::InProgress(claimant.zip(now).map(|(c, now)| c.lease(now)));
        match self.lock().entry(probe) {
            RawEntryMut::Occupied(mut entry) => match entry.get() {
                Entry::InProgress(Some(lease)) if now.is_some_and(|now| lease.until <= now) => {
                    entry.insert(claimed());
                    Ok(Claim::Acquired)
                }
                Entry::InProgress(lease) => Err(Held(lease.as_ref().map(|l| l.until))),
                Entry::Handled(at) if at.elapsed() < retention => Ok(Claim::AlreadyHandled),
                Entry::Handled(_) => {
                    entry.insert(claimed());
                    Ok(Claim::Acquired)
                }
            },
            RawEntryMut::Vacant(entry) => {
                entry.insert_hashed_nocheck(probe.hash, probe.to_key(), claimed());
                Ok(Claim::Acquired)
            }
        }
    }

    /// Claims `id` as [`try_begin`](Self::try_begin) does, waiting while another caller
    /// holds its claim: until it is released, or its lease runs out.
    pub(crate) async fn begin(&self, probe: IdProbe<'_>, claimant: Option<Claimant<'_>>) -> Claim {
        match self.try_begin(probe, claimant) {
            Ok(claim) => claim,
            // Boxed, as waiting is rare: its state (a timer among it) would otherwise make
            // the future of every claim larger, and it is moved as a whole.
            Err(_) => Box::pin(self.wait_for(probe, claimant)).await,
        }
    }

    /// Waits until the claim on `id` is released or its lease runs out, then claims it as
    /// [`try_begin`](Self::try_begin) does.
    async fn wait_for(&self, probe: IdProbe<'_>, claimant: Option<Claimant<'_>>) -> Claim {
        self.lock().waiting += 1;
        let _waiting = Waiting(self);
        loop {
            // Listening before looking again: a release between the look and the wait
            // still wakes this caller.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_begin(probe, claimant) {
                Ok(claim) => return claim,
                Err(Held(Some(until))) => {
                    let _ = tokio::time::timeout_at(until.into(), released).await;
                }
                Err(Held(None)) => released.await,
            }
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

    /// Releases the claim on `id`: any claim without a lease (the app's own), or the claim
    /// of `holder`.
    pub(crate) fn abandon(&self, probe: IdProbe<'_>, holder: Option<&str>) {
        let waiting = {
            let mut ids = self.lock();
            if let RawEntryMut::Occupied(entry) = ids.entry(probe) {
                let held = match (entry.get(), holder) {
                    (Entry::InProgress(None), _) => true,
                    (Entry::InProgress(Some(lease)), Some(holder)) => &*lease.holder == holder,
                    _ => false,
                };
                if held {
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
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60 * 60);
    /// The default lease of a claim taken through [`IdempotencyStore::begin`].
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5 * 60);

    /// A store with the default capacity, retention and lease.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_CAPACITY, Self::DEFAULT_RETENTION)
    }

    /// A store remembering at most `capacity` ids (at least 1) per scope, each for at most
    /// `retention`.
    pub fn with_limits(capacity: usize, retention: Duration) -> Self {
        MemoryIdempotencyStore {
            scopes: Mutex::new(HashMap::new()),
            limits: Limits {
                capacity: capacity.max(1),
                retention,
                lease: Self::DEFAULT_LEASE,
            },
        }
    }

    /// How long a claim taken through [`IdempotencyStore::begin`] lasts if its holder
    /// neither completes nor abandons it. (An [`App`](crate::App)'s own claims need none.)
    ///
    /// ```
    /// use event_binder_core::MemoryIdempotencyStore;
    /// use std::time::Duration;
    ///
    /// let store = MemoryIdempotencyStore::new().lease(Duration::from_secs(30));
    /// # let _ = store;
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.limits.lease = lease;
        self
    }

    /// The claim of `key` through the trait: with the store's lease.
    fn claimant<'a>(&self, key: ClaimKey<'a>) -> Claimant<'a> {
        Claimant {
            holder: key.holder,
            lease: self.limits.lease,
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
    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim> {
        let ids = self.scope(key.scope);
        Ok(ids
            .begin(ids.probe(key.id, None), Some(self.claimant(key)))
            .await)
    }

    async fn complete(&self, key: ClaimKey<'_>) -> Result<()> {
        let ids = self.scope(key.scope);
        ids.complete(ids.probe(key.id, None));
        Ok(())
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()> {
        let ids = self.scope(key.scope);
        ids.abandon(ids.probe(key.id, None), Some(key.holder));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `id` of `scope`, claimed by the tests' one holder.
    fn key(scope: &'static str, id: &'static str) -> ClaimKey<'static> {
        ClaimKey::new(scope, id, "holder")
    }

    #[tokio::test]
    async fn abandoned_ids_can_be_claimed_again() {
        let store = MemoryIdempotencyStore::new();
        assert_eq!(store.begin(key("s", "a")).await.unwrap(), Claim::Acquired);
        store.abandon(key("s", "a")).await.unwrap();
        assert_eq!(store.begin(key("s", "a")).await.unwrap(), Claim::Acquired);
    }

    /// A store where id `a` of scope `s` is claimed, and a second caller waiting for it.
    async fn a_claim_and_a_waiter() -> (Arc<MemoryIdempotencyStore>, tokio::task::JoinHandle<Claim>)
    {
        let store = Arc::new(MemoryIdempotencyStore::new());
        assert_eq!(store.begin(key("s", "a")).await.unwrap(), Claim::Acquired);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.begin(key("s", "a")).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        (store, waiter)
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_and_then_skips() {
        let (store, waiter) = a_claim_and_a_waiter().await;
        store.complete(key("s", "a")).await.unwrap();
        assert_eq!(waiter.await.unwrap(), Claim::AlreadyHandled);
    }

    #[tokio::test]
    async fn an_abandoned_claim_passes_to_a_waiting_caller() {
        let (store, waiter) = a_claim_and_a_waiter().await;
        store.abandon(key("s", "a")).await.unwrap();
        assert_eq!(waiter.await.unwrap(), Claim::Acquired);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_stops_counting_as_waiting() {
        let store = MemoryIdempotencyStore::new();
        let ids = store.scope("s");
        let a = ids.probe("a", None);
        assert_eq!(ids.begin(a, None).await, Claim::Acquired);
        let waiting = tokio::time::timeout(Duration::ZERO, ids.begin(a, None)).await;
        assert!(waiting.is_err(), "the claim is held");
        assert_eq!(ids.lock().waiting, 0);
        ids.complete(a);
        assert_eq!(ids.begin(a, None).await, Claim::AlreadyHandled);
    }

    #[tokio::test]
    async fn capacity_forgets_the_oldest() {
        let store = MemoryIdempotencyStore::with_limits(2, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            store.begin(key("s", id)).await.unwrap();
            store.complete(key("s", id)).await.unwrap();
        }
        assert_eq!(store.begin(key("s", "a")).await.unwrap(), Claim::Acquired);
        assert_eq!(
            store.begin(key("s", "c")).await.unwrap(),
            Claim::AlreadyHandled
        );
    }

    #[tokio::test]
    async fn expired_ids_are_forgotten() {
        let store = MemoryIdempotencyStore::with_limits(10, Duration::ZERO);
        store.begin(key("s", "a")).await.unwrap();
        store.complete(key("s", "a")).await.unwrap();
        assert_eq!(store.begin(key("s", "a")).await.unwrap(), Claim::Acquired);
    }

    #[tokio::test]
    async fn a_claim_whose_lease_ran_out_passes_to_another_holder() {
        let lease = Duration::from_millis(100);
        let store = MemoryIdempotencyStore::new().lease(lease);
        let crashed = ClaimKey::new("s", "a", "crashed");
        let next = ClaimKey::new("s", "a", "next");
        let started = tokio::time::Instant::now();
        assert_eq!(store.begin(crashed).await.unwrap(), Claim::Acquired);
        assert_eq!(store.begin(next).await.unwrap(), Claim::Acquired);
        assert!(started.elapsed() >= lease, "waited for the lease");
        // The crashed holder's late release leaves the new claim alone.
        store.abandon(crashed).await.unwrap();
        let third = tokio::time::timeout(lease / 2, store.begin(ClaimKey::new("s", "a", "third")));
        assert!(third.await.is_err(), "the claim is still held");
    }
}
