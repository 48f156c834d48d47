//! The Amazon SNS+SQS backend of event-binder, on the AWS SDK for Rust
//! ([aws-sdk-sns](https://docs.rs/aws-sdk-sns), [aws-sdk-sqs](https://docs.rs/aws-sdk-sqs)).
//!
//! [`SnsSqsChannel`] implements [`Channel`](event_binder_core::Channel) with the topology
//! teams moving to events on AWS choose: publish to an SNS topic, which fans out to one
//! SQS queue per consumer group, so every group gets every message and the members of a
//! group compete for them. URL: `sns-sqs://<region>[?endpoint=http://127.0.0.1:4566]`
//! (see [`SnsSqsConfig`]); credentials come from the standard AWS provider chain and
//! never appear in logs, errors or `Debug` output. Handlers written for any backend run
//! on it unchanged.
//!
//! ```no_run
//! # async fn demo() -> event_binder_core::Result<()> {
//! use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
//! use event_binder_sns_sqs::{SnsSqsChannel, SnsSqsConfig};
//!
//! let config = SnsSqsConfig::new("sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566")?
//!     .prefix("shop-")
//!     .credentials("test", "test");
//! let channel = SnsSqsChannel::with_config(config).await?;
//! let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
//! channel.producer("orders").await?.send(Message::new(r#"{"order":42}"#)).await?;
//! let delivery = billing.receive().await?;
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! # How the vocabulary maps
//!
//! | event-binder | SNS+SQS |
//! |---|---|
//! | destination | the SNS topic `{prefix}{destination}` (`.fifo` appended for a [FIFO destination](SnsSqsConfig::fifo)) |
//! | group | the SQS queue `{prefix}{destination}__{group}`, subscribed to the topic with raw message delivery, with a queue policy letting the topic send to it |
//! | anonymous subscription | a temporary queue `{prefix}{destination}____{random}` subscribed while its consumer lives, then unsubscribed and deleted |
//! | dead letters of a group | the SQS queue `{prefix}{destination}__{group}__dlq` (standard even for FIFO destinations) |
//! | dead letters of anonymous subscriptions | one queue per destination, `{prefix}{destination}____dlq` |
//! | payload | the message body, as it is when it is text SNS accepts; otherwise base64, marked by the attribute `payload-encoding` |
//! | message id, content type, key, timestamp | the String message attributes `message-id`, `content-type`, `message-key`, `message-timestamp` |
//! | headers | String message attributes of the same names; when they would make more than 10 attributes (SNS's and SQS's limit), or a name or value SNS refuses, all of them travel as one JSON object in the attribute `message-headers`, unpacked on receipt |
//! | key on a FIFO destination | also the message group id (order per key); a keyless message is its own group; the message id is the deduplication id |
//! | `send` | a PublishBatch entry: sends within [`batch_window`](SnsSqsConfig::batch_window) share a request (up to 10, 256 KiB together); returns on SNS's answer |
//! | receive | ReceiveMessage with long polling ([`wait_time`](SnsSqsConfig::wait_time)) for up to 10 messages, once the consumer's buffer (its prefetch) has room for a whole batch |
//! | ack | a DeleteMessageBatch entry, sent within the batch window |
//! | nack | ChangeMessageVisibility to the retry delay (0 without one; whole seconds, rounded up, at most the 12 hours from the receive SQS allows), in a batch |
//! | dead letter | SendMessage to the dead-letter queue, awaited, then a delete; near the 256 KiB limit the error text is shortened, or the message stored as delivered |
//! | attempt | SQS's `ApproximateReceiveCount` |
//!
//! Logical names hold letters, digits, `-` and `_`, and SNS and SQS allow nothing more,
//! so the parts of a physical name are joined with `__` and every `_` of a logical name
//! (and of the prefix) is written `_-`: `a_b` with group `c` is `a_-b__c`, never the same
//! queue as `a` with group `b_c` (`a__b_-c`). A name that would pass SQS's 80 characters
//! (`.fifo` included) is refused with
//! [`Error::InvalidName`](event_binder_core::Error::InvalidName) before any request. The
//! physical names are also available from [`SnsSqsChannel::topic_name`],
//! [`SnsSqsChannel::queue_name`] and [`SnsSqsChannel::dead_letter_queue_name`].
//!
//! # Semantics
//!
//! - **Sizes.** A message whose body and attributes (as AWS counts them) pass 256 KiB is
//!   refused with [`Error::PayloadTooLarge`](event_binder_core::Error::PayloadTooLarge)
//!   before any request; so is one whose
//!   [`Message::encoded_len`](event_binder_core::Message::encoded_len) does. Base64 makes a
//!   binary payload a third larger.
//! - **Visibility.** A received message is hidden from the group's other consumers for
//!   [`visibility_timeout`](SnsSqsConfig::visibility_timeout). While a delivery is held
//!   (in the consumer's buffer or by a handler), the consumer extends it
//!   (ChangeMessageVisibility) whenever half of it has passed, so a slow handler's message
//!   is not handed to another consumer meanwhile.
//! - **Acks** return once the delete is queued: deletes go out in batches. A delete that
//!   fails is logged, and its message comes back after the visibility timeout (at least
//!   once; the ids let idempotent handlers skip it). [`Channel::close`](event_binder_core::Channel::close)
//!   sends what is queued.
//! - **Nack, dropped deliveries and consumers.** A nack makes the message visible again
//!   after the delay (whole seconds, rounded up). A delivery dropped unsettled, and every
//!   message a dropped consumer had received and not handed out, is made visible at once.
//!   A receive in flight when its consumer goes is finished, and what it brings is
//!   released the same way.
//! - **Retries and dead letters** are the runtime's, as on every backend: the attempt
//!   count is SQS's receive count, so the runtime's redelivery cap also stops a message
//!   that crashes its process every time.
//! - **Ordering.** Standard topics and queues keep no order, so
//!   [`Capabilities::ordering_by_key`](event_binder_core::Capabilities::ordering_by_key)
//!   is not claimed. A FIFO destination keeps the order of each key (one PublishBatch
//!   request in flight per topic, the key as message group id); SNS drops a message whose
//!   id it has seen within five minutes.
//! - **Anonymous subscriptions** are queues of their own, subscribed when
//!   `consumer()` returns (AWS may take a moment to start delivering to a new
//!   subscription; the emulator does at once). Their queue is unsubscribed and deleted
//!   once the consumer and its deliveries are gone; a process that crashes leaves it
//!   behind.
//! - **Timeouts.** Every request has an
//!   [`attempt_timeout`](SnsSqsConfig::attempt_timeout) per attempt and an
//!   [`operation_timeout`](SnsSqsConfig::operation_timeout) with its retries (a receive
//!   gets its long-polling [`wait_time`](SnsSqsConfig::wait_time) on top of both): a
//!   publish, acknowledgement or receive that gets no answer fails with
//!   [`Error::Timeout`](event_binder_core::Error::Timeout) instead of hanging, and the
//!   consumer keeps polling.
//! - **Queue policies.** A group's queue needs a policy statement letting its topic send
//!   (`Sid` `event-binder-topic-sends`). It is merged into the policy the queue has: other
//!   statements are kept, ours is there once, and nothing is written when it already is.
//!   (SQS has no conditional write: a policy changed by someone else at the very moment a
//!   group is subscribed can still lose that change.)
//! - **Counting requests.** [`SnsSqsChannel::requests`] tells how many requests of each
//!   operation the channel has sent (AWS bills per request).

