use event_binder::handler;

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[handler(destination = "orders", output = "invoices", batch = 100)]
async fn invoice(orders: Vec<OrderPlaced>) -> Result<Vec<u64>, std::io::Error> {
    Ok(orders.iter().map(|order| order.order_id).collect())
}

fn main() {}
