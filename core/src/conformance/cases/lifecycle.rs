//! Cases of consumers, producers and the channel opening, closing and being cancelled.

use super::{expect, ids_of, probe, receive, unique, within, Recorder, Suite};
use crate::channel::{Channel, Consumer, Producer, Subscription};
use crate::error::{Error, Result};
use crate::message::Message;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

impl<C: Channel> Suite<C> {
    /// [`Case::ContinuesAfterAConsumerCloses`](super::Case::ContinuesAfterAConsumerCloses).
    pub(super) async fn continues_after_consumer_close(&self) {
        let (destination, group) = (unique("resume"), unique("g"));
        let (rounds, take, acked_per_round) = (2, 8, 4);
        let durable = self.channel.capabilities().durable_groups;
        if !durable {
            println!(
                "{}: durable groups not claimed: each consumer closes once the next has \
                 joined, so that the group is never without one",
                self.channel.backend()
            );
        }
        let mut current = self.consumer(&destination, Some(&group)).await;
        let mut sent: Vec<Message> = (0..20).map(probe).collect();
        self.send_all(&destination, &sent).await;
        let mut acked: HashSet<String> = HashSet::new();
        for round in 0..rounds {
            let mut held = Vec::new();
            for index in 0..take {
                let delivery = receive(
                    &mut current,
                    self.config.timeout,
                    &format!("message {index} of round {round}"),
                )
                .await;
                let id = delivery.message().id().to_owned();
                assert!(
                    !acked.contains(&id),
                    "message {id} came back after it was acknowledged"
                );
                if index < acked_per_round {
                    expect(delivery.ack().await, "ack");
                    acked.insert(id);
                } else {
                    held.push(delivery);
                }
            }
            // Without durable groups, what this consumer gives back is kept only if the
            // group has another consumer then: the next one joins before this one leaves.
            let early = if durable {
                None
            } else {
                Some(self.consumer(&destination, Some(&group)).await)
            };
            // A consumer may wait in its drop for the deliveries it handed out to be
            // settled (Kafka's revocation does), so it closes on a task of its own while
            // this one still holds them.
            let closing = tokio::spawn(async move { drop(current) });
            drop(held);
            within(self.config.timeout, "the closed consumer's drop", closing)
                .await
                .expect("dropping a consumer panicked");
            current = match early {
                Some(next) => next,
                None => self.consumer(&destination, Some(&group)).await,
            };
            let more: Vec<Message> = (0..10).map(|n| probe(100 * (round + 1) + n)).collect();
            self.send_all(&destination, &more).await;
            sent.extend(more);
        }
        let mut waiting: HashSet<String> = ids_of(&sent)
            .into_iter()
            .filter(|id| !acked.contains(id))
            .collect();
        let known = ids_of(&sent);
        while !waiting.is_empty() {
            let delivery = receive(
                &mut current,
                self.config.timeout,
                &format!(
                    "the {} messages not acknowledged before the consumers closed",
                    waiting.len()
                ),
            )
            .await;
            let id = delivery.message().id().to_owned();
            assert!(known.contains(&id), "received message {id}, never sent");
            assert!(
                !acked.contains(&id),
                "message {id} came back after it was acknowledged"
            );
            assert!(
                waiting.remove(&id),
                "message {id} was delivered twice to the consumer that acknowledges everything"
            );
            expect(delivery.ack().await, "ack");
        }
        super::expect_nothing(
            &mut current,
            &self.config,
            "nothing more once every message was acknowledged",
        )
        .await;
    }

