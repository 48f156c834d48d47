//! The bus: destinations, their queues, and the counters that `wait_idle` watches.

use crate::config::MemoryConfig;
use crate::queue::{Body, InFlight, Queue, QueueKind, Recycled, Take, Wakeup};
use event_binder_core::{Capabilities, Error, Message, Result};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Locks a mutex of this crate, ignoring poisoning.
///
/// Safe because no code of this crate panics while it holds one of its locks with a
/// half-done change: the critical sections are plain collection updates (a panic there
/// would be an allocation failure, which aborts) and run no user code.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error of every operation on a closed bus.
/// Waits for `notified`, until `deadline` if there is one; `false` when the deadline came
/// first.
pub(crate) async fn notified_before(
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    deadline: Option<Instant>,
) -> bool {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, notified).await.is_ok(),
        None => {
            notified.await;
            true
        }
    }
}

pub(crate) fn shut_down() -> Error {
    Error::ShutDown("memory channel")
}

/// What the bus and every destination of it share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MemoryConfig,
    closed: AtomicBool,
    /// Deliveries handed out and not settled, bus-wide. Changed only under a destination lock.
    in_flight: AtomicUsize,
    /// How many `wait_idle` calls are waiting; activity is announced only when some are.
    idle_waiters: AtomicUsize,
    /// Announces settlements, sends and departures to `wait_idle`.
    pub(crate) activity: Notify,
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(shut_down())
        } else {
            Ok(())
        }
    }

    /// Wakes `wait_idle` callers, if any (one atomic load otherwise).
    fn announce(&self) {
        if self.idle_waiters.load(Ordering::SeqCst) > 0 {
            self.activity.notify_waiters();
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Registers a `wait_idle` caller until the guard is dropped.
    pub(crate) fn idle_waiter(&self) -> IdleWaiter<'_> {
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        IdleWaiter(self)
    }
}

/// Keeps activity announcements on while a `wait_idle` call runs.
#[derive(Debug)]
pub(crate) struct IdleWaiter<'a>(&'a Shared);

impl Drop for IdleWaiter<'_> {
    fn drop(&mut self) {
        self.0.idle_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One bus: what every clone of a `MemoryChannel` (and every `memory://NAME` URL with the
/// same name) shares.
pub(crate) struct Bus {
    pub(crate) shared: Arc<Shared>,
    pub(crate) capabilities: Capabilities,
    pub(crate) name: Option<String>,
    destinations: Mutex<HashMap<Arc<str>, Arc<Destination>>>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("config", &self.shared.config)
            .field("closed", &self.shared.is_closed())
            .finish_non_exhaustive()
    }
}

/// Why the bus is not idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) waiting: usize,
    pub(crate) in_flight: usize,
}

impl Bus {
    pub(crate) fn new(config: MemoryConfig, name: Option<String>) -> Self {
        let config = config.normalized();
        Bus {
            capabilities: Capabilities::new()
                .ordering_by_key(true)
                .durable_groups(true)
                .max_message_size(config.max_message_size)
                .counts_deliveries(true)
                .delayed_redelivery(true)
                // A message sent while no group or subscription exists is dropped: an
                // in-process event nobody listens to.
                .keeps_messages_without_groups(false),
            shared: Arc::new(Shared {
                config,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                idle_waiters: AtomicUsize::new(0),
                activity: Notify::new(),
            }),
            name,
            destinations: Mutex::new(HashMap::new()),
        }
    }

    /// The destination, created on first use. The name must have been validated.
    pub(crate) fn destination(&self, name: &str) -> Arc<Destination> {
        let mut destinations = lock(&self.destinations);
        if let Some(destination) = destinations.get(name) {
            return Arc::clone(destination);
        }
        let name: Arc<str> = name.into();
        let destination = Arc::new(Destination {
            shared: Arc::clone(&self.shared),
            name: Arc::clone(&name),
            state: Mutex::new(DestState::default()),
            space: Notify::new(),
        });
        destinations.insert(name, Arc::clone(&destination));
        destination
    }

    /// The destination if it exists.
    pub(crate) fn existing(&self, name: &str) -> Option<Arc<Destination>> {
        lock(&self.destinations).get(name).cloned()
    }

