//! [`MemoryChannel`]: the handle on a bus, and its [`Channel`] implementation.

use crate::bus::{notified_before, Bus};
use crate::client::{MemoryConsumer, MemoryProducer};
use crate::config::MemoryConfig;
use event_binder_core::{
    validate_destination, validate_group, Capabilities, Channel, ChannelUrl, Error, Message,
    Result, Subscription,
};
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The in-memory channel: a handle on an in-process bus.
///
/// Cheap to clone; every clone is the same bus. Open it with [`new`](Self::new),
/// [`with_config`](Self::with_config) or [`from_url`](Self::from_url); see the
/// [crate documentation](crate) for how it maps destinations, groups and dead letters.
///
/// Besides [`Channel`], it offers helpers for tests: [`published`](Self::published),
/// [`wait_idle`](Self::wait_idle), [`queued`](Self::queued) and
/// [`dead_lettered`](Self::dead_lettered).
#[derive(Clone)]
pub struct MemoryChannel {
    bus: Arc<Bus>,
}

impl MemoryChannel {
    /// A new private bus with the default [`MemoryConfig`].
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::new())
    }

    /// A new private bus with this configuration (a capacity of 0 is taken as 1).
    pub fn with_config(config: MemoryConfig) -> Self {
        MemoryChannel {
            bus: Arc::new(Bus::new(config, None)),
        }
    }

    /// Opens the bus a URL names.
    ///
    /// - `memory://` is a new private bus, like [`with_config`](Self::with_config).
    /// - `memory://NAME` is the process-wide bus called NAME (letters, digits, `-`, `_`):
    ///   every `from_url` with that name while the bus is alive (some channel, producer or
    ///   consumer still uses it, and it was not closed) returns the same bus, so separate
    ///   parts of a program can meet on it. It is freed when no longer used.
    /// - Query parameters set the configuration: `capacity`, `max_message_size`,
    ///   `send_timeout_ms` and `history` (see [`MemoryConfig`]). Joining a live named bus,
    ///   the parameters given must match its configuration.
    ///
    /// Any other scheme, a malformed parameter, an unknown parameter or a user, password,
    /// port or path gives [`Error::InvalidUrl`] naming the problem.
    ///
    /// ```
    /// use event_binder_core::{Channel, ChannelUrl};
    /// use event_binder_memory::MemoryChannel;
    ///
    /// let url = ChannelUrl::parse("memory://app?capacity=100&history=10").unwrap();
    /// let channel = MemoryChannel::from_url(&url).unwrap();
    /// assert_eq!(channel.name(), Some("app"));
    /// assert_eq!(channel.config().capacity, 100);
    /// assert_eq!(channel.backend(), "memory");
    /// ```
    pub fn from_url(url: &ChannelUrl) -> Result<Self> {
        Ok(MemoryChannel {
            bus: crate::url::open(url)?,
        })
    }

    /// The configuration of the bus.
    pub fn config(&self) -> &MemoryConfig {
        &self.bus.shared.config
    }

    /// The bus's name, for a bus opened with `memory://NAME`.
    pub fn name(&self) -> Option<&str> {
        self.bus.name.as_deref()
    }

    /// Whether [`close`](Channel::close) was called on this bus.
    pub fn is_closed(&self) -> bool {
        self.bus.shared.is_closed()
    }

    /// The last messages sent to a destination, oldest first: at most
    /// [`MemoryConfig::history`] of them, whether or not anyone consumed them. For tests that
    /// check what a handler published.
    ///
    /// Fails with [`Error::Unsupported`] when the history is off (the default) and with
    /// [`Error::InvalidName`] for an invalid name; a destination never sent to has none.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> event_binder_core::Result<()> {
    /// use event_binder_core::{Channel, Message, Producer};
    /// use event_binder_memory::{MemoryChannel, MemoryConfig};
    ///
    /// let channel = MemoryChannel::with_config(MemoryConfig::new().history(10));
    /// channel.producer("invoices").await?.send(Message::new("{}")).await?;
    /// assert_eq!(channel.published("invoices")?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn published(&self, destination: &str) -> Result<Vec<Message>> {
        validate_destination(destination)?;
        if self.bus.shared.config.history == 0 {
            return Err(Error::Unsupported(
                "memory: MemoryChannel::published needs a history of sent messages; \
                 enable MemoryConfig::history (history=N in a memory:// URL)"
                    .into(),
            ));
        }
        Ok(self
            .bus
            .existing(destination)
            .map(|destination| destination.history())
            .unwrap_or_default())
    }

    /// Waits until the bus is idle: no group or anonymous subscription that has a consumer
    /// attached has a message waiting (delayed redeliveries included), and no delivery is
    /// in flight anywhere (a delivery held unsettled, even from a dead-letter queue or by a
    /// dropped consumer, keeps the bus busy). Dead-letter queues and groups without a
    /// consumer may hold messages: they are not work in progress.
    ///
    /// For tests: publish, `wait_idle`, then assert on the outcome. It waits on every
    /// settlement, send and departure, never by polling; the whole bus is looked at in one
    /// instant, so a message a handler forwards from one destination to another is not
    /// missed. Fails with [`Error::Timeout`] after `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let shared = &self.bus.shared;
        let deadline = Instant::now().checked_add(timeout);
        let _registered = shared.idle_waiter();
        loop {
            let mut notified = pin!(shared.activity.notified());
            notified.as_mut().enable();
            let Some(busy) = self.bus.busy() else {
                return Ok(());
            };
            let woken = notified_before(notified.as_mut(), deadline).await;
            if !woken {
                let busy = self.bus.busy().unwrap_or(busy);
                return Err(Error::Timeout {
                    what: format!(
                        "memory: waiting for the bus to become idle ({} messages waiting in \
                         subscriptions with a consumer, {} deliveries in flight)",
                        busy.waiting, busy.in_flight
                    ),
                    after: timeout,
                });
            }
        }
    }

    /// The messages a group holds, waiting and in flight together (0 for a group or
    /// destination that does not exist).
    pub fn queued(&self, destination: &str, group: &str) -> usize {
        self.bus.existing(destination).map_or(0, |destination| {
            destination.queue_len(crate::bus::Attach::Group(group))
        })
    }

    /// The messages in the dead-letter queue of a group (`None`: of the destination's
    /// anonymous subscriptions), waiting and in flight together.
    pub fn dead_lettered(&self, destination: &str, group: Option<&str>) -> usize {
        self.bus.existing(destination).map_or(0, |destination| {
            destination.queue_len(crate::bus::Attach::DeadLetters(group))
        })
    }

    /// How many subscriptions (groups and anonymous subscriptions) a message sent to the
    /// destination is copied to (0 for a destination that does not exist).
    pub fn subscriptions(&self, destination: &str) -> usize {
        self.bus
            .existing(destination)
            .map_or(0, |destination| destination.subscriptions())
    }

    #[cfg(test)]
    pub(crate) fn has_destination(&self, name: &str) -> bool {
        self.bus.existing(name).is_some()
    }

    #[cfg(test)]
    pub(crate) fn same_bus(&self, other: &MemoryChannel) -> bool {
        Arc::ptr_eq(&self.bus, &other.bus)
    }
}

