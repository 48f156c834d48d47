//! The store conformance suite: the contract of [`IdempotencyStore`], written once and run
//! against every store (the in-memory one here, the durable ones in their crates), as the
//! backends share theirs.
//!
//! A store's test file calls [`store_conformance_tests!`](crate::store_conformance_tests)
//! with a factory that opens a store with the [`StoreLimits`] it is given; it expands to
//! one `#[test]` per [`StoreCase`]. Cases that need two instances of a group call the
//! factory twice (two connections to one database). Every case uses scopes and ids of its
//! own, so cases can share a database.
//!
//! ```no_run
//! // tests/store_conformance.rs of a store crate
//! use event_binder_core::conformance::stores::StoreLimits;
//! # type MyStore = event_binder_core::MemoryIdempotencyStore;
//!
//! // A new connection to the one database, with these limits.
//! async fn open(limits: StoreLimits) -> event_binder_core::Result<MyStore> {
//!     # unimplemented!()
//!     // MyStore::connect("my://127.0.0.1", limits.lease, limits.retention).await
//! }
//!
//! event_binder_core::store_conformance_tests!(open);
//! # fn main() {}
//! ```

use super::support::unique;
use crate::error::Result;
use crate::idempotency::{Claim, ClaimKey, IdempotencyStore};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

/// The lease and retention a case opens a store with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct StoreLimits {
    /// How long a claim lasts if its holder neither completes nor abandons it.
    pub lease: Duration,
    /// How long a handled id is remembered.
    pub retention: Duration,
}

impl StoreLimits {
    /// Long enough for no case to see a lease or a retention run out unless it waits for
    /// it.
    pub const LONG: StoreLimits = StoreLimits {
        lease: Duration::from_secs(600),
        retention: Duration::from_secs(3_600),
    };
}

/// One behaviour every idempotency store shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreCase {
    /// A first claim is acquired; once completed, the id is already handled, for every
    /// holder.
    CompletedIdIsAlreadyHandled,
    /// An abandoned claim can be acquired again.
    AbandonedIdCanBeClaimedAgain,
    /// Ids are remembered per scope.
    ScopesAreIsolated,
    /// While a claim is held, no other claim on the id is acquired, from another instance
    /// or from the same holder; once completed, the others see it handled.
    HeldClaimIsNotAcquiredTwice,
    /// Many claims on one id at once, from two instances: exactly one is acquired.
    ConcurrentClaimsAcquireOnce,
    /// A claim whose holder vanished passes to another holder once its lease has run out,
    /// and the vanished holder's late release leaves the new claim alone.
    ExpiredLeasePassesToAnotherHolder,
    /// An abandon by a holder that does not hold the claim releases nothing.
    OnlyTheHolderReleases,
    /// A handled id is forgotten once the retention has passed (it can be claimed again),
    /// not before.
    HandledIdIsForgottenAfterRetention,
}

impl StoreCase {
    /// Every case, in the order the suite runs them.
    pub const ALL: [StoreCase; 8] = [
        StoreCase::CompletedIdIsAlreadyHandled,
        StoreCase::AbandonedIdCanBeClaimedAgain,
        StoreCase::ScopesAreIsolated,
        StoreCase::HeldClaimIsNotAcquiredTwice,
        StoreCase::ConcurrentClaimsAcquireOnce,
        StoreCase::ExpiredLeasePassesToAnotherHolder,
        StoreCase::OnlyTheHolderReleases,
        StoreCase::HandledIdIsForgottenAfterRetention,
    ];
}

/// How long a case waits for a store's answer before it fails.
const ANSWER: Duration = Duration::from_secs(10);
/// The short lease of the lease cases.
const SHORT_LEASE: Duration = Duration::from_secs(2);
/// The short retention of the retention case.
const SHORT_RETENTION: Duration = Duration::from_secs(2);

