//! The semantics of the memory bus, one test (or a few) per rule.
//!
//! Absence is checked with `timeout(Duration::ZERO, …)`: it polls the future once, and
//! `receive` hands out a waiting message in its first poll, so "pending after one poll"
//! means "nothing may be delivered now". Timeouts elsewhere are upper bounds only.

use crate::{MemoryAcknowledger, MemoryChannel, MemoryConfig, MemoryConsumer, MemoryProducer};
use event_binder_core::{
    header, BoxChannel, Capabilities, Channel, ChannelUrl, Consumer, Delivery, Error, Message,
    Producer, Subscription,
};
use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// The upper bound for anything that should happen promptly.
const LIMIT: Duration = Duration::from_secs(10);

fn group(destination: &str, group: &str) -> Subscription {
    Subscription::new(destination).group(group)
}

async fn recv<C: Consumer>(consumer: &mut C) -> Delivery<C::Acknowledger> {
    timeout(LIMIT, consumer.receive())
        .await
        .expect("no delivery in time")
        .expect("receive failed")
}

/// Receives, acks, and returns the payload.
async fn handle(consumer: &mut impl Consumer) -> String {
    let delivery = recv(consumer).await;
    let payload = text(&delivery).to_owned();
    delivery.ack().await.expect("ack");
    payload
}

/// Whether `receive` has nothing to hand out right now.
async fn nothing_now(consumer: &mut MemoryConsumer) -> bool {
    timeout(Duration::ZERO, consumer.receive()).await.is_err()
}

fn text<A>(delivery: &Delivery<A>) -> &str {
    std::str::from_utf8(delivery.message().payload()).expect("utf-8 payload")
}

async fn send_all(producer: &MemoryProducer, payloads: &[&str]) {
    for payload in payloads {
        producer
            .send(Message::new(payload.to_string()))
            .await
            .expect("send");
    }
}

fn is_shut_down(result: &event_binder_core::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::ShutDown("memory channel")))
}

// 1. Names -------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_names_are_refused_before_anything_happens() {
    let channel = MemoryChannel::new();
    let invalid = |result: event_binder_core::Result<()>| {
        assert!(
            matches!(result, Err(Error::InvalidName { .. })),
            "{result:?}"
        );
    };
    invalid(channel.provision("a.b", None).await);
    invalid(channel.provision("ok", Some("b c")).await);
    invalid(channel.producer("x y").await.map(drop));
    invalid(channel.consumer(&group("ok", "")).await.map(drop));
    invalid(channel.consumer(&Subscription::new("ä")).await.map(drop));
    invalid(channel.dead_letters("ok", Some("g!")).await.map(drop));
    invalid(channel.dead_letters("o/k", None).await.map(drop));
    assert!(!channel.has_destination("ok"), "nothing was created");
    // Invalid names are refused even on a closed channel: the name is the first problem.
    channel.close().await.unwrap();
    invalid(channel.provision("a.b", None).await);
}

// 2. Fan-out and competing consumers -----------------------------------------------------

