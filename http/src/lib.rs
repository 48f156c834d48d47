//! HTTP endpoints for a running event-binder app, on axum: its health, its Prometheus
//! metrics, and the switch that pauses, resumes, stops and starts each binding (what Spring
//! Boot's actuator gives a Spring Cloud Stream app at `/actuator/health` and
//! `/actuator/bindings`).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health` | 200 with the [`Health`](event_binder_core::Health) JSON when every binding that should run does; 503 with it when not, its `problems` saying why |
//! | `GET /metrics` | 200, the Prometheus text (`text/plain; version=0.0.4`) of the handle given to [`Endpoints::metrics`]; 404 without one |
//! | `GET /bindings` | 200, a JSON array of [`BindingStatus`](event_binder_core::BindingStatus) |
//! | `GET /bindings/{name}` | 200, one `BindingStatus`; 404 for an unknown binding |
//! | `POST /bindings/{name}/{action}` | `pause`, `resume`, `stop` or `start`: 200 with the new `BindingStatus` once the binding got there; 404 for an unknown binding or action; 503 when it did not get there within the [switch timeout](Endpoints::switch_timeout) or the app shut down |
//!
//! Every error is JSON, `{"error": "…"}`. The endpoints check no credentials, and the switch
//! changes what the service does: serve them on a port only operators reach, or mount the
//! router behind the service's own authentication layer.
//!
//! [`Endpoints::router`] gives an [`axum::Router`] to mount in a service's own router;
//! [`Endpoints::serve`] serves it on a port of its own.

mod error;
mod routes;
mod serving;

pub use error::Error;
pub use serving::Serving;

/// The Prometheus exporter whose text `GET /metrics` serves, so that a service needs no
/// dependency of its own on it: install its recorder with
/// `PrometheusBuilder::new().install_recorder()` before `App::start`, and give the handle it
/// returns to [`Endpoints::metrics`].
#[doc(no_inline)]
pub use metrics_exporter_prometheus::{
    self as prometheus, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use event_binder_core::Bindings;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::ToSocketAddrs;

/// The HTTP endpoints of one running app: build them from its [`Bindings`], then mount
/// their [`router`](Self::router) or [`serve`](Self::serve) them.
///
/// ```no_run
/// use event_binder_core::{App, Handler, HandlerSpec};
/// use event_binder_http::{Endpoints, PrometheusBuilder};
///
/// # async fn demo(channel: impl event_binder_core::Channel) -> Result<(), Box<dyn std::error::Error>> {
/// // Before `App::start`: each binding takes its metric handles when it starts.
/// let metrics = PrometheusBuilder::new().install_recorder()?;
/// let running = App::new(channel)
///     .handler(Handler::from_fn(
///         HandlerSpec::new("bill", "orders").group("billing"),
///         |_: serde_json::Value| async { Ok::<_, std::io::Error>(()) },
///     ))
///     .start()
///     .await?;
///
/// let endpoints = Endpoints::new(running.bindings().clone()).metrics(metrics);
/// // On a port of its own...
/// let serving = endpoints.serve("0.0.0.0:9090").await?;
/// // ...or under a prefix of the service's own router.
/// let app: axum::Router = axum::Router::new().nest("/ops", endpoints.router());
/// # drop(app);
///
/// // `curl -X POST localhost:9090/bindings/bill/pause` pauses the binding.
/// serving.shutdown().await?;
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Endpoints {
    config: Arc<Config>,
}

/// What the routes answer from; shared by every request.
#[derive(Debug, Clone)]
struct Config {
    bindings: Bindings,
    metrics: Option<PrometheusHandle>,
    switch_timeout: Duration,
}

impl Endpoints {
    /// How long a `POST /bindings/{name}/{action}` waits for the binding to get there, when
    /// [`switch_timeout`](Self::switch_timeout) does not say.
    pub const DEFAULT_SWITCH_TIMEOUT: Duration = Duration::from_secs(30);

    /// The endpoints of the app whose bindings these are
    /// ([`RunningApp::bindings`](event_binder_core::RunningApp::bindings)).
    pub fn new(bindings: Bindings) -> Self {
        Endpoints {
            config: Arc::new(Config {
                bindings,
                metrics: None,
                switch_timeout: Self::DEFAULT_SWITCH_TIMEOUT,
            }),
        }
    }

    /// Serves `handle`'s Prometheus text at `GET /metrics`; without it that answers 404.
    ///
    /// Each scrape drains the histograms' samples. [`serve`](Self::serve) also runs the
    /// handle's upkeep every 5 seconds, as the exporter's own listener does, so that they
    /// do not pile up between scrapes; mounting only the [`router`](Self::router), call
    /// [`PrometheusHandle::run_upkeep`] now and then yourself if scrapes are rare.
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        Arc::make_mut(&mut self.config).metrics = Some(handle);
        self
    }

    /// How long a `POST /bindings/{name}/{action}` waits for the binding to get there
    /// (in-flight deliveries finishing before a pause, a consumer opening before a resume)
    /// before it answers 503; the binding goes on getting there. 30 seconds by default.
    pub fn switch_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).switch_timeout = timeout;
        self
    }

    /// The endpoints as a router with no state left to give, to serve as it is or to mount
    /// under a prefix of a service's own router (`.nest("/ops", endpoints.router())`).
    pub fn router(&self) -> axum::Router {
        routes::router(self.config.clone())
    }

    /// Binds `addr` (port 0 picks a free one, which [`Serving::local_addr`] tells) and
    /// serves the endpoints there, in a task of the current Tokio runtime, until
    /// [`Serving::shutdown`].
    pub async fn serve(&self, addr: impl ToSocketAddrs) -> Result<Serving, Error> {
        Serving::start(addr, self.router(), self.config.metrics.clone()).await
    }
}
