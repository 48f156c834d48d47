//! The bindings of a running app: each handler's subscription, its health, and the switch
//! that pauses, resumes, stops and starts it (Spring's `BindingsLifecycleController`).

use crate::error::{Error, Result};
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What a binding does, or is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingState {
    /// Taking and handling deliveries.
    Running,
    /// Taking nothing; its broker keeps the messages. A group's consumer is closed, so
    /// that what it had taken but not handled goes back to the group; an anonymous
    /// subscription's consumer stays open (closing it would delete its queue), idle.
    Paused,
    /// Its consumer closed (an anonymous subscription's queue goes with it). Started again,
    /// a group's binding takes up the group's messages where they are.
    Stopped,
}

impl fmt::Display for BindingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindingState::Running => "running",
            BindingState::Paused => "paused",
            BindingState::Stopped => "stopped",
        })
    }
}

/// One binding as it is now: [`Bindings::list`], `GET /bindings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingStatus {
    /// The handler's name, which names the binding.
    pub name: String,
    /// The destination it consumes.
    pub destination: String,
    /// Its group; `None` for an anonymous subscription.
    pub group: Option<String>,
    /// What it was last asked to do.
    pub state: BindingState,
    /// What it does now: differs from `state` while a change is under way (in-flight
    /// deliveries finishing before a pause, a consumer opening before a resume).
    pub actual: BindingState,
    /// Whether its consumer is open and its last receive did not fail.
    pub connected: bool,
    /// Whether its consume loop runs. A loop that panicked is started again; one whose
    /// consumer the backend shut down ends, and the app is unhealthy.
    pub loop_alive: bool,
    /// When it last received a delivery, in milliseconds since the Unix epoch.
    pub last_received_ms: Option<u64>,
}

impl BindingStatus {
    /// When it last received a delivery.
    pub fn last_received(&self) -> Option<SystemTime> {
        self.last_received_ms
            .map(|millis| UNIX_EPOCH + Duration::from_millis(millis))
    }

    /// Why it is unhealthy, if it is: a binding asked to run whose loop is not alive, or
    /// whose consumer is not connected. A paused or stopped binding is healthy: someone
    /// asked for it.
    pub fn problem(&self) -> Option<String> {
        if self.state != BindingState::Running {
            return None;
        }
        if !self.loop_alive {
            Some(format!("binding {}: its consume loop ended", self.name))
        } else if !self.connected {
            Some(format!(
                "binding {}: its consumer is not connected to the broker",
                self.name
            ))
        } else {
            None
        }
    }
}

/// Whether every binding that should run does: [`Bindings::health`], `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// No binding has a problem.
    pub healthy: bool,
    /// What is wrong, one line per binding that has a problem.
    pub problems: Vec<String>,
    /// Every binding.
    pub bindings: Vec<BindingStatus>,
}

/// The bindings of a [`RunningApp`](super::RunningApp): their health, and the switch of
/// each. Cheap to clone; clones control the same bindings, so one can go to an HTTP
/// endpoint while the app runs.
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{App, BindingState, Handler, HandlerSpec};
///
/// let running = App::new(channel)
///     .handler(Handler::from_fn(
///         HandlerSpec::new("bill", "orders").group("billing"),
///         |_: serde_json::Value| async { Ok::<_, std::io::Error>(()) },
///     ))
///     .start()
///     .await?;
/// let bindings = running.bindings();
/// // Returns once in-flight deliveries are settled and the consumer is closed.
/// bindings.pause("bill").await?;
/// assert_eq!(bindings.status("bill")?.actual, BindingState::Paused);
/// bindings.resume("bill").await?;
/// assert!(bindings.health().healthy);
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bindings {
    cells: Arc<[Arc<BindingCell>]>,
}

impl Bindings {
    pub(super) fn new(cells: Vec<Arc<BindingCell>>) -> Self {
        Bindings {
            cells: cells.into(),
        }
    }

    /// Every binding, in the order the handlers were registered.
    pub fn list(&self) -> Vec<BindingStatus> {
        self.cells.iter().map(|cell| cell.status()).collect()
    }

    /// The binding of the handler called `name`.
    pub fn status(&self, name: &str) -> Result<BindingStatus> {
        Ok(self.cell(name)?.status())
    }

    /// Whether every binding that should run does, and what is wrong if not.
    pub fn health(&self) -> Health {
        let bindings = self.list();
        let problems: Vec<String> = bindings.iter().filter_map(|b| b.problem()).collect();
        Health {
            healthy: problems.is_empty(),
            problems,
            bindings,
        }
    }

