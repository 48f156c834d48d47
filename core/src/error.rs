//! The one error type of event-binder.

use std::time::Duration;

/// A boxed error from a lower layer (a broker client, a codec, a user's handler).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used throughout event-binder.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in event-binder, on every backend.
///
/// Each variant carries the context a user needs to act on it: which name was refused and
/// why, which limit a payload exceeded, which backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A destination or group name breaks the naming rules; nothing was sent.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name was for: `destination`, `group` or `header`.
        kind: &'static str,
        /// The name as given.
        name: String,
        /// The rule it breaks.
        reason: String,
    },

    /// A message is larger than the backend accepts; nothing was sent or truncated.
    #[error("message of {actual} bytes exceeds the limit of {limit} bytes; nothing was sent")]
    PayloadTooLarge {
        /// The size of the message as the backend counts it (payload plus headers).
        actual: usize,
        /// The largest size the backend accepts.
        limit: usize,
    },

    /// An event could not be encoded into a payload.
    #[error("could not encode event: {0}")]
    Encode(#[source] BoxError),

    /// A payload could not be decoded into the handler's event type.
    #[error("could not decode message {message_id} ({content_type}): {source}")]
    Decode {
        /// The id of the message that failed to decode.
        message_id: String,
        /// The content type the decoder assumed.
        content_type: String,
        /// What the codec reported.
        #[source]
        source: BoxError,
    },

    /// The broker could not be reached or refused the connection (address, credentials).
    #[error("{backend}: could not connect: {message}")]
    Connection {
        /// The backend that failed (`rabbitmq`, `kafka`, …).
        backend: &'static str,
        /// What went wrong, with credentials removed.
        message: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The broker refused or failed an operation (a nacked publish, a missing topic, …).
    #[error("{backend}: {message}")]
    Broker {
        /// The backend that failed.
        backend: &'static str,
        /// What the broker refused and, where known, why.
        message: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend cannot do what was asked (for example ordering on a backend without it).
    #[error("{0}")]
    Unsupported(String),

    /// A channel URL could not be understood. The URL in the message has its password removed.
    #[error("invalid channel URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL names a backend whose cargo feature was not compiled in.
    #[error("the {scheme}:// backend is not compiled in: enable the cargo feature `{feature}` of event-binder")]
    FeatureDisabled {
        /// The URL scheme.
        scheme: String,
        /// The cargo feature that provides the backend.
        feature: &'static str,
    },

    /// An operation did not complete in time.
    #[error("{what} did not complete within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it was waited for.
        after: Duration,
    },

    /// The channel, producer or consumer was closed or is shutting down.
    #[error("{0} is shut down")]
    ShutDown(&'static str),

    /// The idempotency store failed; the message was not handled and will come back.
    #[error("idempotency store: {0}")]
    Idempotency(#[source] BoxError),

    /// Invalid configuration (a zero concurrency, a handler registered twice, …).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// A [`Error::Broker`] with no underlying client error.
    pub fn broker(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Broker {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A [`Error::Broker`] wrapping the client's error.
    pub fn broker_source(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Broker {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }
}
