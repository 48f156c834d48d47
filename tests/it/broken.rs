//! The conformance suite checked against deliberately broken backends: each case must fail
//! against at least one of them (the in-memory backend making one mistake), so that no case
//! passes by doing nothing. Each test prints which breakage its case caught.

use event_binder::memory::MemoryChannel;

async fn connect() -> event_binder::Result<MemoryChannel> {
    Ok(MemoryChannel::new())
}

event_binder_core::broken_backend_tests!(connect);
