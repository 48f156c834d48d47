//! An idempotency store that counts deliveries: what a fault test reports as delivered
//! more than once.

use crate::error::Result;
use crate::idempotency::{Claim, ClaimKey, IdempotencyStore, MemoryIdempotencyStore};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// The in-memory idempotency store, counting how often each message id was claimed, that
/// is, delivered to the runtime: the deliveries past the first are what a crash, a restart
/// or a cut connection made the broker deliver again (the store keeps them from the
/// handler).
///
/// ```
/// use event_binder_core::conformance::CountingStore;
/// use std::sync::Arc;
///
/// let store = Arc::new(CountingStore::default());
/// // App::new(channel).idempotency(store.clone()) … then, once the run is over:
/// assert_eq!(store.duplicates(), 0);
/// ```
#[derive(Debug, Default)]
pub struct CountingStore {
    inner: MemoryIdempotencyStore,
    deliveries: Mutex<HashMap<String, u32>>,
}

impl CountingStore {
    /// The deliveries past the first of each message.
    pub fn duplicates(&self) -> usize {
        self.counts().values().map(|n| *n as usize - 1).sum()
    }

    /// How many messages were delivered more than once.
    pub fn redelivered(&self) -> usize {
        self.counts().values().filter(|n| **n > 1).count()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl IdempotencyStore for CountingStore {
    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim> {
        *self.counts().entry(key.id.to_owned()).or_default() += 1;
        self.inner.begin(key).await
    }

    async fn complete(&self, key: ClaimKey<'_>) -> Result<()> {
        self.inner.complete(key).await
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()> {
        self.inner.abandon(key).await
    }
}
