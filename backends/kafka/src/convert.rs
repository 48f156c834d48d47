//! Messages to Kafka records and back.

use bytes::Bytes;
use event_binder_core::{header, time_from_millis, Headers, Message};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};

/// The record headers of a message: its headers, plus `message-id` and `content-type`.
pub(crate) fn record_headers(message: &Message) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 2);
    for (name, value) in message.headers().iter() {
        if name != header::MESSAGE_ID && name != header::CONTENT_TYPE {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
    }
    headers = headers.insert(Header {
        key: header::MESSAGE_ID,
        value: Some(message.id().as_bytes()),
    });
    if let Some(content_type) = message.content_type() {
        headers = headers.insert(Header {
            key: header::CONTENT_TYPE,
            value: Some(content_type.as_bytes()),
        });
    }
    headers
}

/// The record timestamp of a message, in milliseconds since the Unix epoch.
pub(crate) fn record_timestamp(message: &Message) -> i64 {
    i64::try_from(message.timestamp_millis()).unwrap_or(i64::MAX)
}

/// The message a record carries. A record from a producer that knows nothing of
/// event-binder (no `message-id` header) gets the id `{topic}/{partition}/{offset}`, the
/// same on every read; one without a `content-type` header has none (JSON is assumed).
/// Header values that are not UTF-8 are read lossily; a header without a value is empty.
pub(crate) fn message_from(record: &BorrowedMessage<'_>) -> Message {
    let mut id = None;
    let mut content_type = None;
    let mut headers = Headers::new();
    if let Some(record_headers) = record.headers() {
        for Header { key, value } in record_headers.iter() {
            let value = value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            match key {
                header::MESSAGE_ID => id = Some(value),
                header::CONTENT_TYPE => content_type = Some(value),
                _ => {
                    headers.insert(key, value);
                }
            }
        }
    }
    let id = id.unwrap_or_else(|| {
        format!(
            "{}/{}/{}",
            record.topic(),
            record.partition(),
            record.offset()
        )
    });
    let payload = record
        .payload()
        .map_or_else(Bytes::new, Bytes::copy_from_slice);
    let key = record
        .key()
        .map(|key| String::from_utf8_lossy(key).into_owned());
    let mut message = Message::new_with_id(id, payload)
        .with_headers(headers)
        .with_optional_key(key);
    if let Some(millis) = record
        .timestamp()
        .to_millis()
        .and_then(|m| u64::try_from(m).ok())
    {
        message = message.with_timestamp(time_from_millis(millis));
    }
    if let Some(content_type) = content_type {
        message = message.with_content_type(content_type);
    }
    message
}
