//! The configuration of a RabbitMQ channel and the `amqp://` URLs it is read from.

use event_binder_core::{validate_prefix, ChannelUrl, Error, Result};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The type of the durable queues a [`RabbitChannel`](crate::RabbitChannel) declares: the
/// queues of groups and the dead-letter queues.
///
/// The server-named queues of anonymous subscriptions are exclusive and auto-delete, which
/// RabbitMQ allows for classic queues only: they stay classic whatever is chosen here.
///
/// | | [`Classic`](Self::Classic) (the default) | [`Quorum`](Self::Quorum) |
/// |---|---|---|
/// | replicated across a cluster | no: one node holds the queue | yes (Raft) |
/// | `attempt` of a delivery | 1, or 2 once redelivered | the broker's `x-delivery-count` + 1: 1, 2, 3, … |
/// | a message that crashes the process every time | redelivered forever | dead-lettered after [`RetryPolicy::max_deliveries`](event_binder_core::RetryPolicy::max_deliveries) |
/// | latency | lower | higher (a quorum of nodes writes each message) |
/// | exclusive / auto-delete queues, priorities | yes | no |
///
/// A queue keeps the type it was declared with: switching an existing group to another type
/// makes its declaration fail (RabbitMQ: `inequivalent arg 'x-queue-type'`) until the queue
/// is deleted or its messages moved to a queue of the new type.
///
/// ```
/// use event_binder_rabbitmq::{QueueType, RabbitConfig};
///
/// let config = RabbitConfig::new("amqp://127.0.0.1/%2f?queue_type=quorum")?;
/// assert_eq!(config.queue_type, QueueType::Quorum);
/// assert_eq!("classic".parse::<QueueType>()?, QueueType::Classic);
/// assert_eq!(QueueType::default(), QueueType::Classic);
/// # Ok::<(), event_binder_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueType {
    /// Classic queues (declared without `x-queue-type`, so existing queues keep working):
    /// one node, lowest latency; RabbitMQ only says whether a delivery was redelivered, so
    /// `attempt` is 1 or 2.
    #[default]
    Classic,
    /// Quorum queues (`x-queue-type: quorum`): replicated, and counting the deliveries of
    /// each message (`x-delivery-count`), which `attempt` reports.
    Quorum,
}

impl QueueType {
    /// The name RabbitMQ and the `queue_type` URL parameter use: `classic` or `quorum`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = Error;

    /// `classic` or `quorum`; anything else is an [`Error::Config`].
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(Error::Config(format!(
                "queue type {other:?} is not one RabbitMQ event-binder supports: use classic or quorum"
            ))),
        }
    }
}

