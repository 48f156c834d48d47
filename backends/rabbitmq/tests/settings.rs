//! Every `RabbitConfig` setting is checked once, with an error naming it and what it may
//! be, however it was set: in the URL (`Error::InvalidUrl`, before anything connects), or
//! through a setter or a public field (`Error::Config` from `RabbitChannel::with_config`,
//! before anything connects). A valid configuration still connects (RabbitMQ on
//! 127.0.0.1:5672, guest/guest; `scripts/rabbitmq.sh` starts it).

use event_binder_core::{Channel, Error};
use event_binder_rabbitmq::{RabbitChannel, RabbitConfig};
use std::time::Duration;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn config() -> RabbitConfig {
    RabbitConfig::new(URL).expect("the URL")
}

/// `with_config` refuses `config` with an `Error::Config` naming `field` and `allowed`.
async fn refused(config: RabbitConfig, field: &str, allowed: &str) {
    match RabbitChannel::with_config(config).await {
        Err(Error::Config(text)) => {
            assert!(text.contains(field), "{text:?} does not name {field}");
            assert!(text.contains(allowed), "{text:?} does not say {allowed:?}");
        }
        Err(other) => panic!("{field}: expected Error::Config, got {other:?}"),
        Ok(channel) => {
            let _ = channel.close().await;
            panic!("{field}: connected with an invalid setting");
        }
    }
}

#[tokio::test]
async fn zero_reconnect_backoff_in_the_url_is_refused_before_connecting() {
    for url in [
        format!("{URL}?reconnect_initial_ms=0"),
        format!("{URL}?reconnect_max_ms=0"),
        format!("{URL}?reconnect_initial_ms=0&reconnect_max_ms=0"),
    ] {
        match RabbitChannel::connect(&url).await {
            Err(Error::InvalidUrl { reason, .. }) => {
                assert!(reason.contains("reconnect_"), "{url}: {reason}");
                assert!(reason.contains("1 ms"), "{url}: {reason}");
            }
            other => panic!("{url}: expected Error::InvalidUrl, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_setting_out_of_range_in_the_url_is_an_invalid_url() {
    for (query, parameter) in [
        (
            "reconnect_initial_ms=2000&reconnect_max_ms=1000",
            "reconnect_initial_ms",
        ),
        ("send_timeout_ms=0", "send_timeout_ms"),
        ("connect_timeout_ms=0", "connect_timeout_ms"),
        ("prefetch=0", "prefetch"),
        ("max_message_size=0", "max_message_size"),
        ("queue_expires_ms=0", "queue_expires_ms"),
        ("queue_type=lazy", "queue_type"),
    ] {
        let url = format!("{URL}?{query}");
        match RabbitChannel::connect(&url).await {
            Err(Error::InvalidUrl { reason, .. }) => {
                assert!(reason.contains(parameter), "{query}: {reason}");
            }
            other => panic!("{query}: expected Error::InvalidUrl, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn public_fields_cannot_bypass_validation() {
    let mut zero_initial = config();
    zero_initial.reconnect_initial_backoff = Duration::ZERO;
    refused(zero_initial, "reconnect_initial_backoff", "1 ms").await;

    let mut backwards = config();
    backwards.reconnect_initial_backoff = Duration::from_secs(10);
    backwards.reconnect_max_backoff = Duration::from_secs(1);
    refused(
        backwards,
        "reconnect_initial_backoff",
        "reconnect_max_backoff",
    )
    .await;

    let mut endless_backoff = config();
    endless_backoff.reconnect_max_backoff = Duration::MAX;
    refused(endless_backoff, "reconnect_max_backoff", "1 ms to 24 h").await;

    let mut zero_send = config();
    zero_send.send_timeout = Duration::ZERO;
    refused(zero_send, "send_timeout", "1 ms to 24 h").await;

    // Would overflow `Instant::now() + send_timeout` (a panic) on the first send.
    let mut endless_send = config();
    endless_send.send_timeout = Duration::MAX;
    refused(endless_send, "send_timeout", "1 ms to 24 h").await;

    let mut zero_connect = config();
    zero_connect.connect_timeout = Duration::ZERO;
    refused(zero_connect, "connect_timeout", "1 ms to 24 h").await;

    let mut zero_prefetch = config();
    zero_prefetch.prefetch = Some(0);
    refused(zero_prefetch, "prefetch", "1 to 65535").await;

    let mut zero_size = config();
    zero_size.max_message_size = 0;
    refused(zero_size, "max_message_size", "1 to 536870912").await;

    let mut huge_size = config();
    huge_size.max_message_size = usize::MAX;
    refused(huge_size, "max_message_size", "1 to 536870912").await;

    let mut zero_expires = config();
    zero_expires.queue_expires = Some(Duration::ZERO);
    refused(zero_expires, "queue_expires", "1 ms").await;

    let mut bad_prefix = config();
    bad_prefix.prefix = "has.dots".into();
    assert!(matches!(
        RabbitChannel::with_config(bad_prefix).await,
        Err(Error::InvalidName { .. })
    ));
}

#[tokio::test]
async fn setters_cannot_bypass_validation() {
    refused(config().prefetch(0), "prefetch", "1 to 65535").await;
    refused(
        config().reconnect_backoff(Duration::ZERO, Duration::from_secs(1)),
        "reconnect_initial_backoff",
        "1 ms",
    )
    .await;
    refused(
        config().reconnect_backoff(Duration::from_secs(5), Duration::from_secs(1)),
        "reconnect_initial_backoff",
        "reconnect_max_backoff",
    )
    .await;
    refused(
        config().send_timeout(Duration::ZERO),
        "send_timeout",
        "1 ms",
    )
    .await;
    refused(
        config().connect_timeout(Duration::ZERO),
        "connect_timeout",
        "1 ms",
    )
    .await;
    refused(config().max_message_size(0), "max_message_size", "1 to").await;
    refused(
        config().queue_expires(Duration::ZERO),
        "queue_expires",
        "1 ms",
    )
    .await;
}

#[tokio::test]
async fn the_smallest_valid_settings_connect() {
    let mut config = config();
    config.prefetch = Some(1);
    config.send_timeout = Duration::from_millis(1);
    config.connect_timeout = Duration::from_secs(10);
    config.reconnect_initial_backoff = Duration::from_millis(1);
    config.reconnect_max_backoff = Duration::from_millis(1);
    config.max_message_size = 1;
    config.queue_expires = Some(Duration::from_millis(1));
    let channel = RabbitChannel::with_config(config)
        .await
        .expect("connecting to RabbitMQ on 127.0.0.1:5672 (run scripts/rabbitmq.sh)");
    assert!(channel.is_connected());
    channel.close().await.expect("close");
}
