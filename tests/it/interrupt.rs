//! What `conformance::interrupt` does to a channel's calls, on the in-memory backend: the
//! faults `tests/faults.rs` puts it through are the ones a lost connection causes.

use event_binder::memory::MemoryChannel;
use event_binder::{Channel, Consumer, Message, Producer, Subscription};
use event_binder_core::conformance::interrupt::Interruptible;
use std::time::Duration;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_cut_takes_back_what_was_handed_out_and_fails_the_next_send_after_it_went_through() {
    let (channel, faults) = Interruptible::new(MemoryChannel::new());
    let mut consumer = channel
        .consumer(&Subscription::new("orders").group("billing"))
        .await
        .expect("consumer");
    let producer = channel.producer("orders").await.expect("producer");
    producer.send(Message::new("first")).await.expect("send");
    let delivery = consumer.receive().await.expect("receive");
    faults.cut();
    assert!(
        delivery.ack().await.is_err(),
        "a delivery handed out before a cut cannot be settled"
    );
    let again = timeout(LIMIT, consumer.receive())
        .await
        .expect("the message comes back")
        .expect("receive");
    assert_eq!(&again.message().payload()[..], b"first");
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("a delivery after the cut settles");

    assert!(
        producer.send(Message::new("second")).await.is_err(),
        "the first send after a cut fails"
    );
    let sent = timeout(LIMIT, consumer.receive())
        .await
        .expect("the failed send went through")
        .expect("receive");
    assert_eq!(&sent.message().payload()[..], b"second");
    sent.ack().await.expect("ack");
    producer
        .send(Message::new("third"))
        .await
        .expect("the sends after that one succeed");
    assert_eq!(faults.cuts(), 1);
}

#[tokio::test]
async fn a_blackhole_holds_receives_until_it_is_lifted() {
    let (channel, faults) = Interruptible::new(MemoryChannel::new());
    let mut consumer = channel
        .consumer(&Subscription::new("orders").group("billing"))
        .await
        .expect("consumer");
    channel
        .producer("orders")
        .await
        .expect("producer")
        .send(Message::new("held"))
        .await
        .expect("send");
    faults.blackhole(true);
    assert!(
        consumer.try_receive().is_none(),
        "nothing passes a blackhole"
    );
    let held = timeout(Duration::from_millis(200), consumer.receive()).await;
    assert!(held.is_err(), "a receive waits while the blackhole is on");
    faults.blackhole(false);
    let delivery = timeout(LIMIT, consumer.receive())
        .await
        .expect("the receive goes on once it is lifted")
        .expect("receive");
    assert_eq!(&delivery.message().payload()[..], b"held");
    delivery.ack().await.expect("ack");
}
