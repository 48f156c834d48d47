//! The configuration of a Kafka channel and the `kafka://` URLs it is read from.

use event_binder_core::{is_secret_param, redact_url, validate_prefix, ChannelUrl, Error, Result};
use std::fmt;
use std::time::Duration;

/// How a [`KafkaChannel`](crate::KafkaChannel) connects and behaves.
///
/// Made from a URL with [`KafkaConfig::new`] (or [`from_url`](Self::from_url)), which also
/// reads the parameters below from its query; then changed with the setters or the
/// public fields. Every setting is checked once, when the channel is made
/// ([`KafkaChannel::with_config`](crate::KafkaChannel::with_config) calls
/// [`validate`](Self::validate)), and a bad one is an [`Error::Config`] (an
/// [`Error::InvalidUrl`] when it came from the URL).
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
/// | `read_ahead` | [`read_ahead`](Self::read_ahead) | 20,000 |
/// | `brokers` | more bootstrap brokers, `host:port,host:port` | none |
///
/// Several bootstrap brokers are written `kafka://host1:9092,host2:9092` (a host without a
/// port gets 9092).
///
/// **librdkafka settings.** Every other query parameter is a
/// [librdkafka setting](https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md),
/// passed to every client of the channel (producer, consumers, admin) as it is: for example
/// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
/// `ssl.ca.location`, `client.id`, `max.poll.interval.ms`, `session.timeout.ms`,
/// `heartbeat.interval.ms`, `fetch.max.bytes`, `linger.ms`, `compression.type`. They
/// override the backend's own defaults (`session.timeout.ms=10000`,
/// `heartbeat.interval.ms=1000`, `fetch.wait.max.ms=100`, `linger.ms=1`). librdkafka checks
/// them: an unknown name or a bad value is refused with an error naming the parameter.
/// A few are the backend's own business and refused, with the parameter that replaces them
/// where there is one: `bootstrap.servers` and `metadata.broker.list` (the URL's hosts),
/// `group.id`, `enable.auto.commit`, `enable.auto.offset.store`, `enable.partition.eof`,
/// `auto.offset.reset`, `acks`, `request.required.acks`, `enable.idempotence`,
/// `message.timeout.ms` and `delivery.timeout.ms` (`send_timeout_ms`), `message.max.bytes`
/// (`max_message_size`), `group.protocol`, and a cooperative
/// `partition.assignment.strategy` (the backend runs the eager protocol).
/// [`client_setting`](Self::client_setting) sets one in code.
///
/// A user and password in the URL (`kafka://user:pass@host:9092`) set `sasl.username` and
/// `sasl.password`. The values of secret settings (a password, a key, a token, …: see
/// [`is_secret_param`]) never appear in `Debug` output, in errors or in logs.
///
/// ```
/// use event_binder_kafka::KafkaConfig;
/// use std::time::Duration;
///
/// let config = KafkaConfig::new(
///     "kafka://h1:9092,h2:9092?prefix=test-&partitions=6&max.poll.interval.ms=600000&sasl.password=secret",
/// )?
/// .send_timeout(Duration::from_secs(5));
/// assert_eq!(config.bootstrap_servers(), "h1:9092,h2:9092");
/// assert_eq!(config.prefix, "test-");
/// assert_eq!(config.partitions, 6);
/// assert!(!format!("{config:?}").contains("secret"));
/// assert!(KafkaConfig::new("kafka://h:9092?no.such.setting=1").is_err());
/// # Ok::<(), event_binder_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// The bootstrap brokers, `host:port` each.
    brokers: Vec<String>,
    /// The URL as given, with any password and secret replaced, for messages.
    shown_url: String,
    /// librdkafka settings passed through, in the order given.
    client_settings: Vec<(String, String)>,
    /// Put before every topic and consumer group name, so that several applications or
    /// test runs share a broker without meeting. ASCII letters, digits, `-` and `_`.
    pub prefix: String,
    /// The number of partitions of the topics this channel creates: 1 or more.
    pub partitions: i32,
    /// The replication factor of the topics this channel creates: 1 or more.
    pub replication: i32,
    /// The largest message accepted, as counted by
    /// [`Message::encoded_len`](event_binder_core::Message::encoded_len): larger ones are
    /// refused with [`Error::PayloadTooLarge`] before they reach the broker. librdkafka's
    /// `message.max.bytes` is set to this plus room for the record batch's own overhead;
    /// keep it within the broker's `message.max.bytes` (1 MiB on a default Apache Kafka).
    /// 1 byte to 512 MiB.
    pub max_message_size: usize,
    /// The longest a send (or a dead letter) waits for its delivery report; after it the
    /// send fails with [`Error::Timeout`] (librdkafka's `message.timeout.ms`). 1 ms to
    /// about 24 days (librdkafka's limit, `i32::MAX` ms).
    pub send_timeout: Duration,
    /// The longest connecting (reading the cluster's metadata) and each admin or metadata
    /// request may take. 1 ms to `i32::MAX` ms.
    pub connect_timeout: Duration,
    /// How often, at most, the positions of handled messages are committed, by each
    /// consumer's polling thread (acks wait for no commit); they are also committed before
    /// partitions are given up and when a consumer closes. Zero commits as soon as the
    /// polling thread sees a position move. At most a day.
    pub commit_interval: Duration,
    /// On a rebalance, the longest a consumer waits for the deliveries it handed out from
    /// the partitions it loses to be settled before it gives them up. Zero gives them up
    /// at once. At most a day.
    pub drain_timeout: Duration,
    /// The most records a consumer reads ahead of its handlers. Each consumer is polled
    /// without pause by a thread of its own, which reads ahead; once this many records (or
    /// 64 MiB of payload) are read ahead and not taken, the consumer's partitions are
    /// paused (librdkafka fetches nothing more, while polling goes on) until half of them
    /// have been taken. 1 or more.
    pub read_ahead: usize,
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
    /// The default [`read_ahead`](Self::read_ahead): 20,000 records.
    pub const DEFAULT_READ_AHEAD: usize = 20_000;

    /// Reads `kafka://host:port[,host:port…]`, with the query parameters listed above.
    pub fn new(url: &str) -> Result<Self> {
        let parsed = ChannelUrl::parse(url).map_err(|_| Error::InvalidUrl {
            url: redact_url(url),
            reason: "expected kafka://host:port[,host:port…][?parameters]".into(),
        })?;
        Self::from_url(&parsed)
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
        if url.hosts().is_empty() {
            return Err(invalid(
                url,
                "the URL names no broker: use kafka://host:port",
            ));
        }
        let parsed = url.as_url();
        let mut config = KafkaConfig {
            brokers: url.hosts().iter().map(|host| with_port(host)).collect(),
            shown_url: url.to_string(),
            client_settings: Vec::new(),
            prefix: String::new(),
            partitions: Self::DEFAULT_PARTITIONS,
            replication: 1,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            send_timeout: Self::DEFAULT_SEND_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            commit_interval: Self::DEFAULT_COMMIT_INTERVAL,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            read_ahead: Self::DEFAULT_READ_AHEAD,
        };
        if !parsed.username().is_empty() {
            let decode = |text: &str| {
                url::form_urlencoded::parse(format!("x={text}").as_bytes())
                    .next()
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default()
            };
            config.set_client("sasl.username", decode(parsed.username()));
            if let Some(password) = parsed.password() {
                config.set_client("sasl.password", decode(password));
            }
        }
        for (name, value) in parsed.query_pairs() {
            let number = || -> Result<u64> {
                value.parse::<u64>().map_err(|_| {
                    let shown = if is_secret_param(&name) {
                        "***"
                    } else {
                        &value
                    };
                    invalid(
                        url,
                        format!("parameter {name}: {shown:?} is not a whole number"),
                    )
                })
            };
            let millis = || number().map(Duration::from_millis);
            let some_i32 = || -> Result<i32> {
                number().and_then(|n| {
                    i32::try_from(n)
                        .map_err(|_| invalid(url, format!("parameter {name}: too large")))
                })
            };
            match &*name {
                "prefix" => config.prefix = value.into_owned(),
                "partitions" => config.partitions = some_i32()?,
                "replication" => config.replication = some_i32()?,
                "max_message_size" => {
                    config.max_message_size = usize::try_from(number()?).unwrap_or(usize::MAX);
                }
                "send_timeout_ms" => config.send_timeout = millis()?,
                "connect_timeout_ms" => config.connect_timeout = millis()?,
                "commit_interval_ms" => config.commit_interval = millis()?,
                "drain_timeout_ms" => config.drain_timeout = millis()?,
                "read_ahead" => {
                    config.read_ahead = usize::try_from(number()?).unwrap_or(usize::MAX);
                }
                "brokers" => config.brokers.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(with_port),
                ),
                name => config.set_client(name, value.into_owned()),
            }
        }
        config.validate().map_err(|err| match err {
            Error::Config(reason) => invalid(url, reason),
            other => other,
        })?;
        Ok(config)
    }

    /// Checks every setting: the prefix, partitions and replication of 1 or more, a
    /// [`max_message_size`](Self::max_message_size) of 1 byte to 512 MiB, timeouts and
    /// intervals within their bounds (see each field), and the librdkafka settings
    /// (names librdkafka knows, values it takes, none of those the backend keeps to
    /// itself). [`KafkaChannel::with_config`](crate::KafkaChannel::with_config) calls it,
    /// so no setting escapes it.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        if self.brokers.is_empty() {
            return Err(Error::Config("no bootstrap broker given".into()));
        }
        if self.partitions < 1 {
            return Err(Error::Config(format!(
                "partitions: {} is not a partition count; use 1 or more",
                self.partitions
            )));
        }
        if self.replication < 1 {
            return Err(Error::Config(format!(
                "replication: {} is not a replication factor; use 1 or more",
                self.replication
            )));
        }
        if !(1..=MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
            return Err(Error::Config(format!(
                "max_message_size: {} is out of range; use 1 to {MAX_MESSAGE_SIZE} bytes",
                self.max_message_size
            )));
        }
        for (what, value) in [
            ("send_timeout", self.send_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value < Duration::from_millis(1) || value > LIBRDKAFKA_MAX_MS {
                return Err(Error::Config(format!(
                    "{what}: {value:?} is out of range; use 1 ms to {} ms",
                    LIBRDKAFKA_MAX_MS.as_millis()
                )));
            }
        }
        for (what, value) in [
            ("commit_interval", self.commit_interval),
            ("drain_timeout", self.drain_timeout),
        ] {
            if value > MAX_INTERVAL {
                return Err(Error::Config(format!(
                    "{what}: {value:?} is out of range; use at most {MAX_INTERVAL:?}"
                )));
            }
        }
        if self.read_ahead < 1 {
            return Err(Error::Config("read_ahead: 0 records; use 1 or more".into()));
        }
        let mut check = rdkafka::ClientConfig::new();
        for (name, value) in &self.client_settings {
            if let Some(reason) = reserved(name, value) {
                return Err(Error::Config(format!(
                    "the librdkafka setting {name} is not taken: {reason}"
                )));
            }
            check.set(name, value);
        }
        check
            .create_native_config()
            .map_err(|err| crate::error::settings(&err, &self.secrets()))?;
        Ok(())
    }

    /// Sets the [`prefix`](Self::prefix) (checked by [`validate`](Self::validate)).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the [`partitions`](Self::partitions) of new topics (checked by
    /// [`validate`](Self::validate)).
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the [`replication`](Self::replication) factor of new topics (checked by
    /// [`validate`](Self::validate)).
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    /// Sets the [`max_message_size`](Self::max_message_size) (checked by
    /// [`validate`](Self::validate)).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the [`send_timeout`](Self::send_timeout) (checked by
    /// [`validate`](Self::validate)).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Sets the [`connect_timeout`](Self::connect_timeout) (checked by
    /// [`validate`](Self::validate)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the [`commit_interval`](Self::commit_interval) (checked by
    /// [`validate`](Self::validate)).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets the [`drain_timeout`](Self::drain_timeout) (checked by
    /// [`validate`](Self::validate)).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets the [`read_ahead`](Self::read_ahead) (checked by [`validate`](Self::validate)).
    pub fn read_ahead(mut self, records: usize) -> Self {
        self.read_ahead = records;
        self
    }

    /// Sets a librdkafka setting, as a URL query parameter would: one of the backend's
    /// own or an unknown name or bad value is refused with [`Error::Config`], naming it.
    pub fn client_setting(mut self, name: &str, value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        if let Some(reason) = reserved(name, &value) {
            return Err(Error::Config(format!(
                "the librdkafka setting {name} is not taken: {reason}"
            )));
        }
        let mut check = rdkafka::ClientConfig::new();
        check.set(name, &value);
        if let Err(err) = check.create_native_config() {
            let secret = [value.as_str()];
            return Err(crate::error::settings(&err, &secret));
        }
        self.set_client(name, value);
        Ok(self)
    }

    /// The bootstrap brokers, as librdkafka's `bootstrap.servers` takes them.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.join(",")
    }

    /// The URL as given, with any password and secret parameter replaced by `***`.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Replaces or adds a librdkafka setting, unchecked.
    fn set_client(&mut self, name: &str, value: String) {
        self.client_settings
            .retain(|(existing, _)| existing != name);
        self.client_settings.push((name.to_owned(), value));
    }

    /// The librdkafka settings every client of this channel shares: the brokers, the
    /// connection timeout, then `defaults` (which the settings given may override), then
    /// the settings given.
    fn client_config_with(&self, defaults: &[(&str, String)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap_servers());
        config.set(
            "socket.connection.setup.timeout.ms",
            // librdkafka takes 1 s at least.
            millis(self.connect_timeout).max(1000).to_string(),
        );
        for (name, value) in defaults {
            config.set(*name, value);
        }
        for (name, value) in &self.client_settings {
            config.set(name, value);
        }
        config
    }

    /// The settings of an admin client.
    pub(crate) fn admin_config(&self) -> rdkafka::ClientConfig {
        self.client_config_with(&[])
    }

    /// The settings of the producer: acks=all and idempotence on, whatever is given.
    pub(crate) fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut config = self.client_config_with(&[("linger.ms", "1".into())]);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", millis(self.send_timeout).to_string())
            .set("message.max.bytes", self.librdkafka_max_bytes().to_string());
        config
    }

    /// The settings of a consumer in consumer group `group_id`: committing itself, from the
    /// earliest offset when `commits` (a group), else from the latest.
    pub(crate) fn consumer_config(&self, group_id: &str, commits: bool) -> rdkafka::ClientConfig {
        let mut config = self.client_config_with(&[
            ("session.timeout.ms", "10000".into()),
            ("heartbeat.interval.ms", "1000".into()),
            ("fetch.wait.max.ms", "100".into()),
        ]);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                if commits { "earliest" } else { "latest" },
            );
        config
    }

    /// The secret values among the settings, to scrub from librdkafka's messages.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        self.client_settings
            .iter()
            .filter(|(name, value)| is_secret_param(name) && !value.is_empty())
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