#[tokio::test]
async fn every_group_gets_every_message_intact() {
    let channel = MemoryChannel::new();
    let mut billing = channel.consumer(&group("orders", "billing")).await.unwrap();
    let mut shipping = channel
        .consumer(&group("orders", "shipping"))
        .await
        .unwrap();
    let sent = Message::new(r#"{"order":42}"#)
        .with_key("customer-7")
        .with_header("tenant", "acme")
        .with_content_type("application/json");
    channel
        .producer("orders")
        .await
        .unwrap()
        .send(sent.clone())
        .await
        .unwrap();

    for (consumer, name) in [(&mut billing, "billing"), (&mut shipping, "shipping")] {
        let delivery = recv(consumer).await;
        assert_eq!(delivery.message(), &sent);
        assert_eq!(delivery.attempt(), 1);
        assert_eq!(delivery.destination(), "orders");
        assert_eq!(delivery.group(), Some(name));
        delivery.ack().await.unwrap();
        assert!(nothing_now(consumer).await);
    }
}

#[tokio::test]
async fn members_of_a_group_share_the_work() {
    let channel = MemoryChannel::new();
    let mut first = channel.consumer(&group("orders", "billing")).await.unwrap();
    let mut second = channel.consumer(&group("orders", "billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["a", "b", "c", "d"]).await;

    let a = recv(&mut first).await;
    let b = recv(&mut second).await;
    let c = recv(&mut first).await;
    let d = recv(&mut second).await;
    let got: Vec<&str> = [&a, &b, &c, &d].into_iter().map(text).collect();
    assert_eq!(got, ["a", "b", "c", "d"], "each message once, in order");
    assert!(nothing_now(&mut first).await && nothing_now(&mut second).await);
    assert_eq!(channel.queued("orders", "billing"), 4, "four in flight");
    for delivery in [a, b, c, d] {
        delivery.ack().await.unwrap();
    }
    assert_eq!(channel.queued("orders", "billing"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_under_back_pressure_handle_each_message_once() {
    const MESSAGES: usize = 2_000;
    let channel = MemoryChannel::with_config(MemoryConfig::new().capacity(16));
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut consumer = channel.consumer(&group("jobs", "workers")).await.unwrap();
        let seen = Arc::clone(&seen);
        workers.push(tokio::spawn(async move {
            loop {
                match consumer.receive().await {
                    Ok(delivery) => {
                        *seen
                            .lock()
                            .unwrap()
                            .entry(text(&delivery).to_owned())
                            .or_default() += 1;
                        delivery.ack().await.unwrap();
                    }
                    Err(error) => return error,
                }
            }
        }));
    }
    let producer = channel.producer("jobs").await.unwrap();
    for n in 0..MESSAGES {
        // Capacity 16: the producer keeps waiting for the workers to make room.
        timeout(LIMIT, producer.send(Message::new(n.to_string())))
            .await
            .expect("send in time")
            .unwrap();
    }
    channel.wait_idle(LIMIT).await.unwrap();
    channel.close().await.unwrap();
    for worker in workers {
        let error = timeout(LIMIT, worker).await.unwrap().unwrap();
        assert!(matches!(error, Error::ShutDown(_)), "{error}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), MESSAGES);
    assert!(seen.values().all(|count| *count == 1), "each handled once");
}

// 3. Durable groups ----------------------------------------------------------------------

#[tokio::test]
async fn a_provisioned_group_keeps_messages_until_its_consumer_runs() {
    let channel = MemoryChannel::new();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["before the group"]).await;
    channel.provision("orders", Some("billing")).await.unwrap();
    channel.provision("orders", Some("billing")).await.unwrap(); // idempotent
    send_all(&producer, &["one", "two"]).await;
    assert_eq!(channel.queued("orders", "billing"), 2);

    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    assert_eq!(handle(&mut consumer).await, "one");
    assert_eq!(handle(&mut consumer).await, "two");
    assert!(
        nothing_now(&mut consumer).await,
        "not what came before the group"
    );
}

#[tokio::test]
async fn a_group_lives_on_after_its_consumer_is_gone() {
    let channel = MemoryChannel::new();
    drop(channel.consumer(&group("orders", "billing")).await.unwrap());
    send_all(&channel.producer("orders").await.unwrap(), &["meanwhile"]).await;
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    assert_eq!(handle(&mut consumer).await, "meanwhile");
}

// 4. Anonymous subscriptions -------------------------------------------------------------

#[tokio::test]
async fn an_anonymous_subscription_sees_what_follows_and_leaves_nothing_behind() {
    let channel = MemoryChannel::with_config(
        MemoryConfig::new()
            .capacity(1)
            .send_timeout(Duration::from_millis(10)),
    );
    let producer = channel.producer("news").await.unwrap();
    send_all(&producer, &["too early"]).await;
    let mut listener = channel.consumer(&Subscription::new("news")).await.unwrap();
    assert_eq!(channel.subscriptions("news"), 1);
    send_all(&producer, &["fresh"]).await;
    let delivery = recv(&mut listener).await;
    assert_eq!(text(&delivery), "fresh");
    assert_eq!(delivery.group(), None);
    assert!(nothing_now(&mut listener).await);

    drop(listener);
    assert_eq!(channel.subscriptions("news"), 0);
    // Capacity 1, no consumer: these would time out if the subscription were still fed.
    send_all(&producer, &["x", "y", "z"]).await;
    // Settling a delivery of a subscription that is gone is harmless.
    delivery.ack().await.unwrap();
    channel.wait_idle(LIMIT).await.unwrap();
}

#[tokio::test]
async fn an_anonymous_delivery_dropped_after_its_subscription_is_not_counted_forever() {
    let channel = MemoryChannel::new();
    let mut listener = channel.consumer(&Subscription::new("news")).await.unwrap();
    send_all(&channel.producer("news").await.unwrap(), &["a"]).await;
    let delivery = recv(&mut listener).await;
    drop(listener);
    drop(delivery);
    channel.wait_idle(LIMIT).await.unwrap();
    assert_eq!(channel.subscriptions("news"), 0);
}

// 5. Deliveries: attempts, nack, drop ----------------------------------------------------

#[tokio::test]
async fn attempts_count_every_redelivery() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["x"]).await;
    let first = recv(&mut consumer).await;
    assert_eq!(first.attempt(), 1);
    first.nack(None).await.unwrap();
    let second = recv(&mut consumer).await;
    assert_eq!(second.attempt(), 2);
    drop(second);
    let third = recv(&mut consumer).await;
    assert_eq!(third.attempt(), 3);
    third.ack().await.unwrap();
    assert_eq!(channel.queued("orders", "billing"), 0);
    assert!(nothing_now(&mut consumer).await);
}

#[tokio::test]
async fn nacked_messages_go_back_to_the_front_in_their_order() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["a", "b", "c"]).await;
    let a = recv(&mut consumer).await;
    let b = recv(&mut consumer).await;
    b.nack(None).await.unwrap();
    a.nack(None).await.unwrap();
    let again: Vec<Delivery<MemoryAcknowledger>> = vec![
        recv(&mut consumer).await,
        recv(&mut consumer).await,
        recv(&mut consumer).await,
    ];
    let order: Vec<(&str, u32)> = again.iter().map(|d| (text(d), d.attempt())).collect();
    assert_eq!(order, [("a", 2), ("b", 2), ("c", 1)]);
}

#[tokio::test]
async fn a_nack_with_delay_redelivers_after_it_and_wakes_a_waiting_receiver() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["later"]).await;
    let delivery = recv(&mut consumer).await;

    let mut waiting = pin!(consumer.receive());
    assert!(
        timeout(Duration::ZERO, waiting.as_mut()).await.is_err(),
        "waits"
    );
    let delay = Duration::from_millis(150);
    let start = Instant::now();
    delivery.nack(Some(delay)).await.unwrap();
    let again = timeout(LIMIT, waiting).await.expect("woken").unwrap();
    assert!(
        start.elapsed() >= delay,
        "redelivered after {:?}",
        start.elapsed()
    );
    assert_eq!((text(&again), again.attempt()), ("later", 2));
}

