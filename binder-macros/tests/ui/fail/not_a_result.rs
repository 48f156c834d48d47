use event_binder::handler;

#[handler(destination = "orders")]
async fn bill(event: u64) -> u64 {
    event
}

fn main() {}
