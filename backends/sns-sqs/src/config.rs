//! The configuration of an SNS+SQS channel and the `sns-sqs://` URLs it is read from.

use event_binder_core::{
    is_secret_param, redact_url, validate_destination, validate_prefix, ChannelUrl, Error, Result,
};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// The largest message SNS and SQS accept: 256 KiB, body and attributes together.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// How an [`SnsSqsChannel`](crate::SnsSqsChannel) connects and behaves.
///
/// Made from a URL with [`SnsSqsConfig::new`] (or [`from_url`](Self::from_url)), which
/// also reads the parameters below from its query; then changed with the setters.
///
/// | query parameter | field | default |
/// |---|---|---|
/// | `endpoint` | [`endpoint`](Self::endpoint): one endpoint for SNS and SQS, for emulators | AWS's endpoints for the region |
/// | `prefix` | [`prefix`](Self::prefix) | empty |
/// | `fifo` | [`fifo`](Self::fifo): destinations with FIFO topics and queues, comma separated (`*`: all) | none |
/// | `visibility_timeout_s` | [`visibility_timeout`](Self::visibility_timeout) | 30 s |
/// | `wait_time_s` | [`wait_time`](Self::wait_time) | 10 s |
/// | `batch_window_ms` | [`batch_window`](Self::batch_window) | 5 ms |
/// | `connect_timeout_ms` | [`connect_timeout`](Self::connect_timeout) | 10 s |
/// | `attempt_timeout_ms` | [`attempt_timeout`](Self::attempt_timeout) | 10 s |
/// | `operation_timeout_ms` | [`operation_timeout`](Self::operation_timeout) | 30 s |
///
/// Every setting is checked once, when the channel connects (and already when a URL is
/// read), whether it came from the URL, a setter or a field set directly: a value out of
/// its range is an [`Error::Config`] (an [`Error::InvalidUrl`] for a URL parameter)
/// naming the setting and the range it allows.
///
/// The region is the URL's host: `sns-sqs://eu-west-1`. Credentials come from the
/// standard AWS provider chain (environment, shared profile, web identity, container and
/// instance metadata), or from [`credentials`](Self::credentials); never from the URL.
/// They never appear in `Debug` output or in errors. Any other parameter is an
/// [`Error::InvalidUrl`].
///
/// ```
/// use event_binder_sns_sqs::SnsSqsConfig;
/// use std::time::Duration;
///
/// let config = SnsSqsConfig::new(
///     "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&prefix=test-&fifo=payments",
/// )?
/// .visibility_timeout(Duration::from_secs(60))
/// .credentials("test", "secret-key");
/// assert_eq!(config.region, "us-east-1");
/// assert!(config.is_fifo("payments") && !config.is_fifo("orders"));
/// assert!(!format!("{config:?}").contains("secret-key"));
/// # Ok::<(), event_binder_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnsSqsConfig {
    /// The AWS region.
    pub region: String,
    /// One endpoint for both SNS and SQS (an emulator such as moto or LocalStack); `None`
    /// for AWS's own endpoints in the region.
    pub endpoint: Option<String>,
    /// Put before every topic and queue name, so that several applications or test runs
    /// share an account without meeting. ASCII letters, digits, `-` and `_`.
    pub prefix: String,
    /// The destinations declared FIFO: their topic and queues end with `.fifo`, a
    /// message's key becomes its message group id and its id the deduplication id.
    pub fifo: BTreeSet<String>,
    /// How long a received message stays hidden from the group's other consumers; while a
    /// handler holds it, the consumer extends it before it runs out. Whole seconds, 1 s
    /// to 12 hours.
    pub visibility_timeout: Duration,
    /// How long a receive waits for messages (SQS long polling). Whole seconds, up to 20 s;
    /// 0 polls without waiting.
    pub wait_time: Duration,
    /// How long a publish or an acknowledgement waits for others to share its request
    /// (PublishBatch, DeleteMessageBatch: up to 10 each). 0 sends what is queued at once.
    pub batch_window: Duration,
    /// The longest connecting (the first request) may take. Not zero.
    pub connect_timeout: Duration,
    /// The longest one attempt of a request (one HTTP exchange) may take before it is
    /// abandoned and, within [`operation_timeout`](Self::operation_timeout), retried. Not
    /// zero, at most the operation timeout. A receive long-polls for
    /// [`wait_time`](Self::wait_time) on top of it.
    pub attempt_timeout: Duration,
    /// The longest a request may take in all, retries included: a publish, an
    /// acknowledgement or a receive that gets no answer (a stalled network, an endpoint
    /// that accepts and never answers) fails with [`Error::Timeout`] after it instead of
    /// hanging. Not zero. A receive long-polls for [`wait_time`](Self::wait_time) on top
    /// of it.
    pub operation_timeout: Duration,
    credentials: Option<StaticCredentials>,
}