#[tokio::test]
async fn an_unsettled_delivery_dropped_comes_back_first() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["a", "b"]).await;
    drop(recv(&mut consumer).await);
    let again = recv(&mut consumer).await;
    assert_eq!((text(&again), again.attempt()), ("a", 2));
}

#[tokio::test]
async fn dropping_a_consumer_with_deliveries_in_hand_returns_them_to_the_group() {
    let channel = MemoryChannel::new();
    let mut leaving = channel.consumer(&group("orders", "billing")).await.unwrap();
    let mut staying = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["a", "b"]).await;
    let in_hand = vec![recv(&mut leaving).await, recv(&mut leaving).await];
    assert!(nothing_now(&mut staying).await);
    drop(leaving);
    drop(in_hand);
    let a = recv(&mut staying).await;
    let b = recv(&mut staying).await;
    assert_eq!(
        [(text(&a), a.attempt()), (text(&b), b.attempt())],
        [("a", 2), ("b", 2)]
    );
}

// 4/5. Dead letters ----------------------------------------------------------------------

#[tokio::test]
async fn a_dead_letter_lands_in_its_groups_dead_letter_queue() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let sent = Message::new("poison").with_key("k");
    channel
        .producer("orders")
        .await
        .unwrap()
        .send(sent.clone())
        .await
        .unwrap();
    recv(&mut consumer)
        .await
        .dead_letter("boom", 3)
        .await
        .unwrap();
    assert_eq!(channel.queued("orders", "billing"), 0, "original removed");
    assert_eq!(channel.dead_lettered("orders", Some("billing")), 1);
    assert_eq!(channel.dead_lettered("orders", Some("other")), 0);
    assert!(nothing_now(&mut consumer).await);

    let mut dead = channel
        .dead_letters("orders", Some("billing"))
        .await
        .unwrap();
    let letter = recv(&mut dead).await;
    let headers = letter.message().headers();
    assert_eq!(letter.message().id(), sent.id());
    assert_eq!(letter.message().key(), Some("k"));
    assert_eq!(headers.get(header::DEAD_LETTER_ERROR), Some("boom"));
    assert_eq!(headers.get(header::DEAD_LETTER_ATTEMPTS), Some("3"));
    assert_eq!(headers.get(header::DEAD_LETTER_DESTINATION), Some("orders"));
    assert_eq!(headers.get(header::DEAD_LETTER_GROUP), Some("billing"));
    assert_eq!(letter.attempt(), 1);
    assert_eq!(
        (letter.destination(), letter.group()),
        ("orders", Some("billing"))
    );

    // The dead-letter queue is read like a group: a nack brings it back.
    letter.nack(None).await.unwrap();
    let letter = recv(&mut dead).await;
    assert_eq!(letter.attempt(), 2);
    // Dead-lettering a dead letter stores it back in the same queue.
    letter.dead_letter("again", 1).await.unwrap();
    assert_eq!(channel.dead_lettered("orders", Some("billing")), 1);
    let letter = recv(&mut dead).await;
    assert_eq!(
        letter.message().headers().get(header::DEAD_LETTER_ERROR),
        Some("again")
    );
    letter.ack().await.unwrap();
    assert_eq!(channel.dead_lettered("orders", Some("billing")), 0);
}