    /// [`Case::ConsumersAndChannelCloseConcurrently`](super::Case::ConsumersAndChannelCloseConcurrently).
    pub(super) async fn concurrent_close(&self) {
        let destinations: Vec<String> = (0..4).map(|_| unique("close")).collect();
        let received = Recorder::<usize>::new();
        let (stop, stopped) = watch::channel(false);
        let mut consumers = Vec::new();
        for (index, destination) in destinations.iter().enumerate() {
            for group in [Some(unique("g")), None] {
                let consumer = self.consumer(destination, group.as_deref()).await;
                // Half of them are dropped at the moment the channel closes; the other half
                // go on receiving through the close and must be told it happened.
                let dropped = consumers.len() % 2 == 0;
                let task = tokio::spawn(receive_until_stopped(
                    consumer,
                    consumers.len(),
                    stopped.clone(),
                    dropped,
                    received.clone(),
                ));
                consumers.push((index, group, dropped, task));
            }
        }
        // One message to each destination: once every consumer has had its own, every
        // subscription is live and every task is back waiting in `receive`.
        for destination in &destinations {
            self.send_all(destination, &[probe(1)]).await;
        }
        let count = consumers.len();
        received
            .wait_for(
                self.config.timeout,
                "a first message on every consumer",
                |seen| seen.len() == count,
            )
            .await;
        let producer = expect(
            self.channel.producer(&destinations[0]).await,
            "opening a producer",
        );
        let publishing = tokio::spawn(async move {
            let mut sent = 0usize;
            loop {
                if let Err(err) = producer.send(probe(sent as u64)).await {
                    return (sent, err);
                }
                sent += 1;
            }
        });
        let closes: Vec<_> = (0..2)
            .map(|_| {
                let channel = self.channel.clone();
                tokio::spawn(async move { channel.close().await })
            })
            .collect();
        stop.send_replace(true);
        for (index, close) in closes.into_iter().enumerate() {
            let closed = within(self.config.timeout, "a concurrent close", close).await;
            let closed = closed.unwrap_or_else(|err| panic!("close {index} panicked: {err}"));
            expect(closed, &format!("close {index} of 2 at the same time"));
        }
        for (number, (index, group, dropped, task)) in consumers.into_iter().enumerate() {
            let what = format!("consumer {number} of destination {index} (group {group:?})");
            let ended = within(
                self.config.timeout,
                &format!("{what} to end after the close"),
                task,
            )
            .await
            .unwrap_or_else(|err| panic!("{what} panicked: {err}"));
            match ended {
                None => assert!(dropped, "{what} stopped without an error"),
                Some(Error::ShutDown(_)) => {}
                Some(err) => {
                    panic!("{what}: receive after the close failed with {err:?}, not ShutDown")
                }
            }
        }
        let (sent, err) = within(
            self.config.timeout,
            "the publisher to be stopped by the close",
            publishing,
        )
        .await
        .unwrap_or_else(|err| panic!("the publisher panicked: {err}"));
        assert!(
            matches!(err, Error::ShutDown(_)),
            "a send after {sent} others, at the close, failed with {err:?}, not ShutDown"
        );
    }

    /// [`Case::ClosedChannelFailsWithShutDown`](super::Case::ClosedChannelFailsWithShutDown).
    pub(super) async fn closed_channel_shut_down(&self) {
        let (destination, group) = (unique("closed"), unique("g"));
        let mut consumer = self.consumer(&destination, Some(&group)).await;
        let mut anonymous = self.consumer(&destination, None).await;
        let mut idle = self.consumer(&unique("closed-idle"), Some(&group)).await;
        let producer = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        expect(producer.send(probe(1)).await, "send before the close");
        for (consumer, what) in [(&mut consumer, "group"), (&mut anonymous, "anonymous")] {
            let delivery = receive(
                consumer,
                self.config.timeout,
                &format!("the message before the close ({what})"),
            )
            .await;
            expect(delivery.ack().await, "ack before the close");
        }
        // A receive already waiting when the channel closes: polled once (so it waits
        // for real) before the close begins.
        let (polled, was_polled) = oneshot::channel();
        let waiting = tokio::spawn(async move {
            let mut receiving = std::pin::pin!(idle.receive());
            let first = poll_once(receiving.as_mut()).await;
            let _ = polled.send(());
            match first {
                Poll::Ready(received) => received,
                Poll::Pending => receiving.await,
            }
        });
        within(
            self.config.timeout,
            "the waiting receive's first poll",
            was_polled,
        )
        .await
        .expect("the waiting receive's task ended early");

        expect(
            within(self.config.timeout, "the close", self.channel.close()).await,
            "close",
        );
        let woken = within(
            self.config.timeout,
            "a receive waiting at the close to end",
            waiting,
        )
        .await
        .unwrap_or_else(|err| panic!("the waiting receive panicked: {err}"));
        shut_down(woken, "a receive waiting at the close");
        let limit = self.config.timeout;
        shut_down(
            within(limit, "receive after the close", consumer.receive()).await,
            "receive (group) after the close",
        );
        shut_down(
            within(limit, "receive after the close", anonymous.receive()).await,
            "receive (anonymous) after the close",
        );
        shut_down(
            within(limit, "send after the close", producer.send(probe(2))).await,
            "send after the close",
        );
        shut_down(
            within(
                limit,
                "send_batch after the close",
                producer.send_batch(vec![probe(3), probe(4)]),
            )
            .await,
            "send_batch after the close",
        );
        for name in [destination.clone(), unique("closed-new")] {
            shut_down(
                within(
                    limit,
                    "producer after the close",
                    self.channel.producer(&name),
                )
                .await,
                &format!("opening a producer of {name} after the close"),
            );
            for group in [Some(group.clone()), Some(unique("g")), None] {
                let subscription = Subscription::new(name.as_str()).optional_group(group.clone());
                shut_down(
                    within(
                        limit,
                        "consumer after the close",
                        self.channel.consumer(&subscription),
                    )
                    .await,
                    &format!("opening a consumer of {name} / {group:?} after the close"),
                );
            }
            shut_down(
                within(
                    limit,
                    "dead letters after the close",
                    self.channel.dead_letters(&name, Some(&group)),
                )
                .await,
                &format!("opening the dead letters of {name} after the close"),
            );
            shut_down(
                within(
                    limit,
                    "provision after the close",
                    self.channel.provision(&name, Some(&group)),
                )
                .await,
                &format!("provisioning {name} after the close"),
            );
            shut_down(
                within(
                    limit,
                    "send_to_group after the close",
                    self.channel.send_to_group(&name, &group, vec![probe(5)]),
                )
                .await,
                &format!("sending to {name} / {group} after the close"),
            );
        }
        for time in ["second", "third"] {
            expect(
                within(limit, "closing again", self.channel.close()).await,
                &format!("closing a {time} time"),
            );
        }
    }

