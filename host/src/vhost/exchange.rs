//! A declared exchange: its declaration, its bindings (owned here, indexed) and its router.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use amq_protocol::types::{AMQPValue, FieldTable};
use foldhash::HashMap;
use parking_lot::{Mutex, RwLock};

use crate::exchange::{Binding, Destination, Name, Router};
use crate::protocol::AmqpError;

/// What exchange.declare said.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    /// Exchange name.
    pub name: Name,
    /// Exchange type name (`direct`, `x-regex`, ...).
    pub kind: Name,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A declared exchange.
pub struct Exchange {
    /// The declaration.
    pub spec: ExchangeSpec,
    /// `alternate-exchange` argument: where unroutable messages go.
    pub alternate: Option<Name>,
    /// The host's copy of the bindings; the router's index can be rebuilt from it.
    bindings: Mutex<BindingIndex>,
    router: RwLock<Box<dyn Router>>,
    /// Messages published into it (RabbitMQ's `publish_in`), added a read turn at a time by
    /// each connection's [`ExchangeTally`].
    publish_in: AtomicU64,
    /// Of those, messages it routed somewhere (`publish_out`).
    publish_out: AtomicU64,
    /// The messages waiting in an `x-delayed-message` exchange (its router is the underlying
    /// type's), or those a 0.2 plugin's exchange delayed (`DelayedExchange::decided`).
    delayed: Option<Arc<super::delayed::DelayedExchange>>,
    /// Set when it leaves the topology (deleted, auto-deleted, or replaced): a channel that
    /// kept it to publish to again looks the name up anew.
    removed: AtomicBool,
}

/// A connection's count of what it published into one exchange during a read turn: the
/// exchange's shared counters are added to once per turn (or when the publisher moves to
/// another exchange), not once per message.
#[derive(Default)]
pub struct ExchangeTally {
    exchange: Option<Arc<Exchange>>,
    publish_in: u64,
    publish_out: u64,
}

impl ExchangeTally {
    /// Counts one message published into `exchange`; `routed` when it reached a queue.
    pub fn count(&mut self, exchange: &Arc<Exchange>, routed: bool) {
        if !self
            .exchange
            .as_ref()
            .is_some_and(|x| Arc::ptr_eq(x, exchange))
        {
            self.flush();
            self.exchange = Some(exchange.clone());
        }
        self.publish_in += 1;
        self.publish_out += u64::from(routed);
    }

    /// Adds the counts to the exchange.
    pub fn flush(&mut self) {
        if let Some(x) = self.exchange.take() {
            x.publish_in.fetch_add(self.publish_in, Ordering::Relaxed);
            x.publish_out.fetch_add(self.publish_out, Ordering::Relaxed);
        }
        self.publish_in = 0;
        self.publish_out = 0;
    }
}

impl Drop for ExchangeTally {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Exchange {
    /// Wraps a freshly created router.
    pub fn new(spec: ExchangeSpec, router: Box<dyn Router>) -> Self {
        let alternate = match spec.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => {
                Some(Name::from(String::from_utf8_lossy(s.as_bytes())))
            }
            Some(AMQPValue::ShortString(s)) => Some(Name::from(s.as_str())),
            _ => None,
        };
        Self {
            spec,
            alternate,
            bindings: Mutex::new(BindingIndex::default()),
            router: RwLock::new(router),
            publish_in: AtomicU64::new(0),
            publish_out: AtomicU64::new(0),
            delayed: None,
            removed: AtomicBool::new(false),
        }
    }

    /// Whether it has left the topology: a name looked up before may now be another exchange,
    /// or none.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Marks it removed (under the topology's write lock, as it leaves the map).
    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// An `x-delayed-message` exchange routing with `router` (its underlying type's).
    pub(crate) fn with_delayed(
        spec: ExchangeSpec,
        router: Box<dyn Router>,
        delayed: Option<Arc<super::delayed::DelayedExchange>>,
    ) -> Self {
        Self {
            delayed,
            ..Self::new(spec, router)
        }
    }

