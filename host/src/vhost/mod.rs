//! A virtual host: the exchanges, queues and bindings of one tenant, and message routing.
//!
//! Topology changes arrive as typed commands from the channel layer (never frames); each is
//! validated and applied under the topology write lock. Publishing takes the read lock only.

mod durable;
mod exchange;
mod reply_to;
mod route;

pub use exchange::{Exchange, ExchangeSpec};
pub use reply_to::{REPLY_TO_PREFIX, REPLY_TO_QUEUE, ReplyConsumer};
pub use route::Routed;

use foldhash::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;
use tracing::debug;

use crate::exchange::{Binding, Destination, Name, Registry};
use crate::limits::{Slot, VhostLimits};
use crate::message::Message;
use crate::protocol::AmqpError;
use crate::queue::{ConnectionId, DeathReason, Queue, QueueArgs, QueueHost, QueueSpec};
use crate::store::{Definition, StoreError, StoreOptions};
use durable::{
    Durable, binding_definition, exchange_definition, queue_definition, queue_is_durable,
};
use reply_to::ReplyRegistry;

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
    topology: RwLock<Topology>,
    /// Direct reply-to consumers.
    replies: ReplyRegistry,
    /// This vhost, for its queues (dead-lettering, `x-expires`).
    me: Weak<VHost>,
    /// The definitions log and message store; None for a vhost kept in memory only.
    durable: Option<Durable>,
    /// What clients may create here (docs/limits.md); changeable at run time.
    limits: RwLock<VhostLimits>,
    /// Connections open to this vhost, against `limits.max_connections`.
    connections: Arc<AtomicU32>,
}

#[derive(Default)]
struct Topology {
    exchanges: HashMap<Name, Arc<Exchange>>,
    queues: HashMap<Name, Arc<Queue>>,
    /// Bindings of all exchanges together, against `VhostLimits::max_bindings`.
    bindings: usize,
    /// Durable exchanges removed by the last change, to be logged as deleted.
    dropped: Vec<Name>,
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
            replies: ReplyRegistry::default(),
            me,
            durable,
            limits: RwLock::new(VhostLimits::default()),
            connections: Arc::new(AtomicU32::new(0)),
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

