//! Exchange types: the routing contract shared by built-in and WASM exchanges.
//!
//! The contract follows RabbitMQ's `rabbit_exchange_type` behaviour: a type validates the
//! arguments of an exchange, validates each binding, is told when bindings are added and removed,
//! and routes a message to the destinations of some of its bindings. The *host* (the vhost) owns
//! the bindings; a router's index is a cache that can always be rebuilt by replaying them, which
//! is how a WASM router is restored after a reload or a trap.
//!
//! Routers never see frames, sockets or queues: only [`RoutingInput`] in and [`Destination`]s out.

pub mod builtin;
pub mod wasm;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use parking_lot::RwLock;

/// A cheaply clonable name (exchange, queue, routing key).
pub type Name = Arc<str>;

/// Where a binding leads: a queue, or another exchange (exchange-to-exchange bindings).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A queue of the same vhost.
    Queue(Name),
    /// An exchange of the same vhost.
    Exchange(Name),
}

/// One binding of an exchange, as the host stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key given in `queue.bind` / `exchange.bind`.
    pub routing_key: Name,
    /// The binding arguments (e.g. `x-match` for headers exchanges).
    pub arguments: FieldTable,
}

impl Binding {
    /// Two bindings are the same binding when destination, key and arguments are equal
    /// (RabbitMQ's identity for bind/unbind).
    pub fn same_as(&self, other: &Binding) -> bool {
        self == other
    }

    /// A hash of the binding's identity (destination, key, arguments) consistent with
    /// [`same_as`](Self::same_as): equal bindings hash equal. Argument values are hashed by
    /// variant, and strings, booleans and integers by value too; other values (floats, nested
    /// tables, arrays) only by variant, so bindings differing only there share a hash and are
    /// told apart by comparison. For indexes of bindings (the vhost's, a WASM router's).
    pub fn identity_hash(&self) -> u64 {
        identity_hash(&self.destination, Some(&self.routing_key), &self.arguments)
    }
}

/// [`Binding::identity_hash`] of a binding's parts; without a key for routers whose binding
/// identity ignores it (headers).
pub(crate) fn identity_hash(
    destination: &Destination,
    routing_key: Option<&str>,
    arguments: &FieldTable,
) -> u64 {
    use amq_protocol::types::AMQPValue;
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x626f_7572_7365).build_hasher();
    destination.hash(&mut h);
    routing_key.hash(&mut h);
    for (key, value) in arguments.inner() {
        key.as_str().hash(&mut h);
        std::mem::discriminant(value).hash(&mut h);
        match value {
            AMQPValue::LongString(s) => s.as_bytes().hash(&mut h),
            AMQPValue::ShortString(s) => s.as_str().hash(&mut h),
            AMQPValue::Boolean(b) => b.hash(&mut h),
            AMQPValue::ShortShortInt(v) => v.hash(&mut h),
            AMQPValue::ShortShortUInt(v) => v.hash(&mut h),
            AMQPValue::ShortInt(v) => v.hash(&mut h),
            AMQPValue::ShortUInt(v) => v.hash(&mut h),
            AMQPValue::LongInt(v) => v.hash(&mut h),
            AMQPValue::LongUInt(v) => v.hash(&mut h),
            AMQPValue::LongLongInt(v) => v.hash(&mut h),
            AMQPValue::Timestamp(v) => v.hash(&mut h),
            _ => {}
        }
    }
    h.finish()
}

/// What a router may look at to decide where a message goes.
#[derive(Debug, Clone, Copy)]
pub struct RoutingInput<'a> {
    /// Name of the exchange being routed through.
    pub exchange: &'a str,
    /// The publish routing key.
    pub routing_key: &'a str,
    /// The message's basic properties (headers included).
    pub properties: &'a BasicProperties,
    /// The message body.
    pub body: &'a [u8],
}

/// An error a router raises while routing; the host treats the message as unroutable by this
/// exchange and reports the failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(pub String);

/// A rejection of exchange arguments or of a binding: becomes 406 PRECONDITION_FAILED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A kind of exchange (`direct`, `topic`, `x-consistent-hash`, ...): a factory for routers.
pub trait ExchangeType: Send + Sync + 'static {
    /// The type name used in `exchange.declare`.
    fn name(&self) -> &str;

    /// Checks the declare arguments of a new exchange of this type.
    fn validate(&self, arguments: &FieldTable) -> Result<(), Invalid>;

    /// Creates the routing state of one exchange of this type, with no bindings yet.
    fn create(&self, exchange: &str, arguments: &FieldTable) -> Result<Box<dyn Router>, Invalid>;

    /// Like [`create`](Self::create), for an exchange of vhost `vhost`; types whose settings
    /// differ per vhost (WASM limits) override it.
    fn create_in(
        &self,
        vhost: &str,
        exchange: &str,
        arguments: &FieldTable,
    ) -> Result<Box<dyn Router>, Invalid> {
        let _ = vhost;
        self.create(exchange, arguments)
    }

    /// Like [`create_in`](Self::create_in), for an exchange whose plugin state lives in
    /// `state` (on disk with the vhost's messages when `durable` and the vhost has storage).
    /// Types that keep no state (the built-ins) ignore it.
    fn create_with_state(
        &self,
        vhost: &str,
        exchange: &str,
        arguments: &FieldTable,
        state: &crate::store::PluginState,
        durable: bool,
    ) -> Result<Box<dyn Router>, Invalid> {
        let _ = (state, durable);
        self.create_in(vhost, exchange, arguments)
    }

    /// Whether [`validate`](Self::validate) and [`create`](Self::create) may take long
    /// (milliseconds: a WASM instance and its `init`), so the host runs them where blocking is
    /// allowed. Built-in types answer false.
    fn creates_slowly(&self) -> bool {
        false
    }
}

