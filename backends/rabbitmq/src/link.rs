//! The link to the broker: one AMQP connection, watched and replaced when it is lost.
//!
//! A supervisor task owns the connection. It learns of a loss from lapin's connection
//! events, or from any producer or consumer whose operation failed for want of a
//! connection ([`Link::report_lost`]); it then reconnects with exponential backoff until it
//! succeeds or the channel is closed. Producers and consumers read the current state from a
//! watch channel and open fresh AMQP channels on each new connection, declaring what they
//! need again: the topology follows the connection without a registry of its own.

use crate::config::RabbitConfig;
use crate::error;
use event_binder_core::hide_secrets;
use event_binder_core::{Error, Result};
use futures_core::Stream;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connect, Connection, ConnectionProperties, Event};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, timeout_at, Instant};

/// A live connection and its generation (1 for the first, one more for each reconnect).
#[derive(Debug)]
pub(crate) struct Up {
    pub(crate) connection: Connection,
    pub(crate) generation: u64,
}

impl Up {
    /// The largest frame the broker accepts on this connection.
    pub(crate) fn frame_max(&self) -> u32 {
        self.connection.configuration().frame_max()
    }

    /// Whether lapin still sees the connection as open.
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// What became of a connection that is not open.
    fn describe(&self) -> &'static str {
        let status = self.connection.status();
        if status.errored() {
            "the connection failed"
        } else if status.closing() || status.closed() {
            "the connection was closed"
        } else {
            "the connection is not open"
        }
    }
}

/// What the link is doing.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Connected.
    Up(Arc<Up>),
    /// Reconnecting after a loss; `reason` says why the last attempt (or the connection) failed.
    Down { reason: Arc<str>, since: Instant },
    /// Closed by [`Link::close`]: nothing works any more.
    Closed,
}

/// The shared handle on the connection, held by the channel, its producers, consumers and
/// deliveries. When the last one is dropped, the supervisor closes the connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) config: RabbitConfig,
    state: watch::Receiver<State>,
    lost: Arc<Notify>,
    shutdown: watch::Sender<bool>,
}

