//! Messages to AMQP and back: body, basic properties and the header table.

use crate::error::BACKEND;
use bytes::Bytes;
use event_binder_core::{header, time_from_millis, Error, Message, Result};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

/// AMQP delivery mode 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;
/// Frame type, channel, size and end marker around every frame.
const FRAME_OVERHEAD: usize = 8;
/// Class id, weight and body size before the properties of a content header.
const CONTENT_HEADER_FIXED: usize = 12;
/// The longest AMQP short string (routing keys, message ids, header names, …).
const SHORT_STRING_MAX: usize = 255;

/// The namespace of ids derived for messages that arrive without one.
const DERIVED_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6c1f_36c4_9d0e_4f59_8a4e_0b52_7e3d_a1c9);

/// Headers added by RabbitMQ itself, which change between deliveries of one message.
const BROKER_HEADERS: [&str; 4] = [
    "x-delivery-count",
    "x-death",
    "x-first-death",
    "x-last-death",
];

/// The header in which a quorum queue counts the earlier deliveries of a message (absent
/// on the first). It is the delivery's `attempt`, not a header of the message: taken out
/// on receipt, refused on sending.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// The header in which the copy of a message handed back with a delay (see
/// [`encode_delayed`]) carries the attempt of the delivery that was handed back: the
/// deliveries of the message before the copy, which the queue the copy returns to cannot
/// know of. It is the delivery's `attempt`, not a header of the message: taken out on
/// receipt, refused on sending.
pub(crate) const EARLIER_DELIVERIES: &str = "message-deliveries";

/// Refuses a header of the message that would forge a delivery's attempt.
fn refuse_reserved(name: &str) -> Result<()> {
    let reason = match name {
        DELIVERY_COUNT => "RabbitMQ's quorum queues count deliveries in it",
        EARLIER_DELIVERIES => "it carries the deliveries before a delayed redelivery",
        _ => return Ok(()),
    };
    Err(Error::InvalidName {
        kind: "header",
        name: name.to_owned(),
        reason: format!("{reason} (the delivery's attempt); a message cannot set it"),
    })
}

/// Whether RabbitMQ added the header on the message's way through a queue.
fn is_broker_header(name: &str) -> bool {
    BROKER_HEADERS.iter().any(|broker| name.starts_with(broker))
}

/// The earlier deliveries a quorum queue counted for this one, from its `x-delivery-count`
/// header (whatever integer type the broker used); `None` when absent or not a count.
pub(crate) fn delivery_count(properties: &BasicProperties) -> Option<u64> {
    count(properties, DELIVERY_COUNT)
}

