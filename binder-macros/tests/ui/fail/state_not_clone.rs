use event_binder::{handler, State};

pub struct Db;

#[handler(destination = "orders")]
async fn reserve(_event: u64, State(_db): State<Db>) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
