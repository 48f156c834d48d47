//! The app's view of its idempotency store: the in-memory store called directly, any
//! other through the trait.

use super::memory::{IdProbe, ScopeIds};
use super::{Claim, ClaimKey, IdempotencyStore, MemoryIdempotencyStore};
use crate::error::Result;
use crate::message::Message;
use std::any::Any;
use std::sync::Arc;

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
            AppStore::Other(store) => ScopedStore::Other(Arc::new(Claims {
                store: store.clone(),
                scope,
                // One holder per binding per start: another instance's claims, or this
                // binding's from before a restart, are never taken for its own.
                holder: crate::new_message_id().into(),
            })),
        }
    }
}

/// One handler's view of the app's store.
#[derive(Debug)]
pub(crate) enum ScopedStore {
    Memory(Arc<ScopeIds>),
    Other(Arc<Claims>),
}

/// A store reached through the trait, as one binding claims in it: its scope and holder.
#[derive(Debug)]
pub(crate) struct Claims {
    store: Arc<dyn IdempotencyStore>,
    scope: Arc<str>,
    holder: Arc<str>,
}

impl Claims {
    /// The key of `id` for this binding.
    fn key<'a>(&'a self, id: &'a str) -> ClaimKey<'a> {
        ClaimKey::new(&self.scope, id, &self.holder)
    }
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
            ScopedStore::Other(_) => StoreId::Other(message.id()),
        }
    }

    /// As [`begin`](Self::begin), but `None` at once for an id claimed already, where the
    /// store can tell (in memory): a batch holding its own claim on the id must not wait
    /// for itself. Other stores wait as `begin` does, so check the batch first.
    pub(crate) async fn begin_unless_held(&self, id: StoreId<'_>) -> Result<Option<Claim>> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => {
                Ok(ids.try_begin(probe, None).ok())
            }
            _ => self.begin(id).await.map(Some),
        }
    }

    /// Whether [`begin_unless_held`](Self::begin_unless_held) tells a held claim.
    pub(crate) fn tells_held_claims(&self) -> bool {
        matches!(self, ScopedStore::Memory(_))
    }

    pub(crate) async fn begin(&self, id: StoreId<'_>) -> Result<Claim> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => Ok(ids.begin(probe, None).await),
            (ScopedStore::Other(claims), StoreId::Other(id)) => {
                claims.store.begin(claims.key(id)).await
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
            (ScopedStore::Other(claims), StoreId::Other(id)) => {
                claims.store.complete(claims.key(id)).await
            }
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn abandon(&self, id: StoreId<'_>) -> Result<()> {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => {
                ids.abandon(probe, None);
                Ok(())
            }
            (ScopedStore::Other(claims), StoreId::Other(id)) => {
                claims.store.abandon(claims.key(id)).await
            }
            _ => Err(mismatch()),
        }
    }

    /// Releases a claim from a place that cannot wait (a `Drop`): at once in memory, in a
    /// task of its own for other stores.
    pub(crate) fn abandon_in_background(&self, id: StoreId<'_>) {
        match (self, id) {
            (ScopedStore::Memory(ids), StoreId::Memory(probe)) => ids.abandon(probe, None),
            (ScopedStore::Other(claims), StoreId::Other(id)) => {
                let (claims, id) = (claims.clone(), id.to_owned());
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    tracing::warn!(message_id = %id, "no runtime to release a claim on; it stays until the store forgets it");
                    return;
                };
                runtime.spawn(async move {
                    if let Err(err) = claims.store.abandon(claims.key(&id)).await {
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
