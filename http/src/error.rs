//! The one error type of the HTTP endpoints.

/// What can go wrong serving the endpoints. What goes wrong answering a request is the
/// request's answer (a status and `{"error": "…"}`), never this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be resolved or bound (in use, not local, no permission).
    #[error("could not listen for the HTTP endpoints: {0}")]
    Bind(#[source] std::io::Error),

    /// The server stopped with an error, or its task panicked, before a graceful shutdown.
    #[error("the HTTP endpoints' server failed: {0}")]
    Server(#[source] std::io::Error),
}
