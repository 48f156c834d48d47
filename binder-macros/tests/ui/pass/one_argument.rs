#![deny(warnings)]

use event_binder::{handler, App, Channel};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Counts orders; a plain `async fn` that still compiles as one.
#[handler(destination = "orders")]
pub async fn count(event: OrderPlaced) -> Result<(), std::io::Error> {
    let _ = event.order_id;
    Ok(())
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(count)
}

fn main() {
    let _ = event_binder::IntoHandler::into_handler(count);
    let _future = count(OrderPlaced { order_id: 1 });
}
