//! The configuration of a Kafka channel and the `kafka://` URLs it is read from.

use event_binder_core::{redact_url, validate_prefix, ChannelUrl, Error, Result};
use std::fmt;
use std::time::Duration;

/// How a [`KafkaChannel`](crate::KafkaChannel) connects and behaves.
///
/// Made from a URL with [`KafkaConfig::new`] (or [`from_url`](Self::from_url)), which also
/// reads the parameters below from its query; then changed with the setters.
///
/// | query parameter | field | default |
/// |---|---|---|
/// | `prefix` | [`prefix`](Self::prefix) | empty |
/// | `partitions` | [`partitions`](Self::partitions) | 3 |
/// | `replication` | [`replication`](Self::replication) | 1 |
/// | `max_message_size` | [`max_message_size`](Self::max_message_size) | 1 MiB |
/// | `send_timeout_ms` | [`send_timeout`](Self::send_timeout) | 30 s |
/// | `connect_timeout_ms` | [`connect_timeout`](Self::connect_timeout) | 10 s |
/// | `commit_interval_ms` | [`commit_interval`](Self::commit_interval) | 200 ms |
/// | `drain_timeout_ms` | [`drain_timeout`](Self::drain_timeout) | 30 s |
/// | `brokers` | more bootstrap brokers, `host:port,host:port` | none |
///
/// The security settings of librdkafka are passed to it as they are: `security.protocol`,
/// `client.id`, and every `sasl.*` and `ssl.*` parameter (for example `sasl.mechanism`,
/// `sasl.username`, `sasl.password`, `ssl.ca.location`). A user and password in the URL
/// (`kafka://user:pass@host:9092`) set `sasl.username` and `sasl.password`. Any other
/// parameter is an [`Error::InvalidUrl`]. Passwords and secrets never appear in `Debug`
/// output or in errors.
///
/// Several bootstrap brokers can be written `kafka://host1:9092,host2:9092` with
/// [`KafkaConfig::new`]; a [`ChannelUrl`] holds one host, so there use `?brokers=`.
///
/// ```
/// use event_binder_kafka::KafkaConfig;
/// use std::time::Duration;
///
/// let config = KafkaConfig::new(
///     "kafka://127.0.0.1:9092?prefix=test-&partitions=6&sasl.password=secret",
/// )?
/// .send_timeout(Duration::from_secs(5));
/// assert_eq!(config.prefix, "test-");
/// assert_eq!(config.partitions, 6);
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), event_binder_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// The bootstrap brokers, `host:port` each.
    brokers: Vec<String>,
    /// The URL as given, with any password replaced, for messages.
    shown_url: String,
    /// librdkafka settings passed through (security), in the order given.
    client_settings: Vec<(String, String)>,
    /// Put before every topic and consumer group name, so that several applications or
    /// test runs share a broker without meeting. ASCII letters, digits, `-` and `_`.
    pub prefix: String,
    /// The number of partitions of the topics this channel creates.
    pub partitions: i32,
    /// The replication factor of the topics this channel creates.
    pub replication: i32,
    /// The largest message accepted, as counted by
    /// [`Message::encoded_len`](event_binder_core::Message::encoded_len): larger ones are
    /// refused with [`Error::PayloadTooLarge`] before they reach the broker. librdkafka's
    /// `message.max.bytes` is set to this plus room for the record batch's own overhead;
    /// keep it within the broker's `message.max.bytes` (1 MiB on a default Apache Kafka).
    pub max_message_size: usize,
    /// The longest a send (or a dead letter) waits for its delivery report; after it the
    /// send fails with [`Error::Timeout`] (librdkafka's `message.timeout.ms`).
    pub send_timeout: Duration,
    /// The longest connecting (reading the cluster's metadata) and each admin or metadata
    /// request may take.
    pub connect_timeout: Duration,
    /// How often, at most, an ack commits the offsets of handled messages (asynchronously);
    /// they are also committed synchronously before partitions are given up and when a
    /// consumer closes.
    pub commit_interval: Duration,
    /// On a rebalance, the longest a consumer waits for the deliveries it handed out from
    /// the partitions it loses to be settled before it gives them up.
    pub drain_timeout: Duration,
}

