use event_binder::handler;
use std::rc::Rc;

async fn audit() {}

#[handler(destination = "orders")]
async fn bill(event: u64) -> Result<(), std::io::Error> {
    let shared = Rc::new(event);
    audit().await;
    drop(shared);
    Ok(())
}

fn main() {}
