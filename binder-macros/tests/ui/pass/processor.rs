#![deny(warnings)]

use event_binder::{handler, App, Channel, Context, Events};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[derive(serde::Serialize)]
pub struct Invoice {
    pub order_id: u64,
}

/// One event out for each event in.
#[handler(destination = "orders", group = "invoicing", output = "invoices")]
pub async fn invoice(event: OrderPlaced, _ctx: Context) -> Result<Invoice, std::io::Error> {
    Ok(Invoice {
        order_id: event.order_id,
    })
}

/// Several events out for one in.
#[handler(destination = "orders", output = "invoices")]
pub async fn split(event: OrderPlaced) -> Result<Events<Invoice>, std::io::Error> {
    Ok(Events(vec![Invoice {
        order_id: event.order_id,
    }]))
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(invoice).handler(split)
}

fn main() {
    let _ = event_binder::IntoHandler::into_handler(invoice);
    let _ = event_binder::IntoHandler::into_handler(split);
}
