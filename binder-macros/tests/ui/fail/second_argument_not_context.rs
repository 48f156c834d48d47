use event_binder::{handler, Headers};

#[handler(destination = "orders")]
async fn bill(_event: u64, _headers: Headers) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
