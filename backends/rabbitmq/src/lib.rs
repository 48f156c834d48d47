//! The RabbitMQ backend of event-binder, on [lapin](https://docs.rs/lapin).
//!
//! [`RabbitChannel`] implements [`Channel`](event_binder_core::Channel) over one AMQP 0-9-1
//! connection: `amqp://user:pass@host:port/vhost`, or `amqps://…` for TLS (rustls, trusting
//! the system's root certificates and, with `?cacertfile=/path/ca.pem`, a private CA).
//! Handlers written for any backend run on it unchanged.
//!
//! ```no_run
//! # async fn demo() -> event_binder_core::Result<()> {
//! use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
//! use event_binder_rabbitmq::{RabbitChannel, RabbitConfig};
//!
//! let config = RabbitConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?.prefix("shop-");
//! let channel = RabbitChannel::with_config(config).await?;
//! let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
//! channel.producer("orders").await?.send(Message::new(r#"{"order":42}"#)).await?;
//! let delivery = billing.receive().await?;
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! # How the vocabulary maps
//!
//! | event-binder | RabbitMQ |
//! |---|---|
//! | destination | a durable topic exchange `{prefix}{destination}` |
//! | group | a durable queue `{prefix}{destination}.{group}`, bound to the exchange with `#` (every message); classic, or quorum with `?queue_type=quorum` |
//! | anonymous subscription | a server-named, exclusive, auto-delete queue bound with `#`; it goes away with its consumer |
//! | dead letters of a group | a durable queue `{prefix}{destination}.{group}.dlq` (of the same [`QueueType`]) |
//! | dead letters of anonymous subscriptions | one durable queue per destination, `{prefix}{destination}..dlq` (of the same [`QueueType`]) |
//! | payload | the message body, untouched (no envelope) |
//! | message id | the `message-id` property |
//! | content type | the `content-type` property |
//! | timestamp | the `timestamp` property (seconds) and the `message-timestamp` header (milliseconds) |
//! | key | the routing key and the `message-key` header |
//! | headers | the header table, as long strings |
//! | `send` | `basic.publish` (mandatory, persistent) on a confirm-mode channel, returning after the publisher confirm |
//! | redrive ([`send_to_group`](event_binder_core::Channel::send_to_group)) | the group's topology declared (as `provision` does), then `basic.publish` (mandatory, persistent, confirmed, as `send`) through the default exchange with the group's queue as routing key, so no other queue gets it; the key travels in the `message-key` header alone. The dead letters are read with the redrive's prefetch, whatever [`RabbitConfig::prefetch`] says |
//! | prefetch | `basic.qos` on each consumer's own channel: [`RabbitConfig::prefetch`], else the subscription's (the handler's concurrency) |
//! | ack / nack / dead letter | `basic.ack` (handed to the connection; the broker does not answer it) / `basic.reject` with requeue / a confirmed publish to the dead-letter queue, then `basic.ack` |
//! | nack with a delay | groups and dead letters: a confirmed publish of a copy to a delay queue `{queue}.delay.{k}` (a quorum queue) with the delay as its TTL, then `basic.ack`; RabbitMQ moves the copy back once expired (see [Delayed redelivery](#delayed-redelivery)). Anonymous subscriptions: `basic.reject` with requeue after the delay |
//! | attempt | the `message-deliveries` header of a copy back from a delay queue (0 otherwise), plus: quorum queues, the `x-delivery-count` header + 1 (1, 2, 3, …); classic queues, 1, or 2 when the broker flags the delivery as redelivered (RabbitMQ counts no further) |
//!
//! Logical names hold only letters, digits, `-` and `_`, so the dots keep every physical
//! name distinct: a group named `dlq` has the queue `{prefix}{destination}.dlq`, which never
//! meets the anonymous dead letters' `{prefix}{destination}..dlq`. The prefix
//! ([`RabbitConfig::prefix`]) keeps applications and test runs apart on one broker. A delay
//! queue adds `.delay.{k}` to the name of its queue (three dots or more: it meets no group
//! or dead-letter queue). The physical names are also available from
//! [`RabbitChannel::exchange_name`], [`RabbitChannel::queue_name`],
//! [`RabbitChannel::dead_letter_queue_name`] and [`RabbitChannel::delay_queue_name`].
//!
//! # Queue types: which to pick
//!
//! [`RabbitConfig::queue_type`] (`?queue_type=quorum` in the URL) chooses the type of the
//! group and dead-letter queues; the default is [`QueueType::Classic`], so that queues
//! declared by earlier versions keep matching their declaration. **For a new deployment
//! pick quorum**: quorum queues are replicated across a cluster's nodes, and they count
//! the deliveries of each message, which classic queues do not. That count is what
//! [`RetryPolicy::max_deliveries`](event_binder_core::RetryPolicy::max_deliveries) needs to
//! stop a poison message that crashes the process (or hangs until it is killed) every time:
//! on a quorum queue its `attempt` grows 1, 2, 3, … with every delivery left unsettled, and
//! the runtime dead-letters it once past the cap; on a classic queue such deliveries in a
//! row count once (`attempt` 1, then 2, and 2 again), so such a message comes back forever.
//! Retries through the broker (delayed nacks) count on both types (see
//! [Delayed redelivery](#delayed-redelivery)). Classic queues remain the choice for the lowest
//! latency on a single node, where replication and poison-message protection do not matter.
//!
//! - **What counts.** A quorum queue's `x-delivery-count` counts the times a message came
//!   back: its consumer's channel or connection went (a crash), or it was requeued. This
//!   backend requeues with `basic.reject`, which counts on every RabbitMQ version (from 4.3
//!   a `basic.nack` no longer does); the count is the delivery's `attempt`, minus one, and
//!   is not among the message's headers (nor may a message set it: sending one with an
//!   `x-delivery-count` header is an [`Error::InvalidName`](event_binder_core::Error::InvalidName)),
//!   so a dead letter starts again at attempt 1 in its dead-letter queue. Requeues the
//!   runtime makes without a failure (at a shutdown timeout, or when the idempotency store
//!   fails) count too: keep `max_deliveries` well above how often that may happen to one
//!   message (the default, 10, is).
//! - **No broker delivery limit.** The queues are declared without `x-delivery-limit`: the
//!   runtime decides when a message was delivered too often, and dead-letters it to the
//!   group's dead-letter queue with the reason, where a broker limit would drop it (no
//!   dead-letter exchange is configured) without a word. RabbitMQ 4 applies a default limit
//!   of 20 to quorum queues all the same: keep `max_deliveries` below 20 there (the default,
//!   10, is), or raise the limit with a `delivery-limit` policy.
//! - **Anonymous subscriptions** stay on classic queues: RabbitMQ allows exclusive,
//!   auto-delete, server-named queues only as classic ones. Their shared dead-letter queue
//!   follows the configured type.
//! - **Requeued messages.** A nacked message goes back to the end of a quorum queue, behind
//!   those already waiting (seen on RabbitMQ 3.10; RabbitMQ 4 does the same), where a
//!   classic queue puts it back at the head. Nothing here depends on either, and ordering
//!   by key is not claimed on any queue type. A nack with a delay waits in a delay queue,
//!   as on classic queues.
//! - **Switching** an existing group from one type to the other makes its declaration fail
//!   with the broker's `inequivalent arg 'x-queue-type'` error: delete the queue, or move its
//!   messages to a queue of the new type, first.
//! - A virtual host (or node) whose *default queue type* is quorum makes the queues
//!   declared as classic here quorum ones; `attempt` then still reads 1 or 2: set
//!   `queue_type=quorum` to match.
//!
//! # Delayed redelivery
//!
//! A delivery of a group nacked with a delay (what
//! [`RetryPolicy::through_broker`](event_binder_core::RetryPolicy::through_broker) does
//! between attempts) waits in the broker, not in the consumer, which goes on with other
//! messages meanwhile:
//!
//! - **The copy.** A copy of the message (same id, key, headers, payload, content type and
//!   timestamp) is published, with publisher confirms, to a *delay queue* of the group's
//!   queue, with the delay as its TTL (the `expiration` property, in whole milliseconds,
//!   rounded up; at most 2³² − 1 ms, about 49.7 days) and the delivery's attempt in the
//!   `message-deliveries` header; once the broker has confirmed it, the original is
//!   acknowledged. Should the ack be lost, the message comes twice, with the same id (the
//!   idempotency store sees it once). AMQP properties that event-binder does not map
//!   (`correlation-id`, `reply-to`, …, from foreign clients) are not copied, nor are
//!   RabbitMQ's `x-death` headers.
//! - **Coming back.** A delay queue dead-letters expired messages to the group's queue
//!   through the default exchange. It is a durable quorum queue with
//!   `x-dead-letter-strategy: at-least-once` and `x-overflow: reject-publish`, so the move
//!   back is confirmed by the group's queue before the copy leaves the delay queue: nothing
//!   is lost, whatever becomes of the consumer or the connection meanwhile. This takes
//!   RabbitMQ 3.10 or later (whatever [`QueueType`] the group has). The copy comes back
//!   with no trace of the trip: `x-death` and the other headers RabbitMQ adds when
//!   dead-lettering, and `message-deliveries`, are not among the message's headers.
//! - **Buckets: at most twice the delay.** RabbitMQ expires messages only at the head of a
//!   queue, so a short delay behind a long one would wait for it. Delays are sorted into
//!   buckets by powers of two, one delay queue each: `{queue}.delay.{k}` holds the delays
//!   of 2^k ms up to 2^(k+1) ms (exclusive), `k` from 0 to 31 (300 ms goes to
//!   `….delay.8`, 256 to 511 ms). Every message ahead of one in its bucket was published
//!   before it with a delay shorter than twice its own, so a delayed message comes back
//!   after at least its delay and at most twice it (plus the broker's own latency).
//!   A consumer declares a bucket's queue at its first use, and with
//!   [`RabbitConfig::queue_expires`] again once half of it has passed; the queue's
//!   `x-expires` is the configured one plus the bucket's longest delay, as RabbitMQ
//!   counts a queue without consumers as unused however many messages wait in it.
//! - **Attempts.** The copy's attempt is its `message-deliveries` header plus its own
//!   count in the group's queue, so attempts go on 1, 2, 3, … across delayed retries, on
//!   classic and quorum queues alike, and the runtime dead-letters the message after its
//!   last attempt. What the two types count differently is a delivery left unsettled (a
//!   crash, a lost connection) or nacked without a delay: a quorum queue counts each,
//!   a classic queue counts a row of them once. So
//!   [`counts_deliveries`](event_binder_core::Channel::counts_deliveries) is claimed for
//!   groups on both types.
//! - **When the copy cannot be stored** (the delay queue cannot be declared or refuses
//!   it), the message is kept: it waits in the consumer and is requeued after the delay,
//!   holding a prefetch slot meanwhile, and the nack returns the error, which the runtime
//!   logs. The next delayed nack declares the delay queue again. On a classic queue such a
//!   requeue counts as a redelivery only.
//! - **Dead letters.** A delivery read from
//!   [`dead_letters`](event_binder_core::Channel::dead_letters) and nacked with a delay
//!   waits the same way, in the delay queues of the dead-letter queue,
//!   `{dead-letter queue}.delay.{k}`.
//! - **Anonymous subscriptions** keep the delay in the consumer: their queue is
//!   server-named and exclusive, with no lasting name to come back to. The `basic.reject`
//!   (with requeue) is sent after the delay from a task of its own, and the message stays
//!   unacknowledged, holding a prefetch slot, meanwhile; dropping the consumer requeues it
//!   at once. `counts_deliveries` is false for them, so the runtime's retries wait in
//!   process there.
//!
//! # Semantics
//!
//! - **Sending** returns once the broker has confirmed the message, stored to disk in
//!   every durable queue it reached. A message no queue takes (no group was provisioned and
//!   no subscription runs) is returned by the broker and the send fails with
//!   [`Error::Broker`](event_binder_core::Error::Broker) saying so. A message the broker
//!   nacks (a queue process failed to take it: with quorum queues, RabbitMQ 3.x nacks a
//!   message one of whose queues, such as a just dropped anonymous subscription's, was
//!   being deleted) is published again after a short pause, three times at most, and then
//!   the send fails with `Error::Broker`; a copy that did arrive has the same id.
//!   Nothing is dropped silently: provision a group before sending to a destination nobody
//!   consumes yet. `send_batch` publishes the whole batch, then waits for all confirms.
//! - **Sizes.** A message larger than [`RabbitConfig::max_message_size`] (as counted by
//!   [`Message::encoded_len`](event_binder_core::Message::encoded_len)) is refused with
//!   [`Error::PayloadTooLarge`](event_binder_core::Error::PayloadTooLarge). The properties
//!   and headers travel in one AMQP frame, which the broker limits to `frame_max` (128 KiB
//!   on a default RabbitMQ) and answers by closing the whole connection when exceeded;
//!   so a message whose headers do not fit is refused before sending, with
//!   `PayloadTooLarge` whose sizes are those of the header frame. Ids, keys and content
//!   types longer than AMQP's 255-byte short strings travel in the `message-id`,
//!   `message-key` and `content-type` headers instead (the key is then not the routing
//!   key); header names longer than 255 bytes are refused with
//!   [`Error::InvalidName`](event_binder_core::Error::InvalidName).
//! - **Reserved headers.** `message-id`, `message-key`, `message-timestamp` and
//!   `content-type` carry the fields above and are taken out of the headers on receipt.
//!   `message-deliveries` carries the attempt of a delayed redelivery (see above): taken out
//!   on receipt, and refused on sending with
//!   [`Error::InvalidName`](event_binder_core::Error::InvalidName), as `x-delivery-count` is.
//! - **Receiving.** Each consumer has its own AMQP channel and consumes with manual
//!   acknowledgements. A message from a client that knows nothing of event-binder is still
//!   handled: without a `message-id` property its id is a UUID v5 derived from its
//!   exchange, routing key, properties, headers (less those RabbitMQ adds) and body, the
//!   same on every redelivery, so idempotent handling works (two byte-identical messages
//!   sent without ids are therefore handled once); without a content type it is taken as
//!   JSON; its key is the `message-key` header, else its routing key.
//! - **Dead letters.** The runtime's retry policy decides when a message is dead-lettered,
//!   exactly as on every other backend (no broker-side dead-letter exchange is involved):
//!   the dead letter, with all headers and the same id, is published to the dead-letter
//!   queue through the default exchange and confirmed, and only then is the original
//!   acknowledged; if the publish fails, the original is requeued and the error returned.
//!   Dead letters are not held to the size limit; should their headers outgrow a frame,
//!   the `dead-letter-error` text is shortened. Dead-lettering a delivery read from
//!   [`dead_letters`](event_binder_core::Channel::dead_letters) puts it back at the end of
//!   the same dead-letter queue.
//! - **Dropping a consumer** closes its AMQP channel: what it held unacknowledged goes
//!   back to the queue at once.
//! - **Connection loss** (a broker restart, a network failure): the connection is
//!   re-established in the background with exponential backoff
//!   ([`RabbitConfig::reconnect_initial_backoff`] to
//!   [`RabbitConfig::reconnect_max_backoff`]); each producer and consumer declares its
//!   exchange and queues again on the new connection and consumers resume consuming.
//!   `receive` waits meanwhile (it is cancel safe). A send waits for the connection up to
//!   [`RabbitConfig::send_timeout`], then fails with
//!   [`Error::Timeout`](event_binder_core::Error::Timeout) saying why; a send whose confirm
//!   was lost with the connection is published again on the new one, so it may arrive
//!   twice (with the same id: idempotent handlers see it once). Deliveries received before
//!   the loss can no longer be acknowledged, and those the client had buffered but not yet
//!   handed out are dropped: the broker delivers them again. An anonymous
//!   subscription gets a new queue: what was published while it had none is not seen,
//!   as an anonymous subscription promises.
//! - **Closing** the channel closes the connection; unacknowledged deliveries go back to
//!   their queues, and sends and receives fail with
//!   [`Error::ShutDown`](event_binder_core::Error::ShutDown).
//! - **Ordering.** A queue is FIFO, but a consumer holding several deliveries at once
//!   (the prefetch), competing consumers and requeued messages reorder them, so
//!   [`Capabilities::ordering_by_key`](event_binder_core::Capabilities::ordering_by_key) is
//!   not claimed.

