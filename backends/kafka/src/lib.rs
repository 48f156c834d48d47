//! The Apache Kafka backend of event-binder, on [rdkafka](https://docs.rs/rdkafka)
//! (librdkafka, built from source with the crate).
//!
//! [`KafkaChannel`] implements [`Channel`](event_binder_core::Channel) over a Kafka
//! cluster: `kafka://host:port[,host:port…]`, with the backend's own parameters and any
//! librdkafka setting (`max.poll.interval.ms`, `security.protocol`, `sasl.*`, …) as query
//! parameters (see [`KafkaConfig`]). Handlers written for any backend run on it unchanged.
//!
//! ```no_run
//! # async fn demo() -> event_binder_core::Result<()> {
//! use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
//! use event_binder_kafka::{KafkaChannel, KafkaConfig};
//!
//! let config = KafkaConfig::new("kafka://127.0.0.1:9092")?.prefix("shop-").partitions(6);
//! let channel = KafkaChannel::with_config(config).await?;
//! let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
//! channel.producer("orders").await?.send(Message::new(r#"{"order":42}"#)).await?;
//! let delivery = billing.receive().await?;
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! # How the vocabulary maps
//!
//! | event-binder | Kafka |
//! |---|---|
//! | destination | the topic `{prefix}{destination}`, created on first use with [`KafkaConfig::partitions`] partitions and [`KafkaConfig::replication`] replicas (topics are never assumed to auto-create) |
//! | group | the consumer group `{prefix}{destination}.{group}`; a group that has committed nothing starts at the earliest offset |
//! | anonymous subscription | a consumer group of its own, `{prefix}{destination}..anonymous.{uuid}`, assigned every partition at its end (read when the consumer opens), never committing |
//! | dead letters of a group | the topic `{prefix}{destination}.{group}.dlq`, read by the consumer group of the same name |
//! | dead letters of anonymous subscriptions | one topic per destination, `{prefix}{destination}..dlq` (and its group) |
//! | payload | the record value, untouched (no envelope) |
//! | key | the record key (same key, same partition, same order) |
//! | headers | record headers, UTF-8; a name holding a NUL character is refused ([`Error::InvalidName`](event_binder_core::Error::InvalidName)): librdkafka would end it there on reading |
//! | message id | the record header `message-id` |
//! | content type | the record header `content-type` |
//! | timestamp | the record timestamp (milliseconds) |
//! | `send` | a produce with `acks=all` and idempotence on, returning on the delivery report |
//! | ack | the record counts as handled; its partition's offset is committed once everything before it is handled too |
//! | nack | the record waits in the consumer's redelivery queue and comes back from the same consumer |
//! | dead letter | a produce to the dead-letter topic, awaited, then an ack |
//! | `send_to_group` (and so a redrive) | a produce to the destination's topic, as `send_batch` does, each record with the header [`GROUP_HEADER`] naming the group; every other group's consumers and the anonymous ones skip it (committed past, in order, as if acked), the group named receives it without the header |
//! | attempt | 1 on the first read, one more on each redelivery from the queue |
//!
//! Logical names hold only letters, digits, `-` and `_`, so the dots keep every physical
//! name distinct. The prefix ([`KafkaConfig::prefix`]) keeps applications and test runs
//! apart on one cluster. The physical names are also available from
//! [`KafkaChannel::topic_name`], [`KafkaChannel::group_id`] and
//! [`KafkaChannel::dead_letter_topic_name`].
//!
//! # Semantics
//!
//! - **Sending** returns once the delivery report says every in-sync replica has the
//!   record (`acks=all`, `enable.idempotence=true`, so librdkafka's own retries never
//!   duplicate or reorder). A send that gets no report within
//!   [`KafkaConfig::send_timeout`] fails with
//!   [`Error::Timeout`](event_binder_core::Error::Timeout); a refused one with
//!   [`Error::Broker`](event_binder_core::Error::Broker). `send_batch` checks every size
//!   first, hands the whole batch to librdkafka, then waits for every report.
//! - **Sizes.** A message larger than [`KafkaConfig::max_message_size`] (as counted by
//!   [`Message::encoded_len`](event_binder_core::Message::encoded_len)) is refused with
//!   [`Error::PayloadTooLarge`](event_binder_core::Error::PayloadTooLarge) before sending.
//! - **Receiving.** Each consumer is one librdkafka consumer, polled without pause by a
//!   thread of its own whatever the handlers do: heartbeats, rebalances and librdkafka's
//!   `max.poll.interval.ms` are served even while every handler is busy or a retry waits,
//!   so a handler slower than `max.poll.interval.ms` never gets its member evicted. The
//!   thread reads ahead, up to [`KafkaConfig::read_ahead`] records (20,000) or 64 MiB of
//!   payload; beyond that the consumer's partitions are paused (librdkafka fetches nothing
//!   more) and polling goes on; they are resumed once half of it has been taken. A record
//!   from a producer that knows nothing of event-binder is still handled: without a
//!   `message-id` header its id is `{topic}/{partition}/{offset}` (the same on every
//!   read); without a `content-type` header it is taken as JSON.
//! - **Commits.** Offsets are committed only for handled messages, by event-binder itself
//!   (librdkafka's `enable.auto.commit` is off). Each consumer tracks, per partition, the
//!   offsets it has read and not acked; the position it commits is the lowest of those (or
//!   the one after the last read), so with concurrent handlers a partition's commit never
//!   passes a message that is not handled yet. Positions that moved are committed by the
//!   consumer's polling thread at most once per [`KafkaConfig::commit_interval`], whether
//!   or not more acks come (an ack itself waits for nothing). A position counts as
//!   committed only once the broker confirmed it, so a failed commit is sent again after
//!   the next interval. Positions are also committed before partitions are revoked and
//!   when the consumer closes. A crash in between means the
//!   messages handled since the last commit are read again (at least once; the ids let
//!   idempotent handlers skip them).
//! - **Nack and dropped deliveries.** Kafka cannot un-read a record, so a nacked delivery
//!   (and one dropped unsettled) waits in its consumer's redelivery queue, after the delay
//!   if given (at most a day: a longer delay, up to `Duration::MAX`, is taken as a day),
//!   and is handed out again by the same consumer ahead of new records, with its
//!   attempt count one higher; meanwhile its offset holds back its partition's commit.
//!   Retries happen in process (the handler runtime's retry policy), so one failing
//!   message never blocks a partition for good: after the last attempt it is
//!   dead-lettered and its partition moves on.
//! - **Dropping a consumer** makes it leave its group, and returns once it has: the
//!   revocation waits (up to [`KafkaConfig::drain_timeout`]) for the deliveries still held
//!   to be settled and commits what was handled; what it read and did not ack stays
//!   uncommitted, so the group's next owner of those partitions reads it again. (On a
//!   multi-threaded tokio runtime the wait lets the worker's other tasks move elsewhere;
//!   on a current-thread one, settle or drop the deliveries before their consumer.)
//! - **Rebalances** (the eager protocol). Before giving up partitions, a consumer waits
//!   (up to [`KafkaConfig::drain_timeout`]) for the deliveries it handed out from them to
//!   be settled, then commits synchronously. Deliveries still out after that are
//!   abandoned: acking them changes nothing, and the partition's new owner reads them
//!   again (they are then handled twice; idempotent handlers see them once). Queued
//!   redeliveries of revoked partitions are dropped for the same reason. The wait blocks
//!   the consumer's polling thread, never a tokio worker, so handlers keep settling
//!   meanwhile.
//! - **Anonymous subscriptions** are assigned every partition of the topic at the high
//!   watermark read when the consumer opens (no group membership to wait for): they see
//!   everything published after `consumer()` returns. Partitions added to the topic
//!   later are not read. Known issue, tansu only (the broker the tests run on): its high
//!   watermark is the first offset of a partition's last record batch plus one, not the
//!   offset after its last record, so an anonymous subscription opened just after a
//!   batch of several records was written may also get the rest of that batch.
//! - **Ordering.** Records with the same key share a partition and are read in offset
//!   order; a consumer hands them out in that order, so
//!   [`Capabilities::ordering_by_key`](event_binder_core::Capabilities::ordering_by_key) is
//!   claimed. A redelivered (nacked or dropped) record comes after the later records of its
//!   partition that were already handed out, and handlers run concurrently finish in any
//!   order: keep concurrency at 1 and do not nack where the order matters.
//! - **Closing** the channel flushes the producer; sends and receives fail with
//!   [`Error::ShutDown`](event_binder_core::Error::ShutDown) from then on.