/// Runs one case against stores from `open`, on a runtime of its own. Panics (fails the
/// test) with a message saying what was expected and what happened.
pub fn run<F, Fut, S>(open: F, case: StoreCase)
where
    F: Fn(StoreLimits) -> Fut,
    Fut: Future<Output = Result<S>>,
    S: IdempotencyStore + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the store conformance suite");
    runtime.block_on(async move {
        let open = |limits| {
            let opened = open(limits);
            async move {
                Arc::new(
                    opened
                        .await
                        .unwrap_or_else(|err| panic!("opening the store failed: {err}")),
                )
            }
        };
        let scope = unique("scope");
        match case {
            StoreCase::CompletedIdIsAlreadyHandled => {
                completed_is_handled(&*open(StoreLimits::LONG).await, &scope).await
            }
            StoreCase::AbandonedIdCanBeClaimedAgain => {
                abandoned_is_claimable(&*open(StoreLimits::LONG).await, &scope).await
            }
            StoreCase::ScopesAreIsolated => {
                scopes_isolated(&*open(StoreLimits::LONG).await, &scope).await
            }
            StoreCase::HeldClaimIsNotAcquiredTwice => {
                let (one, two) = (open(StoreLimits::LONG).await, open(StoreLimits::LONG).await);
                held_not_acquired(one, two, &scope).await
            }
            StoreCase::ConcurrentClaimsAcquireOnce => {
                let (one, two) = (open(StoreLimits::LONG).await, open(StoreLimits::LONG).await);
                concurrent_claims(one, two, &scope).await
            }
            StoreCase::ExpiredLeasePassesToAnotherHolder => {
                let limits = StoreLimits {
                    lease: SHORT_LEASE,
                    ..StoreLimits::LONG
                };
                let (one, two) = (open(limits).await, open(limits).await);
                expired_lease(one, two, &scope).await
            }
            StoreCase::OnlyTheHolderReleases => {
                let (one, two) = (open(StoreLimits::LONG).await, open(StoreLimits::LONG).await);
                only_holder_releases(one, two, &scope).await
            }
            StoreCase::HandledIdIsForgottenAfterRetention => {
                let limits = StoreLimits {
                    retention: SHORT_RETENTION,
                    ..StoreLimits::LONG
                };
                retention(&*open(limits).await, &scope).await
            }
        }
    });
}

/// `store`'s answer to `what`, failing the case on an error or after [`ANSWER`].
async fn answer<T>(what: &str, call: impl Future<Output = Result<T>>) -> T {
    match timeout(ANSWER, call).await {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => panic!("{what} failed: {err}"),
        Err(_) => panic!("{what} gave no answer within {ANSWER:?}"),
    }
}

/// What `begin` gives within `wait`: `None` if it is still waiting for another claim (which
/// the contract allows instead of [`Claim::HeldElsewhere`]).
async fn begin_within(
    store: &dyn IdempotencyStore,
    key: ClaimKey<'_>,
    wait: Duration,
) -> Option<Claim> {
    match timeout(wait, store.begin(key)).await {
        Ok(Ok(claim)) => Some(claim),
        Ok(Err(err)) => panic!("begin of {key:?} failed: {err}"),
        Err(_) => None,
    }
}

/// Fails unless `claim` is a refusal: held elsewhere, or still waiting.
fn assert_not_acquired(claim: Option<Claim>, what: &str) {
    assert!(
        matches!(claim, None | Some(Claim::HeldElsewhere { .. })),
        "{what}: expected the claim to be refused (HeldElsewhere) or to wait, got {claim:?}"
    );
}

async fn completed_is_handled(store: &dyn IdempotencyStore, scope: &str) {
    let id = unique("id");
    let a = ClaimKey::new(scope, &id, "holder-a");
    let b = ClaimKey::new(scope, &id, "holder-b");
    assert_eq!(answer("begin", store.begin(a)).await, Claim::Acquired);
    answer("complete", store.complete(a)).await;
    assert_eq!(answer("begin", store.begin(a)).await, Claim::AlreadyHandled);
    assert_eq!(answer("begin", store.begin(b)).await, Claim::AlreadyHandled);
}

