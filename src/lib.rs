//! event-binder: write event handlers once, run them unchanged on any broker.
//!
//! See the README for the overview; the vocabulary (destination, group, message,
//! delivery, channel, producer, consumer, handler) is the same everywhere.
//!
//! | cargo feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`memory::MemoryChannel`], `memory://` URLs: the in-process bus |
//! | `macros` | yes | the [`handler`] attribute macro |
//! | `rabbitmq` | no | `amqp://` and `amqps://` URLs (not available yet) |
//! | `kafka` | no | `kafka://` URLs (not available yet) |
//! | `sns-sqs` | no | `sns-sqs://` URLs (not available yet) |

#[doc(inline)]
pub use event_binder_core::*;

#[cfg(feature = "macros")]
#[doc(inline)]
pub use event_binder_macros::handler;

/// The in-memory backend: an in-process event bus and the backend for unit tests.
#[cfg(feature = "memory")]
pub mod memory {
    #[doc(inline)]
    pub use event_binder_memory::*;
}