impl KafkaConfig {
    /// The default [`partitions`](Self::partitions): 3.
    pub const DEFAULT_PARTITIONS: i32 = 3;
    /// The default [`max_message_size`](Self::max_message_size): 1 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
    /// The default [`send_timeout`](Self::send_timeout): 30 seconds.
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`connect_timeout`](Self::connect_timeout): 10 seconds.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`commit_interval`](Self::commit_interval): 200 ms.
    pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(200);
    /// The default [`drain_timeout`](Self::drain_timeout): 30 seconds.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

    /// Reads `kafka://host:port[,host:port…]`, with the query parameters listed above.
    pub fn new(url: &str) -> Result<Self> {
        let (single, more) = split_brokers(url);
        let parsed = ChannelUrl::parse(&single).map_err(|_| Error::InvalidUrl {
            url: show_text(url),
            reason: "expected kafka://host:port[,host:port…][?parameters]".into(),
        })?;
        let mut config = Self::from_url(&parsed)?;
        if let Some(first) = config.brokers.first().cloned() {
            let all = std::iter::once(first.clone())
                .chain(more.iter().cloned())
                .collect::<Vec<_>>()
                .join(",");
            config.shown_url = config.shown_url.replacen(&first, &all, 1);
        }
        config.brokers.extend(more);
        Ok(config)
    }

    /// Like [`new`](Self::new), from a parsed URL (as the `event-binder` facade holds it).
    pub fn from_url(url: &ChannelUrl) -> Result<Self> {
        if url.scheme() != "kafka" {
            return Err(invalid(
                url,
                format!(
                    "the Kafka backend takes kafka:// URLs, not {}://",
                    url.scheme()
                ),
            ));
        }
        let parsed = url.as_url();
        let host = parsed
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid(url, "the URL names no broker: use kafka://host:port"))?;
        let port = parsed.port().unwrap_or(9092);
        let mut config = KafkaConfig {
            brokers: vec![format!("{host}:{port}")],
            shown_url: show_text(url.expose()),
            client_settings: Vec::new(),
            prefix: String::new(),
            partitions: Self::DEFAULT_PARTITIONS,
            replication: 1,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            send_timeout: Self::DEFAULT_SEND_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            commit_interval: Self::DEFAULT_COMMIT_INTERVAL,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
        };
        if !parsed.username().is_empty() {
            let decode = |text: &str| {
                url::form_urlencoded::parse(format!("x={text}").as_bytes())
                    .next()
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default()
            };
            config
                .client_settings
                .push(("sasl.username".into(), decode(parsed.username())));
            if let Some(password) = parsed.password() {
                config
                    .client_settings
                    .push(("sasl.password".into(), decode(password)));
            }
        }
        for (name, value) in parsed.query_pairs() {
            let number = || -> Result<u64> {
                value.parse::<u64>().map_err(|_| {
                    invalid(
                        url,
                        format!("parameter {name}: {value:?} is not a whole number"),
                    )
                })
            };
            let millis = || number().map(Duration::from_millis);
            let positive_i32 = |what: &str| -> Result<i32> {
                number()
                    .ok()
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(url, format!("parameter {what}: use 1 or more")))
            };
            match &*name {
                "prefix" => {
                    validate_prefix(&value)?;
                    config.prefix = value.into_owned();
                }
                "partitions" => config.partitions = positive_i32("partitions")?,
                "replication" => config.replication = positive_i32("replication")?,
                "max_message_size" => {
                    config.max_message_size = usize::try_from(number()?)
                        .ok()
                        .filter(|n| (1..=MAX_MESSAGE_SIZE).contains(n))
                        .ok_or_else(|| {
                            invalid(
                                url,
                                format!("parameter max_message_size: use 1 to {MAX_MESSAGE_SIZE}"),
                            )
                        })?;
                }
                "send_timeout_ms" => config.send_timeout = millis()?,
                "connect_timeout_ms" => config.connect_timeout = millis()?,
                "commit_interval_ms" => config.commit_interval = millis()?,
                "drain_timeout_ms" => config.drain_timeout = millis()?,
                "brokers" => config.brokers.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(str::to_owned),
                ),
                name if is_passed_through(name) => {
                    config
                        .client_settings
                        .retain(|(existing, _)| existing != name);
                    config
                        .client_settings
                        .push((name.to_owned(), value.into_owned()));
                }
                other => {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown parameter {other:?}; the Kafka backend takes prefix, \
                             partitions, replication, max_message_size, send_timeout_ms, \
                             connect_timeout_ms, commit_interval_ms, drain_timeout_ms, brokers, \
                             and librdkafka's security.protocol, client.id, sasl.* and ssl.*"
                        ),
                    ))
                }
            }
        }
        if config.send_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(invalid(url, "timeouts must be at least 1 ms"));
        }
        Ok(config)
    }

    /// Sets the [`prefix`](Self::prefix) (checked when connecting).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the [`partitions`](Self::partitions) of new topics (0 is taken as 1).
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Sets the [`replication`](Self::replication) factor of new topics (0 is taken as 1).
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication.max(1);
        self
    }

    /// Sets the [`max_message_size`](Self::max_message_size), within 1 byte and 512 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.clamp(1, MAX_MESSAGE_SIZE);
        self
    }

    /// Sets the [`send_timeout`](Self::send_timeout) (at least 1 ms).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the [`connect_timeout`](Self::connect_timeout) (at least 1 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the [`commit_interval`](Self::commit_interval).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets the [`drain_timeout`](Self::drain_timeout).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets a librdkafka security setting (`security.protocol`, `client.id`, `sasl.*`,
    /// `ssl.*`); any other name is refused with [`Error::Config`].
    pub fn client_setting(mut self, name: &str, value: impl Into<String>) -> Result<Self> {
        if !is_passed_through(name) {
            return Err(Error::Config(format!(
                "{name:?} is not a librdkafka setting this backend passes on; it takes \
                 security.protocol, client.id, sasl.* and ssl.*"
            )));
        }
        self.client_settings
            .retain(|(existing, _)| existing != name);
        self.client_settings.push((name.to_owned(), value.into()));
        Ok(self)
    }

    /// The bootstrap brokers, as librdkafka's `bootstrap.servers` takes them.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.join(",")
    }

    /// The URL as given, with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// The librdkafka settings every client of this channel shares: the brokers and the
    /// security settings.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap_servers());
        config.set(
            "socket.connection.setup.timeout.ms",
            millis(self.connect_timeout).to_string(),
        );
        for (name, value) in &self.client_settings {
            config.set(name, value);
        }
        config
    }

    /// The secret values among the settings, to scrub from librdkafka's messages.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        self.client_settings
            .iter()
            .filter(|(name, value)| is_secret(name) && !value.is_empty())
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// librdkafka's `message.max.bytes`: the limit plus room for the record batch framing.
    pub(crate) fn librdkafka_max_bytes(&self) -> usize {
        self.max_message_size.saturating_add(BATCH_OVERHEAD)
    }
}

