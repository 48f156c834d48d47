//! The spans of deliveries and publishes, named and attributed by the OpenTelemetry semantic
//! conventions for messaging, so that a `tracing` subscriber (or OpenTelemetry through
//! `tracing-opentelemetry`) sees them as a messaging system's spans.
//!
//! With no subscriber interested, a span is disabled: its fields are not computed, and
//! recording into it does nothing.
//!
//! With the feature `otel`, the trace context crosses the broker: the W3C `traceparent` and
//! `tracestate` of a send span go into the headers of the messages it sends (each backend
//! carries headers in its broker's native place), and a delivery's process span takes the
//! context found there as its parent, whoever published it.

use crate::message::Message;
use tracing::field::Empty;
use tracing::Span;

/// The target of every span and event the runtime makes.
pub(crate) const TARGET: &str = "event_binder";

/// `messaging.system` of a backend: the semantic conventions' name where they have one.
pub(crate) fn messaging_system(backend: &str) -> &str {
    match backend {
        "sns-sqs" => "aws_sqs",
        other => other,
    }
}

/// What a process span is about: one delivery, or one call of a batch handler.
pub(crate) enum Processing<'a> {
    /// One delivery: its message's id and payload size.
    One {
        message_id: &'a str,
        body_size: usize,
    },
    /// A batch of `count` deliveries.
    Batch { count: usize },
}

/// The span of processing by `handler`, from the claim to the settlement.
pub(crate) fn process_span(
    backend: &str,
    destination: &str,
    group: Option<&str>,
    handler: &str,
    processing: Processing<'_>,
) -> Span {
    let (message_id, body_size, count) = match processing {
        Processing::One {
            message_id,
            body_size,
        } => (Some(message_id), Some(body_size), None),
        Processing::Batch { count } => (None, None, Some(count)),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = Empty,
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = messaging_system(backend),
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = destination,
        messaging.consumer.group.name = group,
        messaging.message.id = message_id,
        messaging.message.body.size = body_size,
        messaging.batch.message_count = count,
        event_binder.handler = handler,
        event_binder.attempt = Empty,
        event_binder.outcome = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("process {destination}"));
    }
    span
}

/// The span of sending `count` messages to `destination` (the id when it is one).
pub(crate) fn send_span(
    backend: &str,
    destination: &str,
    message_id: Option<&str>,
    count: usize,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = Empty,
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = messaging_system(backend),
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = destination,
        messaging.message.id = message_id,
        messaging.batch.message_count = (count > 1).then_some(count),
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("send {destination}"));
    }
    span
}

/// Records how a delivery ended: `handled`, `duplicate`, `retried`, `dead_lettered` or
/// `aborted`; with an error class (`handler`, `undecodable`, `max_deliveries`), the
/// span's status is an error.
pub(crate) fn record_outcome(span: &Span, outcome: &'static str, error_type: Option<&'static str>) {
    // Recording looks the field up by name, even in a disabled span: skipped there.
    if span.is_disabled() {
        return;
    }
    span.record("event_binder.outcome", outcome);
    if let Some(error_type) = error_type {
        record_error(span, error_type);
    }
}

/// Records which attempt of the delivery's handler this is.
pub(crate) fn record_attempt(span: &Span, attempt: u32) {
    if !span.is_disabled() {
        span.record("event_binder.attempt", attempt);
    }
}

/// Marks the span failed, with the class of its error.
pub(crate) fn record_error(span: &Span, error_type: &'static str) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

/// What a send returned, its span marked failed if it failed.
pub(crate) fn sent<T, E>(span: &Span, sent: Result<T, E>) -> Result<T, E> {
    if sent.is_err() {
        record_error(span, "publish");
    }
    sent
}

/// Writes the trace context of the send `span` into the headers of `messages`, replacing
/// any they had: the send is their parent now. Sent from outside any span (an outbox's
/// relay, say), a message that carries its writer's context keeps it, and the send links
/// to it. Nothing without the feature `otel`, or when no OpenTelemetry layer records the
/// span.
pub(crate) fn propagate<'a>(span: &Span, messages: impl IntoIterator<Item = &'a mut Message>) {
    #[cfg(feature = "otel")]
    otel::propagate(span, messages);
    #[cfg(not(feature = "otel"))]
    let _ = (span, messages);
}

