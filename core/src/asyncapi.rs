//! What travels through each handler, and (cargo feature `asyncapi`) the
//! [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0) document of
//! an app, generated from its registered handlers.
//!
//! Every [`HandlerSpec`](crate::HandlerSpec) may carry the [`PayloadType`] of its events,
//! and a processor's spec the type of what it publishes: `#[handler]` fills both in from
//! the function's signature, a hand-built spec takes them from
//! [`HandlerSpec::payload_type`](crate::HandlerSpec::payload_type) (or, with the feature,
//! `HandlerSpec::payload`). With the feature, a type that implements `schemars::JsonSchema`
//! carries its JSON Schema too, and `App::asyncapi` describes the app: one channel per
//! destination, one `receive` operation per handler, one `send` operation per processor's
//! output.

use std::fmt;
use std::marker::PhantomData;

#[cfg(feature = "asyncapi")]
pub use document::{Document, Info};

/// The Rust type of a handler's events (or of what a processor publishes): its name, and,
/// with the cargo feature `asyncapi`, its JSON Schema where the type has one.
///
/// ```
/// use event_binder_core::PayloadType;
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// let payload = PayloadType::named::<OrderPlaced>();
/// assert!(payload.type_name().ends_with("OrderPlaced"));
/// assert!(!payload.has_schema());
/// ```
#[derive(Clone, Copy)]
pub struct PayloadType {
    type_name: &'static str,
    #[cfg(feature = "asyncapi")]
    schema: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
}

impl PayloadType {
    /// A type known by its name alone: its payload is documented as any JSON.
    pub fn named<T: ?Sized>() -> Self {
        PayloadType {
            type_name: std::any::type_name::<T>(),
            #[cfg(feature = "asyncapi")]
            schema: None,
        }
    }

    /// A type with its JSON Schema.
    ///
    /// ```
    /// use event_binder_core::PayloadType;
    ///
    /// #[derive(schemars::JsonSchema)]
    /// struct OrderPlaced { order_id: u64 }
    ///
    /// assert!(PayloadType::of::<OrderPlaced>().has_schema());
    /// ```
    #[cfg(feature = "asyncapi")]
    pub fn of<T: ?Sized + schemars::JsonSchema>() -> Self {
        PayloadType {
            type_name: std::any::type_name::<T>(),
            schema: Some(schemars::SchemaGenerator::subschema_for::<T>),
        }
    }

    /// The type's full path, as [`std::any::type_name`] gives it.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Whether the type's JSON Schema is known (never, without the feature `asyncapi`).
    pub fn has_schema(&self) -> bool {
        #[cfg(feature = "asyncapi")]
        return self.schema.is_some();
        #[cfg(not(feature = "asyncapi"))]
        false
    }

    /// The type's schema, or a `$ref` to it whose definition (and those it refers to) the
    /// generator keeps; `None` for a type known by name alone.
    #[cfg(feature = "asyncapi")]
    pub fn json_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        self.schema.map(|schema| schema(generator))
    }
}

/// Two payload types are equal when they name the same type, schema or not (schema functions
/// cannot be compared: one type's may live at several addresses).
impl PartialEq for PayloadType {
    fn eq(&self, other: &Self) -> bool {
        self.type_name == other.type_name
    }
}

impl fmt::Debug for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadType")
            .field("type_name", &self.type_name)
            .field("has_schema", &self.has_schema())
            .finish()
    }
}

/// A [`HandlerSpec`](crate::HandlerSpec)'s payload types. They document the handler and take no part in the
/// spec's equality, which says where and how the handler runs: a spec written by hand from
/// a `#[handler]` attribute equals the one the macro makes, which also names the types of
/// the function's signature.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Payloads {
    pub(crate) event: Option<PayloadType>,
    pub(crate) output: Option<PayloadType>,
}

