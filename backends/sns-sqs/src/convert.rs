//! Messages to SNS/SQS bodies and message attributes, and back.
//!
//! SNS and SQS carry a text body and at most 10 message attributes. The id, content type,
//! key and timestamp travel as String attributes of their own, and so do the headers while
//! everything fits in 10 attributes with names and values SNS accepts; otherwise the
//! headers travel together, as one JSON object in the attribute `message-headers`. A body
//! that is not text SNS accepts (binary, control characters, empty) travels in base64,
//! marked by the attribute `payload-encoding`.

use base64::Engine as _;
use bytes::Bytes;
use event_binder_core::{header, time_from_millis};
use event_binder_core::{Error, Headers, Message};
use std::collections::{BTreeMap, HashMap};

/// The attribute holding the headers when they do not travel one by one.
pub(crate) const PACKED_HEADERS: &str = "message-headers";
/// The attribute saying how the body encodes the payload, when it is not the payload.
pub(crate) const PAYLOAD_ENCODING: &str = "payload-encoding";
/// The body stands for the payload in base64.
const BASE64: &str = "base64";
/// The payload is empty (SNS and SQS refuse empty bodies).
const EMPTY: &str = "empty";
/// The most message attributes SNS and SQS carry.
const MAX_ATTRIBUTES: usize = 10;
/// The longest message group and deduplication id of a FIFO topic.
const MAX_FIFO_ID: usize = 128;
/// The data type of every attribute written (moto loses messages with Binary ones).
const STRING: &str = "String";

/// The attributes the backend itself writes; a header with one of these names is packed.
const RESERVED: [&str; 6] = [
    header::MESSAGE_ID,
    header::CONTENT_TYPE,
    header::KEY,
    header::TIMESTAMP,
    PACKED_HEADERS,
    PAYLOAD_ENCODING,
];

/// The headers that travel as attributes of their own even when the others are packed (at
/// most 5 attributes of the backend's own, plus these 2 and the packed ones: 8 of 10).
const TRACE_CONTEXT: [&str; 2] = [header::TRACEPARENT, header::TRACESTATE];

/// A message as SNS or SQS takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub(crate) body: String,
    /// String attributes, at most 10.
    pub(crate) attributes: Vec<(String, String)>,
    /// The size AWS counts against its limit: the body plus every attribute's name, type
    /// and value.
    pub(crate) size: usize,
}

impl Encoded {
    /// Encodes a message.
    pub(crate) fn new(message: &Message) -> Result<Self, Error> {
        let (body, encoding) = body_of(message.payload());
        let mut attributes = vec![(header::MESSAGE_ID.to_owned(), message.id().to_owned())];
        if let Some(content_type) = message.content_type() {
            attributes.push((header::CONTENT_TYPE.to_owned(), content_type.to_owned()));
        }
        if let Some(key) = message.key() {
            attributes.push((header::KEY.to_owned(), key.to_owned()));
        }
        attributes.push((
            header::TIMESTAMP.to_owned(),
            message.timestamp_millis().to_string(),
        ));
        if let Some(encoding) = encoding {
            attributes.push((PAYLOAD_ENCODING.to_owned(), encoding.to_owned()));
        }
        let headers = message.headers();
        let one_by_one = attributes.len() + headers.len() <= MAX_ATTRIBUTES
            && headers
                .iter()
                .all(|(name, value)| is_free_name(name) && is_valid_value(value));
        if one_by_one {
            attributes.extend(headers.iter().map(|(n, v)| (n.to_owned(), v.to_owned())));
        } else {
            // The trace context keeps attributes of its own, where tracing tools look for it.
            let mut packed = Headers::new();
            for (name, value) in headers.iter() {
                if TRACE_CONTEXT.contains(&name) && is_valid_value(value) {
                    attributes.push((name.to_owned(), value.to_owned()));
                } else {
                    packed.insert(name, value);
                }
            }
            attributes.push((PACKED_HEADERS.to_owned(), pack(&packed)?));
        }
        if let Some((name, _)) = attributes.iter().find(|(_, value)| !is_valid_value(value)) {
            return Err(Error::Encode(
                format!(
                    "message {:?}: its {name} must be non-empty text SNS accepts \
                     (no control characters)",
                    message.id()
                )
                .into(),
            ));
        }
        let size = body.len()
            + attributes
                .iter()
                .map(|(name, value)| name.len() + STRING.len() + value.len())
                .sum::<usize>();
        Ok(Encoded {
            body,
            attributes,
            size,
        })
    }

