use event_binder::handler;

#[handler(destination = "orders")]
async fn bill() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
