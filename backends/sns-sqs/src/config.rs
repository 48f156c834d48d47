//! The configuration of an SNS+SQS channel and the `sns-sqs://` URLs it is read from.

use event_binder_core::{validate_destination, validate_prefix, ChannelUrl, Error, Result};
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
/// | `fifo` | [`fifo`](Self::fifo): destinations with FIFO topics and queues, comma separated | none |
/// | `visibility_timeout_s` | [`visibility_timeout`](Self::visibility_timeout) | 30 s |
/// | `wait_time_s` | [`wait_time`](Self::wait_time) | 10 s |
/// | `batch_window_ms` | [`batch_window`](Self::batch_window) | 5 ms |
/// | `connect_timeout_ms` | [`connect_timeout`](Self::connect_timeout) | 10 s |
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
    /// The longest connecting (the first request) may take.
    pub connect_timeout: Duration,
    credentials: Option<StaticCredentials>,
}

/// An access key set in code, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StaticCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
}

impl SnsSqsConfig {
    /// The default [`visibility_timeout`](Self::visibility_timeout): 30 seconds.
    pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`wait_time`](Self::wait_time): 10 seconds.
    pub const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(10);
    /// The default [`batch_window`](Self::batch_window): 5 milliseconds.
    pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(5);
    /// The default [`connect_timeout`](Self::connect_timeout): 10 seconds.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
            .filter(|region| {
                !region.is_empty()
                    && region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
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
                        .filter(|e| matches!(e.scheme(), "http" | "https") && e.has_host())
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
                        validate_destination(destination)?;
                        config.fifo.insert(destination.to_owned());
                    }
                }
                "visibility_timeout_s" => {
                    let timeout = Duration::from_secs(number()?);
                    if timeout.is_zero() || timeout > Self::MAX_VISIBILITY_TIMEOUT {
                        return Err(invalid(
                            url,
                            "parameter visibility_timeout_s: use 1 to 43200",
                        ));
                    }
                    config.visibility_timeout = timeout;
                }
                "wait_time_s" => {
                    let wait = Duration::from_secs(number()?);
                    if wait > Self::MAX_WAIT_TIME {
                        return Err(invalid(url, "parameter wait_time_s: use 0 to 20"));
                    }
                    config.wait_time = wait;
                }
                "batch_window_ms" => config.batch_window = Duration::from_millis(number()?),
                "connect_timeout_ms" => {
                    config.connect_timeout = Duration::from_millis(number()?.max(1));
                }
                other => {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown parameter {other:?}; the SNS+SQS backend takes endpoint, \
                             prefix, fifo, visibility_timeout_s, wait_time_s, batch_window_ms \
                             and connect_timeout_ms"
                        ),
                    ))
                }
            }
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

    /// Declares a destination FIFO (checked when connecting).
    pub fn fifo(mut self, destination: impl Into<String>) -> Self {
        self.fifo.insert(destination.into());
        self
    }

    /// Whether a destination is declared FIFO.
    pub fn is_fifo(&self, destination: &str) -> bool {
        self.fifo.contains(destination)
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

    /// Checks what the setters could not: the prefix and the FIFO destinations' names.
    pub(crate) fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        self.fifo
            .iter()
            .try_for_each(|destination| validate_destination(destination))
    }

    /// The URL this configuration stands for, for messages.
    pub(crate) fn url(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{}://{}?endpoint={endpoint}", crate::SCHEME, self.region),
            None => format!("{}://{}", crate::SCHEME, self.region),
        }
    }
}

impl fmt::Debug for SnsSqsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsSqsConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("fifo", &self.fifo)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("wait_time", &self.wait_time)
            .field("batch_window", &self.batch_window)
            .field("connect_timeout", &self.connect_timeout)
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
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
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
             &visibility_timeout_s=60&wait_time_s=0&batch_window_ms=2&connect_timeout_ms=500",
        )
        .unwrap();
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
            ("sns-sqs://us-east-1?endpoint=ftp://x", "endpoint"),
            ("sns-sqs://us-east-1?colour=red", "unknown parameter"),
        ] {
            let err = SnsSqsConfig::new(url).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{url}: {text}");
            assert!(!text.contains("secret"), "{text}");
        }
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
}
