//! Queues: ready messages in delivery order, consumers, dispatch, and the RabbitMQ queue
//! features (TTLs, length limits, dead-lettering, priorities, single active consumer).
//!
//! A queue never sees frames. It hands messages to consumers through the [`Outlet`] trait,
//! which the channel layer implements (delivery tags, prefetch credit, encoding). Locks nest in
//! one order only: queue state, then an outlet's state, then a connection's write buffer. Code
//! that starts from a channel (acks, cancels) releases the outlet before touching a queue.
//!
//! Features are read from the declare arguments once ([`QueueArgs`]); a queue that uses none
//! of them pays a few branch tests per message. Dead-lettered messages are collected under the
//! queue lock and republished through the [`QueueHost`] (the vhost) after it is released, so a
//! queue lock is never held while another queue's is taken. Expiry — of messages at the head
//! and of the queue itself (`x-expires`) — runs on one tokio timer task per queue, started the
//! first time something can expire and woken only when an earlier deadline appears
//! (`timer.rs`). A durable queue's calls into its message store are all in `stored.rs`.

mod args;
mod dead_letter;
mod flow;
mod ready;
mod stored;
mod timer;

pub use args::{ArgError, DeadLetterTarget, MAX_PRIORITY, Overflow, QueueArgs};
pub(crate) use args::{int_value, string as string_value, type_name};
pub use dead_letter::{Death, DeathReason, cc_keys, dead_letter_properties, deaths, is_cycle};
pub use flow::{FLOW_HIGH_BYTES, FLOW_HIGH_MESSAGES, FLOW_PATIENCE};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amq_protocol::types::FieldTable;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::exchange::Name;
use crate::message::{Message, QueuedMessage};
use crate::stats::MessageStats;
use crate::store::{MessageStore, QueueStore, Ticket};
use ready::Ready;
pub use ready::Spill;

/// Ready messages a durable FIFO queue keeps in memory; behind them, persistent messages are
/// paged out (see `ready.rs`).
pub const IN_MEMORY_MESSAGES: usize = 2048;

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

    /// The connection and channel number deliveries go to, for the management API's consumer
    /// list (None for an outlet that is not a client's channel).
    fn channel(&self) -> Option<(ConnectionId, u16)> {
        None
    }
}

/// What a queue needs from the vhost it belongs to. Never called with a queue lock held.
pub trait QueueHost: Send + Sync {
    /// Publishes a dead-lettered `message` to `exchange` with `routing_keys`. The host drops it
    /// when the exchange does not exist, and drops it for each target queue where RabbitMQ's
    /// cycle rule applies (see [`is_cycle`]; never for `reason` rejected). Returns false when
    /// a target queue refused it (its store could not take it, or its `x-overflow`
    /// reject-publish): the source then keeps its stored copy.
    fn dead_letter(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        message: Arc<Message>,
        reason: DeathReason,
    ) -> bool;

    /// `queue` was unused for its `x-expires`: delete it.
    fn queue_expired(&self, queue: &Arc<Queue>);
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
    /// `x-priority`: higher priorities are served first while they have credit. Any AMQP
    /// integer is accepted whole, as RabbitMQ does (its integers are unbounded): i64 holds
    /// every value a field table can carry, so none is truncated.
    pub priority: i64,
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

/// What became of a published message in one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Delivered or queued (or dropped because the queue was deleted meanwhile).
    Accepted,
    /// Accepted and appended to the queue's message store: a publisher confirm must wait
    /// until the store has synced this ticket.
    Stored(Ticket),
    /// Refused by `x-overflow` reject-publish or reject-publish-dlx: under publisher confirms
    /// the publisher must get basic.nack.
    Rejected,
}

/// A queue of one vhost.
pub struct Queue {
    /// What was declared.
    pub spec: QueueSpec,
    args: QueueArgs,
    /// Where persistent messages go when the queue is durable.
    store: Option<QueueStore>,
    me: Weak<Queue>,
    host: OnceLock<Weak<dyn QueueHost>>,
    state: Mutex<QueueState>,
    /// Publishers should wait (`flow.rs`): read without the lock on every publish.
    flow: AtomicBool,
    /// Raised when the flow flag goes down.
    flow_cleared: Notify,
}

