//! SQS messages as a queue hands them over, from any producer: body, message id, message
//! attributes of every data type (String, Number, Binary, custom ones such as
//! `String.json`), the `SentTimestamp` system attribute; built with the SDK's own builders
//! and decoded as the consumer does. Decoding must not panic, and what this backend sends
//! (arbitrary messages, and every decoded one sent on) must come back unchanged: the
//! attribute packing (`message-headers`, `payload-encoding`) is lossless.
#![no_main]

use arbitrary::Arbitrary;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    Message as SqsMessage, MessageAttributeValue, MessageSystemAttributeName,
};
use event_binder_core::Message;
use event_binder_fuzz::{assert_same, ArbitraryMessage};
use event_binder_sns_sqs::fuzzing;
use libfuzzer_sys::fuzz_target;

/// SNS and SQS carry at most 10 message attributes.
const MAX_ATTRIBUTES: usize = 10;

#[derive(Debug, Arbitrary)]
enum Input {
    /// A message from any producer.
    Received(Received),
    /// A message this backend sends.
    Sent(ArbitraryMessage),
}

#[derive(Debug, Arbitrary)]
struct Received {
    body: Option<String>,
    message_id: Option<String>,
    attributes: Vec<Attribute>,
    sent_timestamp: Option<String>,
}

#[derive(Debug, Arbitrary)]
struct Attribute {
    name: String,
    data_type: DataType,
    string_value: Option<String>,
    binary_value: Option<Vec<u8>>,
}

#[derive(Debug, Arbitrary)]
enum DataType {
    String,
    Number,
    Binary,
    Custom(String),
}

fuzz_target!(|input: Input| match input {
    Input::Received(received) => {
        let message = fuzzing::decode(&received.into_sqs(), "receipt-handle");
        round_trip(&message);
    }
    Input::Sent(message) => round_trip(&message.build()),
});

impl Received {
    fn into_sqs(self) -> SqsMessage {
        let attributes = self
            .attributes
            .into_iter()
            .filter_map(|attribute| {
                let data_type = match attribute.data_type {
                    DataType::String => "String".to_owned(),
                    DataType::Number => "Number".to_owned(),
                    DataType::Binary => "Binary".to_owned(),
                    DataType::Custom(name) => name,
                };
                let value = MessageAttributeValue::builder()
                    .data_type(data_type)
                    .set_string_value(attribute.string_value)
                    .set_binary_value(attribute.binary_value.map(Blob::new))
                    .build()
                    .ok()?;
                Some((attribute.name, value))
            })
            .collect();
        let system = self
            .sent_timestamp
            .map(|millis| [(MessageSystemAttributeName::SentTimestamp, millis)].into());
        SqsMessage::builder()
            .set_body(self.body)
            .set_message_id(self.message_id)
            .receipt_handle("receipt-handle")
            .set_message_attributes(Some(attributes))
            .set_attributes(system)
            .build()
    }
}

/// Sends `message` (as far as the SQS message it becomes) and decodes it again: it must be
/// unchanged. A message the encoder refuses (control characters in its id, say) is skipped.
fn round_trip(message: &Message) {
    let Ok((body, attributes)) = fuzzing::encode(message) else {
        return;
    };
    assert!(
        attributes.len() <= MAX_ATTRIBUTES,
        "{} attributes",
        attributes.len()
    );
    let sqs = SqsMessage::builder()
        .body(body)
        .message_id("sqs-message-id")
        .receipt_handle("receipt-handle")
        .set_message_attributes(Some(attributes))
        .build();
    assert_same(message, &fuzzing::decode(&sqs, "receipt-handle"));
}
