//! One bounded FIFO queue: a group's, an anonymous subscription's, or a dead-letter queue.
//!
//! Pure bookkeeping, no locking: the destination's mutex guards every queue of it.

use event_binder_core::Message;
use std::collections::{HashSet, VecDeque};
use std::fmt;
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

/// A message in a queue, waiting or in flight.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The message.
    pub(crate) message: Arc<Message>,
    /// Its position in the queue's order; a returned message goes back to its place.
    seq: u64,
    /// How many times it has been handed out.
    pub(crate) deliveries: u32,
    /// Not handed out before this instant (a nack with a delay).
    not_before: Option<Instant>,
}

/// What [`Queue::take`] found.
#[derive(Debug)]
pub(crate) enum Take {
    /// The next message, now in flight.
    Ready(Entry),
    /// Nothing can be handed out now; look again when notified, or at this instant (the
    /// earliest a delayed message becomes due).
    Wait(Option<Instant>),
}

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
    /// Keys with a message in flight: no other message with one of these keys is handed out.
    locked_keys: HashSet<String>,
    next_seq: u64,
    /// Wakes the consumers of this queue.
    pub(crate) notify: Arc<Notify>,
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
            notify: Arc::new(Notify::new()),
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
    pub(crate) fn push(&mut self, message: Arc<Message>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(Entry {
            message,
            seq,
            deliveries: 0,
            not_before: None,
        });
        self.notify.notify_one();
    }

    /// Hands out the first message that may go now, or says how long to wait.
    ///
    /// A message may go when it is due and, if it has a key, no message with that key is in
    /// flight or waiting ahead of it. O(1) when the front message may go (always the case
    /// without keys and delays); otherwise a scan up to the first message that may go.
    pub(crate) fn take(&mut self) -> Take {
        let index = match self.ready.front() {
            None => return Take::Wait(None),
            Some(front) if front.not_before.is_none() && !self.is_locked(&front.message) => 0,
            Some(_) => match self.scan(Instant::now()) {
                Ok(index) => index,
                Err(deadline) => return Take::Wait(deadline),
            },
        };
        let Some(mut entry) = self.ready.remove(index) else {
            return Take::Wait(None);
        };
        entry.deliveries = entry.deliveries.saturating_add(1);
        entry.not_before = None;
        if let Some(key) = entry.message.key() {
            self.locked_keys.insert(key.to_owned());
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
            let key = entry.message.key();
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
                self.notify.notify_one();
            }
        }
    }

    /// Puts an in-flight message back in its place (ahead of everything sent after it), to be
    /// handed out again at once or after `not_before`.
    pub(crate) fn requeue(&mut self, mut entry: Entry, not_before: Option<Instant>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(key) = entry.message.key() {
            self.locked_keys.remove(key);
        }
        entry.not_before = not_before;
        let seq = entry.seq;
        let index = self.ready.partition_point(|waiting| waiting.seq < seq);
        self.ready.insert(index, entry);
        if not_before.is_some() {
            // Every waiting consumer must learn the new deadline.
            self.notify.notify_waiters();
        } else {
            self.notify.notify_one();
        }
    }

    /// Drops every waiting message (an anonymous subscription going away).
    pub(crate) fn clear(&mut self) {
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queue() -> Queue {
        Queue::new(QueueKind::Group("g".into()), 0)
    }

    fn take(queue: &mut Queue) -> Option<Entry> {
        match queue.take() {
            Take::Ready(entry) => Some(entry),
            Take::Wait(_) => None,
        }
    }

    fn payload(entry: &Entry) -> &[u8] {
        entry.message.payload()
    }

    #[test]
    fn fifo_and_counts() {
        let mut q = queue();
        q.push(Arc::new(Message::new("a")));
        q.push(Arc::new(Message::new("b")));
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
            q.push(Arc::new(Message::new(p)));
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
        q.push(Arc::new(Message::new("k1").with_key("k")));
        q.push(Arc::new(Message::new("k2").with_key("k")));
        q.push(Arc::new(Message::new("free")));
        q.push(Arc::new(Message::new("j1").with_key("j")));
        let k1 = take(&mut q).unwrap();
        assert_eq!(payload(&take(&mut q).unwrap()), b"free");
        assert_eq!(payload(&take(&mut q).unwrap()), b"j1");
        assert!(take(&mut q).is_none(), "k2 must wait for k1");
        q.remove_in_flight(k1.message.key());
        assert_eq!(payload(&take(&mut q).unwrap()), b"k2");
    }

    #[test]
    fn a_delayed_message_holds_back_its_key_and_reports_its_deadline() {
        let mut q = queue();
        q.push(Arc::new(Message::new("k1").with_key("k")));
        q.push(Arc::new(Message::new("k2").with_key("k")));
        q.push(Arc::new(Message::new("free")));
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
        q.push(Arc::new(Message::new("x")));
        let x = take(&mut q).unwrap();
        q.requeue(x, Some(Instant::now()));
        let again = take(&mut q).unwrap();
        assert_eq!(again.deliveries, 2);
    }
}
