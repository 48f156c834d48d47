//! The store conformance suite on the in-memory idempotency store. The store lives in one
//! process, so the "instances" a case opens are handles on one store per set of limits
//! (each case uses scopes of its own).

use event_binder::MemoryIdempotencyStore;
use event_binder_core::conformance::stores::StoreLimits;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

async fn open(limits: StoreLimits) -> event_binder::Result<Arc<MemoryIdempotencyStore>> {
    static STORES: OnceLock<Mutex<HashMap<StoreLimits, Arc<MemoryIdempotencyStore>>>> =
        OnceLock::new();
    let mut stores = STORES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let store = stores.entry(limits).or_insert_with(|| {
        Arc::new(MemoryIdempotencyStore::with_limits(10_000, limits.retention).lease(limits.lease))
    });
    Ok(store.clone())
}

event_binder_core::store_conformance_tests!(open);