async fn abandoned_is_claimable(store: &dyn IdempotencyStore, scope: &str) {
    let id = unique("id");
    let a = ClaimKey::new(scope, &id, "holder-a");
    let b = ClaimKey::new(scope, &id, "holder-b");
    assert_eq!(answer("begin", store.begin(a)).await, Claim::Acquired);
    answer("abandon", store.abandon(a)).await;
    assert_eq!(answer("begin", store.begin(b)).await, Claim::Acquired);
    answer("complete", store.complete(b)).await;
    assert_eq!(answer("begin", store.begin(a)).await, Claim::AlreadyHandled);
}

async fn scopes_isolated(store: &dyn IdempotencyStore, scope: &str) {
    let id = unique("id");
    let other = format!("{scope}-other");
    let here = ClaimKey::new(scope, &id, "holder-a");
    let there = ClaimKey::new(&other, &id, "holder-a");
    assert_eq!(answer("begin", store.begin(here)).await, Claim::Acquired);
    answer("complete", store.complete(here)).await;
    assert_eq!(answer("begin", store.begin(there)).await, Claim::Acquired);
    answer("abandon", store.abandon(there)).await;
    assert_eq!(
        answer("begin", store.begin(here)).await,
        Claim::AlreadyHandled
    );
}

async fn held_not_acquired<S: IdempotencyStore + 'static>(one: Arc<S>, two: Arc<S>, scope: &str) {
    let id = unique("id");
    let a = ClaimKey::new(scope, &id, "holder-a");
    assert_eq!(answer("begin", one.begin(a)).await, Claim::Acquired);
    let b = ClaimKey::new(scope, &id, "holder-b");
    assert_not_acquired(
        begin_within(&*two, b, Duration::from_millis(300)).await,
        "a second holder, on another instance, while the first holds the claim",
    );
    assert_not_acquired(
        begin_within(&*one, a, Duration::from_millis(300)).await,
        "the holder again, while it holds the claim",
    );
    // One that waits gets its answer once the claim is settled.
    let waiting = {
        let (two, scope, id) = (two.clone(), scope.to_owned(), id.clone());
        tokio::spawn(async move {
            let b = ClaimKey::new(&scope, &id, "holder-b");
            loop {
                match answer("begin", two.begin(b)).await {
                    Claim::HeldElsewhere { retry_in } => {
                        sleep(retry_in.min(Duration::from_millis(100))).await
                    }
                    claim => return claim,
                }
            }
        })
    };
    answer("complete", one.complete(a)).await;
    let claim = timeout(ANSWER, waiting)
        .await
        .expect("the second holder got no answer after the first completed")
        .expect("the second holder's task");
    assert_eq!(claim, Claim::AlreadyHandled);
}

async fn concurrent_claims<S: IdempotencyStore + 'static>(one: Arc<S>, two: Arc<S>, scope: &str) {
    const EACH: usize = 8;
    let id = unique("id");
    let claims: Vec<_> = (0..2 * EACH)
        .map(|n| {
            let store = if n % 2 == 0 { one.clone() } else { two.clone() };
            let (scope, id) = (scope.to_owned(), id.clone());
            tokio::spawn(async move {
                let holder = format!("holder-{n}");
                let key = ClaimKey::new(&scope, &id, &holder);
                begin_within(&*store, key, Duration::from_secs(1)).await
            })
        })
        .collect();
    let mut acquired = 0;
    for claim in claims {
        match claim.await.expect("a claiming task") {
            Some(Claim::Acquired) => acquired += 1,
            claim => assert_not_acquired(claim, "a concurrent claim"),
        }
    }
    assert_eq!(acquired, 1, "{} claims on one id at once", 2 * EACH);
}