#[tokio::test]
async fn anonymous_subscriptions_share_one_dead_letter_queue_per_destination() {
    let channel = MemoryChannel::new();
    let mut one = channel.consumer(&Subscription::new("news")).await.unwrap();
    let mut two = channel.consumer(&Subscription::new("news")).await.unwrap();
    send_all(&channel.producer("news").await.unwrap(), &["x"]).await;
    recv(&mut one).await.dead_letter("bad", 1).await.unwrap();
    let from_two = recv(&mut two).await;
    drop(two); // the subscription goes; its dead letter is still kept
    from_two.dead_letter("bad", 1).await.unwrap();
    assert_eq!(channel.dead_lettered("news", None), 2);
    let mut dead = channel.dead_letters("news", None).await.unwrap();
    let letter = recv(&mut dead).await;
    assert_eq!(
        letter.message().headers().get(header::DEAD_LETTER_GROUP),
        Some("")
    );
    assert_eq!(letter.group(), None);
}

#[tokio::test]
async fn a_dead_letter_that_finds_no_room_returns_the_message_to_its_group() {
    let channel = MemoryChannel::with_config(
        MemoryConfig::new()
            .capacity(1)
            .send_timeout(Duration::from_millis(30)),
    );
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["first"]).await;
    recv(&mut consumer)
        .await
        .dead_letter("bad", 1)
        .await
        .unwrap();
    send_all(&producer, &["second"]).await;
    let error = recv(&mut consumer)
        .await
        .dead_letter("bad", 1)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the dead-letter queue of group billing is full"),
        "{error}"
    );
    assert_eq!(channel.dead_lettered("orders", Some("billing")), 1);
    let back = recv(&mut consumer).await;
    assert_eq!((text(&back), back.attempt()), ("second", 2));
}

// 6. Ordering by key ---------------------------------------------------------------------

