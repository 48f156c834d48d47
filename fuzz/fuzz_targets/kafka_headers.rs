//! Kafka records from any producer: header pairs (key, value or none), record key,
//! payload, timestamp (create or log-append time, or none), topic, partition and offset,
//! read by a consumer of a group or an anonymous one; made into rdkafka `OwnedMessage`s
//! and converted as the consumer converts what librdkafka hands it. Nothing may panic, a
//! record not addressed to another group (`event-binder-group`) must be read, and what this
//! backend produces (arbitrary messages, addressed or not, and every decoded message
//! produced on) must come back unchanged, to the addressed group only.
#![no_main]

use arbitrary::Arbitrary;
use event_binder_core::Message;
use event_binder_fuzz::{assert_same, ArbitraryMessage};
use event_binder_kafka::{fuzzing, GROUP_HEADER};
use libfuzzer_sys::fuzz_target;
use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};

/// The record headers that stand for a message's own parts or its addressing.
const RESERVED: [&str; 3] = ["message-id", "content-type", GROUP_HEADER];

#[derive(Debug, Arbitrary)]
enum Input {
    /// A record from any producer, and the group (or none: anonymous) of its reader.
    Received(Record, Option<String>),
    /// A message this backend produces, addressed to a group or not, and another group.
    Sent(ArbitraryMessage, Option<String>, String),
}

#[derive(Debug, Arbitrary)]
struct Record {
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp: RecordTimestamp,
    topic: String,
    partition: i32,
    offset: i64,
}

#[derive(Debug, Arbitrary)]
enum RecordTimestamp {
    NotAvailable,
    CreateTime(i64),
    LogAppendTime(i64),
}

fuzz_target!(init: abort_on_other_panics(), |input: Input| match input {
    Input::Received(record, group) => {
        // librdkafka ends a key at its first NUL when reading it.
        let addressed = record
            .headers
            .iter()
            .any(|(key, _)| key.split(|&b| b == 0).next() == Some(GROUP_HEADER.as_bytes()));
        let record = record.into_owned();
        match fuzzing::message_from(&record, group.as_deref()) {
            Some(message) => round_trip(&message, group.as_deref(), None),
            None => assert!(addressed, "a record addressed to no group was skipped"),
        }
    }
    Input::Sent(message, group, other) => {
        round_trip(&message.build(), group.as_deref(), Some(&other));
    }
});

/// rdkafka panics reading a record header key that is not UTF-8; the backend catches that
/// panic and leaves the header out. libFuzzer's panic hook aborts on every panic, caught or
/// not: this one lets that panic alone unwind to the backend, and hands every other to
/// libFuzzer's hook.
fn abort_on_other_panics() {
    let libfuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let reading_a_header_key = info.location().is_some_and(|location| {
            let file = location.file();
            file.contains("rdkafka-") && file.ends_with("message.rs")
        });
        if !reading_a_header_key {
            libfuzzer_hook(info);
        }
    }));
}

impl Record {
    fn into_owned(self) -> OwnedMessage {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = add_header(headers, key, value.as_deref());
        }
        let timestamp = match self.timestamp {
            RecordTimestamp::NotAvailable => Timestamp::NotAvailable,
            RecordTimestamp::CreateTime(millis) => Timestamp::CreateTime(millis),
            RecordTimestamp::LogAppendTime(millis) => Timestamp::LogAppendTime(millis),
        };
        OwnedMessage::new(
            self.payload,
            self.key,
            self.topic,
            timestamp,
            self.partition,
            self.offset,
            Some(headers),
        )
    }
}

/// A header with its key as the bytes a foreign producer may send, through librdkafka
/// itself: rdkafka's API takes only text.
fn add_header(headers: OwnedHeaders, key: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let native = headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders
        as *mut rdkafka::bindings::rd_kafka_headers_t;
    let (value_ptr, value_len) = match value {
        Some(value) => (value.as_ptr().cast(), value.len() as isize),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `native` is the live, writable header list `headers` owns, and librdkafka
    // copies the key and value it is given with their lengths.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            native,
            key.as_ptr().cast(),
            key.len() as isize,
            value_ptr,
            value_len,
        )
    };
    assert_eq!(
        err,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    headers
}

/// Produces `message` (as far as the record it becomes) addressed to `group`, and reads it
/// back as that group: it must be unchanged; a reader of `other` group (or an anonymous
/// one) must skip it when it is addressed to a group.
fn round_trip(message: &Message, group: Option<&str>, other: Option<&str>) {
    if message
        .headers()
        .iter()
        .any(|(name, _)| RESERVED.contains(&name))
    {
        return;
    }
    // Header names with a NUL character are refused: they would not come back.
    let Ok((headers, timestamp)) = fuzzing::record_parts(message, group) else {
        assert!(message
            .headers()
            .iter()
            .any(|(name, _)| name.contains('\0')));
        return;
    };
    let record = OwnedMessage::new(
        Some(message.payload().to_vec()),
        message.key().map(|key| key.as_bytes().to_vec()),
        "orders".to_owned(),
        Timestamp::CreateTime(timestamp),
        0,
        0,
        Some(headers),
    );
    let back = fuzzing::message_from(&record, group).expect("a record for its own group is read");
    assert_same(message, &back);
    if let Some(group) = group {
        assert!(
            fuzzing::message_from(&record, None).is_none(),
            "read by an anonymous consumer"
        );
        if let Some(other) = other.filter(|other| *other != group) {
            assert!(
                fuzzing::message_from(&record, Some(other)).is_none(),
                "read by {other:?}"
            );
        }
    }
}
