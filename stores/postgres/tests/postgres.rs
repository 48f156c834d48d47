//! The PostgreSQL store beyond the conformance suite: its purge, its table, its errors, and
//! ids the suite does not try. Needs the test database (scripts/postgres.sh).

mod support;

use event_binder_core::{Claim, ClaimKey, Error, IdempotencyStore};
use event_binder_postgres::sqlx::{self, postgres::PgPoolOptions};
use event_binder_postgres::{PostgresConfig, PostgresStore, PostgresStoreError};
use std::time::Duration;
use support::{config, eventually, store, TempTable};
use tokio::time::Instant;

#[tokio::test]
async fn the_purge_deletes_rows_past_their_retention_and_leaves_the_others() {
    let table = TempTable::new("eb_purge");
    // Stores with different retentions share the table: each row carries its own.
    let short = PostgresStore::with_config(
        config(&table.name)
            .retention(Duration::from_secs(1))
            .purge_interval(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let long = store(&table.name).await;
    assert_eq!(short.purge_interval(), Duration::from_secs(1));
    for id in ["a", "b"] {
        let key = ClaimKey::new("s", id, "h");
        assert_eq!(short.begin(key).await.unwrap(), Claim::Acquired);
        short.complete(key).await.unwrap();
    }
    let kept = ClaimKey::new("s", "kept", "h");
    assert_eq!(long.begin(kept).await.unwrap(), Claim::Acquired);
    long.complete(kept).await.unwrap();
    let claimed = ClaimKey::new("s", "claimed", "h");
    assert_eq!(long.begin(claimed).await.unwrap(), Claim::Acquired);
    assert_eq!(table.count().await, 4);

    // The short store's own task deletes its two rows once their retention has passed.
    eventually(
        "the purge task deleting a and b",
        Duration::from_secs(15),
        || async { table.count_scope("s").await == 2 },
    )
    .await;
    assert_eq!(
        long.begin(ClaimKey::new("s", "kept", "other"))
            .await
            .unwrap(),
        Claim::AlreadyHandled
    );
    assert!(matches!(
        long.begin(ClaimKey::new("s", "claimed", "other"))
            .await
            .unwrap(),
        Claim::HeldElsewhere { .. }
    ));
    assert_eq!(
        short.begin(ClaimKey::new("s", "a", "h")).await.unwrap(),
        Claim::Acquired
    );
    // Nothing is left to purge now, whoever asks.
    assert_eq!(long.purge().await.unwrap(), 0);
}

#[tokio::test]
async fn a_row_past_its_retention_counts_as_absent_before_any_purge() {
    let table = TempTable::new("eb_no_purge");
    let store = PostgresStore::with_config(
        config(&table.name)
            .retention(Duration::from_secs(1))
            .purge_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let key = ClaimKey::new("s", "a", "h");
    assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
    store.complete(key).await.unwrap();
    let completed = Instant::now();
    // Waiting for the retention to pass is the condition here.
    eventually("the id forgotten", Duration::from_secs(10), || async {
        store.begin(key).await.unwrap() == Claim::Acquired
    })
    .await;
    assert!(completed.elapsed() >= Duration::from_secs(1));
    // The row was taken over, not purged and inserted again: there was no purge yet.
    assert_eq!(table.count().await, 1);
    store.abandon(key).await.unwrap();
    assert_eq!(table.count().await, 0);
}

#[tokio::test]
async fn an_explicit_purge_counts_what_it_deleted() {
    let table = TempTable::new("eb_purge_now");
    let store = PostgresStore::with_config(
        config(&table.name)
            .retention(Duration::ZERO)
            .purge_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    for id in ["a", "b", "c"] {
        let key = ClaimKey::new("s", id, "h");
        assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
        store.complete(key).await.unwrap();
    }
    // Past their retention (zero) once the store's grace of a second has passed.
    assert_eq!(store.purge().await.unwrap(), 0);
    let mut purged = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while purged < 3 {
        assert!(Instant::now() < deadline, "purged {purged} of 3 rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
        purged += store.purge().await.unwrap();
    }
    assert_eq!(purged, 3);
    assert_eq!(table.count().await, 0);
}

#[tokio::test]
async fn connecting_again_leaves_the_table_as_it_is() {
    let table = TempTable::new("eb_twice");
    // Several instances creating a new table at once: they take turns.
    let stores = futures_join_all((0..4).map(|_| {
        let name = table.name.clone();
        async move { store(&name).await }
    }))
    .await;
    let key = ClaimKey::new("s", "a", "h1");
    assert_eq!(stores[0].begin(key).await.unwrap(), Claim::Acquired);
    let again = store(&table.name).await;
    again.migrate().await.unwrap();
    stores[1].migrate().await.unwrap();
    assert!(matches!(
        again.begin(ClaimKey::new("s", "a", "h2")).await.unwrap(),
        Claim::HeldElsewhere { .. }
    ));
    stores[0].complete(key).await.unwrap();
    assert_eq!(
        stores[3]
            .begin(ClaimKey::new("s", "a", "h3"))
            .await
            .unwrap(),
        Claim::AlreadyHandled
    );
    assert_eq!(table.count().await, 1);
}

/// Every future of `futures`, run at once, in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.expect("a task"));
    }
    outputs
}

#[tokio::test]
async fn a_missing_table_is_refused_when_creating_it_is_off() {
    let table = TempTable::new("eb_missing");
    let err = PostgresStore::with_config(config(&table.name).create_table(false))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains(&table.name), "{err}");
    let created = store(&table.name).await;
    let pool = created.pool().clone();
    PostgresStore::from_pool(
        pool,
        PostgresConfig::default()
            .table(&table.name)
            .create_table(false),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_table_names_are_config_errors() {
    let pool = store(&TempTable::new("eb_pool").name).await.pool().clone();
    for bad in [
        "",
        "bad name",
        "t;drop table x",
        "x\"y",
        "1st",
        "a.b.c",
        "naïve",
    ] {
        let err = PostgresStore::with_config(config(bad)).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?}: {err:?}");
        let err = PostgresStore::from_pool(pool.clone(), PostgresConfig::default().table(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?}: {err:?}");
    }
    let err = PostgresStore::with_config(PostgresConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

/// The password of the failing URLs: no error may show it.
const PASSWORD: &str = "hunter2-Secret";

#[tokio::test]
async fn an_unreachable_database_fails_within_the_timeout_without_the_password() {
    let timeout = Duration::from_secs(2);
    // Port 1: nothing listens there.
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/test");
    let config = PostgresConfig::new(&url).unwrap().connect_timeout(timeout);
    assert!(!format!("{config:?}").contains(PASSWORD));
    let started = Instant::now();
    let err = PostgresStore::with_config(config).await.unwrap_err();
    assert!(
        started.elapsed() < timeout + Duration::from_secs(2),
        "failed after {:?}",
        started.elapsed()
    );
    assert_shows_no_password(&err, "connect");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn refused_credentials_fail_at_once_without_the_password() {
    // The test server trusts local connections whatever the password: a user that does
    // not exist, or a database that does not, is what it refuses.
    for url in [
        format!("postgres://no_such_user_eb:{PASSWORD}@127.0.0.1:5432/test"),
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432/no_such_database_eb"),
        // Percent-encoded: neither as written nor decoded.
        "postgres://no_such_user_eb:p%40ss%3Aword@127.0.0.1:5432/test".to_owned(),
    ] {
        let config = PostgresConfig::new(&url)
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        let started = Instant::now();
        let err = PostgresStore::with_config(config).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
        assert_shows_no_password(&err, "connect");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                !shown.contains("p%40ss") && !shown.contains("p@ss"),
                "{shown}"
            );
        }
        let Error::Idempotency(source) = &err else {
            unreachable!()
        };
        let err = source.downcast_ref::<PostgresStoreError>().unwrap();
        // 28000: invalid authorization (no such role); 3D000: no such database.
        assert!(matches!(err.code(), Some("28000" | "3D000")), "{err:?}");
    }
}

fn assert_shows_no_password(err: &Error, operation: &str) {
    assert!(matches!(err, Error::Idempotency(_)), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
    let Error::Idempotency(source) = err else {
        unreachable!()
    };
    let source = source
        .downcast_ref::<PostgresStoreError>()
        .expect("a PostgresStoreError");
    assert_eq!(source.operation(), operation);
}

#[tokio::test]
async fn the_store_shows_where_it_is_but_not_the_password() {
    let table = TempTable::new("eb_shown");
    let store = store(&table.name).await;
    let shown = store.to_string();
    assert!(shown.contains(&table.name), "{shown}");
    assert!(shown.contains("127.0.0.1:5432/test"), "{shown}");
    let debug = format!("{store:?}");
    assert!(debug.contains(&table.name), "{debug}");
    assert_eq!(store.table(), table.name);
    assert_eq!(store.lease(), PostgresConfig::DEFAULT_LEASE);
    assert_eq!(store.retention(), PostgresConfig::DEFAULT_RETENTION);
    assert_eq!(store.purge_interval(), Duration::from_secs(3600));

    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432/test");
    let with_password =
        PostgresStore::with_config(PostgresConfig::new(&url).unwrap().table(&table.name))
            .await
            .unwrap();
    for shown in [with_password.to_string(), format!("{with_password:?}")] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}

#[tokio::test]
async fn unusual_scopes_and_ids_are_kept_apart() {
    let table = TempTable::new("eb_unusual");
    let store = store(&table.name).await;
    let long = "x".repeat(300);
    let long_unicode = "é🦀".repeat(120);
    let odd = [
        "it's",
        "\"quoted\"",
        "'); DROP TABLE event_binder_handled; --",
        "back\\slash",
        "percent % and _ underscore",
        "идентификатор 🦀",
        "  spaced  ",
        "",
        long.as_str(),
        long_unicode.as_str(),
    ];
    for scope in odd {
        for id in odd {
            let key = ClaimKey::new(scope, id, "h");
            assert_eq!(
                store.begin(key).await.unwrap(),
                Claim::Acquired,
                "{scope:?} {id:?}"
            );
            store.complete(key).await.unwrap();
        }
    }
    for scope in odd {
        for id in odd {
            let key = ClaimKey::new(scope, id, "another");
            assert_eq!(
                store.begin(key).await.unwrap(),
                Claim::AlreadyHandled,
                "{scope:?} {id:?}"
            );
        }
    }
    assert_eq!(table.count().await, (odd.len() * odd.len()) as i64);
    // Near misses are other ids.
    for id in ["its", "x".repeat(299).as_str(), "идентификатор"] {
        let key = ClaimKey::new("it's", id, "h");
        assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired, "{id:?}");
    }
    // Holders are compared exactly too.
    let key = ClaimKey::new("s", "a", "hölder 'one'");
    assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
    store
        .abandon(ClaimKey::new("s", "a", "hölder 'one' "))
        .await
        .unwrap();
    assert!(matches!(
        store.begin(ClaimKey::new("s", "a", "other")).await.unwrap(),
        Claim::HeldElsewhere { .. }
    ));
    store.abandon(key).await.unwrap();
    assert_eq!(
        store.begin(ClaimKey::new("s", "a", "other")).await.unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn tables_of_other_names_are_independent() {
    let (one, two) = (TempTable::new("eb_one"), TempTable::new("eb_two"));
    let (first, second) = (store(&one.name).await, store(&two.name).await);
    let key = ClaimKey::new("s", "a", "h");
    assert_eq!(first.begin(key).await.unwrap(), Claim::Acquired);
    first.complete(key).await.unwrap();
    assert_eq!(second.begin(key).await.unwrap(), Claim::Acquired);
    assert_eq!(
        first.begin(ClaimKey::new("s", "a", "h2")).await.unwrap(),
        Claim::AlreadyHandled
    );
    assert!(matches!(
        second.begin(ClaimKey::new("s", "a", "h2")).await.unwrap(),
        Claim::HeldElsewhere { .. }
    ));
    assert_eq!((one.count().await, two.count().await), (1, 1));
}

#[tokio::test]
async fn a_held_claim_says_when_to_try_again() {
    let table = TempTable::new("eb_retry");
    let store = PostgresStore::with_config(config(&table.name).lease(Duration::from_secs(5)))
        .await
        .unwrap();
    let key = ClaimKey::new("s", "a", "h");
    assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
    match store.begin(ClaimKey::new("s", "a", "h2")).await.unwrap() {
        Claim::HeldElsewhere { retry_in } => assert!(
            retry_in > Duration::from_secs(3) && retry_in <= Duration::from_secs(5),
            "{retry_in:?}"
        ),
        claim => panic!("{claim:?}"),
    }
    // A long lease is asked about again within 30 s.
    let long = PostgresStore::with_config(config(&table.name))
        .await
        .unwrap();
    let key = ClaimKey::new("s", "b", "h");
    assert_eq!(long.begin(key).await.unwrap(), Claim::Acquired);
    assert_eq!(
        long.begin(key).await.unwrap(),
        Claim::HeldElsewhere {
            retry_in: Duration::from_secs(30)
        }
    );
}

#[tokio::test]
async fn a_shared_pool_is_used_and_the_purge_stops_with_the_last_handle() {
    let table = TempTable::new("eb_shared");
    let runtime = tokio::runtime::Handle::current();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&support::url())
        .await
        .unwrap();
    let alive = || runtime.metrics().num_alive_tasks();
    // The pool's own tasks, once the ones connecting spawned have ended.
    tokio::task::yield_now().await;
    let before = alive();
    let store =
        PostgresStore::from_pool(pool.clone(), PostgresConfig::default().table(&table.name))
            .await
            .unwrap();
    eventually("the purge task running", Duration::from_secs(5), || async {
        alive() == before + 1
    })
    .await;
    let key = ClaimKey::new("s", "a", "h");
    assert_eq!(store.begin(key).await.unwrap(), Claim::Acquired);
    let clone = store.clone();
    drop(store);
    assert_eq!(
        clone.begin(ClaimKey::new("s", "a", "h2")).await.unwrap(),
        Claim::HeldElsewhere {
            retry_in: Duration::from_secs(30)
        }
    );
    assert!(alive() > before, "the purge task stopped with a clone left");
    drop(clone);
    eventually("the purge task ending", Duration::from_secs(5), || async {
        alive() == before
    })
    .await;
    // The application's pool goes on.
    assert!(!pool.is_closed());
    let one: i64 = sqlx::query_scalar("SELECT 1::bigint")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
}