/// The deliveries of the message before the delay queue this one came back from: its
/// [`EARLIER_DELIVERIES`] header; 0 when it did not come through a delay queue.
pub(crate) fn earlier_deliveries(properties: &BasicProperties) -> u32 {
    count(properties, EARLIER_DELIVERIES)
        .map(|count| u32::try_from(count).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// A header holding a count, whatever integer type (or text) it came as; `None` when
/// absent or not a count.
fn count(properties: &BasicProperties, name: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::ShortString(text) => text.as_str().parse().ok(),
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// The attempt of a delivery: 1 for the first. With a delivery count (quorum queues), the
/// count + 1; RabbitMQ's `redelivered` flag makes it at least 2 (from 4.3 a nack with
/// requeue redelivers without counting). Without one (classic queues), 1 or 2.
pub(crate) fn attempt(redelivered: bool, delivery_count: Option<u64>) -> u32 {
    let flagged = if redelivered { 2 } else { 1 };
    let counted = delivery_count
        .map(|count| u32::try_from(count.saturating_add(1)).unwrap_or(u32::MAX))
        .unwrap_or(1);
    counted.max(flagged)
}

/// A message ready for `basic.publish`.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: String,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) payload: Bytes,
    /// The bytes the content header frame takes.
    header_frame_len: usize,
}

impl Outgoing {
    /// Refuses a message whose properties and headers do not fit one frame of `frame_max`
    /// bytes: the broker would close the whole connection over it.
    pub(crate) fn check_header_frame(&self, frame_max: u32) -> Result<()> {
        let limit = usize::try_from(frame_max).unwrap_or(usize::MAX);
        if self.header_frame_len > limit {
            return Err(Error::PayloadTooLarge {
                actual: self.header_frame_len,
                limit,
            });
        }
        Ok(())
    }
}

/// Maps a message to AMQP: the payload is the body; id, content type and timestamp go to
/// the basic properties; the key is the routing key (unless `routing_key` names a queue)
/// and the `message-key` header; headers become long strings in the header table.
pub(crate) fn encode(message: &Message, routing_key: Option<&str>) -> Result<Outgoing> {
    encode_with(message, routing_key, None)
}

/// The copy of a message handed back with a delay, for its delay queue: as [`encode`]
/// makes it, plus the `expiration` property (the delay, in milliseconds: RabbitMQ moves the
/// copy back to the queue it came from once it has waited that long) and the
/// [`EARLIER_DELIVERIES`] header (`attempt`, the delivery that was handed back). Headers
/// RabbitMQ added on an earlier trip through a queue (`x-death`, …) are left out: the
/// broker writes them as tables, and they came back as text.
pub(crate) fn encode_delayed(
    message: &Message,
    delay_queue: &str,
    attempt: u32,
    delay_millis: u32,
) -> Result<Outgoing> {
    encode_with(message, Some(delay_queue), Some((attempt, delay_millis)))
}

/// [`encode`], or with `delayed` (attempt, delay in ms), [`encode_delayed`].
fn encode_with(
    message: &Message,
    routing_key: Option<&str>,
    delayed: Option<(u32, u32)>,
) -> Result<Outgoing> {
    let mut headers = BTreeMap::new();
    let mut table_len = 4;
    let mut add = |name: &str, value: &str| -> Result<()> {
        let key = ShortString::try_new(name).map_err(|_| Error::InvalidName {
            kind: "header",
            name: name.to_owned(),
            reason: format!(
                "it is {} bytes long; an AMQP header name holds at most {SHORT_STRING_MAX}",
                name.len()
            ),
        })?;
        if headers
            .insert(key, AMQPValue::LongString(LongString::from(value)))
            .is_none()
        {
            table_len += 1 + name.len() + 1 + 4 + value.len();
        } else {
            table_len += value.len();
        }
        Ok(())
    };
    for (name, value) in message.headers().iter() {
        refuse_reserved(name)?;
        if delayed.is_some() && is_broker_header(name) {
            continue;
        }
        add(name, value)?;
    }
    let millis = message.timestamp_millis();
    add(header::TIMESTAMP, &millis.to_string())?;
    if let Some(key) = message.key() {
        add(header::KEY, key)?;
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(millis / 1000);
    let mut properties_len = 2 + 1 + 8;
    if let Some((attempt, delay_millis)) = delayed {
        add(EARLIER_DELIVERIES, &attempt.to_string())?;
        let expiration = delay_millis.to_string();
        properties_len += 1 + expiration.len();
        properties =
            properties.with_expiration(ShortString::try_new(expiration).unwrap_or_default());
    }
    match ShortString::try_new(message.id()) {
        Ok(id) => {
            properties_len += 1 + message.id().len();
            properties = properties.with_message_id(id);
        }
        Err(_) => add(header::MESSAGE_ID, message.id())?,
    }
    if let Some(content_type) = message.content_type() {
        match ShortString::try_new(content_type) {
            Ok(short) => {
                properties_len += 1 + content_type.len();
                properties = properties.with_content_type(short);
            }
            Err(_) => add(header::CONTENT_TYPE, content_type)?,
        }
    }
    let routing_key = match routing_key {
        Some(queue) => ShortString::try_new(queue).map_err(|_| {
            Error::broker(
                BACKEND,
                format!("queue name {queue:?} is longer than {SHORT_STRING_MAX} bytes"),
            )
        })?,
        None => message
            .key()
            .and_then(|key| ShortString::try_new(key).ok())
            .unwrap_or_default(),
    };
    properties_len += table_len;
    properties = properties.with_headers(FieldTable::from(headers));
    Ok(Outgoing {
        id: message.id().to_owned(),
        routing_key,
        properties,
        payload: message.payload().clone(),
        header_frame_len: FRAME_OVERHEAD + CONTENT_HEADER_FIXED + properties_len,
    })
}

/// Maps a delivery back: see [`encode`]. A message from a client that set no id gets one
/// derived from what the broker hands over (see [`derived_id`]); one without a content
/// type has none (JSON to the codecs); the key is the `message-key` header, else the
/// routing key (unless it came through the default exchange, where it names a queue).
pub(crate) fn decode(
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Message {
    let mut headers = event_binder_core::Headers::new();
    if let Some(table) = properties.headers() {
        // What RabbitMQ wrote when it moved a copy back from its delay queue (`x-death`, …)
        // tells of this backend's workings, not of the message.
        let delayed = table.inner().contains_key(EARLIER_DELIVERIES);
        for (name, value) in table {
            if !(delayed && is_broker_header(name.as_str())) {
                headers.insert(name.as_str(), render(value));
            }
        }
    }
    // The counts of earlier deliveries are the delivery's attempt, not headers: kept, they
    // would travel on with a dead letter and count against it in its next queue.
    headers.remove(DELIVERY_COUNT);
    headers.remove(EARLIER_DELIVERIES);
    let key = headers.remove(header::KEY).or_else(|| {
        (!exchange.is_empty() && !routing_key.is_empty()).then(|| routing_key.to_owned())
    });
    let timestamp = headers
        .remove(header::TIMESTAMP)
        .and_then(|millis| millis.parse::<u64>().ok())
        .map(time_from_millis)
        .or_else(|| {
            properties
                .timestamp()
                .map(|secs| time_from_millis(secs.saturating_mul(1000)))
        })
        .unwrap_or_else(SystemTime::now);
    let content_type = headers.remove(header::CONTENT_TYPE).or_else(|| {
        properties
            .content_type()
            .as_ref()
            .map(|t| t.as_str().to_owned())
    });
    let id = headers
        .remove(header::MESSAGE_ID)
        .or_else(|| {
            properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
        })
        .unwrap_or_else(|| derived_id(exchange, routing_key, properties, &headers, &body));
    let message = Message::new_with_id(id, body)
        .with_headers(headers)
        .with_optional_key(key)
        .with_timestamp(timestamp);
    match content_type {
        Some(content_type) => message.with_content_type(content_type),
        None => message,
    }
}

/// The id of a message that came without one: a UUID v5 over the exchange and routing key
/// it was published with, its properties, its headers (less those RabbitMQ adds on the way)
/// and its body. Every redelivery of the message gets the same id, so idempotent handling
/// works for foreign producers too; two byte-identical messages published without ids share
/// it, and are handled once.
pub(crate) fn derived_id(
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    headers: &event_binder_core::Headers,
    body: &[u8],
) -> String {
    let mut name = Vec::with_capacity(body.len() + 256);
    let mut field = |bytes: &[u8]| {
        name.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
        name.extend_from_slice(bytes);
    };
    field(exchange.as_bytes());
    field(routing_key.as_bytes());
    let short = |value: &Option<ShortString>| {
        value
            .as_ref()
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    field(short(properties.correlation_id()).as_bytes());
    field(short(properties.app_id()).as_bytes());
    field(short(properties.kind()).as_bytes());
    field(short(properties.user_id()).as_bytes());
    field(&properties.timestamp().unwrap_or_default().to_be_bytes());
    for (header_name, value) in headers.iter() {
        if is_broker_header(header_name) {
            continue;
        }
        field(header_name.as_bytes());
        field(value.as_bytes());
    }
    field(body);
    uuid::Uuid::new_v5(&DERIVED_ID_NAMESPACE, &name).to_string()
}

/// A header value as text: strings as they are, numbers and booleans in decimal, arrays
/// and tables as JSON-like text.
fn render(value: &AMQPValue) -> String {
    let mut out = String::new();
    render_into(value, &mut out);
    out
}

fn render_into(value: &AMQPValue, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = match value {
        AMQPValue::Boolean(b) => write!(out, "{b}"),
        AMQPValue::ShortShortInt(n) => write!(out, "{n}"),
        AMQPValue::ShortShortUInt(n) => write!(out, "{n}"),
        AMQPValue::ShortInt(n) => write!(out, "{n}"),
        AMQPValue::ShortUInt(n) => write!(out, "{n}"),
        AMQPValue::LongInt(n) => write!(out, "{n}"),
        AMQPValue::LongUInt(n) => write!(out, "{n}"),
        AMQPValue::LongLongInt(n) => write!(out, "{n}"),
        AMQPValue::Float(n) => write!(out, "{n}"),
        AMQPValue::Double(n) => write!(out, "{n}"),
        AMQPValue::Timestamp(n) => write!(out, "{n}"),
        AMQPValue::DecimalValue(decimal) => {
            let scale = u32::from(decimal.scale);
            match 10u64.checked_pow(scale) {
                Some(divisor) => {
                    let value = u64::from(decimal.value);
                    let digits = usize::try_from(scale).unwrap_or(usize::MAX);
                    if scale == 0 {
                        write!(out, "{value}")
                    } else {
                        write!(out, "{}.{:0digits$}", value / divisor, value % divisor)
                    }
                }
                None => write!(out, "{}e-{scale}", decimal.value),
            }
        }
        AMQPValue::ShortString(s) => write!(out, "{}", s.as_str()),
        AMQPValue::LongString(s) => write!(out, "{}", String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(bytes) => write!(out, "{}", String::from_utf8_lossy(bytes.as_slice())),
        AMQPValue::Void => Ok(()),
        AMQPValue::FieldArray(items) => {
            out.push('[');
            for (index, item) in items.as_slice().iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                render_nested(item, out);
            }
            out.push(']');
            Ok(())
        }
        AMQPValue::FieldTable(table) => {
            out.push('{');
            for (index, (name, item)) in table.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                quote(name.as_str(), out);
                out.push(':');
                render_nested(item, out);
            }
            out.push('}');
            Ok(())
        }
    };
}

/// Inside an array or a table, text is quoted so the structure stays readable.
fn render_nested(value: &AMQPValue, out: &mut String) {
    match value {
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) | AMQPValue::ByteArray(_) => {
            quote(&render(value), out);
        }
        AMQPValue::Void => out.push_str("null"),
        other => render_into(other, out),
    }
}

fn quote(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{DecimalValue, FieldArray};

    fn round_trip(message: &Message) -> Message {
        let outgoing = encode(message, None).unwrap();
        decode(
            "orders",
            outgoing.routing_key.as_str(),
            &outgoing.properties,
            outgoing.payload.to_vec(),
        )
    }

    #[test]
    fn everything_survives_the_trip() {
        let message = Message::new(r#"{"n":1}"#)
            .with_key("customer-7")
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let outgoing = encode(&message, None).unwrap();
        assert_eq!(outgoing.routing_key.as_str(), "customer-7");
        assert_eq!(outgoing.properties.delivery_mode(), &Some(PERSISTENT));
        let back = round_trip(&message);
        assert_eq!(back.id(), message.id());
        assert_eq!(back.payload(), message.payload());
        assert_eq!(back.key(), Some("customer-7"));
        assert_eq!(back.content_type(), Some("application/json"));
        assert_eq!(back.timestamp_millis(), message.timestamp_millis());
        assert_eq!(
            back.headers(),
            message.headers(),
            "reserved headers are taken out again"
        );
    }

    #[test]
    fn long_ids_keys_and_content_types_travel_in_headers() {
        let long = "x".repeat(300);
        let message = Message::new("b")
            .with_id(long.clone())
            .with_key(long.clone())
            .with_content_type(long.clone());
        let outgoing = encode(&message, None).unwrap();
        assert_eq!(
            outgoing.routing_key.as_str(),
            "",
            "a key too long to route is not truncated"
        );
        let back = round_trip(&message);
        assert_eq!(back.id(), long);
        assert_eq!(back.key(), Some(long.as_str()));
        assert_eq!(back.content_type(), Some(long.as_str()));
    }

    #[test]
    fn header_names_longer_than_amqp_allows_are_refused() {
        let message = Message::new("b").with_header("h".repeat(256), "v");
        assert!(matches!(
            encode(&message, None),
            Err(Error::InvalidName { kind: "header", .. })
        ));
    }

    #[test]
    fn the_header_frame_is_measured() {
        let small = encode(&Message::new("b").with_header("a", "b"), None).unwrap();
        assert!(small.check_header_frame(4096).is_ok());
        let big = encode(&Message::new("b").with_header("a", "v".repeat(5000)), None).unwrap();
        match big.check_header_frame(4096) {
            Err(Error::PayloadTooLarge { actual, limit }) => {
                assert_eq!(limit, 4096);
                assert!(actual > 5000);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn dead_letters_are_routed_to_their_queue_and_keep_their_key() {
        let message = Message::new("b").with_key("k");
        let outgoing = encode(&message, Some("orders.billing.dlq")).unwrap();
        assert_eq!(outgoing.routing_key.as_str(), "orders.billing.dlq");
        let back = decode("", "orders.billing.dlq", &outgoing.properties, vec![]);
        assert_eq!(back.key(), Some("k"));
        let unkeyed = encode(&Message::new("b"), Some("q")).unwrap();
        let back = decode("", "q", &unkeyed.properties, vec![]);
        assert_eq!(back.key(), None, "a queue name is not a key");
    }

    #[test]
    fn foreign_messages_get_a_stable_derived_id_and_no_content_type() {
        let mut table = FieldTable::default();
        table.insert("x-delivery-count".into(), AMQPValue::LongInt(1));
        table.insert("source".into(), AMQPValue::ShortString("legacy".into()));
        let properties = BasicProperties::default().with_headers(table);
        let first = decode("orders", "", &properties, b"{}".to_vec());
        let mut table = FieldTable::default();
        table.insert("x-delivery-count".into(), AMQPValue::LongInt(2));
        table.insert("source".into(), AMQPValue::ShortString("legacy".into()));
        let redelivered = decode(
            "orders",
            "",
            &BasicProperties::default().with_headers(table),
            b"{}".to_vec(),
        );
        assert_eq!(first.id(), redelivered.id());
        assert_eq!(first.content_type(), None);
        assert_eq!(first.key(), None);
        let other = decode("orders", "", &properties, b"{ }".to_vec());
        assert_ne!(first.id(), other.id());
        assert_eq!(first.headers().get("source"), Some("legacy"));
    }

    #[test]
    fn the_delivery_count_is_the_attempt_and_never_a_header() {
        let with_count = |value: AMQPValue| {
            let mut table = FieldTable::default();
            table.insert(DELIVERY_COUNT.into(), value);
            table.insert("tenant".into(), AMQPValue::LongString("acme".into()));
            BasicProperties::default().with_headers(table)
        };
        assert_eq!(delivery_count(&BasicProperties::default()), None);
        for value in [
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
            AMQPValue::LongUInt(3),
            AMQPValue::ShortInt(3),
            AMQPValue::LongString("3".into()),
        ] {
            assert_eq!(
                delivery_count(&with_count(value.clone())),
                Some(3),
                "{value:?}"
            );
        }
        assert_eq!(delivery_count(&with_count(AMQPValue::LongInt(-1))), None);
        let properties = with_count(AMQPValue::LongInt(3));
        let message = decode("orders", "", &properties, b"{}".to_vec());
        assert_eq!(message.headers().get(DELIVERY_COUNT), None);
        assert_eq!(message.headers().get("tenant"), Some("acme"));

        assert_eq!(attempt(false, None), 1);
        assert_eq!(attempt(true, None), 2);
        assert_eq!(attempt(true, Some(1)), 2);
        assert_eq!(attempt(true, Some(4)), 5);
        assert_eq!(
            attempt(true, Some(0)),
            2,
            "redelivered without counting (4.3 nack)"
        );
        assert_eq!(attempt(true, Some(u64::MAX)), u32::MAX);

        let forged = Message::new("b").with_header(DELIVERY_COUNT, "7");
        assert!(matches!(
            encode(&forged, None),
            Err(Error::InvalidName { kind: "header", .. })
        ));
    }

    #[test]
    fn a_delayed_copy_carries_its_delay_and_attempt_and_comes_back_as_the_message() {
        let message = Message::new("b")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header("x-death", "[{\"count\":1}]");
        let copy = encode_delayed(&message, "t-orders.billing.delay.8", 4, 300).unwrap();
        assert_eq!(copy.routing_key.as_str(), "t-orders.billing.delay.8");
        assert_eq!(
            copy.properties.expiration().as_ref().map(|e| e.as_str()),
            Some("300")
        );
        let table = copy.properties.headers().clone().unwrap();
        assert_eq!(
            table.inner().get(EARLIER_DELIVERIES),
            Some(&AMQPValue::LongString("4".into()))
        );
        assert!(
            table.inner().get("x-death").is_none(),
            "the broker's x-death is left out of the copy"
        );
        let mut without_death = message.clone();
        without_death.headers_mut().remove("x-death");
        let plain = encode(&without_death, Some("t-orders.billing.delay.8")).unwrap();
        let header = 1 + EARLIER_DELIVERIES.len() + 1 + 4 + "4".len();
        let expiration = 1 + "300".len();
        assert_eq!(
            copy.header_frame_len,
            plain.header_frame_len + header + expiration,
            "the header frame is measured with what the copy adds"
        );

        // Back in the group's queue, with what RabbitMQ adds when it moves it there.
        let mut table = table;
        table.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        table.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("t-orders.billing.delay.8".into()),
        );
        let properties = copy.properties.clone().with_headers(table);
        assert_eq!(earlier_deliveries(&properties), 4);
        let back = decode("", "t-orders.billing", &properties, b"b".to_vec());
        assert_eq!(back.id(), message.id());
        assert_eq!(back.key(), Some("k"));
        let mut expected = message.headers().clone();
        expected.remove("x-death");
        assert_eq!(back.headers(), &expected, "no trace of the trip is left");

        // A message that did not come through a delay queue keeps the broker's headers.
        let mut foreign = FieldTable::default();
        foreign.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let properties = BasicProperties::default().with_headers(foreign);
        assert_eq!(earlier_deliveries(&properties), 0);
        let plain = decode("orders", "", &properties, vec![]);
        assert_eq!(plain.headers().get("x-death"), Some("[]"));

        let forged = Message::new("b").with_header(EARLIER_DELIVERIES, "7");
        assert!(matches!(
            encode(&forged, None),
            Err(Error::InvalidName { kind: "header", .. })
        ));
    }

    #[test]
    fn header_values_of_every_type_become_text() {
        let mut inner = FieldTable::default();
        inner.insert("q".into(), AMQPValue::LongString("a\"b".into()));
        let array = FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::Boolean(true),
            AMQPValue::Void,
        ]);
        assert_eq!(render(&AMQPValue::FieldTable(inner)), r#"{"q":"a\"b"}"#);
        assert_eq!(render(&AMQPValue::FieldArray(array)), "[1,true,null]");
        assert_eq!(
            render(&AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1234
            })),
            "12.34"
        );
        assert_eq!(render(&AMQPValue::Double(1.5)), "1.5");
    }
}
