//! Run with: `cargo run --example quickstart` (in-process, no broker needed), or give a
//! channel URL to run the same handlers on a broker whose feature is compiled in, e.g.
//! `cargo run --example quickstart --features rabbitmq -- amqp://guest:guest@127.0.0.1:5672/%2f`,
//! `--features kafka -- kafka://127.0.0.1:9092`, or, with credentials from the AWS provider
//! chain (`AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test` for the emulator),
//! `--features sns-sqs -- 'sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566'`.
//!
//! One destination, `orders`, read by two groups: `billing` and `shipping` each get every
//! order (fan-out). `billing` is a processor: what it returns is published to `invoices`
//! before the order is acknowledged, and `mailer` reads those. Delivery is at least once;
//! each handler sees each message id once (idempotent handling). The program publishes three
//! orders, waits until every order was shipped and every invoice mailed, and exits.

use event_binder::{handler, AnyChannel, App, Channel, Context};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    total_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct InvoiceIssued {
    order_id: u64,
    invoice_number: String,
    total_cents: u64,
}

/// Counts what was done, so the program knows when to stop.
#[derive(Default)]
struct Progress {
    shipped: AtomicUsize,
    mailed: AtomicUsize,
    changed: Notify,
}

/// Billing turns an order into an invoice; the runtime publishes it to `invoices`.
#[handler(destination = "orders", group = "billing", output = "invoices")]
async fn bill(order: OrderPlaced) -> Result<InvoiceIssued, Infallible> {
    println!(
        "billing:  order {} for {} ({} cents) -> invoice INV-{:05}",
        order.order_id, order.customer, order.total_cents, order.order_id
    );
    Ok(InvoiceIssued {
        order_id: order.order_id,
        invoice_number: format!("INV-{:05}", order.order_id),
        total_cents: order.total_cents,
    })
}

/// Shipping gets every order too, in its own group.
#[handler(destination = "orders", group = "shipping")]
async fn ship(order: OrderPlaced, ctx: Context) -> Result<(), Infallible> {
    println!(
        "shipping: order {} for {} (message {}, attempt {})",
        order.order_id,
        order.customer,
        ctx.id(),
        ctx.attempt()
    );
    if let Some(progress) = ctx.extension::<Arc<Progress>>() {
        progress.shipped.fetch_add(1, Ordering::SeqCst);
        progress.changed.notify_waiters();
    }
    Ok(())
}

/// The mailer reads what billing published.
#[handler(destination = "invoices", group = "mailer")]
async fn mail(invoice: InvoiceIssued, ctx: Context) -> Result<(), Infallible> {
    println!(
        "mailer:   invoice {} for order {} ({} cents)",
        invoice.invoice_number, invoice.order_id, invoice.total_cents
    );
    if let Some(progress) = ctx.extension::<Arc<Progress>>() {
        progress.mailed.fetch_add(1, Ordering::SeqCst);
        progress.changed.notify_waiters();
    }
    Ok(())
}

const ORDERS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".to_owned());
    let channel = AnyChannel::connect(&url).await?;
    println!("connected to {} ({})", channel.url(), channel.backend());

    let progress = Arc::new(Progress::default());
    let app = App::new(channel)
        .extension(progress.clone())
        .handler(bill)
        .handler(ship)
        .handler(mail);
    let running = app.start().await?;

    for order_id in 1..=ORDERS as u64 {
        let order = OrderPlaced {
            order_id,
            customer: format!("customer-{order_id}"),
            total_cents: 1_000 * order_id,
        };
        running.publisher().publish("orders", &order).await?;
    }

    let all_done = async {
        loop {
            let changed = progress.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if progress.shipped.load(Ordering::SeqCst) >= ORDERS
                && progress.mailed.load(Ordering::SeqCst) >= ORDERS
            {
                break;
            }
            changed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_done)
        .await
        .map_err(|_| "the orders were not all handled within 30 s")?;

    running.shutdown().await?;
    println!(
        "done: {} orders shipped, {} invoices mailed",
        progress.shipped.load(Ordering::SeqCst),
        progress.mailed.load(Ordering::SeqCst)
    );
    Ok(())
}
