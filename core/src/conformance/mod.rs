//! The conformance suite: the behaviour every backend shares, written once against the
//! traits and run against each backend (cargo feature `conformance`).
//!
//! A backend's test file calls [`conformance_tests!`](crate::conformance_tests) with a
//! factory that connects a fresh channel; it expands to one `#[test]` per [`Case`]. The
//! suite reads what the backend claims from [`Channel::capabilities`] and checks exactly
//! that: a case whose capability is not claimed passes after checking that the backend
//! refuses or lacks it honestly, never by doing nothing. Every case makes its own
//! randomly named destinations and groups, so cases can share a broker.
//!
//! The suite is checked in turn: [`broken`] wraps a working channel so that it makes one
//! mistake a backend could make (drops messages, acknowledges on receive, loses headers,
//! …), and [`broken_backend_tests!`](crate::broken_backend_tests) requires every case to
//! fail against at least one such backend. [`proxy`] puts a TCP proxy that cuts, delays and
//! blackholes connections between a client and its broker; [`interrupt`] does the same to
//! a channel's calls, for the in-memory backend, which has no connection.
//!
//! ```no_run
//! // tests/conformance.rs of a backend crate
//! use event_binder_core::conformance::SuiteConfig;
//!
//! # type MyChannel = event_binder_core::BoxChannel;
//! // Any `Channel`: the backend's own type, for direct calls.
//! async fn connect() -> event_binder_core::Result<MyChannel> {
//!     # unimplemented!()
//!     // MyChannel::connect("my://127.0.0.1").await
//! }
//!
//! event_binder_core::conformance_tests!(connect, SuiteConfig::default().message_count(1_000));
//! # fn main() {}
//! ```

pub mod broken;
mod cases;
mod counting;
pub mod interrupt;
pub mod proxy;
pub mod stores;
mod support;
mod switch;
#[cfg(feature = "otel")]
pub mod traces;

pub use cases::Case;
pub use counting::CountingStore;
pub use support::{Recorder, SuiteConfig};
pub use switch::FaultSwitch;

use crate::channel::Channel;
use crate::error::Result;
use std::future::Future;
use std::sync::Arc;

/// Runs one case against a channel from `connect`, on a runtime of its own. Panics (fails
/// the test) with a message saying what was expected and what happened.
pub fn run<F, Fut, C>(connect: F, config: SuiteConfig, case: Case)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<C>>,
    C: Channel,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance suite");
    runtime.block_on(async move {
        let channel = connect()
            .await
            .unwrap_or_else(|err| panic!("the channel factory failed: {err}"));
        let channel = Arc::new(channel);
        cases::run(case, channel.clone(), config).await;
        if let Err(err) = channel.close().await {
            panic!("closing the channel after {case:?} failed: {err}");
        }
    });
}

/// Expands to one `#[test]` per conformance [`Case`](crate::conformance::Case), each calling
/// [`run`](crate::conformance::run) with the given async factory (a function or closure
/// returning `Result<C>` for any `C: Channel`) and an optional
/// [`SuiteConfig`](crate::conformance::SuiteConfig).
#[macro_export]
macro_rules! conformance_tests {
    ($connect:expr) => {
        $crate::conformance_tests!($connect, $crate::conformance::SuiteConfig::default());
    };
    ($connect:expr, $config:expr) => {
        $crate::__for_each_conformance_case!(__conformance_cases, $connect, $config);
    };
}

/// Expands to one `#[test]` per conformance [`Case`](crate::conformance::Case), each
/// checking that the case fails against a [`Broken`](crate::conformance::broken::Broken)
/// channel from `connect` (a function or closure that can be called again and again):
/// [`must_catch`](crate::conformance::broken::must_catch).
#[macro_export]
macro_rules! broken_backend_tests {
    ($connect:expr) => {
        $crate::__for_each_conformance_case!(__broken_backend_cases, $connect);
    };
}

