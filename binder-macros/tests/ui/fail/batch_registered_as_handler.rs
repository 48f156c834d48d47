use event_binder::{handler, App, Channel};

#[handler(destination = "orders", group = "stock", batch = 100)]
async fn reserve(orders: Vec<u64>) -> Result<(), std::io::Error> {
    println!("{}", orders.len());
    Ok(())
}

pub fn register(channel: impl Channel) -> App {
    App::new(channel).handler(reserve)
}

fn main() {}
