//! The endpoints over a real socket, in front of a real app on the in-memory broker.

use event_binder_core::{App, Handler, HandlerSpec, RunningApp};
use event_binder_http::{Endpoints, PrometheusBuilder};
use event_binder_memory::MemoryChannel;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(10);
/// More than the deliveries a test has in flight at once.
const GATE_PERMITS: u32 = 1_000;

/// An app with one binding, `bill` (destination `orders`, group `billing`), that counts
/// what it handles once `gate` lets it.
struct Fixture {
    bus: MemoryChannel,
    running: RunningApp,
    handled: Arc<AtomicUsize>,
    entered: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Fixture {
    async fn start() -> Self {
        let bus = MemoryChannel::new();
        let handled = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        // Open unless a test takes its permits: a handler holding a delivery keeps a pause
        // waiting.
        let gate = Arc::new(Semaphore::new(GATE_PERMITS as usize));
        let handler = {
            let (handled, entered, gate) = (handled.clone(), entered.clone(), gate.clone());
            Handler::from_fn(
                HandlerSpec::new("bill", "orders").group("billing"),
                move |_: Value| {
                    let (handled, entered, gate) = (handled.clone(), entered.clone(), gate.clone());
                    async move {
                        entered.fetch_add(1, Ordering::SeqCst);
                        let _pass = gate.acquire().await;
                        handled.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(())
                    }
                },
            )
        };
        let running = App::new(bus.clone())
            .handler(handler)
            .start()
            .await
            .unwrap();
        Fixture {
            bus,
            running,
            handled,
            entered,
            gate,
        }
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints::new(self.running.bindings().clone())
    }

    async fn publish(&self, id: u64) {
        self.running
            .publisher()
            .publish("orders", &json!({ "id": id }))
            .await
            .unwrap();
    }

    fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }
}

/// An answer as the tests' client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The `error` of an error answer.
    fn error(&self) -> String {
        let json = self.json();
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {json}"))
            .to_owned()
    }
}

/// One HTTP/1.1 request on a connection of its own, closed by the server after the answer,
/// so that the answer is what is read up to EOF.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(LIMIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {LIMIT:?}"));
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (key, value) = line.split_once(':').expect("a header");
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    assert_eq!(
        reply.header("transfer-encoding"),
        None,
        "the tests' client reads no chunked body"
    );
    reply
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

async fn post(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "POST", path).await
}

/// Asks `path` until `done` says its answer is the one waited for, and returns it.
async fn get_until(addr: SocketAddr, path: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let reply = get(addr, path).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} still {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn health_is_200_then_503_with_the_problem_once_the_broker_is_gone() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();

    let healthy = get(addr, "/health").await;
    assert_eq!(healthy.status, 200, "{healthy:?}");
    let health = healthy.json();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["problems"], json!([]));
    assert_eq!(health["bindings"][0]["name"], "bill");

    // Ends the binding's consume loop, as a backend that lost its broker for good does.
    event_binder_core::Channel::close(&app.bus).await.unwrap();
    let unhealthy = get_until(addr, "/health", |reply| reply.status != 200).await;
    assert_eq!(unhealthy.status, 503, "{unhealthy:?}");
    let health = unhealthy.json();
    assert_eq!(health["healthy"], false);
    assert_eq!(
        health["problems"],
        json!(["binding bill: its consume loop ended"])
    );

    serving.shutdown().await.unwrap();
    let _ = app.running.shutdown().await;
}

