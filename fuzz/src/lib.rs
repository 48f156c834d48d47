//! What the fuzz targets share: a message made from arbitrary data, and the check that a
//! message came back from a broker's representation as it was sent.

use arbitrary::Arbitrary;
use event_binder_core::{time_from_millis, Message};

/// A message with every part arbitrary.
#[derive(Debug, Arbitrary)]
pub struct ArbitraryMessage {
    id: String,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    key: Option<String>,
    content_type: Option<String>,
    /// Up to `i64::MAX` milliseconds: Kafka's timestamps are signed, and no clock gets near.
    timestamp_millis: u64,
}

impl ArbitraryMessage {
    /// The message.
    pub fn build(self) -> Message {
        let mut message = Message::new_with_id(self.id, self.payload)
            .with_optional_key(self.key)
            .with_timestamp(time_from_millis(self.timestamp_millis >> 1));
        for (name, value) in self.headers {
            message = message.with_header(name, value);
        }
        if let Some(content_type) = self.content_type {
            message = message.with_content_type(content_type);
        }
        message
    }
}

/// Panics unless `received` is `sent`: id, payload, headers, key, content type, timestamp.
pub fn assert_same(sent: &Message, received: &Message) {
    assert_eq!(received.id(), sent.id(), "id");
    assert_eq!(received.payload(), sent.payload(), "payload");
    assert_eq!(received.headers(), sent.headers(), "headers");
    assert_eq!(received.key(), sent.key(), "key");
    assert_eq!(received.content_type(), sent.content_type(), "content type");
    assert_eq!(
        received.timestamp_millis(),
        sent.timestamp_millis(),
        "timestamp"
    );
}