#[tokio::test]
async fn a_key_in_flight_holds_back_later_messages_with_that_key_only() {
    let channel = MemoryChannel::new();
    let mut first = channel.consumer(&group("orders", "billing")).await.unwrap();
    let mut second = channel.consumer(&group("orders", "billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    for (payload, key) in [
        ("k1", Some("k")),
        ("k2", Some("k")),
        ("free", None),
        ("j1", Some("j")),
    ] {
        let message = Message::new(payload).with_optional_key(key.map(Into::into));
        producer.send(message).await.unwrap();
    }
    let k1 = recv(&mut first).await;
    assert_eq!(text(&k1), "k1");
    assert_eq!(handle(&mut second).await, "free");
    assert_eq!(handle(&mut second).await, "j1");
    assert!(nothing_now(&mut second).await, "k2 waits for k1");

    // A receiver waiting for k2 is woken by the ack of k1.
    let mut waiting = pin!(second.receive());
    assert!(timeout(Duration::ZERO, waiting.as_mut()).await.is_err());
    k1.ack().await.unwrap();
    let k2 = timeout(LIMIT, waiting).await.expect("woken").unwrap();
    assert_eq!(text(&k2), "k2");
}

#[tokio::test]
async fn a_key_nacked_with_delay_keeps_its_place() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    for payload in ["k1", "k2"] {
        producer
            .send(Message::new(payload).with_key("k"))
            .await
            .unwrap();
    }
    producer.send(Message::new("free")).await.unwrap();
    let delay = Duration::from_millis(100);
    let start = Instant::now();
    recv(&mut consumer).await.nack(Some(delay)).await.unwrap();
    assert_eq!(handle(&mut consumer).await, "free", "unkeyed ones go past");
    let again = recv(&mut consumer).await;
    assert!(start.elapsed() >= delay);
    assert_eq!(
        (text(&again), again.attempt()),
        ("k1", 2),
        "k2 did not overtake k1"
    );
    assert!(nothing_now(&mut consumer).await, "k2 waits for k1's ack");
    again.ack().await.unwrap();
    assert_eq!(handle(&mut consumer).await, "k2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_holds_with_concurrent_consumers_and_redelivery() {
    const KEYS: usize = 5;
    const PER_KEY: usize = 60;
    let channel = MemoryChannel::with_config(MemoryConfig::new().capacity(32));
    let handled = Arc::new(Mutex::new(Vec::<(usize, usize)>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
        let handled = Arc::clone(&handled);
        workers.push(tokio::spawn(async move {
            while let Ok(delivery) = consumer.receive().await {
                let (key, seq) = {
                    let mut parts = text(&delivery).split(':');
                    let mut next = || parts.next().unwrap().parse::<usize>().unwrap();
                    (next(), next())
                };
                match (seq % 7, delivery.attempt()) {
                    (0, 1) => delivery.nack(None).await.unwrap(),
                    (3, 1) => delivery.nack(Some(Duration::from_millis(2))).await.unwrap(),
                    (5, 1) => drop(delivery),
                    _ => {
                        handled.lock().unwrap().push((key, seq));
                        delivery.ack().await.unwrap();
                    }
                }
            }
        }));
    }
    let producer = channel.producer("orders").await.unwrap();
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let message = Message::new(format!("{key}:{seq}")).with_key(format!("key-{key}"));
            timeout(LIMIT, producer.send(message))
                .await
                .unwrap()
                .unwrap();
        }
    }
    channel.wait_idle(LIMIT).await.unwrap();
    channel.close().await.unwrap();
    for worker in workers {
        timeout(LIMIT, worker).await.unwrap().unwrap();
    }
    let handled = handled.lock().unwrap();
    assert_eq!(handled.len(), KEYS * PER_KEY);
    for key in 0..KEYS {
        let order: Vec<usize> = handled.iter().filter(|h| h.0 == key).map(|h| h.1).collect();
        assert_eq!(order, (0..PER_KEY).collect::<Vec<_>>(), "key {key}");
    }
}

// 7. Back-pressure -----------------------------------------------------------------------

#[tokio::test]
async fn a_full_group_fails_the_send_after_the_timeout_and_nothing_is_enqueued() {
    let channel = MemoryChannel::with_config(
        MemoryConfig::new()
            .capacity(2)
            .send_timeout(Duration::from_millis(50)),
    );
    channel.provision("orders", Some("slow")).await.unwrap();
    let mut fast = channel.consumer(&group("orders", "fast")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["1", "2"]).await;
    for _ in 0..2 {
        recv(&mut fast).await.ack().await.unwrap();
    }
    let start = Instant::now();
    let error = producer.send(Message::new("3")).await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(50));
    match &error {
        Error::Timeout { what, after } => {
            assert_eq!(
                what,
                "memory: sending to destination orders (group slow is full at capacity 2; \
                 is its consumer running?)"
            );
            assert_eq!(*after, Duration::from_millis(50));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(channel.queued("orders", "fast"), 0, "not enqueued anywhere");
    assert_eq!(channel.queued("orders", "slow"), 2);
    assert!(nothing_now(&mut fast).await);
}

#[tokio::test]
async fn a_waiting_send_goes_through_when_room_is_made() {
    let channel = MemoryChannel::with_config(MemoryConfig::new().capacity(1));
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["1"]).await;
    let one = recv(&mut consumer).await; // in flight still counts
    let mut sending = pin!(producer.send(Message::new("2")));
    assert!(
        timeout(Duration::ZERO, sending.as_mut()).await.is_err(),
        "waits"
    );
    one.ack().await.unwrap();
    timeout(LIMIT, sending).await.expect("woken").unwrap();
    assert_eq!(handle(&mut consumer).await, "2");
}