mod channel;
mod config;
mod consumer;
mod convert;
mod error;
mod names;
mod producer;

pub use channel::KafkaChannel;
pub use config::KafkaConfig;
pub use consumer::{KafkaAcknowledger, KafkaConsumer};
pub use producer::KafkaProducer;

/// The conversion between messages and Kafka records, for the fuzz targets in `fuzz/` only
/// (cargo feature `fuzzing`): not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use event_binder_core::{Message, Result};
    use rdkafka::message::OwnedHeaders;

    /// The message a record carries for a consumer of `group`, as the consumer makes it;
    /// `None` when the record is addressed to another group.
    pub fn message_from(record: &impl rdkafka::Message, group: Option<&str>) -> Option<Message> {
        crate::convert::message_from(record, group)
    }

    /// The record headers and timestamp a message is produced with, addressed to `group`.
    pub fn record_parts(message: &Message, group: Option<&str>) -> Result<(OwnedHeaders, i64)> {
        Ok((
            crate::convert::record_headers(message, group)?,
            crate::convert::record_timestamp(message),
        ))
    }
}

/// The URL scheme this backend serves: `kafka`.
pub const SCHEME: &str = "kafka";

/// The record header that addresses a record on a destination's topic to one group only:
/// its value is the group's (logical) name. [`Channel::send_to_group`](event_binder_core::Channel::send_to_group)
/// (and so a redrive) sets it; a consumer of any other group, or an anonymous one, skips
/// the record (commits past it as if it had handled it), and the group named receives the
/// message without it. The producer never sends it from a message's own headers.
pub const GROUP_HEADER: &str = "event-binder-group";
