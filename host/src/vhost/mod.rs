//! A virtual host: the exchanges, queues and bindings of one tenant, and message routing.
//!
//! Topology changes arrive as typed commands from the channel layer (never frames). Changes
//! of one vhost are applied one at a time under its change lock; the slow part of a change
//! (building a plugin instance, creating a queue's store, syncing the definitions log) runs
//! before the topology write lock is taken, which is held only to swap the change in.
//! Publishing takes the topology read lock only, so a slow declare never stalls routing.

pub mod admission;
mod bind;
pub mod delayed;
mod durable;
mod equivalence;
mod exchange;
pub mod explain;
mod reply_to;
mod route;
#[cfg(test)]
mod tests;
mod topology;

pub use admission::Admission;
pub use delayed::DelayedExchange;
pub use exchange::{Exchange, ExchangeSpec, ExchangeTally};
pub use explain::Explanation;
pub use reply_to::{REPLY_TO_PREFIX, REPLY_TO_QUEUE, ReplyConsumer};
pub use route::Routed;

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tracing::debug;

use crate::blocking::blocking;
use crate::exchange::{Name, Registry};
use crate::limits::{Slot, VhostLimits};
use crate::message::Message;
use crate::protocol::AmqpError;
use crate::queue::{ConnectionId, DeathReason, Queue, QueueArgs, QueueHost, QueueSpec};
use crate::store::{Definition, StoreError, StoreOptions};
use durable::{Durable, exchange_definition, queue_definition, queue_is_durable};
use equivalence::inequivalent_argument;
use reply_to::ReplyRegistry;
use topology::Topology;

/// The exchanges every vhost starts with, and their types.
const PREDECLARED: &[(&str, &str)] = &[
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
];

/// One virtual host.
pub struct VHost {
    /// The vhost name ("/" by default).
    pub name: Name,
    registry: Registry,
    /// What routing reads. Held for writing only to swap a change in (hash-map operations):
    /// never across a plugin call, an fsync or a directory creation.
    topology: RwLock<Topology>,
    /// Serialises topology changes (declare, delete, bind, unbind) among themselves, so that
    /// each is checked and applied against a stable topology and the definitions log records
    /// them in the order they were applied. Slow work of a change (logging, creating a queue's
    /// store, plugin binding calls) happens under this lock, which routing never takes.
    changes: Mutex<()>,
    /// Direct reply-to consumers.
    replies: ReplyRegistry,
    /// This vhost, for its queues (dead-lettering, `x-expires`).
    me: Weak<VHost>,
    /// The definitions log and message store; None for a vhost kept in memory only.
    durable: Option<Durable>,
    /// Its WASM exchanges' `state`, journaled by `durable`'s message store if it has one.
    plugin_state: crate::store::PluginState,
    /// What clients may create here (docs/limits.md); changeable at run time.
    limits: RwLock<VhostLimits>,
    /// The plugin types of the broker that may be declared here (None: all of them);
    /// built-ins and the vhost's own types always may.
    exchange_types: RwLock<Option<Arc<[String]>>>,
    /// Connections open to this vhost, against `limits.max_connections`.
    connections: Arc<AtomicU32>,
    /// The publish rate and queued-bytes ceiling of its publishers (`admission.rs`).
    admission: Admission,
    /// basic.publish methods received, for metrics (added once per connection read turn).
    published: std::sync::atomic::AtomicU64,
}

/// The result of a queue declaration.
pub struct DeclaredQueue {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Whether this call created it.
    pub created: bool,
}