#[tokio::test]
async fn a_nack_does_not_make_room() {
    let channel = MemoryChannel::with_config(
        MemoryConfig::new()
            .capacity(1)
            .send_timeout(Duration::from_millis(20)),
    );
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["1"]).await;
    recv(&mut consumer).await.nack(None).await.unwrap();
    assert!(matches!(
        producer.send(Message::new("2")).await,
        Err(Error::Timeout { .. })
    ));
    assert_eq!(channel.queued("orders", "billing"), 1);
}

// 8. Sizes -------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_messages_are_refused_before_anything_is_enqueued() {
    let channel = MemoryChannel::with_config(MemoryConfig::new().max_message_size(100));
    assert_eq!(
        channel.capabilities(),
        Capabilities::new()
            .ordering_by_key(true)
            .durable_groups(true)
            .max_message_size(100)
            .counts_deliveries(true)
            .delayed_redelivery(true)
    );
    channel.provision("orders", Some("billing")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    let big = Message::new(vec![0u8; 200]);
    let size = big.encoded_len();
    let error = producer.send(big.clone()).await.unwrap_err();
    assert!(
        matches!(error, Error::PayloadTooLarge { actual, limit: 100 } if actual == size),
        "{error:?}"
    );
    let error = producer
        .send_batch(vec![Message::new("small"), big])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::PayloadTooLarge { .. }));
    assert_eq!(
        channel.queued("orders", "billing"),
        0,
        "not even the small one"
    );
    producer
        .send_batch(vec![Message::new("a"), Message::new("b")])
        .await
        .unwrap();
    assert_eq!(channel.queued("orders", "billing"), 2);
}

// 9. Closing -----------------------------------------------------------------------------

#[tokio::test]
async fn close_wakes_receivers_and_senders_and_refuses_what_follows() {
    let channel = MemoryChannel::with_config(MemoryConfig::new().capacity(1));
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let mut idle = channel.consumer(&group("quiet", "idle")).await.unwrap();
    let producer = channel.producer("orders").await.unwrap();
    send_all(&producer, &["1"]).await;
    let in_hand = recv(&mut consumer).await;

    let mut receiving = pin!(async { recv_result(&mut idle).await });
    assert!(timeout(Duration::ZERO, receiving.as_mut()).await.is_err());
    let mut sending = pin!(producer.send(Message::new("2")));
    assert!(timeout(Duration::ZERO, sending.as_mut()).await.is_err());

    channel.clone().close().await.unwrap();
    assert!(channel.is_closed());
    assert!(is_shut_down(&timeout(LIMIT, receiving).await.unwrap()));
    assert!(is_shut_down(&timeout(LIMIT, sending).await.unwrap()));
    assert!(is_shut_down(&consumer.receive().await));
    assert!(is_shut_down(&producer.send(Message::new("3")).await));
    assert!(is_shut_down(&channel.producer("orders").await));
    assert!(is_shut_down(&channel.consumer(&group("orders", "x")).await));
    assert!(is_shut_down(&channel.dead_letters("orders", None).await));
    assert!(is_shut_down(&channel.provision("orders", None).await));
    // What is in hand can still be settled.
    in_hand.ack().await.unwrap();
}

async fn recv_result(
    consumer: &mut MemoryConsumer,
) -> event_binder_core::Result<Delivery<MemoryAcknowledger>> {
    consumer.receive().await
}

// 10. Cancel safety ----------------------------------------------------------------------

#[tokio::test]
async fn a_dropped_receive_loses_nothing() {
    let channel = MemoryChannel::new();
    let mut first = channel.consumer(&group("orders", "billing")).await.unwrap();
    let mut second = channel.consumer(&group("orders", "billing")).await.unwrap();
    {
        let mut abandoned = Box::pin(first.receive());
        assert!(timeout(Duration::ZERO, abandoned.as_mut()).await.is_err());
        let mut waiting = pin!(second.receive());
        assert!(timeout(Duration::ZERO, waiting.as_mut()).await.is_err());
        // The first waiter is woken for this message, then dropped before it looks: the
        // wake-up passes to the second waiter.
        send_all(&channel.producer("orders").await.unwrap(), &["x"]).await;
        drop(abandoned);
        let delivery = timeout(LIMIT, waiting).await.expect("woken").unwrap();
        assert_eq!((text(&delivery), delivery.attempt()), ("x", 1));
        delivery.nack(None).await.unwrap();
    }
    let again = recv(&mut first).await;
    assert_eq!((text(&again), again.attempt()), ("x", 2));
}