struct QueueState {
    ready: Ready,
    /// Sorted by priority, highest first; registration order among equals (rotated for
    /// round-robin unless single-active-consumer is on).
    consumers: Vec<Arc<Consumer>>,
    /// `x-single-active-consumer`: the one consumer that receives.
    active: Option<Arc<Consumer>>,
    /// Messages delivered and not yet acked or requeued.
    unacked: usize,
    /// Whether a consumer was ever attached (auto-delete starts counting after the first).
    had_consumer: bool,
    deleted: bool,
    /// Whether any queued entry ever had an expiry (the head deadlines then need watching).
    expiring: bool,
    /// Messages to dead-letter once the lock is released.
    dead: Vec<(QueuedMessage, DeathReason)>,
    /// Wakes the timer task; None until something first needed a timer.
    timer: Option<Arc<Notify>>,
    /// The deadline the timer task is sleeping towards.
    armed: Option<Instant>,
    /// `x-expires`: last declare, basic.get or consumer departure.
    last_used: Instant,
    flow: flow::FlowState,
    /// Messages in and out, for the management API.
    stats: MessageStats,
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
    /// Creates an empty queue. Invalid feature arguments are ignored here; declarations go
    /// through [`Queue::try_new`], which refuses them.
    pub fn new(spec: QueueSpec) -> Arc<Self> {
        let args = QueueArgs::parse(&spec.arguments).unwrap_or_default();
        Self::with_args(spec, args, None, None, IN_MEMORY_MESSAGES)
    }

    /// Creates an empty queue after validating its declare arguments.
    pub fn try_new(spec: QueueSpec) -> Result<Arc<Self>, ArgError> {
        Self::try_new_stored(spec, None)
    }

    /// [`Queue::try_new`] for a durable queue whose persistent messages go to `store`.
    pub fn try_new_stored(
        spec: QueueSpec,
        store: Option<QueueStore>,
    ) -> Result<Arc<Self>, ArgError> {
        Self::try_new_paged(spec, store, None)
    }

    /// [`Queue::try_new_stored`] for a queue that pages the messages its `store` does not
    /// hold (transient ones, or all of them without a store) into `paging` beyond
    /// [`IN_MEMORY_MESSAGES`].
    pub fn try_new_paged(
        spec: QueueSpec,
        store: Option<QueueStore>,
        paging: Option<Arc<MessageStore>>,
    ) -> Result<Arc<Self>, ArgError> {
        Self::try_new_windowed(spec, store, paging, IN_MEMORY_MESSAGES)
    }

    /// [`Queue::try_new_paged`] keeping `in_memory` ready messages in memory instead of
    /// [`IN_MEMORY_MESSAGES`].
    pub fn try_new_windowed(
        spec: QueueSpec,
        store: Option<QueueStore>,
        paging: Option<Arc<MessageStore>>,
        in_memory: usize,
    ) -> Result<Arc<Self>, ArgError> {
        let args = QueueArgs::parse(&spec.arguments)?;
        Ok(Self::with_args(spec, args, store, paging, in_memory))
    }

    fn with_args(
        spec: QueueSpec,
        args: QueueArgs,
        store: Option<QueueStore>,
        paging: Option<Arc<MessageStore>>,
        in_memory: usize,
    ) -> Arc<Self> {
        let spill = Spill::new(paging, &spec.name);
        Arc::new_cyclic(|me| Self {
            spec,
            state: Mutex::new(QueueState {
                ready: Ready::new(
                    args.max_priority,
                    store.clone(),
                    spill,
                    in_memory,
                    args.message_ttl,
                ),
                consumers: Vec::new(),
                active: None,
                unacked: 0,
                had_consumer: false,
                deleted: false,
                expiring: false,
                dead: Vec::new(),
                timer: None,
                armed: None,
                last_used: Instant::now(),
                flow: flow::FlowState::default(),
                stats: MessageStats::default(),
            }),
            flow: AtomicBool::new(false),
            flow_cleared: Notify::new(),
            args,
            store,
            me: me.clone(),
            host: OnceLock::new(),
        })
    }

