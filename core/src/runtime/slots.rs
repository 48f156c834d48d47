//! A handler's concurrency: a fixed set of slots, each running one delivery at a time,
//! all driven by the binding's one task. No task is spawned and nothing is allocated per
//! delivery; a slot's future is polled only when it was woken.
//!
//! Where the backend keeps the order of a key, a delivery is placed on the slot its key
//! hashes to, behind the ones of that slot still waiting: one key is never handled twice at
//! once, and a message being retried is never overtaken by a later one of its key.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// Up to `count` futures at once, made from items by a `start` function given to each
/// call (so that they may borrow what the caller owns).
pub(crate) struct Slots<T, F> {
    slots: Box<[Slot<T, F>]>,
    woken: Arc<Woken>,
    /// Items running plus items waiting for their slot.
    load: usize,
    /// Where the search for a free slot starts, so work spreads over the slots.
    cursor: usize,
    /// Hashes keys to slots; `None` when order by key is not kept.
    keys: Option<RandomState>,
    /// The list of woken slots being polled, kept to be reused.
    scratch: Vec<usize>,
}

struct Slot<T, F> {
    running: Pin<Box<Option<F>>>,
    /// Items of this slot's keys that arrived while it was busy, in arrival order.
    waiting: VecDeque<T>,
    wake: Arc<SlotWaker>,
    /// `wake` as a [`Waker`], made once.
    waker: Waker,
}

impl<T, F> Slot<T, F> {
    fn is_free(&self) -> bool {
        self.running.is_none() && self.waiting.is_empty()
    }
}

/// The slots woken since the binding last polled them, and the binding's task.
#[derive(Default)]
struct Woken {
    state: Mutex<WokenState>,
}

#[derive(Default)]
struct WokenState {
    slots: Vec<usize>,
    task: Option<Waker>,
}