impl PartialEq for Payloads {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The `#[handler]` macro's question "does this type have a JSON Schema?", answered by
/// method resolution (autoref specialization): `(&SchemaProbe::<T>(PhantomData)).payload_type()`
/// finds [`SchemaOf`] when `T: JsonSchema` and the feature `asyncapi` is on, [`NameOf`]
/// otherwise. So the macro emits the same code whatever the features, and a type without a
/// schema still compiles.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct SchemaProbe<T: ?Sized>(pub PhantomData<fn() -> PhantomData<T>>);

/// The answer for a type with a schema.
#[doc(hidden)]
pub trait SchemaOf {
    fn payload_type(&self) -> PayloadType;
}

/// The answer for any other type: its name alone.
#[doc(hidden)]
pub trait NameOf {
    fn payload_type(&self) -> PayloadType;
}

#[cfg(feature = "asyncapi")]
impl<T: ?Sized + schemars::JsonSchema> SchemaOf for SchemaProbe<T> {
    fn payload_type(&self) -> PayloadType {
        PayloadType::of::<T>()
    }
}

impl<T: ?Sized> NameOf for &SchemaProbe<T> {
    fn payload_type(&self) -> PayloadType {
        PayloadType::named::<T>()
    }
}

#[cfg(feature = "asyncapi")]
mod document {
    use super::PayloadType;
    use crate::error::{Error, Result};
    use crate::runtime::HandlerSpec;
    use crate::url::ChannelUrl;
    use schemars::generate::SchemaSettings;
    use schemars::SchemaGenerator;
    use serde::ser::{Serialize, SerializeMap, Serializer};
    use serde_json::{json, Map, Value};
    use std::collections::{BTreeMap, HashMap, HashSet};

    /// The version of the AsyncAPI specification the documents follow.
    const ASYNCAPI_VERSION: &str = "3.0.0";
    /// Where the payloads' schemas go: `$ref`s point there.
    const SCHEMAS_PATH: &str = "/components/schemas";
    /// The Kafka bindings version whose operation binding carries a group id.
    const KAFKA_BINDING_VERSION: &str = "0.5.0";

    /// What an AsyncAPI document says about the application: its title and version, a
    /// description, and the servers (brokers) it runs on.
    ///
    /// ```
    /// use event_binder_core::asyncapi::Info;
    ///
    /// let info = Info::new("billing", "1.2.0")
    ///     .description("Bills every order.")
    ///     .server("production", "amqps://billing:s3cret@rabbit.example.com/shop")?;
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    #[derive(Debug, Clone, PartialEq)]
    pub struct Info {
        title: String,
        version: String,
        description: Option<String>,
        servers: Vec<(String, Value)>,
    }

    impl Info {
        /// The application's title and version (of the application, not of AsyncAPI).
        pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
            Info {
                title: title.into(),
                version: version.into(),
                description: None,
                servers: Vec::new(),
            }
        }

        /// What the application does (CommonMark).
        pub fn description(mut self, description: impl Into<String>) -> Self {
            self.description = Some(description.into());
            self
        }

        /// A server the application runs on, from its channel URL (`amqp://…`, `amqps://…`,
        /// `kafka://…`, `sns-sqs://…`, `memory://`). The document shows its host, port and
        /// path (an AMQP virtual host), never its user info, password or query parameters.
        ///
        /// Fails with [`Error::InvalidUrl`] for a URL that does not parse.
        pub fn server(mut self, name: impl Into<String>, url: &str) -> Result<Self> {
            let url = ChannelUrl::parse(url)?;
            self.servers.push((name.into(), server(&url)));
            Ok(self)
        }
    }

    /// An AsyncAPI server object for a channel URL. The protocols are AsyncAPI's names where
    /// it has one (`amqp`, `amqps`, `kafka`, `kafka-secure`, `sns`); `memory` for the
    /// in-process bus.
    fn server(url: &ChannelUrl) -> Value {
        let parsed = url.as_url();
        let param = |name: &str| {
            parsed
                .query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        let (protocol, host, description) = match url.scheme() {
            "kafka" => {
                // TLS is what `kafka-secure` means; SASL over plain TCP is still `kafka`.
                let secure = param("security.protocol")
                    .is_some_and(|protocol| protocol.to_ascii_lowercase().contains("ssl"));
                let protocol = if secure { "kafka-secure" } else { "kafka" };
                (
                    protocol.to_owned(),
                    url.hosts().join(","),
                    "Apache Kafka: each destination is a topic, each group a consumer group.",
                )
            }
            "sns-sqs" => {
                let region = parsed.host_str().unwrap_or_default();
                // An endpoint (an emulator) is shown by its host alone, like every URL here.
                let host = param("endpoint")
                    .and_then(|endpoint| ChannelUrl::parse(&endpoint).ok())
                    .and_then(|endpoint| endpoint.hosts().first().cloned())
                    .unwrap_or_else(|| format!("sns.{region}.amazonaws.com"));
                (
                    "sns".to_owned(),
                    host,
                    "Amazon SNS+SQS: each destination is an SNS topic, each group an SQS queue \
                     subscribed to it.",
                )
            }
            "memory" => (
                "memory".to_owned(),
                url.hosts()
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "localhost".into()),
                "The in-process bus of event-binder: every handler runs in this process.",
            ),
            scheme => (
                scheme.to_owned(),
                url.hosts().join(","),
                "RabbitMQ: each destination is a topic exchange, each group a durable queue \
                 bound to it.",
            ),
        };
        let mut server = json!({
            "host": host,
            "protocol": protocol,
            "description": description,
        });
        let path = parsed.path();
        if !path.is_empty() && path != "/" {
            server["pathname"] = path.into();
        }
        server
    }

