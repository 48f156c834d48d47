//! AMQP deliveries from any publisher, from the bytes a content header frame carries: the
//! basic properties (property flags, then the properties, the header table included, with
//! every field type: nested tables and arrays, decimals, timestamps, byte arrays, …), parsed
//! by amq-protocol as lapin parses them, then converted as the consumer does (message,
//! attempt). Input layout:
//!
//! - byte 0: bit 0 `redelivered`, bit 1 a quorum queue (delivery counts read), bit 2 came
//!   through the default exchange, bit 7 a round trip instead (the rest is an arbitrary
//!   message, see below);
//! - the basic properties, in the wire format;
//! - one byte, the routing key's length, then the routing key and the body.
//!
//! Nothing may panic, and what this backend publishes (arbitrary messages, their delayed
//! copies, and every decoded message published on) must come back through the wire format
//! unchanged.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use event_binder_core::Message;
use event_binder_fuzz::{assert_same, ArbitraryMessage};
use event_binder_rabbitmq::fuzzing;
use lapin::protocol::basic::{gen_properties, parse_properties};
use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;

const REDELIVERED: u8 = 1;
const QUORUM: u8 = 1 << 1;
const DEFAULT_EXCHANGE: u8 = 1 << 2;
const ROUND_TRIP: u8 = 1 << 7;

/// The headers that stand for a message's own parts (key, timestamp, id, content type) or
/// a delivery's attempt: a message with one of them among its headers does not come back
/// as it was (it is refused or read as that part).
const RESERVED: [&str; 6] = [
    "message-key",
    "message-timestamp",
    "message-id",
    "content-type",
    "message-deliveries",
    "x-delivery-count",
];

/// Headers RabbitMQ adds on the way through a queue, which a delayed copy leaves out.
const BROKER_HEADERS: [&str; 4] = [
    "x-delivery-count",
    "x-death",
    "x-first-death",
    "x-last-death",
];

#[derive(Debug, Arbitrary)]
struct Sent {
    message: ArbitraryMessage,
    /// A delayed copy's attempt and delay (ms).
    delayed: Option<(u32, u32)>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & ROUND_TRIP != 0 {
        if let Ok(sent) = Sent::arbitrary_take_rest(Unstructured::new(rest)) {
            let message = sent.message.build();
            round_trip(&message);
            if let Some((attempt, delay_millis)) = sent.delayed {
                delayed_round_trip(&message, attempt, delay_millis);
            }
        }
        return;
    }
    let Ok((rest, properties)) = parse_properties(rest) else {
        return;
    };
    let (routing_key, body) = match rest.split_first() {
        Some((&len, rest)) => rest.split_at(usize::from(len).min(rest.len())),
        None => (&[][..], &[][..]),
    };
    let routing_key = String::from_utf8_lossy(routing_key);
    let exchange = if flags & DEFAULT_EXCHANGE != 0 {
        ""
    } else {
        "orders"
    };
    let message = fuzzing::decode(exchange, &routing_key, &properties, body.to_vec());
    let attempt = fuzzing::attempt(&properties, flags & REDELIVERED != 0, flags & QUORUM != 0);
    assert!(attempt >= 1);
    round_trip(&message);
});

/// Publishes `message` (as far as the bytes of its properties) and decodes it again: it
/// must be unchanged, on its first delivery.
fn round_trip(message: &Message) {
    if message
        .headers()
        .iter()
        .any(|(name, _)| RESERVED.contains(&name))
    {
        return;
    }
    // Header names and message ids past 255 bytes are refused: the wire cannot carry them.
    let Ok((routing_key, properties, payload)) = fuzzing::encode(message, None) else {
        return;
    };
    let properties = through_the_wire(&properties);
    let back = fuzzing::decode("orders", &routing_key, &properties, payload.to_vec());
    assert_same(message, &back);
    assert_eq!(fuzzing::attempt(&properties, false, true), 1);
}

/// A delayed copy of `message` comes back as the message, less RabbitMQ's own headers,
/// counting the deliveries before it.
fn delayed_round_trip(message: &Message, attempt: u32, delay_millis: u32) {
    if message
        .headers()
        .iter()
        .any(|(name, _)| RESERVED.contains(&name))
    {
        return;
    }
    let Ok(properties) =
        fuzzing::encode_delayed(message, "orders.g.delay.1", attempt, delay_millis)
    else {
        return;
    };
    let properties = through_the_wire(&properties);
    let back = fuzzing::decode(
        "",
        "orders.g.delay.1",
        &properties,
        message.payload().to_vec(),
    );
    let mut expected = message.clone();
    let broker_headers: Vec<String> = message
        .headers()
        .iter()
        .map(|(name, _)| name)
        .filter(|name| BROKER_HEADERS.iter().any(|broker| name.starts_with(broker)))
        .map(str::to_owned)
        .collect();
    for name in broker_headers {
        expected.headers_mut().remove(&name);
    }
    assert_same(&expected, &back);
    assert_eq!(
        fuzzing::attempt(&properties, false, true),
        attempt.saturating_add(1)
    );
}

/// The properties written as a content header frame carries them and parsed back.
fn through_the_wire(properties: &BasicProperties) -> BasicProperties {
    let (bytes, _) = cookie_factory::gen(gen_properties(properties), Vec::new())
        .expect("writing to a Vec cannot fail");
    let (rest, parsed) = parse_properties(bytes.as_slice()).expect("our own properties parse");
    assert!(rest.is_empty(), "{} bytes after the properties", rest.len());
    parsed
}