/// An access key set in code, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StaticCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
}

impl SnsSqsConfig {
    /// In [`fifo`](Self::fifo) (and the `fifo` URL parameter), `*` declares every
    /// destination FIFO.
    pub const EVERY_DESTINATION: &'static str = "*";
    /// The default [`visibility_timeout`](Self::visibility_timeout): 30 seconds.
    pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`wait_time`](Self::wait_time): 10 seconds.
    pub const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(10);
    /// The default [`batch_window`](Self::batch_window): 5 milliseconds.
    pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(5);
    /// The default [`connect_timeout`](Self::connect_timeout): 10 seconds.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`attempt_timeout`](Self::attempt_timeout): 10 seconds.
    pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`operation_timeout`](Self::operation_timeout): 30 seconds.
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
    /// The longest [`batch_window`](Self::batch_window): 1 second (every send and ack waits
    /// for it).
    pub const MAX_BATCH_WINDOW: Duration = Duration::from_secs(1);

    /// The longest visibility timeout SQS allows: 12 hours.
    const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
    /// The longest long poll SQS allows: 20 seconds.
    const MAX_WAIT_TIME: Duration = Duration::from_secs(20);

    /// Reads `sns-sqs://<region>[?parameters]`, with the parameters listed above.
    pub fn new(url: &str) -> Result<Self> {
        let parsed = ChannelUrl::parse(url).map_err(|_| Error::InvalidUrl {
            url: event_binder_core::redact_url(url),
            reason: "expected sns-sqs://<region>[?endpoint=…&prefix=…]".into(),
        })?;
        Self::from_url(&parsed)
    }

    /// Like [`new`](Self::new), from a parsed URL (as the `event-binder` facade holds it).
    pub fn from_url(url: &ChannelUrl) -> Result<Self> {
        if url.scheme() != crate::SCHEME {
            return Err(invalid(
                url,
                format!(
                    "the SNS+SQS backend takes sns-sqs:// URLs, not {}://",
                    url.scheme()
                ),
            ));
        }
        let parsed = url.as_url();
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                url,
                "credentials do not belong in the URL: use the AWS provider chain \
                 (AWS_ACCESS_KEY_ID, a profile, a role) or SnsSqsConfig::credentials",
            ));
        }
        let region = parsed
            .host_str()
            .filter(|region| is_region(region))
            .ok_or_else(|| invalid(url, "the URL names no region: use sns-sqs://us-east-1"))?;
        let mut config = SnsSqsConfig {
            region: region.to_owned(),
            endpoint: None,
            prefix: String::new(),
            fifo: BTreeSet::new(),
            visibility_timeout: Self::DEFAULT_VISIBILITY_TIMEOUT,
            wait_time: Self::DEFAULT_WAIT_TIME,
            batch_window: Self::DEFAULT_BATCH_WINDOW,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            attempt_timeout: Self::DEFAULT_ATTEMPT_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            credentials: None,
        };
        for (name, value) in parsed.query_pairs() {
            let number = || -> Result<u64> {
                value.parse::<u64>().map_err(|_| {
                    invalid(
                        url,
                        format!("parameter {name}: {value:?} is not a whole number"),
                    )
                })
            };
            match &*name {
                "endpoint" => {
                    let endpoint = url::Url::parse(&value)
                        .ok()
                        .filter(|e| is_endpoint(e.as_str()))
                        .ok_or_else(|| {
                            invalid(url, "parameter endpoint: use http://host:port or https://…")
                        })?;
                    config.endpoint = Some(endpoint.as_str().trim_end_matches('/').to_owned());
                }
                "prefix" => {
                    validate_prefix(&value)?;
                    config.prefix = value.into_owned();
                }
                "fifo" => {
                    for destination in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                        if destination != Self::EVERY_DESTINATION {
                            validate_destination(destination)?;
                        }
                        config.fifo.insert(destination.to_owned());
                    }
                }
                "visibility_timeout_s" => {
                    config.visibility_timeout = Duration::from_secs(number()?);
                }
                "wait_time_s" => config.wait_time = Duration::from_secs(number()?),
                "batch_window_ms" => config.batch_window = Duration::from_millis(number()?),
                "connect_timeout_ms" => config.connect_timeout = Duration::from_millis(number()?),
                "attempt_timeout_ms" => config.attempt_timeout = Duration::from_millis(number()?),
                "operation_timeout_ms" => {
                    config.operation_timeout = Duration::from_millis(number()?);
                }
                other if is_secret_param(other) => {
                    return Err(invalid(
                        url,
                        format!(
                            "parameter {other:?}: credentials do not belong in the URL; use \
                             the AWS provider chain (AWS_ACCESS_KEY_ID, a profile, a role) or \
                             SnsSqsConfig::credentials"
                        ),
                    ))
                }
                other => {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown parameter {other:?}; the SNS+SQS backend takes endpoint, \
                             prefix, fifo, visibility_timeout_s, wait_time_s, batch_window_ms, \
                             connect_timeout_ms, attempt_timeout_ms and operation_timeout_ms"
                        ),
                    ))
                }
            }
        }
        if let Err(wrong) = config.check() {
            return Err(invalid(
                url,
                format!(
                    "parameter {}: {} is out of range; {}",
                    wrong.parameter, wrong.actual, wrong.allowed
                ),
            ));
        }
        Ok(config)
    }

    /// Sets the [`endpoint`](Self::endpoint).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the [`prefix`](Self::prefix) (checked when connecting).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Declares a destination FIFO (checked when connecting);
    /// [`EVERY_DESTINATION`](Self::EVERY_DESTINATION) declares them all.
    pub fn fifo(mut self, destination: impl Into<String>) -> Self {
        self.fifo.insert(destination.into());
        self
    }

    /// Whether a destination is declared FIFO.
    ///
    /// ```
    /// use event_binder_sns_sqs::SnsSqsConfig;
    ///
    /// let config = SnsSqsConfig::new("sns-sqs://us-east-1?fifo=*")?;
    /// assert!(config.is_fifo("orders") && config.is_fifo("payments"));
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    pub fn is_fifo(&self, destination: &str) -> bool {
        self.fifo.contains(destination) || self.fifo.contains(Self::EVERY_DESTINATION)
    }

    /// Sets the [`visibility_timeout`](Self::visibility_timeout), rounded up to whole
    /// seconds within 1 s and 12 hours.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Duration::from_secs(whole_seconds(timeout))
            .clamp(Duration::from_secs(1), Self::MAX_VISIBILITY_TIMEOUT);
        self
    }

    /// Sets the [`wait_time`](Self::wait_time), rounded up to whole seconds, at most 20 s.
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = Duration::from_secs(whole_seconds(wait)).min(Self::MAX_WAIT_TIME);
        self
    }

    /// Sets the [`batch_window`](Self::batch_window).
    pub fn batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Sets the [`connect_timeout`](Self::connect_timeout) (at least 1 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the [`attempt_timeout`](Self::attempt_timeout) (checked when connecting).
    ///
    /// ```
    /// use event_binder_sns_sqs::SnsSqsConfig;
    /// use std::time::Duration;
    ///
    /// // Give up on a request after 2 s per attempt and 5 s in all, retries included.
    /// let config = SnsSqsConfig::new("sns-sqs://us-east-1")?
    ///     .attempt_timeout(Duration::from_secs(2))
    ///     .operation_timeout(Duration::from_secs(5));
    /// assert_eq!(config.operation_timeout, Duration::from_secs(5));
    /// // The same from the URL.
    /// let same = SnsSqsConfig::new(
    ///     "sns-sqs://us-east-1?attempt_timeout_ms=2000&operation_timeout_ms=5000",
    /// )?;
    /// assert_eq!(same, config);
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets the [`operation_timeout`](Self::operation_timeout) (checked when connecting).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Uses this access key instead of the provider chain (for emulators and tests; in
    /// production prefer the chain: roles, profiles, the environment).
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        });
        self
    }

    pub(crate) fn static_credentials(&self) -> Option<&StaticCredentials> {
        self.credentials.as_ref()
    }

    /// Checks every setting, whatever set it (the URL, a setter, a field), with an
    /// [`Error::Config`] naming the setting and its range; or an [`Error::InvalidName`] for
    /// the prefix and the FIFO destinations.
    ///
    /// [`SnsSqsChannel::with_config`](crate::SnsSqsChannel::with_config) calls it before
    /// anything else; call it to check a configuration without connecting.
    ///
    /// ```
    /// use event_binder_core::Error;
    /// use event_binder_sns_sqs::SnsSqsConfig;
    /// use std::time::Duration;
    ///
    /// let mut config = SnsSqsConfig::new("sns-sqs://us-east-1")?;
    /// config.visibility_timeout = Duration::ZERO;
    /// match config.validate() {
    ///     Err(Error::Config(reason)) => assert!(reason.contains("visibility_timeout")),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    pub fn validate(&self) -> Result<()> {
        if let Err(wrong) = self.check() {
            return Err(Error::Config(format!(
                "SnsSqsConfig::{} is {}, out of range; {}",
                wrong.field, wrong.actual, wrong.allowed
            )));
        }
        validate_prefix(&self.prefix)?;
        self.fifo
            .iter()
            .filter(|destination| *destination != Self::EVERY_DESTINATION)
            .try_for_each(|destination| validate_destination(destination))
    }

    /// The first setting out of its range, if any.
    fn check(&self) -> std::result::Result<(), OutOfRange> {
        let wrong = |field, parameter, actual: String, allowed: &str| {
            Err(OutOfRange {
                field,
                parameter,
                actual,
                allowed: allowed.to_owned(),
            })
        };
        if !is_region(&self.region) {
            return wrong(
                "region",
                "the URL's host",
                format!("{:?}", self.region),
                "use an AWS region such as us-east-1 (lowercase letters, digits and -)",
            );
        }
        if let Some(endpoint) = &self.endpoint {
            if !is_endpoint(endpoint) {
                return wrong(
                    "endpoint",
                    "endpoint",
                    format!("{:?}", redact_url(endpoint)),
                    "use http://host:port or https://host",
                );
            }
        }
        if self.visibility_timeout < Duration::from_secs(1)
            || self.visibility_timeout > Self::MAX_VISIBILITY_TIMEOUT
        {
            return wrong(
                "visibility_timeout",
                "visibility_timeout_s",
                format!("{:?}", self.visibility_timeout),
                "use 1 s to 12 hours (43200 s): SQS's limit, and the consumer extends it \
                 for held messages every quarter of it",
            );
        }
        if self.wait_time > Self::MAX_WAIT_TIME {
            return wrong(
                "wait_time",
                "wait_time_s",
                format!("{:?}", self.wait_time),
                "use 0 to 20 s (SQS's longest long poll)",
            );
        }
        if self.batch_window > Self::MAX_BATCH_WINDOW {
            return wrong(
                "batch_window",
                "batch_window_ms",
                format!("{:?}", self.batch_window),
                "use 0 to 1 s (every send and acknowledgement waits for it)",
            );
        }
        for (field, parameter, timeout) in [
            (
                "connect_timeout",
                "connect_timeout_ms",
                self.connect_timeout,
            ),
            (
                "attempt_timeout",
                "attempt_timeout_ms",
                self.attempt_timeout,
            ),
            (
                "operation_timeout",
                "operation_timeout_ms",
                self.operation_timeout,
            ),
        ] {
            if timeout.is_zero() {
                return wrong(
                    field,
                    parameter,
                    "0".to_owned(),
                    "use a timeout of at least 1 ms",
                );
            }
        }
        if self.attempt_timeout > self.operation_timeout {
            return wrong(
                "attempt_timeout",
                "attempt_timeout_ms",
                format!("{:?}", self.attempt_timeout),
                &format!(
                    "use at most the operation_timeout ({:?}), which bounds every attempt",
                    self.operation_timeout
                ),
            );
        }
        Ok(())
    }

    /// The URL this configuration stands for, for messages.
    /// An endpoint's secrets (a password, a secret query parameter) are hidden.
    pub(crate) fn url(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!(
                "{}://{}?endpoint={}",
                crate::SCHEME,
                self.region,
                redact_url(endpoint)
            ),
            None => format!("{}://{}", crate::SCHEME, self.region),
        }
    }
}