// 11. Configuration ----------------------------------------------------------------------

#[tokio::test]
async fn config_defaults_and_setters() {
    let config = MemoryConfig::default();
    assert_eq!(config.capacity, 10_000);
    assert_eq!(config.max_message_size, 1024 * 1024);
    assert_eq!(config.send_timeout, Duration::from_secs(30));
    assert_eq!(config.history, 0);
    assert_eq!(MemoryConfig::new().capacity(0).capacity, 1);
    let channel = MemoryChannel::new();
    assert_eq!(channel.config(), &config);
    assert_eq!(channel.name(), None);
    assert_eq!(
        channel.capabilities().max_message_size,
        Some(MemoryConfig::DEFAULT_MAX_MESSAGE_SIZE)
    );
}

#[tokio::test]
async fn clones_are_the_same_bus_and_it_works_as_a_box_channel() {
    let channel = MemoryChannel::new();
    let shared = BoxChannel::new(channel.clone());
    assert_eq!(shared.backend(), "memory");
    let mut consumer = shared.consumer(&group("orders", "billing")).await.unwrap();
    channel
        .producer("orders")
        .await
        .unwrap()
        .send(Message::new("via the clone"))
        .await
        .unwrap();
    assert_eq!(handle(&mut consumer).await, "via the clone");
    assert!(channel.same_bus(&channel.clone()));
    assert!(!channel.same_bus(&MemoryChannel::new()));
}

// 12. URLs -------------------------------------------------------------------------------

fn open(url: &str) -> event_binder_core::Result<MemoryChannel> {
    MemoryChannel::from_url(&ChannelUrl::parse(url)?)
}

#[tokio::test]
async fn memory_urls_open_private_and_named_buses() {
    let private = open("memory://?capacity=7&history=3&send_timeout_ms=5").unwrap();
    assert_eq!(private.config().capacity, 7);
    assert_eq!(private.config().history, 3);
    assert_eq!(private.config().send_timeout, Duration::from_millis(5));
    assert!(!private.same_bus(&open("memory://").unwrap()));

    let one = open("memory://tests-named-bus").unwrap();
    let two = open("memory://tests-named-bus").unwrap();
    assert!(one.same_bus(&two));
    assert_eq!(one.name(), Some("tests-named-bus"));
    let mut consumer = two.consumer(&group("orders", "billing")).await.unwrap();
    drop(two);
    send_all(&one.producer("orders").await.unwrap(), &["across"]).await;
    let in_hand = recv(&mut consumer).await;
    assert_eq!(text(&in_hand), "across");

    // Joining a live bus with other settings is refused, and says why.
    let error = open("memory://tests-named-bus?capacity=5").unwrap_err();
    assert!(matches!(error, Error::InvalidUrl { .. }));
    assert!(error.to_string().contains("capacity=10000"), "{error}");
    assert!(open("memory://tests-named-bus?capacity=10000")
        .unwrap()
        .same_bus(&one));

    // A consumer alone keeps the bus alive; once everything is dropped, it is freed.
    drop(one);
    let three = open("memory://tests-named-bus").unwrap();
    assert_eq!(
        three.queued("orders", "billing"),
        1,
        "same bus, the delivery in flight"
    );
    drop((three, consumer, in_hand));
    let fresh = open("memory://tests-named-bus").unwrap();
    assert_eq!(fresh.queued("orders", "billing"), 0, "a new bus");

    // A closed named bus is replaced.
    fresh.close().await.unwrap();
    let reopened = open("memory://tests-named-bus").unwrap();
    assert!(!reopened.same_bus(&fresh));
    assert!(!reopened.is_closed());
}

#[tokio::test]
async fn other_schemes_and_bad_parameters_are_invalid_urls() {
    for url in [
        "kafka://127.0.0.1:9092",
        "memory://?capacity=0",
        "memory://?history=many",
        "memory://?nonsense=1",
    ] {
        let error = open(url).unwrap_err();
        assert!(matches!(error, Error::InvalidUrl { .. }), "{url}: {error}");
    }
}

// 13. Test helpers -----------------------------------------------------------------------