    /// Looks up an exchange.
    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        self.topology
            .read()
            .exchanges
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found_exchange(name))
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.topology
            .read()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found_queue(name))
    }

    /// What this vhost's queues hold in memory for their ready messages (the estimate of
    /// [`Queue::memory_bytes`], summed). The queues are listed under the topology lock and
    /// asked after it is released.
    pub fn queued_memory_bytes(&self) -> usize {
        let queues: Vec<Arc<Queue>> = self.topology.read().queues.values().cloned().collect();
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
    pub fn declare_exchange(&self, spec: ExchangeSpec) -> Result<(), AmqpError> {
        // RabbitMQ (rabbit_exchange:check_type, 3.13+) checks the type before anything else;
        // an unknown type is a soft error there: 406 closes only the channel.
        let ty = self.registry.get(&spec.kind).ok_or_else(|| {
            AmqpError::precondition_failed(format!("unknown exchange type '{}'", spec.kind))
        })?;
        let mut topology = self.topology.write();
        // An existing exchange, pre-declared `amq.*` ones included, is only compared: RabbitMQ
        // looks the name up first and refuses the reserved prefix only when creating.
        if let Some(existing) = topology.exchanges.get(&spec.name) {
            return existing.check_equivalent(&spec, &self.name);
        }
        if spec.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        self.limits().check_exchanges(
            &self.name,
            &spec.name,
            topology.exchanges.len().saturating_sub(PREDECLARED.len()),
        )?;
        if let Some(ae) = spec.arguments.inner().get("alternate-exchange")
            && !matches!(ae, AMQPValue::LongString(_) | AMQPValue::ShortString(_))
        {
            return Err(AmqpError::precondition_failed(
                "invalid arg 'alternate-exchange': expected a string",
            ));
        }
        ty.validate(&spec.arguments)
            .map_err(|e| AmqpError::precondition_failed(format!("invalid arguments: {e}")))?;
        let router = ty
            .create_in(&self.name, &spec.name, &spec.arguments)
            .map_err(|e| AmqpError::precondition_failed(format!("invalid arguments: {e}")))?;
        if spec.durable {
            self.log(&exchange_definition(&spec))?;
        }
        topology
            .exchanges
            .insert(spec.name.clone(), Arc::new(Exchange::new(spec, router)));
        Ok(())
    }

    /// exchange.delete.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange '{name}' in vhost '{}' is reserved and cannot be deleted",
                self.name
            )));
        }
        let mut topology = self.topology.write();
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
        self.log_dropped(&mut topology)
    }

    /// queue.declare (non-passive) for `owner`.
    pub fn declare_queue(&self, spec: QueueSpec) -> Result<DeclaredQueue, AmqpError> {
        let mut topology = self.topology.write();
        if let Some(existing) = topology.queues.get(&spec.name) {
            check_exclusive(existing, spec.exclusive_owner.unwrap_or(0), &self.name)?;
            if existing.spec.exclusive_owner.is_some() != spec.exclusive_owner.is_some() {
                // RabbitMQ checks exclusivity before the other flags: 405, not 406.
                return Err(locked(existing, &self.name));
            }
            let same = existing.spec.durable == spec.durable
                && existing.spec.auto_delete == spec.auto_delete;
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
            return Ok(DeclaredQueue {
                queue: existing.clone(),
                created: false,
            });
        }
        self.limits()
            .check_queues(&self.name, &spec.name, topology.queues.len())?;
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
        let store = match &self.durable {
            Some(durable) if queue_is_durable(&spec) => {
                durable.log(&queue_definition(&spec))?;
                Some(durable.open_queue(&name)?)
            }
            _ => None,
        };
        let paging = self.durable.as_ref().map(|d| d.paging.clone());
        let queue = Queue::try_new_paged(spec, store, paging).map_err(invalid)?;
        let host: Weak<dyn QueueHost> = self.me.clone();
        queue.attach(host);
        topology.queues.insert(queue.name().clone(), queue.clone());
        Ok(DeclaredQueue {
            queue,
            created: true,
        })
    }

    /// queue.delete. Returns the number of messages deleted.
    pub fn delete_queue(
        &self,
        name: &str,
        connection: ConnectionId,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, AmqpError> {
        let queue = {
            let mut topology = self.topology.write();
            let Some(queue) = topology.queues.get(name).cloned() else {
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
            topology.remove_queue(name);
            self.log_queue_removed(&mut topology, &queue)?;
            queue
        };
        Ok(queue.delete())
    }

    /// Logs the deletion of `queue` (if durable) and of the exchanges it auto-deleted.
    fn log_queue_removed(&self, topology: &mut Topology, queue: &Queue) -> Result<(), AmqpError> {
        if queue_is_durable(&queue.spec) {
            self.log(&Definition::DeleteQueue {
                name: queue.name().to_string(),
            })?;
        }
        self.log_dropped(topology)
    }

    /// Deletes a queue without checks (auto-delete, exclusive owner gone).
    pub fn remove_queue(&self, queue: &Arc<Queue>) {
        let removed = {
            let mut topology = self.topology.write();
            let removed = match topology.queues.get(queue.name()) {
                Some(q) if Arc::ptr_eq(q, queue) => topology.remove_queue(queue.name()),
                _ => false,
            };
            if removed && let Err(error) = self.log_queue_removed(&mut topology, queue) {
                tracing::error!(vhost = %self.name, queue = %queue.name(), %error, "queue deletion not logged");
            }
            removed
        };
        if removed {
            queue.delete();
        }
    }

    /// Deletes every exclusive queue owned by a closing connection.
    pub fn remove_exclusive_queues(&self, connection: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .topology
            .read()
            .queues
            .values()
            .filter(|q| q.spec.exclusive_owner == Some(connection))
            .cloned()
            .collect();
        for queue in owned {
            self.remove_queue(&queue);
        }
    }

    /// queue.bind / exchange.bind.
    pub fn bind(&self, source: &str, binding: Binding) -> Result<(), AmqpError> {
        let mut topology = self.topology.write();
        let exchange = self.bindable_source(&topology, source)?;
        topology.check_destination(&binding.destination, &self.name)?;
        if exchange.has_binding(&binding) {
            return Ok(());
        }
        self.limits()
            .check_bindings(&self.name, source, topology.bindings)?;
        let logged = (self.durable.is_some()
            && topology.binding_is_durable(&exchange, &binding.destination))
        .then(|| binding_definition(source, &binding));
        let undo = logged.as_ref().map(|_| binding.clone());
        if !exchange.bind(binding)? {
            return Ok(());
        }
        topology.bindings += 1;
        if let (Some(definition), Some(undo)) = (logged, undo)
            && let Err(error) = self.log(&Definition::Bind(definition))
        {
            exchange.unbind(&undo);
            topology.bindings -= 1;
            return Err(error);
        }
        Ok(())
    }

    /// queue.unbind / exchange.unbind. Unbinding is idempotent as in current RabbitMQ: when
    /// the source, the destination or the binding no longer exists the answer is unbind-ok.
    /// Only the default exchange is refused (403), as for bind.
    pub fn unbind(&self, source: &str, binding: &Binding) -> Result<(), AmqpError> {
        let mut topology = self.topology.write();
        let exchange = match self.bindable_source(&topology, source) {
            Ok(exchange) => exchange,
            Err(e) if e.code == crate::protocol::ReplyCode::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if topology
            .check_destination(&binding.destination, &self.name)
            .is_err()
        {
            return Ok(());
        }
        let durable = topology.binding_is_durable(&exchange, &binding.destination);
        if exchange.unbind(binding) {
            topology.bindings -= 1;
            if durable {
                self.log(&Definition::Unbind(binding_definition(source, binding)))?;
            }
            if exchange.spec.auto_delete && !exchange.has_bindings() {
                topology.remove_exchange(&exchange.spec.name);
            }
        }
        self.log_dropped(&mut topology)
    }

    fn bindable_source(
        &self,
        topology: &Topology,
        source: &str,
    ) -> Result<Arc<Exchange>, AmqpError> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on the default exchange in vhost '{}'",
                self.name
            )));
        }
        topology
            .exchanges
            .get(source)
            .cloned()
            .ok_or_else(|| self.not_found_exchange(source))
    }
}

