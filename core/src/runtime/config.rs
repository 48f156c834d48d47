//! Bindings from configuration: a handler's destination, group, concurrency, retry and
//! batch settings overridden by a file and the environment, as Spring Cloud Stream's
//! `spring.cloud.stream.bindings.<name>.*`.

use super::batch::limits_of;
use super::handler::HandlerSpec;
use super::retry::RetryPolicy;
use crate::error::{Error, Result};
use figment::error::{Kind, OneOf};
use figment::providers::{Env, Format, Toml, Yaml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The files [`Configuration::load`] reads from the working directory, when present; a
/// later one overrides an earlier one.
const FILES: [&str; 3] = ["event-binder.toml", "event-binder.yaml", "event-binder.yml"];
/// The prefix of the environment variables read.
const ENV_PREFIX: &str = "EVENT_BINDER_";
/// The name of the environment's [`Metadata`], by which an error tells a variable's name.
const ENV_SOURCE: &str = "environment variable";

/// Overrides of the app's and its handlers' settings, from a TOML or YAML file and
/// `EVENT_BINDER_*` environment variables (the environment winning), as Spring Cloud
/// Stream's `spring.cloud.stream.bindings.<name>.*`; given to an app with
/// [`App::configure`](crate::App::configure).
///
/// ```toml
/// # event-binder.toml
/// concurrency = 16                  # the app's default
/// shutdown_timeout = "30s"
///
/// [bindings.bill]                   # the handler `…::bill`
/// destination = "orders-v2"
/// group = "billing"
/// concurrency = 8
/// max_attempts = 5
/// backoff = { initial = "200ms", max = "10s" }
/// jitter = 0.2
/// retry_through_broker = true
/// timeout = "5s"
/// # batch = { max_size = 100, max_wait = "50ms" }   (batch handlers only)
/// ```
///
/// A key under `bindings` names a handler by its full name (`my_crate::billing::bill` for
/// a `#[handler]` function, what [`HandlerSpec::new`] got otherwise; quote it in TOML:
/// `[bindings."billing::bill"]`), or by the last `::` part of it when no other handler's
/// ends the same. The same settings as environment variables, `__` between the parts of a
/// key: `EVENT_BINDER_BINDINGS__BILL__GROUP=billing`, `EVENT_BINDER_CONCURRENCY=4`.
/// Variables of that prefix outside this shape (the CLI's `EVENT_BINDER_URL`, say) are
/// not read; under `EVENT_BINDER_BINDINGS__`, every key must be one of the settings above.
///
/// A key that is not a setting, a value of the wrong type, a duration that does not read
/// (`"200ms"`, `"10s"`, `"1m"`) or a value the app would refuse is an
/// [`Error::Config`] naming the key and where it came from, when the configuration loads;
/// a binding that names no handler, or a batch setting on a handler of one event at a
/// time, when the app [starts](crate::App::start).
///
/// ```
/// use event_binder_core::figment::providers::{Format, Toml};
/// use event_binder_core::figment::Figment;
/// use event_binder_core::Configuration;
///
/// let configuration = Configuration::from_figment(Figment::from(Toml::string(
///     r#"
///     [bindings.bill]
///     group = "billing-v2"
///     concurrency = 4
///     "#,
/// )))?;
/// assert_eq!(configuration.bindings().collect::<Vec<_>>(), ["bill"]);
///
/// let typo = Configuration::from_figment(Figment::from(Toml::string(
///     "[bindings.bill]\nconcurency = 4",
/// )));
/// assert!(typo.unwrap_err().to_string().contains("bindings.bill.concurency"));
/// # Ok::<(), event_binder_core::Error>(())
/// ```
///
/// Given to an app, it applies when the app starts, to every handler registered:
///
/// ```
/// # async fn demo(channel: impl event_binder_core::Channel) -> event_binder_core::Result<()> {
/// use event_binder_core::{App, Configuration, Context, Handler, HandlerSpec};
///
/// let running = App::new(channel)
///     .handler(Handler::from_fn(
///         HandlerSpec::new("billing::bill", "orders").group("billing"),
///         |_order: serde_json::Value, _ctx: Context| async { Ok::<_, std::io::Error>(()) },
///     ))
///     .configure(Configuration::load()?)
///     .start()
///     .await?;
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Kept to say where each value came from, in errors found after loading.
    figment: Figment,
    settings: Settings,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    concurrency: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    #[serde(default)]
    bindings: BTreeMap<String, Binding>,
}

