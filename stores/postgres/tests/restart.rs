//! PostgreSQL stopped and started again under a connected store: calls fail fast while it
//! is down, and the same store works again once it is back, its claims intact. It stops the
//! test server (as root, with Debian's pg_ctlcluster), so it runs alone
//! (.config/nextest.toml); a guard starts the server again however the test ends.

mod support;

use event_binder_core::{
    layer_fn, App, BoxError, Channel, Claim, ClaimKey, Context, Error, IdempotencyStore, Message,
    Producer, RetryPolicy, Service,
};
use event_binder_memory::MemoryChannel;
use event_binder_postgres::PostgresStore;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{config, eventually, Effects, TempTable};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_holds_messages_while_postgres_is_down_and_applies_each_once_after() {
    const COUNT: usize = 600;
    let handled = TempTable::new("eb_restart_inbox");
    let store = PostgresStore::with_config(
        config(&handled.name)
            .connect_timeout(CONNECT_TIMEOUT)
            .query_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("connecting to the test database");
    let effects = Effects::new().await;
    // Counts the calls that failed because the database did, seen from outside the inbox.
    let store_failures = Arc::new(AtomicUsize::new(0));
    let counted = store_failures.clone();
    let counting = layer_fn(move |inner| CountStoreFailures {
        inner,
        failures: counted.clone(),
    });
    let bus = MemoryChannel::new();
    bus.provision("orders", Some("effects")).await.unwrap();
    let running = App::new(bus.clone())
        // Two attempts only: a database outage must use none of them.
        .retry(RetryPolicy::new(2).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .handler(effects.handler(&store, 4).layer(counting))
        .start()
        .await
        .unwrap();
    let producer = bus.producer("orders").await.unwrap();
    let publishing = tokio::spawn(async move {
        for n in 0..COUNT {
            producer
                .send(Message::new_with_id(format!("m-{n:04}"), "{}"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    eventually("the first effects", Duration::from_secs(30), || async {
        effects.counter().await >= 50
    })
    .await;

    let _restarts = Restarts;
    tokio::task::spawn_blocking(|| pg_ctlcluster("stop"))
        .await
        .unwrap()
        .expect("stopping PostgreSQL");
    // Down: deliveries keep coming and fail on the database, several times in a row.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failures_before = store_failures.load(Ordering::SeqCst);
    while store_failures.load(Ordering::SeqCst) < failures_before + 5 {
        assert!(
            Instant::now() < deadline,
            "no store failures seen while PostgreSQL was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(|| pg_ctlcluster("start"))
        .await
        .unwrap()
        .expect("starting PostgreSQL");

    publishing.await.unwrap();
    eventually(
        "every effect after the restart",
        Duration::from_secs(60),
        || async { effects.counter().await as usize >= COUNT },
    )
    .await;
    running.shutdown().await.unwrap();
    assert_eq!(
        effects.counter().await as usize,
        COUNT,
        "an effect applied twice"
    );
    assert_eq!(effects.ids().await.len(), COUNT);
    assert_eq!(bus.dead_lettered("orders", Some("effects")), 0);
    println!(
        "inbox across a PostgreSQL restart: {COUNT} messages, {} calls failed on the database, \
         0 lost, 0 applied twice",
        store_failures.load(Ordering::SeqCst)
    );
}

/// A layer counting the calls that failed with an idempotency store error.
#[derive(Clone)]
struct CountStoreFailures<S> {
    inner: S,
    failures: Arc<AtomicUsize>,
}

impl<S> Service<Context> for CountStoreFailures<S>
where
    S: Service<Context, Response = Vec<Message>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Vec<Message>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Message>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        let call = self.inner.call(ctx);
        let failures = self.failures.clone();
        Box::pin(async move {
            let result = call.await;
            if let Err(err) = &result {
                if matches!(err.downcast_ref::<Error>(), Some(Error::Idempotency(_))) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            result
        })
    }
}