/// The largest [`KafkaConfig::max_message_size`]: 512 MiB (librdkafka's own limit is 1e9).
const MAX_MESSAGE_SIZE: usize = 512 * 1024 * 1024;

/// Room for what a record batch adds around one message (batch header, record framing).
const BATCH_OVERHEAD: usize = 64 * 1024;

/// Milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn is_passed_through(name: &str) -> bool {
    name == "security.protocol"
        || name == "client.id"
        || name.starts_with("sasl.")
        || name.starts_with("ssl.")
}

fn is_secret(name: &str) -> bool {
    name.contains("password") || name.contains("secret") || name == "ssl.key.pem"
}

/// `kafka://a:1,b:2/x?y` → (`kafka://a:1/x?y`, [`b:2`]); anything else unchanged.
fn split_brokers(url: &str) -> (String, Vec<String>) {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return (url.to_owned(), Vec::new());
    };
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let mut hosts = authority.split(',');
    let first = hosts.next().unwrap_or_default();
    let more: Vec<String> = hosts
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    (format!("{}{first}{}", &url[..start], &url[end..]), more)
}

/// A URL for messages: the password and the values of secret parameters are `***`.
fn show_text(url: &str) -> String {
    let redacted = redact_url(url);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let query: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| {
            let value = if is_secret(&name) {
                "***".into()
            } else {
                value
            };
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair(&name, &value)
                .finish()
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn invalid(url: &ChannelUrl, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: show_text(url.expose()),
        reason: reason.into(),
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: Vec<(&str, &str)> = self
            .client_settings
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret(name) {
                    "***"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("url", &self.shown_url)
            .field("brokers", &self.brokers)
            .field("client_settings", &settings)
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("max_message_size", &self.max_message_size)
            .field("send_timeout", &self.send_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parameters() {
        let config = KafkaConfig::new("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(config.bootstrap_servers(), "127.0.0.1:9092");
        assert_eq!(config.partitions, 3);
        assert_eq!(config.replication, 1);
        assert_eq!(config.max_message_size, 1024 * 1024);
        let config = KafkaConfig::new(
            "kafka://h1:9093,h2:9094?prefix=t-&partitions=2&max_message_size=1000&send_timeout_ms=50",
        )
        .unwrap();
        assert_eq!(config.bootstrap_servers(), "h1:9093,h2:9094");
        assert_eq!(config.prefix, "t-");
        assert_eq!(config.partitions, 2);
        assert_eq!(config.max_message_size, 1000);
        assert_eq!(config.send_timeout, Duration::from_millis(50));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let config = KafkaConfig::new(
            "kafka://bob:hunter2@h:9092?security.protocol=SASL_SSL&sasl.mechanism=PLAIN&ssl.key.password=topsecret",
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");
        assert_eq!(config.secrets(), vec!["hunter2", "topsecret"]);
        let err = KafkaConfig::new("kafka://bob:hunter2@h:9092?sasl.password=topsecret&nope=1")
            .unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(err, Error::InvalidUrl { .. }));
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        for bad in [
            "amqp://h:9092",
            "kafka://h:9092?partitions=0",
            "kafka://h:9092?max_message_size=x",
            "kafka://h:9092?prefix=a.b",
            "kafka://",
        ] {
            assert!(KafkaConfig::new(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            KafkaConfig::new("kafka://h:9092")
                .unwrap()
                .client_setting("acks", "0"),
            Err(Error::Config(_))
        ));
    }
}
