//! Idempotent handling: each message id is handled once per handler, however often it is
//! delivered.

mod memory;
mod scoped;

pub use memory::MemoryIdempotencyStore;
pub(crate) use scoped::{AppStore, ScopedStore, StoreId};

use crate::error::Result;
use async_trait::async_trait;
use std::fmt::Debug;
use std::time::Duration;

/// The answer of [`IdempotencyStore::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The id is not handled yet and is now claimed by the caller, who must call
    /// [`complete`](IdempotencyStore::complete) or [`abandon`](IdempotencyStore::abandon).
    Acquired,
    /// The id was handled already: skip it.
    AlreadyHandled,
    /// Another holder's claim on the id is in progress: another instance handles the
    /// message now, or one that crashed holds it until its lease runs out. The runtime hands
    /// the message back to the broker, to be delivered again after `retry_in`.
    HeldElsewhere {
        /// When to try again: at the latest when the other claim's lease runs out.
        retry_in: Duration,
    },
}

/// Which claim a call of an [`IdempotencyStore`] is about: an id in a scope, asked for by a
/// holder.
///
/// The scope is one handler's (its destination, group and name); the holder is one
/// binding of one running app (the runtime makes a random one for each handler each time
/// an app starts), so that a holder whose lease ran out cannot release a claim another
/// holder took since.
///
/// ```
/// use event_binder_core::ClaimKey;
///
/// let key = ClaimKey::new("orders/billing/bill", "0190a6c3-…", "instance-7");
/// assert_eq!(key.id, "0190a6c3-…");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimKey<'a> {
    /// The handler's scope: ids are remembered per scope.
    pub scope: &'a str,
    /// The message id.
    pub id: &'a str,
    /// Who claims: the same for every call about one claim.
    pub holder: &'a str,
}

impl<'a> ClaimKey<'a> {
    /// The key of `id` in `scope`, claimed by `holder`.
    pub fn new(scope: &'a str, id: &'a str, holder: &'a str) -> Self {
        ClaimKey { scope, id, holder }
    }
}

/// Remembers which message ids were handled, per scope (one scope per handler), and who
/// is handling one now.
///
/// The contract, checked for every store by the store conformance suite
/// (`conformance::stores`, cargo feature `conformance`):
///
/// - [`begin`](Self::begin) claims an id that is neither handled nor claimed:
///   [`Claim::Acquired`]. An id [`complete`](Self::complete)d within the store's retention
///   is [`Claim::AlreadyHandled`]. An id another claim holds is never acquired: the store
///   answers [`Claim::HeldElsewhere`], or waits until that claim is released (the
///   in-memory store waits, as it sees the release). A claim is not reentrant: a second
///   `begin` by the same holder is not acquired either.
/// - A claim lasts the store's lease: one whose holder crashed, neither completing nor
///   abandoning it, can be acquired by another holder once the lease has run out. The lease
///   must outlast the handler's longest run (bound it with a handler timeout).
/// - [`complete`](Self::complete) records the id as handled, for the store's retention, and
///   releases the claim; the store forgets handled ids older than the retention by itself.
/// - [`abandon`](Self::abandon) releases the claim if `key.holder` still holds it, and does
///   nothing otherwise.
///
/// An id counts as handled only once `complete` was called for it, that is after its
/// handler succeeded: two deliveries of one id, at once or after a crash, run the handler
/// once.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + Debug {
    /// Claims `key.id` in `key.scope` for `key.holder`.
    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim>;

    /// Records `key.id` as handled and releases the claim.
    async fn complete(&self, key: ClaimKey<'_>) -> Result<()>;

    /// Releases `key.holder`'s claim without recording the id as handled (the handler
    /// failed).
    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()>;
}

#[async_trait]
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for std::sync::Arc<S> {
    async fn begin(&self, key: ClaimKey<'_>) -> Result<Claim> {
        (**self).begin(key).await
    }

    async fn complete(&self, key: ClaimKey<'_>) -> Result<()> {
        (**self).complete(key).await
    }

    async fn abandon(&self, key: ClaimKey<'_>) -> Result<()> {
        (**self).abandon(key).await
    }
}