    /// The delayed messages of an `x-delayed-message` exchange, or of an exchange whose
    /// plugin decides delays.
    pub fn delayed(&self) -> Option<&Arc<super::delayed::DelayedExchange>> {
        self.delayed.as_ref()
    }

    /// Messages published into it and, of those, routed on (`publish_in`, `publish_out`).
    pub fn publish_counts(&self) -> (u64, u64) {
        (
            self.publish_in.load(Ordering::Relaxed),
            self.publish_out.load(Ordering::Relaxed),
        )
    }

    /// The router, for routing.
    pub fn router(&self) -> parking_lot::RwLockReadGuard<'_, Box<dyn Router>> {
        self.router.read()
    }

    /// Checks that a redeclaration matches (406 otherwise, with RabbitMQ's wording).
    pub fn check_equivalent(&self, other: &ExchangeSpec, vhost: &str) -> Result<(), AmqpError> {
        let mismatch = |arg: &str,
                        received: &dyn std::fmt::Display,
                        current: &dyn std::fmt::Display| {
            Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{arg}' for exchange '{}' in vhost '{vhost}': received '{received}' but current is '{current}'",
                self.spec.name
            )))
        };
        if self.spec.kind != other.kind {
            return mismatch("type", &other.kind, &self.spec.kind);
        }
        if self.spec.durable != other.durable {
            return mismatch("durable", &other.durable, &self.spec.durable);
        }
        if self.spec.auto_delete != other.auto_delete {
            return mismatch("auto_delete", &other.auto_delete, &self.spec.auto_delete);
        }
        if self.spec.internal != other.internal {
            return mismatch("internal", &other.internal, &self.spec.internal);
        }
        if *self.spec.kind == *super::delayed::TYPE_NAME
            && self
                .spec
                .arguments
                .inner()
                .get(super::delayed::TYPE_ARGUMENT)
                != other.arguments.inner().get(super::delayed::TYPE_ARGUMENT)
        {
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg 'x-delayed-type' for exchange '{}' in vhost '{vhost}'",
                self.spec.name
            )));
        }
        if self.spec.arguments.inner().get("alternate-exchange")
            != other.arguments.inner().get("alternate-exchange")
        {
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg 'alternate-exchange' for exchange '{}' in vhost '{vhost}'",
                self.spec.name
            )));
        }
        Ok(())
    }

    /// Checks a new binding: `Ok(false)` when an identical one exists (a no-op), an error
    /// when the router refuses it. The plugin's `validate_binding` runs under the router's read
    /// lock only. Callers hold the vhost's change lock, so nothing is bound in between.
    pub fn check_bind(&self, binding: &Binding) -> Result<bool, AmqpError> {
        if self.bindings.lock().contains(binding) {
            return Ok(false);
        }
        self.router
            .read()
            .validate_binding(binding)
            .map_err(|e| AmqpError::precondition_failed(format!("invalid binding: {e}")))?;
        Ok(true)
    }

    /// Records a binding that [`check_bind`](Self::check_bind) accepted; returns false (a
    /// no-op) when it exists.
    pub fn insert_binding(&self, binding: Binding) -> bool {
        let mut bindings = self.bindings.lock();
        if bindings.contains(&binding) {
            return false;
        }
        self.router.write().add_binding(&binding);
        bindings.insert(binding);
        true
    }

    /// Checks and adds a binding; returns false (a no-op) when it exists.
    pub fn bind(&self, binding: Binding) -> Result<bool, AmqpError> {
        Ok(self.check_bind(&binding)? && self.insert_binding(binding))
    }

    /// Whether an identical binding exists.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.bindings.lock().contains(binding)
    }

    /// How many bindings this exchange has.
    pub fn binding_count(&self) -> usize {
        self.bindings.lock().by_seq.len()
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let removed = self.bindings.lock().remove(binding);
        match removed {
            Some(removed) => {
                self.router.write().remove_binding(&removed);
                true
            }
            None => false,
        }
    }

    /// Removes every binding to `destination` from the host's index and returns them; the
    /// router still has them until [`forget`](Self::forget) (its destination is gone from the
    /// topology by then, so routing skips it). Costs O(bindings to `destination`).
    pub fn detach_destination(&self, destination: &Destination) -> Vec<Binding> {
        self.bindings.lock().remove_destination(destination)
    }

    /// Tells the router that `bindings`, detached from the host's index, are gone.
    pub fn forget(&self, bindings: &[Binding]) {
        if bindings.is_empty() {
            return;
        }
        let mut router = self.router.write();
        for binding in bindings {
            router.remove_binding(binding);
        }
    }

    /// Whether the exchange has any binding.
    pub fn has_bindings(&self) -> bool {
        !self.bindings.lock().by_seq.is_empty()
    }

    /// Whether any binding leads to `destination`.
    pub fn binds_to(&self, destination: &Destination) -> bool {
        self.bindings
            .lock()
            .by_destination
            .contains_key(destination)
    }

    /// A copy of the bindings in creation order (for listing, persistence and replay).
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().by_seq.values().cloned().collect()
    }

    /// The distinct destinations of this exchange's bindings.
    pub fn destinations(&self) -> Vec<Destination> {
        self.bindings
            .lock()
            .by_destination
            .keys()
            .cloned()
            .collect()
    }
}