/// The longest timeout librdkafka takes (its settings are `int` milliseconds).
const LIBRDKAFKA_MAX_MS: Duration = Duration::from_millis(i32::MAX as u64);

/// The longest commit interval and drain timeout: a day.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// Room for what a record batch adds around one message (batch header, record framing).
const BATCH_OVERHEAD: usize = 64 * 1024;

/// Milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Why a librdkafka setting is the backend's own business, if it is.
fn reserved(name: &str, value: &str) -> Option<&'static str> {
    Some(match name {
        "bootstrap.servers" | "metadata.broker.list" => {
            "the brokers are the URL's hosts (kafka://h1:9092,h2:9092) or the brokers parameter"
        }
        "group.id" => "consumer groups are named after the destination and group",
        "enable.auto.commit" | "enable.auto.offset.store" => {
            "offsets are committed by the backend, for handled messages only"
        }
        "enable.partition.eof" | "auto.offset.reset" => {
            "where a consumer starts is the backend's (a group at the earliest offset, an \
             anonymous subscription at the end)"
        }
        "acks" | "request.required.acks" | "enable.idempotence" => {
            "sends wait for every in-sync replica, with idempotence on"
        }
        "message.timeout.ms" | "delivery.timeout.ms" => "use send_timeout_ms",
        "message.max.bytes" => "use max_message_size",
        "group.protocol" => "the backend runs the classic group protocol",
        "partition.assignment.strategy" if value.contains("cooperative") => {
            "the backend runs the eager rebalance protocol"
        }
        _ => return None,
    })
}

