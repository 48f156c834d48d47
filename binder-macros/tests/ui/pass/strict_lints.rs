//! The expansion is clean under the strict lints a library sets.
#![forbid(unsafe_code)]
#![deny(
    warnings,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_qualifications,
    unused_results,
    unused_lifetimes,
    single_use_lifetimes,
    trivial_casts,
    trivial_numeric_casts,
    rust_2018_idioms,
    let_underscore_drop,
    non_ascii_idents,
    unused_import_braces,
    variant_size_differences
)]

/// Handlers.
pub mod handlers {
    use event_binder::{handler, Batch, Context};

    /// An order.
    #[derive(Debug, serde::Deserialize)]
    pub struct OrderPlaced {
        /// Its id.
        pub order_id: u64,
    }

    /// Counts orders.
    #[handler(destination = "orders", group = "counting", concurrency = 1)]
    pub async fn count(_event: OrderPlaced, _ctx: Context) -> Result<(), std::io::Error> {
        Ok(())
    }

    /// Counts orders in bulk.
    #[handler(destination = "orders", group = "bulk", batch = 10, batch_wait = "5ms")]
    pub async fn count_many(orders: Vec<OrderPlaced>, _batch: Batch) -> Result<(), String> {
        println!("{} orders", orders.len());
        Ok(())
    }

    /// Counts orders in bulk, with the default wait.
    #[handler(destination = "orders", group = "bulk", batch = 10)]
    pub async fn count_more(_orders: Vec<OrderPlaced>) -> Result<(), String> {
        Ok(())
    }

    /// Echoes orders.
    #[handler(destination = "orders", output = "echoes")]
    pub async fn echo(event: OrderPlaced) -> Result<u64, String> {
        Ok(event.order_id)
    }
}

fn main() {
    let _handler = event_binder::IntoHandler::into_handler(handlers::count);
    let _handler = event_binder::IntoHandler::into_handler(handlers::echo);
    let _handler = event_binder::IntoBatchHandler::into_batch_handler(handlers::count_many);
    let _handler = event_binder::IntoBatchHandler::into_batch_handler(handlers::count_more);
}
