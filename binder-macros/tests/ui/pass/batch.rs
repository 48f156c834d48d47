#![deny(warnings)]

use event_binder::{
    handler, App, Batch, BatchFailure, BatchHandler, Channel, HandlerSpec, IntoBatchHandler,
    IntoHandler,
};
use std::time::Duration;

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Its events alone, with every argument a batch handler takes.
#[handler(
    destination = "orders",
    group = "stock",
    batch = 100,
    batch_wait = "50ms",
    max_attempts = 3,
    backoff = "10ms..1s",
    jitter = 0.1,
    timeout = "5s",
    retry = "in_process"
)]
pub async fn reserve(orders: Vec<OrderPlaced>) -> Result<(), std::io::Error> {
    println!("reserving {} orders", orders.len());
    Ok(())
}

/// Its events and their contexts; failing some of them; the default wait.
#[handler(destination = "orders", group = "audit", batch = 10)]
pub async fn audit(
    mut orders: std::vec::Vec<OrderPlaced>,
    batch: Batch,
) -> Result<(), BatchFailure> {
    orders.retain(|order| order.order_id > 0);
    println!(
        "{} orders, {} contexts",
        orders.len(),
        batch.contexts().len()
    );
    Err(BatchFailure::new().fail(0, "the first is refused"))
}

/// Patterns bind as in any `async fn`; the error converts into a `BoxError`.
#[handler(destination = "pairs", batch = 2, batch_wait = "0ms")]
async fn pairs(mut pairs: Vec<(u32, u32)>, _: Batch) -> Result<(), String> {
    pairs.sort_unstable();
    Ok(())
}

/// Without `batch`, a `Vec` is one event, a JSON array: a handler like any other.
#[handler(destination = "lists")]
async fn list(numbers: Vec<u64>) -> Result<(), std::io::Error> {
    println!("{} numbers", numbers.len());
    Ok(())
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel)
        .batch_handler(reserve)
        .batch_handler(audit)
        .batch_handler(pairs)
        .handler(list)
        // Built by hand, as before.
        .batch_handler(BatchHandler::from_fn(
            HandlerSpec::new("bulk", "orders").batch(64, Duration::from_millis(20)),
            |orders: Vec<OrderPlaced>, _batch: Batch| async move {
                println!("{} orders", orders.len());
                Ok::<_, std::io::Error>(())
            },
        ))
}

fn main() {
    let handler = reserve.into_batch_handler();
    assert_eq!(
        handler.spec().batch_limits(),
        Some((100, Duration::from_millis(50)))
    );
    let handler = audit.into_batch_handler();
    assert_eq!(
        handler.spec().batch_limits(),
        Some((10, BatchHandler::DEFAULT_WAIT))
    );
    let _ = pairs.into_batch_handler();
    let _ = list.into_handler();
}
