//! Delayed redelivery through the broker: a message handed back with a delay waits in a
//! delay queue of the queue it came from, not in the consumer.
//!
//! RabbitMQ expires a message (per-message TTL) only once it reaches the head of its
//! queue, so one queue for all delays would hold a short delay behind a long one. Delays
//! are therefore sorted into buckets by powers of two: bucket `k` holds the delays of
//! 2^k ms up to 2^(k+1) ms (exclusive). Every message ahead of one in its bucket was
//! published before it and waits less than 2^(k+1) ms, at most twice that one's delay; so
//! no message waits more than twice its delay.

use crate::convert;
use crate::link::Link;
use crate::names;
use crate::pool::{ConfirmPool, Target};
use crate::topology::{Declaration, DelayQueue};
use event_binder_core::{Message, Result};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How many buckets there are: delays of 1 ms up to RabbitMQ's longest TTL, 2³² − 1 ms.
pub(crate) const BUCKETS: u8 = 32;

/// The delay a message waits in its delay queue: `delay` in whole milliseconds, rounded up
/// (so never shorter), at least 1 and at most 2³² − 1 ms (about 49.7 days, the longest TTL
/// RabbitMQ takes).
pub(crate) fn delay_millis(delay: Duration) -> u32 {
    let millis = delay.as_nanos().div_ceil(1_000_000);
    u32::try_from(millis).unwrap_or(u32::MAX).max(1)
}

/// The bucket of a delay of `millis` (at least 1): k for 2^k ≤ millis < 2^(k+1).
pub(crate) fn bucket(millis: u32) -> u8 {
    // At most 31: a u32 that is not 0 has at most 31 leading zeros.
    (u32::BITS - 1 - millis.max(1).leading_zeros()) as u8
}

/// The delay queues of one queue (a group's, or a dead-letter queue), declared as needed:
/// what the deliveries of one consumer hand their messages to.
pub(crate) struct DelayQueues {
    /// Publishes the copies (confirmed) and declares the delay queues.
    pool: Arc<ConfirmPool>,
    link: Arc<Link>,
    /// The queue the consumer reads, where the copies go back.
    queue: String,
    /// When each bucket's delay queue was last declared; `None` until its first use, and
    /// again after a publish to it failed (the queue may be gone).
    declared: Mutex<[Option<Instant>; BUCKETS as usize]>,
}

impl fmt::Debug for DelayQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayQueues")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl DelayQueues {
    /// The delay queues of `queue`, declared and published to on `pool`.
    pub(crate) fn new(pool: Arc<ConfirmPool>, link: Arc<Link>, queue: String) -> Self {
        DelayQueues {
            pool,
            link,
            queue,
            declared: Mutex::new([None; BUCKETS as usize]),
        }
    }

    /// Publishes a copy of `message` (whose delivery `attempt` is handed back) to the delay
    /// queue of `delay`, declaring the queue first if need be, and returns once the broker
    /// has confirmed it: the original may then be acknowledged.
    pub(crate) async fn hand_back(
        &self,
        message: &Message,
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        let millis = delay_millis(delay);
        let bucket = bucket(millis);
        let queue = DelayQueue {
            name: names::delay_queue(&self.queue, bucket),
            target: self.queue.clone(),
            longest: Duration::from_millis(2u64 << bucket),
        };
        let copy = convert::encode_delayed(message, &queue.name, attempt, millis)?;
        if self.needs_declaring(bucket) {
            let what = format!("declaring delay queue {:?}", queue.name);
            self.pool.declare(Declaration::Delay(&queue), &what).await?;
            self.lock()[usize::from(bucket)] = Some(Instant::now());
        }
        let target = Target::Queue { name: queue.name };
        let published = self.pool.publish(&target, vec![copy]).await;
        if published.is_err() {
            // Deleted behind this consumer's back, perhaps: the next use declares it again.
            self.lock()[usize::from(bucket)] = None;
        }
        published
    }

    /// The messages ready in the delay queues this consumer has published to.
    pub(crate) async fn backlog(&self) -> Result<u64> {
        let used: Vec<u8> = (0..BUCKETS)
            .filter(|&bucket| self.lock()[usize::from(bucket)].is_some())
            .collect();
        let mut total = 0;
        for bucket in used {
            let name = names::delay_queue(&self.queue, bucket);
            let what = format!("counting the messages of delay queue {name:?}");
            total += u64::from(self.pool.declare(Declaration::Count(&name), &what).await?);
        }
        Ok(total)
    }

    /// Whether the delay queue of `bucket` must be declared: at its first use, after a
    /// failed publish, and, when queues expire ([`RabbitConfig::queue_expires`](crate::RabbitConfig::queue_expires)),
    /// once half their expiry has passed since the last declaration. The broker counts a
    /// queue without consumers as unused however many messages it holds; declared that
    /// often, a delay queue (whose `x-expires` adds its longest delay) outlives every
    /// message published to it.
    fn needs_declaring(&self, bucket: u8) -> bool {
        match self.lock()[usize::from(bucket)] {
            None => true,
            Some(declared) => self
                .link
                .config
                .queue_expires
                .is_some_and(|expires| declared.elapsed() >= expires / 2),
        }
    }

    fn lock(&self) -> MutexGuard<'_, [Option<Instant>; BUCKETS as usize]> {
        self.declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_become_whole_milliseconds_never_shorter() {
        assert_eq!(delay_millis(Duration::from_micros(1)), 1);
        assert_eq!(delay_millis(Duration::from_micros(1500)), 2);
        assert_eq!(delay_millis(Duration::from_millis(300)), 300);
        assert_eq!(delay_millis(Duration::from_secs(60 * 24 * 3600)), u32::MAX);
    }

    #[test]
    fn buckets_are_powers_of_two_so_no_delay_waits_twice_its_length() {
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 1);
        assert_eq!(bucket(255), 7);
        assert_eq!(bucket(256), 8);
        assert_eq!(bucket(300), 8);
        assert_eq!(bucket(511), 8);
        assert_eq!(bucket(u32::MAX), BUCKETS - 1);
        for millis in [1, 2, 3, 7, 300, 1000, 65_537, u32::MAX] {
            let k = bucket(millis);
            let (low, high) = (1u64 << k, 2u64 << k);
            assert!(low <= u64::from(millis) && u64::from(millis) < high);
            // Everything in the bucket is shorter than twice this delay.
            assert!(high <= 2 * u64::from(millis));
        }
    }
}
