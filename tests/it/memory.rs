//! The conformance suite on `memory://`: a fresh private bus per case.

use event_binder::AnyChannel;

async fn connect() -> event_binder::Result<AnyChannel> {
    AnyChannel::connect("memory://").await
}

event_binder_core::conformance_tests!(connect);
