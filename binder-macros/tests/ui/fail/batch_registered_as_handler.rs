use event_binder::{handler, App, Channel};

#[handler(destination = "orders", group = "stock", batch = 100)]
async fn reserve(orders: Vec<u64>) -> Result<(), std::io::Error> {
    println!("{}", orders.len());
    Ok(())
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(reserve)
}

fn main() {}