    /// Drops the attributes this backend adds on top of the message itself, the least
    /// needed first (timestamp, content type, key, then id), until the message fits
    /// `limit`, and tells which were dropped. The headers and the payload encoding stay:
    /// without them the message would change. For a message that came from a foreign
    /// producer at the size limit, which carried none of them, this gives back what it
    /// was.
    pub(crate) fn drop_own_attributes_to_fit(&mut self, limit: usize) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        for name in [
            header::TIMESTAMP,
            header::CONTENT_TYPE,
            header::KEY,
            header::MESSAGE_ID,
        ] {
            if self.size <= limit {
                break;
            }
            if let Some(index) = self.attributes.iter().position(|(n, _)| n == name) {
                let (name_, value) = self.attributes.remove(index);
                self.size -= name_.len() + STRING.len() + value.len();
                dropped.push(name);
            }
        }
        dropped
    }

    /// The attributes as SNS takes them.
    pub(crate) fn sns_attributes(
        &self,
    ) -> HashMap<String, aws_sdk_sns::types::MessageAttributeValue> {
        self.attributes_as(|value| {
            aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type(STRING)
                .string_value(value)
                .build()
                .ok()
        })
    }

    /// The attributes as SQS takes them.
    pub(crate) fn sqs_attributes(
        &self,
    ) -> HashMap<String, aws_sdk_sqs::types::MessageAttributeValue> {
        self.attributes_as(|value| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type(STRING)
                .string_value(value)
                .build()
                .ok()
        })
    }

    /// The attributes in one client's type (SNS and SQS each have their own). Building a
    /// String attribute with a type and a value cannot fail.
    fn attributes_as<V>(&self, build: impl Fn(&str) -> Option<V>) -> HashMap<String, V> {
        self.attributes
            .iter()
            .filter_map(|(name, value)| build(value).map(|value| (name.clone(), value)))
            .collect()
    }
}

/// The message group id of a FIFO message: its key, or its id when it has none (no order
/// between keyless messages). A key SNS would refuse is replaced by a name-based UUID of it.
pub(crate) fn fifo_group_id(message: &Message) -> String {
    fifo_id(message.key().unwrap_or(message.id()))
}

/// The deduplication id of a FIFO message: its id, made to fit as for the group id.
pub(crate) fn fifo_deduplication_id(message: &Message) -> String {
    fifo_id(message.id())
}

/// The deduplication id of a FIFO message sent straight to a group's queue: its id, plus
/// its redrive count when it has one. SNS hands a publish's deduplication id on to the
/// queue, and for 5 minutes SQS drops a message with an id it has seen while answering
/// that it was sent: a dead letter redriven soon after its publish would be lost. With
/// its count each redrive is new to the queue, while a redrive sent again (a crash before
/// its dead letter was removed) is still dropped as the repeat it is.
pub(crate) fn direct_deduplication_id(message: &Message) -> String {
    match message.headers().get(header::REDRIVE_COUNT) {
        Some(count) => fifo_id(&format!("{}.redrive-{count}", message.id())),
        None => fifo_deduplication_id(message),
    }
}

fn fifo_id(text: &str) -> String {
    let fits =
        !text.is_empty() && text.len() <= MAX_FIFO_ID && text.chars().all(|c| c.is_ascii_graphic());
    if fits {
        text.to_owned()
    } else {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).to_string()
    }
}

/// The text of each message attribute as SQS hands it over: a String one as it is, a Binary
/// one in base64; one of any other data type with neither value is left out.
pub(crate) fn attribute_texts(
    attributes: HashMap<String, aws_sdk_sqs::types::MessageAttributeValue>,
) -> HashMap<String, String> {
    attributes
        .into_iter()
        .filter_map(|(name, value)| {
            let text = value.string_value.or_else(|| {
                value
                    .binary_value
                    .map(|blob| base64::engine::general_purpose::STANDARD.encode(blob.into_inner()))
            })?;
            Some((name, text))
        })
        .collect()
}