impl Link {
    /// Connects (failing at once with a clear error if the broker cannot be reached or
    /// refuses the credentials) and starts the supervisor.
    pub(crate) async fn connect(config: RabbitConfig) -> Result<Arc<Link>> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "the RabbitMQ backend runs on tokio: connect from within a tokio runtime".into(),
            ));
        }
        let connection = open(&config).await?;
        let up = Arc::new(Up {
            connection,
            generation: 1,
        });
        let (state_tx, state) = watch::channel(State::Up(up.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let lost = Arc::new(Notify::new());
        tokio::spawn(supervise(
            config.clone(),
            up,
            state_tx,
            shutdown_rx,
            lost.clone(),
        ));
        Ok(Arc::new(Link {
            config,
            state,
            lost,
            shutdown,
        }))
    }

    /// The current state.
    pub(crate) fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        *self.shutdown.borrow() || matches!(*self.state.borrow(), State::Closed)
    }

    /// Waits for a connection other than generation `stale` (0 takes any), until `deadline`
    /// if given. Fails with [`Error::ShutDown`] once closed, and with [`Error::Timeout`]
    /// (saying why the broker is unreachable) at the deadline.
    pub(crate) async fn up(
        &self,
        stale: u64,
        deadline: Option<Instant>,
        what: &str,
    ) -> Result<Arc<Up>> {
        if *self.shutdown.borrow() {
            return Err(Error::ShutDown("rabbitmq channel"));
        }
        let mut state = self.state.clone();
        let ready = |state: &State| match state {
            State::Up(up) => up.generation != stale,
            State::Down { .. } => false,
            State::Closed => true,
        };
        let waited = match deadline {
            None => state.wait_for(ready).await.map(|s| s.clone()),
            Some(deadline) => match timeout_at(deadline, state.wait_for(ready)).await {
                Ok(waited) => waited.map(|s| s.clone()),
                Err(_) => return Err(self.unreachable(what)),
            },
        };
        match waited {
            Ok(State::Up(up)) => Ok(up),
            Ok(_) | Err(_) => Err(Error::ShutDown("rabbitmq channel")),
        }
    }

    /// Tells the supervisor that an operation failed for want of a connection; it checks
    /// the connection and reconnects if it is gone.
    pub(crate) fn report_lost(&self) {
        self.lost.notify_one();
    }

    /// After an operation failed for want of a connection on generation `generation`:
    /// reports the loss and returns the generation to avoid when waiting for the next one.
    /// When that connection is in fact still open (only the AMQP channel failed), returns 0
    /// after a short pause that grows with `failures`, so the caller tries again on it.
    pub(crate) async fn recover(
        &self,
        generation: u64,
        failures: &mut u32,
        deadline: Option<Instant>,
        what: &str,
    ) -> Result<u64> {
        self.report_lost();
        *failures = failures.saturating_add(1);
        let still_open = matches!(
            &*self.state.borrow(),
            State::Up(up) if up.generation == generation && up.is_connected()
        );
        if !still_open {
            return Ok(generation);
        }
        let pause = RETRY_PAUSE
            .saturating_mul(1 << (*failures).min(7))
            .min(Duration::from_secs(1));
        if deadline.is_some_and(|deadline| Instant::now() + pause >= deadline) {
            return Err(self.unreachable(what));
        }
        sleep(pause).await;
        Ok(0)
    }

    /// The largest frame of the current connection (AMQP's default when there is none).
    pub(crate) fn frame_max(&self) -> u32 {
        match &*self.state.borrow() {
            State::Up(up) => up.frame_max(),
            _ => DEFAULT_FRAME_MAX,
        }
    }

    /// The error for an operation that found no connection until its deadline.
    pub(crate) fn unreachable(&self, what: &str) -> Error {
        let reason = match &*self.state.borrow() {
            State::Down { reason, since } => format!(
                "RabbitMQ on {} has been unreachable for {:.1?} (last error: {reason})",
                self.config.endpoint(),
                since.elapsed()
            ),
            State::Up(_) => format!("the connection to {} kept failing", self.config.endpoint()),
            State::Closed => "the channel was closed".to_owned(),
        };
        Error::Timeout {
            what: format!("{what}: {reason}"),
            after: self.config.send_timeout,
        }
    }

    /// Closes the connection and stops reconnecting; waits (a few seconds at most) for
    /// the broker to confirm.
    pub(crate) async fn close(&self) {
        self.shutdown.send_replace(true);
        let mut state = self.state.clone();
        let _ = timeout(
            CLOSE_TIMEOUT + Duration::from_secs(1),
            state.wait_for(|s| matches!(s, State::Closed)),
        )
        .await;
    }
}

/// How long closing waits for the broker's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause before retrying on a connection that is still open.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// RabbitMQ's default `frame_max`.
const DEFAULT_FRAME_MAX: u32 = 131_072;

/// The PEM of the extra certificate authorities `amqps://` trusts, if any.
fn trusted_authorities(config: &RabbitConfig) -> Result<Option<String>> {
    let Some(path) = &config.ca_certificate_file else {
        return Ok(None);
    };
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|err| Error::Connection {
            backend: error::BACKEND,
            message: format!(
                "cannot read the CA certificate file {}: {err}",
                path.display()
            ),
            source: Some(err.into()),
        })
}

