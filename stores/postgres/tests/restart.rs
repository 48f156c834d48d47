//! PostgreSQL stopped and started again under a connected store: calls fail fast while it
//! is down, and the same store works again once it is back, its claims intact. It stops the
//! test server (as root, with Debian's pg_ctlcluster), so it runs alone
//! (.config/nextest.toml); a guard starts the server again however the test ends.

mod support;

use event_binder_core::{Claim, ClaimKey, Error, IdempotencyStore};
use event_binder_postgres::PostgresStore;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;
use support::{config, TempTable};
use tokio::time::Instant;

/// How long a call may take to fail while the server is down: the store's connect timeout,
/// and some.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `pg_ctlcluster … main <action>` on the one installed cluster version.
fn pg_ctlcluster(action: &str) -> Result<(), String> {
    let script =
        format!("pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql)\" main {action}");
    let output = Command::new("sh")
        .args(["-c", &script])
        .output()
        .map_err(|err| format!("running {script}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Whether something accepts connections on the test server's port.
fn answers() -> bool {
    let address: SocketAddr = "127.0.0.1:5432".parse().expect("an address");
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// Starts PostgreSQL again when dropped, if it does not answer: whether the test passed or
/// panicked, the server is left running for the other tests.
struct Restarts;

impl Drop for Restarts {
    fn drop(&mut self) {
        if !answers() {
            if let Err(err) = pg_ctlcluster("start") {
                eprintln!("starting PostgreSQL again after the restart test: {err}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fails_fast_while_postgres_is_down_and_works_again_after() {
    let table = TempTable::new("eb_restart");
    let store = PostgresStore::with_config(
        config(&table.name)
            .connect_timeout(CONNECT_TIMEOUT)
            .query_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("connecting to the test database");
    let before = ClaimKey::new("s", "before", "holder-1");
    assert_eq!(store.begin(before).await.unwrap(), Claim::Acquired);
    let handled = ClaimKey::new("s", "handled", "holder-1");
    assert_eq!(store.begin(handled).await.unwrap(), Claim::Acquired);
    store.complete(handled).await.unwrap();

    let _restarts = Restarts;
    tokio::task::spawn_blocking(|| pg_ctlcluster("stop"))
        .await
        .unwrap()
        .expect("stopping PostgreSQL");
    assert!(!answers(), "PostgreSQL still answers after stopping");

    // Down: every call fails, soon, with an error of the store.
    let during = ClaimKey::new("s", "during", "holder-1");
    for call in 0..3 {
        let started = Instant::now();
        let result = store.begin(during).await;
        let took = started.elapsed();
        let err = result.expect_err("a claim while PostgreSQL is down");
        assert!(matches!(err, Error::Idempotency(_)), "{err:?}");
        assert!(
            took < CONNECT_TIMEOUT + Duration::from_secs(2),
            "call {call} failed only after {took:?}: {err}"
        );
    }
    assert!(store.complete(during).await.is_err());

    tokio::task::spawn_blocking(|| pg_ctlcluster("start"))
        .await
        .unwrap()
        .expect("starting PostgreSQL");

    // Up again: the same store reconnects, and what was recorded before is still there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let claim = loop {
        match store.begin(during).await {
            Ok(claim) => break claim,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "the store did not work again within 30 s of the restart: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(claim, Claim::Acquired);
    store.complete(during).await.unwrap();
    let other = |id| ClaimKey::new("s", id, "holder-2");
    assert!(
        matches!(
            store.begin(other("before")).await.unwrap(),
            Claim::HeldElsewhere { .. }
        ),
        "the claim taken before the restart is still held"
    );
    assert_eq!(
        store.begin(other("handled")).await.unwrap(),
        Claim::AlreadyHandled
    );
    assert_eq!(
        store.begin(other("during")).await.unwrap(),
        Claim::AlreadyHandled
    );
    store.abandon(before).await.unwrap();
    assert_eq!(store.begin(other("before")).await.unwrap(), Claim::Acquired);
}