/// One handler's overrides: the names of [`HandlerSpec`]'s setters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Binding {
    destination: Option<String>,
    group: Option<String>,
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    backoff: Option<Backoff>,
    jitter: Option<f64>,
    retry_through_broker: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    batch: Option<BatchLimits>,
}

/// Either bound alone keeps the other from the handler's retry policy.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backoff {
    #[serde(default, with = "humantime_serde")]
    initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max: Option<Duration>,
}

/// Either limit alone keeps the other from the handler's spec.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLimits {
    max_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    max_wait: Option<Duration>,
}

impl Configuration {
    /// Reads `event-binder.toml`, `event-binder.yaml` and `event-binder.yml` from the
    /// working directory, those present, then the `EVENT_BINDER_*` environment variables
    /// (see [`environment`](Self::environment)), each overriding what came before. No file
    /// and no variable is an empty configuration, which changes nothing.
    pub fn load() -> Result<Self> {
        let figment = FILES
            .iter()
            .filter(|file| Path::new(file).is_file())
            .fold(Figment::new(), merge_file);
        Self::from_figment(figment.merge(Self::environment()))
    }

    /// Reads the file at `path`, TOML or YAML by its extension (`.toml`, `.yaml`, `.yml`),
    /// then the `EVENT_BINDER_*` environment variables, which override it. The file must
    /// exist.
    pub fn file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Config(format!(
                "configuration file {} not found",
                path.display()
            )));
        }
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !["toml", "yaml", "yml"].contains(&extension) {
            return Err(Error::Config(format!(
                "configuration file {}: expected a .toml, .yaml or .yml file",
                path.display()
            )));
        }
        Self::from_figment(merge_file(Figment::new(), path).merge(Self::environment()))
    }

    /// The configuration in `figment`, for full control over where it comes from (other
    /// files, profiles, values set in code with `Figment::merge((key, value))`).
    pub fn from_figment(figment: Figment) -> Result<Self> {
        let settings = figment.extract().map_err(extraction_error)?;
        let configuration = Configuration { figment, settings };
        configuration.check()?;
        Ok(configuration)
    }

    /// The `EVENT_BINDER_*` environment variables as a figment provider, `__` between the
    /// parts of a key (`EVENT_BINDER_BINDINGS__BILL__GROUP` sets `bindings.bill.group`),
    /// for a [`from_figment`](Self::from_figment) of your own. Only `CONCURRENCY`,
    /// `SHUTDOWN_TIMEOUT` and `BINDINGS__…` are read: other tools share the prefix. Names
    /// are lowercased, so a handler is named here by its lowercase name.
    pub fn environment() -> impl Provider {
        Environment(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    key == "concurrency"
                        || key == "shutdown_timeout"
                        || key.starts_with("bindings__")
                })
                .split("__"),
        )
    }

    /// The keys under `bindings`: the handlers it overrides, as named in it.
    pub fn bindings(&self) -> impl Iterator<Item = &str> {
        self.settings.bindings.keys().map(String::as_str)
    }

    /// The app's default concurrency, if set.
    pub(super) fn concurrency(&self) -> Option<usize> {
        self.settings.concurrency
    }

    /// The app's shutdown timeout, if set.
    pub(super) fn shutdown_timeout(&self) -> Option<Duration> {
        self.settings.shutdown_timeout
    }

    /// The specs of `handlers` (each with whether it takes batches) with their bindings'
    /// overrides, in the same order; the retry parts a binding leaves out come from the
    /// handler's policy, which defaults to `retry`.
    pub(super) fn apply(
        &self,
        handlers: &[(&HandlerSpec, bool)],
        retry: RetryPolicy,
    ) -> Result<Vec<HandlerSpec>> {
        let mut specs: Vec<HandlerSpec> = handlers.iter().map(|(s, _)| (*s).clone()).collect();
        let mut claimed: Vec<Option<&str>> = vec![None; handlers.len()];
        for (key, binding) in &self.settings.bindings {
            for index in self.resolve(key, handlers)? {
                if let Some(other) = claimed[index].replace(key) {
                    return Err(self.refuse(
                        &["bindings", key],
                        &format!(
                            "names handler {} as {} does; keep one of the two",
                            specs[index].name(),
                            display_key(&["bindings", other])
                        ),
                    ));
                }
                let is_batch = handlers[index].1;
                specs[index] = self.apply_binding(key, binding, &specs[index], is_batch, retry)?;
            }
        }
        Ok(specs)
    }

    /// The handlers `key` names: those whose full name it is, else the one whose name
    /// ends with it.
    fn resolve(&self, key: &str, handlers: &[(&HandlerSpec, bool)]) -> Result<Vec<usize>> {
        let named = |matches: &dyn Fn(&str) -> bool| -> Vec<usize> {
            (0..handlers.len())
                .filter(|&i| matches(handlers[i].0.name()))
                .collect()
        };
        let full = named(&|name| name == key);
        if !full.is_empty() {
            return Ok(full);
        }
        let short = named(&|name| name.rsplit("::").next() == Some(key));
        let mut names: Vec<&str> = short.iter().map(|&i| handlers[i].0.name()).collect();
        names.dedup();
        match names.len() {
            1 => Ok(short),
            0 => {
                let mut all: Vec<&str> = handlers.iter().map(|(s, _)| s.name()).collect();
                all.sort_unstable();
                all.dedup();
                let all = if all.is_empty() {
                    "none".to_owned()
                } else {
                    all.join(", ")
                };
                Err(self.refuse(
                    &["bindings", key],
                    &format!(
                        "names no handler (a handler's full name, or the last `::` part of it); \
                         the app's handlers: {all}"
                    ),
                ))
            }
            _ => Err(self.refuse(
                &["bindings", key],
                &format!(
                    "names several handlers ({}); use the full name",
                    names.join(", ")
                ),
            )),
        }
    }

    fn apply_binding(
        &self,
        key: &str,
        binding: &Binding,
        spec: &HandlerSpec,
        is_batch: bool,
        retry: RetryPolicy,
    ) -> Result<HandlerSpec> {
        let mut spec = spec.clone();
        if let Some(destination) = &binding.destination {
            spec = spec.with_destination(destination.as_str());
        }
        if let Some(group) = &binding.group {
            spec = spec.group(group.as_str());
        }
        if let Some(concurrency) = binding.concurrency {
            spec = spec.concurrency(concurrency);
        }
        if let Some(max_attempts) = binding.max_attempts {
            spec = spec.max_attempts(max_attempts);
        }
        if let Some(backoff) = binding.backoff {
            let policy = spec.retry_or(retry);
            let initial = backoff.initial.unwrap_or(policy.initial_backoff);
            let max = backoff.max.unwrap_or(policy.max_backoff);
            if initial > max {
                return Err(self.refuse(
                    &["bindings", key, "backoff"],
                    &format!("initial ({initial:?}) is longer than max ({max:?})"),
                ));
            }
            spec = spec.backoff(initial, max);
        }
        if let Some(jitter) = binding.jitter {
            spec = spec.jitter(jitter);
        }
        if let Some(through_broker) = binding.retry_through_broker {
            spec = spec.retry_through_broker(through_broker);
        }
        if let Some(timeout) = binding.timeout {
            spec = spec.timeout(timeout);
        }
        if let Some(batch) = binding.batch {
            if !is_batch {
                return Err(self.refuse(
                    &["bindings", key, "batch"],
                    &format!(
                        "handler {} takes one event at a time; only a batch handler has batch limits",
                        spec.name()
                    ),
                ));
            }
            let (size, wait) = limits_of(&spec);
            spec = spec.batch(
                batch.max_size.unwrap_or(size),
                batch.max_wait.unwrap_or(wait),
            );
        }
        Ok(spec)
    }

    /// Refuses the values the app would refuse, here, where the error can name the key.
    fn check(&self) -> Result<()> {
        let at_least_one = |path: &[&str], value: Option<u64>| match value {
            Some(0) => Err(self.refuse(path, "must be at least 1")),
            _ => Ok(()),
        };
        at_least_one(&["concurrency"], self.settings.concurrency.map(as_u64))?;
        for (key, binding) in &self.settings.bindings {
            let path = |field: &'static str| ["bindings", key.as_str(), field];
            if let Some(destination) = &binding.destination {
                crate::validate_destination(destination)
                    .map_err(|err| self.refuse(&path("destination"), &err.to_string()))?;
            }
            if let Some(group) = &binding.group {
                crate::validate_group(group)
                    .map_err(|err| self.refuse(&path("group"), &err.to_string()))?;
            }
            at_least_one(&path("concurrency"), binding.concurrency.map(as_u64))?;
            at_least_one(&path("max_attempts"), binding.max_attempts.map(u64::from))?;
            if let Some(jitter) = binding.jitter {
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(self.refuse(
                        &path("jitter"),
                        &format!("is {jitter}; it must be a share from 0.0 to 1.0"),
                    ));
                }
            }
            if binding.timeout == Some(Duration::ZERO) {
                return Err(self.refuse(&path("timeout"), "must be longer than 0s"));
            }
            if let Some(batch) = binding.batch {
                let max_size = batch.max_size.map(as_u64);
                at_least_one(&["bindings", key, "batch", "max_size"], max_size)?;
            }
        }
        Ok(())
    }

    /// The error for the value at `path`, saying where it came from.
    fn refuse(&self, path: &[&str], reason: &str) -> Error {
        let metadata = self.figment.find_metadata(&path.join("."));
        Error::Config(format!(
            "{}: {reason}{}",
            display_key(path),
            origin(metadata, path)
        ))
    }
}

fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// `figment` with the file at `path` over it, TOML or YAML by its extension.
fn merge_file(figment: Figment, path: impl AsRef<Path>) -> Figment {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e == "toml") {
        figment.merge(Toml::file_exact(path))
    } else {
        figment.merge(Yaml::file_exact(path))
    }
}

/// The environment, with errors that name the variable (`EVENT_BINDER_BINDINGS__BILL__GROUP`)
/// rather than figment's dotted, uppercased key.
struct Environment(Env);

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE).interpolater(|_: &Profile, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.0.data()
    }
}

/// Every error figment found, each as `key: what is wrong (where it came from)`: figment's
/// own text puts the key last, with its profile (`default.bindings.…`), and an
/// environment variable as a dotted key.
fn extraction_error(error: figment::Error) -> Error {
    let errors: Vec<String> = error
        .into_iter()
        .map(|error| {
            let what = match &error.kind {
                Kind::UnknownField(_, expected) => {
                    format!("unknown setting; expected {}", OneOf(expected))
                }
                kind => kind.to_string(),
            };
            let path: Vec<&str> = error.path.iter().map(String::as_str).collect();
            let key = if path.is_empty() {
                String::from("configuration")
            } else {
                display_key(&path)
            };
            format!("{key}: {what}{}", origin(error.metadata.as_ref(), &path))
        })
        .collect();
    Error::Config(errors.join("; "))
}