    /// Closes the bus and wakes everyone waiting on it.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let destinations: Vec<_> = lock(&self.destinations).values().cloned().collect();
        for destination in destinations {
            {
                let state = lock(&destination.state);
                for queue in state.slots.iter().flatten() {
                    queue.wakeup.notify.notify_waiters();
                }
            }
            destination.space.notify_waiters();
        }
        self.shared.activity.notify_waiters();
    }

    /// `None` when idle: no subscription queue with a consumer holds a waiting message, and
    /// no delivery is in flight anywhere. Looks at every destination at one instant (it
    /// holds all their locks together), so a message moving from one destination to another
    /// is never missed.
    pub(crate) fn busy(&self) -> Option<Busy> {
        // The map lock keeps new destinations out while we look. Nothing else holds two of
        // these locks at once, and we take them in name order, so this cannot deadlock.
        let destinations = lock(&self.destinations);
        let mut sorted: Vec<&Arc<Destination>> = destinations.values().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let guards: Vec<MutexGuard<'_, DestState>> = sorted
            .iter()
            .map(|destination| lock(&destination.state))
            .collect();
        let waiting: usize = guards
            .iter()
            .flat_map(|state| state.slots.iter().flatten())
            .filter(|queue| queue.kind.is_subscription() && queue.consumers > 0)
            .map(Queue::waiting)
            .sum();
        let in_flight = self.shared.in_flight();
        drop(guards);
        if waiting == 0 && in_flight == 0 {
            None
        } else {
            Some(Busy { waiting, in_flight })
        }
    }
}

/// Where a queue lives in its destination: the slot index and the generation of the queue
/// in it (a slot of a removed anonymous queue may be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotRef {
    index: usize,
    generation: u64,
}

/// Which queue a consumer reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attach<'a> {
    Group(&'a str),
    Anonymous,
    DeadLetters(Option<&'a str>),
}

/// The queues of one destination, behind one mutex.
#[derive(Debug, Default)]
pub(crate) struct DestState {
    /// Every queue of the destination; `None` is a free slot.
    slots: Vec<Option<Queue>>,
    free: Vec<usize>,
    groups: HashMap<Arc<str>, usize>,
    group_dead_letters: HashMap<Arc<str>, usize>,
    anonymous_dead_letters: Option<usize>,
    next_generation: u64,
    next_anonymous: u64,
    history: VecDeque<Message>,
}

impl DestState {
    fn insert(&mut self, kind: QueueKind) -> usize {
        let generation = self.next_generation;
        self.next_generation += 1;
        let queue = Some(Queue::new(kind, generation));
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = queue;
                index
            }
            None => {
                self.slots.push(queue);
                self.slots.len() - 1
            }
        }
    }

    fn slot_ref(&self, index: usize) -> SlotRef {
        let generation = self
            .slots
            .get(index)
            .and_then(Option::as_ref)
            .map_or(u64::MAX, |queue| queue.generation);
        SlotRef { index, generation }
    }

    fn get(&self, slot: SlotRef) -> Option<&Queue> {
        self.slots
            .get(slot.index)
            .and_then(Option::as_ref)
            .filter(|queue| queue.generation == slot.generation)
    }

    fn get_mut(&mut self, slot: SlotRef) -> Option<&mut Queue> {
        self.slots
            .get_mut(slot.index)
            .and_then(Option::as_mut)
            .filter(|queue| queue.generation == slot.generation)
    }

    fn group(&mut self, group: &str) -> usize {
        if let Some(&index) = self.groups.get(group) {
            return index;
        }
        let group: Arc<str> = group.into();
        let index = self.insert(QueueKind::Group(Arc::clone(&group)));
        self.groups.insert(group, index);
        index
    }

    fn dead_letters(&mut self, group: Option<&str>) -> usize {
        match group {
            Some(group) => {
                if let Some(&index) = self.group_dead_letters.get(group) {
                    return index;
                }
                let group: Arc<str> = group.into();
                let index = self.insert(QueueKind::DeadLetters(Some(Arc::clone(&group))));
                self.group_dead_letters.insert(group, index);
                index
            }
            None => {
                if let Some(index) = self.anonymous_dead_letters {
                    return index;
                }
                let index = self.insert(QueueKind::DeadLetters(None));
                self.anonymous_dead_letters = Some(index);
                index
            }
        }
    }
}

/// A send that found a queue full.
#[derive(Debug)]
pub(crate) struct Full {
    /// The message, back to the sender.
    pub(crate) message: Message,
    /// Which queue is full, for the error.
    pub(crate) queue: QueueKind,
}