impl fmt::Debug for SnsSqsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsSqsConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("prefix", &self.prefix)
            .field("fifo", &self.fifo)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("wait_time", &self.wait_time)
            .field("batch_window", &self.batch_window)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map_or("provider chain", |_| "static (hidden)"),
            )
            .finish()
    }
}

/// A duration in whole seconds, rounded up (SQS counts in seconds).
/// Saturates at `u64::MAX` (`Duration::MAX` has a fraction of a second too).
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// A setting out of its range: the field, its URL parameter, the value and the range.
#[derive(Debug)]
struct OutOfRange {
    field: &'static str,
    parameter: &'static str,
    actual: String,
    allowed: String,
}

/// An AWS region name as the URL's host can hold it.
fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An endpoint the SDK can send to: http or https with a host.
fn is_endpoint(endpoint: &str) -> bool {
    url::Url::parse(endpoint).is_ok_and(|e| matches!(e.scheme(), "http" | "https") && e.has_host())
}

fn invalid(url: &ChannelUrl, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_parameter() {
        let config = SnsSqsConfig::new(
            "sns-sqs://eu-west-1?endpoint=http://127.0.0.1:4566/&prefix=t-&fifo=a,b\
             &visibility_timeout_s=60&wait_time_s=0&batch_window_ms=2&connect_timeout_ms=500\
             &attempt_timeout_ms=700&operation_timeout_ms=1500",
        )
        .unwrap();
        assert_eq!(config.attempt_timeout, Duration::from_millis(700));
        assert_eq!(config.operation_timeout, Duration::from_millis(1500));
        assert_eq!(config.region, "eu-west-1");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(config.prefix, "t-");
        assert!(config.is_fifo("a") && config.is_fifo("b"));
        assert_eq!(config.visibility_timeout, Duration::from_secs(60));
        assert_eq!(config.wait_time, Duration::ZERO);
        assert_eq!(config.batch_window, Duration::from_millis(2));
        assert_eq!(config.connect_timeout, Duration::from_millis(500));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (url, needle) in [
            ("amqp://host", "sns-sqs://"),
            ("sns-sqs://", "region"),
            ("sns-sqs://key:secret@us-east-1", "credentials"),
            ("sns-sqs://us-east-1?wait_time_s=21", "wait_time_s"),
            (
                "sns-sqs://us-east-1?visibility_timeout_s=0",
                "visibility_timeout_s",
            ),
            (
                "sns-sqs://us-east-1?visibility_timeout_s=43201",
                "visibility_timeout_s",
            ),
            (
                "sns-sqs://us-east-1?batch_window_ms=1001",
                "batch_window_ms",
            ),
            (
                "sns-sqs://us-east-1?connect_timeout_ms=0",
                "connect_timeout_ms",
            ),
            (
                "sns-sqs://us-east-1?attempt_timeout_ms=0",
                "attempt_timeout_ms",
            ),
            (
                "sns-sqs://us-east-1?operation_timeout_ms=0",
                "operation_timeout_ms",
            ),
            (
                "sns-sqs://us-east-1?attempt_timeout_ms=2000&operation_timeout_ms=1000",
                "attempt_timeout_ms",
            ),
            ("sns-sqs://us-east-1?wait_time_s=x", "whole number"),
            ("sns-sqs://us-east-1?endpoint=ftp://x", "endpoint"),
            ("sns-sqs://us-east-1?colour=red", "unknown parameter"),
        ] {
            let err = SnsSqsConfig::new(url).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{url}: {text}");
            assert!(!text.contains("secret"), "{text}");
        }
        let err = SnsSqsConfig::new(
            "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&aws_secret_access_key=hush",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("credentials do not belong"), "{text}");
        assert!(!text.contains("hush") && !format!("{err:?}").contains("hush"));
        // An endpoint's own secrets stay hidden too.
        let config = SnsSqsConfig::new("sns-sqs://us-east-1")
            .unwrap()
            .endpoint("http://user:hush@proxy:8080?token=hush");
        assert!(!format!("{config:?}").contains("hush"), "{config:?}");
        assert!(!config.url().contains("hush"), "{}", config.url());
        assert!(matches!(
            SnsSqsConfig::new("sns-sqs://us-east-1?fifo=a.b"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn setters_round_to_what_sqs_counts() {
        let config = SnsSqsConfig::new("sns-sqs://us-east-1")
            .unwrap()
            .visibility_timeout(Duration::from_millis(1500))
            .wait_time(Duration::from_secs(99));
        assert_eq!(config.visibility_timeout, Duration::from_secs(2));
        assert_eq!(config.wait_time, Duration::from_secs(20));
    }

    /// Every setting out of range, set straight on the public field, is refused by
    /// `validate` (which `SnsSqsChannel::with_config` calls first) with `Error::Config`
    /// naming the field and the range.
    #[test]
    fn validate_refuses_every_field_out_of_range() {
        let valid = SnsSqsConfig::new("sns-sqs://us-east-1").unwrap();
        valid.validate().expect("the defaults are valid");
        type Change = fn(&mut SnsSqsConfig);
        let cases: [(&str, Change, &str); 14] = [
            ("region", |c| c.region = String::new(), "us-east-1"),
            ("region", |c| c.region = "US East".into(), "us-east-1"),
            (
                "endpoint",
                |c| c.endpoint = Some("127.0.0.1:4566".into()),
                "http://",
            ),
            (
                "visibility_timeout",
                |c| c.visibility_timeout = Duration::ZERO,
                "1 s to 12 hours",
            ),
            (
                "visibility_timeout",
                |c| c.visibility_timeout = Duration::from_millis(999),
                "1 s to 12 hours",
            ),
            (
                "visibility_timeout",
                |c| c.visibility_timeout = Duration::from_secs(43_201),
                "1 s to 12 hours",
            ),
            (
                "wait_time",
                |c| c.wait_time = Duration::from_secs(21),
                "0 to 20 s",
            ),
            (
                "batch_window",
                |c| c.batch_window = Duration::from_millis(1_001),
                "0 to 1 s",
            ),
            (
                "connect_timeout",
                |c| c.connect_timeout = Duration::ZERO,
                "at least 1 ms",
            ),
            (
                "attempt_timeout",
                |c| c.attempt_timeout = Duration::ZERO,
                "at least 1 ms",
            ),
            (
                "operation_timeout",
                |c| c.operation_timeout = Duration::ZERO,
                "at least 1 ms",
            ),
            (
                "attempt_timeout",
                |c| c.attempt_timeout = c.operation_timeout + Duration::from_millis(1),
                "at most the operation_timeout",
            ),
            ("prefix", |c| c.prefix = "a.b".into(), "a.b"),
            ("fifo", |c| c.fifo = ["x.y".to_owned()].into(), "x.y"),
        ];
        for (field, change, allowed) in cases {
            let mut config = valid.clone();
            change(&mut config);
            let err = config.validate().unwrap_err();
            let text = err.to_string();
            match (&err, field) {
                (Error::InvalidName { .. }, "prefix" | "fifo") => {}
                (Error::Config(reason), _) => {
                    assert!(
                        reason.contains(&format!("SnsSqsConfig::{field} ")),
                        "{reason}"
                    );
                }
                _ => panic!("{field}: expected Error::Config, got {err:?}"),
            }
            assert!(text.contains(allowed), "{field}: {text}");
        }
        // The edges of each range are accepted.
        let mut edges = valid.clone();
        edges.visibility_timeout = Duration::from_secs(43_200);
        edges.wait_time = Duration::ZERO;
        edges.batch_window = Duration::ZERO;
        edges.attempt_timeout = edges.operation_timeout;
        edges.validate().expect("the edges of the ranges");
        edges.visibility_timeout = Duration::from_secs(1);
        edges.wait_time = Duration::from_secs(20);
        edges.batch_window = Duration::from_secs(1);
        edges.validate().expect("the other edges");
    }

    #[test]
    fn whole_seconds_rounds_up_and_never_overflows() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::MAX), u64::MAX);
    }
}
