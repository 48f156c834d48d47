//! Bindings from configuration on the in-memory backend: a TOML or YAML file and the
//! environment move `#[handler]` functions to other destinations and groups and change how
//! they run, and every mistake is refused at start with the key that holds it.
#![cfg(feature = "config")]

use event_binder::figment::providers::{Format, Toml, Yaml};
use event_binder::figment::Figment;
use event_binder::memory::MemoryChannel;
use event_binder::{
    handler, App, Channel, Configuration, Error, Message, Producer, State, Subscription,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("billing failed")]
struct BillingError;

/// How many times each handler was called.
#[derive(Clone, Default)]
struct Calls {
    bill: Arc<AtomicUsize>,
    ship: Arc<AtomicUsize>,
}

#[handler(destination = "orders", group = "billing")]
async fn bill(order: Order, State(calls): State<Calls>) -> Result<(), BillingError> {
    calls.bill.fetch_add(1, Ordering::SeqCst);
    if order.fail {
        return Err(BillingError);
    }
    Ok(())
}

#[handler(destination = "orders", group = "shipping")]
async fn ship(_order: Order, State(calls): State<Calls>) -> Result<(), BillingError> {
    calls.ship.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// The size of each batch [`reserve`] was given (only one test registers it).
static BATCHES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[handler(destination = "orders", group = "stock", batch = 10)]
async fn reserve(orders: Vec<Order>) -> Result<(), BillingError> {
    BATCHES.lock().unwrap().push(orders.len());
    Ok(())
}

/// A new directory of its own for this test's files.
fn directory(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "event-binder-configuration-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `name` in the test's directory.
fn write(test: &str, name: &str, text: &str) -> PathBuf {
    let path = directory(test).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The configuration in the file at `path`, without the environment (which another test
/// of this process may be changing).
fn from_file(path: &PathBuf) -> Result<Configuration, Error> {
    let figment = if path.extension().is_some_and(|e| e == "toml") {
        Figment::from(Toml::file_exact(path))
    } else {
        Figment::from(Yaml::file_exact(path))
    };
    Configuration::from_figment(figment)
}

fn app(bus: &MemoryChannel, calls: &Calls) -> App<MemoryChannel, impl Sized, Calls> {
    App::new(bus.clone())
        .state(calls.clone())
        .handler(bill)
        .handler(ship)
}

/// The configuration error `app` is refused with at start.
async fn refusal<L>(app: App<MemoryChannel, L, Calls>) -> String {
    match app.start().await {
        Err(Error::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("expected a configuration error, the app started"),
    }
}

fn message(result: Result<Configuration, Error>) -> String {
    match result {
        Err(error @ Error::Config(_)) => error.to_string(),
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("expected a configuration error, it loaded"),
    }
}

#[tokio::test]
async fn a_toml_file_moves_a_handler_and_sets_how_it_runs() {
    let path = write(
        "toml",
        "event-binder.toml",
        r#"
        [bindings.bill]
        destination = "orders-v2"
        group = "billing-v2"
        concurrency = 2
        max_attempts = 4
        backoff = { initial = "1ms", max = "2ms" }
        "#,
    );
    let bus = MemoryChannel::new();
    let calls = Calls::default();
    let running = app(&bus, &calls)
        .configure(from_file(&path).unwrap())
        .start()
        .await
        .unwrap();

    // The binding keeps the handler's name, and reads where the file says.
    let status = running.bindings().status("configuration::bill").unwrap();
    assert_eq!(status.destination, "orders-v2");
    assert_eq!(status.group.as_deref(), Some("billing-v2"));
    let publisher = running.publisher();
    publisher
        .publish("orders-v2", &Order { id: 1, fail: false })
        .await
        .unwrap();
    bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(calls.bill.load(Ordering::SeqCst), 1);
    assert_eq!(calls.ship.load(Ordering::SeqCst), 0);

    // The old destination reaches the handler left there only.
    publisher
        .publish("orders", &Order { id: 2, fail: false })
        .await
        .unwrap();
    bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(calls.bill.load(Ordering::SeqCst), 1);
    assert_eq!(calls.ship.load(Ordering::SeqCst), 1);

    // Four attempts, as the file says (the attribute said the app's default, three).
    publisher
        .publish("orders-v2", &Order { id: 3, fail: true })
        .await
        .unwrap();
    bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(calls.bill.load(Ordering::SeqCst), 1 + 4);
    assert_eq!(bus.dead_lettered("orders-v2", Some("billing-v2")), 1);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_yaml_file_overrides_the_app_and_a_batch_handler() {
    let path = write(
        "yaml",
        "event-binder.yaml",
        "concurrency: 4\nbindings:\n  reserve:\n    group: stock-v2\n    batch:\n      max_size: 3\n      max_wait: 5ms\n",
    );
    let configuration = from_file(&path).unwrap();
    let bus = MemoryChannel::new();
    // Seven orders wait in the group before the app starts: without the file, one batch.
    drop(
        bus.consumer(&Subscription::new("orders").group("stock-v2"))
            .await
            .unwrap(),
    );
    let producer = bus.producer("orders").await.unwrap();
    for id in 0..7 {
        let order = serde_json::to_vec(&Order { id, fail: false }).unwrap();
        producer.send(Message::new(order)).await.unwrap();
    }
    let running = App::new(bus.clone())
        .batch_handler(reserve)
        .configure(configuration)
        .start()
        .await
        .unwrap();
    let status = running.bindings().status("configuration::reserve").unwrap();
    assert_eq!(status.group.as_deref(), Some("stock-v2"));
    bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(*BATCHES.lock().unwrap(), [3, 3, 1]);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn values_merged_in_code_override_the_file() {
    let path = write(
        "merged",
        "event-binder.toml",
        "[bindings.bill]\ngroup = \"from-file\"\n",
    );
    let figment =
        Figment::from(Toml::file_exact(&path)).merge(("bindings.bill.group", "from-code"));
    let bus = MemoryChannel::new();
    let running = app(&bus, &Calls::default())
        .configure(Configuration::from_figment(figment).unwrap())
        .start()
        .await
        .unwrap();
    let status = running.bindings().status("configuration::bill").unwrap();
    assert_eq!(status.group.as_deref(), Some("from-code"));
    running.shutdown().await.unwrap();
}

/// The one test that reads the real environment and working directory: `load` finds
/// `event-binder.toml` there, and `EVENT_BINDER_*` variables override it.
#[tokio::test]
async fn the_environment_overrides_the_file() {
    let dir = directory("environment");
    std::fs::write(
        dir.join("event-binder.toml"),
        "concurrency = 2\n[bindings.bill]\ngroup = \"from-file\"\ndestination = \"orders-v3\"\n",
    )
    .unwrap();
    std::env::set_current_dir(&dir).unwrap();
    std::env::set_var("EVENT_BINDER_BINDINGS__BILL__GROUP", "from-env");
    // Shares the prefix, and is not a setting: left alone.
    std::env::set_var("EVENT_BINDER_URL", "memory://");
    let loaded = Configuration::load();
    let typo = {
        std::env::set_var("EVENT_BINDER_BINDINGS__BILL__CONCURENCY", "3");
        let loaded = Configuration::load();
        std::env::remove_var("EVENT_BINDER_BINDINGS__BILL__CONCURENCY");
        loaded
    };
    let zero = {
        std::env::set_var("EVENT_BINDER_BINDINGS__BILL__CONCURRENCY", "0");
        let loaded = Configuration::load();
        std::env::remove_var("EVENT_BINDER_BINDINGS__BILL__CONCURRENCY");
        loaded
    };
    std::env::remove_var("EVENT_BINDER_BINDINGS__BILL__GROUP");
    std::env::remove_var("EVENT_BINDER_URL");

    let bus = MemoryChannel::new();
    let running = app(&bus, &Calls::default())
        .configure(loaded.unwrap())
        .start()
        .await
        .unwrap();
    let status = running.bindings().status("configuration::bill").unwrap();
    assert_eq!(status.group.as_deref(), Some("from-env"));
    assert_eq!(status.destination, "orders-v3");
    running.shutdown().await.unwrap();

    let typo = message(typo);
    assert!(
        typo.contains(
            "bindings.bill.concurency: unknown setting; expected one of `destination`, `group`, `concurrency`"
        ),
        "{typo}"
    );
    assert!(
        typo.contains("(from environment variable EVENT_BINDER_BINDINGS__BILL__CONCURENCY)"),
        "{typo}"
    );
    let zero = message(zero);
    assert!(
        zero.ends_with(
            "bindings.bill.concurrency: must be at least 1 \
             (from environment variable EVENT_BINDER_BINDINGS__BILL__CONCURRENCY)"
        ),
        "{zero}"
    );
}

#[test]
fn a_typo_names_the_key_and_the_file() {
    let path = write(
        "typo",
        "event-binder.toml",
        "[bindings.bill]\nconcurency = 8\n",
    );
    let text = message(from_file(&path));
    assert!(
        text.starts_with("invalid configuration: bindings.bill.concurency: unknown setting"),
        "{text}"
    );
    assert!(text.contains("event-binder.toml"), "{text}");
}

#[test]
fn a_missing_file_is_an_error() {
    let path = directory("missing").join("event-binder.toml");
    let text = message(Configuration::file(&path));
    assert!(text.contains("not found"), "{text}");
}

#[test]
fn a_bad_duration_names_the_key() {
    let path = write(
        "duration",
        "event-binder.yaml",
        "bindings:\n  bill:\n    timeout: 5 parsecs\n",
    );
    let text = message(from_file(&path));
    assert!(text.contains("bindings.bill.timeout: "), "{text}");
    assert!(text.contains("event-binder.yaml"), "{text}");
}

#[test]
fn a_zero_concurrency_names_the_key() {
    let path = write(
        "zero",
        "event-binder.toml",
        "[bindings.bill]\nconcurrency = 0\n",
    );
    let text = message(from_file(&path));
    assert!(
        text.starts_with(
            "invalid configuration: bindings.bill.concurrency: must be at least 1 (in "
        ),
        "{text}"
    );
    assert!(text.contains("event-binder.toml"), "{text}");
}

#[tokio::test]
async fn a_binding_that_names_no_handler_is_refused_at_start() {
    let path = write(
        "unknown",
        "event-binder.toml",
        "[bindings.bil]\ngroup = \"x\"\n",
    );
    let bus = MemoryChannel::new();
    let text = refusal(app(&bus, &Calls::default()).configure(from_file(&path).unwrap())).await;
    assert!(text.starts_with("bindings.bil: names no handler"), "{text}");
    assert!(
        text.contains("configuration::bill, configuration::ship"),
        "{text}"
    );
    assert!(text.contains("event-binder.toml"), "{text}");
    assert_eq!(bus.subscriptions("orders"), 0, "nothing was opened");
}

#[tokio::test]
async fn batch_limits_on_a_handler_of_one_event_are_refused_at_start() {
    let path = write(
        "batch",
        "event-binder.toml",
        "[bindings.\"configuration::ship\"]\nbatch = { max_size = 5 }\n",
    );
    let bus = MemoryChannel::new();
    let text = refusal(app(&bus, &Calls::default()).configure(from_file(&path).unwrap())).await;
    assert!(
        text.starts_with("bindings.\"configuration::ship\".batch: handler configuration::ship takes one event at a time"),
        "{text}"
    );
}

#[tokio::test]
async fn overrides_pass_the_app_s_own_checks() {
    // Both handlers in one group of one destination would split its messages.
    let path = write(
        "clash",
        "event-binder.toml",
        "[bindings.ship]\ngroup = \"billing\"\n",
    );
    let bus = MemoryChannel::new();
    let text = refusal(app(&bus, &Calls::default()).configure(from_file(&path).unwrap())).await;
    assert!(
        text.contains("both consume destination \"orders\" in group \"billing\""),
        "{text}"
    );
}
