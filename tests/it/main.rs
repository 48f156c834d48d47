//! Integration tests: the conformance suite run against every backend compiled in, each
//! reached the way an application reaches it, through `AnyChannel::connect(url)`; the store
//! conformance suite against the idempotency stores.

mod broken;
mod interrupt;
#[cfg(feature = "kafka")]
mod kafka;
mod memory;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod secrets;
#[cfg(feature = "sns-sqs")]
mod sns_sqs;
mod stores;
