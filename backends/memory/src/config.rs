//! The configuration of a memory bus.

use std::time::Duration;

/// How a [`MemoryChannel`](crate::MemoryChannel) bus behaves: queue capacity, the largest
/// message, how long a sender waits for room, and how many sent messages it remembers.
///
/// Build it with the setters; every field has a default that suits an event bus and unit
/// tests alike.
///
/// ```
/// use event_binder_memory::MemoryConfig;
/// use std::time::Duration;
///
/// let config = MemoryConfig::new()
///     .capacity(100)
///     .send_timeout(Duration::from_millis(500))
///     .history(10);
/// assert_eq!(config.capacity, 100);
/// assert_eq!(config.max_message_size, MemoryConfig::DEFAULT_MAX_MESSAGE_SIZE);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// The most messages one queue (a group's, an anonymous subscription's, or a dead-letter
    /// queue) holds, queued and in flight together; at least 1. A send waits while a queue
    /// it feeds is full. Default [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY).
    pub capacity: usize,
    /// The largest message accepted, as counted by
    /// [`Message::encoded_len`](event_binder_core::Message::encoded_len). Default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](Self::DEFAULT_MAX_MESSAGE_SIZE).
    pub max_message_size: usize,
    /// How long a send (or a dead letter) waits for room in a full queue before it fails with
    /// [`Error::Timeout`](event_binder_core::Error::Timeout). Default
    /// [`DEFAULT_SEND_TIMEOUT`](Self::DEFAULT_SEND_TIMEOUT).
    pub send_timeout: Duration,
    /// How many of the messages sent to each destination are remembered for
    /// [`MemoryChannel::published`](crate::MemoryChannel::published); 0 (the default) turns
    /// the history off.
    pub history: usize,
}

impl MemoryConfig {
    /// The default [`capacity`](Self::capacity) of a queue: 10 000 messages.
    pub const DEFAULT_CAPACITY: usize = 10_000;
    /// The default [`max_message_size`](Self::max_message_size): 1 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
    /// The default [`send_timeout`](Self::send_timeout): 30 seconds.
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

    /// The defaults.
    pub fn new() -> Self {
        MemoryConfig {
            capacity: Self::DEFAULT_CAPACITY,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            send_timeout: Self::DEFAULT_SEND_TIMEOUT,
            history: 0,
        }
    }

    /// Sets the capacity of every queue; 0 is taken as 1.
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages.max(1);
        self
    }

    /// Sets the largest message accepted, in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets how long a send waits for room in a full queue.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Sets how many sent messages per destination are remembered (0: none).
    pub fn history(mut self, messages: usize) -> Self {
        self.history = messages;
        self
    }

    /// The configuration as the bus uses it (a capacity of at least 1).
    pub(crate) fn normalized(mut self) -> Self {
        self.capacity = self.capacity.max(1);
        self
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self::new()
    }
}
