use event_binder::handler;

#[handler(destination = "orders", group = "billing", group = "audit")]
async fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