/// Decodes a received SQS message. `fallback_id` (the SQS message id) stands in for a
/// missing `message-id` attribute, so messages from foreign producers get a stable id.
pub(crate) fn decode(
    body: Option<&str>,
    attributes: &HashMap<String, String>,
    fallback_id: &str,
    sent_millis: Option<u64>,
) -> Message {
    let body = body.unwrap_or_default();
    let payload = match attributes.get(PAYLOAD_ENCODING).map(String::as_str) {
        Some(BASE64) => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map(Bytes::from)
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "a body marked base64 is not base64; handing it on as it is");
                Bytes::copy_from_slice(body.as_bytes())
            }),
        Some(EMPTY) => Bytes::new(),
        _ => Bytes::copy_from_slice(body.as_bytes()),
    };
    let id = attributes
        .get(header::MESSAGE_ID)
        .map_or(fallback_id, String::as_str);
    let mut headers = Headers::new();
    for (name, value) in attributes {
        if !RESERVED.contains(&name.as_str()) {
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(packed) = attributes.get(PACKED_HEADERS) {
        match serde_json::from_str::<BTreeMap<String, String>>(packed) {
            Ok(unpacked) => unpacked.into_iter().for_each(|(name, value)| {
                headers.insert(name, value);
            }),
            Err(err) => {
                tracing::warn!(%err, "the packed headers are not a JSON object of strings; keeping them packed");
                headers.insert(PACKED_HEADERS, packed.clone());
            }
        }
    }
    let timestamp = attributes
        .get(header::TIMESTAMP)
        .and_then(|millis| millis.parse().ok())
        .or(sent_millis)
        .map(time_from_millis);
    let mut message = Message::new_with_id(id, payload)
        .with_headers(headers)
        .with_optional_key(attributes.get(header::KEY).cloned());
    if let Some(content_type) = attributes.get(header::CONTENT_TYPE) {
        message = message.with_content_type(content_type.clone());
    }
    if let Some(timestamp) = timestamp {
        message = message.with_timestamp(timestamp);
    }
    message
}

/// The body for a payload, and the encoding attribute's value when the body is not the
/// payload itself.
fn body_of(payload: &Bytes) -> (String, Option<&'static str>) {
    if payload.is_empty() {
        return (EMPTY.to_owned(), Some(EMPTY));
    }
    match std::str::from_utf8(payload) {
        Ok(text) if text.chars().all(is_allowed_char) => (text.to_owned(), None),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            Some(BASE64),
        ),
    }
}

/// The headers as one JSON object, escaping what SNS would refuse.
fn pack(headers: &Headers) -> Result<String, Error> {
    let map: BTreeMap<&str, &str> = headers.iter().collect();
    let json = serde_json::to_string(&map).map_err(|err| Error::Encode(err.into()))?;
    // serde_json escapes control characters; the few other characters SNS refuses
    // (U+FFFE, U+FFFF) can only stand inside JSON strings, where an escape is equivalent.
    Ok(json
        .chars()
        .map(|c| {
            if is_allowed_char(c) {
                c.to_string()
            } else {
                format!("\\u{:04x}", u32::from(c))
            }
        })
        .collect())
}

/// A header name that can travel as an attribute of its own: a valid attribute name that
/// the backend does not use itself.
fn is_free_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (1..=256).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && !RESERVED.contains(&name)
}

fn is_valid_value(value: &str) -> bool {
    !value.is_empty() && value.chars().all(is_allowed_char)
}