    /// [`Case::DroppedReceiveLosesNothing`](super::Case::DroppedReceiveLosesNothing).
    pub(super) async fn dropped_receive(&self) {
        let (destination, group) = (unique("cancel"), unique("g"));
        let total = self.config.message_count.clamp(40, 200);
        let burst = 20;
        let counted = self
            .channel
            .counts_deliveries(&Subscription::new(destination.as_str()).group(group.as_str()));
        if !counted {
            println!(
                "{}: deliveries not counted: a message lost by a dropped receive and \
                 delivered again is not told from its first delivery; checking that each \
                 arrives once",
                self.channel.backend()
            );
        }
        let mut consumer = self.consumer(&destination, Some(&group)).await;
        let messages: Vec<Message> = (0..total as u64).map(probe).collect();
        let ids = ids_of(&messages);
        let producer = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        let progress = Recorder::<&'static str>::new();
        let limit = self.config.timeout;
        let publishing = async {
            for (number, part) in messages.chunks(burst).enumerate() {
                // Every other burst is sent only once the consumer has caught up and cut a
                // few receives short while waiting: it then arrives while receives are
                // being started and dropped on an empty consumer. The others are sent at
                // once, so that receives are also cut while messages are buffered.
                if number % 2 == 1 {
                    let (sent, cut) = (number * burst, progress.count(&"cut"));
                    progress
                        .wait_for(limit, "the consumer to catch up and idle", |seen| {
                            let count = |key| seen.get(key).copied().unwrap_or_default();
                            count(&"received") >= sent && count(&"cut") >= cut + 3
                        })
                        .await;
                }
                for message in part {
                    expect(producer.send(message.clone()).await, "send");
                }
            }
        };
        let receiving = async {
            let deadline = Instant::now() + limit;
            let mut seen: HashMap<String, u32> = HashMap::new();
            let mut round = 0u64;
            while seen.len() < total {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {limit:?} with {} of {total} messages received",
                    seen.len()
                );
                round += 1;
                let received = match round % 4 {
                    // Polled once, then dropped: the most abrupt cancellation there is.
                    0 => match poll_once(std::pin::pin!(consumer.receive())).await {
                        Poll::Ready(received) => received,
                        Poll::Pending => {
                            progress.record("cut");
                            continue;
                        }
                    },
                    // Dropped after up to 3 ms: wherever the receive has got to by then.
                    1 | 2 => {
                        let after = Duration::from_micros(round * 397 % 3_000);
                        tokio::select! {
                            received = consumer.receive() => received,
                            () = tokio::time::sleep(after) => {
                                progress.record("cut");
                                continue;
                            }
                        }
                    }
                    // Long enough for a waiting message to come: the loop moves on.
                    _ => match tokio::time::timeout(Duration::from_millis(200), consumer.receive())
                        .await
                    {
                        Ok(received) => received,
                        Err(_) => {
                            progress.record("cut");
                            continue;
                        }
                    },
                };
                let delivery = expect(received, "receive");
                let id = delivery.message().id().to_owned();
                assert!(ids.contains(&id), "received message {id}, never sent");
                let attempt = delivery.attempt();
                assert!(
                    !counted || attempt == 1,
                    "message {id} came with attempt {attempt}, though none was nacked or \
                     dropped unsettled: a dropped receive lost its first delivery"
                );
                let times = seen.entry(id.clone()).or_default();
                *times += 1;
                assert_eq!(
                    *times, 1,
                    "message {id} was delivered again after it was acknowledged"
                );
                expect(delivery.ack().await, "ack");
                progress.record("received");
            }
        };
        tokio::join!(publishing, receiving);
        let cut = progress.count(&"cut");
        assert!(cut > 0, "no receive was dropped: the case tested nothing");
        super::expect_nothing(
            &mut consumer,
            &self.config,
            "nothing more once every message was acknowledged",
        )
        .await;
        println!(
            "{}: {total} messages received while {cut} receives were dropped unfinished",
            self.channel.backend()
        );
    }

    /// [`Case::MessagesSentBeforeAProducerIsDroppedArrive`](super::Case::MessagesSentBeforeAProducerIsDroppedArrive).
    pub(super) async fn producer_dropped(&self) {
        let (destination, group) = (unique("dropped-producer"), unique("g"));
        let mut consumer = self.consumer(&destination, Some(&group)).await;
        let staying = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        let mut sent = Vec::new();
        // Dropped right after its last send returned, on the case's own task.
        let first: Vec<Message> = (0..5).map(probe).collect();
        let producer = expect(
            self.channel.producer(&destination).await,
            "opening a producer",
        );
        for message in &first {
            expect(producer.send(message.clone()).await, "send");
        }
        drop(producer);
        sent.extend(first);
        // Four more, at once, each on a task that ends (dropping it) after its sends.
        let mut tasks = Vec::new();
        for index in 0..4u64 {
            let part: Vec<Message> = (0..10).map(|n| probe(100 * (index + 1) + n)).collect();
            sent.extend(part.iter().cloned());
            let (channel, destination) = (self.channel.clone(), destination.clone());
            tasks.push(tokio::spawn(async move {
                let producer = channel.producer(&destination).await;
                let producer = producer.map_err(|err| format!("opening a producer: {err}"))?;
                if index % 2 == 0 {
                    for message in part {
                        producer
                            .send(message)
                            .await
                            .map_err(|err| format!("send: {err}"))?;
                    }
                } else {
                    producer
                        .send_batch(part)
                        .await
                        .map_err(|err| format!("send_batch: {err}"))?;
                }
                Ok::<(), String>(())
            }));
        }
        for task in tasks {
            let done = within(self.config.timeout, "a producer's sends", task)
                .await
                .unwrap_or_else(|err| panic!("a producer's task panicked: {err}"));
            done.unwrap_or_else(|err| panic!("a producer dropped after its sends: {err}"));
        }
        // The producers dropped closed nothing that the others use.
        let last = probe(999);
        expect(
            staying.send(last.clone()).await,
            "a send from a producer that stayed open",
        );
        sent.push(last);
        let ids = self
            .receive_ids(
                &mut consumer,
                sent.len(),
                "every message sent by the dropped producers",
            )
            .await;
        assert_eq!(
            ids,
            ids_of(&sent),
            "messages of dropped producers were lost"
        );
        super::expect_nothing(&mut consumer, &self.config, "no more messages").await;
    }

    /// [`Case::ManyDestinationsAtOnce`](super::Case::ManyDestinationsAtOnce).
    pub(super) async fn many_destinations(&self) {
        let (count, per_destination) = (20usize, 10u64);
        let names: Vec<(String, String)> = (0..count)
            .map(|index| (unique(&format!("many-{index}")), unique("g")))
            .collect();
        // Keys are (consumer, message id); a delivery naming another destination than its
        // consumer's is recorded under the id "wrong destination …".
        let received = Recorder::<(usize, String)>::new();
        let mut consumers = Vec::new();
        let mut opened = Vec::new();
        let (stop, stopping) = watch::channel(false);
        for (index, (destination, group)) in names.iter().cloned().enumerate() {
            let (channel, received) = (self.channel.clone(), received.clone());
            let (open, is_open) = oneshot::channel();
            let mut stopping = stopping.clone();
            opened.push(is_open);
            consumers.push(tokio::spawn(async move {
                let subscription = Subscription::new(destination.as_str()).group(group);
                let mut consumer = match channel.consumer(&subscription).await {
                    Ok(consumer) => {
                        let _ = open.send(Ok(()));
                        consumer
                    }
                    Err(err) => {
                        let _ = open.send(Err(err));
                        return None;
                    }
                };
                loop {
                    let delivery = tokio::select! {
                        biased;
                        _ = stopping.wait_for(|stop| *stop) => return Some(consumer),
                        received = consumer.receive() => received
                            .unwrap_or_else(|err| panic!("receive on {destination}: {err}")),
                    };
                    let id = if delivery.destination() == destination {
                        delivery.message().id().to_owned()
                    } else {
                        format!("wrong destination {}", delivery.destination())
                    };
                    received.record((index, id));
                    delivery
                        .ack()
                        .await
                        .unwrap_or_else(|err| panic!("ack on {destination}: {err}"));
                }
            }));
        }
        for (index, is_open) in opened.into_iter().enumerate() {
            let open = within(self.config.timeout, "the consumers to open", is_open).await;
            let open = open.unwrap_or_else(|_| panic!("consumer {index}'s task ended early"));
            expect(open, &format!("opening the consumer of {}", names[index].0));
        }
        let mut expected: HashSet<(usize, String)> = HashSet::new();
        let mut publishers = Vec::new();
        for (index, (destination, _)) in names.iter().cloned().enumerate() {
            let messages: Vec<Message> = (0..per_destination).map(probe).collect();
            expected.extend(messages.iter().map(|m| (index, m.id().to_owned())));
            let channel = self.channel.clone();
            publishers.push(tokio::spawn(async move {
                let producer = channel.producer(&destination).await?;
                if index % 2 == 0 {
                    producer.send_batch(messages).await
                } else {
                    for message in messages {
                        producer.send(message).await?;
                    }
                    Ok(())
                }
            }));
        }
        for publisher in publishers {
            let sent = within(self.config.timeout, "the publishers", publisher).await;
            expect(sent.expect("a publisher task panicked"), "publishing");
        }
        received
            .wait_for(
                self.config.timeout,
                &format!("{} messages over {count} destinations", expected.len()),
                |seen| expected.iter().all(|key| seen.contains_key(key)),
            )
            .await;
        // Strays and duplicates would come after the expected ones.
        stop.send_replace(true);
        for (consumer, (destination, _)) in consumers.into_iter().zip(&names) {
            let consumer = within(self.config.timeout, "a consumer to stop", consumer).await;
            let mut consumer = consumer
                .expect("a consumer task panicked")
                .expect("every consumer opened");
            super::expect_nothing(
                &mut consumer,
                &self.config,
                &format!("nothing more on {destination}"),
            )
            .await;
        }
        let seen = received.snapshot();
        let strays: Vec<_> = seen.keys().filter(|key| !expected.contains(key)).collect();
        assert!(
            strays.is_empty(),
            "consumers received what is not theirs (consumer, id): {strays:?}"
        );
        let twice: Vec<_> = seen.iter().filter(|(_, times)| **times > 1).collect();
        assert!(twice.is_empty(), "delivered twice: {twice:?}");
    }
}

/// Polls `future` once, with the task's own waker, and gives back what that poll returned.
async fn poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut future).poll(cx))).await
}

/// Fails the test unless `result` is [`Error::ShutDown`].
fn shut_down<T: Debug>(result: Result<T>, what: &str) {
    match result {
        Err(Error::ShutDown(_)) => {}
        other => panic!("{what}: expected ShutDown, got {other:?}"),
    }
}

/// Receives and acks until the channel closes (`Some` of the error), or, when `dropped`,
/// until `stop` (`None`), dropping the consumer then.
async fn receive_until_stopped<Co: Consumer>(
    mut consumer: Co,
    number: usize,
    mut stop: watch::Receiver<bool>,
    dropped: bool,
    received: Arc<Recorder<usize>>,
) -> Option<Error> {
    loop {
        tokio::select! {
            () = async { drop(stop.wait_for(|stop| *stop).await) }, if dropped => return None,
            next = consumer.receive() => match next {
                Ok(delivery) => {
                    received.record(number);
                    // Settling races the close here: whether it still works is not this
                    // case's question.
                    let _ = delivery.ack().await;
                }
                Err(err) => return Some(err),
            },
        }
    }
}
