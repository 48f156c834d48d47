#![deny(warnings)]

use event_binder::{handler, HandlerSpec, IntoHandler};
use std::time::Duration;

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Retries through the broker, 100 ms then doubling up to 10 s less up to 20 %, each call
/// stopped after 5 s.
#[handler(
    destination = "orders",
    group = "billing",
    max_attempts = 5,
    backoff = "100ms..10s",
    jitter = 0.2,
    timeout = "5s",
    retry = "broker"
)]
pub async fn bill(_event: OrderPlaced) -> Result<(), std::io::Error> {
    Ok(())
}

/// Every unit, the integer shares, and retries in process.
#[handler(
    destination = "orders",
    backoff = "0ms..2h",
    jitter = 1,
    timeout = "3m",
    retry = "in_process"
)]
pub async fn audit(_event: OrderPlaced) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", jitter = 0, backoff = "1m..1m")]
pub async fn notify(_event: OrderPlaced) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {
    let expected = HandlerSpec::new(concat!(module_path!(), "::bill"), "orders")
        .group("billing")
        .max_attempts(5)
        .backoff(Duration::from_millis(100), Duration::from_secs(10))
        .jitter(0.2)
        .timeout(Duration::from_secs(5))
        .retry_through_broker(true);
    assert_eq!(bill.into_handler().spec(), &expected);

    let expected = HandlerSpec::new(concat!(module_path!(), "::audit"), "orders")
        .backoff(Duration::ZERO, Duration::from_secs(2 * 60 * 60))
        .jitter(1.0)
        .timeout(Duration::from_secs(3 * 60))
        .retry_through_broker(false);
    assert_eq!(audit.into_handler().spec(), &expected);
    assert_eq!(
        audit.into_handler().spec().call_timeout(),
        Some(Duration::from_secs(180))
    );

    let expected = HandlerSpec::new(concat!(module_path!(), "::notify"), "orders")
        .jitter(0.0)
        .backoff(Duration::from_secs(60), Duration::from_secs(60));
    assert_eq!(notify.into_handler().spec(), &expected);
    assert_eq!(notify.into_handler().spec().call_timeout(), None);
}