/// Links a batch's process `span` to the trace context of each message that has one (a
/// batch has many parents: the semantic conventions link them). Nothing without the
/// feature `otel`.
pub(crate) fn link_each<'a>(span: &Span, messages: impl IntoIterator<Item = &'a Message>) {
    #[cfg(feature = "otel")]
    otel::link_each(span, messages);
    #[cfg(not(feature = "otel"))]
    let _ = (span, messages);
}

/// Writes the W3C trace context of the current span (`traceparent`, `tracestate`) into
/// `message`'s headers, for a message sent later from outside that span: an outbox writes
/// it with the event, and its relay's send keeps it, so that the handler's span continues
/// the writer's trace. Nothing without the cargo feature `otel`, or when no OpenTelemetry
/// layer records the current span.
///
/// ```
/// use event_binder_core::{write_trace_context, Message};
///
/// let mut message = Message::new("{}");
/// write_trace_context(&mut message); // no span here: nothing written
/// assert!(message.headers().is_empty());
/// ```
pub fn write_trace_context(message: &mut Message) {
    #[cfg(feature = "otel")]
    otel::write_current(message);
    #[cfg(not(feature = "otel"))]
    let _ = message;
}

/// Makes the trace context in `message`'s headers, when it has a valid one, the parent of
/// its process `span`. Nothing without the feature `otel`.
pub(crate) fn adopt_parent(span: &Span, message: &Message) {
    #[cfg(feature = "otel")]
    otel::adopt_parent(span, message);
    #[cfg(not(feature = "otel"))]
    let _ = (span, message);
}

#[cfg(feature = "otel")]
mod otel {
    use crate::message::{header, Headers, Message};
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::Context;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub(super) fn propagate<'a>(span: &Span, messages: impl IntoIterator<Item = &'a mut Message>) {
        if span.is_disabled() {
            return;
        }
        // Read before the span is entered: the caller's span, if it has one.
        let detached = Span::current().is_none();
        let context = span.context();
        let mut fields = Fields::default();
        TraceContextPropagator::new().inject_context(&context, &mut fields);
        if fields.0.is_empty() {
            return;
        }
        for message in messages {
            if detached {
                if let Some(writer) = sender_of(message) {
                    span.add_link(writer.span().span_context().clone());
                    continue;
                }
            }
            let headers = message.headers_mut();
            for (name, value) in &fields.0 {
                headers.insert(*name, value.clone());
            }
        }
    }

    pub(super) fn write_current(message: &mut Message) {
        let current = Span::current();
        if current.is_disabled() {
            return;
        }
        let mut fields = Fields::default();
        TraceContextPropagator::new().inject_context(&current.context(), &mut fields);
        let headers = message.headers_mut();
        for (name, value) in fields.0 {
            headers.insert(name, value);
        }
    }

    pub(super) fn adopt_parent(span: &Span, message: &Message) {
        if span.is_disabled() {
            return;
        }
        if let Some(parent) = sender_of(message) {
            // Fails only when no OpenTelemetry layer records the span: nothing to parent.
            let _ = span.set_parent(parent);
        }
    }

    pub(super) fn link_each<'a>(span: &Span, messages: impl IntoIterator<Item = &'a Message>) {
        if span.is_disabled() {
            return;
        }
        for sender in messages.into_iter().filter_map(sender_of) {
            span.add_link(sender.span().span_context().clone());
        }
    }

    /// The context of the span that sent `message`, when its headers carry a valid one. A
    /// malformed `traceparent` from a foreign producer reads as none.
    fn sender_of(message: &Message) -> Option<Context> {
        let headers = message.headers();
        if !headers.contains(header::TRACEPARENT) {
            return None;
        }
        let context = TraceContextPropagator::new().extract(&Read(headers));
        context.span().span_context().is_valid().then_some(context)
    }

    /// The trace context's headers, written once for all the messages of a send.
    #[derive(Default)]
    struct Fields(Vec<(&'static str, String)>);

    impl Injector for Fields {
        fn set(&mut self, key: &str, value: String) {
            // An empty `tracestate` says nothing, and SNS refuses empty attributes.
            let name = match key {
                header::TRACEPARENT => header::TRACEPARENT,
                header::TRACESTATE => header::TRACESTATE,
                _ => return,
            };
            if !value.is_empty() {
                self.0.push((name, value));
            }
        }
    }

    struct Read<'a>(&'a Headers);

    impl Extractor for Read<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(name, _)| name).collect()
        }
    }
}
