//! Dead letters taken back: moved to the group that failed them, listed, or purged, the
//! same on every backend, from [`Channel::dead_letters`] and [`Channel::send_to_group`].

use crate::channel::{Channel, Consumer};
use crate::delivery::{as_delivered, Acknowledger, Delivery};
use crate::error::{Error, Result};
use crate::message::{header, Message};
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which dead letters a [`Channel::redrive`] or [`Channel::purge_dead_letters`] takes, and
/// whether it only lists them. By default: all of them, for real.
///
/// ```
/// use event_binder_core::RedriveOptions;
/// use std::time::Duration;
///
/// let options = RedriveOptions::new()
///     .ids(["0190a8c2-…-1", "0190a8c2-…-2"])
///     .limit(10)
///     .idle(Duration::from_secs(5))
///     .dry_run();
/// assert!(options.is_dry_run());
/// ```
#[derive(Clone)]
pub struct RedriveOptions {
    ids: Option<BTreeSet<String>>,
    limit: Option<usize>,
    dry_run: bool,
    idle: Duration,
    on_taken: Option<TakenReport>,
}

/// What [`RedriveOptions::on_taken`] calls.
type TakenReport = Arc<dyn Fn(&Message) + Send + Sync>;

impl RedriveOptions {
    /// How long a receive of the dead letters may bring nothing before they count as all
    /// taken, by default: 2 seconds (long enough for an SQS long poll, or a Kafka fetch once
    /// the consumer has joined its group, which opening it waits for).
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(2);

    /// Every dead letter, for real.
    pub fn new() -> Self {
        RedriveOptions {
            ids: None,
            limit: None,
            dry_run: false,
            idle: Self::DEFAULT_IDLE,
            on_taken: None,
        }
    }

    /// Only the dead letters with these message ids.
    pub fn ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ids = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// At most `limit` dead letters.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Lists what would be taken, and takes nothing.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// How long a receive may bring nothing before the dead letters count as all taken.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Calls `report` with each dead letter as it is taken (moved, deleted, or listed by a
    /// dry run): the progress of a long run, which returns only at its end.
    ///
    /// ```
    /// use event_binder_core::RedriveOptions;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let moved = Arc::new(AtomicUsize::new(0));
    /// let counter = moved.clone();
    /// let options = RedriveOptions::new().on_taken(move |_dead_letter| {
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// # let _ = options;
    /// ```
    pub fn on_taken(mut self, report: impl Fn(&Message) + Send + Sync + 'static) -> Self {
        self.on_taken = Some(Arc::new(report));
        self
    }

    /// Whether it only lists.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    fn taken(&self, taken: &mut Vec<Message>, dead_letter: Message) {
        if let Some(report) = &self.on_taken {
            report(&dead_letter);
        }
        taken.push(dead_letter);
    }

    fn selects(&self, id: &str) -> bool {
        self.ids.as_ref().is_none_or(|ids| ids.contains(id))
    }
}

impl fmt::Debug for RedriveOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedriveOptions")
            .field("ids", &self.ids)
            .field("limit", &self.limit)
            .field("dry_run", &self.dry_run)
            .field("idle", &self.idle)
            .field("on_taken", &self.on_taken.as_ref().map(|_| "Fn(&Message)"))
            .finish()
    }
}

impl Default for RedriveOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What is done with each dead letter taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Sent back to its group, then removed.
    Redrive,
    /// Removed.
    Purge,
}

