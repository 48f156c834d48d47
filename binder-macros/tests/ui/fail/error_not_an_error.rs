use event_binder::handler;

pub struct NotAnError;

#[handler(destination = "orders")]
async fn bill(_event: u64) -> Result<(), NotAnError> {
    Ok(())
}

fn main() {}
