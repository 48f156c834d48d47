use event_binder::{handler, App, Channel, State};

#[derive(Clone)]
pub struct Db;

#[handler(destination = "orders", group = "inventory")]
async fn reserve(_event: u64, State(_db): State<Db>) -> Result<(), std::io::Error> {
    Ok(())
}

pub fn register<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(reserve)
}

fn main() {}
