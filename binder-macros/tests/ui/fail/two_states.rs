use event_binder::{handler, State};

#[derive(Clone)]
pub struct Db;

#[derive(Clone)]
pub struct Mailer;

#[handler(destination = "orders", group = "inventory")]
async fn reserve(
    _event: u64,
    State(_db): State<Db>,
    State(_mailer): State<Mailer>,
) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