    /// Pauses the binding of `name`: it takes nothing more, finishes what it has taken, and
    /// (for a group) closes its consumer, so its broker keeps every message for the group.
    /// Returns once that is done.
    pub async fn pause(&self, name: &str) -> Result<BindingStatus> {
        self.switch(name, BindingState::Paused).await
    }

    /// Resumes a paused (or stopped) binding; returns once its consumer is open again.
    pub async fn resume(&self, name: &str) -> Result<BindingStatus> {
        self.switch(name, BindingState::Running).await
    }

    /// Stops the binding of `name`: like [`pause`](Self::pause), and an anonymous
    /// subscription's consumer closes too (its queue, and what is in it, goes).
    pub async fn stop(&self, name: &str) -> Result<BindingStatus> {
        self.switch(name, BindingState::Stopped).await
    }

    /// Starts a stopped (or paused) binding; returns once its consumer is open again.
    pub async fn start(&self, name: &str) -> Result<BindingStatus> {
        self.switch(name, BindingState::Running).await
    }

    /// Asks the binding for `state` and waits until its loop is there, or another switch
    /// asked for something else meanwhile (the status says which). An app that stops
    /// meanwhile ends the wait with [`Error::ShutDown`].
    async fn switch(&self, name: &str, state: BindingState) -> Result<BindingStatus> {
        let cell = self.cell(name)?;
        cell.wanted.send_replace(state);
        let (mut actual, mut wanted) = (cell.actual.subscribe(), cell.wanted.subscribe());
        loop {
            let (now, ended) = *actual.borrow_and_update();
            if ended {
                return Err(Error::ShutDown("the binding's consume loop"));
            }
            if now == state || *wanted.borrow_and_update() != state {
                return Ok(cell.status());
            }
            // Neither sender goes while `cell` is here: the changes cannot fail.
            tokio::select! {
                _ = actual.changed() => {}
                _ = wanted.changed() => {}
            }
        }
    }

    fn cell(&self, name: &str) -> Result<&Arc<BindingCell>> {
        self.cells
            .iter()
            .find(|cell| cell.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.cells.iter().map(|c| c.name.as_str()).collect();
                Error::Config(format!(
                    "no binding is called {name:?}; the app's bindings are {known:?}"
                ))
            })
    }
}

impl fmt::Debug for Bindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}

/// One binding's shared state: written by its consume loop, read and switched by
/// [`Bindings`].
#[derive(Debug)]
pub(super) struct BindingCell {
    name: String,
    destination: String,
    group: Option<String>,
    /// What it is asked to do.
    pub(super) wanted: watch::Sender<BindingState>,
    /// What its loop does now, and whether the loop has ended for good.
    actual: watch::Sender<(BindingState, bool)>,
    connected: AtomicBool,
    /// Milliseconds since the Unix epoch; 0 before the first delivery.
    last_received_ms: AtomicU64,
}

impl BindingCell {
    pub(super) fn new(name: &str, destination: &str, group: Option<&str>) -> Self {
        BindingCell {
            name: name.to_owned(),
            destination: destination.to_owned(),
            group: group.map(str::to_owned),
            wanted: watch::Sender::new(BindingState::Running),
            actual: watch::Sender::new((BindingState::Running, false)),
            connected: AtomicBool::new(true),
            last_received_ms: AtomicU64::new(0),
        }
    }

    fn status(&self) -> BindingStatus {
        let (actual, ended) = *self.actual.borrow();
        let last = self.last_received_ms.load(Ordering::Relaxed);
        BindingStatus {
            name: self.name.clone(),
            destination: self.destination.clone(),
            group: self.group.clone(),
            state: *self.wanted.borrow(),
            actual,
            connected: self.connected.load(Ordering::Relaxed),
            loop_alive: !ended,
            last_received_ms: (last > 0).then_some(last),
        }
    }

    /// Whether it consumes an anonymous subscription.
    pub(super) fn is_anonymous(&self) -> bool {
        self.group.is_none()
    }

    /// What it is asked to do now.
    pub(super) fn wanted(&self) -> BindingState {
        *self.wanted.borrow()
    }

    /// Its loop reached `state`.
    pub(super) fn reached(&self, state: BindingState) {
        self.actual.send_replace((state, false));
    }

    /// Its loop ended for good (the app stops, or the backend shut its consumer down).
    pub(super) fn ended(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.actual.send_modify(|(_, ended)| *ended = true);
    }

    pub(super) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// A delivery was received now.
    pub(super) fn received(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        self.last_received_ms.store(now, Ordering::Relaxed);
    }
}

/// Sets the binding's loop ended when dropped: whichever way the loop returns, or panics.
pub(super) struct EndsBinding<'a>(pub(super) &'a BindingCell);

impl Drop for EndsBinding<'_> {
    fn drop(&mut self) {
        self.0.ended();
    }
}