/// `host` → `host:9092`; `host:port` as it is.
fn with_port(host: &str) -> String {
    match url::Url::parse(&format!("kafka://{host}")) {
        Ok(parsed) if parsed.port().is_none() => format!("{host}:9092"),
        _ => host.to_owned(),
    }
}

fn invalid(url: &ChannelUrl, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: Vec<(&str, &str)> = self
            .client_settings
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret_param(name) {
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
            .field("read_ahead", &self.read_ahead)
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
    fn several_hosts_through_a_parsed_url() {
        let url = ChannelUrl::parse("kafka://h1:9093,h2,h3:9095?brokers=h4").unwrap();
        let config = KafkaConfig::from_url(&url).unwrap();
        assert_eq!(
            config.bootstrap_servers(),
            "h1:9093,h2:9092,h3:9095,h4:9092"
        );
        assert_eq!(config.url(), "kafka://h1:9093,h2,h3:9095?brokers=h4");
    }

    #[test]
    fn librdkafka_settings_pass_through_and_override_defaults() {
        let config = KafkaConfig::new(
            "kafka://h:9092?max.poll.interval.ms=7000&session.timeout.ms=6000&linger.ms=5&fetch.max.bytes=1000000",
        )
        .unwrap();
        let consumer = config.consumer_config("g", true);
        assert_eq!(consumer.get("max.poll.interval.ms"), Some("7000"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("fetch.max.bytes"), Some("1000000"));
        let producer = config.producer_config();
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(producer.get("acks"), Some("all"));
        let config = KafkaConfig::new("kafka://h:9092")
            .unwrap()
            .client_setting("max.poll.interval.ms", "9000")
            .unwrap();
        assert_eq!(
            config
                .consumer_config("g", true)
                .get("max.poll.interval.ms"),
            Some("9000")
        );
    }

    #[test]
    fn unknown_or_reserved_librdkafka_settings_are_refused_by_name() {
        let err = KafkaConfig::new("kafka://h:9092?no.such.setting=1").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidUrl { reason, .. } if reason.contains("no.such.setting")),
            "{err:?}"
        );
        let err = KafkaConfig::new("kafka://h:9092?nodots=1").unwrap_err();
        assert!(err.to_string().contains("nodots"), "{err}");
        let err = KafkaConfig::new("kafka://h:9092?session.timeout.ms=soon").unwrap_err();
        assert!(err.to_string().contains("session.timeout.ms"), "{err}");
        for reserved in [
            "group.id=x",
            "enable.auto.commit=true",
            "acks=0",
            "bootstrap.servers=h:1",
            "message.max.bytes=5",
            "partition.assignment.strategy=cooperative-sticky",
        ] {
            let err = KafkaConfig::new(&format!("kafka://h:9092?{reserved}")).unwrap_err();
            let name = reserved.split('=').next().unwrap();
            assert!(
                matches!(&err, Error::InvalidUrl { reason, .. } if reason.contains(name)),
                "{reserved}: {err:?}"
            );
        }
        let err = KafkaConfig::new("kafka://h:9092")
            .unwrap()
            .client_setting("acks", "0")
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let err = KafkaConfig::new("kafka://h:9092")
            .unwrap()
            .client_setting("nope.nope", "0")
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(reason) if reason.contains("nope.nope")),
            "{err:?}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let config = KafkaConfig::new(
            "kafka://bob:hunter2@h:9092?security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN&sasl.password=topsecret",
        )
        .unwrap();
        let shown = format!("{config:?}");
        for secret in ["hunter2", "topsecret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("SASL_PLAINTEXT"), "{shown}");
        assert_eq!(
            config.secrets(),
            vec!["topsecret"],
            "the parameter replaces the URL's"
        );
        for bad in [
            "kafka://bob:hunter2@h:9092?sasl.password=topsecret&nope=1",
            "kafka://bob:hunter2@h:9092?sasl.password=topsecret&partitions=0",
        ] {
            let err = KafkaConfig::new(bad).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains("topsecret") && !shown.contains("hunter2"),
                "{shown}"
            );
            assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        }
        // Not in this build (no OpenSSL): refused, and the value stays hidden.
        let err = KafkaConfig::new("kafka://h:9092")
            .unwrap()
            .client_setting("ssl.key.password", "topsecret")
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(!format!("{err:?}").contains("topsecret"), "{err:?}");
    }

    #[test]
    fn every_setting_is_validated_once_with_a_typed_error() {
        let ok = || KafkaConfig::new("kafka://h:9092").unwrap();
        assert!(ok().validate().is_ok());
        let mut negative = ok();
        negative.partitions = -1;
        let cases = [
            ok().partitions(0),
            negative,
            ok().replication(0),
            ok().max_message_size(0),
            ok().max_message_size(usize::MAX),
            ok().send_timeout(Duration::ZERO),
            ok().send_timeout(Duration::MAX),
            ok().connect_timeout(Duration::ZERO),
            ok().connect_timeout(Duration::from_secs(30 * 24 * 3600)),
            ok().commit_interval(Duration::MAX),
            ok().drain_timeout(Duration::MAX),
            ok().prefix("a.b"),
            ok().read_ahead(0),
        ];
        for config in cases {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, Error::Config(_) | Error::InvalidName { .. }),
                "{config:?}: {err:?}"
            );
        }
        for bad in [
            "amqp://h:9092",
            "kafka://h:9092?partitions=0",
            "kafka://h:9092?partitions=-2",
            "kafka://h:9092?replication=0",
            "kafka://h:9092?max_message_size=x",
            "kafka://h:9092?max_message_size=0",
            "kafka://h:9092?send_timeout_ms=0",
            "kafka://h:9092?connect_timeout_ms=0",
            "kafka://h:9092?send_timeout_ms=99999999999",
            "kafka://h:9092?prefix=a.b",
            "kafka://h:9092?read_ahead=0",
            "kafka://",
        ] {
            assert!(KafkaConfig::new(bad).is_err(), "{bad}");
        }
        assert!(KafkaConfig::new("kafka://h:9092?commit_interval_ms=0&drain_timeout_ms=0").is_ok());
    }
}
