use event_binder::handler;

#[handler(destination = "orders", batch = 10)]
async fn count(orders: Vec<u64>) -> Result<usize, std::io::Error> {
    Ok(orders.len())
}

#[handler(destination = "orders", batch = 10)]
async fn not_a_result(orders: Vec<u64>) -> usize {
    orders.len()
}

fn main() {}