mod channel;
mod config;
mod consumer;
mod convert;
mod error;
mod names;
mod producer;
mod requests;

pub use channel::SnsSqsChannel;
pub use config::{SnsSqsConfig, MAX_MESSAGE_SIZE};
pub use consumer::{SqsAcknowledger, SqsConsumer};
pub use producer::SnsProducer;
pub use requests::RequestCounts;

/// The conversion between messages and SQS bodies and message attributes, for the fuzz
/// targets in `fuzz/` only (cargo feature `fuzzing`): not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
    use event_binder_core::{Message, Result};
    use std::collections::HashMap;

    /// The message SQS hands over, decoded as the consumer does (`SqsLink::delivery`): String
    /// attributes as they are, Binary ones in base64, other data types with neither dropped;
    /// `receipt` stands in for a missing message id.
    pub fn decode(message: &aws_sdk_sqs::types::Message, receipt: &str) -> Message {
        let attributes =
            crate::convert::attribute_texts(message.message_attributes.clone().unwrap_or_default());
        let sent = message.attributes.as_ref().and_then(|system| {
            crate::convert::sent_millis(system.get(&MessageSystemAttributeName::SentTimestamp))
        });
        crate::convert::decode(
            message.body.as_deref(),
            &attributes,
            message.message_id.as_deref().unwrap_or(receipt),
            sent,
        )
    }

    /// The body and message attributes a message is sent with.
    pub fn encode(message: &Message) -> Result<(String, HashMap<String, MessageAttributeValue>)> {
        let encoded = crate::convert::Encoded::new(message)?;
        let attributes = encoded.sqs_attributes();
        Ok((encoded.body, attributes))
    }
}

/// The URL scheme this backend serves: `sns-sqs`.
pub const SCHEME: &str = "sns-sqs";
