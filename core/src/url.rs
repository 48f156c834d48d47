//! Channel URLs: parsing, several hosts, and keeping credentials out of logs.

use crate::error::{Error, Result};
use std::fmt;

/// A parsed channel URL whose `Debug` and `Display` never show a secret: neither the
/// password of its user info nor the value of a query parameter whose name says it is a
/// secret ([`is_secret_param`]).
///
/// Several hosts may be given, comma-separated (`kafka://h1:9092,h2:9092`): [`hosts`](Self::hosts)
/// lists them all, and [`as_url`](Self::as_url) holds the first.
///
/// ```
/// use event_binder_core::ChannelUrl;
///
/// let url = ChannelUrl::parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
/// assert!(!format!("{url:?}").contains("secret"));
///
/// let url = ChannelUrl::parse("kafka://h1:9092,h2:9092?sasl.password=hunter2").unwrap();
/// assert_eq!(url.hosts(), ["h1:9092", "h2:9092"]);
/// assert_eq!(url.to_string(), "kafka://h1:9092,h2:9092?sasl.password=***");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelUrl {
    /// The URL with its first host only (the `url` crate knows one host per URL).
    inner: url::Url,
    /// Every `host[:port]` as written, in order; empty for a URL without a host.
    hosts: Vec<String>,
    /// The URL as given, secrets hidden: what `Display` shows.
    shown: String,
}

impl ChannelUrl {
    /// Parses a URL such as `memory://`, `amqp://user:pass@host:5672/vhost`,
    /// `kafka://host:9092` or `kafka://h1:9092,h2:9092`.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact(input),
            reason,
        };
        let (first, more) = split_hosts(input);
        let inner = url::Url::parse(&first).map_err(|err| invalid(err.to_string()))?;
        let mut hosts: Vec<String> = inner
            .host_str()
            .filter(|host| !host.is_empty())
            .map(|host| match inner.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            })
            .into_iter()
            .collect();
        if !more.is_empty() && hosts.is_empty() {
            return Err(invalid("a list of hosts needs a first host".into()));
        }
        for host in more {
            let parsed = url::Url::parse(&format!("{}://{host}", inner.scheme()))
                .ok()
                .filter(|parsed| parsed.host_str().is_some_and(|h| !h.is_empty()));
            if parsed.is_none() {
                return Err(invalid(format!("{host:?} is not a valid host[:port]")));
            }
            hosts.push(host);
        }
        Ok(ChannelUrl {
            inner,
            hosts,
            shown: redact(input),
        })
    }

    /// The scheme, which selects the backend (`memory`, `amqp`, `kafka`, …).
    pub fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    /// The URL with its password and secret parameters, for handing to a broker client
    /// (its first host only, where several were given). Never log this.
    pub fn expose(&self) -> &str {
        self.inner.as_str()
    }

    /// The parsed URL, for backends that read its parts (its first host only, where
    /// several were given: see [`hosts`](Self::hosts)).
    pub fn as_url(&self) -> &url::Url {
        &self.inner
    }

    /// Every host given, as `host` or `host:port`, in order: one for most URLs, several for
    /// `kafka://h1:9092,h2:9092`, none for `memory://`.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }
}

impl fmt::Display for ChannelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for ChannelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelUrl({self})")
    }
}

/// Whether a URL query parameter or client setting of this name holds a secret, whose value
/// must never be shown: its name says password, secret, token, credential, passphrase or
/// private, or names key material (a word `key`, or one ending in `key`, such as
/// `ssl.key.pem` or `api_key`). One rule for every backend.
///
/// ```
/// use event_binder_core::is_secret_param;
///
/// for secret in ["sasl.password", "ssl.key.pem", "sasl.oauthbearer.client.secret",
///                "session_token", "aws_secret_access_key", "apiKey", "ssl.key.password"] {
///     assert!(is_secret_param(secret), "{secret}");
/// }
/// for plain in ["prefix", "partitions", "security.protocol", "sasl.username", "region"] {
///     assert!(!is_secret_param(plain), "{plain}");
/// }
/// ```
pub fn is_secret_param(name: &str) -> bool {
    const SECRET_WORDS: [&str; 8] = [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "passphrase",
        "private",
        "jaas",
    ];
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
        || name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word.ends_with("key"))
}

/// Replaces every occurrence of each of `secrets` in `text` with `***`: for a broker
/// client's error text, which may quote a password or a secret setting it was given. Empty
/// secrets are skipped (there is nothing to hide).
///
/// ```
/// use event_binder_core::hide_secrets;
///
/// assert_eq!(hide_secrets("user bob / s3cret refused", &["s3cret"]), "user bob / *** refused");
/// assert_eq!(hide_secrets("nothing", &[""]), "nothing");
/// ```
pub fn hide_secrets(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
}

/// Hides the secrets of a URL, parsed or not: the password of its user info, and the value
/// of every query parameter [`is_secret_param`] names, each replaced with `***`.
///
/// ```
/// assert_eq!(
///     event_binder_core::redact_url("amqps://u:p@h/v?prefix=a&token=t"),
///     "amqps://u:***@h/v?prefix=a&token=***"
/// );
/// ```
pub fn redact_url(input: &str) -> String {
    redact(input)
}