    /// An AsyncAPI 3.0 document describing an app: made by
    /// [`App::asyncapi`](crate::App::asyncapi), or by [`from_specs`](Self::from_specs) from
    /// handler specs alone.
    ///
    /// Each destination a handler reads or a processor writes is a channel (its address is
    /// the destination's name), with one message per payload type that travels there. Each
    /// handler is a `receive` operation on its destination (its group in the extension
    /// `x-event-binder-group`, and in a Kafka operation binding where a Kafka server is
    /// declared); each processor's output a `send` operation. Payloads are JSON Schema draft
    /// 07 (what the AsyncAPI Schema Object extends), their shared definitions under
    /// `components/schemas`. A payload type without a JSON Schema is documented as any JSON,
    /// with a description saying so. Dead letters are not described.
    ///
    /// ```
    /// use event_binder_core::asyncapi::{Document, Info};
    /// use event_binder_core::HandlerSpec;
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct OrderPlaced { order_id: u64 }
    ///
    /// #[derive(serde::Serialize, schemars::JsonSchema)]
    /// struct InvoiceIssued { number: String }
    ///
    /// let bill = HandlerSpec::new("bill", "orders")
    ///     .group("billing")
    ///     .output("invoices")
    ///     .payload::<OrderPlaced>()
    ///     .output_payload::<InvoiceIssued>();
    /// let doc = Document::from_specs(Info::new("billing", "1.0.0"), [&bill]);
    ///
    /// let value = doc.as_value();
    /// assert_eq!(value["asyncapi"], "3.0.0");
    /// assert_eq!(value["channels"]["orders"]["address"], "orders");
    /// assert_eq!(value["operations"]["bill"]["action"], "receive");
    /// assert_eq!(value["operations"]["bill.send"]["action"], "send");
    /// let order = &value["components"]["schemas"]["OrderPlaced"];
    /// assert_eq!(order["properties"]["order_id"]["type"], "integer");
    /// assert!(doc.to_yaml()?.starts_with("asyncapi: 3.0.0"));
    /// # Ok::<(), event_binder_core::Error>(())
    /// ```
    #[derive(Debug, Clone, PartialEq)]
    pub struct Document {
        value: Value,
    }

    impl Document {
        /// The document of handlers with these specs, in this order.
        pub fn from_specs<'a>(
            info: Info,
            specs: impl IntoIterator<Item = &'a HandlerSpec>,
        ) -> Self {
            let mut builder = Builder::new(&info);
            for spec in specs {
                builder.add(spec);
            }
            Document {
                value: builder.finish(info),
            }
        }

        /// The document as JSON.
        pub fn as_value(&self) -> &Value {
            &self.value
        }

        /// The document as JSON, owned.
        pub fn into_value(self) -> Value {
            self.value
        }

        /// The document as pretty-printed JSON.
        pub fn to_json(&self) -> String {
            // A `Value` always serializes: its keys are strings.
            serde_json::to_string_pretty(&InOrder(&self.value)).unwrap_or_default()
        }

