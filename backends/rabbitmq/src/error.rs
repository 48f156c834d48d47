//! How lapin's errors become event-binder's, and which of them a reconnect can cure.

use event_binder_core::{hide_secrets, Error};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "rabbitmq";

/// What a failed broker operation means for the caller.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The broker refused this operation (a channel-level error such as a missing exchange
    /// or a queue declared with other arguments): report it, retrying would fail the same way.
    Refused(Error),
    /// The connection (or the AMQP channel) went away: reconnect and try again.
    Lost(lapin::Error),
}

impl Failure {
    /// Sorts a lapin error; `what` says what was being done, for the refusal's message.
    pub(crate) fn from_lapin(error: lapin::Error, what: &str) -> Self {
        match error.kind() {
            ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(_) => Failure::Refused(broker(what, error)),
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::NOTIMPLEMENTED) => {
                    Failure::Refused(broker(what, error))
                }
                AMQPErrorKind::Hard(_) => Failure::Lost(error),
            },
            ErrorKind::IOError(_)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::ChannelsLimitReached => Failure::Lost(error),
            _ => Failure::Refused(broker(what, error)),
        }
    }
}

/// A [`Error::Broker`] saying what failed and why.
pub(crate) fn broker(what: &str, error: lapin::Error) -> Error {
    Error::broker_source(BACKEND, format!("{what}: {error}"), error)
}

/// The error of a first connection attempt, with the password removed from anything the
/// broker or the client said.
pub(crate) fn connection(
    error: &lapin::Error,
    endpoint: &str,
    user: &str,
    vhost: &str,
    password: Option<&str>,
) -> Error {
    let detail = hide_secrets(&error.to_string(), password.as_slice());
    let message = match error.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            ) =>
        {
            let text = hide_secrets(&amqp.get_message().to_string(), password.as_slice());
            if text.contains("vhost") {
                format!(
                    "access refused: user {user:?} may not use virtual host {vhost:?} on \
                     {endpoint} ({text})"
                )
            } else {
                format!(
                    "authentication failed: RabbitMQ on {endpoint} refused the credentials of \
                     user {user:?} ({text}); check the user name and password"
                )
            }
        }
        ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED))
                && amqp.get_message().as_str().contains("vhost") =>
        {
            format!(
                "virtual host {vhost:?} on {endpoint} cannot be used by user {user:?}: {}",
                hide_secrets(amqp.get_message().as_str(), password.as_slice())
            )
        }
        ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing accepts connections on {endpoint}; is RabbitMQ running there?")
        }
        _ if detail.contains("certificate") => format!(
            "cannot connect to RabbitMQ on {endpoint}: {detail}; if a private CA signed the \
             broker's certificate, trust it with ?cacertfile=/path/to/ca.pem"
        ),
        _ => format!("cannot connect to RabbitMQ on {endpoint}: {detail}"),
    };
    Error::Connection {
        backend: BACKEND,
        message,
        source: Some(detail.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_losses_and_refused_connections_say_so() {
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(matches!(
            Failure::from_lapin(io.clone(), "x"),
            Failure::Lost(_)
        ));
        let err = connection(&io, "127.0.0.1:1", "guest", "/", Some("pw"));
        assert!(matches!(
            err,
            Error::Connection {
                backend: "rabbitmq",
                ..
            }
        ));
        assert!(err.to_string().contains("is RabbitMQ running"), "{err}");
    }
}
