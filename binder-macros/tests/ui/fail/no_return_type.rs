use event_binder::handler;

#[handler(destination = "orders")]
async fn bill(_event: u64) {}

fn main() {}
