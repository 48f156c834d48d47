//! Messages: payload bytes, headers, an optional key and an id that survives every hop.

use bytes::Bytes;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Names of the headers event-binder reads and writes.
///
/// Backends carry these in their broker's native place where it has one (AMQP properties,
/// SQS message attributes, Kafka record headers); the rest travel as ordinary headers.
pub mod header {
    /// The message id, when the broker has no native place for it.
    pub const MESSAGE_ID: &str = "message-id";
    /// The content type of the payload (`application/json`, `application/octet-stream`).
    pub const CONTENT_TYPE: &str = "content-type";
    /// The key, when the broker has no native place for it.
    pub const KEY: &str = "message-key";
    /// The time the message was created, in milliseconds since the Unix epoch.
    pub const TIMESTAMP: &str = "message-timestamp";
    /// On a processor's output: the id of the message it was produced from.
    pub const CAUSATION_ID: &str = "causation-id";
    /// On a dead letter: the error that sent it there.
    pub const DEAD_LETTER_ERROR: &str = "dead-letter-error";
    /// On a dead letter: how many times the handler was tried.
    pub const DEAD_LETTER_ATTEMPTS: &str = "dead-letter-attempts";
    /// On a dead letter: the destination it was consumed from.
    pub const DEAD_LETTER_DESTINATION: &str = "dead-letter-destination";
    /// On a dead letter: the group it was consumed by (empty for an anonymous subscription).
    pub const DEAD_LETTER_GROUP: &str = "dead-letter-group";
    /// On a dead letter: when it was dead-lettered, in milliseconds since the Unix epoch.
    pub const DEAD_LETTER_TIME: &str = "dead-letter-time";
    /// On a message a redrive took back from the dead letters: how many times it was.
    pub const REDRIVE_COUNT: &str = "redrive-count";
    /// The W3C trace context of the span that sent the message (feature `otel`), read by
    /// any tracing tool that speaks W3C Trace Context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Vendor-specific trace state that goes with [`TRACEPARENT`].
    pub const TRACESTATE: &str = "tracestate";
}

/// Content types understood by the built-in codecs.
pub mod content_type {
    /// JSON, the default for typed events.
    pub const JSON: &str = "application/json";
    /// Raw bytes, for [`Raw`](crate::Raw) payloads.
    pub const OCTET_STREAM: &str = "application/octet-stream";
}

/// String headers of a message, ordered by name.
///
/// ```
/// use event_binder_core::Headers;
///
/// let mut headers = Headers::new();
/// headers.insert("tenant", "acme");
/// assert_eq!(headers.get("tenant"), Some("acme"));
/// assert_eq!(headers.len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(BTreeMap::new())
    }

    /// Sets a header, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    /// The value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Removes a header, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// Whether a header is set.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers as `(name, value)` pairs, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The bytes the headers take on the wire: the sum of names and values.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One message: payload bytes, headers, an optional ordering key, an id, a timestamp and a
/// content type.
///
/// The id is a UUID v7 unless one is given; it survives every hop and is what idempotent
/// handling keys on.
///
/// ```
/// use event_binder_core::Message;
///
/// let message = Message::new(r#"{"order":42}"#)
///     .with_key("customer-7")
///     .with_header("tenant", "acme")
///     .with_content_type("application/json");
/// assert_eq!(message.key(), Some("customer-7"));
/// assert_eq!(message.headers().get("tenant"), Some("acme"));
/// assert_eq!(message.payload().as_ref(), br#"{"order":42}"#);
/// assert!(!message.id().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Shared, so that the idempotency store and derived messages keep it without a copy.
    id: Arc<str>,
    payload: Bytes,
    headers: Headers,
    key: Option<String>,
    timestamp: SystemTime,
    /// Borrowed for the well-known types, so that typed events allocate none.
    content_type: Option<Cow<'static, str>>,
}

impl Message {
    /// A message with this payload, a fresh UUID v7 id, the current time and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text);
        Self::new_with_id(&*id, payload)
    }

    /// A message with a known id (one a backend received, or one the caller chose), the
    /// current time and nothing else; no id is generated.
    ///
    /// ```
    /// let message = event_binder_core::Message::new_with_id("order-42", "{}");
    /// assert_eq!(message.id(), "order-42");
    /// ```
    pub fn new_with_id(id: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Message {
            id: id.into(),
            payload: payload.into(),
            headers: Headers::new(),
            key: None,
            timestamp: SystemTime::now(),
            content_type: None,
        }
    }

    /// Replaces the id.
    pub fn with_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the ordering key: messages with the same key keep their order where the backend
    /// can ([`Capabilities::ordering_by_key`](crate::Capabilities::ordering_by_key)).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the key, or clears it with `None`.
    pub fn with_optional_key(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the content type of the payload.
    pub fn with_content_type(mut self, content_type: impl Into<Cow<'static, str>>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the creation time.
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The id, unique per message.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id, shared: a clone of it is a reference count, not a copy.
    pub fn shared_id(&self) -> &Arc<str> {
        &self.id
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The ordering key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// When the message was created.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// The content type, if known. `None` means JSON to the built-in codecs.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The size a broker sees: payload, headers, key, id and content type.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
            + self.headers.encoded_len()
            + self.key.as_ref().map_or(0, String::len)
            + self.id.len()
            + self
                .content_type
                .as_ref()
                .map_or(0, |content_type| content_type.len())
    }

    /// The creation time in milliseconds since the Unix epoch (0 for times before it).
    pub fn timestamp_millis(&self) -> u64 {
        millis_since_epoch(self.timestamp)
    }
}

/// A fresh message id: a UUID v7, so ids sort by creation time.
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `millis` milliseconds after the Unix epoch.
pub fn time_from_millis(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let a = Message::new("x");
        let b = Message::new("x");
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn encoded_len_counts_everything_a_broker_carries() {
        let message = Message::new(vec![0u8; 10])
            .with_id("id")
            .with_key("k")
            .with_header("ab", "cd");
        assert_eq!(message.encoded_len(), 10 + 4 + 1 + 2);
    }

    #[test]
    fn millis_round_trip() {
        let time = time_from_millis(1_700_000_000_123);
        assert_eq!(millis_since_epoch(time), 1_700_000_000_123);
    }
}
