//! The faults on now, and the switch that turns them on and off: one for a
//! [`FaultProxy`](super::proxy::FaultProxy)'s connections, one for an
//! [`Interruptible`](super::interrupt::Interruptible) channel's calls.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the connections or calls go through now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Bumped by each cut: what was opened or handed out under an older value is cut off.
    pub(crate) cuts: u64,
    pub(crate) delay: Duration,
    pub(crate) blackhole: bool,
}

impl Faults {
    /// Whether a call would have to wait now.
    pub(crate) fn hold(&self) -> bool {
        self.blackhole || !self.delay.is_zero()
    }
}

/// Cuts, delays and blackholes: what a [`FaultProxy`](super::proxy::FaultProxy) does to its
/// connections, or an [`Interruptible`](super::interrupt::Interruptible) channel to its calls.
/// Clones switch the same faults. Once every clone is dropped, nothing waits any more (what
/// was cut stays cut).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use event_binder_core::conformance::proxy::FaultProxy;
/// use std::time::Duration;
///
/// let proxy = FaultProxy::start("127.0.0.1:5672").await?;
/// let faults = proxy.switch();
/// faults.cut(); // every open connection closes now
/// faults.delay(Duration::from_millis(50)); // each chunk of bytes waits 50 ms
/// faults.blackhole(true); // bytes stop flowing, connections stay open
/// faults.blackhole(false);
/// assert_eq!(faults.cuts(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FaultSwitch {
    faults: Arc<watch::Sender<Faults>>,
}

impl FaultSwitch {
    /// A switch with every fault off, and what watches it.
    pub(crate) fn new() -> (Self, watch::Receiver<Faults>) {
        let (faults, watching) = watch::channel(Faults::default());
        let switch = FaultSwitch {
            faults: Arc::new(faults),
        };
        (switch, watching)
    }

    /// Cuts now: every connection open (or delivery handed out) until now is cut off.
    pub fn cut(&self) {
        self.faults.send_modify(|faults| faults.cuts += 1);
    }

    /// Holds each chunk of bytes (or call) this long first (zero: no delay).
    pub fn delay(&self, delay: Duration) {
        self.faults.send_modify(|faults| faults.delay = delay);
    }

    /// While on, nothing passes and nothing is closed, as when packets are dropped; what was
    /// held goes on once it is off.
    pub fn blackhole(&self, on: bool) {
        self.faults.send_modify(|faults| faults.blackhole = on);
    }

    /// How many cuts were made.
    pub fn cuts(&self) -> u64 {
        self.faults.borrow().cuts
    }
}