impl VHost {
    /// Registers a direct reply-to consumer; returns the reply-to name that leads to it.
    pub fn register_reply_consumer(
        &self,
        consumer: Weak<dyn ReplyConsumer>,
    ) -> Result<Name, AmqpError> {
        // Two 22-character CSPRNG suffixes (264 bits): the name is the only thing that lets a
        // client aim replies at a channel, so it must not be guessable from other names. A
        // collision is astronomically unlikely; it is still refused rather than overwriting.
        loop {
            let suffix = format!(
                "{}.{}",
                crate::names::random_suffix()?,
                crate::names::random_suffix()?
            );
            if self.replies.register(&suffix, consumer.clone()) {
                return Ok(Name::from(format!("{REPLY_TO_PREFIX}{suffix}")));
            }
        }
    }

    /// Forgets a reply consumer (cancelled, or its channel closed).
    pub fn unregister_reply_consumer(&self, name: &str) {
        if let Some(suffix) = name.strip_prefix(REPLY_TO_PREFIX) {
            self.replies.unregister(suffix);
        }
    }

    /// Whether `name` is `amq.rabbitmq.reply-to` or the reply-to name of a live consumer
    /// (queue.declare of such a name succeeds with 0 messages and 1 consumer).
    pub fn reply_queue_exists(&self, name: &str) -> bool {
        name == REPLY_TO_QUEUE || self.replies.lookup(name).is_some()
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

/// The first `x-` argument whose value differs between two declarations, with both values
/// described as RabbitMQ does ("the value '10' of type 'signedint'", or "none"). Like
/// `rabbit_misc:assert_args_equivalence`, integers of different AMQP types are equal when their
/// values are, and a missing `x-queue-type` equals 'classic'. Every `x-` argument a queue can
/// hold is one bourse understands (unknown ones are refused at declare).
fn inequivalent_argument(
    current: &FieldTable,
    received: &FieldTable,
) -> Option<(String, String, String)> {
    let keys = current.inner().keys().chain(received.inner().keys());
    for key in keys.filter(|k| k.as_str().starts_with("x-")) {
        let (was, now) = (current.inner().get(key), received.inner().get(key));
        if !equivalent(key.as_str(), was, now) {
            return Some((key.to_string(), describe(now), describe(was)));
        }
    }
    None
}

fn equivalent(key: &str, a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    let classic = |v: Option<&AMQPValue>| {
        v.and_then(crate::queue::string_value)
            .is_some_and(|s| s == "classic")
    };
    match (a, b) {
        (Some(a), Some(b)) => match (integer(a), integer(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        (None, None) => true,
        (None, other) | (other, None) => key == "x-queue-type" && classic(other),
    }
}

fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        _ => return None,
    })
}

/// RabbitMQ's description of an argument value in equivalence errors.
fn describe(value: Option<&AMQPValue>) -> String {
    let Some(value) = value else {
        return "none".into();
    };
    let shown = match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(d) => d.to_string(),
        other => match (integer(other), crate::queue::string_value(other)) {
            (Some(n), _) => n.to_string(),
            (None, Some(s)) => s.to_owned(),
            (None, None) => format!("{other:?}"),
        },
    };
    format!(
        "the value '{shown}' of type '{}'",
        crate::queue::type_name(value)
    )
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

impl Topology {
    fn check_destination(&self, destination: &Destination, vhost: &str) -> Result<(), AmqpError> {
        match destination {
            Destination::Queue(name) if !self.queues.contains_key(name) => Err(
                AmqpError::not_found(format!("no queue '{name}' in vhost '{vhost}'")),
            ),
            Destination::Exchange(name) if !self.exchanges.contains_key(name) => Err(
                AmqpError::not_found(format!("no exchange '{name}' in vhost '{vhost}'")),
            ),
            _ => Ok(()),
        }
    }

