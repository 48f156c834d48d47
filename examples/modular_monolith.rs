//! Run with: `cargo run --example modular_monolith`
//!
//! Two modules of one service, `orders` and `inventory`, talk only through domain events on
//! an in-process bus (like Spring's `ApplicationEventPublisher` and `@EventListener`). Neither
//! calls the other: `orders` publishes `OrderPlaced`; `inventory` reserves stock and answers
//! with `StockReserved` or `StockRejected`; `orders` confirms or cancels. Cutting `inventory`
//! out into its own service later changes the channel URL, not these handlers.
//!
//! Delivery is at least once with idempotent handling; the program places three orders (one
//! for more than is in stock), waits until each is settled, prints the outcome and exits.

use event_binder::memory::MemoryChannel;
use event_binder::{App, Publisher};
use std::time::Duration;

/// The events the modules share: their only coupling.
mod events {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: u64,
        pub(crate) sku: String,
        pub(crate) quantity: u32,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) enum StockAnswer {
        Reserved { order_id: u64 },
        Rejected { order_id: u64, reason: String },
    }
}

/// The orders module: places orders and settles them when inventory answers.
mod orders {
    use super::events::{OrderPlaced, StockAnswer};
    use event_binder::{handler, App, Channel, Context, Publisher};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;

    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Status {
        Pending,
        Confirmed,
        Cancelled(String),
    }

    /// The module's own state, shared with its handlers through the app.
    #[derive(Default)]
    pub(crate) struct Orders {
        statuses: Mutex<HashMap<u64, Status>>,
        settled: Notify,
    }

    impl Orders {
        pub(crate) async fn place(
            &self,
            publisher: &Publisher,
            order: OrderPlaced,
        ) -> event_binder::Result<()> {
            self.set(order.order_id, Status::Pending);
            // Keyed by SKU: orders for one SKU are handled in the order they were placed.
            publisher
                .publish_keyed("order-placed", &order.sku, &order)
                .await?;
            Ok(())
        }

        pub(crate) fn statuses(&self) -> HashMap<u64, Status> {
            self.statuses.lock().expect("orders lock").clone()
        }

        /// Waits until no order is pending.
        pub(crate) async fn settled(&self) {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if self.statuses().values().all(|s| *s != Status::Pending) {
                    return;
                }
                settled.await;
            }
        }

        fn set(&self, order_id: u64, status: Status) {
            self.statuses
                .lock()
                .expect("orders lock")
                .insert(order_id, status);
            self.settled.notify_waiters();
        }
    }

    #[handler(destination = "stock-answers", group = "orders")]
    pub(crate) async fn settle(answer: StockAnswer, ctx: Context) -> Result<(), String> {
        let orders = ctx
            .extension::<Arc<Orders>>()
            .ok_or("the orders module is not registered")?;
        match answer {
            StockAnswer::Reserved { order_id } => orders.set(order_id, Status::Confirmed),
            StockAnswer::Rejected { order_id, reason } => {
                orders.set(order_id, Status::Cancelled(reason))
            }
        }
        Ok(())
    }

    /// Adds the module's handlers to the app; returns the module, for placing orders.
    pub(crate) fn register<C: Channel>(app: App<C>) -> (App<C>, Arc<Orders>) {
        let orders = Arc::new(Orders::default());
        (app.extension(orders.clone()).handler(settle), orders)
    }
}

/// The inventory module: reserves stock for placed orders.
mod inventory {
    use super::events::{OrderPlaced, StockAnswer};
    use event_binder::{handler, App, Channel, Context};
    use std::collections::HashMap;
    use std::sync::Mutex;

    pub(crate) struct Stock(Mutex<HashMap<String, u32>>);

    impl Stock {
        pub(crate) fn new(levels: &[(&str, u32)]) -> Self {
            Stock(Mutex::new(
                levels.iter().map(|(s, q)| (s.to_string(), *q)).collect(),
            ))
        }

        fn reserve(&self, sku: &str, quantity: u32) -> Result<(), String> {
            let mut levels = self.0.lock().expect("stock lock");
            let level = levels.get_mut(sku).ok_or(format!("unknown sku {sku}"))?;
            if *level < quantity {
                return Err(format!("only {level} of {sku} left"));
            }
            *level -= quantity;
            Ok(())
        }
    }

    /// A processor: what it returns is published to `stock-answers`.
    #[handler(
        destination = "order-placed",
        group = "inventory",
        output = "stock-answers"
    )]
    pub(crate) async fn reserve(order: OrderPlaced, ctx: Context) -> Result<StockAnswer, String> {
        let stock = ctx
            .extension::<Stock>()
            .ok_or("the inventory module is not registered")?;
        Ok(match stock.reserve(&order.sku, order.quantity) {
            Ok(()) => StockAnswer::Reserved {
                order_id: order.order_id,
            },
            Err(reason) => StockAnswer::Rejected {
                order_id: order.order_id,
                reason,
            },
        })
    }

    pub(crate) fn register<C: Channel>(app: App<C>) -> App<C> {
        app.extension(Stock::new(&[("book", 5), ("lamp", 1)]))
            .handler(reserve)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = MemoryChannel::new();
    let (app, module) = orders::register(App::new(bus));
    let app = inventory::register(app);
    let publisher: Publisher = app.publisher();
    let running = app.start().await?;

    for (order_id, sku, quantity) in [(1, "book", 2), (2, "lamp", 1), (3, "lamp", 1)] {
        let order = events::OrderPlaced {
            order_id,
            sku: sku.to_owned(),
            quantity,
        };
        module.place(&publisher, order).await?;
    }
    tokio::time::timeout(Duration::from_secs(30), module.settled())
        .await
        .map_err(|_| "orders were not settled within 30 s")?;

    let mut statuses: Vec<_> = module.statuses().into_iter().collect();
    statuses.sort_by_key(|(id, _)| *id);
    for (order_id, status) in statuses {
        println!("order {order_id}: {status:?}");
    }
    running.shutdown().await?;
    Ok(())
}