/// Opens one connection, within the connect timeout.
pub(crate) async fn open(config: &RabbitConfig) -> Result<Connection> {
    let uri = config.amqp_uri()?;
    let vhost = uri.vhost.clone();
    let properties = ConnectionProperties::default().with_connection_name(
        format!("event-binder {}", config.prefix)
            .trim_end()
            .to_owned()
            .into(),
    );
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: trusted_authorities(config)?,
    };
    let runtime = lapin::runtime::default_runtime().map_err(|err| Error::Connection {
        backend: error::BACKEND,
        message: format!("no tokio runtime to connect from: {err}"),
        source: None,
    })?;
    match timeout(
        config.connect_timeout,
        uri.connect_with_config(properties, tls, runtime),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(error::connection(
            &err,
            &config.endpoint(),
            &config.user(),
            &vhost,
            config.password().as_deref(),
        )),
        Err(_) => Err(Error::Connection {
            backend: error::BACKEND,
            message: format!(
                "RabbitMQ on {} did not complete the connection within {:?}",
                config.endpoint(),
                config.connect_timeout
            ),
            source: None,
        }),
    }
}

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Owns the connection: waits for its loss, then reconnects with backoff, until shut down.
async fn supervise(
    config: RabbitConfig,
    mut up: Arc<Up>,
    state: watch::Sender<State>,
    mut shutdown: watch::Receiver<bool>,
    lost: Arc<Notify>,
) {
    let endpoint = config.endpoint();
    let password = config.password();
    loop {
        let mut events: Events = Box::pin(up.connection.events_listener());
        let reason = tokio::select! {
            () = shut_down(&mut shutdown) => {
                close_connection(&up).await;
                state.send_replace(State::Closed);
                return;
            }
            reason = loss(&up, &mut events, &lost) => reason,
        };
        let reason = hide_secrets(&reason, password.as_deref().as_slice());
        tracing::warn!(endpoint = %endpoint, reason = %reason, "rabbitmq: connection lost; reconnecting");
        state.send_replace(State::Down {
            reason: reason.into(),
            since: Instant::now(),
        });
        let mut backoff = config.reconnect_initial_backoff;
        let mut attempts = 0u32;
        let connection = loop {
            tokio::select! {
                () = shut_down(&mut shutdown) => {
                    state.send_replace(State::Closed);
                    return;
                }
                () = sleep(backoff) => {}
            }
            attempts = attempts.saturating_add(1);
            let attempt = tokio::select! {
                () = shut_down(&mut shutdown) => {
                    state.send_replace(State::Closed);
                    return;
                }
                attempt = open(&config) => attempt,
            };
            match attempt {
                Ok(connection) => break connection,
                Err(err) => {
                    let reason = err.to_string();
                    tracing::debug!(endpoint = %endpoint, attempts, error = %reason, retry_in = ?backoff, "rabbitmq: reconnection failed");
                    state.send_modify(|current| {
                        if let State::Down { since, .. } = current {
                            *current = State::Down {
                                reason: reason.into(),
                                since: *since,
                            };
                        }
                    });
                    backoff = backoff.saturating_mul(2).min(config.reconnect_max_backoff);
                }
            }
        };
        up = Arc::new(Up {
            connection,
            generation: up.generation + 1,
        });
        tracing::info!(endpoint = %endpoint, attempts, generation = up.generation, "rabbitmq: reconnected");
        state.send_replace(State::Up(up.clone()));
    }
}

/// Completes when the channel is closed or every handle on the link is dropped.
async fn shut_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|closed| *closed).await;
}

/// Completes when the connection is gone, with the reason.
async fn loss(up: &Up, events: &mut Events, lost: &Notify) -> String {
    loop {
        if !up.is_connected() {
            return up.describe().to_owned();
        }
        tokio::select! {
            event = poll_fn(|cx| events.as_mut().poll_next(cx)) => match event {
                Some(Event::Error(err)) if !up.is_connected() => return err.to_string(),
                Some(_) => {}
                None => return "the connection was closed".to_owned(),
            },
            () = lost.notified() => {}
        }
    }
}

async fn close_connection(up: &Up) {
    if up.is_connected() {
        let closing = up
            .connection
            .close(200, "event-binder channel closed".into());
        if let Ok(Err(err)) = timeout(CLOSE_TIMEOUT, closing).await {
            tracing::debug!(error = %err, "rabbitmq: closing the connection failed");
        }
    }
}