fn redact(input: &str) -> String {
    let (before_query, query) = match input.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (input, None),
    };
    let mut shown = redact_user_info(before_query);
    if let Some(query) = query {
        shown.push('?');
        shown.push_str(&redact_query(query));
    }
    shown
}

/// Hides the password of `scheme://user:password@host…`; a user info that cannot be told
/// apart from the rest (no `:`, in a URL that does not parse) is hidden whole.
fn redact_user_info(input: &str) -> String {
    let Some(start) = input.find("://").map(|at| at + 3) else {
        return input.to_owned();
    };
    let authority_end = input[start..]
        .find(['/', '#'])
        .map_or(input.len(), |end| start + end);
    let Some(at) = input[start..authority_end].rfind('@').map(|at| start + at) else {
        return input.to_owned();
    };
    let user_info = &input[start..at];
    let user = match user_info.split_once(':') {
        Some((user, _password)) => user,
        None if url::Url::parse(input).is_ok() => return input.to_owned(),
        None => "",
    };
    let colon = if user.is_empty() { "" } else { ":" };
    format!("{}{user}{colon}***{}", &input[..start], &input[at..])
}

fn redact_query(query: &str) -> String {
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let mut shown = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(&decode(name)) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

/// A query parameter's name, percent-decoded, so that `sasl%2Epassword` is recognised too.
fn decode(name: &str) -> String {
    url::form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}

/// `scheme://[user@]h1,h2,h3/rest` → (`scheme://[user@]h1/rest`, [`h2`, `h3`]).
fn split_hosts(input: &str) -> (String, Vec<String>) {
    let Some(start) = input.find("://").map(|at| at + 3) else {
        return (input.to_owned(), Vec::new());
    };
    let end = input[start..]
        .find(['/', '?', '#'])
        .map_or(input.len(), |end| start + end);
    let host_start = input[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    let mut hosts = input[host_start..end].split(',');
    let first = hosts.next().unwrap_or_default();
    let more: Vec<String> = hosts.map(str::to_owned).collect();
    if more.is_empty() {
        return (input.to_owned(), more);
    }
    (
        format!("{}{first}{}", &input[..host_start], &input[end..]),
        more,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_the_password() {
        let err = ChannelUrl::parse("amqp://user:hunter2@[bad").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
        let err = ChannelUrl::parse("kafka://h:1,[bad?sasl.password=hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn urls_without_credentials_are_unchanged() {
        assert_eq!(
            redact_url("kafka://127.0.0.1:9092"),
            "kafka://127.0.0.1:9092"
        );
        assert_eq!(redact_url("memory://"), "memory://");
        assert_eq!(
            redact_url("sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566"),
            "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566"
        );
    }

    #[test]
    fn secret_query_values_are_hidden_on_every_scheme() {
        for url in [
            "memory://bus?token=hunter2",
            "amqp://guest:hunter2@127.0.0.1:5672/%2f?auth_token=hunter2",
            "amqps://127.0.0.1:5671/%2f?password=hunter2&prefix=x",
            "kafka://127.0.0.1:9092?sasl.password=hunter2&sasl.username=me",
            "kafka://h1:9092,h2:9092?ssl.key.pem=hunter2",
            "kafka://h1:9092?sasl%2Epassword=hunter2",
            "sns-sqs://us-east-1?aws_secret_access_key=hunter2&endpoint=http://127.0.0.1:4566",
            "sns-sqs://us-east-1?session_token=hunter2#frag",
        ] {
            let parsed = ChannelUrl::parse(url).unwrap();
            for shown in [parsed.to_string(), format!("{parsed:?}"), redact_url(url)] {
                assert!(!shown.contains("hunter2"), "{shown}");
                assert!(shown.contains("***"), "{shown}");
            }
        }
        assert_eq!(
            redact_url("kafka://h:9092?sasl.username=me&sasl.password=p"),
            "kafka://h:9092?sasl.username=me&sasl.password=***"
        );
    }

    #[test]
    fn several_hosts_are_kept_in_order() {
        let url = ChannelUrl::parse("kafka://u:p@h1:9092,h2,[::1]:9094/x?a=b").unwrap();
        assert_eq!(url.hosts(), ["h1:9092", "h2", "[::1]:9094"]);
        assert_eq!(url.as_url().host_str(), Some("h1"));
        assert_eq!(url.as_url().query(), Some("a=b"));
        assert_eq!(url.to_string(), "kafka://u:***@h1:9092,h2,[::1]:9094/x?a=b");
        assert_eq!(ChannelUrl::parse("memory://").unwrap().hosts().len(), 0);
        assert!(matches!(
            ChannelUrl::parse("kafka://h1:9092,h2:notaport"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            ChannelUrl::parse("kafka://h1:9092,"),
            Err(Error::InvalidUrl { .. })
        ));
    }
}
