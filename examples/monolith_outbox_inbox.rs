//! Run with: `cargo run --example monolith_outbox_inbox --features postgres`
//! (PostgreSQL at `EVENT_BINDER_POSTGRES_URL`, by default the local server's database
//! `test` as user `postgres`; `scripts/postgres.sh` sets one up.)
//!
//! The modular monolith of `modular_monolith.rs`, with its state in PostgreSQL and the
//! guarantees it had as one program kept across the event bus:
//!
//! - the orders module writes an order and its `OrderPlaced` event in one transaction,
//!   through the outbox: an order is never placed without its event, and an order whose
//!   transaction rolls back never sends one;
//! - the inventory module reserves stock through the inbox: its stock update, its answer
//!   (through the outbox again) and the record that the event was handled commit together,
//!   so an event delivered twice (as a broker does after a crash) reserves once.
//!
//! It runs on `memory://`; cutting `inventory` out into a service changes the channel URL,
//! not these modules: their transactions, and the exactly-once effects, stay as they are.

use event_binder::memory::MemoryChannel;
use event_binder::postgres::{sqlx, Outbox, PostgresConfig, PostgresStore};
use event_binder::{App, Message};
use std::time::Duration;

/// The events the modules share: their only coupling.
mod events {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: i64,
        pub(crate) sku: String,
        pub(crate) quantity: i32,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) enum StockAnswer {
        Reserved { order_id: i64 },
        Rejected { order_id: i64, reason: String },
    }
}

/// The orders module: places orders and settles them when inventory answers.
mod orders {
    use super::events::{OrderPlaced, StockAnswer};
    use event_binder::postgres::{sqlx, InboxTransaction, Outbox, PostgresStore};
    use event_binder::{handler, App, BoxError, Channel, IntoHandler};

    /// Writes the order and its event in one transaction; returns the event's message id.
    /// With `fail_after_writing`, the transaction rolls back after both were written, as
    /// a failed validation would: neither the order nor its event remains.
    pub(crate) async fn place(
        pool: &sqlx::PgPool,
        outbox: &Outbox,
        order: &OrderPlaced,
        fail_after_writing: bool,
    ) -> Result<Option<String>, BoxError> {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO monolith_orders (id, sku, quantity, status) VALUES ($1, $2, $3, 'pending')",
        )
        .bind(order.order_id)
        .bind(&order.sku)
        .bind(order.quantity)
        .execute(&mut *tx)
        .await?;
        // Keyed by SKU: orders for one SKU reach inventory in the order they were placed.
        let id = outbox
            .publish_keyed(&mut tx, "order-placed", &order.sku, order)
            .await?;
        if fail_after_writing {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(id))
    }

    #[handler(destination = "stock-answers", group = "orders")]
    pub(crate) async fn settle(answer: StockAnswer, tx: InboxTransaction) -> Result<(), BoxError> {
        let (order_id, status) = match answer {
            StockAnswer::Reserved { order_id } => (order_id, "confirmed".to_owned()),
            StockAnswer::Rejected { order_id, reason } => {
                (order_id, format!("cancelled: {reason}"))
            }
        };
        let mut db = tx.connection().await?;
        sqlx::query("UPDATE monolith_orders SET status = $2 WHERE id = $1")
            .bind(order_id)
            .bind(status)
            .execute(&mut *db)
            .await?;
        Ok(())
    }

    /// Adds the module's handlers, each through the inbox.
    pub(crate) fn register<C: Channel>(app: App<C>, store: &PostgresStore) -> App<C> {
        app.handler(settle.into_handler().layer(store.inbox()))
    }

    pub(crate) async fn statuses(pool: &sqlx::PgPool) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as("SELECT id, status FROM monolith_orders ORDER BY id")
            .fetch_all(pool)
            .await
    }
}

/// The inventory module: reserves stock for placed orders.
mod inventory {
    use super::events::{OrderPlaced, StockAnswer};
    use event_binder::postgres::{sqlx, InboxTransaction, Outbox, PostgresStore};
    use event_binder::{handler, App, BoxError, Channel, Context, IntoHandler};

