#![deny(warnings)]

use event_binder::{handler, Context};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[derive(serde::Serialize)]
pub struct Shipment {
    pub order_id: u64,
}

mod renamed {
    pub use event_binder as binder;
}

/// Every argument at once, the crate path included.
#[handler(
    destination = "orders",
    group = "shipping-eu_2",
    output = "shipments",
    concurrency = 16,
    max_attempts = 3,
    crate = "crate::renamed::binder"
)]
#[allow(clippy::unused_async)]
#[inline]
pub(crate) async fn ship(
    OrderPlaced { order_id }: OrderPlaced,
    ctx: Context,
) -> Result<Shipment, Box<dyn std::error::Error + Send + Sync>> {
    ctx.publisher().ok();
    Ok(Shipment { order_id })
}

fn main() {
    let handler = event_binder::IntoHandler::into_handler(ship);
    assert_eq!(handler.spec().destination(), "orders");
    assert_eq!(handler.spec().name(), concat!(module_path!(), "::ship"));
}
