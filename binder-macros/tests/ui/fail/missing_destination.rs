use event_binder::handler;

#[handler(group = "billing")]
async fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler]
async fn audit(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
