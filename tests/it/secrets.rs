//! A secret in a channel URL never shows: not in the channel's URL (`Display`, which the
//! quickstart prints), not in `Debug`, not in errors, on every backend compiled in.

use event_binder::AnyChannel;

const SECRET: &str = "hunter2";

/// Connects, then checks everything the channel or its error shows. Returns whether the
/// connection was made, so a test can insist on reaching the code that shows a live URL.
async fn shows_no_secret(url: &str) -> bool {
    match AnyChannel::connect(url).await {
        Ok(channel) => {
            for shown in [channel.url().to_string(), format!("{channel:?}")] {
                assert!(!shown.contains(SECRET), "{url} shows its secret: {shown}");
            }
            true
        }
        Err(err) => {
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(SECRET), "{url} shows its secret: {shown}");
            }
            false
        }
    }
}

#[tokio::test]
async fn memory_urls_show_no_secret() {
    shows_no_secret(&format!("memory://bus?token={SECRET}")).await;
    shows_no_secret(&format!("memory://user:{SECRET}@bus")).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test]
async fn rabbitmq_urls_show_no_secret() {
    shows_no_secret(&format!(
        "amqp://guest:{SECRET}@127.0.0.1:5672/%2f?prefix=x"
    ))
    .await;
    shows_no_secret(&format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?password={SECRET}"
    ))
    .await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_urls_show_no_secret() {
    let broker = crate::kafka::broker();
    let connected = shows_no_secret(&format!(
        "kafka://{broker}?sasl.password={SECRET}&sasl.username=me"
    ))
    .await;
    assert!(
        connected,
        "a SASL password without SASL is ignored, not refused"
    );
    shows_no_secret(&format!("kafka://me:{SECRET}@{broker}")).await;
    shows_no_secret(&format!(
        "kafka://{broker}?ssl.key.password={SECRET}&bogus=1"
    ))
    .await;
}

#[cfg(feature = "sns-sqs")]
#[tokio::test]
async fn sns_sqs_urls_show_no_secret() {
    shows_no_secret(&format!(
        "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&aws_secret_access_key={SECRET}"
    ))
    .await;
    shows_no_secret(&format!(
        "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&session_token={SECRET}"
    ))
    .await;
}
