//! How librdkafka's errors become event-binder's, with secrets removed.

use event_binder_core::Error;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "kafka";

/// Removes the secrets (passwords) from a text.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
}

/// A [`Error::Broker`] saying what failed and why; the client's error is kept as text
/// only, scrubbed of secrets.
pub(crate) fn broker(what: &str, error: &KafkaError, secrets: &[&str]) -> Error {
    let detail = scrub(&error.to_string(), secrets);
    Error::broker_source(BACKEND, format!("{what}: {detail}"), detail)
}

/// The error of a failed delivery: a timeout when the send timed out, else the broker's.
pub(crate) fn delivery(
    topic: &str,
    error: &KafkaError,
    timeout: Duration,
    secrets: &[&str],
) -> Error {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => Error::Timeout {
            what: format!("the delivery report of a message sent to topic {topic}"),
            after: timeout,
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => Error::broker(
            BACKEND,
            format!(
                "the broker refused a message to topic {topic} as too large: lower \
                 max_message_size to the broker's message.max.bytes"
            ),
        ),
        _ => broker(&format!("sending to topic {topic}"), error, secrets),
    }
}

/// The error of a first connection attempt.
pub(crate) fn connection(brokers: &str, error: &KafkaError, secrets: &[&str]) -> Error {
    let detail = scrub(&error.to_string(), secrets);
    Error::Connection {
        backend: BACKEND,
        message: format!(
            "cannot read the cluster's metadata from {brokers}: {detail}; is a Kafka broker \
             running there, and are the security settings right?"
        ),
        source: Some(detail.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_secrets() {
        assert_eq!(
            scrub("bob / s3cret failed", &["s3cret"]),
            "bob / *** failed"
        );
        assert_eq!(scrub("nothing", &[""]), "nothing");
    }

    #[test]
    fn timeouts_are_typed() {
        let err = delivery(
            "t",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            Duration::from_secs(1),
            &[],
        );
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }
}
