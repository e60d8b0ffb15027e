//! A declared exchange: its declaration, its bindings (owned here) and its router.

use amq_protocol::types::{AMQPValue, FieldTable};
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
    bindings: Mutex<Vec<Binding>>,
    router: RwLock<Box<dyn Router>>,
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
            bindings: Mutex::new(Vec::new()),
            router: RwLock::new(router),
        }
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

    /// Adds a binding after the router accepted it; returns false (a no-op) when it exists.
    pub fn bind(&self, binding: Binding) -> Result<bool, AmqpError> {
        let mut bindings = self.bindings.lock();
        if bindings.iter().any(|b| b.same_as(&binding)) {
            return Ok(false);
        }
        let mut router = self.router.write();
        router
            .validate_binding(&binding)
            .map_err(|e| AmqpError::precondition_failed(format!("invalid binding: {e}")))?;
        router.add_binding(&binding);
        bindings.push(binding);
        Ok(true)
    }

    /// Whether an identical binding exists.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.bindings.lock().iter().any(|b| b.same_as(binding))
    }

    /// How many bindings this exchange has.
    pub fn binding_count(&self) -> usize {
        self.bindings.lock().len()
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut bindings = self.bindings.lock();
        let Some(at) = bindings.iter().position(|b| b.same_as(binding)) else {
            return false;
        };
        let removed = bindings.remove(at);
        self.router.write().remove_binding(&removed);
        true
    }

    /// Removes every binding to `destination`; returns how many existed.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut bindings = self.bindings.lock();
        let before = bindings.len();
        let mut router = None;
        bindings.retain(|b| {
            if &b.destination == destination {
                router
                    .get_or_insert_with(|| self.router.write())
                    .remove_binding(b);
                false
            } else {
                true
            }
        });
        before - bindings.len()
    }

    /// Whether the exchange has any binding.
    pub fn has_bindings(&self) -> bool {
        !self.bindings.lock().is_empty()
    }

    /// Whether any binding leads to `destination`.
    pub fn binds_to(&self, destination: &Destination) -> bool {
        self.bindings
            .lock()
            .iter()
            .any(|b| &b.destination == destination)
    }

    /// A copy of the bindings (for listing, persistence and replay).
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().clone()
    }
}