    /// Whether any exchange binds to exchange `name`.
    fn is_destination(&self, name: &str) -> bool {
        let target = Destination::Exchange(Name::from(name));
        self.exchanges.values().any(|x| x.binds_to(&target))
    }

    fn remove_exchange(&mut self, name: &str) {
        if let Some(exchange) = self.exchanges.remove(name) {
            self.bindings -= exchange.binding_count();
            if exchange.spec.durable {
                self.dropped.push(exchange.spec.name.clone());
            }
            self.drop_bindings_to(&Destination::Exchange(Name::from(name)));
        }
    }

    fn remove_queue(&mut self, name: &str) -> bool {
        if self.queues.remove(name).is_some() {
            self.drop_bindings_to(&Destination::Queue(Name::from(name)));
            true
        } else {
            false
        }
    }

    /// Removes every binding to `destination`, then auto-deletes exchanges left without
    /// bindings (which may cascade).
    fn drop_bindings_to(&mut self, destination: &Destination) {
        let mut emptied = Vec::new();
        for exchange in self.exchanges.values() {
            let removed = exchange.unbind_destination(destination);
            self.bindings -= removed;
            if removed > 0 && exchange.spec.auto_delete && !exchange.has_bindings() {
                emptied.push(exchange.spec.name.clone());
            }
        }
        for name in emptied {
            self.remove_exchange(&name);
        }
    }
}