/// Calls the macro `$then` with `$args` and then the list of every case: the one place the
/// cases' test names are written.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_conformance_case {
    ($then:ident, $($args:expr),*) => {
        $crate::$then!(
            $($args),*,
            publish_subscribe_keeps_everything_intact => PublishSubscribeKeepsEverythingIntact,
            concurrent_publishers_and_consumers_lose_nothing => ConcurrentPublishersAndConsumersLoseNothing,
            destinations_are_isolated => DestinationsAreIsolated,
            nack_redelivers => NackRedelivers,
            fresh_consumer_gets_everything_after_failing_ones => FreshConsumerGetsEverythingAfterFailingOnes,
            every_group_gets_every_message => EveryGroupGetsEveryMessage,
            competing_consumers_share_without_duplicates => CompetingConsumersShareWithoutDuplicates,
            durable_group_keeps_messages_while_no_consumer_runs => DurableGroupKeepsMessagesWhileNoConsumerRuns,
            anonymous_subscription_sees_only_later_messages => AnonymousSubscriptionSeesOnlyLaterMessages,
            unsettled_delivery_returns_after_consumer_drop => UnsettledDeliveryReturnsAfterConsumerDrop,
            dead_letter_keeps_the_message => DeadLetterKeepsTheMessage,
            retries_then_dead_letters_with_headers => RetriesThenDeadLettersWithHeaders,
            undecodable_payload_is_dead_lettered_without_retries => UndecodablePayloadIsDeadLetteredWithoutRetries,
            order_is_kept_per_key => OrderIsKeptPerKey,
            order_is_kept_per_key_through_the_runtime => OrderIsKeptPerKeyThroughTheRuntime,
            non_retryable_error_is_dead_lettered_at_once => NonRetryableErrorIsDeadLetteredAtOnce,
            retries_through_the_broker_free_the_slot => RetriesThroughTheBrokerFreeTheSlot,
            batch_handler_settles_each_message_on_its_own => BatchHandlerSettlesEachMessageOnItsOwn,
            graceful_shutdown_loses_nothing_and_handles_nothing_twice => GracefulShutdownLosesNothingAndHandlesNothingTwice,
            oversized_message_is_refused => OversizedMessageIsRefused,
            invalid_names_are_refused => InvalidNamesAreRefused,
            duplicate_message_id_is_handled_once => DuplicateMessageIdIsHandledOnce,
            paused_binding_holds_nothing_and_resumes => PausedBindingHoldsNothingAndResumes,
            redrive_takes_dead_letters_back_to_their_group_only => RedriveTakesDeadLettersBackToTheirGroupOnly,
            continues_after_a_consumer_closes => ContinuesAfterAConsumerCloses,
            consumers_and_channel_close_concurrently => ConsumersAndChannelCloseConcurrently,
            closed_channel_fails_with_shut_down => ClosedChannelFailsWithShutDown,
            dropped_receive_loses_nothing => DroppedReceiveLosesNothing,
            messages_sent_before_a_producer_is_dropped_arrive => MessagesSentBeforeAProducerIsDroppedArrive,
            many_destinations_at_once => ManyDestinationsAtOnce,
            continues_after_repeated_handler_errors => ContinuesAfterRepeatedHandlerErrors,
            message_context_is_preserved => MessageContextIsPreserved,
            nack_delay_is_honoured => NackDelayIsHonoured,
            max_deliveries_stops_a_message_that_keeps_coming_back => MaxDeliveriesStopsAMessageThatKeepsComingBack,
            processor_outputs_have_derived_ids => ProcessorOutputsHaveDerivedIds,
            anonymous_dead_letters_are_kept => AnonymousDeadLettersAreKept,
            publishing_with_no_group_is_decided => PublishingWithNoGroupIsDecided,
            uncommon_headers_arrive_intact_or_are_refused => UncommonHeadersArriveIntactOrAreRefused,
            backlog_counts_what_is_not_settled => BacklogCountsWhatIsNotSettled,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __broken_backend_cases {
    ($connect:expr, $($name:ident => $case:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::broken::must_catch(
                    $connect,
                    $crate::conformance::Case::$case,
                );
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($connect:expr, $config:expr, $($name:ident => $case:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::run(
                    $connect,
                    $config,
                    $crate::conformance::Case::$case,
                );
            }
        )*
    };
}
