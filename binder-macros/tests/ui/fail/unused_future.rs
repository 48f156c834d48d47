#![deny(unused_must_use)]

use event_binder::handler;

#[handler(destination = "orders")]
async fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {
    bill(1);
}
