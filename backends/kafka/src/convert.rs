//! Messages to Kafka records and back.

use crate::GROUP_HEADER;
use bytes::Bytes;
use event_binder_core::{header, time_from_millis, Error, Headers, Message, Result};
use rdkafka::message::{Header, Headers as _, Message as KafkaMessage, OwnedHeaders};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The record headers of a message: its headers, plus `message-id` and `content-type`, and
/// [`GROUP_HEADER`] when it is addressed to one `group` only. A [`GROUP_HEADER`] among the
/// message's own headers is left out: addressing is the backend's, never the sender's.
/// A header name holding a NUL character is refused: librdkafka ends a header key there
/// on reading, so the header would arrive under another name (`message-id`, say).
pub(crate) fn record_headers(message: &Message, group: Option<&str>) -> Result<OwnedHeaders> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 3);
    // First, so that a consumer of another group skips the record at its first header.
    if let Some(group) = group {
        headers = headers.insert(Header {
            key: GROUP_HEADER,
            value: Some(group.as_bytes()),
        });
    }
    for (name, value) in message.headers().iter() {
        if name.contains('\0') {
            return Err(Error::InvalidName {
                kind: "header",
                name: name.to_owned(),
                reason: "a Kafka record header key ends at its first NUL character when read"
                    .to_owned(),
            });
        }
        if name != header::MESSAGE_ID && name != header::CONTENT_TYPE && name != GROUP_HEADER {
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
    Ok(headers)
}

/// The record timestamp of a message, in milliseconds since the Unix epoch.
pub(crate) fn record_timestamp(message: &Message) -> i64 {
    i64::try_from(message.timestamp_millis()).unwrap_or(i64::MAX)
}

/// The message a record carries. A record from a producer that knows nothing of
/// event-binder (no `message-id` header) gets the id `{topic}/{partition}/{offset}`, the
/// same on every read; one without a `content-type` header has none (JSON is assumed).
/// Header values that are not UTF-8 are read lossily; a header without a value is empty.
/// A header whose key is not UTF-8 cannot be read at all (rdkafka panics reading it, and
/// offers no way to the key's bytes): it is left out, with a warning, and the rest of the
/// record is read, rather than the poison pill stopping the consumer.
///
/// `None` when the record is not for the reader, a consumer of `group` (`None`:
/// anonymous): it is addressed (by [`GROUP_HEADER`]) to another group. A record addressed
/// to `group` is its message, without that header. The check rides on the one pass over
/// the headers the conversion makes anyway, and returns before the payload is copied.
///
/// Generic over the record type so that the fuzz targets can feed it `OwnedMessage`s.
pub(crate) fn message_from(record: &impl KafkaMessage, group: Option<&str>) -> Option<Message> {
    let mut id = None;
    let mut content_type = None;
    let mut headers = Headers::new();
    if let Some(record_headers) = record.headers() {
        for index in 0..record_headers.count() {
            let read = catch_unwind(AssertUnwindSafe(|| record_headers.try_get(index)));
            let Header { key, value } = match read {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        topic = record.topic(),
                        partition = record.partition(),
                        offset = record.offset(),
                        index,
                        "kafka: a record header whose key is not UTF-8 was left out"
                    );
                    continue;
                }
            };
            if key == GROUP_HEADER {
                if !matches!((group, value), (Some(group), Some(value)) if group.as_bytes() == value)
                {
                    return None;
                }
                continue;
            }
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
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_name_with_a_nul_is_refused() {
        // Found by fuzz/fuzz_targets/kafka_headers.rs: the header `'\0` came back as `'`.
        let message = Message::new("x").with_header("message-id\0forged", "id");
        let err = record_headers(&message, None).unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { kind: "header", .. }),
            "{err}"
        );
        let message = Message::new("x").with_header("a", "\0 in a value travels");
        assert!(record_headers(&message, None).is_ok());
    }
}
