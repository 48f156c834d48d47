use event_binder::handler;

#[handler(destination = "orders")]
async fn bill(_event: &str) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
