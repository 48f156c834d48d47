//! Trace context across the broker (issue #13, feature `otel`), on every backend: a request
//! publishes an order; the processor that handles it publishes a shipment; the handler of
//! the shipment ends the chain. All five spans are in the request's trace, each the child of
//! the one before: request → send orders → process orders → send shipments → process
//! shipments. Spans are exported by OpenTelemetry into memory (`conformance::traces`).
//!
//! Each test is a process of its own under cargo-nextest, the global subscriber its own;
//! the tests of a process share it, telling their spans apart by trace id.
#![cfg(feature = "otel")]

use event_binder::{
    AnyChannel, App, Batch, BatchHandler, BoxError, Context, Events, Handler, HandlerSpec,
};
use event_binder_core::conformance::traces::Traces;
use std::time::Duration;
use tracing::Instrument;

const LIMIT: Duration = Duration::from_secs(60);

/// A random suffix, so that names never meet those of another run.
fn unique() -> String {
    let id = event_binder_core::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

async fn one_trace_from_request_to_last_handler(url: &str) {
    let traces = Traces::install();
    let channel = AnyChannel::connect(url).await.expect("connecting");
    let suffix = unique();
    let (orders, shipments) = (format!("orders-{suffix}"), format!("shipments-{suffix}"));
    let ship = Handler::processor(
        HandlerSpec::new("ship", orders.as_str())
            .group("shipping")
            .output(shipments.as_str()),
        |order: serde_json::Value, _: Context| async move {
            Ok::<_, BoxError>(Events(vec![
                serde_json::json!({ "shipment": order["order"] }),
            ]))
        },
    );
    let notify = Handler::from_fn(
        HandlerSpec::new("notify", shipments.as_str()).group("notifying"),
        |_: serde_json::Value| async { Ok::<_, BoxError>(()) },
    );
    let running = App::new(channel)
        .handler(ship)
        .handler(notify)
        .start()
        .await
        .expect("starting the app");
    let request = tracing::info_span!("request");
    let (trace_id, request_id) = Traces::ids_of(&request);
    running
        .publisher()
        .publish(&orders, &serde_json::json!({ "order": 1 }))
        .instrument(request)
        .await
        .expect("publishing the order");
    // Each span ends when its work does: the order's process span after the shipment is
    // sent and the order acknowledged, which can be after the shipment is handled.
    let span = |name: String| {
        let trace_id = trace_id.clone();
        async move {
            traces
                .wait_for(
                    LIMIT,
                    &format!("span {name} in the request's trace"),
                    |span| span.name == name && span.trace_id == trace_id,
                )
                .await
        }
    };
    let last = span(format!("process {shipments}")).await;
    let send_orders = span(format!("send {orders}")).await;
    let process_orders = span(format!("process {orders}")).await;
    let send_shipments = span(format!("send {shipments}")).await;
    assert_eq!(send_orders.parent_span_id, request_id, "{send_orders:?}");
    assert_eq!(
        process_orders.parent_span_id, send_orders.span_id,
        "{process_orders:?}"
    );
    assert!(
        process_orders.parent_is_remote,
        "its parent came in the message"
    );
    assert_eq!(
        send_shipments.parent_span_id, process_orders.span_id,
        "{send_shipments:?}"
    );
    assert_eq!(last.parent_span_id, send_shipments.span_id, "{last:?}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_one_trace_from_request_to_last_handler() {
    one_trace_from_request_to_last_handler("memory://").await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_keeps_one_trace_from_request_to_last_handler() {
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=trace-{}-&queue_expires_ms=120000",
        unique()
    );
    one_trace_from_request_to_last_handler(&url).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_one_trace_from_request_to_last_handler() {
    let broker = std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let url = format!("kafka://{broker}?prefix=trace-{}-", unique());
    one_trace_from_request_to_last_handler(&url).await;
}

#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_sqs_keeps_one_trace_from_request_to_last_handler() {
    let url = format!(
        "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1&prefix=trace-{}-",
        unique()
    );
    one_trace_from_request_to_last_handler(&url).await;
}

/// A batch has many senders: its process span links to each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_span_links_to_the_span_that_sent_each_message() {
    let traces = Traces::install();
    let destination = format!("bulk-{}", unique());
    let running = App::new(AnyChannel::connect("memory://").await.unwrap())
        .batch_handler(BatchHandler::from_fn(
            HandlerSpec::new("bulk", destination.as_str())
                .group("billing")
                .batch(3, Duration::from_millis(200)),
            |_: Vec<serde_json::Value>, _: Batch| async { Ok::<_, BoxError>(()) },
        ))
        .start()
        .await
        .unwrap();
    let mut senders = Vec::new();
    for order in 0..3 {
        let request = tracing::info_span!("request");
        let trace_id = Traces::ids_of(&request).0;
        running
            .publisher()
            .publish(&destination, &serde_json::json!({ "order": order }))
            .instrument(request)
            .await
            .unwrap();
        let send = traces
            .wait_for(LIMIT, "the send span", |span| {
                span.name == format!("send {destination}") && span.trace_id == trace_id
            })
            .await;
        senders.push((send.trace_id, send.span_id));
    }
    let name = format!("process {destination}");
    let linked = || -> Vec<(String, String)> {
        let mut links: Vec<_> = traces
            .finished()
            .into_iter()
            .filter(|span| span.name == name)
            .flat_map(|span| span.links)
            .collect();
        links.sort();
        links
    };
    senders.sort();
    traces
        .wait_for(LIMIT, "batch spans linking every sender", |_| {
            linked() == senders
        })
        .await;
    running.shutdown().await.unwrap();
}
