//! event-binder: write event handlers once, run them unchanged on any broker.
//!
//! A handler is a plain `async fn` over a typed event; an [`App`] runs handlers on a
//! [`Channel`], and the channel's URL decides whether events travel in-process
//! (`memory://`) or through a broker. Delivery is at least once, handling is idempotent per
//! message id, failures are retried with backoff and then dead-lettered.
//!
//! ```
//! use event_binder::memory::MemoryChannel;
//! use event_binder::{handler, App, Context};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced {
//!     order_id: u64,
//! }
//!
//! #[handler(destination = "orders", group = "billing")]
//! async fn bill(order: OrderPlaced, ctx: Context) -> Result<(), std::io::Error> {
//!     println!("billing order {} (message {})", order.order_id, ctx.id());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In production: `AnyChannel::connect("amqp://…")`, with the same handlers.
//! let bus = MemoryChannel::new();
//! let running = App::new(bus.clone()).handler(bill).start().await?;
//! running.publisher().publish("orders", &OrderPlaced { order_id: 1 }).await?;
//! bus.wait_idle(Duration::from_secs(5)).await?;
//! running.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The vocabulary (destination, group, message, delivery, channel, producer, consumer,
//! handler) means the same everywhere; the README defines it.
//!
//! | cargo feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | `memory::MemoryChannel`, `memory://` URLs: the in-process bus |
//! | `macros` | yes | the [`handler`] attribute macro |
//! | `rabbitmq` | no | `amqp://` and `amqps://` URLs: RabbitMQ through lapin |
//! | `kafka` | no | `kafka://` URLs: Apache Kafka through rdkafka |
//! | `sns-sqs` | no | `sns-sqs://` URLs: Amazon SNS+SQS through the AWS SDK |
//! | `postgres` | no | `postgres::PostgresStore`: handled ids in PostgreSQL |
//! | `redis` | no | `redis::RedisStore`: handled ids in Redis |
//! | `http` | no | `http::Endpoints`: health, metrics and the bindings' switch over HTTP (axum) |
//! | `config` | no | `Configuration`: handlers' destination, group, concurrency, retry and batch settings from a TOML or YAML file and `EVENT_BINDER_*` variables |
//! | `otel` | no | W3C trace context (`traceparent`) through every broker, for OpenTelemetry through `tracing-opentelemetry` |
//! | `asyncapi` | no | `App::asyncapi`: the AsyncAPI 3.0 document of an app's handlers, with the JSON Schema of each event type that implements `schemars::JsonSchema` |

mod any;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use any::{AnyAcknowledger, AnyChannel, AnyConsumer, AnyProducer};
#[doc(inline)]
pub use event_binder_core::*;

/// Makes an `async fn` an event handler: registered on an [`App`] with
/// `.handler(name)`, and still a plain function that a unit test calls with no broker.
///
/// # Example
///
/// ```
/// use event_binder::{handler, App, Channel, Context, IntoHandler, Message};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// pub struct OrderPlaced {
///     pub order_id: u64,
///     pub amount_cents: u64,
/// }
///
/// #[derive(Serialize)]
/// pub struct Invoice {
///     pub order_id: u64,
///     pub total_cents: u64,
/// }
///
/// /// Bills each order; the members of the `billing` group share the work.
/// #[handler(destination = "orders", group = "billing", max_attempts = 5)]
/// pub async fn bill(event: OrderPlaced, ctx: Context) -> Result<(), std::io::Error> {
///     println!("billing order {} (attempt {})", event.order_id, ctx.attempt());
///     Ok(())
/// }
///
/// /// A processor: what it returns is published to `invoices`.
/// #[handler(destination = "orders", group = "invoicing", output = "invoices")]
/// pub async fn invoice(event: OrderPlaced) -> Result<Invoice, std::io::Error> {
///     Ok(Invoice { order_id: event.order_id, total_cents: event.amount_cents })
/// }
///
/// /// The service registers them on whichever channel it runs on.
/// pub fn app<C: Channel>(channel: C) -> App<C> {
///     App::new(channel).handler(bill).handler(invoice)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A unit test calls them directly, with no broker.
/// let order = || OrderPlaced { order_id: 7, amount_cents: 1250 };
/// let ctx = Context::detached(Message::new(r#"{"order_id":7,"amount_cents":1250}"#));
/// bill(order(), ctx).await?;
/// assert_eq!(invoice(order()).await?.total_cents, 1250);
///
/// // What the attribute says is the handler's spec.
/// let handler = bill.into_handler();
/// assert!(handler.spec().name().ends_with("::bill"));
/// assert_eq!(handler.spec().destination(), "orders");
/// assert_eq!(handler.spec().group_name(), Some("billing"));
/// # Ok(())
/// # }
/// ```
///
/// # Reference
///
#[cfg(feature = "macros")]
#[doc(inline)]
pub use event_binder_macros::handler;

/// The in-memory backend: an in-process event bus and the backend for unit tests.
#[cfg(feature = "memory")]
pub mod memory {
    #[doc(inline)]
    pub use event_binder_memory::*;
}

/// The RabbitMQ backend (lapin): `amqp://` and `amqps://` URLs.
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq {
    #[doc(inline)]
    pub use event_binder_rabbitmq::*;
}

/// The Apache Kafka backend (rdkafka): `kafka://` URLs.
#[cfg(feature = "kafka")]
pub mod kafka {
    #[doc(inline)]
    pub use event_binder_kafka::*;
}

/// The Amazon SNS+SQS backend (aws-sdk-sns, aws-sdk-sqs): `sns-sqs://` URLs.
#[cfg(feature = "sns-sqs")]
pub mod sns_sqs {
    #[doc(inline)]
    pub use event_binder_sns_sqs::*;
}

/// PostgreSQL (sqlx): the idempotency store (handled ids that survive restarts and are
/// shared by every instance of a group), the transactional inbox and outbox.
#[cfg(feature = "postgres")]
pub mod postgres {
    #[doc(inline)]
    pub use event_binder_postgres::*;
}

/// The Redis idempotency store (redis): handled ids that survive restarts and are shared by
/// every instance of a group.
#[cfg(feature = "redis")]
pub mod redis {
    #[doc(inline)]
    pub use event_binder_redis::*;
}

/// HTTP endpoints (axum): the app's health, its Prometheus metrics, and the switch that
/// pauses, resumes, stops and starts each binding.
#[cfg(feature = "http")]
pub mod http {
    #[doc(inline)]
    pub use event_binder_http::*;
}
