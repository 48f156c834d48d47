use event_binder::{handler, MessageId, State};

#[derive(Clone)]
pub struct Db;

#[handler(destination = "orders")]
async fn bill(
    _event: u64,
    _count: u32,
    _id: MessageId,
    State(_db): State<Db>,
    _names: Vec<String>,
) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