impl VHost {
    /// Creates a vhost kept in memory only, with the pre-declared exchanges.
    pub fn new(name: &str, registry: Registry) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(name, registry, me.clone(), None))
    }

    /// Opens a vhost whose durable objects and persistent messages live under `data_dir`:
    /// replays its definitions log and recovers its queued messages (`docs/storage.md`).
    /// WASM exchange types must be registered before, or their exchanges are not restored.
    pub fn open(
        name: &str,
        registry: Registry,
        data_dir: &Path,
        options: StoreOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let (durable, restore) = Durable::open(data_dir, name, options)?;
        let vhost = Arc::new_cyclic(|me| Self::build(name, registry, me.clone(), Some(durable)));
        vhost.restore(restore);
        Ok(vhost)
    }

    fn build(name: &str, registry: Registry, me: Weak<VHost>, durable: Option<Durable>) -> Self {
        let vhost = Self {
            name: Name::from(name),
            registry,
            topology: RwLock::new(Topology::default()),
            changes: Mutex::new(()),
            replies: ReplyRegistry::default(),
            me,
            plugin_state: Durable::plugin_state_of(durable.as_ref()),
            durable,
            limits: RwLock::new(VhostLimits::default()),
            exchange_types: RwLock::new(None),
            connections: Arc::new(AtomicU32::new(0)),
            admission: Admission::default(),
            published: std::sync::atomic::AtomicU64::new(0),
        };
        {
            let mut topology = vhost.topology.write();
            for (name, kind) in PREDECLARED {
                let ty = vhost
                    .registry
                    .get(kind)
                    .expect("built-in exchange types are registered");
                let spec = ExchangeSpec {
                    name: Name::from(*name),
                    kind: Name::from(*kind),
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                };
                let router = ty
                    .create(name, &spec.arguments)
                    .expect("built-in types accept empty arguments");
                topology
                    .exchanges
                    .insert(spec.name.clone(), Arc::new(Exchange::new(spec, router)));
            }
        }
        vhost
    }

    /// The limits in force.
    pub fn limits(&self) -> VhostLimits {
        *self.limits.read()
    }

    /// Changes the limits; what exists beyond a lowered limit stays, new objects are refused.
    pub fn set_limits(&self, limits: VhostLimits) {
        *self.limits.write() = limits;
        self.admission
            .set(limits.max_publish_rate, limits.max_queued_bytes);
        self.sample_queued_bytes();
    }

    /// Sets the broker's plugin types this vhost may declare (None: all); exchanges that
    /// exist keep working whatever their type.
    pub fn set_exchange_types(&self, types: Option<Vec<String>>) {
        *self.exchange_types.write() = types.map(Into::into);
    }

    /// Whether exchanges of type `kind` (which exists) may be declared here.
    fn type_allowed(&self, kind: &str) -> bool {
        if crate::exchange::builtin::NAMES.contains(&kind) || !self.registry.has_below(kind) {
            return true;
        }
        match &*self.exchange_types.read() {
            Some(allowed) => allowed.iter().any(|t| t == kind),
            None => true,
        }
    }

    /// Counts `n` basic.publish methods received (a connection's read turn).
    pub fn count_published(&self, n: u32) {
        self.published
            .fetch_add(u64::from(n), std::sync::atomic::Ordering::Relaxed);
    }

    /// Its message counts since it opened: basic.publish methods received, and its queues'
    /// deliveries and acks (deleted queues' included).
    pub fn message_stats(&self) -> crate::stats::MessageStats {
        let mut total = self.read_topology().retired;
        for q in self.queues() {
            total.add(&q.message_stats());
        }
        total.publish = self.published_total();
        total
    }

    /// basic.publish methods received since the vhost opened.
    pub fn published_total(&self) -> u64 {
        self.published.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What its publishers are admitted at: the publish rate and the queued-bytes ceiling.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Sums the ready body bytes of the vhost's queues against `max-queued-bytes`, when it
    /// has one (the broker calls it every `admission::SAMPLE_INTERVAL`).
    pub fn sample_queued_bytes(&self) {
        let Some(max) = self.admission.queued_bytes_max() else {
            return;
        };
        let queues: Vec<Arc<Queue>> = self.read_topology().queues.values().cloned().collect();
        let bytes: u64 = queues.iter().map(|q| q.message_bytes() as u64).sum();
        self.admission.record(bytes, bytes >= max);
    }

    /// Takes a connection slot for `user` (connection.open), or refuses it with 530.
    pub fn open_connection(&self, user: &str) -> Result<Slot, AmqpError> {
        let limits = self.limits();
        Slot::take(&self.connections, limits.max_connections)
            .ok_or_else(|| limits.connections_refused(&self.name, user))
    }

    fn not_found_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn not_found_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    /// Every queue, in name order (for operators: a copy taken under the read lock).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<Arc<Queue>> = self.read_topology().queues.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Every exchange, pre-declared ones included, in name order.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut all: Vec<Arc<Exchange>> =
            self.read_topology().exchanges.values().cloned().collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }

    /// Looks up an exchange.
    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        self.read_topology()
            .exchanges
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found_exchange(name))
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.read_topology()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found_queue(name))
    }

    /// What this vhost's queues hold in memory for their ready messages (the estimate of
    /// [`Queue::memory_bytes`], summed). The queues are listed under the topology lock and
    /// asked after it is released.
    pub fn queued_memory_bytes(&self) -> usize {
        let queues: Vec<Arc<Queue>> = self.read_topology().queues.values().cloned().collect();
        queues.iter().map(|q| q.memory_bytes()).sum()
    }

    /// Looks up a queue and checks that `connection` may use it (exclusive queues).
    pub fn queue_for(&self, name: &str, connection: ConnectionId) -> Result<Arc<Queue>, AmqpError> {
        let queue = self.queue(name)?;
        check_exclusive(&queue, connection, &self.name)?;
        Ok(queue)
    }

    /// exchange.declare (non-passive): creates the exchange or checks the existing one is
    /// equivalent.
    ///
    /// The router (for a WASM type: an instance, and its `init`) is built before any lock is
    /// taken; the change lock then re-checks the name, logs a durable exchange (fsync), and the
    /// topology write lock is held only to insert it. A declare that loses a race to another
    /// declare of the same name drops what it built and compares with the winner.
    pub fn declare_exchange(&self, spec: ExchangeSpec) -> Result<(), AmqpError> {
        self.declare_exchange_as(spec, false)
    }

    /// [`declare_exchange`](Self::declare_exchange), or, when `restoring` a durable exchange
    /// that is already in the definitions log (its type loaded after the vhost opened), the
    /// same without the allow list, the exchange limit and the log append: as at start-up.
    pub(crate) fn declare_exchange_as(
        &self,
        spec: ExchangeSpec,
        restoring: bool,
    ) -> Result<(), AmqpError> {
        // RabbitMQ (rabbit_exchange:check_type, 3.13+) checks the type before anything else;
        // an unknown type is a soft error there: 406 closes only the channel.
        let ty = self.exchange_type(&spec.kind, &spec.arguments)?;
        // An existing exchange, pre-declared `amq.*` ones included, is only compared: RabbitMQ
        // looks the name up first and refuses the reserved prefix only when creating.
        if let Some(existing) = self.read_topology().exchanges.get(&spec.name) {
            return existing.check_equivalent(&spec, &self.name);
        }
        // Refused with an unknown type's code, when creating only: an exchange that exists
        // keeps working (and redeclaring it too) after its type left the list.
        let routing_kind = match spec.kind.as_ref() {
            delayed::TYPE_NAME => delayed::underlying(&self.registry, &spec.arguments)?.0,
            _ => spec.kind.clone(),
        };
        if !restoring && !self.type_allowed(&routing_kind) {
            return Err(AmqpError::precondition_failed(format!(
                "exchange type '{routing_kind}' is not allowed in vhost '{}'",
                self.name
            )));
        }
        if spec.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        if !restoring {
            self.check_exchange_limit(&spec)?;
        }
        if let Some(ae) = spec.arguments.inner().get("alternate-exchange")
            && !matches!(ae, AMQPValue::LongString(_) | AMQPValue::ShortString(_))
        {
            return Err(AmqpError::precondition_failed(
                "invalid arg 'alternate-exchange': expected a string",
            ));
        }
        let invalid = |e: crate::exchange::Invalid| {
            AmqpError::precondition_failed(format!("invalid arguments: {e}"))
        };
        let slow = ty.creates_slowly();
        let router = blocking(slow, || {
            ty.validate(&spec.arguments)?;
            self.create_router(&*ty, &spec)
        })
        .map_err(invalid)?;
        let delayed = self.delayed_state(&spec, &*router);
        let exchange = Arc::new(Exchange::with_delayed(spec, router, delayed));
        let spec = &exchange.spec;
        let _changes = self.lock_changes();
        if let Some(existing) = self.read_topology().exchanges.get(&spec.name) {
            // Lost a race: the winner's exchange stands; ours (and its instance) is dropped.
            return existing.check_equivalent(spec, &self.name);
        }
        if !restoring {
            self.check_exchange_limit(spec)?;
        }
        if spec.durable && !restoring {
            self.log(&exchange_definition(spec))?;
        }
        if let Some(replaced) = self
            .topology
            .write()
            .exchanges
            .insert(spec.name.clone(), exchange.clone())
        {
            replaced.mark_removed();
        }
        if let Some(delayed) = exchange.delayed() {
            delayed.start(self.me.clone());
        }
        Ok(())
    }

    fn check_exchange_limit(&self, spec: &ExchangeSpec) -> Result<(), AmqpError> {
        let declared = self.read_topology().exchanges.len();
        self.limits().check_exchanges(
            &self.name,
            &spec.name,
            declared.saturating_sub(PREDECLARED.len()),
        )
    }

    /// exchange.delete.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange '{name}' in vhost '{}' is reserved and cannot be deleted",
                self.name
            )));
        }
        let _changes = self.lock_changes();
        let mut topology = self.write_topology();
        let Some(exchange) = topology.exchanges.get(name).cloned() else {
            // RabbitMQ 3.x answers delete-ok for a missing exchange.
            return Ok(());
        };
        if if_unused && (exchange.has_bindings() || topology.is_destination(name)) {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        topology.remove_exchange(name);
        let dropped = self.finish(topology);
        self.log_dropped(dropped)
    }

    /// Releases the topology write lock after a change, then tells the routers about the
    /// bindings the change detached (plugin calls, outside the write lock). Returns the durable
    /// exchanges the change removed, to be logged (the caller still holds the change lock, so
    /// the log keeps the order in which changes were applied).
    fn finish(&self, mut topology: RwLockWriteGuard<'_, Topology>) -> Vec<Name> {
        let detached = std::mem::take(&mut topology.detached);
        let dropped = std::mem::take(&mut topology.dropped);
        drop(topology);
        self.discard_delayed(&detached);
        for (exchange, bindings) in detached {
            blocking(self.slow_router(&exchange), || exchange.forget(&bindings));
        }
        dropped
    }

    /// Takes the change lock. Waiting for it can take as long as another change's slow work
    /// (an fsync, a plugin's binding call), so a contended wait lets the scheduler move this
    /// worker's other tasks elsewhere, as the slow work itself does.
    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        match self.changes.try_lock() {
            Some(guard) => guard,
            None => blocking(true, || self.changes.lock()),
        }
    }

    /// Takes the topology write lock. Routing holds the read lock across router calls, and a
    /// tenant's plugin call may last its deadline (hundreds of ms if raised): a contended wait
    /// lets the scheduler move this worker's other tasks elsewhere (other vhosts' connections
    /// must not wait for this vhost's slow plugin).
    fn write_topology(&self) -> RwLockWriteGuard<'_, Topology> {
        match self.topology.try_write() {
            Some(guard) => guard,
            None => blocking(true, || self.topology.write()),
        }
    }

    /// Takes the topology read lock, without blocking a tokio worker when a writer holds or
    /// waits for it (behind a reader in a tenant's slow plugin call): see
    /// [`VHost::write_topology`].
    fn read_topology(&self) -> RwLockReadGuard<'_, Topology> {
        match self.topology.try_read() {
            Some(guard) => guard,
            None => blocking(true, || self.topology.read()),
        }
    }

    /// Whether `exchange`'s router calls a plugin (calls of up to the setup deadline).
    fn slow_router(&self, exchange: &Exchange) -> bool {
        self.registry
            .get(&exchange.spec.kind)
            .is_some_and(|ty| ty.creates_slowly())
    }

    /// queue.declare (non-passive) for `owner`.
    ///
    /// Redeclaring an existing queue takes the read lock only. Creating one takes the change
    /// lock (declares of one vhost are applied one at a time), opens a durable queue's store
    /// and syncs its definitions record, and holds the topology write lock only to insert it.
    pub fn declare_queue(&self, spec: QueueSpec) -> Result<DeclaredQueue, AmqpError> {
        if let Some(existing) = self.existing_queue(&spec)? {
            return Ok(existing);
        }
        delayed::check_queue_name(&spec.name)?;
        let _changes = self.lock_changes();
        if let Some(existing) = self.existing_queue(&spec)? {
            return Ok(existing);
        }
        let declared = self.read_topology().queues.len();
        self.limits()
            .check_queues(&self.name, &spec.name, declared)?;
        // rabbit_channel checks the dead-letter exchange's type before the other arguments.
        if let Some(dlx) = spec.arguments.inner().get("x-dead-letter-exchange")
            && !matches!(dlx, AMQPValue::LongString(_) | AMQPValue::ShortString(_))
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{}' in vhost '{}'",
                crate::queue::type_name(dlx),
                spec.name,
                self.name
            )));
        }
        let name = spec.name.clone();
        let invalid = |e: crate::queue::ArgError| {
            AmqpError::precondition_failed(format!(
                "invalid arg '{}' for queue '{name}' in vhost '{}': {}",
                e.key, self.name, e.detail
            ))
        };
        QueueArgs::parse(&spec.arguments).map_err(invalid)?;
        let durable = match &self.durable {
            Some(durable) if queue_is_durable(&spec) => Some(durable),
            _ => None,
        };
        // The store (its directory) first, then the record: a crash in between leaves an
        // orphaned directory, which the restore removes; never a logged queue without one.
        let store = match durable {
            Some(durable) => Some(blocking(true, || durable.open_queue(&name))?),
            None => None,
        };
        let definition = durable.map(|_| queue_definition(&spec));
        let paging = self.durable.as_ref().map(|d| d.paging.clone());
        let window = self.limits().queue_in_memory_messages as usize;
        let queue = Queue::try_new_windowed(spec, store, paging, window).map_err(invalid)?;
        if let Some(definition) = definition
            && let Err(error) = self.log(&definition)
        {
            // Told it failed: take back the directory just created.
            queue.delete();
            return Err(error);
        }
        let host: Weak<dyn QueueHost> = self.me.clone();
        queue.attach(host);
        self.write_topology().insert_queue(queue.clone());
        Ok(DeclaredQueue {
            queue,
            created: true,
        })
    }

    /// The queue `spec` names if it exists and is equivalent (renewing its lease), an error if
    /// it exists and is not, None if it does not exist.
    fn existing_queue(&self, spec: &QueueSpec) -> Result<Option<DeclaredQueue>, AmqpError> {
        let Some(existing) = self.read_topology().queues.get(&spec.name).cloned() else {
            return Ok(None);
        };
        check_exclusive(&existing, spec.exclusive_owner.unwrap_or(0), &self.name)?;
        if existing.spec.exclusive_owner.is_some() != spec.exclusive_owner.is_some() {
            // RabbitMQ checks exclusivity before the other flags: 405, not 406.
            return Err(locked(&existing, &self.name));
        }
        let same =
            existing.spec.durable == spec.durable && existing.spec.auto_delete == spec.auto_delete;
        if !same {
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg 'durable', 'exclusive' or 'auto_delete' for queue '{}' in vhost '{}'",
                spec.name, self.name
            )));
        }
        if let Some((arg, received, current)) =
            inequivalent_argument(&existing.spec.arguments, &spec.arguments)
        {
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received {received} \
                 but current is {current}",
                spec.name, self.name
            )));
        }
        // Redeclaring renews an x-expires lease.
        existing.touch();
        Ok(Some(DeclaredQueue {
            queue: existing,
            created: false,
        }))
    }

    /// queue.delete. Returns the number of messages deleted.
    pub fn delete_queue(
        &self,
        name: &str,
        connection: ConnectionId,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, AmqpError> {
        let _changes = self.lock_changes();
        let Some(queue) = self.read_topology().queues.get(name).cloned() else {
            // RabbitMQ 3.x answers delete-ok with 0 for a missing queue.
            return Ok(0);
        };
        check_exclusive(&queue, connection, &self.name)?;
        if if_unused && queue.consumer_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && queue.message_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        let mut topology = self.write_topology();
        topology.remove_queue(name);
        let dropped = self.finish(topology);
        let logged = self.log_queue_removed(&queue, dropped);
        // Still under the change lock: the store is gone before the name can be declared again.
        let count = queue.delete();
        logged.map(|()| count)
    }

    /// Logs the deletion of `queue` (if durable) and of the exchanges it auto-deleted.
    fn log_queue_removed(&self, queue: &Queue, dropped: Vec<Name>) -> Result<(), AmqpError> {
        if queue_is_durable(&queue.spec) {
            self.log(&Definition::DeleteQueue {
                name: queue.name().to_string(),
            })?;
        }
        self.log_dropped(dropped)
    }

    /// Deletes a queue without checks (auto-delete, exclusive owner gone).
    pub fn remove_queue(&self, queue: &Arc<Queue>) {
        let _changes = self.lock_changes();
        let mut topology = self.write_topology();
        let removed = match topology.queues.get(queue.name()) {
            Some(q) if Arc::ptr_eq(q, queue) => topology.remove_queue(queue.name()).is_some(),
            _ => false,
        };
        let dropped = self.finish(topology);
        if !removed {
            return;
        }
        if let Err(error) = self.log_queue_removed(queue, dropped) {
            tracing::error!(vhost = %self.name, queue = %queue.name(), %error, "queue deletion not logged");
        }
        queue.delete();
    }

    /// Deletes every exclusive queue owned by a closing connection (indexed by owner: no scan
    /// of the vhost's queues).
    pub fn remove_exclusive_queues(&self, connection: ConnectionId) {
        let owned = self.read_topology().exclusive_of(connection);
        for queue in owned {
            self.remove_queue(&queue);
        }
    }
}

