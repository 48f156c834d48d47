use event_binder::handler;

pub struct OrderPlaced {
    pub order_id: u64,
}

#[handler(destination = "orders")]
async fn bill(event: OrderPlaced) -> Result<(), std::io::Error> {
    let _ = event.order_id;
    Ok(())
}

fn main() {}
