//! The handler runtime: consume, decode, deduplicate, call, retry, dead-letter, acknowledge.

mod app;
mod context;
mod handler;
mod keys;
mod retry;

pub use app::{App, RunningApp};
pub use context::Context;
pub use handler::{
    Events, Handler, HandlerSpec, IntoHandler, OutputPolicy, Processor, Route, Routed, Sink,
};
pub use retry::RetryPolicy;