impl Woken {
    fn lock(&self) -> MutexGuard<'_, WokenState> {
        // Every update is one push or take: a panic leaves the state consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The waker of one slot: marks the slot woken and wakes the binding's task.
struct SlotWaker {
    index: usize,
    /// Set while the slot is in [`WokenState::slots`], so it is listed once.
    listed: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.listed.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = {
            let mut state = self.woken.lock();
            state.slots.push(self.index);
            state.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<T, F: Future<Output = ()>> Slots<T, F> {
    /// `count` slots (at least one); with `ordered`, items of one key share a slot.
    pub(crate) fn new(count: usize, ordered: bool) -> Self {
        let count = count.max(1);
        let woken = Arc::new(Woken::default());
        let slots = (0..count)
            .map(|index| {
                let wake = Arc::new(SlotWaker {
                    index,
                    listed: AtomicBool::new(false),
                    woken: woken.clone(),
                });
                Slot {
                    running: Box::pin(None),
                    waiting: VecDeque::new(),
                    waker: Waker::from(wake.clone()),
                    wake,
                }
            })
            .collect();
        Slots {
            slots,
            woken,
            load: 0,
            cursor: 0,
            // One slot keeps every order anyway.
            keys: (ordered && count > 1).then(RandomState::new),
            scratch: Vec::new(),
        }
    }

    /// Whether another item can be placed now.
    pub(crate) fn has_room(&self) -> bool {
        self.load < self.slots.len()
    }

    /// Whether nothing is running or waiting.
    pub(crate) fn is_idle(&self) -> bool {
        self.load == 0
    }

    /// The slot for an item of `key`: its key's slot when order is kept, otherwise a free
    /// one. Call only with [`has_room`](Self::has_room).
    pub(crate) fn slot_for(&mut self, key: Option<&str>) -> usize {
        match (&self.keys, key) {
            (Some(keys), Some(key)) => bucket(keys.hash_one(key), self.slots.len()),
            _ => self.free_slot(),
        }
    }

    /// Places an item on slot `index` (from [`slot_for`](Self::slot_for)), behind what the
    /// slot holds; one that can start does, and is polled once right away. `start` is told
    /// whether the item had to wait.
    pub(crate) fn place(&mut self, index: usize, item: T, start: &mut impl FnMut(T, bool) -> F) {
        self.load += 1;
        let slot = &mut self.slots[index];
        if !slot.is_free() {
            slot.waiting.push_back(item);
            return;
        }
        slot.running.set(Some(start(item, false)));
        self.poll_slot(index, start);
    }

    /// A free slot: one exists whenever there is room, since every busy slot holds at
    /// least one item of the load.
    fn free_slot(&mut self) -> usize {
        let count = self.slots.len();
        let index = (0..count)
            .map(|offset| (self.cursor + offset) % count)
            .find(|&index| self.slots[index].is_free())
            .unwrap_or(self.cursor % count);
        self.cursor = (index + 1) % count;
        index
    }

    /// Polls slot `index`; a finished item makes way for the next one waiting there.
    fn poll_slot(&mut self, index: usize, start: &mut impl FnMut(T, bool) -> F) {
        loop {
            let slot = &mut self.slots[index];
            let Some(running) = slot.running.as_mut().as_pin_mut() else {
                return;
            };
            if running
                .poll(&mut Context::from_waker(&slot.waker))
                .is_pending()
            {
                return;
            }
            slot.running.set(None);
            self.load -= 1;
            let Some(next) = slot.waiting.pop_front() else {
                return;
            };
            slot.running.set(Some(start(next, true)));
        }
    }

    /// Polls the slots woken since the last call; ready once at least one item finished
    /// (so there is room). Pending for ever when nothing runs: wait for it only with work
    /// in the slots.
    pub(crate) fn poll_progress(
        &mut self,
        cx: &mut Context<'_>,
        start: &mut impl FnMut(T, bool) -> F,
    ) -> Poll<()> {
        let load = self.load;
        // One pass over the slots woken so far: a slot that wakes itself while polled (a
        // future out of Tokio's cooperative budget does) waits for the next poll of the
        // task, so the task yields to the scheduler instead of spinning.
        let mut woken = std::mem::take(&mut self.scratch);
        std::mem::swap(&mut self.woken.lock().slots, &mut woken);
        for &index in &woken {
            // Before the poll, so that a wake during it lists the slot again.
            self.slots[index]
                .wake
                .listed
                .store(false, Ordering::Release);
            self.poll_slot(index, start);
        }
        woken.clear();
        self.scratch = woken;
        if self.load < load {
            return Poll::Ready(());
        }
        let mut state = self.woken.lock();
        if !state.slots.is_empty() {
            // Woken between the last take and now: come back at once.
            cx.waker().wake_by_ref();
        } else if !state
            .task
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()))
        {
            state.task = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The slot of a key's hash: the high bits, spread over `count` by multiplication
/// (Lemire's reduction), which needs no division.
fn bucket(hash: u64, count: usize) -> usize {
    let count = count as u64;
    ((u128::from(hash) * u128::from(count)) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use tokio::sync::oneshot;

    type Item = (&'static str, oneshot::Receiver<()>);
    type Running = Pin<Box<dyn Future<Output = ()>>>;

    /// Slots whose items log their start and finish when their sender says so.
    fn slots(
        count: usize,
        ordered: bool,
    ) -> (Slots<Item, Running>, Rc<RefCell<Vec<&'static str>>>) {
        (Slots::new(count, ordered), Rc::default())
    }

    fn starter(log: &Rc<RefCell<Vec<&'static str>>>) -> impl FnMut(Item, bool) -> Running {
        let log = log.clone();
        move |(name, done), _waited| {
            let log = log.clone();
            Box::pin(async move {
                log.borrow_mut().push(name);
                let _ = done.await;
            })
        }
    }

    fn progress(slots: &mut Slots<Item, Running>, start: &mut impl FnMut(Item, bool) -> Running) {
        let mut cx = Context::from_waker(Waker::noop());
        while slots.poll_progress(&mut cx, start).is_ready() {}
    }

    #[test]
    fn one_key_runs_one_at_a_time_in_order_and_other_keys_run_meanwhile() {
        let (mut slots, log) = slots(4, true);
        let mut start = starter(&log);
        // Slots are chosen by a random hash: pick a second key that lands elsewhere.
        let a = slots.slot_for(Some("a"));
        let b = [
            "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
        ]
        .into_iter()
        .find(|key| slots.slot_for(Some(key)) != a)
        .expect("13 keys on 4 slots cannot all share one");
        let mut senders = Vec::new();
        for (name, key) in [("a1", "a"), ("a2", "a"), ("b1", b), ("a3", "a")] {
            let (done, waiting) = oneshot::channel();
            senders.push(done);
            let slot = slots.slot_for(Some(key));
            slots.place(slot, (name, waiting), &mut start);
        }
        assert_eq!(*log.borrow(), ["a1", "b1"], "a2 and a3 wait behind a1");
        assert!(!slots.has_room(), "the waiting ones count too");
        let mut senders = senders.into_iter();
        let a1 = senders.next().unwrap();
        a1.send(()).unwrap();
        progress(&mut slots, &mut start);
        assert_eq!(*log.borrow(), ["a1", "b1", "a2"]);
        for done in senders {
            let _ = done.send(());
        }
        progress(&mut slots, &mut start);
        progress(&mut slots, &mut start);
        assert_eq!(*log.borrow(), ["a1", "b1", "a2", "a3"]);
        assert!(slots.is_idle());
    }

    #[test]
    fn without_order_every_item_gets_a_free_slot() {
        let (mut slots, log) = slots(2, false);
        let mut start = starter(&log);
        let (first_done, first) = oneshot::channel();
        let (second_done, second) = oneshot::channel();
        for item in [("x", first), ("x", second)] {
            let slot = slots.slot_for(Some("same key"));
            slots.place(slot, item, &mut start);
        }
        assert_eq!(*log.borrow(), ["x", "x"], "both run at once");
        assert!(!slots.has_room());
        first_done.send(()).unwrap();
        progress(&mut slots, &mut start);
        assert!(slots.has_room() && !slots.is_idle());
        second_done.send(()).unwrap();
        progress(&mut slots, &mut start);
        assert!(slots.is_idle());
    }
}
