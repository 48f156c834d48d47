//! The core of event-binder: what every backend and every handler shares.
//!
//! - [`Message`], [`Headers`] and [`Delivery`]: what travels, and how it is settled.
//! - [`Channel`], [`Producer`], [`Consumer`]: the traits each backend implements.
//! - [`Decode`] / [`Encode`]: plain JSON for serde types, [`Raw`] bytes otherwise.
//! - [`App`]: the handler runtime (bounded concurrency, idempotency, retry with backoff,
//!   dead letters, graceful shutdown) over any [`Channel`].
//! - [`Publisher`]: typed publishing to destinations named at compile or run time.
//! - [`Channel::redrive`] and [`Channel::purge_dead_letters`]: dead letters sent back to the
//!   group that failed them, listed, or deleted, on every backend ([`RedriveOptions`]).
//! - [`asyncapi`]: the event types of each handler and, with the cargo feature `asyncapi`,
//!   the AsyncAPI 3.0 document of an app (`App::asyncapi`).
//! - `Configuration` (cargo feature `config`): handlers' destination, group, concurrency,
//!   retry and batch settings from a TOML or YAML file and `EVENT_BINDER_*` variables.
//! - [`metrics`]: the runtime's metrics (through the `metrics` facade) and their names.
//! - `conformance` (cargo feature `conformance`): the suite every backend must pass.
//! - Tracing: a `process` span for every delivery and a `send` span for every publish
//!   (target `event_binder`, OpenTelemetry messaging attributes); with the cargo feature
//!   `otel`, the W3C trace context goes into each message's headers and becomes the parent
//!   of the span that handles it, on every backend.
//!
//! Backend authors depend on this crate alone; applications use the `event-binder` facade.

pub mod asyncapi;
mod channel;
mod codec;
mod delivery;
mod erased;
mod error;
mod idempotency;
mod message;
pub mod metrics;
mod name;
mod publisher;
mod redrive;
mod runtime;
mod telemetry;
mod url;

#[cfg(feature = "conformance")]
pub mod conformance;

/// The configuration library [`Configuration::from_figment`] takes, so that its version is
/// always the one this crate uses.
#[cfg(feature = "config")]
pub use figment;
#[cfg(feature = "config")]
pub use runtime::Configuration;

pub use asyncapi::PayloadType;
pub use channel::{Capabilities, Channel, Consumer, Producer, Subscription};
pub use codec::{Decode, Encode, Encoded, Raw};
pub use delivery::{
    as_delivered, dead_letter_retry_delay, shorten_dead_letter_error, Acknowledger,
    DeadLetterFailed, Delivery, Origin,
};
pub use erased::{BoxAcknowledger, BoxChannel, BoxConsumer, BoxProducer};
pub use error::{BoxError, Error, Result};
pub use idempotency::{Claim, ClaimKey, IdempotencyStore, MemoryIdempotencyStore};
pub use message::{
    content_type, header, millis_since_epoch, new_message_id, time_from_millis, Headers, Message,
};
pub use name::{validate_destination, validate_group, validate_prefix, DottedNames, MAX_NAME_LEN};
pub use publisher::Publisher;
pub use redrive::RedriveOptions;
pub use runtime::{
    App, Attempt, Batch, BatchFailure, BatchFn, BatchHandler, BatchHandlerFn, BatchService,
    BatchSink, BindingState, BindingStatus, Bindings, CallFuture, Context, Events, FnService,
    FromContext, Handler, HandlerFn, HandlerService, HandlerSpec, Health, IntoBatchHandler,
    IntoHandler, Key, MessageId, NoState, NonRetryable, OutputPolicy, Processor, ProvidedBy,
    RetryAfter, RetryPolicy, RunningApp, Sink, State, StateOf,
};
/// The JSON Schema crate of the `asyncapi` feature: derive `JsonSchema` with this version.
#[cfg(feature = "asyncapi")]
pub use schemars;
pub use telemetry::write_trace_context;
pub use tower_layer::{layer_fn, Layer};
pub use tower_service::Service;
pub use url::{hide_secrets, is_secret_param, redact_url, ChannelUrl};

/// Used by the code the `#[handler]` macro generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::asyncapi::{NameOf, SchemaOf, SchemaProbe};
    pub use crate::runtime::{Extractors, Merge, Route, Routed, RoutedFn};
}
