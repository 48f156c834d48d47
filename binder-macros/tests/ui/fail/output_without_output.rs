use event_binder::{handler, App, Channel, Context};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[derive(serde::Serialize)]
pub struct Invoice {
    pub order_id: u64,
}

#[handler(destination = "orders", group = "billing")]
async fn bill(event: OrderPlaced, _ctx: Context) -> Result<Invoice, std::io::Error> {
    Ok(Invoice {
        order_id: event.order_id,
    })
}

pub fn billing<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(bill)
}

fn main() {}
