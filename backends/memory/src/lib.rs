//! The in-memory backend of event-binder: an in-process event bus, for a modular monolith
//! whose modules talk through events, and the backend of unit tests.
//!
//! [`MemoryChannel`] implements [`Channel`](event_binder_core::Channel) with the same
//! semantics as the broker backends: every group gets every message, the members of a group
//! share the work, unsettled deliveries come back, dead letters are kept, and messages with
//! the same key keep their order. Memory is bounded: a full queue makes senders wait (and
//! fail after [`MemoryConfig::send_timeout`]), nothing is dropped silently.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> event_binder_core::Result<()> {
//! use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
//! use event_binder_memory::MemoryChannel;
//!
//! let channel = MemoryChannel::new();
//! // The consumer's group exists from here on and keeps what is published for it.
//! let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
//!
//! let producer = channel.producer("orders").await?;
//! producer.send(Message::new(r#"{"order":42}"#).with_key("customer-7")).await?;
//!
//! let delivery = billing.receive().await?;
//! assert_eq!(delivery.message().payload().as_ref(), br#"{"order":42}"#);
//! assert_eq!(delivery.attempt(), 1);
//! delivery.ack().await?;
//! assert_eq!(channel.queued("orders", "billing"), 0);
//! # Ok(()) }
//! ```
//!
//! # How the vocabulary maps
//!
//! | event-binder | in memory |
//! |---|---|
//! | destination | a topic, created on first use, that copies each message to all its subscription queues |
//! | group | a bounded FIFO queue of the topic, created by [`provision`](event_binder_core::Channel::provision) or its first consumer; kept while no consumer runs; its consumers compete for its messages |
//! | anonymous subscription | a private bounded queue, created when [`consumer`](event_binder_core::Channel::consumer) returns and removed (with what it holds) when the consumer is dropped |
//! | dead letter | a bounded queue per (destination, group); the anonymous subscriptions of a destination share one; read it with [`dead_letters`](event_binder_core::Channel::dead_letters) |
//! | key | a per-key lock in each queue: a message is not handed out while an earlier one with its key is in flight or waiting ahead of it |
//! | channel URL | `memory://` (a private bus) or `memory://NAME` (the process-wide bus NAME), with `?capacity=…&max_message_size=…&send_timeout_ms=…&history=…` |
//!
//! # Semantics
//!
//! - **Fan-out.** A message sent to a destination is copied to every group and anonymous
//!   subscription it has at that moment; a destination with none drops it, as a topic does.
//!   A group created later does not see earlier messages.
//! - **Deliveries.** [`receive`](event_binder_core::Consumer::receive) hands out the first
//!   message that may go; the attempt count is 1 the first time and grows with each
//!   redelivery. `ack` removes the message. `nack` returns it to its place at the front of
//!   the queue (ahead of everything sent after it), to be delivered again at once or after
//!   the delay. `dead_letter` stores the dead letter and removes the original in one step. A
//!   delivery dropped unsettled comes back like a nack without delay, so dropping a
//!   consumer with deliveries in hand loses nothing (except for an anonymous subscription,
//!   which goes away with its consumer).
//! - **Back-pressure.** Each queue holds at most [`MemoryConfig::capacity`] messages,
//!   waiting and in flight together. A send waits until every queue it feeds has room and
//!   then enqueues into all of them at once, or fails with
//!   [`Error::Timeout`](event_binder_core::Error::Timeout) after
//!   [`MemoryConfig::send_timeout`], having enqueued nothing. A group nobody consumes
//!   therefore stops its destination once full: the error says which group.
//! - **Sizes.** Messages larger than [`MemoryConfig::max_message_size`] are refused with
//!   [`Error::PayloadTooLarge`](event_binder_core::Error::PayloadTooLarge); `send_batch`
//!   checks every message before sending any. Dead letters are not size-checked: they must
//!   not be lost.
//! - **Prefetch.** Consumers pull one delivery per `receive`, so
//!   [`Subscription::prefetch`](event_binder_core::Subscription::prefetch) has nothing to
//!   bound and is ignored.
//! - **Dead-letter queues** are read like groups (same acks, nacks and key order); their
//!   deliveries carry the original destination and group, and dead-lettering one stores it
//!   back at the end of the same dead-letter queue.
//! - **Closing** a channel closes the bus for all its clones: sends and receives fail with
//!   [`Error::ShutDown`](event_binder_core::Error::ShutDown), waiting ones are woken with it.
//!
//! Receiving is cancel safe, and the hot path (messages without keys) costs one mutex
//! acquisition per send and per receive and O(1) queue work.

mod bus;
mod channel;
mod client;
mod config;
mod queue;
mod url;

pub use channel::MemoryChannel;
pub use client::{MemoryAcknowledger, MemoryConsumer, MemoryProducer};
pub use config::MemoryConfig;
pub use url::SCHEME;

#[cfg(test)]
mod tests;
