//! One bounded FIFO queue: a group's, an anonymous subscription's, or a dead-letter queue.
//!
//! Pure bookkeeping, no locking: the destination's mutex guards every queue of it.

use event_binder_core::Message;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a queue is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// A named, durable group.
    Group(Arc<str>),
    /// An anonymous subscription (numbered within its destination).
    Anonymous(u64),
    /// The dead letters of a group, or (`None`) of the destination's anonymous subscriptions.
    DeadLetters(Option<Arc<str>>),
}

impl QueueKind {
    /// Whether messages sent to the destination land here.
    pub(crate) fn is_subscription(&self) -> bool {
        !matches!(self, QueueKind::DeadLetters(_))
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueKind::Group(group) => write!(f, "group {group}"),
            QueueKind::Anonymous(number) => write!(f, "anonymous subscription #{number}"),
            QueueKind::DeadLetters(Some(group)) => {
                write!(f, "the dead-letter queue of group {group}")
            }
            QueueKind::DeadLetters(None) => {
                f.write_str("the dead-letter queue of anonymous subscriptions")
            }
        }
    }
}

/// A message as a queue holds it.
#[derive(Debug)]
pub(crate) enum Body {
    /// In this queue alone: kept inline, so that a send into one queue allocates nothing. It
    /// gets its `Arc` when delivered (see [`Entry::into_in_flight`]).
    Owned(Message),
    /// Shared by the queues a send fanned out to, or back from a delivery.
    Shared(Arc<Message>),
}

impl Body {
    fn message(&self) -> &Message {
        match self {
            Body::Owned(message) => message,
            Body::Shared(message) => message,
        }
    }
}

/// A message waiting in a queue.
#[derive(Debug)]
pub(crate) struct Entry {
    body: Body,
    /// Its position in the queue's order; a returned message goes back to its place.
    seq: u64,
    /// How many times it has been handed out.
    deliveries: u32,
    /// Not handed out before this instant (a nack with a delay).
    not_before: Option<Instant>,
}

impl Entry {
    /// The entry [`Queue::take`] handed out, its message shared: an owned message moves
    /// into an `Arc` of the consumer's earlier deliveries that nothing else holds any more
    /// (see [`Recycled`]), or into a new one.
    ///
    /// Called once the destination lock is released: it drops the message an `Arc` held,
    /// and dropping a payload may run its owner's code.
    pub(crate) fn into_in_flight(self, recycled: &mut Recycled) -> InFlight {
        let message = match self.body {
            Body::Shared(message) => message,
            Body::Owned(message) => recycled.share(message),
        };
        InFlight {
            message,
            seq: self.seq,
            deliveries: self.deliveries,
        }
    }
}

/// The `Arc`s of a consumer's latest deliveries, oldest first, whose allocations later
/// deliveries reuse once nothing else holds them (the common case: settled and dropped).
/// It keeps as many as the consumer may hold at once, its prefetch, so that deliveries
/// handled together, as a batch handler's are, still find one free; what they keep alive
/// is bounded by what the consumer may hold anyway.
#[derive(Debug)]
pub(crate) struct Recycled {
    arcs: VecDeque<Arc<Message>>,
    limit: usize,
}

impl Recycled {
    /// Keeps up to `limit` (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        Recycled {
            arcs: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// `message` in the oldest kept `Arc` if nothing else holds that, in a new one otherwise.
    fn share(&mut self, message: Message) -> Arc<Message> {
        let shared = match self.arcs.pop_front() {
            Some(mut oldest) => match Arc::get_mut(&mut oldest) {
                Some(free) => {
                    *free = message;
                    oldest
                }
                None => {
                    // Still held: looked at again later, unless that would keep too many.
                    if self.arcs.len() + 1 < self.limit {
                        self.arcs.push_back(oldest);
                    }
                    Arc::new(message)
                }
            },
            None => Arc::new(message),
        };
        self.arcs.push_back(Arc::clone(&shared));
        shared
    }
}

/// A message handed out and not settled yet: what its acknowledger keeps.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) message: Arc<Message>,
    seq: u64,
    /// How many times it has been handed out, this time included.
    pub(crate) deliveries: u32,
}

/// What [`Queue::take`] found (with the [`Entry`]), or the destination's take (with the
/// [`InFlight`] made of it).
#[derive(Debug)]
pub(crate) enum Take<T = Entry> {
    /// The next message, now in flight.
    Ready(T),
    /// Nothing can be handed out now; look again when notified, or at this instant (the
    /// earliest a delayed message becomes due).
    Wait(Option<Instant>),
}

