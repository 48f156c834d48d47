use event_binder::handler;

#[handler(destination = "orders")]
async fn bill<T: serde::de::DeserializeOwned>(_event: T) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