/// The bindings of one exchange, indexed three ways so that bind, unbind and the removal of a
/// destination cost O(log n) (or O(bindings to that destination)) in the number n of bindings:
/// by creation sequence (listing order), by identity hash (destination, key, arguments), and
/// by destination.
#[derive(Default)]
struct BindingIndex {
    next: u64,
    by_seq: BTreeMap<u64, Binding>,
    /// Identity hash to the sequences of the bindings with that hash (almost always one).
    by_identity: HashMap<u64, SmallSeqs>,
    /// In sequence order, so that removing a destination's bindings walks `by_seq` in order.
    by_destination: HashMap<Destination, BTreeSet<u64>>,
}

/// The sequences sharing one identity hash.
type SmallSeqs = Vec<u64>;

impl BindingIndex {
    fn find(&self, binding: &Binding) -> Option<u64> {
        self.by_identity
            .get(&binding.identity_hash())?
            .iter()
            .copied()
            .find(|seq| self.by_seq.get(seq).is_some_and(|b| b.same_as(binding)))
    }

    fn contains(&self, binding: &Binding) -> bool {
        self.find(binding).is_some()
    }

    fn insert(&mut self, binding: Binding) {
        let seq = self.next;
        self.next += 1;
        self.by_identity
            .entry(binding.identity_hash())
            .or_default()
            .push(seq);
        self.by_destination
            .entry(binding.destination.clone())
            .or_default()
            .insert(seq);
        self.by_seq.insert(seq, binding);
    }

    fn remove(&mut self, binding: &Binding) -> Option<Binding> {
        let seq = self.find(binding)?;
        let removed = self.by_seq.remove(&seq)?;
        self.unlink_identity(&removed, seq);
        if let Some(set) = self.by_destination.get_mut(&removed.destination) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_destination.remove(&removed.destination);
            }
        }
        Some(removed)
    }

    fn remove_destination(&mut self, destination: &Destination) -> Vec<Binding> {
        let Some(seqs) = self.by_destination.remove(destination) else {
            return Vec::new();
        };
        let mut removed = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(binding) = self.by_seq.remove(&seq) {
                self.unlink_identity(&binding, seq);
                removed.push(binding);
            }
        }
        removed
    }

    fn unlink_identity(&mut self, binding: &Binding, seq: u64) {
        let hash = binding.identity_hash();
        if let Some(seqs) = self.by_identity.get_mut(&hash) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.by_identity.remove(&hash);
            }
        }
    }
}
