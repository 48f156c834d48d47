//! How the AWS SDK's errors become event-binder's.

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use event_binder_core::Error;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "sns-sqs";

/// An [`Error::Broker`] saying what failed and why. The SDK never puts credentials in its
/// errors; the whole chain of causes is kept, as text.
pub(crate) fn request<E, R>(what: &str, error: SdkError<E, R>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match &error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            format!(
                "AWS answered {}: {}",
                inner.code().unwrap_or("an error"),
                inner.message().unwrap_or("(no message)")
            )
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
            "the request did not get through ({}); is the endpoint reachable?",
            DisplayErrorContext(&error)
        ),
        _ => DisplayErrorContext(&error).to_string(),
    };
    Error::broker_source(BACKEND, format!("{what}: {detail}"), detail)
}

/// Like [`request`], but a request that got no answer within its timeouts (the SDK's
/// operation or attempt timeout) is an [`Error::Timeout`]: `limit` is the longest the
/// request could take, retries included.
pub(crate) fn request_within<E, R>(
    what: &str,
    error: SdkError<E, R>,
    limit: std::time::Duration,
) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &error {
        SdkError::TimeoutError(_) => Error::Timeout {
            what: format!(
                "{BACKEND}: {what} ({}; is the endpoint reachable? The limits are \
                 SnsSqsConfig::operation_timeout and attempt_timeout)",
                DisplayErrorContext(&error)
            ),
            after: limit,
        },
        _ => request(what, error),
    }
}

/// The same error again, for each of the senders that shared a failed batch request
/// ([`Error`] is not `Clone`): a timeout stays a timeout; anything else becomes an
/// [`Error::Broker`] with the same text.
pub(crate) fn duplicate(error: &Error) -> Error {
    match error {
        Error::Timeout { what, after } => Error::Timeout {
            what: what.clone(),
            after: *after,
        },
        other => Error::broker(BACKEND, other.to_string()),
    }
}

/// The AWS error code of a failed request, if AWS answered one.
pub(crate) fn code<E, R>(error: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// An [`Error::Broker`] for one entry a batch request refused.
pub(crate) fn entry(what: &str, code: &str, message: Option<&str>) -> Error {
    Error::broker(
        BACKEND,
        format!(
            "{what}: AWS refused it with {code}: {}",
            message.unwrap_or("(no message)")
        ),
    )
}

/// An [`Error::Connection`] for the first request of a channel.
pub(crate) fn connection<E, R>(url: &str, error: SdkError<E, R>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&error).to_string();
    Error::Connection {
        backend: BACKEND,
        message: format!(
            "the first request to {url} failed: {detail}; are the endpoint, region and \
             credentials (the AWS provider chain: AWS_ACCESS_KEY_ID, a profile, a role) right?"
        ),
        source: Some(detail.into()),
    }
}