mod channel;
mod config;
mod consumer;
mod convert;
mod delay;
mod error;
mod link;
mod names;
mod pool;
mod producer;
mod topology;

pub use channel::RabbitChannel;
pub use config::{QueueType, RabbitConfig};
pub use consumer::{RabbitAcknowledger, RabbitConsumer};
pub use producer::RabbitProducer;

/// The conversion between messages and AMQP (basic properties, header table), for the fuzz
/// targets in `fuzz/` only (cargo feature `fuzzing`): not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use bytes::Bytes;
    use event_binder_core::{Message, Result};
    use lapin::BasicProperties;

    /// The message of a delivery, as the consumer makes it.
    pub fn decode(
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        body: Vec<u8>,
    ) -> Message {
        crate::convert::decode(exchange, routing_key, properties, body)
    }

    /// The attempt of a delivery, as the consumer counts it: `counts_deliveries` for a
    /// quorum queue.
    pub fn attempt(
        properties: &BasicProperties,
        redelivered: bool,
        counts_deliveries: bool,
    ) -> u32 {
        use crate::convert;
        let count = counts_deliveries
            .then(|| convert::delivery_count(properties))
            .flatten();
        convert::earlier_deliveries(properties).saturating_add(convert::attempt(redelivered, count))
    }

    /// What `basic.publish` gets for a message: routing key, properties and body.
    pub fn encode(
        message: &Message,
        routing_key: Option<&str>,
    ) -> Result<(String, BasicProperties, Bytes)> {
        let outgoing = crate::convert::encode(message, routing_key)?;
        Ok((
            outgoing.routing_key.as_str().to_owned(),
            outgoing.properties,
            outgoing.payload,
        ))
    }

    /// The properties of the copy of a message handed back with a delay.
    pub fn encode_delayed(
        message: &Message,
        delay_queue: &str,
        attempt: u32,
        delay_millis: u32,
    ) -> Result<BasicProperties> {
        crate::convert::encode_delayed(message, delay_queue, attempt, delay_millis)
            .map(|outgoing| outgoing.properties)
    }
}

/// The URL schemes this backend serves: `amqp` and `amqps`.
pub const SCHEMES: [&str; 2] = ["amqp", "amqps"];
