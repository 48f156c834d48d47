use event_binder::{handler, Attempt, Context, Headers, Key, MessageId, State};

#[handler(destination = "orders")]
async fn bill(
    _event: u64,
    _ctx: Context,
    _id: MessageId,
    _key: Key,
    _attempt: Attempt,
    _headers: Headers,
    State(_tax): State<u32>,
    _extra: Context,
) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