impl Default for MemoryChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryChannel")
            .field("name", &self.bus.name)
            .field("config", &self.bus.shared.config)
            .field("closed", &self.bus.shared.is_closed())
            .finish()
    }
}

impl Channel for MemoryChannel {
    type Producer = MemoryProducer;
    type Consumer = MemoryConsumer;

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        self.bus.capabilities.clone()
    }

    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        validate_destination(destination)?;
        if let Some(group) = group {
            validate_group(group)?;
        }
        self.bus.shared.check_open()?;
        let destination = self.bus.destination(destination);
        if let Some(group) = group {
            destination.provision_group(group);
        }
        Ok(())
    }

    async fn producer(&self, destination: &str) -> Result<MemoryProducer> {
        validate_destination(destination)?;
        self.bus.shared.check_open()?;
        let destination = self.bus.destination(destination);
        Ok(MemoryProducer::new(Arc::clone(&self.bus), destination))
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<MemoryConsumer> {
        subscription.validate()?;
        self.bus.shared.check_open()?;
        Ok(MemoryConsumer::open(
            Arc::clone(&self.bus),
            subscription.clone(),
            false,
        ))
    }

    /// A consumer on the dead-letter queue of a group (`None`: of the destination's
    /// anonymous subscriptions). Its deliveries carry the original destination and group;
    /// dead-lettering one of them stores it back at the end of the same dead-letter queue.
    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<MemoryConsumer> {
        validate_destination(destination)?;
        if let Some(group) = group {
            validate_group(group)?;
        }
        self.bus.shared.check_open()?;
        let subscription = Subscription::new(destination).optional_group(group.map(Into::into));
        Ok(MemoryConsumer::open(
            Arc::clone(&self.bus),
            subscription,
            true,
        ))
    }

    /// Enqueues into the group's queue only (made if missing, as `provision` makes it).
    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        validate_destination(destination)?;
        validate_group(group)?;
        for message in &messages {
            self.bus.capabilities.check_size(message)?;
        }
        self.bus.shared.check_open()?;
        let destination = self.bus.destination(destination);
        crate::client::send_to_group(&destination, group, messages).await
    }

    /// Closes the bus for every clone of this channel: sends and receives fail with
    /// [`Error::ShutDown`] from now on, and those waiting are woken with it. Settling
    /// deliveries still works. A closed named bus is replaced by a fresh one on the next
    /// [`from_url`](MemoryChannel::from_url) with its name.
    async fn close(&self) -> Result<()> {
        tracing::debug!(bus = ?self.bus.name, "memory: closing the bus");
        self.bus.close();
        Ok(())
    }
}
