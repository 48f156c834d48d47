//! The handler runtime: consume, decode, deduplicate, call, retry, dead-letter, acknowledge.

mod app;
mod batch;
mod bindings;
#[cfg(feature = "config")]
mod config;
mod context;
mod extract;
mod failure;
mod handler;
mod retry;
mod slots;

pub use app::{App, RunningApp};
pub use batch::{
    Batch, BatchFailure, BatchFn, BatchHandler, BatchHandlerFn, BatchService, BatchSink,
    IntoBatchHandler,
};
pub use bindings::{BindingState, BindingStatus, Bindings, Health};
#[cfg(feature = "config")]
pub use config::Configuration;
pub use context::Context;
pub use extract::{
    Attempt, Extractors, FromContext, Key, Merge, MessageId, NoState, ProvidedBy, State, StateOf,
};
pub use failure::{NonRetryable, RetryAfter};
pub use handler::{
    CallFuture, Events, FnService, Handler, HandlerFn, HandlerService, HandlerSpec, IntoHandler,
    OutputPolicy, Processor, Route, Routed, RoutedFn, Sink,
};
pub use retry::RetryPolicy;
