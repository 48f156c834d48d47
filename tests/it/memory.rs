//! The conformance suite on `memory://`: a fresh private bus per case.

use event_binder::{AnyChannel, Channel};
use std::sync::Arc;

async fn connect() -> event_binder::Result<Arc<dyn Channel>> {
    Ok(Arc::new(AnyChannel::connect("memory://").await?))
}

event_binder_core::conformance_tests!(connect);
