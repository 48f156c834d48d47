//! Turns per message key: the runtime's order per key at any concurrency.

use std::collections::VecDeque;
use std::hash::RandomState;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Who may work on which key: one delivery per key at a time, in the order the deliveries
/// arrived. A delivery being retried keeps its key's turn, so no later one overtakes it.
#[derive(Debug, Default)]
pub(crate) struct KeyTurns {
    /// A key is here while some delivery holds its turn; the queue holds the ones waiting,
    /// in arrival order.
    lines: Mutex<Lines>,
}

type Lines = hashbrown::HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>, RandomState>;

impl KeyTurns {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // Every update is one insert, push or pop: a panic leaves the map consistent.
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a place in `key`'s line. Call in delivery order; [`Turn::ready`] then waits
    /// until every earlier delivery of the key is done.
    pub(crate) fn enter(self: &Arc<Self>, key: &str) -> Turn {
        let mut lines = self.lock();
        let (key, waiting) = match lines.get_key_value_mut(key) {
            Some((key, line)) => {
                let (ready, waiting) = oneshot::channel();
                line.push_back(ready);
                (key.clone(), Some(waiting))
            }
            None => {
                let key: Arc<str> = key.into();
                lines.insert(key.clone(), VecDeque::new());
                (key, None)
            }
        };
        Turn {
            turns: self.clone(),
            key,
            waiting,
        }
    }
}

/// A place in one key's line; dropping it (done, failed, panicked or cancelled) hands the
/// turn to the next in line.
#[derive(Debug)]
pub(crate) struct Turn {
    turns: Arc<KeyTurns>,
    key: Arc<str>,
    /// `None` once this place holds the turn.
    waiting: Option<oneshot::Receiver<()>>,
}

impl Turn {
    /// Waits until this place holds the key's turn; says whether it had to wait.
    pub(crate) async fn ready(&mut self) -> bool {
        let Some(waiting) = &mut self.waiting else {
            return false;
        };
        // The sender is only dropped unsent by `Drop` below, which hands over instead.
        let _ = waiting.await;
        self.waiting = None;
        true
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut lines = self.turns.lock();
        if let Some(mut waiting) = self.waiting.take() {
            // Under the lock no turn is handed over meanwhile: either it reached this place
            // already (then pass it on), or this place leaves the line unserved.
            waiting.close();
            if waiting.try_recv().is_err() {
                return;
            }
        }
        let Some(line) = lines.get_mut(&self.key) else {
            return;
        };
        while let Some(next) = line.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        lines.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    fn is_ready(turn: &mut Turn) -> bool {
        let ready = pin!(turn.ready());
        ready
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn one_turn_per_key_in_arrival_order() {
        let turns = Arc::new(KeyTurns::default());
        let mut first = turns.enter("a");
        let mut second = turns.enter("a");
        let mut third = turns.enter("a");
        let mut other = turns.enter("b");
        assert!(is_ready(&mut first) && is_ready(&mut other));
        assert!(!is_ready(&mut second) && !is_ready(&mut third));
        drop(first);
        assert!(is_ready(&mut second));
        assert!(!is_ready(&mut third));
        drop(second);
        assert!(is_ready(&mut third));
        drop((third, other));
        assert!(turns.lock().is_empty(), "every line is gone once served");
    }

    #[test]
    fn a_place_left_before_its_turn_is_skipped() {
        let turns = Arc::new(KeyTurns::default());
        let first = turns.enter("a");
        let second = turns.enter("a");
        let mut third = turns.enter("a");
        drop(second);
        drop(first);
        assert!(is_ready(&mut third));
        drop(third);
        assert!(turns.lock().is_empty());
    }

    #[test]
    fn a_turn_handed_over_but_not_yet_taken_is_passed_on() {
        let turns = Arc::new(KeyTurns::default());
        let first = turns.enter("a");
        let second = turns.enter("a");
        let mut third = turns.enter("a");
        drop(first);
        drop(second);
        assert!(is_ready(&mut third));
    }
}