/// How a [`RabbitChannel`](crate::RabbitChannel) connects and behaves.
///
/// Made from a URL with [`RabbitConfig::new`] (or [`from_url`](Self::from_url)), which also
/// reads the parameters below from its query; then changed with the setters. The URL's
/// password is kept private: `Debug` shows the URL with `***` in its place.
///
/// | query parameter | field | default |
/// |---|---|---|
/// | `prefix` | [`prefix`](Self::prefix) | empty |
/// | `prefetch` | [`prefetch`](Self::prefetch) | the subscription's (the handler's concurrency) |
/// | `send_timeout_ms` | [`send_timeout`](Self::send_timeout) | 30 s |
/// | `connect_timeout_ms` | [`connect_timeout`](Self::connect_timeout) | 10 s |
/// | `reconnect_initial_ms` | [`reconnect_initial_backoff`](Self::reconnect_initial_backoff) | 100 ms |
/// | `reconnect_max_ms` | [`reconnect_max_backoff`](Self::reconnect_max_backoff) | 5 s |
/// | `max_message_size` | [`max_message_size`](Self::max_message_size) | 16 MiB |
/// | `queue_expires_ms` | [`queue_expires`](Self::queue_expires) | never |
/// | `queue_type` | [`queue_type`](Self::queue_type) | `classic` |
/// | `cacertfile` | [`ca_certificate_file`](Self::ca_certificate_file) | the system's roots only |
///
/// lapin's own parameters (`heartbeat`, `frame_max`, `channel_max`, `connection_timeout`,
/// `auth_mechanism`) are passed on to it; any other parameter is an
/// [`Error::InvalidUrl`].
///
/// Every setting is checked once, whichever way it was set (URL, setter or field): reading
/// a URL fails with [`Error::InvalidUrl`] naming the parameter, and connecting
/// ([`RabbitChannel::with_config`](crate::RabbitChannel::with_config)) with
/// [`Error::Config`] naming the field, each saying what is allowed:
///
/// | setting | allowed |
/// |---|---|
/// | `prefetch` | 1 to 65535 (or unset) |
/// | `send_timeout`, `connect_timeout` | 1 ms to 24 h |
/// | `reconnect_initial_backoff` | 1 ms to `reconnect_max_backoff` |
/// | `reconnect_max_backoff` | `reconnect_initial_backoff` to 24 h |
/// | `max_message_size` | 1 byte to 512 MiB (RabbitMQ's own ceiling) |
/// | `queue_expires` | 1 ms to 2³² − 1 ms, about 49 days (or unset) |
/// | `prefix` | letters, digits, `-` and `_` |
///
/// ```
/// use event_binder_core::Error;
/// use event_binder_rabbitmq::RabbitConfig;
///
/// let err = RabbitConfig::new("amqp://127.0.0.1/%2f?reconnect_initial_ms=0").unwrap_err();
/// assert!(matches!(err, Error::InvalidUrl { .. }));
/// assert!(err.to_string().contains("reconnect_initial_ms"), "{err}");
/// # Ok::<(), event_binder_core::Error>(())
/// ```
///
/// ```
/// use event_binder_rabbitmq::RabbitConfig;
/// use std::time::Duration;
///
/// let config = RabbitConfig::new("amqp://app:secret@127.0.0.1:5672/%2f?prefix=test-")?
///     .send_timeout(Duration::from_secs(5));
/// assert_eq!(config.prefix, "test-");
/// assert_eq!(config.send_timeout, Duration::from_secs(5));
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), event_binder_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RabbitConfig {
    url: ChannelUrl,
    /// Put before every exchange and queue name, so that several applications or test runs
    /// share a broker without meeting. ASCII letters, digits, `-` and `_`; empty by default.
    pub prefix: String,
    /// The prefetch (`basic.qos`) of every consumer; `None` (the default) takes the
    /// subscription's, which the handler runtime sets to the handler's concurrency.
    pub prefetch: Option<u16>,
    /// The longest a send (or a dead letter) waits for the broker: for the connection to
    /// come back during an outage, and for the publisher confirm. After it the send fails
    /// with [`Error::Timeout`]; it never vanishes.
    pub send_timeout: Duration,
    /// The longest one connection attempt (TCP, TLS and the AMQP handshake) may take.
    pub connect_timeout: Duration,
    /// The wait before the first reconnection attempt after the connection is lost; it
    /// doubles after each failed attempt, up to
    /// [`reconnect_max_backoff`](Self::reconnect_max_backoff).
    pub reconnect_initial_backoff: Duration,
    /// The longest wait between two reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// The largest message accepted, as counted by
    /// [`Message::encoded_len`](event_binder_core::Message::encoded_len): larger ones are
    /// refused with [`Error::PayloadTooLarge`] before they reach the broker. Keep it within
    /// the broker's own `max_message_size` (128 MiB on RabbitMQ 3.x, 16 MiB from 4.0).
    /// Headers have a budget of their own, see the crate documentation.
    pub max_message_size: usize,
    /// When set, group queues and dead-letter queues are declared with this `x-expires`:
    /// the broker deletes such a queue, with its messages, once it has had no consumer for
    /// that long; and exchanges are declared auto-delete, so an exchange goes once its last
    /// queue has. For tests and short-lived groups, so that they leave nothing behind on the
    /// broker; leave it unset in production. Delay queues get it plus the longest delay
    /// they hold (see the crate documentation). Queues and exchanges keep the arguments they
    /// were first declared with: changing this for existing ones makes their declaration
    /// fail.
    pub queue_expires: Option<Duration>,
    /// A PEM file of certificate authorities that `amqps://` trusts besides the system's
    /// roots: for a broker whose certificate a private CA signed. Read at each connection,
    /// so a renewed file is picked up on reconnect.
    pub ca_certificate_file: Option<PathBuf>,
    /// The type of the group and dead-letter queues: [`QueueType::Classic`] (the default)
    /// or [`QueueType::Quorum`], which counts deliveries so that `attempt` grows past 2 and
    /// a message that crashes the process every time is dead-lettered after
    /// [`RetryPolicy::max_deliveries`](event_binder_core::RetryPolicy::max_deliveries).
    /// Anonymous subscriptions' queues are always classic, and delay queues (where delayed
    /// redeliveries wait) always quorum.
    pub queue_type: QueueType,
}