#[tokio::test]
async fn published_remembers_the_last_messages_sent() {
    let channel = MemoryChannel::with_config(MemoryConfig::new().history(2));
    send_all(
        &channel.producer("invoices").await.unwrap(),
        &["a", "b", "c"],
    )
    .await;
    let payloads: Vec<_> = channel
        .published("invoices")
        .unwrap()
        .iter()
        .map(|m| m.payload().clone())
        .collect();
    assert_eq!(payloads, ["b", "c"]);
    assert!(channel.published("never-used").unwrap().is_empty());
    assert!(matches!(
        channel.published("a.b"),
        Err(Error::InvalidName { .. })
    ));

    let error = MemoryChannel::new().published("invoices").unwrap_err();
    assert!(matches!(error, Error::Unsupported(_)));
    assert!(
        error.to_string().contains("MemoryConfig::history"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_waits_for_a_chain_of_handlers() {
    let channel = MemoryChannel::new();
    let done = Arc::new(AtomicUsize::new(0));
    // A processor: orders -> invoices, then a sink on invoices.
    let mut processor = channel.consumer(&group("orders", "billing")).await.unwrap();
    let out = channel.producer("invoices").await.unwrap();
    let mut sink = channel.consumer(&group("invoices", "mail")).await.unwrap();
    let forwarding = tokio::spawn(async move {
        while let Ok(delivery) = processor.receive().await {
            tokio::task::yield_now().await;
            out.send(Message::new(delivery.message().payload().clone()))
                .await
                .unwrap();
            delivery.ack().await.unwrap();
        }
    });
    let counted = Arc::clone(&done);
    let mailing = tokio::spawn(async move {
        while let Ok(delivery) = sink.receive().await {
            tokio::task::yield_now().await;
            counted.fetch_add(1, Ordering::SeqCst);
            delivery.ack().await.unwrap();
        }
    });
    let producer = channel.producer("orders").await.unwrap();
    for n in 0..200 {
        producer.send(Message::new(n.to_string())).await.unwrap();
    }
    channel.wait_idle(LIMIT).await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 200);
    channel.close().await.unwrap();
    forwarding.await.unwrap();
    mailing.await.unwrap();
}

#[tokio::test]
async fn wait_idle_counts_deliveries_in_hand_and_wakes_when_they_are_settled() {
    let channel = MemoryChannel::new();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["x"]).await;
    let error = channel
        .wait_idle(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("1 messages waiting"),
        "a waiting message with a consumer is work: {error}"
    );
    let delivery = recv(&mut consumer).await;
    let error = channel
        .wait_idle(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("1 deliveries in flight"),
        "{error}"
    );

    let mut waiting = pin!(channel.wait_idle(LIMIT));
    assert!(timeout(Duration::ZERO, waiting.as_mut()).await.is_err());
    delivery.ack().await.unwrap();
    timeout(LIMIT, waiting).await.expect("woken").unwrap();
}

#[tokio::test]
async fn wait_idle_ignores_dead_letters_and_groups_without_consumers() {
    let channel = MemoryChannel::new();
    channel.provision("orders", Some("nobody")).await.unwrap();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    let _dead = channel
        .dead_letters("orders", Some("billing"))
        .await
        .unwrap();
    send_all(&channel.producer("orders").await.unwrap(), &["x"]).await;
    recv(&mut consumer)
        .await
        .dead_letter("bad", 1)
        .await
        .unwrap();
    assert_eq!(channel.queued("orders", "nobody"), 1);
    assert_eq!(channel.dead_lettered("orders", Some("billing")), 1);
    channel.wait_idle(LIMIT).await.unwrap();
}

// 14. Names and Debug --------------------------------------------------------------------

#[tokio::test]
async fn debug_output_names_what_it_is() {
    let channel = open("memory://tests-debug").unwrap();
    let producer = channel.producer("orders").await.unwrap();
    let mut consumer = channel.consumer(&group("orders", "billing")).await.unwrap();
    send_all(&producer, &["x"]).await;
    let delivery = recv(&mut consumer).await;
    let all = format!(
        "{channel:?} {producer:?} {consumer:?} {delivery:?} {:?}",
        channel.config()
    );
    for needle in [
        "MemoryChannel",
        "tests-debug",
        "orders",
        "billing",
        "MemoryConfig",
    ] {
        assert!(all.contains(needle), "{needle} in {all}");
    }
    assert_eq!(producer.destination(), "orders");
    assert_eq!(consumer.subscription(), &group("orders", "billing"));
}
