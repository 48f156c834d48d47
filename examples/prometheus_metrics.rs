//! Run with: `cargo run --example prometheus_metrics` (in-process, no broker needed).
//!
//! The runtime's metrics in the Prometheus text format, through `metrics-exporter-prometheus`
//! (here with no HTTP server: a service would serve `handle.render()` on its `/metrics`
//! route, or let the exporter's own listener do it). The recorder is installed before the
//! app starts, because each binding takes its metric handles when it starts. One handler,
//! `bill`, takes three orders; order 2 fails once and is retried, so the output counts
//! 3 received, 3 handled, 1 failed and 1 retried, each labelled with the destination, the
//! group and the handler.

use event_binder::memory::MemoryChannel;
use event_binder::{handler, App, Context};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

#[handler(destination = "orders", group = "billing")]
async fn bill(order: OrderPlaced, ctx: Context) -> Result<(), std::io::Error> {
    if order.order_id == 2 && ctx.attempt() == 1 {
        return Err(std::io::Error::other("the billing database is busy"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Histograms as Prometheus histograms (with these buckets, in seconds), not summaries.
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.000_1, 0.001, 0.01, 0.1, 1.0, 10.0])?
        .install_recorder()?;

    let bus = MemoryChannel::new();
    let running = App::new(bus.clone()).handler(bill).start().await?;
    for order_id in 1..=3 {
        running
            .publisher()
            .publish("orders", &OrderPlaced { order_id })
            .await?;
    }
    bus.wait_idle(Duration::from_secs(5)).await?;
    running.shutdown().await?;

    print!("{}", prometheus.render());
    Ok(())
}
