//! The handler runtime: consume, decode, deduplicate, call, retry, dead-letter, acknowledge.

mod app;
mod batch;
mod context;
mod failure;
mod handler;
mod retry;
mod slots;

pub use app::{App, RunningApp};
pub use batch::{Batch, BatchFailure, BatchFn, BatchHandler, BatchService};
pub use context::Context;
pub use failure::{NonRetryable, RetryAfter};
pub use handler::{
    CallFuture, EventOnly, Events, FnService, Handler, HandlerFn, HandlerService, HandlerSpec,
    IntoHandler, OutputPolicy, Processor, Route, Routed, Sink, WithContext,
};
pub use retry::RetryPolicy;