        /// The document as YAML, the format AsyncAPI's tools show by default.
        ///
        /// Fails with [`Error::Encode`] if the YAML serializer fails (it has no reason to:
        /// the document is plain JSON).
        pub fn to_yaml(&self) -> Result<String> {
            yaml_serde::to_string(&InOrder(&self.value))
                .map_err(|error| Error::Encode(Box::new(error)))
        }
    }

    /// A document with its top-level fields in the specification's order (`asyncapi`,
    /// `info`, `servers`, …), which reads better than the alphabetical order of a `Value`.
    struct InOrder<'a>(&'a Value);

    impl Serialize for InOrder<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            const ORDER: [&str; 8] = [
                "asyncapi",
                "id",
                "info",
                "servers",
                "defaultContentType",
                "channels",
                "operations",
                "components",
            ];
            let Some(fields) = self.0.as_object() else {
                return self.0.serialize(serializer);
            };
            let mut map = serializer.serialize_map(Some(fields.len()))?;
            for key in ORDER {
                if let Some(value) = fields.get(key) {
                    map.serialize_entry(key, value)?;
                }
            }
            for (key, value) in fields {
                if !ORDER.contains(&key.as_str()) {
                    map.serialize_entry(key, value)?;
                }
            }
            map.end()
        }
    }

    /// Ids unique within one map of the document, made of the characters AsyncAPI allows
    /// in component keys (`A-Z a-z 0-9 . - _`), so that each is a valid `$ref` segment too.
    #[derive(Default)]
    struct Ids {
        taken: HashSet<String>,
    }

    impl Ids {
        fn claim(&mut self, wanted: &str) -> String {
            let mut base = String::with_capacity(wanted.len());
            for c in wanted.replace("::", ".").chars() {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    base.push(c);
                } else if !base.ends_with('_') {
                    base.push('_');
                }
            }
            let base = match base.trim_matches('_') {
                "" => "unnamed".to_owned(),
                trimmed => trimmed.to_owned(),
            };
            let mut id = base.clone();
            let mut n = 1;
            while self.taken.contains(&id) {
                n += 1;
                id = format!("{base}_{n}");
            }
            self.taken.insert(id.clone());
            id
        }
    }

    /// One destination's channel: its id and the ids of its messages, in order of first use.
    struct Channel {
        id: String,
        messages: Vec<String>,
    }

    struct Builder {
        generator: SchemaGenerator,
        kafka: bool,
        channels: BTreeMap<String, Channel>,
        channel_ids: Ids,
        /// Message ids by payload type name (`None`: a handler that declared none).
        messages_by_type: HashMap<Option<&'static str>, String>,
        message_ids: Ids,
        messages: Map<String, Value>,
        operations: Map<String, Value>,
        operation_ids: Ids,
    }

    impl Builder {
        fn new(info: &Info) -> Self {
            let settings = SchemaSettings::draft07().with(|settings| {
                settings.definitions_path = SCHEMAS_PATH.into();
            });
            Builder {
                generator: settings.into_generator(),
                kafka: info.servers.iter().any(|(_, server)| {
                    server["protocol"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("kafka"))
                }),
                channels: BTreeMap::new(),
                channel_ids: Ids::default(),
                messages_by_type: HashMap::new(),
                message_ids: Ids::default(),
                messages: Map::new(),
                operations: Map::new(),
                operation_ids: Ids::default(),
            }
        }

        fn add(&mut self, spec: &HandlerSpec) {
            let name = spec.name();
            let group = spec.group_name();
            let (channel, message) = self.route(spec.destination(), spec.event_type());
            let summary = match group {
                Some(group) => format!("Handler {name}, in group {group}."),
                None => {
                    format!("Handler {name}, anonymous: it sees what is published while it runs.")
                }
            };
            let mut operation = json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{message}") }],
                "summary": summary,
                "description": receive_description(spec),
            });
            if let Some(group) = group {
                operation["x-event-binder-group"] = group.into();
                if self.kafka {
                    operation["bindings"] = json!({ "kafka": {
                        "groupId": { "type": "string", "enum": [group] },
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }});
                }
            }
            let id = self.operation_ids.claim(name);
            self.operations.insert(id.clone(), operation);

            if let Some(output) = spec.output_destination() {
                let (channel, message) = self.route(output, spec.output_event_type());
                let operation = json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{channel}") },
                    "messages": [{ "$ref": format!("#/channels/{channel}/messages/{message}") }],
                    "summary": format!("What handler {name} publishes."),
                    "description": format!(
                        "Handler {name} publishes what it returns for each event it \
                         handles (operation {id}) to destination {output}, before the event \
                         is acknowledged."
                    ),
                });
                let send = self.operation_ids.claim(&format!("{id}.send"));
                self.operations.insert(send, operation);
            }
        }

        /// The ids of the destination's channel and of the payload's message in it, made
        /// on first use.
        fn route(&mut self, destination: &str, payload: Option<&PayloadType>) -> (String, String) {
            let message = self.message(payload);
            let channel = match self.channels.get_mut(destination) {
                Some(channel) => channel,
                None => {
                    let id = self.channel_ids.claim(destination);
                    let channel = Channel {
                        id,
                        messages: Vec::new(),
                    };
                    self.channels
                        .entry(destination.to_owned())
                        .or_insert(channel)
                }
            };
            if !channel.messages.contains(&message) {
                channel.messages.push(message.clone());
            }
            (channel.id.clone(), message)
        }

        /// The id of the message of this payload type under `components/messages`, made on
        /// first use.
        fn message(&mut self, payload: Option<&PayloadType>) -> String {
            let key = payload.map(PayloadType::type_name);
            if let Some(id) = self.messages_by_type.get(&key) {
                return id.clone();
            }
            let (wanted, message) = match payload {
                Some(payload) => {
                    let short = short_name(payload.type_name());
                    let message = match payload.json_schema(&mut self.generator) {
                        Some(schema) => self.schema_message(&short, schema),
                        None => untyped_message(&short, payload),
                    };
                    (short, message)
                }
                None => (
                    "Undeclared".to_owned(),
                    json!({
                        "name": "Undeclared",
                        "title": "Undeclared payload",
                        "summary": "A payload whose type the handler did not declare.",
                        "description": "The handler was built by hand without a payload type \
                            (`HandlerSpec::payload`): any JSON.",
                        "contentType": crate::content_type::JSON,
                        "payload": {},
                    }),
                ),
            };
            let id = self.message_ids.claim(&wanted);
            self.messages.insert(id.clone(), message);
            self.messages_by_type.insert(key, id.clone());
            id
        }

        fn schema_message(&mut self, short: &str, schema: schemars::Schema) -> Value {
            let mut schema = schema;
            for transform in self.generator.transforms_mut() {
                transform.transform(&mut schema);
            }
            let payload = match schema.to_value() {
                // `true` (any value, as for `serde_json::Value`) as an object schema.
                Value::Bool(true) => json!({}),
                payload => payload,
            };
            json!({
                "name": short,
                "title": short,
                "summary": format!("One {short} event, as JSON."),
                "contentType": crate::content_type::JSON,
                "payload": payload,
            })
        }

        fn finish(mut self, info: Info) -> Value {
            let mut document = json!({
                "asyncapi": ASYNCAPI_VERSION,
                "info": { "title": info.title, "version": info.version },
            });
            if let Some(description) = info.description {
                document["info"]["description"] = description.into();
            }
            if !info.servers.is_empty() {
                let mut servers = Map::new();
                let mut ids = Ids::default();
                for (name, server) in info.servers {
                    servers.insert(ids.claim(&name), server);
                }
                document["servers"] = servers.into();
            }
            let mut channels = Map::new();
            for (destination, channel) in &self.channels {
                let messages: Map<String, Value> = channel
                    .messages
                    .iter()
                    .map(|id| {
                        let reference = json!({ "$ref": format!("#/components/messages/{id}") });
                        (id.clone(), reference)
                    })
                    .collect();
                channels.insert(
                    channel.id.clone(),
                    json!({
                        "address": destination,
                        "title": destination,
                        "description": format!("Destination {destination}."),
                        "messages": messages,
                    }),
                );
            }
            document["channels"] = channels.into();
            document["operations"] = self.operations.into();
            let mut components = Map::new();
            let schemas = self.generator.take_definitions(true);
            if !schemas.is_empty() {
                components.insert("schemas".into(), schemas.into());
            }
            if !self.messages.is_empty() {
                components.insert("messages".into(), self.messages.into());
            }
            if !components.is_empty() {
                document["components"] = components.into();
            }
            document
        }
    }

    fn receive_description(spec: &HandlerSpec) -> String {
        let name = spec.name();
        let destination = spec.destination();
        let mut text = match spec.group_name() {
            Some(group) => format!(
                "Handler {name} receives every event published to destination {destination} \
                 as a member of group {group}: every group gets every event, and inside a \
                 group each event goes to one member."
            ),
            None => format!(
                "Handler {name} receives the events published to destination {destination} \
                 while it runs, on an anonymous subscription."
            ),
        };
        if let Some((size, _)) = spec.batch_limits() {
            text.push_str(&format!(" It takes them in batches of up to {size}."));
        }
        text
    }

    /// A type's name without its module paths: `Vec<Line>` for `alloc::vec::Vec<shop::Line>`.
    fn short_name(type_name: &str) -> String {
        let mut short = String::with_capacity(type_name.len());
        let mut word = String::new();
        for c in type_name.chars() {
            if c.is_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
            } else {
                short.push_str(word.rsplit("::").next().unwrap_or_default());
                word.clear();
                short.push(c);
            }
        }
        short.push_str(word.rsplit("::").next().unwrap_or_default());
        short
    }

    fn untyped_message(short: &str, payload: &PayloadType) -> Value {
        let type_name = payload.type_name();
        let (content_type, description) = if type_name == std::any::type_name::<crate::Raw>() {
            (
                "application/octet-stream",
                "Any bytes: the handler takes the raw payload.".to_owned(),
            )
        } else {
            (
                crate::content_type::JSON,
                format!(
                    "The Rust type `{type_name}` has no JSON Schema (it does not implement \
                     `schemars::JsonSchema`): any JSON."
                ),
            )
        };
        json!({
            "name": short,
            "title": short,
            "summary": format!("One {short} event."),
            "description": description,
            "contentType": content_type,
            "payload": {},
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ids_keep_allowed_characters_and_stay_unique() {
            let mut ids = Ids::default();
            assert_eq!(ids.claim("shop::billing::bill"), "shop.billing.bill");
            assert_eq!(ids.claim("orders/eu west"), "orders_eu_west");
            assert_eq!(ids.claim("orders-eu_west"), "orders-eu_west");
            assert_eq!(ids.claim("shop::billing::bill"), "shop.billing.bill_2");
            assert_eq!(ids.claim("<>"), "unnamed");
        }

        #[test]
        fn short_names_drop_module_paths() {
            struct Line;
            let vec = PayloadType::named::<Vec<Line>>();
            assert_eq!(short_name(vec.type_name()), "Vec<Line>");
            assert_eq!(short_name("u64"), "u64");
        }

        #[test]
        fn servers_show_no_secret() {
            let info = Info::new("t", "1")
                .server(
                    "rabbit",
                    "amqps://bob:s3cret@rabbit.example.com:5671/shop?token=t0k",
                )
                .unwrap()
                .server(
                    "kafka",
                    "kafka://k1:9092,k2:9092?security.protocol=SASL_SSL&sasl.password=pw",
                )
                .unwrap()
                .server("aws", "sns-sqs://eu-west-1")
                .unwrap()
                .server(
                    "local",
                    "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566",
                )
                .unwrap()
                .server("bus", "memory://")
                .unwrap();
            let doc = Document::from_specs(info, []);
            let servers = &doc.as_value()["servers"];
            let text = doc.to_json();
            for secret in ["s3cret", "t0k", "pw", "bob"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert_eq!(servers["rabbit"]["protocol"], "amqps");
            assert_eq!(servers["rabbit"]["host"], "rabbit.example.com:5671");
            assert_eq!(servers["rabbit"]["pathname"], "/shop");
            assert_eq!(servers["kafka"]["protocol"], "kafka-secure");
            assert_eq!(servers["kafka"]["host"], "k1:9092,k2:9092");
            assert_eq!(servers["aws"]["host"], "sns.eu-west-1.amazonaws.com");
            assert_eq!(servers["local"]["host"], "127.0.0.1:4566");
            assert_eq!(servers["bus"]["protocol"], "memory");
            assert!(Info::new("t", "1").server("x", "not a url").is_err());
        }

        #[test]
        fn handlers_on_one_destination_share_its_channel_and_message() {
            #[derive(schemars::JsonSchema)]
            #[allow(dead_code)]
            struct Order {
                id: u64,
            }
            let a = HandlerSpec::new("a", "orders")
                .group("one")
                .payload::<Order>();
            let b = HandlerSpec::new("b", "orders")
                .group("two")
                .payload::<Order>();
            let c = HandlerSpec::new("c", "orders");
            let doc = Document::from_specs(Info::new("t", "1"), [&a, &b, &c]);
            let value = doc.as_value();
            let channels = value["channels"].as_object().unwrap();
            assert_eq!(channels.len(), 1);
            let messages = channels["orders"]["messages"].as_object().unwrap();
            assert_eq!(messages.keys().collect::<Vec<_>>(), ["Order", "Undeclared"]);
            assert_eq!(value["operations"]["b"]["x-event-binder-group"], "two");
            assert!(value["operations"]["c"]
                .get("x-event-binder-group")
                .is_none());
            assert_eq!(
                value["operations"]["a"]["messages"][0]["$ref"],
                "#/channels/orders/messages/Order"
            );
        }

        #[test]
        fn a_kafka_server_adds_group_bindings() {
            let info = Info::new("t", "1").server("k", "kafka://k:9092").unwrap();
            let spec = HandlerSpec::new("a", "orders").group("billing");
            let doc = Document::from_specs(info, [&spec]);
            let binding = &doc.as_value()["operations"]["a"]["bindings"]["kafka"];
            assert_eq!(binding["groupId"]["enum"][0], "billing");
        }
    }
}
