//! The spans of deliveries and publishes, named and attributed by the OpenTelemetry semantic
//! conventions for messaging, so that a `tracing` subscriber (or OpenTelemetry through
//! `tracing-opentelemetry`) sees them as a messaging system's spans.
//!
//! With no subscriber interested, a span is disabled: its fields are not computed, and
//! recording into it does nothing.

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

/// The span of one delivery handled by `handler`, from its claim to its settlement.
pub(crate) fn process_span(
    backend: &str,
    destination: &str,
    group: Option<&str>,
    message_id: &str,
    body_size: usize,
    handler: &str,
) -> Span {
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
