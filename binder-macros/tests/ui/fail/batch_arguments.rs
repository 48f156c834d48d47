use event_binder::{handler, Batch, Context};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

pub struct NotDecodable;

#[handler(destination = "orders", batch = 10)]
async fn with_context(_orders: Vec<OrderPlaced>, _ctx: Context) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 10)]
async fn three(
    _orders: Vec<OrderPlaced>,
    _batch: Batch,
    _ctx: Context,
) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 10)]
async fn undecodable(_orders: Vec<NotDecodable>) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
