//! How librdkafka's errors become event-binder's, with secrets removed.

use event_binder_core::{hide_secrets, Error};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "kafka";

/// A [`Error::Broker`] saying what failed and why; the client's error is kept as text
/// only, scrubbed of secrets.
pub(crate) fn broker(what: &str, error: &KafkaError, secrets: &[&str]) -> Error {
    let detail = hide_secrets(&error.to_string(), secrets);
    Error::broker_source(BACKEND, format!("{what}: {detail}"), detail)
}

/// The error of librdkafka settings it refuses (an unknown name, a bad value, settings
/// that contradict each other): an [`Error::Config`] naming the setting, its value never
/// shown when the name says it is a secret, and `secrets` removed.
pub(crate) fn settings(error: &KafkaError, secrets: &[&str]) -> Error {
    match error {
        KafkaError::ClientConfig(_, description, key, value) => {
            let mut hidden: Vec<&str> = secrets.to_vec();
            if event_binder_core::is_secret_param(key) {
                hidden.push(value);
            }
            let description = hide_secrets(description, &hidden);
            Error::Config(format!(
                "librdkafka refuses the setting {key}: {description}"
            ))
        }
        KafkaError::ClientCreation(message) => Error::Config(format!(
            "librdkafka refuses the settings: {}",
            hide_secrets(message, secrets)
        )),
        other => Error::Config(format!(
            "librdkafka refuses the settings: {}",
            hide_secrets(&other.to_string(), secrets)
        )),
    }
}

/// The error of creating a client: [`settings`] when librdkafka refused the settings, else
/// a [`broker`] error.
pub(crate) fn creation(what: &str, error: &KafkaError, secrets: &[&str]) -> Error {
    match error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => settings(error, secrets),
        other => broker(what, other, secrets),
    }
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
    let detail = hide_secrets(&error.to_string(), secrets);
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
    fn refused_settings_name_the_setting_and_never_show_a_secret_value() {
        let refused = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"ssl.key.password\"".into(),
            "ssl.key.password".into(),
            "hunter2".into(),
        );
        let err = settings(&refused, &[]);
        assert!(matches!(&err, Error::Config(text) if text.contains("ssl.key.password")));
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        let err = creation(
            "creating",
            &KafkaError::ClientCreation("bad: s3cret".into()),
            &["s3cret"],
        );
        assert!(
            matches!(&err, Error::Config(text) if !text.contains("s3cret")),
            "{err:?}"
        );
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
