//! Queues: ready messages in publish order, consumers, and dispatch.
//!
//! A queue never sees frames. It hands messages to consumers through the [`Outlet`] trait,
//! which the channel layer implements (delivery tags, prefetch credit, encoding). Locks nest in
//! one order only: queue state, then an outlet's state, then a connection's write buffer. Code
//! that starts from a channel (acks, cancels) releases the outlet before touching a queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;

use crate::exchange::Name;
use crate::message::{Message, QueuedMessage};

/// Identifies a connection, for exclusive queues and exclusive ownership checks.
pub type ConnectionId = u64;

/// The delivery side of a channel, as queues see it.
pub trait Outlet: Send + Sync {
    /// Delivers `entry` to `consumer` if the consumer and its channel have credit; otherwise
    /// gives the entry back. Called with the queue's lock held.
    fn offer(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        entry: QueuedMessage,
    ) -> Result<(), QueuedMessage>;

    /// Tells the client that the server cancelled `consumer` (its queue was deleted).
    fn cancelled_by_server(&self, consumer: &Consumer);
}

/// A consumer registered on a queue.
pub struct Consumer {
    /// The consumer tag, unique within its channel.
    pub tag: Name,
    /// The channel that receives the deliveries.
    pub outlet: Arc<dyn Outlet>,
    /// Whether deliveries are considered acknowledged when sent.
    pub no_ack: bool,
    /// Whether this consumer holds the queue exclusively.
    pub exclusive: bool,
    /// `x-priority`: higher priorities are served first while they have credit.
    pub priority: i32,
    /// Per-consumer prefetch limit (0 = unlimited), from basic.qos global=false.
    pub prefetch: u32,
    /// Deliveries to this consumer not yet acknowledged.
    pub unacked: AtomicU32,
}

impl Consumer {
    /// Whether the per-consumer prefetch allows one more delivery.
    pub fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked.load(Ordering::Relaxed) < self.prefetch
    }
}

/// Static properties of a queue, fixed at declare time.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Queue name.
    pub name: Name,
    /// Survives a broker restart (kept in the definitions log).
    pub durable: bool,
    /// Owning connection of an exclusive queue.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declare arguments, kept for equivalence checks.
    pub arguments: FieldTable,
}

/// A queue of one vhost.
pub struct Queue {
    /// What was declared.
    pub spec: QueueSpec,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Messages delivered and not yet acked or requeued.
    unacked: usize,
    /// Whether a consumer was ever attached (auto-delete starts counting after the first).
    had_consumer: bool,
    deleted: bool,
}

/// Why a consumer could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeError {
    /// Another consumer holds the queue exclusively, or an exclusive consumer was asked for on
    /// a queue that already has consumers.
    ExclusiveInUse,
    /// The queue was deleted meanwhile.
    Deleted,
}

impl Queue {
    /// Creates an empty queue.
    pub fn new(spec: QueueSpec) -> Arc<Self> {
        Arc::new(Self {
            spec,
            state: Mutex::new(QueueState::default()),
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &Name {
        &self.spec.name
    }

    /// Number of messages ready for delivery.
    pub fn message_count(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> usize {
        self.state.lock().consumers.len()
    }

    /// Number of delivered, unacknowledged messages.
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked
    }

    /// Appends a message and delivers what consumers can take.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        let mut state = self.state.lock();
        if state.deleted {
            return;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.ready.push_back(QueuedMessage {
            seq,
            message,
            redelivered: false,
        });
        self.dispatch_locked(&mut state);
    }

    /// Delivers ready messages to consumers with credit, highest priority first and
    /// round-robin among equals.
    pub fn dispatch(self: &Arc<Self>) {
        let mut state = self.state.lock();
        self.dispatch_locked(&mut state);
    }

    fn dispatch_locked(self: &Arc<Self>, state: &mut QueueState) {
        'messages: while let Some(mut entry) = state.ready.pop_front() {
            let mut index = 0;
            while index < state.consumers.len() {
                let consumer = &state.consumers[index];
                if !consumer.has_credit() {
                    index += 1;
                    continue;
                }
                match consumer.outlet.offer(consumer, self, entry) {
                    Ok(()) => {
                        if !consumer.no_ack {
                            state.unacked += 1;
                        }
                        rotate_within_priority(&mut state.consumers, index);
                        continue 'messages;
                    }
                    Err(back) => {
                        entry = back;
                        index += 1;
                    }
                }
            }
            state.ready.push_front(entry);
            break;
        }
    }

    /// Takes the next ready message for basic.get; the caller records it as unacked unless
    /// `no_ack`. Returns the message and the count of messages left.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, usize)> {
        let mut state = self.state.lock();
        let entry = state.ready.pop_front()?;
        if !no_ack {
            state.unacked += 1;
        }
        Some((entry, state.ready.len()))
    }

    /// Settles delivered messages that were acked (or rejected without requeue), then
    /// delivers what the freed credit allows.
    pub fn settle(self: &Arc<Self>, count: usize) {
        let mut state = self.state.lock();
        state.unacked = state.unacked.saturating_sub(count);
        self.dispatch_locked(&mut state);
    }

    /// Puts delivered messages back at their original positions, marked redelivered, and
    /// delivers again.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = QueuedMessage>) {
        let mut state = self.state.lock();
        for mut entry in entries {
            state.unacked = state.unacked.saturating_sub(1);
            if state.deleted {
                continue;
            }
            entry.redelivered = true;
            let at = state.ready.partition_point(|m| m.seq < entry.seq);
            state.ready.insert(at, entry);
        }
        self.dispatch_locked(&mut state);
    }

    /// Adds a consumer and starts delivering to it; `accepted` runs once the consumer is
    /// admitted and before any delivery (it sends consume-ok).
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        accepted: impl FnOnce(),
    ) -> Result<(), ConsumeError> {
        let mut state = self.state.lock();
        if state.deleted {
            return Err(ConsumeError::Deleted);
        }
        if state.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !state.consumers.is_empty())
        {
            return Err(ConsumeError::ExclusiveInUse);
        }
        // Keep consumers sorted by priority, highest first; a newcomer goes last among equals.
        let at = state
            .consumers
            .partition_point(|c| c.priority >= consumer.priority);
        state.consumers.insert(at, consumer);
        state.had_consumer = true;
        accepted();
        self.dispatch_locked(&mut state);
        Ok(())
    }

    /// Removes a consumer. Returns true when the queue is auto-delete and now unused, so the
    /// caller should delete it.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut state = self.state.lock();
        state.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        self.spec.auto_delete && state.had_consumer && state.consumers.is_empty() && !state.deleted
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> usize {
        let mut state = self.state.lock();
        let count = state.ready.len();
        state.ready.clear();
        count
    }

    /// Marks the queue deleted, drops its messages and tells its consumers. Returns the number
    /// of ready messages it held.
    pub fn delete(&self) -> usize {
        let (count, consumers) = {
            let mut state = self.state.lock();
            state.deleted = true;
            let count = state.ready.len();
            state.ready.clear();
            (count, std::mem::take(&mut state.consumers))
        };
        for consumer in consumers {
            consumer.outlet.cancelled_by_server(&consumer);
        }
        count
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }
}

/// Moves the consumer at `index` behind the others of its priority (round-robin).
fn rotate_within_priority(consumers: &mut [Arc<Consumer>], index: usize) {
    let priority = consumers[index].priority;
    let mut end = index + 1;
    while end < consumers.len() && consumers[end].priority == priority {
        end += 1;
    }
    consumers[index..end].rotate_left(1);
}
