//! `memory://` URLs and the registry of named buses.

use crate::bus::{lock, Bus};
use crate::config::MemoryConfig;
use event_binder_core::{ChannelUrl, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

/// The URL scheme of the memory backend.
pub const SCHEME: &str = "memory";

/// The buses opened by name (`memory://NAME`), held weakly: a bus is freed when the last
/// channel, producer and consumer on it are dropped.
static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<Bus>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The configuration given in a URL's query; `None` for a parameter left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Overrides {
    capacity: Option<usize>,
    max_message_size: Option<usize>,
    send_timeout: Option<Duration>,
    history: Option<usize>,
}

impl Overrides {
    fn apply(&self, mut config: MemoryConfig) -> MemoryConfig {
        if let Some(capacity) = self.capacity {
            config = config.capacity(capacity);
        }
        if let Some(bytes) = self.max_message_size {
            config = config.max_message_size(bytes);
        }
        if let Some(timeout) = self.send_timeout {
            config = config.send_timeout(timeout);
        }
        if let Some(history) = self.history {
            config = config.history(history);
        }
        config
    }

    /// The first parameter given that differs from `config`, as `name=value`.
    fn mismatch(&self, config: &MemoryConfig) -> Option<String> {
        let differs = |given: Option<usize>, actual: usize| given.is_some_and(|g| g != actual);
        if differs(self.capacity, config.capacity) {
            Some(format!("capacity={}", config.capacity))
        } else if differs(self.max_message_size, config.max_message_size) {
            Some(format!("max_message_size={}", config.max_message_size))
        } else if self.send_timeout.is_some_and(|t| t != config.send_timeout) {
            Some(format!(
                "send_timeout_ms={}",
                config.send_timeout.as_millis()
            ))
        } else if differs(self.history, config.history) {
            Some(format!("history={}", config.history))
        } else {
            None
        }
    }
}

fn invalid(url: &ChannelUrl, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Reads `memory://[NAME][?capacity=N&max_message_size=N&send_timeout_ms=N&history=N]`.
fn parse(url: &ChannelUrl) -> Result<(Option<String>, Overrides)> {
    let parsed = url.as_url();
    if parsed.scheme() != SCHEME {
        return Err(invalid(
            url,
            format!(
                "the memory backend takes {SCHEME}:// URLs, not {}://",
                parsed.scheme()
            ),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.port().is_some() {
        return Err(invalid(
            url,
            "a memory:// URL takes no user, password or port: memory://[NAME][?PARAMETERS]",
        ));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.fragment().is_some() {
        return Err(invalid(
            url,
            "a memory:// URL takes no path or fragment: memory://[NAME][?PARAMETERS]",
        ));
    }
    let name = match parsed.host_str() {
        None | Some("") => None,
        Some(name) => {
            if event_binder_core::validate_destination(name).is_err() {
                return Err(invalid(
                    url,
                    format!(
                        "bus name {name:?}: use 1 to {} ASCII letters, digits, '-' and '_'",
                        event_binder_core::MAX_NAME_LEN
                    ),
                ));
            }
            Some(name.to_owned())
        }
    };
    let mut overrides = Overrides::default();
    for (parameter, value) in parsed.query_pairs() {
        let number = |min: u64| -> Result<u64> {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| {
                    invalid(
                        url,
                        format!(
                            "parameter {parameter}: {value:?} is not a whole number of at least {min}"
                        ),
                    )
                })
        };
        let size = |min: u64| -> Result<usize> {
            let n = number(min)?;
            usize::try_from(n)
                .map_err(|_| invalid(url, format!("parameter {parameter}: {n} is too large")))
        };
        match &*parameter {
            "capacity" => overrides.capacity = Some(size(1)?),
            "max_message_size" => overrides.max_message_size = Some(size(1)?),
            "send_timeout_ms" => overrides.send_timeout = Some(Duration::from_millis(number(0)?)),
            "history" => overrides.history = Some(size(0)?),
            other => {
                return Err(invalid(
                    url,
                    format!(
                        "unknown parameter {other:?}; the memory backend takes capacity, \
                         max_message_size, send_timeout_ms and history"
                    ),
                ))
            }
        }
    }
    Ok((name, overrides))
}

/// The bus a URL names: a new private one for `memory://`, the process-wide one named NAME
/// for `memory://NAME` (created if no live one has that name).
pub(crate) fn open(url: &ChannelUrl) -> Result<Arc<Bus>> {
    let (name, overrides) = parse(url)?;
    let Some(name) = name else {
        return Ok(Arc::new(Bus::new(
            overrides.apply(MemoryConfig::new()),
            None,
        )));
    };
    let mut registry = lock(&REGISTRY);
    registry.retain(|_, bus| bus.strong_count() > 0);
    if let Some(bus) = registry.get(&name).and_then(Weak::upgrade) {
        if !bus.shared.is_closed() {
            if let Some(actual) = overrides.mismatch(&bus.shared.config) {
                return Err(invalid(
                    url,
                    format!(
                        "the bus {name:?} is already open with {actual}; leave the parameter out \
                         to join it, or use another name"
                    ),
                ));
            }
            return Ok(bus);
        }
        // A closed bus is replaced by a fresh one of the same name.
    }
    let bus = Arc::new(Bus::new(
        overrides.apply(MemoryConfig::new()),
        Some(name.clone()),
    ));
    registry.insert(name, Arc::downgrade(&bus));
    Ok(bus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(input: &str) -> Result<(Option<String>, Overrides)> {
        parse(&ChannelUrl::parse(input)?)
    }

    #[test]
    fn private_and_named_buses() {
        assert_eq!(parse_str("memory://").unwrap().0, None);
        assert_eq!(parse_str("memory:///").unwrap().0, None);
        assert_eq!(
            parse_str("memory://Bus_1").unwrap().0.as_deref(),
            Some("Bus_1")
        );
    }

    #[test]
    fn parameters() {
        let (_, overrides) =
            parse_str("memory://?capacity=5&max_message_size=100&send_timeout_ms=250&history=3")
                .unwrap();
        assert_eq!(
            overrides,
            Overrides {
                capacity: Some(5),
                max_message_size: Some(100),
                send_timeout: Some(Duration::from_millis(250)),
                history: Some(3),
            }
        );
        let config = overrides.apply(MemoryConfig::new());
        assert_eq!(config.capacity, 5);
        assert_eq!(config.max_message_size, 100);
        assert_eq!(config.send_timeout, Duration::from_millis(250));
        assert_eq!(config.history, 3);
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for (input, needle) in [
            ("amqp://localhost", "memory://"),
            ("memory://?capacity=0", "capacity"),
            ("memory://?capacity=-1", "capacity"),
            ("memory://?max_message_size=big", "max_message_size"),
            ("memory://?send_timeout_ms=1.5", "send_timeout_ms"),
            ("memory://?history=x", "history"),
            ("memory://?capacty=5", "capacty"),
            ("memory://a.b", "bus name"),
            ("memory://user:secret@bus", "no user"),
            ("memory://bus:5", "no user"),
            ("memory://bus/path", "no path"),
        ] {
            let err = parse_str(input).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{input}: {err}");
            let message = err.to_string();
            assert!(message.contains(needle), "{input}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }
}
