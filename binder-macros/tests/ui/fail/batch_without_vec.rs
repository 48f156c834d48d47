use event_binder::{handler, Batch};

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[handler(destination = "orders", batch = 100)]
async fn one_order(order: OrderPlaced) -> Result<(), std::io::Error> {
    println!("{}", order.order_id);
    Ok(())
}

#[handler(destination = "orders", batch = 100)]
async fn an_array(orders: [OrderPlaced; 4], _batch: Batch) -> Result<(), std::io::Error> {
    println!("{}", orders.len());
    Ok(())
}

#[handler(destination = "orders", batch = 100)]
async fn a_deque(orders: std::collections::VecDeque<OrderPlaced>) -> Result<(), std::io::Error> {
    println!("{}", orders.len());
    Ok(())
}

#[handler(destination = "orders", batch = 100)]
async fn nothing() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