    /// Connects the queue to its vhost (for dead-lettering and `x-expires`) and starts the
    /// `x-expires` countdown.
    pub fn attach(&self, host: Weak<dyn QueueHost>) {
        let _ = self.host.set(host);
        if let Some(expires) = self.args.expires {
            let mut state = self.state.lock();
            state.last_used = Instant::now();
            if let Some(at) = state.last_used.checked_add(expires) {
                self.arm(&mut state, at);
            }
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &Name {
        &self.spec.name
    }

    /// The features its declare arguments asked for.
    pub fn args(&self) -> &QueueArgs {
        &self.args
    }

    /// Messages published into it, delivered and acked since it was created.
    pub fn message_stats(&self) -> MessageStats {
        self.state.lock().stats
    }

    /// Its consumers, highest priority first.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }

    /// Number of messages ready for delivery.
    pub fn message_count(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// What the queue's ready messages take in memory (bodies, properties and entries of
    /// those in memory, and the index of those paged out; an estimate).
    pub fn memory_bytes(&self) -> usize {
        self.state.lock().ready.memory()
    }

    /// Body bytes of the messages ready for delivery.
    pub fn message_bytes(&self) -> usize {
        self.state.lock().ready.bytes()
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> usize {
        self.state.lock().consumers.len()
    }

    /// Number of delivered, unacknowledged messages.
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked
    }

    /// Records a use of the queue for `x-expires` (a declaration of it, passive or not).
    pub fn touch(&self) {
        if self.args.expires.is_some() {
            self.state.lock().last_used = Instant::now();
        }
    }

    /// Delivers a message to a consumer or queues it. Under a length limit with `x-overflow`
    /// reject-publish(-dlx) a message that does not fit is refused; with drop-head the oldest
    /// ready messages make room.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        let mut state = self.state.lock();
        if state.deleted {
            return Enqueued::Accepted;
        }
        let limited = self.args.has_length_limit();
        if limited && self.args.overflow != Overflow::DropHead {
            let len = state.ready.len() as u64 + 1;
            let bytes = (state.ready.bytes() + message.size()) as u64;
            if self.args.max_length.is_some_and(|max| len > max)
                || self.args.max_length_bytes.is_some_and(|max| bytes > max)
            {
                if self.args.overflow == Overflow::RejectPublishDlx {
                    let entry = QueuedMessage::new(0, message, 0);
                    self.discard(&mut state, entry, DeathReason::Maxlen);
                }
                self.finish(state);
                return Enqueued::Rejected;
            }
        }
        let mut outcome = Enqueued::Accepted;
        let mut position = 0;
        if let Some(store) = &self.store
            && message.persistent()
        {
            match store.append_message(&message) {
                Ok((at, ticket)) => {
                    position = at.to_u64();
                    outcome = Enqueued::Stored(ticket);
                }
                Err(error) => {
                    // Not on disk: the publisher must not get a confirm for it.
                    warn!(queue = %self.name(), %error, "cannot store a persistent message; refused");
                    self.finish(state);
                    return Enqueued::Rejected;
                }
            }
        }
        state.stats.publish += 1;
        let mut entry = QueuedMessage::new(0, message, position);
        let direct = state.ready.is_empty();
        if direct {
            // Straight to a consumer when one can take it: such a message never waits, so no
            // TTL applies (RabbitMQ delivers even x-message-ttl=0 messages this way).
            entry.seq = state.ready.allocate_seq();
            match self.offer_locked(self, &mut state, entry) {
                Ok(()) => {
                    self.finish(state);
                    return outcome;
                }
                Err(back) => entry = back,
            }
        }
        entry.set_expires_at(self.expiry_of(&entry.message));
        if let Some(at) = entry.expires_at() {
            state.expiring = true;
            self.arm(&mut state, at);
        }
        state.ready.push_back(entry);
        if limited {
            self.drop_head_over_limit(&mut state);
        }
        // (After a failed direct offer nobody can take anything now.) Behind a backlog, only
        // when some consumer's prefetch has room: otherwise every publish would pop the head
        // and push it back (scenario (b): a flooding publisher, a consumer at its prefetch).
        if !direct && self.any_credit(&state) {
            self.dispatch_locked(self, &mut state);
        }
        self.finish(state);
        outcome
    }

    /// When a message enqueued now expires: the sooner of the queue's and its own TTL.
    fn expiry_of(&self, message: &Message) -> Option<Instant> {
        let own = message.ttl_ms().map(Duration::from_millis);
        let ttl = match (self.args.message_ttl, own) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        // A TTL too large to represent never expires.
        Instant::now().checked_add(ttl)
    }

    /// drop-head: removes ready messages from the head until the limits hold again.
    fn drop_head_over_limit(&self, state: &mut QueueState) {
        loop {
            let over = self
                .args
                .max_length
                .is_some_and(|max| state.ready.len() as u64 > max)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|max| state.ready.bytes() as u64 > max);
            if !over {
                return;
            }
            match state.ready.pop_front() {
                Some(entry) => self.discard(state, entry, DeathReason::Maxlen),
                None => return,
            }
        }
    }

    /// Whether a consumer that may receive now has room under its own prefetch (its channel may
    /// still refuse: flow, channel-wide prefetch, a congested connection).
    fn any_credit(&self, state: &QueueState) -> bool {
        if self.args.single_active_consumer {
            return state.active.as_ref().is_some_and(|c| c.has_credit());
        }
        state.consumers.iter().any(|c| c.has_credit())
    }

    /// Delivers ready messages to consumers with credit, highest priority first and
    /// round-robin among equals.
    pub fn dispatch(self: &Arc<Self>) {
        let mut state = self.state.lock();
        self.dispatch_locked(self, &mut state);
        self.finish(state);
    }

    fn dispatch_locked(&self, me: &Arc<Queue>, state: &mut QueueState) {
        let mut now = None;
        while let Some(entry) = state.ready.pop_front() {
            if let Some(at) = entry.expires_at()
                && at <= *now.get_or_insert_with(Instant::now)
            {
                self.discard(state, entry, DeathReason::Expired);
                continue;
            }
            if let Err(back) = self.offer_locked(me, state, entry) {
                state.ready.push_front(back);
                break;
            }
        }
    }

    /// Offers one entry to the consumers in turn (only the active one under
    /// single-active-consumer); gives it back if none takes it.
    fn offer_locked(
        &self,
        me: &Arc<Queue>,
        state: &mut QueueState,
        mut entry: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        if self.args.single_active_consumer {
            let Some(active) = &state.active else {
                return Err(entry);
            };
            if !active.has_credit() {
                return Err(entry);
            }
            let (position, redelivered) = (entry.position, entry.redelivered());
            active.outlet.offer(active, me, entry)?;
            self.count_delivery(&mut state.flow);
            state
                .stats
                .delivered
                .count(false, active.no_ack, redelivered);
            if !active.no_ack {
                state.unacked += 1;
            }
            self.delivered(position, redelivered, active.no_ack);
            return Ok(());
        }
        let mut index = 0;
        while index < state.consumers.len() {
            let consumer = &state.consumers[index];
            if !consumer.has_credit() {
                index += 1;
                continue;
            }
            let (position, redelivered) = (entry.position, entry.redelivered());
            match consumer.outlet.offer(consumer, me, entry) {
                Ok(()) => {
                    self.count_delivery(&mut state.flow);
                    state
                        .stats
                        .delivered
                        .count(false, consumer.no_ack, redelivered);
                    if !consumer.no_ack {
                        state.unacked += 1;
                    }
                    self.delivered(position, redelivered, consumer.no_ack);
                    rotate_within_priority(&mut state.consumers, index);
                    return Ok(());
                }
                Err(back) => {
                    entry = back;
                    index += 1;
                }
            }
        }
        Err(entry)
    }

    /// Takes the next ready message for basic.get (expired ones at the head go first); the
    /// caller records it as unacked unless `no_ack`. Returns the message and the count of
    /// messages left.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, usize)> {
        let mut state = self.state.lock();
        if self.args.expires.is_some() {
            state.last_used = Instant::now();
        }
        let mut now = None;
        let got = loop {
            let Some(entry) = state.ready.pop_front() else {
                break None;
            };
            match entry.expires_at() {
                Some(at) if at <= *now.get_or_insert_with(Instant::now) => {
                    self.discard(&mut state, entry, DeathReason::Expired);
                }
                _ => break Some(entry),
            }
        };
        if let Some(entry) = &got {
            self.count_delivery(&mut state.flow);
            state
                .stats
                .delivered
                .count(true, no_ack, entry.redelivered());
            if !no_ack {
                state.unacked += 1;
            }
            self.delivered(entry.position, entry.redelivered(), no_ack);
        }
        let remaining = state.ready.len();
        self.finish(state);
        got.map(|entry| (entry, remaining))
    }

