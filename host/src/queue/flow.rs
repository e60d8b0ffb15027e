//! Publisher flow control, per queue.
//!
//! A queue whose consumers cannot keep up raises its flow flag once its ready backlog reaches
//! [`FLOW_HIGH_MESSAGES`] (or [`FLOW_HIGH_BYTES`] of bodies) while it has consumers. A
//! connection that has just published into such a queue stops reading its socket
//! ([`Queue::throttle`]) until the backlog is back under half of that, or until the queue has
//! delivered [`FLOW_PACE`] messages since it stopped, so TCP back-pressure slows the publisher
//! to what the consumers take. The second way out matters for a deep backlog (a buffer that
//! consumers attached to): its publishers go on at a fraction of the consumers' pace while it
//! drains, instead of waiting for the whole of it. Only the connections that published into
//! the queue wait: publishers to other queues go on.
//!
//! A queue with no consumer never raises the flag (it is a buffer: messages go to storage at
//! full speed), and neither does one whose consumers take nothing: a publisher that waited
//! [`FLOW_PATIENCE`] without the queue delivering a single message marks it stalled, and the
//! flag stays down until the queue delivers again. Consumers that stopped acking therefore
//! cannot stop their publishers; their queue pages to disk instead.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Queue, QueueState};

/// Ready messages at which a queue with consumers asks its publishers to wait.
pub const FLOW_HIGH_MESSAGES: usize = 1024;
/// Body bytes of ready messages at which a queue with consumers asks its publishers to wait.
pub const FLOW_HIGH_BYTES: usize = 8 << 20;
/// Deliveries after which a waiting publisher may go on even though the backlog is still over
/// the threshold (a turn publishes at most about 340 small messages: fewer than this).
pub const FLOW_PACE: u64 = 512;
/// How long a waiting publisher gives the queue to deliver anything before it treats the
/// consumers as stalled and goes on.
pub const FLOW_PATIENCE: Duration = Duration::from_secs(1);

/// The queue's flow bookkeeping, kept in its locked state.
#[derive(Default)]
pub(super) struct FlowState {
    /// A waiting publisher saw no delivery for [`FLOW_PATIENCE`]: no flow until one happens.
    stalled: bool,
    /// Deliveries so far (basic.deliver and basic.get), for the stall test.
    deliveries: u64,
}

impl FlowState {
    /// Records a delivery: a stalled queue's consumers are taking messages again. True every
    /// [`FLOW_PACE`] deliveries, when waiting publishers should look again.
    fn delivered(&mut self) -> bool {
        self.deliveries = self.deliveries.wrapping_add(1);
        self.stalled = false;
        self.deliveries.is_multiple_of(FLOW_PACE)
    }
}

impl Queue {
    /// Whether publishers into this queue should wait (one relaxed load: checked per publish).
    pub fn in_flow(&self) -> bool {
        self.flow.load(Ordering::Relaxed)
    }

    /// Raises or lowers the flow flag after an operation changed the backlog. Called with the
    /// lock held at the end of every operation.
    pub(super) fn update_flow(&self, state: &QueueState) {
        let len = state.ready.len();
        let bytes = state.ready.bytes();
        if self.in_flow() {
            let drained = len <= FLOW_HIGH_MESSAGES / 2 && bytes <= FLOW_HIGH_BYTES / 2;
            if drained || state.consumers.is_empty() || state.deleted || state.flow.stalled {
                self.flow.store(false, Ordering::Relaxed);
                self.flow_cleared.notify_waiters();
            }
        } else if (len >= FLOW_HIGH_MESSAGES || bytes >= FLOW_HIGH_BYTES)
            && !state.consumers.is_empty()
            && !state.flow.stalled
            && !state.deleted
        {
            self.flow.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a delivery (with the queue's lock held); every [`FLOW_PACE`] deliveries while
    /// in flow, wakes the waiting publishers.
    pub(super) fn count_delivery(&self, flow: &mut FlowState) {
        if flow.delivered() && self.in_flow() {
            self.flow_cleared.notify_waiters();
        }
    }

    /// Waits while the queue is in flow: until its backlog drained to half the threshold,
    /// until it delivered [`FLOW_PACE`] messages since this wait began, or until it delivered
    /// nothing for [`FLOW_PATIENCE`] (then it is marked stalled and stops throttling until its
    /// consumers take something).
    pub async fn throttle(&self) {
        let started = self.state.lock().flow.deliveries;
        loop {
            let cleared = self.flow_cleared.notified();
            tokio::pin!(cleared);
            cleared.as_mut().enable();
            if !self.in_flow() {
                return;
            }
            let before = self.state.lock().flow.deliveries;
            if before.wrapping_sub(started) >= FLOW_PACE {
                return;
            }
            if tokio::time::timeout(FLOW_PATIENCE, cleared).await.is_ok() {
                continue;
            }
            let mut state = self.state.lock();
            if state.flow.deliveries == before {
                state.flow.stalled = true;
                self.update_flow(&state);
                return;
            }
        }
    }
}
