use event_binder::{handler, App, Channel};

/// Without `batch`, a handler of a `Vec` takes one event, a JSON array.
#[handler(destination = "orders", group = "stock")]
async fn reserve(orders: Vec<u64>) -> Result<(), std::io::Error> {
    println!("{}", orders.len());
    Ok(())
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel).batch_handler(reserve)
}

fn main() {}
