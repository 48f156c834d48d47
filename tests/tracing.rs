//! The spans of deliveries and publishes (issue #13): named and attributed by the
//! OpenTelemetry semantic conventions for messaging, the handler's outcome recorded, and a
//! publish from a handler inside the span of the delivery it handles.

use event_binder::memory::MemoryChannel;
use event_binder::{App, BoxError, Context, Handler, HandlerSpec, NonRetryable, RetryPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const LIMIT: Duration = Duration::from_secs(10);

/// A span as the subscriber saw it: its name, fields and parent.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<u64>,
    id: u64,
}

/// Keeps every span of the `event_binder` target, with what was recorded into it.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Seen>>>);

impl Spans {
    fn named(&self, name: &str) -> Vec<Seen> {
        let spans = self.0.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        if attrs.metadata().target() != "event_binder" {
            return;
        }
        let mut seen = Seen {
            name: attrs.metadata().name(),
            id: id.into_u64(),
            parent: ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.id().into_u64()),
            ..Seen::default()
        };
        attrs.record(&mut Fields(&mut seen.fields));
        self.0.lock().unwrap().push(seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: LayerContext<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(seen) = spans.iter_mut().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

/// Runs `handler` on `memory://` with one message published to `orders`, under a subscriber
/// that keeps the spans, until the delivery's span has an outcome.
async fn spans_of(handler: Handler<impl event_binder::HandlerService>) -> (Spans, String) {
    let spans = Spans::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let bus = MemoryChannel::new();
    let running = App::new(bus)
        .retry(RetryPolicy::new(2).backoff(Duration::from_millis(1), Duration::from_millis(2)))
        .handler(handler)
        .start()
        .await
        .unwrap();
    let id = running
        .publisher()
        .publish("orders", &serde_json::json!({ "order": 1 }))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !spans
        .named("process")
        .iter()
        .any(|s| s.fields.contains_key("event_binder.outcome"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no outcome recorded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.shutdown().await.unwrap();
    (spans, id)
}

fn field<'a>(span: &'a Seen, name: &str) -> &'a str {
    span.fields
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name}: {:?}", span.name, span.fields))
}

#[tokio::test]
async fn a_handled_delivery_has_a_consumer_span_with_the_messaging_attributes() {
    let handler = Handler::from_fn(
        HandlerSpec::new("bill", "orders").group("billing"),
        |_: serde_json::Value| async { Ok::<_, BoxError>(()) },
    );
    let (spans, id) = spans_of(handler).await;
    let process = &spans.named("process")[0];
    for (name, value) in [
        ("otel.name", "process orders"),
        ("otel.kind", "consumer"),
        ("messaging.system", "memory"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "orders"),
        ("messaging.consumer.group.name", "billing"),
        ("messaging.message.id", id.as_str()),
        ("event_binder.handler", "bill"),
        ("event_binder.attempt", "1"),
        ("event_binder.outcome", "handled"),
    ] {
        assert_eq!(field(process, name), value, "{name}");
    }
    assert!(!process.fields.contains_key("otel.status_code"));
    let send = &spans.named("send")[0];
    for (name, value) in [
        ("otel.name", "send orders"),
        ("otel.kind", "producer"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "orders"),
        ("messaging.message.id", id.as_str()),
    ] {
        assert_eq!(field(send, name), value, "{name}");
    }
}

#[tokio::test]
async fn a_dead_lettered_delivery_has_an_error_span() {
    let handler = Handler::from_fn(
        HandlerSpec::new("bill", "orders").group("billing"),
        |_: serde_json::Value| async {
            Err::<(), BoxError>(NonRetryable::new("no such customer").into())
        },
    );
    let (spans, _) = spans_of(handler).await;
    let process = &spans.named("process")[0];
    assert_eq!(field(process, "event_binder.outcome"), "dead_lettered");
    assert_eq!(field(process, "otel.status_code"), "ERROR");
    assert_eq!(field(process, "error.type"), "handler");
}

#[tokio::test]
async fn a_publish_from_a_handler_is_a_child_of_the_delivery_span() {
    let handler = Handler::from_fn(
        HandlerSpec::new("bill", "orders").group("billing"),
        |_: serde_json::Value, ctx: Context| async move {
            ctx.publisher()?
                .publish("invoices", &serde_json::json!({ "invoice": 1 }))
                .await?;
            Ok::<_, BoxError>(())
        },
    );
    let (spans, _) = spans_of(handler).await;
    let process = &spans.named("process")[0];
    let invoice = spans
        .named("send")
        .into_iter()
        .find(|s| {
            s.fields
                .get("messaging.destination.name")
                .map(String::as_str)
                == Some("invoices")
        })
        .expect("the handler's publish has a span");
    assert_eq!(invoice.parent, Some(process.id));
}
