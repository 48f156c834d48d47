//! Channel URLs: parsing and keeping credentials out of logs.

use crate::error::{Error, Result};
use std::fmt;

/// A parsed channel URL whose `Debug` and `Display` never show the password.
///
/// ```
/// use event_binder_core::ChannelUrl;
///
/// let url = ChannelUrl::parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
/// assert!(!format!("{url:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelUrl {
    inner: url::Url,
}

impl ChannelUrl {
    /// Parses a URL such as `memory://`, `amqp://user:pass@host:5672/vhost` or `kafka://host:9092`.
    pub fn parse(input: &str) -> Result<Self> {
        url::Url::parse(input)
            .map(|inner| ChannelUrl { inner })
            .map_err(|err| Error::InvalidUrl {
                url: redact(input),
                reason: err.to_string(),
            })
    }

    /// The scheme, which selects the backend (`memory`, `amqp`, `kafka`, …).
    pub fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    /// The URL with its password, for handing to a broker client. Never log this.
    pub fn expose(&self) -> &str {
        self.inner.as_str()
    }

    /// The parsed URL, for backends that read its parts.
    pub fn as_url(&self) -> &url::Url {
        &self.inner
    }
}

impl fmt::Display for ChannelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.inner.as_str()))
    }
}

impl fmt::Debug for ChannelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelUrl({self})")
    }
}

/// Replaces the password of a URL, parsed or not, with `***`.
///
/// ```
/// assert_eq!(
///     event_binder_core::redact_url("amqps://u:p@h/v"),
///     "amqps://u:***@h/v"
/// );
/// ```
pub fn redact_url(input: &str) -> String {
    redact(input)
}

fn redact(input: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(input) {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
            return parsed.into();
        }
        if parsed.password().is_none() {
            return parsed.into();
        }
    }
    // Not a URL we can parse: hide everything between "://" and the last '@'.
    match (input.find("://"), input.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}***{}", &input[..start + 3], &input[at..])
        }
        _ => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_the_password() {
        let err = ChannelUrl::parse("amqp://user:hunter2@[bad").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn urls_without_credentials_are_unchanged() {
        assert_eq!(
            redact_url("kafka://127.0.0.1:9092"),
            "kafka://127.0.0.1:9092"
        );
        assert_eq!(redact_url("memory://"), "memory://");
    }
}
