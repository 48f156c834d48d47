//! The endpoints served on a port of their own.

use crate::{Error, PrometheusHandle};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often a served [`PrometheusHandle`] gets its upkeep: the exporter's own default.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The endpoints being served, from [`Endpoints::serve`](crate::Endpoints::serve).
///
/// Dropping it shuts the server down too, gracefully, in the background; call
/// [`shutdown`](Self::shutdown) to wait for that.
#[derive(Debug)]
#[must_use = "dropping Serving shuts the server down; keep it, and call shutdown to stop"]
pub struct Serving {
    local_addr: SocketAddr,
    /// Sent, or dropped, to start the graceful shutdown.
    stop: oneshot::Sender<()>,
    server: JoinHandle<io::Result<()>>,
}

impl Serving {
    pub(crate) async fn start(
        addr: impl ToSocketAddrs,
        router: axum::Router,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await.map_err(Error::Bind)?;
        let local_addr = listener.local_addr().map_err(Error::Bind)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let upkeep = metrics.map(|handle| tokio::spawn(upkeep(handle)));
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    // A dropped sender stops the server as a sent signal does.
                    let _ = stopped.await;
                })
                .await;
            if let Some(upkeep) = upkeep {
                upkeep.abort();
            }
            served
        });
        tracing::info!(address = %local_addr, "serving the event-binder HTTP endpoints");
        Ok(Serving {
            local_addr,
            stop,
            server,
        })
    }

    /// The address it listens on: the port the system picked when the one asked for was 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops taking connections, lets the requests under way finish (a switch waits up to
    /// its [timeout](crate::Endpoints::switch_timeout)), and returns once the server is
    /// down.
    pub async fn shutdown(self) -> Result<(), Error> {
        // Only fails when the server is already down, which is what is asked for.
        let _ = self.stop.send(());
        match self.server.await {
            Ok(served) => served.map_err(Error::Server),
            Err(panicked_or_cancelled) => {
                Err(Error::Server(io::Error::other(panicked_or_cancelled)))
            }
        }
    }
}

async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}