impl RabbitConfig {
    /// The default [`send_timeout`](Self::send_timeout): 30 seconds.
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`connect_timeout`](Self::connect_timeout): 10 seconds.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`reconnect_initial_backoff`](Self::reconnect_initial_backoff): 100 ms.
    pub const DEFAULT_RECONNECT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
    /// The default [`reconnect_max_backoff`](Self::reconnect_max_backoff): 5 seconds.
    pub const DEFAULT_RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(5);
    /// The default [`max_message_size`](Self::max_message_size): 16 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
    /// The largest [`max_message_size`](Self::max_message_size) accepted: 512 MiB, the
    /// most RabbitMQ itself can be configured to take.
    pub const MAX_MAX_MESSAGE_SIZE: usize = 512 * 1024 * 1024;
    /// The longest [`send_timeout`](Self::send_timeout),
    /// [`connect_timeout`](Self::connect_timeout) and
    /// [`reconnect_max_backoff`](Self::reconnect_max_backoff) accepted: 24 hours.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
    /// The longest [`queue_expires`](Self::queue_expires) accepted: 2³² − 1 ms (RabbitMQ's
    /// limit for `x-expires`).
    pub const MAX_QUEUE_EXPIRES: Duration = Duration::from_millis(u32::MAX as u64);

    /// Reads `amqp://user:pass@host:port/vhost` or `amqps://…`, with the query parameters
    /// listed above.
    pub fn new(url: &str) -> Result<Self> {
        Self::from_url(&ChannelUrl::parse(url)?)
    }

    /// Like [`new`](Self::new), from a parsed URL (as the `event-binder` facade holds it).
    pub fn from_url(url: &ChannelUrl) -> Result<Self> {
        let scheme = url.scheme();
        if scheme != "amqp" && scheme != "amqps" {
            return Err(invalid(
                url,
                format!("the RabbitMQ backend takes amqp:// and amqps:// URLs, not {scheme}://"),
            ));
        }
        let mut config = RabbitConfig {
            url: url.clone(),
            prefix: String::new(),
            prefetch: None,
            send_timeout: Self::DEFAULT_SEND_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            reconnect_initial_backoff: Self::DEFAULT_RECONNECT_INITIAL_BACKOFF,
            reconnect_max_backoff: Self::DEFAULT_RECONNECT_MAX_BACKOFF,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            queue_expires: None,
            ca_certificate_file: None,
            queue_type: QueueType::Classic,
        };
        for (name, value) in url.as_url().query_pairs() {
            let number = || -> Result<u64> {
                value.parse::<u64>().map_err(|_| {
                    invalid(
                        url,
                        format!("parameter {name}: {value:?} is not a whole number"),
                    )
                })
            };
            let millis = || number().map(Duration::from_millis);
            match &*name {
                "prefix" => {
                    validate_prefix(&value)?;
                    config.prefix = value.into_owned();
                }
                "prefetch" => {
                    let prefetch = u16::try_from(number()?)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            invalid(
                                url,
                                format!("parameter prefetch: {value} is not 1 to 65535"),
                            )
                        })?;
                    config.prefetch = Some(prefetch);
                }
                "send_timeout_ms" => config.send_timeout = millis()?,
                "connect_timeout_ms" => config.connect_timeout = millis()?,
                "reconnect_initial_ms" => config.reconnect_initial_backoff = millis()?,
                "reconnect_max_ms" => config.reconnect_max_backoff = millis()?,
                "max_message_size" => {
                    config.max_message_size = usize::try_from(number()?).map_err(|_| {
                        invalid(url, "parameter max_message_size: the number is too large")
                    })?;
                }
                "queue_expires_ms" => config.queue_expires = Some(millis()?),
                "queue_type" => {
                    config.queue_type = value.parse().map_err(|_| {
                        invalid(
                            url,
                            format!("parameter queue_type: {value:?} is not classic or quorum"),
                        )
                    })?;
                }
                "cacertfile" => config.ca_certificate_file = Some(PathBuf::from(&*value)),
                name if LAPIN_PARAMETERS.contains(&name) => {}
                other => {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown parameter {other:?}; the RabbitMQ backend takes prefix, \
                             prefetch, send_timeout_ms, connect_timeout_ms, reconnect_initial_ms, \
                             reconnect_max_ms, max_message_size, queue_expires_ms, queue_type, \
                             cacertfile, and lapin's \
                             {}",
                            LAPIN_PARAMETERS.join(", ")
                        ),
                    ))
                }
            }
        }
        if let Err(bad) = config.check() {
            return Err(match bad {
                Invalid::Prefix(err) => err,
                Invalid::Setting {
                    parameter, problem, ..
                } => invalid(url, format!("parameter {parameter}: {problem}")),
            });
        }
        config.amqp_uri()?;
        Ok(config)
    }

    /// Sets the [`ca_certificate_file`](Self::ca_certificate_file).
    pub fn ca_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_certificate_file = Some(path.into());
        self
    }

    /// Sets the [`prefix`](Self::prefix) (checked when connecting).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the [`prefetch`](Self::prefetch) of every consumer (1 to 65535; 0 is refused
    /// when connecting).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets the [`send_timeout`](Self::send_timeout).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Sets the [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the first and the longest wait between reconnection attempts (at least 1 ms,
    /// the longest no shorter than the first, at most 24 h: checked when connecting).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial_backoff = initial;
        self.reconnect_max_backoff = max;
        self
    }

    /// Sets the [`max_message_size`](Self::max_message_size).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`queue_expires`](Self::queue_expires).
    pub fn queue_expires(mut self, after: Duration) -> Self {
        self.queue_expires = Some(after);
        self
    }

    /// Sets the [`queue_type`](Self::queue_type).
    ///
    /// ```
    /// use event_binder_rabbitmq::{QueueType, RabbitConfig};
    ///
    /// let config = RabbitConfig::new("amqp://127.0.0.1/%2f")?.queue_type(QueueType::Quorum);
    /// assert_eq!(config.queue_type, QueueType::Quorum);
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The URL, with its password hidden when displayed.
    pub fn url(&self) -> &ChannelUrl {
        &self.url
    }

    /// Checks every setting (see the table above), whichever way it was set: the first
    /// out of range is an [`Error::Config`] naming the field and what it may be; an invalid
    /// prefix is an [`Error::InvalidName`].
    /// [`RabbitChannel::with_config`](crate::RabbitChannel::with_config) calls it before
    /// connecting.
    ///
    /// ```
    /// use event_binder_core::Error;
    /// use event_binder_rabbitmq::RabbitConfig;
    /// use std::time::Duration;
    ///
    /// let mut config = RabbitConfig::new("amqp://127.0.0.1/%2f")?;
    /// assert!(config.validate().is_ok());
    /// config.send_timeout = Duration::ZERO;
    /// let err = config.validate().unwrap_err();
    /// assert!(matches!(&err, Error::Config(text) if text.contains("send_timeout")), "{err}");
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|bad| match bad {
            Invalid::Prefix(err) => err,
            Invalid::Setting { field, problem, .. } => {
                Error::Config(format!("RabbitConfig::{field}: {problem}"))
            }
        })
    }

    /// The first setting out of range, if any.
    fn check(&self) -> std::result::Result<(), Invalid> {
        validate_prefix(&self.prefix).map_err(Invalid::Prefix)?;
        let setting = |field, parameter, problem: String| {
            Err(Invalid::Setting {
                field,
                parameter,
                problem,
            })
        };
        let max = Self::MAX_DURATION;
        let duration = |value: Duration, least: Duration, most: Duration, field, parameter| {
            if value < least.max(Duration::from_millis(1)) || value > most {
                setting(
                    field,
                    parameter,
                    format!(
                        "{value:?} is out of range: use {} to {}",
                        show(least.max(Duration::from_millis(1))),
                        show(most)
                    ),
                )
            } else {
                Ok(())
            }
        };
        if self.prefetch == Some(0) {
            return setting(
                "prefetch",
                "prefetch",
                "0 is out of range: use 1 to 65535, or leave it unset for the subscription's"
                    .into(),
            );
        }
        duration(
            self.send_timeout,
            Duration::ZERO,
            max,
            "send_timeout",
            "send_timeout_ms",
        )?;
        duration(
            self.connect_timeout,
            Duration::ZERO,
            max,
            "connect_timeout",
            "connect_timeout_ms",
        )?;
        if self.reconnect_initial_backoff.is_zero() {
            return setting(
                "reconnect_initial_backoff",
                "reconnect_initial_ms",
                "0 ms would retry without pause: use 1 ms to reconnect_max_backoff".into(),
            );
        }
        duration(
            self.reconnect_max_backoff,
            Duration::ZERO,
            max,
            "reconnect_max_backoff",
            "reconnect_max_ms",
        )?;
        if self.reconnect_initial_backoff > self.reconnect_max_backoff {
            return setting(
                "reconnect_initial_backoff",
                "reconnect_initial_ms",
                format!(
                    "{:?} is longer than reconnect_max_backoff ({:?}): use 1 ms to {}",
                    self.reconnect_initial_backoff,
                    self.reconnect_max_backoff,
                    show(self.reconnect_max_backoff)
                ),
            );
        }
        if self.max_message_size == 0 || self.max_message_size > Self::MAX_MAX_MESSAGE_SIZE {
            return setting(
                "max_message_size",
                "max_message_size",
                format!(
                    "{} bytes is out of range: use 1 to {} (512 MiB)",
                    self.max_message_size,
                    Self::MAX_MAX_MESSAGE_SIZE
                ),
            );
        }
        if let Some(expires) = self.queue_expires {
            duration(
                expires,
                Duration::ZERO,
                Self::MAX_QUEUE_EXPIRES,
                "queue_expires",
                "queue_expires_ms",
            )
            .map_err(|bad| match bad {
                Invalid::Setting {
                    field,
                    parameter,
                    problem,
                } => Invalid::Setting {
                    field,
                    parameter,
                    problem: format!("{problem}, or leave it unset for queues that never expire"),
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// The host and port, for messages (never the credentials).
    pub(crate) fn endpoint(&self) -> String {
        let url = self.url.as_url();
        let host = url.host_str().unwrap_or("localhost");
        let port = url
            .port()
            .unwrap_or(if url.scheme() == "amqps" { 5671 } else { 5672 });
        format!("{host}:{port}")
    }

    /// The user name, for messages.
    pub(crate) fn user(&self) -> String {
        match self.url.as_url().username() {
            "" => "guest".to_owned(),
            user => percent_decode(user).unwrap_or_else(|| user.to_owned()),
        }
    }

    /// The password, to remove it from any text that might hold it.
    pub(crate) fn password(&self) -> Option<String> {
        let password = self.url.as_url().password()?;
        percent_decode(password).or_else(|| Some(password.to_owned()))
    }

    /// The URI handed to lapin. Built here rather than by lapin's parser, which takes every
    /// IP address for `localhost`.
    pub(crate) fn amqp_uri(&self) -> Result<AMQPUri> {
        let url = self.url.as_url();
        let scheme = if url.scheme() == "amqps" {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        };
        let decode = |what: &str, text: &str| {
            percent_decode(text)
                .ok_or_else(|| invalid(&self.url, format!("the {what} is not valid UTF-8")))
        };
        let defaults = AMQPUserInfo::default();
        let username = match url.username() {
            "" => defaults.username,
            user => decode("user name", user)?,
        };
        let password = match url.password() {
            None => defaults.password,
            Some(password) => decode("password", password)?,
        };
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => decode("host", domain)?,
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            None => "localhost".to_owned(),
        };
        let port = url.port().unwrap_or_else(|| scheme.default_port());
        let vhost = match url.path() {
            "" => "/".to_owned(),
            path => decode("virtual host", &path[1..])?,
        };
        let mut query = AMQPQueryString::default();
        for (name, value) in url.query_pairs() {
            let parse_error = || {
                invalid(
                    &self.url,
                    format!("parameter {name}: {value:?} is not valid"),
                )
            };
            match &*name {
                "frame_max" => query.frame_max = Some(value.parse().map_err(|_| parse_error())?),
                "channel_max" => {
                    query.channel_max = Some(value.parse().map_err(|_| parse_error())?);
                }
                "heartbeat" => query.heartbeat = Some(value.parse().map_err(|_| parse_error())?),
                "connection_timeout" => {
                    query.connection_timeout = Some(value.parse().map_err(|_| parse_error())?);
                }
                "auth_mechanism" => {
                    query.auth_mechanism = Some(value.parse().map_err(|_| parse_error())?);
                }
                _ => {}
            }
        }
        Ok(AMQPUri {
            scheme,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host,
                port,
            },
            vhost,
            query,
        })
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("prefetch", &self.prefetch)
            .field("send_timeout", &self.send_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_initial_backoff", &self.reconnect_initial_backoff)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("max_message_size", &self.max_message_size)
            .field("queue_expires", &self.queue_expires)
            .field("ca_certificate_file", &self.ca_certificate_file)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

/// The query parameters lapin reads itself.
const LAPIN_PARAMETERS: [&str; 5] = [
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "auth_mechanism",
];

/// What [`RabbitConfig::check`] found wrong.
enum Invalid {
    /// The prefix, with core's error.
    Prefix(Error),
    /// A setting out of range: its field, its URL parameter, and what is wrong and allowed.
    Setting {
        field: &'static str,
        parameter: &'static str,
        problem: String,
    },
}

/// A duration in the unit a person would say: `1 ms`, `24 h`.
fn show(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 3_600_000 == 0 {
        format!("{} h", millis / 3_600_000)
    } else if millis % 1000 == 0 {
        format!("{} s", millis / 1000)
    } else {
        format!("{millis} ms")
    }
}

fn invalid(url: &ChannelUrl, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Decodes `%XX` escapes; `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credentials_host_port_and_vhost() {
        let config = RabbitConfig::new("amqp://us%40er:p%3Ass@10.1.2.3:5673/my%2fvhost").unwrap();
        let uri = config.amqp_uri().unwrap();
        assert_eq!(uri.authority.userinfo.username, "us@er");
        assert_eq!(uri.authority.userinfo.password, "p:ss");
        assert_eq!(
            uri.authority.host, "10.1.2.3",
            "an IP address must stay an IP address"
        );
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "my/vhost");
        assert_eq!(config.endpoint(), "10.1.2.3:5673");
        assert_eq!(config.user(), "us@er");
    }

    #[test]
    fn defaults_follow_the_amqp_uri_spec() {
        let uri = RabbitConfig::new("amqps://broker.example")
            .unwrap()
            .amqp_uri()
            .unwrap();
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(uri.authority.port, 5671);
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.vhost, "/");
        let uri = RabbitConfig::new("amqp://[::1]/")
            .unwrap()
            .amqp_uri()
            .unwrap();
        assert_eq!(uri.authority.host, "::1");
        assert_eq!(uri.vhost, "");
    }

    #[test]
    fn reads_parameters_and_passes_lapins_on() {
        let config = RabbitConfig::new(
            "amqp://h/%2f?prefix=t-1_&prefetch=64&send_timeout_ms=1500&connect_timeout_ms=700\
             &reconnect_initial_ms=10&reconnect_max_ms=20&max_message_size=1000\
             &queue_expires_ms=60000&heartbeat=5&frame_max=65536",
        )
        .unwrap();
        assert_eq!(config.prefix, "t-1_");
        assert_eq!(config.prefetch, Some(64));
        assert_eq!(config.send_timeout, Duration::from_millis(1500));
        assert_eq!(config.connect_timeout, Duration::from_millis(700));
        assert_eq!(config.reconnect_initial_backoff, Duration::from_millis(10));
        assert_eq!(config.reconnect_max_backoff, Duration::from_millis(20));
        assert_eq!(config.max_message_size, 1000);
        assert_eq!(config.queue_expires, Some(Duration::from_secs(60)));
        let uri = config.amqp_uri().unwrap();
        assert_eq!(uri.query.heartbeat, Some(5));
        assert_eq!(uri.query.frame_max, Some(65536));
    }

    #[test]
    fn refuses_bad_urls_without_showing_the_password() {
        for bad in [
            "kafka://u:hunter2@h:9092",
            "amqp://u:hunter2@h/?prefix=a.b",
            "amqp://u:hunter2@h/?prefetch=0",
            "amqp://u:hunter2@h/?send_timeout_ms=soon",
            "amqp://u:hunter2@h/?colour=blue",
            "amqp://u:hunter2@h/?heartbeat=often",
            "amqp://u:hunter2@h/?queue_expires_ms=0",
        ] {
            let err = RabbitConfig::new(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidUrl { .. } | Error::InvalidName { .. }),
                "{bad}: {err:?}"
            );
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let config = RabbitConfig::new("amqp://u:hunter2@h/").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("u:***@h"), "{debug}");
        assert_eq!(config.password().as_deref(), Some("hunter2"));
    }

    #[test]
    fn setters_store_what_they_are_given_and_validation_judges_it() {
        let config = RabbitConfig::new("amqp://h")
            .unwrap()
            .prefix("p-")
            .reconnect_backoff(Duration::from_millis(10), Duration::from_secs(1))
            .max_message_size(10)
            .queue_expires(Duration::from_secs(1))
            .queue_type(QueueType::Quorum);
        assert_eq!(config.queue_type, QueueType::Quorum);
        assert!(config.validate().is_ok());
        assert!(matches!(
            config.clone().prefix("a b").validate(),
            Err(Error::InvalidName { .. })
        ));
        let zero_prefetch = config.clone().prefetch(0);
        assert_eq!(zero_prefetch.prefetch, Some(0), "not silently changed");
        assert_config_error(&zero_prefetch, "prefetch", "1 to 65535");
        let backwards = config
            .clone()
            .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert_config_error(
            &backwards,
            "reconnect_initial_backoff",
            "reconnect_max_backoff",
        );
    }

    /// `validate` fails with `Error::Config` naming `field` and saying `allowed`.
    fn assert_config_error(config: &RabbitConfig, field: &str, allowed: &str) {
        match config.validate() {
            Err(Error::Config(text)) => {
                assert!(text.contains(field), "{text:?} does not name {field}");
                assert!(text.contains(allowed), "{text:?} does not say {allowed:?}");
            }
            other => panic!("expected Error::Config naming {field}, got {other:?}"),
        }
    }

    #[test]
    fn every_public_field_is_validated() {
        let base = RabbitConfig::new("amqp://h").unwrap();
        type Spoil = fn(&mut RabbitConfig);
        let cases: Vec<(&str, &str, Spoil)> = vec![
            ("prefetch", "1 to 65535", |c| c.prefetch = Some(0)),
            ("send_timeout", "1 ms to 24 h", |c| {
                c.send_timeout = Duration::ZERO;
            }),
            ("send_timeout", "1 ms to 24 h", |c| {
                c.send_timeout = Duration::MAX;
            }),
            ("connect_timeout", "1 ms to 24 h", |c| {
                c.connect_timeout = Duration::ZERO;
            }),
            ("connect_timeout", "1 ms to 24 h", |c| {
                c.connect_timeout = Duration::from_secs(90_000);
            }),
            ("reconnect_initial_backoff", "1 ms", |c| {
                c.reconnect_initial_backoff = Duration::ZERO;
            }),
            ("reconnect_initial_backoff", "reconnect_max_backoff", |c| {
                c.reconnect_initial_backoff = Duration::from_secs(10);
                c.reconnect_max_backoff = Duration::from_secs(1);
            }),
            ("reconnect_max_backoff", "1 ms to 24 h", |c| {
                c.reconnect_initial_backoff = Duration::from_millis(1);
                c.reconnect_max_backoff = Duration::MAX;
            }),
            ("reconnect_initial_backoff", "1 ms", |c| {
                c.reconnect_initial_backoff = Duration::ZERO;
                c.reconnect_max_backoff = Duration::ZERO;
            }),
            ("max_message_size", "1 to 536870912", |c| {
                c.max_message_size = 0;
            }),
            ("max_message_size", "1 to 536870912", |c| {
                c.max_message_size = usize::MAX;
            }),
            ("queue_expires", "1 ms to 4294967295 ms", |c| {
                c.queue_expires = Some(Duration::ZERO);
            }),
            ("queue_expires", "1 ms to 4294967295 ms", |c| {
                c.queue_expires = Some(Duration::from_micros(999));
            }),
            ("queue_expires", "1 ms to 4294967295 ms", |c| {
                c.queue_expires = Some(Duration::from_millis(1 << 32));
            }),
        ];
        for (field, allowed, spoil) in cases {
            let mut config = base.clone();
            spoil(&mut config);
            assert_config_error(&config, field, allowed);
        }
        let mut edges = base.clone();
        edges.prefetch = Some(u16::MAX);
        edges.send_timeout = RabbitConfig::MAX_DURATION;
        edges.connect_timeout = Duration::from_millis(1);
        edges.reconnect_initial_backoff = Duration::from_millis(1);
        edges.reconnect_max_backoff = Duration::from_millis(1);
        edges.max_message_size = RabbitConfig::MAX_MAX_MESSAGE_SIZE;
        edges.queue_expires = Some(RabbitConfig::MAX_QUEUE_EXPIRES);
        assert!(edges.validate().is_ok(), "{:?}", edges.validate());
    }

    #[test]
    fn url_parameters_out_of_range_are_invalid_urls_naming_the_parameter() {
        for (query, parameter, allowed) in [
            ("reconnect_initial_ms=0", "reconnect_initial_ms", "1 ms"),
            ("reconnect_max_ms=0", "reconnect_max_ms", "1 ms to 24 h"),
            (
                "reconnect_initial_ms=5000&reconnect_max_ms=100",
                "reconnect_initial_ms",
                "reconnect_max_backoff",
            ),
            ("send_timeout_ms=0", "send_timeout_ms", "1 ms to 24 h"),
            (
                "send_timeout_ms=86400001",
                "send_timeout_ms",
                "1 ms to 24 h",
            ),
            ("connect_timeout_ms=0", "connect_timeout_ms", "1 ms to 24 h"),
            ("prefetch=0", "prefetch", "1 to 65535"),
            ("prefetch=65536", "prefetch", "1 to 65535"),
            ("max_message_size=0", "max_message_size", "1 to 536870912"),
            ("queue_expires_ms=0", "queue_expires_ms", "1 ms"),
            (
                "queue_expires_ms=4294967296",
                "queue_expires_ms",
                "4294967295 ms",
            ),
            ("queue_type=stream", "queue_type", "classic or quorum"),
        ] {
            let url = format!("amqp://u:hunter2@h/?{query}");
            match RabbitConfig::new(&url) {
                Err(Error::InvalidUrl { reason, url: shown }) => {
                    assert!(reason.contains(parameter), "{query}: {reason:?}");
                    assert!(reason.contains(allowed), "{query}: {reason:?}");
                    assert!(!shown.contains("hunter2"), "{shown}");
                }
                other => panic!("{query}: expected Error::InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn queue_type_is_read_from_the_url() {
        let default = RabbitConfig::new("amqp://h").unwrap();
        assert_eq!(default.queue_type, QueueType::Classic);
        let quorum = RabbitConfig::new("amqp://h?queue_type=quorum").unwrap();
        assert_eq!(quorum.queue_type, QueueType::Quorum);
        assert!(format!("{quorum:?}").contains("Quorum"));
        let classic = RabbitConfig::new("amqp://h?queue_type=classic").unwrap();
        assert_eq!(classic.queue_type, QueueType::Classic);
        assert_eq!(QueueType::Quorum.to_string(), "quorum");
        assert!(matches!(
            "Quorum".parse::<QueueType>(),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn secret_query_parameters_never_show() {
        let err = RabbitConfig::new("amqp://h/?api_token=s3cr3t-value").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t-value"), "{err}");
        assert!(!format!("{err:?}").contains("s3cr3t-value"), "{err:?}");
    }
}
