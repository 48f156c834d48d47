#![deny(warnings)]

use event_binder::{handler, App, Channel, Context};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[derive(Debug)]
pub struct BillingError;

impl std::fmt::Display for BillingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("billing failed")
    }
}

impl std::error::Error for BillingError {}

/// Bills an order.
#[handler(destination = "orders", group = "billing")]
pub async fn bill(mut event: OrderPlaced, ctx: Context) -> Result<(), BillingError> {
    event.order_id += u64::from(ctx.attempt());
    if event.order_id == 0 {
        return Err(BillingError);
    }
    Ok(())
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(bill)
}

fn main() {
    let _ = event_binder::IntoHandler::into_handler(bill);
}