#[tokio::test]
async fn bindings_lists_every_binding_and_shows_one() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();

    let list = get(addr, "/bindings").await;
    assert_eq!(list.status, 200, "{list:?}");
    let list = list.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let bill = &list[0];
    assert_eq!(bill["name"], "bill");
    assert_eq!(bill["destination"], "orders");
    assert_eq!(bill["group"], "billing");
    assert_eq!(bill["state"], "running");
    assert_eq!(bill["actual"], "running");
    assert_eq!(bill["loop_alive"], true);

    let one = get(addr, "/bindings/bill").await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(&one.json(), bill);

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_paused_binding_handles_nothing_until_it_is_resumed() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();
    app.publish(1).await;
    app.bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(app.handled(), 1);

    let paused = post(addr, "/bindings/bill/pause").await;
    assert_eq!(paused.status, 200, "{paused:?}");
    let paused = paused.json();
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["actual"], "paused");

    app.publish(2).await;
    // Idle as soon as the message waits in a group with no consumer: the pause closed it.
    app.bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(app.bus.queued("orders", "billing"), 1, "kept for the group");
    assert_eq!(get(addr, "/bindings/bill").await.json()["actual"], "paused");
    assert_eq!(app.handled(), 1, "nothing handled while paused");

    let resumed = post(addr, "/bindings/bill/resume").await;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    let resumed = resumed.json();
    assert_eq!(resumed["state"], "running");
    assert_eq!(resumed["actual"], "running");
    app.bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(app.handled(), 2, "handled once resumed");

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stopped_group_binding_takes_up_its_messages_when_started() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();

    let stopped = post(addr, "/bindings/bill/stop").await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert_eq!(stopped.json()["actual"], "stopped");

    app.publish(1).await;
    app.bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(app.bus.queued("orders", "billing"), 1, "kept for the group");
    assert_eq!(app.handled(), 0, "nothing handled while stopped");

    let started = post(addr, "/bindings/bill/start").await;
    assert_eq!(started.status, 200, "{started:?}");
    assert_eq!(started.json()["actual"], "running");
    app.bus.wait_idle(LIMIT).await.unwrap();
    assert_eq!(app.handled(), 1, "handled once started");

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_bindings_actions_and_routes_are_404_with_a_json_error() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();

    let unknown = get(addr, "/bindings/ship").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let error = unknown.error();
    assert!(
        error.contains("\"ship\"") && error.contains("\"bill\""),
        "{error}"
    );

    let unknown = post(addr, "/bindings/ship/pause").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.error().contains("\"ship\""), "{unknown:?}");

    let action = post(addr, "/bindings/bill/restart").await;
    assert_eq!(action.status, 404, "{action:?}");
    assert!(action.error().contains("\"restart\""), "{action:?}");
    assert_eq!(
        get(addr, "/bindings/bill").await.json()["state"],
        "running",
        "an unknown action switches nothing"
    );

    let route = get(addr, "/actuator").await;
    assert_eq!(route.status, 404, "{route:?}");
    assert!(route.error().contains("GET /health"), "{route:?}");

    let method = get(addr, "/bindings/bill/pause").await;
    assert_eq!(method.status, 405, "{method:?}");
    assert_eq!(method.header("allow"), Some("POST"));
    assert!(method.error().contains("POST /bindings"), "{method:?}");

    // Percent-encoding that decodes to no UTF-8 name: refused, the server goes on.
    let undecodable = get(addr, "/bindings/%FF").await;
    assert_eq!(undecodable.status, 400, "{undecodable:?}");
    undecodable.error();
    assert_eq!(get(addr, "/health").await.status, 200);

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_switch_that_does_not_complete_in_time_is_503_and_goes_on() {
    let app = Fixture::start().await;
    let serving = app
        .endpoints()
        .switch_timeout(Duration::from_millis(50))
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let addr = serving.local_addr();
    // A delivery held by its handler: the pause waits for it to finish.
    let held = app.gate.acquire_many(GATE_PERMITS).await.unwrap();
    app.publish(1).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while app.entered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler never ran"
        );
        tokio::task::yield_now().await;
    }

    let late = post(addr, "/bindings/bill/pause").await;
    assert_eq!(late.status, 503, "{late:?}");
    let error = late.error();
    assert!(
        error.contains("\"bill\"") && error.contains("paused"),
        "{error}"
    );
    assert_eq!(get(addr, "/bindings/bill").await.json()["state"], "paused");

    drop(held);
    let paused = get_until(addr, "/bindings/bill", |reply| {
        reply.json()["actual"] == "paused"
    })
    .await;
    assert_eq!(paused.status, 200);
    assert_eq!(
        app.handled(),
        1,
        "the held delivery finished before the pause"
    );

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_switch_after_the_app_shut_down_is_503() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();
    app.running.shutdown().await.unwrap();

    let gone = post(addr, "/bindings/bill/resume").await;
    assert_eq!(gone.status, 503, "{gone:?}");
    assert!(gone.error().contains("shut down"), "{gone:?}");

    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_serves_the_prometheus_text_of_the_handle() {
    let app = Fixture::start().await;
    // A recorder of this test's own: the process-wide one is left alone.
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("orders_seen_total", "source" => "test").increment(3);
    });
    let serving = app
        .endpoints()
        .metrics(recorder.handle())
        .serve("127.0.0.1:0")
        .await
        .unwrap();

    let reply = get(serving.local_addr(), "/metrics").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        reply
            .body
            .lines()
            .any(|line| line == r#"orders_seen_total{source="test"} 3"#),
        "{}",
        reply.body
    );

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_without_a_handle_is_404_saying_so() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();

    let reply = get(serving.local_addr(), "/metrics").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(reply.error().contains("PrometheusHandle"), "{reply:?}");

    serving.shutdown().await.unwrap();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_router_mounted_in_a_services_own_router_answers_under_its_prefix() {
    let app = Fixture::start().await;
    let service = axum::Router::new()
        .route("/", axum::routing::get(|| async { "orders service" }))
        .nest("/ops", app.endpoints().router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, service).await });

    let health = get(addr, "/ops/health").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["healthy"], true);
    let paused = post(addr, "/ops/bindings/bill/pause").await;
    assert_eq!(paused.status, 200, "{paused:?}");
    assert_eq!(paused.json()["actual"], "paused");
    let own = get(addr, "/").await;
    assert_eq!((own.status, own.body.as_str()), (200, "orders service"));

    server.abort();
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shut_down_server_takes_no_more_connections() {
    let app = Fixture::start().await;
    let serving = app.endpoints().serve("127.0.0.1:0").await.unwrap();
    let addr = serving.local_addr();
    assert_eq!(get(addr, "/health").await.status, 200);

    serving.shutdown().await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    app.running.shutdown().await.unwrap();
}
