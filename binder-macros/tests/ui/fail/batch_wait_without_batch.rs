use event_binder::handler;

#[handler(destination = "orders", batch_wait = "50ms")]
async fn reserve(orders: Vec<u64>) -> Result<(), std::io::Error> {
    println!("{}", orders.len());
    Ok(())
}

fn main() {}
