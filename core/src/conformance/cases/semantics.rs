//! Cases of what a delivery carries and how failures, delays and outputs behave.

use super::{expect, fast_retries, probe, Probe, Suite};
use crate::channel::{Channel, Producer, Subscription};
use crate::conformance::support::{
    backlog_until, expect_nothing, receive, unique, within, Recorder,
};
use crate::idempotency::MemoryIdempotencyStore;
use crate::message::{header, Message};
use crate::redrive::RedriveOptions;
use crate::runtime::{App, Context, Events, Handler, HandlerSpec, RetryPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What a handler's [`Context`] told, one call.
#[derive(Debug, Clone)]
struct Told {
    handler: &'static str,
    id: String,
    key: Option<String>,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
    destination: String,
    group: Option<String>,
    attempt: u32,
}

impl Told {
    fn from(handler: &'static str, ctx: &Context) -> Self {
        Told {
            handler,
            id: ctx.id().to_owned(),
            key: ctx.key().map(str::to_owned),
            headers: ctx
                .headers()
                .iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            payload: ctx.message().payload().to_vec(),
            destination: ctx.destination().to_owned(),
            group: ctx.group().map(str::to_owned),
            attempt: ctx.attempt(),
        }
    }
}

fn probe_number(message: &Message) -> u64 {
    serde_json::from_slice::<Probe>(message.payload())
        .unwrap_or_else(|err| panic!("a probe's payload changed in transit: {err}"))
        .n
}

impl<C: Channel> Suite<C> {
    /// The dead letters of `destination` and `group` (`None`: the anonymous ones), listed
    /// without taking them.
    async fn list_dead_letters(&self, destination: &str, group: Option<&str>) -> Vec<Message> {
        let options = RedriveOptions::new().dry_run();
        let listed = self
            .channel
            .purge_dead_letters(destination, group, &options);
        expect(
            within(self.config.timeout, "listing dead letters", listed).await,
            "listing dead letters",
        )
    }

    /// [`Case::ContinuesAfterRepeatedHandlerErrors`](super::Case::ContinuesAfterRepeatedHandlerErrors).
    pub(super) async fn repeated_handler_errors(&self) {
        let (destination, group) = (unique("errors"), unique("g"));
        let calls = Recorder::<u64>::new();
        let handled = Recorder::<u64>::new();
        // Probe n fails its first n % 3 calls: 0, 1 or 2 errors, all within 3 attempts.
        let handler = {
            let (calls, handled) = (calls.clone(), handled.clone());
            Handler::from_fn(
                HandlerSpec::new("stumbles", destination.as_str()).group(group.as_str()),
                move |event: Probe, ctx: Context| {
                    let (calls, handled) = (calls.clone(), handled.clone());
                    async move {
                        calls.record(event.n);
                        if u64::from(ctx.attempt()) <= event.n % 3 {
                            return Err(format!(
                                "probe {} fails on attempt {}",
                                event.n,
                                ctx.attempt()
                            ));
                        }
                        handled.record(event.n);
                        Ok(())
                    }
                },
            )
        };
        let running = expect(
            App::new(self.channel.clone())
                .concurrency(4)
                .retry(fast_retries(3))
                .handler(handler)
                .start()
                .await,
            "starting the app",
        );
        let publisher = running.publisher().clone();
        let handled_all =
            |upto: u64| move |seen: &HashMap<u64, usize>| (0..upto).all(|n| seen.contains_key(&n));
        for n in 0..20 {
            expect(publisher.send(&destination, probe(n)).await, "send");
        }
        handled
            .wait_for(
                self.config.timeout,
                "20 messages handled through their errors",
                handled_all(20),
            )
            .await;
        // The errors did not stop the binding: what comes after them is handled too.
        for n in 20..30 {
            expect(publisher.send(&destination, probe(n)).await, "send");
        }
        handled
            .wait_for(
                self.config.timeout,
                "the 10 messages sent after the errors",
                handled_all(30),
            )
            .await;
        let health = running.bindings().health();
        expect(running.shutdown().await, "shutdown");
        assert!(
            health.healthy,
            "handler errors within the retries made the binding unhealthy: {health:?}"
        );
        for n in 0..30 {
            assert_eq!(
                (calls.count(&n), handled.count(&n)),
                (n as usize % 3 + 1, 1),
                "probe {n}: (calls, successes) after {} errors",
                n % 3
            );
        }
        let dead = self.list_dead_letters(&destination, Some(&group)).await;
        assert!(
            dead.is_empty(),
            "messages that succeeded within their attempts were dead-lettered: {dead:?}"
        );
    }

    /// [`Case::MessageContextIsPreserved`](super::Case::MessageContextIsPreserved).
    pub(super) async fn message_context(&self) {
        let (destination, group) = (unique("context"), unique("g"));
        let told = Arc::new(Mutex::new(Vec::<Told>::new()));
        let done = Recorder::<(&'static str, String)>::new();
        let recording = |name: &'static str| {
            let (told, done) = (told.clone(), done.clone());
            move |event: Probe, ctx: Context| {
                let (told, done) = (told.clone(), done.clone());
                async move {
                    told.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Told::from(name, &ctx));
                    if event.fail && ctx.attempt() < 3 {
                        return Err(format!(
                            "probe {} fails on attempt {}",
                            event.n,
                            ctx.attempt()
                        ));
                    }
                    done.record((name, ctx.id().to_owned()));
                    Ok(())
                }
            }
        };
        let grouped = Handler::from_fn(
            HandlerSpec::new("in-group", destination.as_str()).group(group.as_str()),
            recording("in-group"),
        );
        let anonymous = Handler::from_fn(
            HandlerSpec::new("anonymous", destination.as_str()),
            recording("anonymous"),
        );
        let running = expect(
            App::new(self.channel.clone())
                .retry(fast_retries(3))
                .handler(grouped)
                .handler(anonymous)
                .start()
                .await,
            "starting the app",
        );
        let failing = Message::new(r#"{"n":1,"fail":true}"#)
            .with_content_type("application/json")
            .with_key("customer-7")
            .with_header("tenant", "acme")
            .with_header("correlation", "c-1");
        let plain = probe(2).with_header("tenant", "globex");
        let sent = [failing.clone(), plain.clone()];
        for message in &sent {
            expect(
                running
                    .publisher()
                    .send(&destination, message.clone())
                    .await,
                "send",
            );
        }
        done.wait_for(
            self.config.timeout,
            "both messages handled in the group and by the anonymous subscription",
            |seen| {
                sent.iter().all(|m| {
                    ["in-group", "anonymous"]
                        .iter()
                        .all(|h| seen.contains_key(&(*h, m.id().to_owned())))
                })
            },
        )
        .await;
        expect(running.shutdown().await, "shutdown");
        let told = told.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for call in &told {
            let message = sent
                .iter()
                .find(|m| m.id() == call.id)
                .unwrap_or_else(|| panic!("a handler was told an id never sent: {call:?}"));
            assert_eq!(call.payload, message.payload().to_vec(), "{call:?}");
            assert_eq!(call.key.as_deref(), message.key(), "the key: {call:?}");
            for (name, value) in message.headers().iter() {
                assert_eq!(
                    call.headers.get(name).map(String::as_str),
                    Some(value),
                    "header {name}: {call:?}"
                );
            }
            assert_eq!(call.destination, destination, "{call:?}");
            let want_group = (call.handler == "in-group").then(|| group.clone());
            assert_eq!(call.group, want_group, "the group: {call:?}");
        }
        let attempts = |handler: &str, message: &Message| -> Vec<u32> {
            told.iter()
                .filter(|c| c.handler == handler && c.id == message.id())
                .map(|c| c.attempt)
                .collect()
        };
        assert_eq!(
            attempts("in-group", &failing),
            [1, 2, 3],
            "a message failing twice is called with attempts 1, 2, 3: {told:?}"
        );
        assert_eq!(attempts("in-group", &plain), [1], "{told:?}");
        assert_eq!(attempts("anonymous", &failing), [1, 2, 3], "{told:?}");
        assert_eq!(attempts("anonymous", &plain), [1], "{told:?}");
    }

    /// [`Case::NackDelayIsHonoured`](super::Case::NackDelayIsHonoured).
    pub(super) async fn nack_delay(&self) {
        let (destination, group) = (unique("delay"), unique("g"));
        let claimed = self.channel.capabilities().delayed_redelivery;
        // Not whole seconds: a backend that counts its delays in seconds (SQS) must round up.
        let delay = Duration::from_millis(1_500);
        let mut consumer = self.consumer(&destination, Some(&group)).await;
        let (delayed, other) = (probe(1), probe(2));
        self.send_all(&destination, std::slice::from_ref(&delayed))
            .await;
        let first = receive(&mut consumer, self.config.timeout, "the message to nack").await;
        assert_eq!(first.message().id(), delayed.id());
        let first_attempt = first.attempt();
        // Taken before the nack is sent, so the broker's own delay can only end later.
        let nacked_at = Instant::now();
        expect(first.nack(Some(delay)).await, "nack with a delay");
        if !claimed {
            println!(
                "{}: delayed redelivery not claimed; checking only that a message nacked with \
                 a delay comes back",
                self.channel.backend()
            );
        }
        self.send_all(&destination, std::slice::from_ref(&other))
            .await;
        let mut got_other = false;
        let again = loop {
            let delivery = receive(
                &mut consumer,
                delay + self.config.timeout,
                "the delayed redelivery",
            )
            .await;
            if delivery.message().id() == other.id() && !got_other {
                // The consumer holds nothing for the delayed message: others keep coming.
                got_other = true;
                expect(delivery.ack().await, "ack");
                continue;
            }
            break delivery;
        };
        let waited = nacked_at.elapsed();
        assert_eq!(
            again.message().id(),
            delayed.id(),
            "another message came instead of the redelivery"
        );
        assert_eq!(again.message().payload(), delayed.payload());
        assert!(
            again.attempt() > first_attempt,
            "the redelivery has attempt {} after {first_attempt}",
            again.attempt()
        );
        if claimed {
            assert!(
                waited >= delay,
                "nacked with a delay of {delay:?}, the message came back after {waited:?}"
            );
            assert!(
                got_other,
                "a message sent after the nack did not arrive before the delayed one: the \
                 consumer held its place while the delay ran"
            );
        }
        expect(again.ack().await, "ack");
        if !got_other {
            let delivery = receive(&mut consumer, self.config.timeout, "the other message").await;
            assert_eq!(delivery.message().id(), other.id());
            expect(delivery.ack().await, "ack");
        }
    }

    /// Opens a consumer of `subscription`, receives the one message it holds and goes away
    /// without settling it, as a process that crashes while handling it does; returns the
    /// delivery's attempt.
    async fn crash_once(&self, subscription: &Subscription, message: &Message) -> u32 {
        let mut consumer = expect(
            self.channel.consumer(subscription).await,
            "opening a consumer to crash",
        );
        let delivery = receive(
            &mut consumer,
            self.config.timeout,
            "the message that crashes its consumer",
        )
        .await;
        assert_eq!(delivery.message().id(), message.id());
        let attempt = delivery.attempt();
        drop(delivery);
        drop(consumer);
        attempt
    }

    /// [`Case::MaxDeliveriesStopsAMessageThatKeepsComingBack`](super::Case::MaxDeliveriesStopsAMessageThatKeepsComingBack).
    pub(super) async fn max_deliveries(&self) {
        let (poison_at, fresh_at, group) = (unique("poison"), unique("fresh"), unique("g"));
        let crashes = 3;
        let subscription = Subscription::new(poison_at.as_str()).group(group.as_str());
        let claimed = self.channel.counts_deliveries(&subscription);
        for destination in [&poison_at, &fresh_at] {
            expect(
                self.channel.provision(destination, Some(&group)).await,
                "provision",
            );
        }
        let (poison, fresh) = (probe(1), probe(2));
        self.send_all(&poison_at, std::slice::from_ref(&poison))
            .await;
        let mut seen = Vec::new();
        for _ in 0..crashes {
            seen.push(self.crash_once(&subscription, &poison).await);
        }
        assert_eq!(
            seen.first(),
            Some(&1),
            "a first delivery has attempt 1: {seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[1] >= w[0]),
            "attempts went down across redeliveries: {seen:?}"
        );
        let backend = self.channel.backend();
        let though = if claimed {
            ", though counted deliveries are claimed"
        } else {
            ""
        };
        // The bound the poison's next delivery is past: what it was delivered so far. A
        // count may grow by more than one a crash (SQS counts a receive the consumer made
        // and never handed out), never by less.
        let counted = seen.windows(2).all(|w| w[1] > w[0]);
        let flagged = !counted && seen[1..].iter().all(|a| *a >= 2);
        let bound = if counted {
            seen.last().copied()
        } else if flagged {
            println!(
                "{backend}: deliveries left unsettled by consumers that went away are only \
                 flagged as redelivered (attempts {seen:?}){though}; checking that \
                 max_deliveries 1 stops such a message"
            );
            Some(1)
        } else {
            println!(
                "{backend}: the delivery count does not outlive the consumer (attempts \
                 {seen:?}){though}: max_deliveries cannot stop a message that crashes the \
                 process here; checking only that it is still delivered and handled"
            );
            None
        };
        let calls = Recorder::<u64>::new();
        let handler = |name: &'static str, destination: &str, max_deliveries: u32| {
            let calls = calls.clone();
            Handler::from_fn(
                HandlerSpec::new(name, destination)
                    .group(group.as_str())
                    .retry(RetryPolicy {
                        max_deliveries,
                        ..fast_retries(3)
                    }),
                move |event: Probe, _ctx: Context| {
                    calls.record(event.n);
                    async { Ok::<(), String>(()) }
                },
            )
        };
        let mut dead_letters = self.dead_letter_consumer(&poison_at, &group).await;
        let running = expect(
            App::new(self.channel.clone())
                .handler(handler(
                    "poison",
                    &poison_at,
                    bound.unwrap_or(RetryPolicy::default().max_deliveries),
                ))
                // A first delivery is within the smallest bound: it is handled.
                .handler(handler("fresh", &fresh_at, 1))
                .start()
                .await,
            "starting the app",
        );
        expect(
            running.publisher().send(&fresh_at, fresh.clone()).await,
            "send",
        );
        if let Some(bound) = bound {
            let dead = receive(
                &mut dead_letters,
                self.config.timeout,
                "the crashing message's dead letter",
            )
            .await;
            let headers = dead.message().headers();
            assert_eq!(dead.message().id(), poison.id());
            assert_eq!(dead.message().payload(), poison.payload());
            assert_eq!(
                headers.get(header::DEAD_LETTER_ATTEMPTS),
                Some("0"),
                "the handler was never called for it: {headers:?}"
            );
            assert_eq!(headers.get(header::DEAD_LETTER_GROUP), Some(group.as_str()));
            let error = headers.get(header::DEAD_LETTER_ERROR).unwrap_or_default();
            let times = error
                .strip_prefix("delivered ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok());
            assert!(
                times.is_some_and(|times| times > bound),
                "the dead-letter error says how often it came, more than max_deliveries \
                 {bound}: {error:?}"
            );
            expect(dead.ack().await, "ack of the dead letter");
        }
        let handled: &[u64] = if bound.is_some() { &[2] } else { &[1, 2] };
        calls
            .wait_for(
                self.config.timeout,
                "the messages within max_deliveries to be handled",
                |seen| handled.iter().all(|n| seen.contains_key(n)),
            )
            .await;
        expect(running.shutdown().await, "shutdown");
        if bound.is_some() {
            assert_eq!(
                calls.count(&1),
                0,
                "the handler was called for a message past max_deliveries"
            );
        }
    }

    /// [`Case::ProcessorOutputsHaveDerivedIds`](super::Case::ProcessorOutputsHaveDerivedIds).
    pub(super) async fn processor_output_ids(&self) {
        let (input_at, output_at, group) = (unique("proc-in"), unique("proc-out"), unique("g"));
        // Per call: the input's id and the ids its outputs should carry.
        let expected = Arc::new(Mutex::new(Vec::<(String, Vec<String>)>::new()));
        let processor = || {
            let expected = expected.clone();
            Handler::processor(
                HandlerSpec::new("splits", input_at.as_str())
                    .group(group.as_str())
                    .output(output_at.as_str()),
                move |event: Probe, ctx: Context| {
                    let ids = (0..2)
                        .map(|index| ctx.derive_output(index, Message::new("")).id().to_owned())
                        .collect();
                    expected
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((ctx.id().to_owned(), ids));
                    let outputs = (0..2)
                        .map(|part| Probe {
                            n: event.n * 10 + part,
                            fail: false,
                        })
                        .collect();
                    async move { Ok::<_, String>(Events(outputs)) }
                },
            )
        };
        let mut outputs = self.consumer(&output_at, Some(&unique("down"))).await;
        let input = probe(4).with_key("customer-4");
        let mut runs = Vec::new();
        // The second app, with a store that never saw the input, handles the same input
        // again, as another instance does after a crash before the acknowledgement.
        for run in ["first", "second"] {
            let running = expect(
                App::new(self.channel.clone())
                    .idempotency(MemoryIdempotencyStore::new())
                    .handler(processor())
                    .start()
                    .await,
                "starting the app",
            );
            expect(
                running.publisher().send(&input_at, input.clone()).await,
                "send",
            );
            let mut got = Vec::new();
            for _ in 0..2 {
                let delivery = receive(
                    &mut outputs,
                    self.config.timeout,
                    &format!("the {run} run's outputs"),
                )
                .await;
                got.push(delivery.message().clone());
                expect(delivery.ack().await, "ack");
            }
            expect(running.shutdown().await, "shutdown");
            got.sort_by_key(probe_number);
            runs.push(got);
        }
        let expected = expected.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            expected.len(),
            2,
            "the processor ran once per app: {expected:?}"
        );
        assert_eq!(
            expected[0], expected[1],
            "derive_output changed between runs"
        );
        let (input_id, want) = &expected[0];
        assert_eq!(input_id, input.id());
        for got in &runs {
            let ids: Vec<&str> = got.iter().map(Message::id).collect();
            assert_eq!(ids, *want, "the outputs' ids are derived from the input's");
            assert_eq!(
                got.iter().map(probe_number).collect::<Vec<_>>(),
                [40, 41],
                "the outputs' payloads"
            );
            for output in got {
                assert_ne!(output.id(), input.id());
                let version = uuid::Uuid::parse_str(output.id())
                    .map(|id| id.get_version_num())
                    .unwrap_or_default();
                assert_eq!(
                    version,
                    5,
                    "an output id is a name-based UUID: {}",
                    output.id()
                );
                assert_eq!(
                    output.headers().get(header::CAUSATION_ID),
                    Some(input.id()),
                    "the input's id is the output's causation"
                );
                assert_eq!(
                    output.key(),
                    input.key(),
                    "the output keeps the input's key"
                );
            }
        }
        assert_ne!(
            runs[0][0].id(),
            runs[0][1].id(),
            "each output has its own id"
        );
        assert_eq!(
            (runs[0][0].id(), runs[0][1].id()),
            (runs[1][0].id(), runs[1][1].id()),
            "the input handled again gave outputs with other ids"
        );
    }

    /// [`Case::AnonymousDeadLettersAreKept`](super::Case::AnonymousDeadLettersAreKept).
    pub(super) async fn anonymous_dead_letters(&self) {
        let destination = unique("anon-dlq");
        let mut consumer = self.consumer(&destination, None).await;
        let sent: Vec<Message> = (0..3)
            .map(|n| {
                probe(n)
                    .with_key(format!("k{n}"))
                    .with_header("tenant", "acme")
            })
            .collect();
        self.send_all(&destination, &sent).await;
        for _ in 0..sent.len() {
            let delivery = receive(&mut consumer, self.config.timeout, "a message to reject").await;
            expect(
                delivery.dead_letter("rejected anonymously", 1).await,
                "dead_letter",
            );
        }
        // The subscription goes; its dead letters stay.
        drop(consumer);
        let check = |dead: &Message| {
            let original = sent
                .iter()
                .find(|m| m.id() == dead.id())
                .unwrap_or_else(|| panic!("a dead letter never sent: {dead:?}"));
            assert_eq!(dead.payload(), original.payload());
            assert_eq!(dead.key(), original.key());
            let headers = dead.headers();
            assert_eq!(headers.get("tenant"), Some("acme"));
            assert_eq!(
                headers.get(header::DEAD_LETTER_ERROR),
                Some("rejected anonymously")
            );
            assert_eq!(headers.get(header::DEAD_LETTER_ATTEMPTS), Some("1"));
            assert_eq!(
                headers.get(header::DEAD_LETTER_DESTINATION),
                Some(destination.as_str())
            );
            assert!(
                headers
                    .get(header::DEAD_LETTER_GROUP)
                    .unwrap_or_default()
                    .is_empty(),
                "an anonymous subscription's dead letter names no group: {headers:?}"
            );
        };
        let sorted = |messages: &[Message]| {
            let mut ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
            ids.sort();
            ids
        };
        let listed = self.list_dead_letters(&destination, None).await;
        assert_eq!(sorted(&listed), sorted(&sent), "the dead letters listed");
        listed.iter().for_each(check);

        let purge = RedriveOptions::new().ids([sent[0].id().to_owned()]);
        let purged = self.channel.purge_dead_letters(&destination, None, &purge);
        let purged = expect(
            within(self.config.timeout, "a purge", purged).await,
            "purging",
        );
        assert_eq!(sorted(&purged), sorted(&sent[..1]), "the one purged by id");

        let mut dead_letters = expect(
            self.channel.dead_letters(&destination, None).await,
            "opening the anonymous dead letters",
        );
        let mut read = Vec::new();
        for _ in 1..sent.len() {
            let dead = receive(&mut dead_letters, self.config.timeout, "a dead letter").await;
            check(dead.message());
            read.push(dead.message().clone());
            expect(dead.ack().await, "ack of a dead letter");
        }
        assert_eq!(sorted(&read), sorted(&sent[1..]), "the dead letters read");
        drop(dead_letters);
        // Neither the purged one nor those read are left.
        let left = self.list_dead_letters(&destination, None).await;
        assert!(
            left.is_empty(),
            "dead letters left after they were acknowledged: {left:?}"
        );
    }

    /// [`Case::PublishingWithNoGroupIsDecided`](super::Case::PublishingWithNoGroupIsDecided).
    /// [`Case::UncommonHeadersArriveIntactOrAreRefused`](super::Case::UncommonHeadersArriveIntactOrAreRefused).
    pub(super) async fn uncommon_headers(&self) {
        let (destination, group) = (unique("headers"), unique("g"));
        let backend = self.channel.backend();
        let mut consumer = self.consumer(&destination, Some(&group)).await;
        let producer = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        // What foreign clients send, or what a careless encoding would turn into another
        // header: cut at the NUL, `message-id\0x` would replace the message's id.
        let headers = [
            ("name\0with-nul", "v"),
            ("message-id\0x", "shadow"),
            ("ünïcödé-名前", "välue"),
            ("with space", "v"),
            ("Upper-Case", "v"),
            ("x", "value\0with-nul"),
            ("x", ""),
        ];
        let mut carried = HashMap::new();
        let mut refused = Vec::new();
        for (n, (name, value)) in (0..).zip(headers) {
            let message = probe(n).with_header(name, value);
            match producer.send(message.clone()).await {
                Ok(()) => {
                    carried.insert(message.id().to_owned(), (name, value));
                }
                Err(err) => {
                    println!("{backend}: header {name:?} = {value:?} refused: {err}");
                    refused.push(message.id().to_owned());
                }
            }
        }
        println!(
            "{backend}: {} of {} uncommon headers carried",
            carried.len(),
            headers.len()
        );
        let mut arrived = 0;
        while arrived < carried.len() {
            let delivery = receive(&mut consumer, self.config.timeout, "a message sent").await;
            let message = delivery.message();
            assert!(
                !refused.iter().any(|id| id == message.id()),
                "{backend} refused a message and delivered it all the same: {message:?}"
            );
            let Some((name, value)) = carried.get(message.id()) else {
                panic!("a message nobody sent, or with another id: {message:?}");
            };
            assert_eq!(
                message.headers().get(name),
                Some(*value),
                "header {name:?} is carried, so it must arrive as sent: {message:?}"
            );
            arrived += 1;
            expect(delivery.ack().await, "ack");
        }
    }

    pub(super) async fn no_group_publish(&self) {
        let (destination, group) = (unique("nobody"), unique("late"));
        let kept = self.channel.capabilities().keeps_messages_without_groups;
        let backend = self.channel.backend();
        // One key: where the backend orders by key, a kept message must come first.
        let (early, later) = (probe(1).with_key("k"), probe(2).with_key("k"));
        let producer = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        let sent = producer.send(early.clone()).await;
        match (&sent, kept) {
            (Ok(()), true) => {}
            (Ok(()), false) => {
                println!("{backend}: a message nobody reads is accepted, and must reach nobody")
            }
            (Err(err), true) => {
                panic!("{backend} claims to keep messages without groups, but refused one: {err}")
            }
            (Err(err), false) => println!("{backend}: a message nobody reads is refused: {err}"),
        }
        let mut consumer = self.consumer(&destination, Some(&group)).await;
        if kept {
            let delivery = receive(
                &mut consumer,
                self.config.timeout,
                "the message published before any group existed",
            )
            .await;
            assert_eq!(delivery.message().id(), early.id());
            expect(delivery.ack().await, "ack");
        }
        // A message sent now reaches the group; when it arrives, one kept from before
        // would have been there already.
        let producer = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        expect(
            producer.send(later.clone()).await,
            "send once the group exists",
        );
        let delivery = receive(
            &mut consumer,
            self.config.timeout,
            "the message sent once the group exists",
        )
        .await;
        assert_eq!(
            delivery.message().id(),
            later.id(),
            "{backend} claims to keep no message without a group, but a group made later got one"
        );
        expect(delivery.ack().await, "ack");
        expect_nothing(
            &mut consumer,
            &self.config,
            "nothing more in the group made later",
        )
        .await;
    }

    /// [`Case::BacklogCountsWhatIsNotSettled`](super::Case::BacklogCountsWhatIsNotSettled).
    pub(super) async fn backlog(&self) {
        let (destination, group) = (unique("backlog"), unique("g"));
        let backend = self.channel.backend();
        expect(
            self.channel.provision(&destination, Some(&group)).await,
            "provision",
        );
        let sent: Vec<Message> = (0..3).map(probe).collect();
        self.send_all(&destination, &sent).await;
        let subscription = Subscription::new(destination.as_str())
            .group(group.as_str())
            .prefetch(1);
        let mut consumer = expect(
            self.channel.consumer(&subscription).await,
            "opening a consumer",
        );
        // Three waiting; two where the broker has pushed one to the consumer already and
        // does not count what it handed out (AMQP).
        let waiting = backlog_until(&mut consumer, &self.config, "3 messages sent", |n| {
            (2..=3).contains(&n)
        })
        .await;
        let delays = self.channel.capabilities().delayed_redelivery;
        for n in 0..sent.len() {
            let delivery = receive(&mut consumer, self.config.timeout, "a message sent").await;
            if delays && n == sent.len() - 1 {
                // Longer than the check below lasts: it is counted while it waits.
                let delay = self.config.timeout * 2;
                expect(delivery.nack(Some(delay)).await, "nack with a delay");
            } else {
                expect(delivery.ack().await, "ack");
            }
        }
        let Some(waiting) = waiting else {
            println!("{backend}: the backlog of a group cannot be told");
            return;
        };
        let left = u64::from(delays);
        backlog_until(
            &mut consumer,
            &self.config,
            &format!("{left} once the others were acked"),
            |n| n == left,
        )
        .await;
        println!("{backend}: a backlog of {waiting} with 3 sent, {left} once settled");
    }
}