    /// Reserves the stock and answers, in the inbox's transaction: the stock update, the
    /// answer (through the outbox) and the record of the event as handled commit together.
    #[handler(destination = "order-placed", group = "inventory")]
    pub(crate) async fn reserve(
        order: OrderPlaced,
        tx: InboxTransaction,
        ctx: Context,
    ) -> Result<(), BoxError> {
        let outbox = ctx
            .extension::<Outbox>()
            .ok_or("the inventory module is not registered")?;
        let mut db = tx.connection().await?;
        let reserved = sqlx::query(
            "UPDATE monolith_stock SET available = available - $2 \
             WHERE sku = $1 AND available >= $2",
        )
        .bind(&order.sku)
        .bind(order.quantity)
        .execute(&mut *db)
        .await?
        .rows_affected()
            == 1;
        let answer = if reserved {
            StockAnswer::Reserved {
                order_id: order.order_id,
            }
        } else {
            StockAnswer::Rejected {
                order_id: order.order_id,
                reason: format!("not enough {} in stock", order.sku),
            }
        };
        outbox.publish(&mut db, "stock-answers", &answer).await?;
        Ok(())
    }

    pub(crate) fn register<C: Channel>(
        app: App<C>,
        store: &PostgresStore,
        outbox: &Outbox,
    ) -> App<C> {
        app.extension(outbox.clone())
            .handler(reserve.into_handler().layer(store.inbox()))
    }

    pub(crate) async fn stock(pool: &sqlx::PgPool) -> Result<Vec<(String, i32)>, sqlx::Error> {
        sqlx::query_as("SELECT sku, available FROM monolith_stock ORDER BY sku")
            .fetch_all(pool)
            .await
    }
}

/// Creates the example's tables, empty but for the stock.
async fn reset(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    for statement in [
        "DROP TABLE IF EXISTS monolith_orders, monolith_stock, monolith_handled, monolith_outbox",
        "CREATE TABLE monolith_orders (id bigint PRIMARY KEY, sku text NOT NULL, \
         quantity int NOT NULL, status text NOT NULL)",
        "CREATE TABLE monolith_stock (sku text PRIMARY KEY, available int NOT NULL \
         CHECK (available >= 0))",
        "INSERT INTO monolith_stock VALUES ('book', 5), ('lamp', 1)",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), event_binder::BoxError> {
    let url = std::env::var("EVENT_BINDER_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = sqlx::PgPool::connect(&url).await?;
    reset(&pool).await?;
    // The inbox's table of handled ids, and the outbox's, both created when missing.
    let store = PostgresStore::from_pool(
        pool.clone(),
        PostgresConfig::default().table("monolith_handled"),
    )
    .await?;
    let outbox = Outbox::with_table(pool.clone(), "monolith_outbox").await?;

    let bus = MemoryChannel::new();
    let app = orders::register(App::new(bus), &store);
    let app = inventory::register(app, &store, &outbox);
    let publisher = app.publisher();
    let running = app.start().await?;
    let relay = outbox.relay(publisher.clone()).start();

    let order = |order_id, sku: &str, quantity| events::OrderPlaced {
        order_id,
        sku: sku.to_owned(),
        quantity,
    };
    let first = orders::place(&pool, &outbox, &order(1, "book", 2), false).await?;
    orders::place(&pool, &outbox, &order(2, "lamp", 1), false).await?;
    orders::place(&pool, &outbox, &order(3, "lamp", 1), false).await?;
    // Rolled back after writing its event: no order 4, and no event for it either.
    orders::place(&pool, &outbox, &order(4, "book", 1), true).await?;
    // Order 1's event once more, with its id, as a broker redelivers after a crash: the
    // inbox knows it, and the book is reserved once.
    if let Some(id) = first {
        let again = serde_json::to_vec(&order(1, "book", 2))?;
        publisher
            .send(
                "order-placed",
                Message::new_with_id(id, again).with_key("book"),
            )
            .await?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while orders::statuses(&pool)
        .await?
        .iter()
        .any(|(_, status)| status == "pending")
    {
        if tokio::time::Instant::now() > deadline {
            return Err("orders were not settled within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (order_id, status) in orders::statuses(&pool).await? {
        println!("order {order_id}: {status}");
    }
    for (sku, available) in inventory::stock(&pool).await? {
        println!("stock {sku}: {available} left");
    }
    relay.shutdown().await;
    running.shutdown().await?;
    Ok(())
}
