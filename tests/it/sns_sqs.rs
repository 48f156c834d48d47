//! The conformance suite on SNS+SQS, against the moto emulator on 127.0.0.1:4566
//! (`scripts/sns-sqs.sh` installs and starts it; `scripts/test.sh` exports the dummy
//! credentials it accepts, read through the standard AWS provider chain). Each case
//! connects with a random name prefix, so runs on a shared emulator never meet.

use event_binder::{AnyChannel, Channel};
use event_binder_core::conformance::SuiteConfig;

async fn connect() -> event_binder::Result<AnyChannel> {
    let id = event_binder_core::new_message_id().replace('-', "");
    // A short long-poll keeps the idle consumers of finished cases from holding moto's
    // threads. A request attempt is given the whole operation's time: moto, loaded by the
    // other tests, can take over the default 10 s, and a publish attempt abandoned after the
    // emulator took it would be sent again (at least once: a second copy of its messages).
    let url = format!(
        "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1&attempt_timeout_ms=30000&prefix=conf-{}-",
        &id[id.len() - 12..]
    );
    AnyChannel::connect(&url).await
}

// moto slows down as a queue grows (about 0.45 s a receive with 1,000 messages queued):
// fewer messages in the heavy cases; every case runs. It serves every SNS+SQS test of a run
// from one Python process, the crash test's 10,000 messages among them: under that load 300
// messages took over 30 s to come through in CI, so the bound on a wait is longer (a bound,
// not a pause: each wait ends when its condition holds).
event_binder_core::conformance_tests!(
    connect,
    SuiteConfig::default()
        .message_count(300)
        .timeout(std::time::Duration::from_secs(120))
);

/// SNS+SQS keeps the order of a key on FIFO destinations only: the ordering cases again,
/// with every destination FIFO (`fifo=*`).
mod fifo {
    use super::*;
    use event_binder_core::conformance::{run, Case};

    async fn connect() -> event_binder::Result<AnyChannel> {
        let id = event_binder_core::new_message_id().replace('-', "");
        let url = format!(
            "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1&fifo=*&prefix=fifo-{}-",
            &id[id.len() - 12..]
        );
        let channel = AnyChannel::connect(&url).await?;
        assert!(
            channel.orders_by_key("any"),
            "fifo=* declares every destination FIFO"
        );
        Ok(channel)
    }

    #[test]
    fn order_is_kept_per_key() {
        run(connect, SuiteConfig::default(), Case::OrderIsKeptPerKey);
    }

    #[test]
    fn order_is_kept_per_key_through_the_runtime() {
        run(
            connect,
            SuiteConfig::default(),
            Case::OrderIsKeptPerKeyThroughTheRuntime,
        );
    }
}