pub(crate) async fn take_dead_letters<C: Channel + ?Sized>(
    channel: &C,
    destination: &str,
    group: Option<&str>,
    options: &RedriveOptions,
    take: Take,
) -> Result<Vec<Message>> {
    let redrive_to = match (take, group) {
        (Take::Redrive, Some(group)) => Some(group),
        (Take::Redrive, None) => {
            return Err(Error::Unsupported(format!(
                "the dead letters of {destination:?}'s anonymous subscriptions have no group to \
                 go back to (an anonymous subscription ends with its consumer): list or purge them"
            )))
        }
        (Take::Purge, _) => None,
    };
    // Whatever is not taken is held until the end: the consumer must be able to hold it.
    // Only with no id to look for is everything received taken, up to the limit.
    let holding = match (&options.ids, options.limit) {
        (None, Some(limit)) => u16::try_from(limit).unwrap_or(u16::MAX),
        _ => u16::MAX,
    };
    let mut dead_letters = channel
        .dead_letters_holding(destination, group, holding.max(1))
        .await?;
    let mut taken = Vec::new();
    let mut seen = HashSet::new();
    // Deliveries left where they are (not selected, listed, or seen again), settled only
    // when the run ends: handed back now, they would be received again at once.
    let mut left = Vec::new();
    // Selected dead letters whose copies are sent together, then removed.
    let mut batch = Vec::with_capacity(SEND_BATCH);
    let outcome = loop {
        let limit_reached = options
            .limit
            .is_some_and(|limit| taken.len() + batch.len() >= limit);
        let next = if limit_reached {
            None
        } else {
            match tokio::time::timeout(options.idle, dead_letters.receive()).await {
                Err(_) => None,
                Ok(Err(err)) => break Err(err),
                Ok(Ok(delivery)) => Some(delivery),
            }
        };
        // Whether the run ends once the batch is sent.
        let ends = match next {
            None => true,
            Some(delivery) => {
                let message = delivery.message();
                if !seen.insert(message.shared_id().clone()) {
                    // Redriven and failed again while this ran, or handed round by the broker.
                    left.push(delivery);
                    true
                } else {
                    let selected = options.selects(message.id());
                    if !selected || options.dry_run {
                        if selected {
                            options.taken(&mut taken, message.clone());
                        }
                        left.push(delivery);
                        continue;
                    }
                    batch.push(delivery);
                    if batch.len() < SEND_BATCH {
                        continue;
                    }
                    false
                }
            }
        };
        let sent = send_and_remove(
            channel,
            destination,
            redrive_to,
            options,
            &mut batch,
            &mut taken,
        );
        if let Err(err) = sent.await {
            break Err(err);
        }
        if ends {
            break Ok(());
        }
    };
    left.append(&mut batch);
    hand_back(left).await;
    drop(dead_letters);
    outcome.map(|()| taken)
}

/// How many dead letters a redrive sends back in one [`Channel::send_to_group`].
const SEND_BATCH: usize = 10;

/// Sends the copies of `batch` back to `group` (none for a purge), then removes the dead
/// letters, moving each removed one into `taken`. Were a removal lost, the dead letter
/// would be taken again, and its copy's id is the same. What was not removed stays in
/// `batch`.
async fn send_and_remove<C: Channel + ?Sized, A: Acknowledger>(
    channel: &C,
    destination: &str,
    group: Option<&str>,
    options: &RedriveOptions,
    batch: &mut Vec<Delivery<A>>,
    taken: &mut Vec<Message>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    if let Some(group) = group {
        let copies = batch.iter().map(|d| redriven(d.message())).collect();
        channel.send_to_group(destination, group, copies).await?;
    }
    let mut removal = Ok(());
    for delivery in batch.drain(..) {
        let message = delivery.message().clone();
        match delivery.ack().await {
            Ok(()) => options.taken(taken, message),
            // Its copy is sent: it stays a dead letter until the next run takes it again.
            Err(err) => removal = removal.and(Err(err)),
        }
    }
    removal
}

/// The copy of a dead letter that goes back to its group: the message as it was sent, its
/// redrives counted.
fn redriven(dead_letter: &Message) -> Message {
    // The failure's headers go: the copy has not failed yet.
    let mut message = as_delivered(dead_letter.clone());
    let headers = message.headers_mut();
    let redrives = headers
        .get(header::REDRIVE_COUNT)
        .and_then(|count| count.parse::<u32>().ok())
        .unwrap_or(0);
    headers.insert(header::REDRIVE_COUNT, (redrives + 1).to_string());
    message
}

/// Hands the dead letters left back to the broker, where they stay dead letters.
async fn hand_back<A: Acknowledger>(left: Vec<Delivery<A>>) {
    for delivery in left {
        let id = delivery.message().shared_id().clone();
        if let Err(err) = delivery.nack(None).await {
            // Not settled, it comes back when the consumer closes all the same.
            tracing::debug!(message_id = %id, error = %err, "handing a dead letter back failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redriven_copy_drops_the_failure_and_counts_its_redrives() {
        let dead = Message::new("{}")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header(header::DEAD_LETTER_ERROR, "boom")
            .with_header(header::DEAD_LETTER_ATTEMPTS, "3")
            .with_header(header::REDRIVE_COUNT, "1");
        let copy = redriven(&dead);
        assert_eq!(copy.id(), dead.id());
        assert_eq!(copy.key(), Some("k"));
        assert_eq!(copy.headers().get("tenant"), Some("acme"));
        assert_eq!(copy.headers().get(header::DEAD_LETTER_ERROR), None);
        assert_eq!(copy.headers().get(header::DEAD_LETTER_ATTEMPTS), None);
        assert_eq!(copy.headers().get(header::REDRIVE_COUNT), Some("2"));
    }

    #[test]
    fn options_select_by_id() {
        let options = RedriveOptions::new().ids(["a"]);
        assert!(options.selects("a"));
        assert!(!options.selects("b"));
        assert!(RedriveOptions::new().selects("anything"));
    }
}
