use event_binder::handler;

#[handler(destination = "orders", topic = "billing")]
async fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