impl QueueHost for VHost {
    fn dead_letter(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        message: Arc<Message>,
        reason: DeathReason,
    ) -> bool {
        // A dead-letter exchange that does not exist drops the message (RabbitMQ).
        let Ok(exchange) = self.exchange(exchange) else {
            return true;
        };
        let mut routed = Routed::default();
        let properties = message.properties();
        self.route(&exchange, &message, &properties, routing_keys, &mut routed);
        let deaths = crate::queue::deaths(&properties);
        let mut accepted = true;
        for queue in routed.queues.drain(..) {
            if reason != DeathReason::Rejected && crate::queue::is_cycle(queue.name(), deaths) {
                debug!(vhost = %self.name, queue = %queue.name(), "dead-letter cycle: message dropped");
                continue;
            }
            if matches!(
                queue.publish(message.clone()),
                crate::queue::Enqueued::Rejected
            ) {
                accepted = false;
            }
        }
        for reply in routed.replies.drain(..) {
            reply.deliver_reply(&message);
        }
        accepted
    }

    fn queue_expired(&self, queue: &Arc<Queue>) {
        debug!(vhost = %self.name, queue = %queue.name(), "queue expired (x-expires)");
        self.remove_queue(queue);
    }
}

/// 405 RESOURCE_LOCKED when an exclusive queue belongs to another connection.
fn check_exclusive(queue: &Queue, connection: ConnectionId, vhost: &str) -> Result<(), AmqpError> {
    match queue.spec.exclusive_owner {
        Some(owner) if owner != connection => Err(locked(queue, vhost)),
        _ => Ok(()),
    }
}

fn locked(queue: &Queue, vhost: &str) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{}' in vhost '{vhost}'. It could be \
         originally declared on another connection or the exclusive property value does not \
         match that of the original declaration.",
        queue.name()
    ))
}