/// The characters SNS and SQS accept in bodies and String attributes.
fn is_allowed_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The `SentTimestamp` system attribute, in milliseconds.
pub(crate) fn sent_millis(value: Option<&String>) -> Option<u64> {
    value.and_then(|millis| millis.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &Message) -> (Encoded, Message) {
        let encoded = Encoded::new(message).unwrap();
        let attributes: HashMap<String, String> = encoded.attributes.iter().cloned().collect();
        let decoded = decode(Some(&encoded.body), &attributes, "sqs-id", None);
        (encoded, decoded)
    }

    #[test]
    fn text_travels_as_it_is_with_attributes_one_by_one() {
        let message = Message::new(r#"{"n":1}"#)
            .with_key("k")
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let (encoded, decoded) = round_trip(&message);
        assert_eq!(encoded.body, r#"{"n":1}"#);
        assert!(encoded.attributes.iter().any(|(n, _)| n == "tenant"));
        assert_eq!(decoded.id(), message.id());
        assert_eq!(decoded.key(), Some("k"));
        assert_eq!(decoded.headers().get("tenant"), Some("acme"));
        assert_eq!(decoded.content_type(), Some("application/json"));
        assert_eq!(decoded.timestamp_millis(), message.timestamp_millis());
    }

    #[test]
    fn more_than_ten_attributes_are_packed_transparently() {
        let mut message = Message::new("x");
        for i in 0..12 {
            message = message.with_header(format!("h{i}"), i.to_string());
        }
        message = message
            .with_header("has space", "")
            .with_header("message-key", "mine");
        let (encoded, decoded) = round_trip(&message);
        assert!(encoded.attributes.len() <= MAX_ATTRIBUTES);
        assert!(encoded.attributes.iter().any(|(n, _)| n == PACKED_HEADERS));
        assert_eq!(decoded.headers(), message.headers());
        assert_eq!(decoded.key(), None);
    }

    #[test]
    fn the_trace_context_keeps_its_own_attributes_when_the_headers_are_packed() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut message = Message::new("x")
            .with_key("k")
            .with_header(header::TRACEPARENT, traceparent)
            .with_header(header::TRACESTATE, "vendor=a");
        for i in 0..12 {
            message = message.with_header(format!("h{i}"), i.to_string());
        }
        let (encoded, decoded) = round_trip(&message);
        assert!(encoded.attributes.len() <= MAX_ATTRIBUTES);
        let attribute = |name: &str| {
            encoded
                .attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(attribute(header::TRACEPARENT), Some(traceparent));
        assert_eq!(attribute(header::TRACESTATE), Some("vendor=a"));
        assert!(!attribute(PACKED_HEADERS).unwrap().contains(traceparent));
        assert_eq!(decoded.headers(), message.headers());
    }

    #[test]
    fn binary_and_empty_payloads_survive() {
        for payload in [vec![0u8, 159, 146, 150, 1], Vec::new(), b"a\x01b".to_vec()] {
            let message = Message::new(payload.clone());
            let (encoded, decoded) = round_trip(&message);
            assert!(!encoded.body.is_empty());
            assert_eq!(decoded.payload().as_ref(), payload.as_slice());
        }
    }

    #[test]
    fn size_counts_body_and_attributes() {
        let message = Message::new_with_id("id", "body");
        let encoded = Encoded::new(&message).unwrap();
        let attributes: usize = encoded
            .attributes
            .iter()
            .map(|(n, v)| n.len() + 6 + v.len())
            .sum();
        assert_eq!(encoded.size, 4 + attributes);
    }

    #[test]
    fn foreign_messages_get_the_sqs_id_and_json() {
        let decoded = decode(Some("{}"), &HashMap::new(), "sqs-id", Some(1_000));
        assert_eq!(decoded.id(), "sqs-id");
        assert_eq!(decoded.payload().as_ref(), b"{}");
        assert_eq!(decoded.timestamp_millis(), 1_000);
    }

    #[test]
    fn fifo_ids_fit() {
        let keyed = Message::new("x").with_key("customer 42 ü");
        let group = fifo_group_id(&keyed);
        assert!(group.len() <= MAX_FIFO_ID && group.chars().all(|c| c.is_ascii_graphic()));
        assert_eq!(group, fifo_group_id(&keyed));
        let plain = Message::new_with_id("abc", "x").with_key("k-1");
        assert_eq!(fifo_group_id(&plain), "k-1");
        assert_eq!(fifo_deduplication_id(&plain), "abc");
        assert_eq!(direct_deduplication_id(&plain), "abc");
        let redriven = plain.with_header(header::REDRIVE_COUNT, "2");
        assert_eq!(direct_deduplication_id(&redriven), "abc.redrive-2");
    }

    #[test]
    fn control_characters_in_ids_are_refused() {
        let message = Message::new_with_id("a\u{1}b", "x");
        assert!(matches!(Encoded::new(&message), Err(Error::Encode(_))));
    }
}
