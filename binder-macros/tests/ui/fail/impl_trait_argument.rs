use event_binder::{handler, FromContext};

#[handler(destination = "orders")]
async fn bill(_event: u64, _extra: impl FromContext) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
