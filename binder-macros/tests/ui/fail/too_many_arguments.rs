use event_binder::{handler, Context};

#[handler(destination = "orders")]
async fn bill(_event: u64, _ctx: Context, _tax: u32) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