async fn expired_lease<S: IdempotencyStore + 'static>(one: Arc<S>, two: Arc<S>, scope: &str) {
    let id = unique("id");
    let vanished = ClaimKey::new(scope, &id, "holder-vanished");
    let next = ClaimKey::new(scope, &id, "holder-next");
    let claimed = Instant::now();
    assert_eq!(answer("begin", one.begin(vanished)).await, Claim::Acquired);
    // Asked again until acquired: it must not be before the lease ran out, and must be soon
    // after.
    let deadline = claimed + SHORT_LEASE + ANSWER;
    loop {
        let asked = Instant::now();
        match begin_within(&*two, next, SHORT_LEASE).await {
            Some(Claim::Acquired) => break,
            claim => assert_not_acquired(claim, "a claim while the first one's lease runs"),
        }
        assert!(
            Instant::now() < deadline,
            "the lease of {SHORT_LEASE:?} ran out long ago, and the claim is still held"
        );
        if asked.elapsed() < Duration::from_millis(100) {
            sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        claimed.elapsed() >= SHORT_LEASE,
        "acquired after {:?}, before the lease of {SHORT_LEASE:?} ran out",
        claimed.elapsed()
    );
    answer("abandon", one.abandon(vanished)).await;
    let third = ClaimKey::new(scope, &id, "holder-third");
    assert_not_acquired(
        begin_within(&*one, third, Duration::from_millis(300)).await,
        "a third holder after the vanished one's late release",
    );
    answer("complete", two.complete(next)).await;
    assert_eq!(
        answer("begin", one.begin(third)).await,
        Claim::AlreadyHandled
    );
}

async fn only_holder_releases<S: IdempotencyStore + 'static>(
    one: Arc<S>,
    two: Arc<S>,
    scope: &str,
) {
    let id = unique("id");
    let a = ClaimKey::new(scope, &id, "holder-a");
    let b = ClaimKey::new(scope, &id, "holder-b");
    assert_eq!(answer("begin", one.begin(a)).await, Claim::Acquired);
    answer("abandon", two.abandon(b)).await;
    assert_not_acquired(
        begin_within(&*two, b, Duration::from_millis(300)).await,
        "a claim after another holder's abandon",
    );
    answer("abandon", one.abandon(a)).await;
    assert_eq!(answer("begin", two.begin(b)).await, Claim::Acquired);
    answer("abandon", two.abandon(b)).await;
}

async fn retention(store: &dyn IdempotencyStore, scope: &str) {
    let id = unique("id");
    let a = ClaimKey::new(scope, &id, "holder-a");
    assert_eq!(answer("begin", store.begin(a)).await, Claim::Acquired);
    // Before the call: a store may read its clock any time during it.
    let completed = Instant::now();
    answer("complete", store.complete(a)).await;
    let deadline = completed + SHORT_RETENTION + ANSWER;
    loop {
        match answer("begin", store.begin(a)).await {
            Claim::Acquired => break,
            Claim::AlreadyHandled => {}
            claim => panic!("a handled id's claim answered {claim:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the retention of {SHORT_RETENTION:?} passed long ago, and the id is still handled"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        completed.elapsed() >= SHORT_RETENTION,
        "forgotten after {:?}, before the retention of {SHORT_RETENTION:?} passed",
        completed.elapsed()
    );
    answer("abandon", store.abandon(a)).await;
}

/// Expands to one `#[test]` per [`StoreCase`], each calling [`run`] with the given factory
/// (a function or closure taking [`StoreLimits`] and returning `Result<S>` for any
/// `S: IdempotencyStore`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($open:expr) => {
        $crate::__store_conformance_cases!(
            $open,
            completed_id_is_already_handled => CompletedIdIsAlreadyHandled,
            abandoned_id_can_be_claimed_again => AbandonedIdCanBeClaimedAgain,
            scopes_are_isolated => ScopesAreIsolated,
            held_claim_is_not_acquired_twice => HeldClaimIsNotAcquiredTwice,
            concurrent_claims_acquire_once => ConcurrentClaimsAcquireOnce,
            expired_lease_passes_to_another_holder => ExpiredLeasePassesToAnotherHolder,
            only_the_holder_releases => OnlyTheHolderReleases,
            handled_id_is_forgotten_after_retention => HandledIdIsForgottenAfterRetention,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    ($open:expr, $($name:ident => $case:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::stores::run(
                    $open,
                    $crate::conformance::stores::StoreCase::$case,
                );
            }
        )*
    };
}
