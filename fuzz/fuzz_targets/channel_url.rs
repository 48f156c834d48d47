//! Channel URLs as a user or a deployment's configuration writes them: any text, through
//! `ChannelUrl::parse`, then each backend's configuration (`from_url`), each also with the
//! text after a backend's scheme so that the backends' option parsers see most inputs.
//! Nothing may panic, `Display` and `Debug` (which hide secrets) included.
#![no_main]

use event_binder_core::ChannelUrl;
use event_binder_kafka::KafkaConfig;
use event_binder_rabbitmq::RabbitConfig;
use event_binder_sns_sqs::SnsSqsConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    for scheme in ["amqp", "amqps", "kafka", "sns-sqs"] {
        check(&format!("{scheme}://{text}"));
    }
});

fn check(text: &str) {
    let Ok(url) = ChannelUrl::parse(text) else {
        return;
    };
    let _ = (
        url.to_string(),
        format!("{url:?}"),
        url.hosts(),
        url.expose(),
    );
    if let Ok(config) = RabbitConfig::from_url(&url) {
        let _ = format!("{config:?}");
    }
    if let Ok(config) = KafkaConfig::from_url(&url) {
        let _ = format!("{config:?}");
    }
    if let Ok(config) = SnsSqsConfig::from_url(&url) {
        let _ = format!("{config:?}");
    }
}