/// A key as written in TOML: parts joined by `.`, a part with other characters than
/// letters, digits, `-` and `_` (a handler's `::`) quoted.
fn display_key(path: &[&str]) -> String {
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    path.iter()
        .map(|part| {
            if plain(part) {
                (*part).to_owned()
            } else {
                format!("{part:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// ` (in event-binder.toml)`, ` (from environment variable EVENT_BINDER_…)`: where the
/// value at `path` came from, if known.
fn origin(metadata: Option<&Metadata>, path: &[&str]) -> String {
    match metadata {
        None => String::new(),
        Some(metadata) if metadata.name == ENV_SOURCE => format!(
            " (from environment variable {})",
            metadata.interpolate(&Profile::Default, path)
        ),
        Some(metadata) => match &metadata.source {
            Some(source) => format!(" (in {source})"),
            None => format!(" (from {})", metadata.name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<Configuration> {
        Configuration::from_figment(Figment::from(Toml::string(text)))
    }

    fn refusal(result: Result<Configuration>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    fn specs() -> Vec<(HandlerSpec, bool)> {
        vec![
            (
                HandlerSpec::new("shop::billing::bill", "orders").group("billing"),
                false,
            ),
            (HandlerSpec::new("shop::stock::reserve", "orders"), true),
            (HandlerSpec::new("shop::audit::bill", "payments"), false),
            (HandlerSpec::new("ship", "orders"), false),
        ]
    }

    fn apply(configuration: &Configuration) -> Result<Vec<HandlerSpec>> {
        let specs = specs();
        let handlers: Vec<_> = specs.iter().map(|(s, b)| (s, *b)).collect();
        configuration.apply(&handlers, RetryPolicy::default())
    }

    #[test]
    fn every_setting_reaches_the_spec() {
        let configuration = toml(
            r#"
            concurrency = 3
            shutdown_timeout = "1m"
            [bindings."shop::billing::bill"]
            destination = "orders-v2"
            group = "billing-v2"
            concurrency = 8
            max_attempts = 5
            backoff = { initial = "200ms", max = "10s" }
            jitter = 0.2
            retry_through_broker = true
            timeout = "5s"
            [bindings.reserve]
            batch = { max_size = 64 }
            "#,
        )
        .unwrap();
        assert_eq!(configuration.concurrency(), Some(3));
        assert_eq!(
            configuration.shutdown_timeout(),
            Some(Duration::from_secs(60))
        );
        let specs = apply(&configuration).unwrap();
        let bill = &specs[0];
        assert_eq!(bill.name(), "shop::billing::bill");
        assert_eq!(bill.destination(), "orders-v2");
        assert_eq!(bill.group_name(), Some("billing-v2"));
        assert_eq!(bill.concurrency_or(1), 8);
        assert_eq!(bill.call_timeout(), Some(Duration::from_secs(5)));
        let policy = bill.retry_or(RetryPolicy::default());
        assert_eq!(policy.max_attempts, 5);
        assert_eq!(policy.initial_backoff, Duration::from_millis(200));
        assert_eq!(policy.max_backoff, Duration::from_secs(10));
        assert_eq!(policy.jitter, 0.2);
        assert!(policy.through_broker);
        // The wait is the default's, the size the configuration's.
        assert_eq!(
            specs[1].batch_limits(),
            Some((64, Duration::from_millis(100)))
        );
        assert_eq!(specs[2..], specs_only()[2..]);
    }

    fn specs_only() -> Vec<HandlerSpec> {
        specs().into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn one_bound_of_the_backoff_keeps_the_other() {
        let configuration = toml("[bindings.ship]\nbackoff = { max = \"30s\" }").unwrap();
        let policy = apply(&configuration).unwrap()[3].retry_or(RetryPolicy::default());
        assert_eq!(policy.initial_backoff, Duration::from_millis(100));
        assert_eq!(policy.max_backoff, Duration::from_secs(30));

        let inverted = toml("[bindings.ship]\nbackoff = { initial = \"1m\" }").unwrap();
        let message = apply(&inverted).unwrap_err().to_string();
        assert!(message.contains("bindings.ship.backoff: initial (60s) is longer than max (10s)"));
    }

    #[test]
    fn an_empty_configuration_changes_nothing() {
        let configuration = Configuration::from_figment(Figment::new()).unwrap();
        assert_eq!(configuration.concurrency(), None);
        assert_eq!(apply(&configuration).unwrap(), specs_only());
    }

    #[test]
    fn names_resolve_by_full_name_or_unique_last_part() {
        let ambiguous = refusal(toml("[bindings.bill]\nconcurrency = 2").and_then(|c| {
            apply(&c)?;
            Ok(c)
        }));
        assert!(ambiguous.contains("bindings.bill: names several handlers"));
        assert!(ambiguous.contains("shop::audit::bill"));

        let unknown = refusal(toml("[bindings.bil]\nconcurrency = 2").and_then(|c| {
            apply(&c)?;
            Ok(c)
        }));
        assert!(unknown.contains("bindings.bil: names no handler"));
        assert!(unknown.contains("ship, shop::audit::bill, shop::billing::bill"));

        let twice = toml("[bindings.ship]\nconcurrency = 2\n[bindings.\"ship\"]\ngroup = \"a\"");
        // TOML itself refuses a table defined twice.
        assert!(twice.is_err());

        let both = toml(
            "[bindings.reserve]\nconcurrency = 2\n[bindings.\"shop::stock::reserve\"]\nconcurrency = 3",
        )
        .unwrap();
        let message = apply(&both).unwrap_err().to_string();
        assert!(message.contains("names handler shop::stock::reserve as bindings.reserve does"));
    }

    #[test]
    fn errors_name_the_key() {
        let typo = refusal(toml("[bindings.bill]\nconcurency = 4"));
        assert!(
            typo.starts_with("bindings.bill.concurency: unknown setting"),
            "{typo}"
        );
        assert!(typo.contains("`concurrency`"), "{typo}");

        let duration = refusal(toml("[bindings.bill]\ntimeout = \"5 parsecs\""));
        assert!(
            duration.starts_with("bindings.bill.timeout: "),
            "{duration}"
        );

        let nested = refusal(toml("[bindings.bill]\nbatch = { size = 3 }"));
        assert!(
            nested.starts_with("bindings.bill.batch.size: unknown setting"),
            "{nested}"
        );

        let wrong_type = refusal(toml("concurrency = \"many\""));
        assert!(
            wrong_type.starts_with("concurrency: invalid type"),
            "{wrong_type}"
        );

        let top = refusal(toml("concurency = 4"));
        assert!(top.starts_with("concurency: unknown setting"), "{top}");
    }

    #[test]
    fn values_the_app_would_refuse_are_refused_by_key() {
        let cases = [
            ("concurrency = 0", "concurrency: must be at least 1"),
            (
                "[bindings.b]\nconcurrency = 0",
                "bindings.b.concurrency: must be at least 1",
            ),
            (
                "[bindings.b]\nmax_attempts = 0",
                "bindings.b.max_attempts: must be at least 1",
            ),
            ("[bindings.b]\njitter = 1.5", "bindings.b.jitter: is 1.5"),
            (
                "[bindings.b]\ntimeout = \"0s\"",
                "bindings.b.timeout: must be longer",
            ),
            (
                "[bindings.b]\ngroup = \"a.b\"",
                "bindings.b.group: invalid group name \"a.b\"",
            ),
            (
                "[bindings.b]\ndestination = \"\"",
                "bindings.b.destination: invalid destination",
            ),
            (
                "[bindings.\"x::b\"]\nbatch = { max_size = 0 }",
                "bindings.\"x::b\".batch.max_size: must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            let message = refusal(toml(text));
            assert!(message.starts_with(expected), "{text}: {message}");
            assert!(message.ends_with("(from TOML source string)"), "{message}");
        }
    }

    #[test]
    fn batch_limits_on_a_handler_of_one_event_are_refused() {
        let configuration = toml("[bindings.ship]\nbatch = { max_size = 10 }").unwrap();
        let message = apply(&configuration).unwrap_err().to_string();
        assert!(message.contains("bindings.ship.batch: handler ship takes one event at a time"));
    }

    #[test]
    fn values_set_in_code_override_the_file() {
        let figment = Figment::from(Toml::string("[bindings.ship]\ngroup = \"a\""))
            .merge(("bindings.ship.group", "b"));
        let configuration = Configuration::from_figment(figment).unwrap();
        assert_eq!(apply(&configuration).unwrap()[3].group_name(), Some("b"));
    }

    #[test]
    fn keys_with_other_characters_are_quoted() {
        assert_eq!(
            display_key(&["bindings", "a::b", "group"]),
            "bindings.\"a::b\".group"
        );
        assert_eq!(display_key(&["bindings", "bill-2_x"]), "bindings.bill-2_x");
    }
}