    /// Settles delivered messages that were acked (`positions`: the store positions of those
    /// that were stored), then delivers what the freed credit allows.
    pub fn settle(self: &Arc<Self>, count: usize, positions: &[u64]) {
        let mut state = self.state.lock();
        state.unacked = state.unacked.saturating_sub(count);
        state.stats.ack += count as u64;
        if !state.deleted {
            for &position in positions {
                self.forget(position);
            }
        }
        self.dispatch_locked(self, &mut state);
        self.finish(state);
    }

    /// Settles delivered messages rejected without requeue (basic.reject / basic.nack): they
    /// are dead-lettered with reason `rejected` when the queue has a dead-letter exchange.
    pub fn reject(self: &Arc<Self>, entries: impl IntoIterator<Item = QueuedMessage>) {
        let mut state = self.state.lock();
        for entry in entries {
            state.unacked = state.unacked.saturating_sub(1);
            if !state.deleted {
                self.discard(&mut state, entry, DeathReason::Rejected);
            }
        }
        self.dispatch_locked(self, &mut state);
        self.finish(state);
    }

    /// Puts delivered messages back at their original positions, marked redelivered, and
    /// delivers again. Their expiry is unchanged.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = QueuedMessage>) {
        let mut state = self.state.lock();
        for mut entry in entries {
            state.unacked = state.unacked.saturating_sub(1);
            if state.deleted {
                continue;
            }
            entry.set_redelivered(true);
            state.ready.insert_by_seq(entry);
        }
        self.dispatch_locked(self, &mut state);
        self.finish(state);
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
        if self.args.single_active_consumer && state.active.is_none() {
            state.active = Some(consumer.clone());
        }
        state.consumers.insert(at, consumer);
        state.had_consumer = true;
        accepted();
        self.dispatch_locked(self, &mut state);
        self.finish(state);
        Ok(())
    }

    /// Removes a consumer. Under single-active-consumer the next consumer (highest priority,
    /// then registration order) becomes active. Returns true when the queue is auto-delete and
    /// now unused, so the caller should delete it.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut state = self.state.lock();
        state.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        if state
            .active
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, consumer))
        {
            state.active = state.consumers.first().cloned();
            if let Some(me) = self.me.upgrade() {
                self.dispatch_locked(&me, &mut state);
            }
        }
        if state.consumers.is_empty()
            && !state.deleted
            && let Some(expires) = self.args.expires
        {
            state.last_used = Instant::now();
            if let Some(at) = state.last_used.checked_add(expires) {
                self.arm(&mut state, at);
            }
        }
        let unused = self.spec.auto_delete
            && state.had_consumer
            && state.consumers.is_empty()
            && !state.deleted;
        self.finish(state);
        unused
    }

    /// The consumer that receives under single-active-consumer.
    pub fn active_consumer(&self) -> Option<Arc<Consumer>> {
        self.state.lock().active.clone()
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> usize {
        let mut state = self.state.lock();
        let count = state.ready.clear(|position| self.forget(position));
        self.update_flow(&state);
        count
    }

    /// Marks the queue deleted, drops its messages and tells its consumers. Returns the number
    /// of ready messages it held.
    pub fn delete(&self) -> usize {
        let (count, consumers) = {
            let mut state = self.state.lock();
            state.deleted = true;
            state.active = None;
            if let Some(timer) = &state.timer {
                timer.notify_one();
            }
            let count = state.ready.clear_all();
            self.update_flow(&state);
            (count, std::mem::take(&mut state.consumers))
        };
        if let Some(store) = &self.store
            && let Err(error) = store.delete()
        {
            warn!(queue = %self.name(), %error, "cannot delete the queue's message store");
        }
        for consumer in consumers {
            consumer.outlet.cancelled_by_server(&consumer);
        }
        count
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Drops or dead-letters an entry that leaves the queue without being delivered. A stored
    /// message to dead-letter stays in the store until it was republished (at-least-once).
    fn discard(&self, state: &mut QueueState, entry: QueuedMessage, reason: DeathReason) {
        if self.args.dead_letter.is_some() {
            state.dead.push((entry, reason));
        } else {
            self.forget(entry.position);
        }
    }

    /// Ends a locked operation: makes sure the timer watches the earliest head deadline, then
    /// releases the lock and dead-letters what the operation dropped.
    fn finish(&self, mut state: MutexGuard<'_, QueueState>) {
        if state.expiring
            && let Some(at) = state.ready.next_expiry()
        {
            self.arm(&mut state, at);
        }
        self.update_flow(&state);
        let dead = if state.dead.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut state.dead)
        };
        drop(state);
        if !dead.is_empty() {
            self.dead_letter(dead);
        }
    }

    /// Republishes dropped messages through the dead-letter exchange, as RabbitMQ does: new
    /// properties with the `x-death` record, exchange and routing key replaced. A stored
    /// message is removed from this queue's store only after every target queue accepted it
    /// (and so appended it, with an earlier ticket, to its own store): a crash in between may
    /// dead-letter it twice, never lose it. A message a target refused (its store failed or is
    /// closing, or its `x-overflow` is reject-publish) keeps its stored copy here, so it comes
    /// back in this queue at the next start instead of vanishing; it is logged.
    fn dead_letter(&self, dead: Vec<(QueuedMessage, DeathReason)>) {
        let time_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = self.host.get().and_then(Weak::upgrade);
        let mut settled = Vec::with_capacity(dead.len());
        for (entry, reason) in &dead {
            let accepted = match (&self.args.dead_letter, &host) {
                (Some(target), Some(host)) => {
                    self.republish_dead(host.as_ref(), target, entry, *reason, time_secs)
                }
                _ => true,
            };
            if !accepted && entry.position != 0 {
                warn!(queue = %self.name(), "a dead-letter target refused a stored message; its copy stays in this queue's store");
            }
            settled.push(accepted);
        }
        if !self.is_deleted() {
            for ((entry, _), accepted) in dead.iter().zip(settled) {
                if accepted && entry.position != 0 {
                    self.forget(entry.position);
                }
            }
        }
    }

    fn republish_dead(
        &self,
        host: &dyn QueueHost,
        target: &DeadLetterTarget,
        entry: &QueuedMessage,
        reason: DeathReason,
        time_secs: u64,
    ) -> bool {
        let original = &entry.message;
        let death = Death {
            queue: self.name(),
            reason,
            exchange: original.exchange(),
            routing_key: original.routing_key(),
            time_secs,
            replaces_routing_keys: target.routing_key.is_some(),
        };
        let original_properties = original.properties();
        let properties = dead_letter_properties(&original_properties, &death);
        let raw_properties = match crate::protocol::encode_properties(&properties) {
            Ok(raw) => raw,
            Err(error) => {
                warn!(queue = %self.name(), %error, "cannot encode a dead-lettered message; kept");
                return false;
            }
        };
        let keys: Vec<String> = match &target.routing_key {
            Some(key) => vec![key.to_string()],
            None => {
                let mut keys = vec![original.routing_key().to_string()];
                keys.extend(cc_keys(original_properties.headers().as_ref()));
                keys
            }
        };
        let message = Arc::new(Message::new(
            target.exchange.clone(),
            Name::from(keys[0].as_str()),
            &properties,
            &raw_properties,
            original.body_bytes(),
        ));
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        host.dead_letter(&target.exchange, &keys, message, reason)
    }
}

impl crate::connection::DrainWaiter for Queue {
    /// A consumer's connection drained: deliver what waited for it.
    fn drained(self: Arc<Self>) {
        self.dispatch();
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

#[cfg(test)]
mod tests;