/// Wakes the consumers of one queue.
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    pub(crate) notify: Notify,
    /// Consumers that may be waiting on `notify`. With none (consumers working through a
    /// backlog never wait), a change notifies nobody.
    sleepers: AtomicUsize,
}

impl Wakeup {
    /// Counts a consumer as waiting until the guard is dropped. Taken before the consumer
    /// looks at the queue (under the destination lock), so a change made after that look
    /// sees it and wakes it.
    pub(crate) fn sleeping(&self) -> Sleeping<'_> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        Sleeping(self)
    }

    /// Called under the destination lock.
    fn wake_one(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Called under the destination lock.
    fn wake_all(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A consumer counted as waiting (see [`Wakeup::sleeping`]).
#[derive(Debug)]
pub(crate) struct Sleeping<'a>(&'a Wakeup);

impl Drop for Sleeping<'_> {
    fn drop(&mut self) {
        self.0.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The buffer a drained queue keeps, in entries. Entries hold their messages inline, so a
/// burst would otherwise pin the room of every message it queued for as long as the queue
/// lives.
const KEPT_CAPACITY: usize = 1024;

/// A bounded FIFO queue with per-key in-flight locks.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) kind: QueueKind,
    /// Tells a reused slot from the queue that held it before.
    pub(crate) generation: u64,
    /// Waiting messages, ordered by `seq`.
    ready: VecDeque<Entry>,
    in_flight: usize,
    /// Consumers reading this queue.
    pub(crate) consumers: usize,
    /// Keys with a message in flight: no other message with one of these keys is handed out
    /// (in subscriptions' queues; dead letters have no order per key).
    locked_keys: HashSet<String>,
    next_seq: u64,
    /// Wakes the consumers of this queue.
    pub(crate) wakeup: Arc<Wakeup>,
}

impl Queue {
    pub(crate) fn new(kind: QueueKind, generation: u64) -> Self {
        Queue {
            kind,
            generation,
            ready: VecDeque::new(),
            in_flight: 0,
            consumers: 0,
            locked_keys: HashSet::new(),
            next_seq: 0,
            wakeup: Arc::default(),
        }
    }

    /// Messages held: waiting plus in flight. This is what the capacity bounds.
    pub(crate) fn len(&self) -> usize {
        self.ready.len() + self.in_flight
    }

    /// Messages waiting (delayed ones included).
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len()
    }

    /// Messages handed out and not settled yet.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Appends a message and wakes one consumer.
    // Inlined so that the message is moved straight into the queue: a message is a memcpy
    // to move, and a call in between adds two.
    #[inline(always)]
    pub(crate) fn push(&mut self, body: Body) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(Entry {
            body,
            seq,
            deliveries: 0,
            not_before: None,
        });
        self.wakeup.wake_one();
    }

    /// Hands out the first message that may go now, or says how long to wait.
    ///
    /// A message may go when it is due and, if it has a key, no message with that key is in
    /// flight or waiting ahead of it. O(1) when the front message may go (always the case
    /// without keys and delays); otherwise a scan up to the first message that may go.
    pub(crate) fn take(&mut self) -> Take {
        let entry = match self.ready.front() {
            None => return Take::Wait(None),
            Some(front) if front.not_before.is_none() && !self.is_locked(front.body.message()) => {
                self.ready.pop_front()
            }
            // Only here, with a delayed or key-locked message in front, is the clock read.
            Some(_) => match self.scan(Instant::now()) {
                Ok(index) => self.ready.remove(index),
                Err(deadline) => return Take::Wait(deadline),
            },
        };
        let Some(mut entry) = entry else {
            return Take::Wait(None);
        };
        if self.ready.is_empty() && self.ready.capacity() > KEPT_CAPACITY {
            self.ready.shrink_to(KEPT_CAPACITY);
        }
        entry.deliveries = entry.deliveries.saturating_add(1);
        entry.not_before = None;
        // Dead letters keep no order per key: each is looked at on its own, and a reader
        // (a redrive, a listing) holding one must see the next of the same key.
        if let Some(key) = entry.body.message().key() {
            if self.kind.is_subscription() {
                self.locked_keys.insert(key.to_owned());
            }
        }
        self.in_flight += 1;
        Take::Ready(entry)
    }

    fn is_locked(&self, message: &Message) -> bool {
        match message.key() {
            Some(key) => !self.locked_keys.is_empty() && self.locked_keys.contains(key),
            None => false,
        }
    }

    /// The index of the first message that may go, or the earliest instant a delayed one is
    /// due.
    fn scan(&self, now: Instant) -> Result<usize, Option<Instant>> {
        // Keys of delayed messages: later messages with these keys wait behind them.
        let mut delayed_keys: HashSet<&str> = HashSet::new();
        let mut earliest: Option<Instant> = None;
        for (index, entry) in self.ready.iter().enumerate() {
            let key = entry.body.message().key();
            if let Some(due) = entry.not_before.filter(|due| *due > now) {
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
                if let Some(key) = key {
                    delayed_keys.insert(key);
                }
                continue;
            }
            match key {
                Some(key) if self.locked_keys.contains(key) || delayed_keys.contains(key) => {}
                _ => return Ok(index),
            }
        }
        Err(earliest)
    }

    /// Settles an in-flight message for good (ack, or moved to the dead letters).
    pub(crate) fn remove_in_flight(&mut self, key: Option<&str>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(key) = key {
            self.locked_keys.remove(key);
            if !self.ready.is_empty() {
                // A message waiting for this key may go now.
                self.wakeup.wake_one();
            }
        }
    }

    /// Puts an in-flight message back in its place (ahead of everything sent after it), to be
    /// handed out again at once or after `not_before`.
    pub(crate) fn requeue(&mut self, in_flight: InFlight, not_before: Option<Instant>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(key) = in_flight.message.key() {
            self.locked_keys.remove(key);
        }
        let seq = in_flight.seq;
        let index = self.ready.partition_point(|waiting| waiting.seq < seq);
        self.ready.insert(
            index,
            Entry {
                body: Body::Shared(in_flight.message),
                seq,
                deliveries: in_flight.deliveries,
                not_before,
            },
        );
        if not_before.is_some() {
            // Every waiting consumer must learn the new deadline.
            self.wakeup.wake_all();
        } else {
            self.wakeup.wake_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queue() -> Queue {
        Queue::new(QueueKind::Group("g".into()), 0)
    }

    fn take(queue: &mut Queue) -> Option<InFlight> {
        match queue.take() {
            Take::Ready(entry) => Some(entry.into_in_flight(&mut Recycled::new(1))),
            Take::Wait(_) => None,
        }
    }

    fn payload(in_flight: &InFlight) -> &[u8] {
        in_flight.message.payload()
    }

    fn owned(message: Message) -> Body {
        Body::Owned(message)
    }

    #[test]
    fn fifo_and_counts() {
        let mut q = queue();
        q.push(owned(Message::new("a")));
        q.push(owned(Message::new("b")));
        assert_eq!((q.len(), q.waiting(), q.in_flight()), (2, 2, 0));
        let a = take(&mut q).unwrap();
        assert_eq!(payload(&a), b"a");
        assert_eq!(a.deliveries, 1);
        assert_eq!((q.len(), q.waiting(), q.in_flight()), (2, 1, 1));
        q.remove_in_flight(None);
        assert_eq!(q.len(), 1);
        assert_eq!(payload(&take(&mut q).unwrap()), b"b");
        assert!(matches!(q.take(), Take::Wait(None)));
    }

    #[test]
    fn requeued_messages_go_back_to_their_place() {
        let mut q = queue();
        for p in ["1", "2", "3"] {
            q.push(owned(Message::new(p)));
        }
        let one = take(&mut q).unwrap();
        let two = take(&mut q).unwrap();
        // Returned in the "wrong" order, they still come back as 1, 2, 3.
        q.requeue(two, None);
        q.requeue(one, None);
        let again: Vec<_> = (0..3).map(|_| take(&mut q).unwrap()).collect();
        let payloads: Vec<&[u8]> = again.iter().map(payload).collect();
        assert_eq!(payloads, [b"1", b"2", b"3"]);
        assert_eq!(again[0].deliveries, 2);
        assert_eq!(again[2].deliveries, 1);
    }

    #[test]
    fn a_key_in_flight_holds_back_its_followers_only() {
        let mut q = queue();
        q.push(owned(Message::new("k1").with_key("k")));
        q.push(owned(Message::new("k2").with_key("k")));
        q.push(owned(Message::new("free")));
        q.push(owned(Message::new("j1").with_key("j")));
        let k1 = take(&mut q).unwrap();
        assert_eq!(payload(&take(&mut q).unwrap()), b"free");
        assert_eq!(payload(&take(&mut q).unwrap()), b"j1");
        assert!(take(&mut q).is_none(), "k2 must wait for k1");
        q.remove_in_flight(k1.message.key());
        assert_eq!(payload(&take(&mut q).unwrap()), b"k2");
    }

    #[test]
    fn dead_letters_of_one_key_go_out_together() {
        let mut q = Queue::new(QueueKind::DeadLetters(Some("g".into())), 0);
        q.push(owned(Message::new("k1").with_key("k")));
        q.push(owned(Message::new("k2").with_key("k")));
        assert_eq!(payload(&take(&mut q).unwrap()), b"k1");
        assert_eq!(payload(&take(&mut q).unwrap()), b"k2", "no order per key");
    }

    #[test]
    fn a_delayed_message_holds_back_its_key_and_reports_its_deadline() {
        let mut q = queue();
        q.push(owned(Message::new("k1").with_key("k")));
        q.push(owned(Message::new("k2").with_key("k")));
        q.push(owned(Message::new("free")));
        let k1 = take(&mut q).unwrap();
        let due = Instant::now() + Duration::from_secs(60);
        q.requeue(k1, Some(due));
        assert_eq!(payload(&take(&mut q).unwrap()), b"free");
        match q.take() {
            Take::Wait(Some(deadline)) => assert_eq!(deadline, due),
            other => panic!("expected a deadline, got {other:?}"),
        }
    }

    #[test]
    fn a_due_message_goes() {
        let mut q = queue();
        q.push(owned(Message::new("x")));
        let x = take(&mut q).unwrap();
        q.requeue(x, Some(Instant::now()));
        let again = take(&mut q).unwrap();
        assert_eq!(again.deliveries, 2);
    }

    fn taken(queue: &mut Queue) -> Entry {
        match queue.take() {
            Take::Ready(entry) => entry,
            Take::Wait(due) => panic!("nothing to take (due {due:?})"),
        }
    }

    #[test]
    fn a_delivered_message_moves_into_the_previous_ones_arc_once_released() {
        let mut q = queue();
        for p in ["1", "2", "3"] {
            q.push(owned(Message::new(p)));
        }
        let mut recycled = Recycled::new(1);
        let one = taken(&mut q).into_in_flight(&mut recycled);
        let first = Arc::as_ptr(&one.message);
        drop(one);
        let two = taken(&mut q).into_in_flight(&mut recycled);
        assert_eq!(payload(&two), b"2");
        assert_eq!(Arc::as_ptr(&two.message), first, "the allocation is reused");
        // Still held (a handler kept it): the next message gets an `Arc` of its own.
        let three = taken(&mut q).into_in_flight(&mut recycled);
        assert_eq!(payload(&three), b"3");
        assert_ne!(Arc::as_ptr(&three.message), first);
        assert_eq!(payload(&two), b"2", "a held message is left alone");
    }

    #[test]
    fn deliveries_held_together_reuse_their_arcs_once_all_are_released() {
        let mut q = queue();
        for n in 0..8 {
            q.push(owned(Message::new(n.to_string())));
        }
        let mut recycled = Recycled::new(4);
        let batch: Vec<InFlight> = (0..4)
            .map(|_| taken(&mut q).into_in_flight(&mut recycled))
            .collect();
        let mut first: Vec<_> = batch.iter().map(|m| Arc::as_ptr(&m.message)).collect();
        drop(batch);
        let again: Vec<InFlight> = (0..4)
            .map(|_| taken(&mut q).into_in_flight(&mut recycled))
            .collect();
        let mut reused: Vec<_> = again.iter().map(|m| Arc::as_ptr(&m.message)).collect();
        let payloads: Vec<&[u8]> = again.iter().map(payload).collect();
        assert_eq!(payloads, [b"4", b"5", b"6", b"7"]);
        first.sort();
        reused.sort();
        assert_eq!(first, reused, "a batch's allocations serve the next batch");
    }

    #[test]
    fn a_shared_message_is_delivered_as_it_is() {
        let mut q = queue();
        let shared = Arc::new(Message::new("s"));
        q.push(Body::Shared(Arc::clone(&shared)));
        let s = taken(&mut q).into_in_flight(&mut Recycled::new(1));
        assert!(Arc::ptr_eq(&s.message, &shared));
    }

    #[test]
    fn a_drained_queue_gives_back_its_buffer() {
        let mut q = queue();
        for _ in 0..4 * KEPT_CAPACITY {
            q.push(owned(Message::new("x")));
        }
        while let Some(x) = take(&mut q) {
            q.remove_in_flight(x.message.key());
        }
        assert!(q.ready.capacity() <= KEPT_CAPACITY);
    }
}
