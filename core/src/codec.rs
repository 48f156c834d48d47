//! Codecs: how typed events become payload bytes and back.
//!
//! Any `serde` type is an event, carried as plain JSON (`application/json`) with no wrapper,
//! so clients that know nothing of event-binder read and write the same payloads. [`Raw`]
//! carries bytes untouched (`application/octet-stream`). The content type travels with the
//! message; a message without one is taken as JSON.

use crate::error::{Error, Result};
use crate::message::{content_type, Message};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An event that can be read from a [`Message`].
///
/// Implemented for every `serde::de::DeserializeOwned` type (JSON) and for [`Raw`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be decoded from a message",
    note = "derive `serde::Deserialize` for `{Self}` to receive it as JSON, or take `event_binder::Raw` for the bytes"
)]
pub trait Decode: Sized {
    /// Decodes the message's payload.
    fn decode(message: &Message) -> Result<Self>;
}

/// An event that can be written into a payload.
///
/// Implemented for every `serde::Serialize` type (JSON) and for [`Raw`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be encoded into a message",
    note = "derive `serde::Serialize` for `{Self}` to send it as JSON, or send `event_binder::Raw` bytes"
)]
pub trait Encode {
    /// The payload bytes and their content type.
    fn encode(&self) -> Result<Encoded>;
}

/// A payload and its content type, as produced by [`Encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The payload bytes.
    pub payload: Bytes,
    /// The content type of the payload.
    pub content_type: &'static str,
}

impl Encoded {
    /// A message carrying this payload with its content type set.
    pub fn into_message(self) -> Message {
        Message::new(self.payload).with_content_type(self.content_type)
    }
}

/// Raw payload bytes, decoded and encoded with no codec at all.
///
/// ```
/// use event_binder_core::{Decode, Encode, Message, Raw};
///
/// let encoded = Raw::from("not json").encode().unwrap();
/// assert_eq!(encoded.content_type, "application/octet-stream");
/// let Raw(bytes) = Raw::decode(&encoded.into_message()).unwrap();
/// assert_eq!(bytes.as_ref(), b"not json");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Raw(pub Bytes);

impl<T: Into<Bytes>> From<T> for Raw {
    fn from(bytes: T) -> Self {
        Raw(bytes.into())
    }
}

impl Decode for Raw {
    fn decode(message: &Message) -> Result<Self> {
        Ok(Raw(message.payload().clone()))
    }
}

impl Encode for Raw {
    fn encode(&self) -> Result<Encoded> {
        Ok(Encoded {
            payload: self.0.clone(),
            content_type: content_type::OCTET_STREAM,
        })
    }
}

impl<T: DeserializeOwned> Decode for T {
    fn decode(message: &Message) -> Result<Self> {
        let decode_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
            message_id: message.id().to_owned(),
            content_type: message
                .content_type()
                .unwrap_or(content_type::JSON)
                .to_owned(),
            source,
        };
        if let Some(declared) = message.content_type() {
            if !is_json(declared) {
                return Err(decode_error(
                    format!("content type {declared:?} is not JSON; take `Raw` to receive it")
                        .into(),
                ));
            }
        }
        serde_json::from_slice(message.payload()).map_err(|err| decode_error(err.into()))
    }
}

impl<T: Serialize + ?Sized> Encode for T {
    fn encode(&self) -> Result<Encoded> {
        let payload = serde_json::to_vec(self).map_err(|err| Error::Encode(err.into()))?;
        Ok(Encoded {
            payload: payload.into(),
            content_type: content_type::JSON,
        })
    }
}

/// `application/json`, `application/json; charset=utf-8`, `application/cloudevents+json`, …
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let suffix = "+json";
    essence.eq_ignore_ascii_case(content_type::JSON)
        || essence
            .len()
            .checked_sub(suffix.len())
            .and_then(|start| essence.get(start..))
            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Order {
        id: u32,
    }

    #[test]
    fn json_round_trip_is_plain_json() {
        let encoded = Order { id: 7 }.encode().unwrap();
        assert_eq!(encoded.payload.as_ref(), br#"{"id":7}"#);
        let message = encoded.into_message();
        assert_eq!(Order::decode(&message).unwrap(), Order { id: 7 });
    }

    #[test]
    fn missing_content_type_is_taken_as_json() {
        let message = Message::new(r#"{"id":1}"#);
        assert_eq!(Order::decode(&message).unwrap(), Order { id: 1 });
        let message =
            Message::new(r#"{"id":2}"#).with_content_type("application/json; charset=utf-8");
        assert_eq!(Order::decode(&message).unwrap(), Order { id: 2 });
    }

    #[test]
    fn json_content_types_are_recognised_in_any_case() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/cloudevents+json ",
            "application/VND.ACME+Json;v=2",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/jsonl",
            "+jso",
            "",
            "application/json+xml",
        ] {
            assert!(!is_json(other), "{other}");
        }
    }

    #[test]
    fn foreign_content_type_and_bad_json_are_decode_errors() {
        let message = Message::new("id=1").with_content_type("text/plain");
        let err = Order::decode(&message).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }));
        assert!(err.to_string().contains("text/plain"), "{err}");

        let message = Message::new("{not json").with_id("m-1");
        let err = Order::decode(&message).unwrap_err();
        assert!(err.to_string().contains("m-1"), "{err}");
    }
}
