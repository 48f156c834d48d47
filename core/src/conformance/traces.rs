//! OpenTelemetry spans captured in memory (features `conformance` and `otel`), to check in
//! a test that a trace crosses the broker: the spans a test's publisher and handlers made,
//! as an exporter would have sent them.
//!
//! ```no_run
//! # async fn demo(app: event_binder_core::RunningApp) {
//! use event_binder_core::conformance::traces::Traces;
//! use std::time::Duration;
//! use tracing::Instrument;
//!
//! let traces = Traces::install();
//! let request = tracing::info_span!("request");
//! let (trace_id, _) = Traces::ids_of(&request);
//! app.publisher()
//!     .publish("orders", &serde_json::json!({"order": 1}))
//!     .instrument(request)
//!     .await
//!     .unwrap();
//! let process = traces
//!     .wait_for(Duration::from_secs(30), "the handler's span", |span| {
//!         span.name == "process orders" && span.trace_id == trace_id
//!     })
//!     .await;
//! # }
//! ```

use crate::channel::Channel;
use crate::error::Error;
use crate::runtime::{App, Handler, HandlerSpec};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The spans ended in this process since [`install`](Self::install), kept in memory.
#[derive(Debug)]
pub struct Traces {
    exporter: InMemorySpanExporter,
    // Kept alive: spans end into it.
    _provider: SdkTracerProvider,
}

/// A span as the exporter received it, its ids in W3C hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedSpan {
    /// Its name: for the runtime's spans, the `otel.name` (`process orders`, `send orders`).
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; all zeros for a root span.
    pub parent_span_id: String,
    /// Whether the parent came from elsewhere (a message's headers), not from this process.
    pub parent_is_remote: bool,
    /// The spans it links to, as (trace id, span id): a batch's senders.
    pub links: Vec<(String, String)>,
}

impl Traces {
    /// Sends every span of the process to OpenTelemetry, exported in memory, through a
    /// `tracing-opentelemetry` layer installed as the global subscriber: once per process,
    /// later calls return the same capture. Tests sharing a process tell their spans apart
    /// by trace id.
    ///
    /// # Panics
    /// When another global subscriber was installed first.
    pub fn install() -> &'static Traces {
        static TRACES: OnceLock<Traces> = OnceLock::new();
        TRACES.get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("event-binder"));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("Traces::install needs to be the process's global subscriber");
            Traces {
                exporter,
                _provider: provider,
            }
        })
    }

    /// The trace id and span id of a span of this process (a test's root span, say).
    pub fn ids_of(span: &tracing::Span) -> (String, String) {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    }

    /// Every span ended so far.
    pub fn finished(&self) -> Vec<FinishedSpan> {
        self.exporter
            .get_finished_spans()
            .unwrap_or_default()
            .iter()
            .map(FinishedSpan::from)
            .collect()
    }

    /// Waits until a span that `matches` has ended, and returns it; fails the test after
    /// `limit`, listing the spans that did end.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        matches: impl Fn(&FinishedSpan) -> bool,
    ) -> FinishedSpan {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let finished = self.finished();
            if let Some(span) = finished.iter().find(|span| matches(span)) {
                return span.clone();
            }
            // The exporter has no way to wake a waiter: look again shortly.
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {limit:?} waiting for {what}; spans ended: {finished:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A W3C trace context as a service elsewhere would send it: random ids, sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignContext {
    /// The `traceparent` header: `00-{trace_id}-{span_id}-01`.
    pub traceparent: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// The sending span's id, 16 hex digits.
    pub span_id: String,
}

impl ForeignContext {
    /// A new one, its ids never used before.
    pub fn new() -> Self {
        let trace_id = uuid::Uuid::now_v7().simple().to_string();
        // The random end of another id.
        let span_id = uuid::Uuid::now_v7().simple().to_string()[16..].to_owned();
        ForeignContext {
            traceparent: format!("00-{trace_id}-{span_id}-01"),
            trace_id,
            span_id,
        }
    }

    /// Whether `span` is the process span of a delivery to `destination` whose parent is
    /// this context.
    pub fn is_parent_of_processing(&self, destination: &str, span: &FinishedSpan) -> bool {
        span.name == format!("process {destination}")
            && span.trace_id == self.trace_id
            && span.parent_span_id == self.span_id
            && span.parent_is_remote
    }
}

/// Checks that a broker's own client, publishing with a `traceparent` header, is the parent
/// of the span that handles its message: runs an app with a handler of JSON events on
/// `destination` (group `g`) of `channel`, calls `publish` with a new [`ForeignContext`]
/// (it sends `{"order":1}` to `destination` with the broker's client, the context's
/// `traceparent` in the broker's header place), and waits up to `limit` for the
/// handler's span under it. Fails the test otherwise.
pub async fn check_foreign_parent<C, F, Fut>(
    channel: C,
    destination: &str,
    limit: Duration,
    publish: F,
) where
    C: Channel,
    F: FnOnce(ForeignContext) -> Fut,
    Fut: Future<Output = ()>,
{
    let traces = Traces::install();
    let running = App::new(channel)
        .handler(Handler::from_fn(
            HandlerSpec::new("traced", destination).group("g"),
            |_: serde_json::Value| async { Ok::<_, Error>(()) },
        ))
        .start()
        .await
        .expect("starting the app");
    let foreign = ForeignContext::new();
    publish(foreign.clone()).await;
    traces
        .wait_for(limit, "the handler's span under the foreign one", |span| {
            foreign.is_parent_of_processing(destination, span)
        })
        .await;
    running.shutdown().await.expect("shutdown");
}

impl Default for ForeignContext {
    fn default() -> Self {
        Self::new()
    }
}

impl From<&SpanData> for FinishedSpan {
    fn from(span: &SpanData) -> Self {
        FinishedSpan {
            name: span.name.to_string(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: span.parent_span_id.to_string(),
            parent_is_remote: span.parent_span_is_remote,
            links: span
                .links
                .iter()
                .map(|link| {
                    let context = &link.span_context;
                    (
                        context.trace_id().to_string(),
                        context.span_id().to_string(),
                    )
                })
                .collect(),
        }
    }
}