/// One destination: a topic whose subscriptions (groups and anonymous subscribers) each have
/// a bounded queue, plus its dead-letter queues.
pub(crate) struct Destination {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: Arc<str>,
    state: Mutex<DestState>,
    /// Wakes senders (and dead-letterers) waiting for room; notified when a queue stops
    /// being full.
    pub(crate) space: Notify,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Destination {
    fn capacity(&self) -> usize {
        self.shared.config.capacity
    }

    /// Creates a group (idempotent).
    pub(crate) fn provision_group(&self, group: &str) {
        lock(&self.state).group(group);
    }

    /// Opens a queue for a new consumer: its slot and what wakes it.
    pub(crate) fn attach(&self, attach: Attach<'_>) -> (SlotRef, Arc<Wakeup>) {
        let mut state = lock(&self.state);
        let index = match attach {
            Attach::Group(group) => state.group(group),
            Attach::Anonymous => {
                let number = state.next_anonymous;
                state.next_anonymous += 1;
                state.insert(QueueKind::Anonymous(number))
            }
            Attach::DeadLetters(group) => state.dead_letters(group),
        };
        let slot = state.slot_ref(index);
        let wakeup = match state.get_mut(slot) {
            Some(queue) => {
                queue.consumers += 1;
                Arc::clone(&queue.wakeup)
            }
            // Unreachable: the slot was just filled.
            None => Arc::default(),
        };
        (slot, wakeup)
    }

    /// A consumer went away; an anonymous subscription goes with it, waiting messages and all.
    pub(crate) fn detach(&self, slot: SlotRef) {
        // Messages are dropped once the lock is released: dropping a payload may run its
        // owner's code.
        let _removed = {
            let mut state = lock(&self.state);
            let Some(queue) = state.get_mut(slot) else {
                return;
            };
            queue.consumers = queue.consumers.saturating_sub(1);
            if matches!(queue.kind, QueueKind::Anonymous(_)) {
                // Its in-flight deliveries stay counted bus-wide until settled; settling
                // finds the slot gone and only updates that count.
                state.free.push(slot.index);
                state.slots[slot.index].take()
            } else {
                None
            }
        };
        self.space.notify_waiters();
        self.shared.announce();
    }

    /// Enqueues into every subscription queue at once, or into none if one is full.
    pub(crate) fn try_send(&self, message: Message) -> Result<(), Box<Full>> {
        let capacity = self.capacity();
        let history = self.shared.config.history;
        {
            let mut state = lock(&self.state);
            let mut first = None;
            let mut subscriptions = 0usize;
            for (index, queue) in state.slots.iter().enumerate() {
                let Some(queue) = queue else { continue };
                if !queue.kind.is_subscription() {
                    continue;
                }
                if queue.len() >= capacity {
                    return Err(Box::new(Full {
                        message,
                        queue: queue.kind.clone(),
                    }));
                }
                first.get_or_insert(index);
                subscriptions += 1;
            }
            if history > 0 {
                if state.history.len() >= history {
                    state.history.pop_front();
                }
                state.history.push_back(message.clone());
            }
            match (first, subscriptions) {
                (None, _) => {}
                // A single queue owns the message: no allocation.
                (Some(index), 1) => {
                    if let Some(Some(queue)) = state.slots.get_mut(index) {
                        queue.push(Body::Owned(message));
                    }
                }
                // Fan-out: the queues share one message.
                (Some(first), _) => {
                    let message = Arc::new(message);
                    for queue in state.slots[first..].iter_mut().flatten() {
                        if queue.kind.is_subscription() {
                            queue.push(Body::Shared(Arc::clone(&message)));
                        }
                    }
                }
            }
        }
        self.shared.announce();
        Ok(())
    }

    /// Enqueues into one group's queue only (made if missing), if it has room.
    pub(crate) fn try_send_to_group(&self, group: &str, message: Message) -> Result<(), Box<Full>> {
        let capacity = self.capacity();
        {
            let mut state = lock(&self.state);
            let index = state.group(group);
            let Some(Some(queue)) = state.slots.get_mut(index) else {
                return Err(Box::new(Full {
                    message,
                    queue: QueueKind::Group(group.into()),
                }));
            };
            if queue.len() >= capacity {
                return Err(Box::new(Full {
                    message,
                    queue: queue.kind.clone(),
                }));
            }
            queue.push(Body::Owned(message));
        }
        self.shared.announce();
        Ok(())
    }

    /// Hands out the next message of a queue, now in flight, in a recycled `Arc` if it
    /// can (see [`Entry::into_in_flight`](crate::queue::Entry::into_in_flight)). Fails once
    /// the bus is closed.
    pub(crate) fn take(&self, slot: SlotRef, recycled: &mut Recycled) -> Result<Take<InFlight>> {
        self.shared.check_open()?;
        let take = {
            let mut state = lock(&self.state);
            let Some(queue) = state.get_mut(slot) else {
                return Err(shut_down());
            };
            let take = queue.take();
            if matches!(take, Take::Ready(_)) {
                // Counted under the lock, so `busy` never sees the message nowhere.
                self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
            }
            take
        };
        // Shared here, once the lock is released, so that what leaves is a pointer rather
        // than the message itself.
        Ok(match take {
            Take::Ready(entry) => Take::Ready(entry.into_in_flight(recycled)),
            Take::Wait(due) => Take::Wait(due),
        })
    }

    /// Queued (delayed ones included) plus in-flight messages of a consumer's queue. Fails
    /// once the bus is closed.
    pub(crate) fn backlog(&self, slot: SlotRef) -> Result<usize> {
        self.shared.check_open()?;
        lock(&self.state)
            .get(slot)
            .map(Queue::len)
            .ok_or_else(shut_down)
    }

    /// Ends an in-flight delivery's count, under the destination lock.
    fn settled(&self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Removes an acknowledged message.
    pub(crate) fn ack(&self, slot: SlotRef, key: Option<&str>) {
        let freed = {
            let mut state = lock(&self.state);
            let freed = match state.get_mut(slot) {
                Some(queue) => {
                    let was_full = queue.len() >= self.capacity();
                    queue.remove_in_flight(key);
                    was_full
                }
                None => false,
            };
            self.settled();
            freed
        };
        if freed {
            self.space.notify_waiters();
        }
        self.shared.announce();
    }

    /// Returns a message to its place in its queue, due at once or at `not_before`.
    pub(crate) fn requeue(&self, slot: SlotRef, in_flight: InFlight, not_before: Option<Instant>) {
        {
            let mut state = lock(&self.state);
            if let Some(queue) = state.get_mut(slot) {
                queue.requeue(in_flight, not_before);
            }
            // Otherwise the anonymous subscription is gone, and so is the message.
            self.settled();
        }
        self.shared.announce();
    }

    /// Stores a dead letter in the dead-letter queue of the message's group, then removes the
    /// original, in one step. From a dead-letter queue, the dead letter replaces the original
    /// in the same queue.
    pub(crate) fn try_dead_letter(
        &self,
        slot: SlotRef,
        key: Option<&str>,
        dead_letter: Message,
    ) -> Result<(), Box<Full>> {
        let capacity = self.capacity();
        let freed = {
            let mut state = lock(&self.state);
            let origin_kind = state.get(slot).map(|queue| queue.kind.clone());
            let target = match &origin_kind {
                Some(QueueKind::Group(group)) => state.dead_letters(Some(group)),
                Some(QueueKind::DeadLetters(_)) => slot.index,
                // An anonymous subscription, present or gone.
                Some(QueueKind::Anonymous(_)) | None => state.dead_letters(None),
            };
            let target = state.slot_ref(target);
            let same_queue = target == slot;
            let Some(dead_letters) = state.get_mut(target) else {
                return Err(Box::new(Full {
                    message: dead_letter,
                    queue: QueueKind::DeadLetters(None),
                }));
            };
            if !same_queue && dead_letters.len() >= capacity {
                return Err(Box::new(Full {
                    message: dead_letter,
                    queue: dead_letters.kind.clone(),
                }));
            }
            // Stored first, then the original removed: under one lock, so never neither.
            dead_letters.push(Body::Owned(dead_letter));
            let freed = match state.get_mut(slot) {
                Some(queue) => {
                    // From a dead-letter queue into itself the length does not change.
                    let was_full = !same_queue && queue.len() >= capacity;
                    queue.remove_in_flight(key);
                    was_full
                }
                None => false,
            };
            self.settled();
            freed
        };
        if freed {
            self.space.notify_waiters();
        }
        self.shared.announce();
        Ok(())
    }

    /// Queued plus in-flight messages of a queue, if it exists.
    pub(crate) fn queue_len(&self, attach: Attach<'_>) -> usize {
        let state = lock(&self.state);
        let index = match attach {
            Attach::Group(group) => state.groups.get(group).copied(),
            Attach::DeadLetters(Some(group)) => state.group_dead_letters.get(group).copied(),
            Attach::DeadLetters(None) => state.anonymous_dead_letters,
            Attach::Anonymous => None,
        };
        index
            .and_then(|index| state.slots.get(index))
            .and_then(Option::as_ref)
            .map_or(0, Queue::len)
    }

    /// The remembered messages, oldest first.
    pub(crate) fn history(&self) -> Vec<Message> {
        lock(&self.state).history.iter().cloned().collect()
    }

    /// How many subscription queues (groups and anonymous subscriptions) a send feeds.
    pub(crate) fn subscriptions(&self) -> usize {
        lock(&self.state)
            .slots
            .iter()
            .flatten()
            .filter(|queue| queue.kind.is_subscription())
            .count()
    }
}