/// The routing state of one declared exchange.
///
/// `route` takes `&self` so built-in routers are read concurrently by every publisher; a router
/// that needs exclusive state (a WASM instance) uses interior mutability.
pub trait Router: Send + Sync + 'static {
    /// Checks a binding before it is added; an `Err` becomes 406 PRECONDITION_FAILED.
    fn validate_binding(&self, binding: &Binding) -> Result<(), Invalid>;

    /// Records a binding. The host never adds the same binding twice.
    fn add_binding(&mut self, binding: &Binding);

    /// Forgets a binding previously added.
    fn remove_binding(&mut self, binding: &Binding);

    /// Appends the destinations the message goes to. Duplicates are allowed: the host
    /// delivers at most once per queue.
    fn route(
        &self,
        message: &RoutingInput<'_>,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError>;

    /// Appends the destinations of a message published with the routing key of `message`
    /// and the extra keys `cc` of its `CC` and `BCC` headers (in that order). The default
    /// routes once per key, as RabbitMQ's built-in types treat CC keys; a router that makes
    /// one decision from every key (a WASM plugin, which is given them as `message.cc`)
    /// overrides it. Stops at the first error.
    fn route_keys(
        &self,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.route(message, out)?;
        for &key in cc {
            let input = RoutingInput {
                routing_key: key,
                ..*message
            };
            self.route(&input, out)?;
        }
        Ok(())
    }

    /// Like [`route_keys`](Self::route_keys), and answers how long the message should wait
    /// before it is delivered to those destinations, in ms (0: at once). Only routers that
    /// [`decide_delays`](Self::decides_delays) (plugins of the `bourse:exchange@0.2` contract)
    /// answer anything but 0; the default routes and answers 0.
    fn route_keys_delayed(
        &self,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Result<u64, RouteError> {
        self.route_keys(message, cc, out).map(|()| 0)
    }

    /// Whether [`route_keys_delayed`](Self::route_keys_delayed) may answer a delay, asked when
    /// the exchange is created: the vhost then gives the exchange a store for the messages
    /// it holds.
    fn decides_delays(&self) -> bool {
        false
    }
}

/// The exchange types known to a broker, by name. Shared by every vhost.
///
/// A vhost with plugins of its own sees a [`layered`](Registry::layered) registry: its own
/// types over the broker-wide ones (built-ins and the plugin directory's), which stay visible
/// to every vhost. Registering into the layer never touches the broker-wide registry.
#[derive(Clone, Default)]
pub struct Registry {
    types: Types,
    /// The broker-wide types under this vhost's own, for a layered registry.
    below: Option<Types>,
    /// Whether the plugin directory is still being compiled (shared by the layers): an
    /// unknown type may be one of its types, not loaded yet.
    loading: Arc<std::sync::atomic::AtomicBool>,
}

/// Exchange types by name, shared by the registries that see them.
type Types = Arc<RwLock<HashMap<String, Arc<dyn ExchangeType>>>>;

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types = self.types.read();
        f.debug_list().entries(types.keys()).finish()
    }
}

impl Registry {
    /// A registry holding the four built-in types.
    pub fn with_builtins() -> Self {
        let registry = Self::default();
        for ty in builtin::all() {
            registry.register(ty);
        }
        registry
    }

    /// Adds or replaces an exchange type.
    pub fn register(&self, ty: Arc<dyn ExchangeType>) {
        self.types.write().insert(ty.name().to_owned(), ty);
    }

    /// Removes an exchange type; exchanges already declared keep their routers.
    pub fn unregister(&self, name: &str) -> Option<Arc<dyn ExchangeType>> {
        self.types.write().remove(name)
    }

    /// Looks up a type by name: this layer's own first, then the broker-wide ones below it.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ExchangeType>> {
        if let Some(ty) = self.types.read().get(name) {
            return Some(ty.clone());
        }
        self.below.as_ref()?.read().get(name).cloned()
    }

    /// An empty layer over this registry's own types (a vhost's plugins over the broker's):
    /// what is registered into it is seen only through it, while types registered into this
    /// registry later are seen through it too.
    pub fn layered(&self) -> Self {
        Self {
            types: Arc::default(),
            below: Some(self.types.clone()),
            loading: self.loading.clone(),
        }
    }

    /// Says whether the plugin directory is being loaded (see [`is_loading`](Self::is_loading)).
    pub fn set_loading(&self, loading: bool) {
        self.loading
            .store(loading, std::sync::atomic::Ordering::Release);
    }

    /// Whether the broker is still compiling its plugin directory at start-up, so that a type
    /// not registered yet may still come.
    pub fn is_loading(&self) -> bool {
        self.loading.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `name` is a type of the registry below this layer (or of this registry, when
    /// it is not a layer): a built-in or broker-wide type.
    pub fn has_below(&self, name: &str) -> bool {
        self.below
            .as_ref()
            .unwrap_or(&self.types)
            .read()
            .contains_key(name)
    }
}
