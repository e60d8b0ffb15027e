//! Delayed delivery: the `x-delayed-message` exchange type, compatible with RabbitMQ's
//! `rabbitmq_delayed_message_exchange` plugin (`docs/delayed.md`).
//!
//! A delayed exchange routes with an underlying type (`x-delayed-type`: built-in or WASM), whose
//! router is the exchange's router. A message published with a positive delay (`x-delay`,
//! `x-opt-delivery-delay` or `x-opt-delivery-time`) is not routed then: it is stored, and one
//! timer task per delayed exchange routes it through the vhost's normal routing, from this
//! exchange, when it is due.
//!
//! # Bounded memory: a timing wheel on disk
//!
//! Waiting messages sit in *buckets* by due time, each bucket a store of the vhost's message
//! store (persistent messages of a durable exchange in the synced store, with publisher confirms
//! after its group commit; others in the unsynced paging store). A bucket of level `L` covers
//! `2^(10+4L)` ms (about 1 s, 16 s, 4.4 min, ...); a message goes to the lowest level whose 32
//! buckets from now reach its due time, so at most 33 buckets per level exist. One bucket width
//! before a bucket starts, the timer *cascades* it (reads it and re-appends each message into
//! lower-level buckets) or, at level 0, *loads* it: only then do its messages enter the
//! in-memory heap, as 48-byte entries (due time and position, never the body). RAM therefore
//! holds the messages due in the next ~2 s plus a few bytes per bucket, whatever the number
//! waiting; the body is read back when the message fires.
//!
//! A fired message's stored copy is acknowledged only after it was routed (at least once:
//! a crash in between, or while a cascade's copies are synced but the old bucket not yet
//! removed, may deliver it twice).
//!
//! # Delays decided by plugins
//!
//! The same machinery holds the messages a `bourse:exchange@0.2` plugin delays: an exchange
//! whose router [decides delays](crate::exchange::Router::decides_delays) gets a
//! `DelayedExchange` of the *decided* kind. Its records carry the names of the queues routing
//! reached at publish time instead of CC/BCC keys (`record.rs`), and a fired one is
//! put into those queues (the ones still there) without routing again: the plugin is not
//! called twice, so it cannot delay the message again.

mod record;
mod timer;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::warn;

use crate::exchange::{ExchangeType, Name, Registry};
use crate::message::Message;
use crate::protocol::AmqpError;
use crate::store::{MessageStore, Position, QueueStore, StoreError, Ticket};

#[cfg(test)]
use crate::store::StoredMessage;
#[cfg(test)]
use record::DECIDED_MARK;
pub use record::DECIDED_QUEUES_MAX;
use record::{decode_record, encode_decided_body, encode_record_body, record_due};

/// The exchange type name, as RabbitMQ's plugin spells it.
pub const TYPE_NAME: &str = "x-delayed-message";
/// The declare argument naming the routing type.
pub const TYPE_ARGUMENT: &str = "x-delayed-type";
/// Longest delay honoured (RabbitMQ's plugin: 2^32-1 ms, about 49.7 days); longer ones are
/// cut to it.
pub const MAX_DELAY_MS: u64 = u32::MAX as u64;
/// Prefix of the names of bucket stores in the vhost's message stores. A queue name is an
/// AMQP short string, and no declare accepts one starting with a NUL character
/// ([`is_reserved_queue_name`]), so a bucket never shares a store with a queue.
pub(crate) const STORE_PREFIX: &str = "\u{0}delayed\u{0}";

/// log2 of a level-0 bucket's width in ms (1,024 ms).
const LEVEL0_SHIFT: u32 = 10;
/// log2 of the ratio between the widths of two adjacent levels.
const LEVEL_SHIFT: u32 = 4;
/// A message goes to the lowest level whose next `SPAN` buckets (from now's) reach it.
const SPAN: u64 = 32;
/// Levels 0..=MAX_LEVEL: 2^(10+4*6) ms is about 199 days per top-level bucket.
const MAX_LEVEL: u8 = 6;

/// Whether `name` may not be a queue's (the namespace of delayed buckets' stores).
pub fn is_reserved_queue_name(name: &str) -> bool {
    name.starts_with('\u{0}')
}

/// 403 for a queue name in the namespace of delayed buckets' stores.
pub(crate) fn check_queue_name(name: &str) -> Result<(), AmqpError> {
    if is_reserved_queue_name(name) {
        return Err(AmqpError::access_refused(format!(
            "queue name '{}' is reserved (it starts with a NUL character)",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// The underlying type of a delayed exchange declared with `arguments`: 406 when
/// `x-delayed-type` is missing, not a string, unknown, or itself `x-delayed-message` (as in
/// RabbitMQ, whose plugin refuses the declare with the same text).
pub(crate) fn underlying(
    registry: &Registry,
    arguments: &FieldTable,
) -> Result<(Name, Arc<dyn ExchangeType>), AmqpError> {
    let refused = || {
        AmqpError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    };
    let kind = match arguments.inner().get(TYPE_ARGUMENT) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => return Err(refused()),
    };
    if kind == TYPE_NAME {
        return Err(refused());
    }
    let ty = registry.get(&kind).ok_or_else(refused)?;
    Ok((Name::from(kind), ty))
}

/// The due time (ms since the Unix epoch) of a message published at `now`, or None when it
/// is to be routed at once: no delay header, or a delay of 0 or less. `x-delay` (RabbitMQ's
/// plugin) wins over `x-opt-delivery-time` (absolute) and `x-opt-delivery-delay`.
pub fn due_time(properties: &BasicProperties, now: u64) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    let inner = headers.inner();
    let delay = if let Some(v) = inner.get("x-delay") {
        integer(v)?
    } else if let Some(v) = inner.get("x-opt-delivery-time") {
        integer(v)?.saturating_sub(i64::try_from(now).unwrap_or(i64::MAX))
    } else {
        integer(inner.get("x-opt-delivery-delay")?)?
    };
    if delay <= 0 {
        return None;
    }
    Some(now.saturating_add((delay as u64).min(MAX_DELAY_MS)))
}

/// An integer header value (any width, a timestamp, or a decimal string).
fn integer(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::Timestamp(v) => i64::try_from(*v).unwrap_or(i64::MAX),
        AMQPValue::Float(v) => *v as i64,
        AMQPValue::Double(v) => *v as i64,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    })
}

/// Wall-clock time in ms since the Unix epoch (due times survive restarts, so they are
/// absolute).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The bucket of a message due at `due`, placed at `now` (`due > now`).
fn bucket_of(due: u64, now: u64) -> BucketKey {
    let mut level = 0;
    while level < MAX_LEVEL && due - now.min(due) >= SPAN << width_shift(level) {
        level += 1;
    }
    let index = due >> width_shift(level);
    BucketKey {
        trigger: index.saturating_sub(1) << width_shift(level),
        level,
        index,
    }
}

fn width_shift(level: u8) -> u32 {
    LEVEL0_SHIFT + LEVEL_SHIFT * u32::from(level)
}

/// A bucket, ordered by when the timer must act on it: one bucket width before it starts
/// (load at level 0, cascade above). A message placed at level `L > 0` is at least two widths
/// away, so this is always in the future for them; a level-0 bucket may be due at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BucketKey {
    trigger: u64,
    level: u8,
    index: u64,
}

/// Where a message waits: in the stores of the vhost (durable or paging) or, for a vhost
/// without storage, in memory.
pub(crate) struct Stores {
    /// Persistent messages of durable exchanges: synced, survive a crash.
    pub(crate) synced: Option<Arc<MessageStore>>,
    /// Everything else: never synced, wiped at start-up.
    pub(crate) paging: Option<Arc<MessageStore>>,
}

/// The delayed messages of one exchange.
pub struct DelayedExchange {
    /// The exchange's name.
    pub name: Name,
    durable: bool,
    /// Holds the messages a plugin delayed (records name their queues), rather than those of
    /// an `x-delayed-message` exchange (delays from headers, routed when they fire).
    decided: bool,
    stores: Stores,
    state: Mutex<State>,
    /// Messages waiting (stored or in memory), for the management API and metrics.
    waiting: AtomicU64,
    /// When the timer task will next wake (ms since the epoch); a message or bucket due
    /// earlier wakes it.
    wake_at: AtomicU64,
    wake: Notify,
    deleted: AtomicBool,
    /// Fired messages that reached no queue (dropped, as RabbitMQ's plugin does).
    unroutable: AtomicU64,
    /// Fire lateness samples for tests and benchmarks: (count, sum ms, max ms).
    late: Mutex<(u64, u64, u64)>,
}

#[derive(Default)]
struct State {
    /// Buckets the timer has yet to act on, by trigger time.
    pending: BTreeMap<BucketKey, Bucket>,
    /// Level-0 buckets whose messages are in `heap`, by index.
    loaded: HashMap<u64, Bucket>,
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// Makes store names unique, so a bucket being removed never shares a store with its
    /// successor of the same time range.
    generation: u64,
    /// Buckets found at start-up whose place was taken (two generations of one bucket): their
    /// messages are moved to buckets of their own by the timer's first turn.
    strays: Vec<Bucket>,
}

/// One bucket: up to two stores (synced and paging) and how many messages it holds.
struct Bucket {
    stores: [Option<BucketStore>; 2],
    count: u64,
}

/// Index of the synced store in [`Bucket::stores`].
const SYNCED: usize = 1;
/// Index of the paging store in [`Bucket::stores`].
const PAGING: usize = 0;

/// A bucket's store and how to walk its messages.
#[derive(Clone)]
struct BucketStore {
    store: QueueStore,
    walk: Walk,
}

/// How to find a bucket's messages without an index per message.
#[derive(Clone)]
enum Walk {
    /// Appended in this run, none removed yet: the first position of each segment and the
    /// number appended; the records are read in a row.
    Appended { starts: Vec<Position>, count: u64 },
    /// Found at start-up: the positions recovery returned (some may have been removed).
    Recovered(Arc<[Position]>),
}

/// A message in the heap of those due soon.
struct Entry {
    due: u64,
    seq: u64,
    at: At,
}

enum At {
    /// In store `store` ([`SYNCED`] or [`PAGING`]) of level-0 bucket `index`.
    Stored {
        index: u64,
        store: usize,
        position: Position,
    },
    /// Held in memory (a vhost without storage): the message, its CC/BCC keys or (decided)
    /// its queues, and whether it was decided.
    Memory(Box<(Arc<Message>, Vec<Name>, bool)>),
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl std::fmt::Debug for DelayedExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedExchange")
            .field("name", &self.name)
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl DelayedExchange {
    /// The delayed state of a new (or restored) exchange. Its timer starts with
    /// [`DelayedExchange::start`] once the exchange is in the topology.
    pub(crate) fn new(name: Name, durable: bool, stores: Stores, decided: bool) -> Arc<Self> {
        Arc::new(Self {
            name,
            durable,
            decided,
            stores,
            state: Mutex::new(State::default()),
            waiting: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            deleted: AtomicBool::new(false),
            unroutable: AtomicU64::new(0),
            late: Mutex::new((0, 0, 0)),
        })
    }

    /// Whether it holds messages whose delay and queues a plugin decided (a WASM exchange of
    /// the 0.2 contract), rather than those of an `x-delayed-message` exchange.
    pub fn decided(&self) -> bool {
        self.decided
    }

    /// Messages waiting to fire.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Fired messages that reached no queue.
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }

    /// Messages fired, the mean and the largest lateness (ms after the due time) so far.
    pub fn lateness(&self) -> (u64, f64, u64) {
        let (n, sum, max) = *self.late.lock();
        (n, if n == 0 { 0.0 } else { sum as f64 / n as f64 }, max)
    }

    /// Stores a message to be routed at `due` (ms since the epoch); returns the ticket of the
    /// message store to await before confirming it (0: nothing to await).
    pub(crate) fn hold(
        &self,
        message: &Arc<Message>,
        extra_keys: &[Name],
        due: u64,
    ) -> Result<Ticket, AmqpError> {
        self.hold_record(message, extra_keys, false, due)
    }

    /// Stores a message a plugin delayed, to be put into `queues` at `due` without routing
    /// again; like [`hold`](Self::hold) otherwise. More than [`DECIDED_QUEUES_MAX`] queues is
    /// refused (the publisher gets a nack).
    pub(crate) fn hold_decided(
        &self,
        message: &Arc<Message>,
        queues: &[Name],
        due: u64,
    ) -> Result<Ticket, AmqpError> {
        if queues.len() > DECIDED_QUEUES_MAX {
            return Err(AmqpError::internal(format!(
                "a delayed message may reach at most {DECIDED_QUEUES_MAX} queues; this one \
                 reached {}",
                queues.len()
            )));
        }
        self.hold_record(message, queues, true, due)
    }

    fn hold_record(
        &self,
        message: &Arc<Message>,
        names: &[Name],
        decided: bool,
        due: u64,
    ) -> Result<Ticket, AmqpError> {
        let due = due.min(now_ms().saturating_add(MAX_DELAY_MS));
        let store = if message.persistent() && self.durable && self.stores.synced.is_some() {
            SYNCED
        } else {
            PAGING
        };
        let now = now_ms();
        let mut state = self.state.lock();
        if self.deleted.load(Ordering::Relaxed) {
            return Ok(0);
        }
        if self.stores.paging.is_none() {
            // No storage: the message waits in memory.
            state.schedule(
                due,
                At::Memory(Box::new((message.clone(), names.to_vec(), decided))),
            );
            drop(state);
            self.waiting.fetch_add(1, Ordering::Relaxed);
            self.wake_if_before(due);
            return Ok(0);
        }
        let body = if decided {
            encode_decided_body(due, names, message.body())
        } else {
            encode_record_body(due, names, message.body())
        };
        let ticket = self
            .append(
                &mut state,
                now,
                store,
                due,
                message.exchange(),
                message.routing_key(),
                message.raw_properties(),
                &body,
            )
            .map_err(|e| AmqpError::internal(format!("cannot store a delayed message: {e}")))?;
        drop(state);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(if store == SYNCED { ticket } else { 0 })
    }

    /// Appends one record to the bucket of `due` (created if needed); pushes it into the heap
    /// when that bucket is loaded. Under the state lock: a memory copy, except when a bucket's
    /// store must be created (directory and fsyncs, once per bucket: `blocking`).
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        state: &mut State,
        now: u64,
        store: usize,
        due: u64,
        exchange: &str,
        routing_key: &str,
        raw_properties: &[u8],
        body: &[u8],
    ) -> Result<Ticket, StoreError> {
        let key = bucket_of(due, now);
        let loaded = key.level == 0 && state.loaded.contains_key(&key.index);
        if !loaded && !state.pending.contains_key(&key) {
            state.pending.insert(
                key,
                Bucket {
                    stores: [None, None],
                    count: 0,
                },
            );
            self.wake_if_before(key.trigger);
        }
        let generation = state.generation;
        let bucket = if loaded {
            state.loaded.get_mut(&key.index)
        } else {
            state.pending.get_mut(&key)
        }
        .ok_or_else(|| StoreError::Invalid("bucket vanished".into()))?;
        if bucket.stores[store].is_none() {
            let owner = match store {
                SYNCED => self.stores.synced.as_ref(),
                _ => self.stores.paging.as_ref(),
            }
            .ok_or_else(|| StoreError::Invalid("no store".into()))?;
            let name = store_name(&self.name, key, generation, store);
            let opened = crate::blocking::blocking(true, || owner.open_queue(&name))?;
            bucket.stores[store] = Some(BucketStore {
                store: opened,
                walk: Walk::Appended {
                    starts: Vec::new(),
                    count: 0,
                },
            });
        }
        let Some(held) = bucket.stores[store].as_mut() else {
            return Err(StoreError::Invalid("no bucket store".into()));
        };
        let (position, ticket) = held
            .store
            .append(exchange, routing_key, raw_properties, body)?;
        if let Walk::Appended { starts, count } = &mut held.walk {
            if starts
                .last()
                .is_none_or(|p| p.segment() != position.segment())
            {
                starts.push(position);
            }
            *count += 1;
        }
        bucket.count += 1;
        state.generation += 1;
        if loaded {
            state.schedule(
                due,
                At::Stored {
                    index: key.index,
                    store,
                    position,
                },
            );
            self.wake_if_before(due);
        }
        Ok(ticket)
    }

    /// Wakes the timer if it sleeps past `at`.
    fn wake_if_before(&self, at: u64) {
        if at < self.wake_at.load(Ordering::Relaxed) {
            self.wake_at.store(at, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Takes back a bucket store found at start-up (its name says which bucket it is).
    pub(crate) fn adopt(&self, name: &str, store: QueueStore, positions: Vec<Position>) {
        let Some((key, generation)) = parse_store_name(name) else {
            warn!(exchange = %self.name, store = name.escape_debug().to_string(), "unreadable delayed bucket name; its messages are dropped");
            let _ = store.delete();
            return;
        };
        let count = positions.len() as u64;
        if count == 0 {
            let _ = store.delete();
            return;
        }
        let mut state = self.state.lock();
        state.generation = state.generation.max(generation + 1);
        let bucket = state.pending.entry(key).or_insert(Bucket {
            stores: [None, None],
            count: 0,
        });
        let held = BucketStore {
            store,
            walk: Walk::Recovered(positions.into()),
        };
        self.waiting.fetch_add(count, Ordering::Relaxed);
        if bucket.stores[SYNCED].is_none() {
            bucket.stores[SYNCED] = Some(held);
            bucket.count += count;
            drop(state);
            self.wake_if_before(key.trigger);
        } else {
            // Two generations of one bucket: this one's messages are re-appended elsewhere.
            state.strays.push(Bucket {
                stores: [None, Some(held)],
                count,
            });
            drop(state);
            self.wake_if_before(0);
        }
    }

    /// The exchange was deleted: its messages are dropped (their stores removed) and its
    /// timer stops.
    pub(crate) fn discard(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        let mut state = self.state.lock();
        let buckets: Vec<Bucket> = std::mem::take(&mut state.pending)
            .into_values()
            .chain(std::mem::take(&mut state.loaded).into_values())
            .collect();
        state.heap.clear();
        drop(state);
        self.waiting.store(0, Ordering::Relaxed);
        crate::blocking::blocking(true, || {
            for bucket in buckets {
                for held in bucket.stores.into_iter().flatten() {
                    let _ = held.store.delete();
                }
            }
        });
        self.wake.notify_one();
    }

    /// Starts the timer task of this exchange (when a tokio runtime is there: unit tests
    /// without one never fire).
    pub(crate) fn start(self: &Arc<Self>, vhost: std::sync::Weak<super::VHost>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(timer::run(vhost, self.clone()));
        }
    }
}

impl super::VHost {
    /// Drops the waiting messages of the delayed exchanges a change deleted (`detached` also
    /// lists exchanges that merely lost bindings: those are still in the topology).
    pub(super) fn discard_delayed(
        &self,
        detached: &[(Arc<super::Exchange>, Vec<crate::exchange::Binding>)],
    ) {
        for (exchange, _) in detached {
            if let Some(delayed) = exchange.delayed()
                && !self
                    .read_topology()
                    .exchanges
                    .get(&exchange.spec.name)
                    .is_some_and(|x| Arc::ptr_eq(x, exchange))
            {
                delayed.discard();
            }
        }
    }

    /// The type that creates the router of an exchange of type `kind`: for
    /// `x-delayed-message`, the underlying type its arguments name (406 when they name none).
    pub(super) fn exchange_type(
        &self,
        kind: &str,
        arguments: &FieldTable,
    ) -> Result<Arc<dyn crate::exchange::ExchangeType>, AmqpError> {
        if kind == TYPE_NAME {
            return underlying(&self.registry, arguments).map(|(_, ty)| ty);
        }
        self.registry.get(kind).ok_or_else(|| {
            if self.registry.is_loading() {
                AmqpError::precondition_failed(format!(
                    "unknown exchange type '{kind}' (the broker is still compiling its plugins: \
                     retry once they are loaded)"
                ))
            } else {
                AmqpError::precondition_failed(format!("unknown exchange type '{kind}'"))
            }
        })
    }

    /// The delayed-message state of a new exchange of type `x-delayed-message`, or of one
    /// whose `router` decides delays (a 0.2 plugin's); None for other exchanges. Its messages
    /// go to this vhost's stores, or stay in memory without them.
    pub(super) fn delayed_state(
        &self,
        spec: &super::ExchangeSpec,
        router: &dyn crate::exchange::Router,
    ) -> Option<Arc<DelayedExchange>> {
        let decided = *spec.kind != *TYPE_NAME;
        if decided && !router.decides_delays() {
            return None;
        }
        let stores = Stores {
            synced: self.durable.as_ref().map(|d| d.messages.clone()),
            paging: self.durable.as_ref().map(|d| d.paging.clone()),
        };
        let delayed = DelayedExchange::new(spec.name.clone(), spec.durable, stores, decided);
        // An exchange restored late (its type loaded after the vhost opened) takes back the
        // buckets found at open, before anything can publish to it.
        if spec.durable
            && let Some(durable) = &self.durable
        {
            let mine: Vec<_> = {
                let mut buckets = durable.delayed_buckets.lock();
                let (mine, others) = std::mem::take(&mut *buckets)
                    .into_iter()
                    .partition(|b| store_exchange(&b.name) == Some(&*spec.name));
                *buckets = others;
                mine
            };
            for bucket in mine {
                let positions = bucket.messages.iter().map(|m| m.position).collect();
                delayed.adopt(&bucket.name, bucket.store, positions);
            }
        }
        Some(delayed)
    }
}

#[cfg(test)]
impl DelayedExchange {
    /// The first trigger of a bucket not yet loaded or cascaded.
    fn next_trigger(&self) -> Option<u64> {
        self.state.lock().pending.keys().next().map(|k| k.trigger)
    }

    /// The levels of the buckets not yet loaded or cascaded.
    fn pending_levels(&self) -> Vec<u8> {
        self.state.lock().pending.keys().map(|k| k.level).collect()
    }

    /// (due, body) of every message in the heap, read back from its bucket.
    fn loaded_messages(&self) -> Vec<(u64, String)> {
        let state = self.state.lock();
        let mut out = Vec::new();
        for Reverse(entry) in state.heap.iter() {
            let At::Stored {
                index,
                store,
                position,
            } = &entry.at
            else {
                continue;
            };
            let held = state.loaded[index].stores[*store].as_ref().expect("store");
            let stored = held.store.read(*position).expect("reads");
            assert_eq!(record_due(&stored), Some(entry.due));
            let decoded = decode_record(stored).expect("decodes");
            out.push((
                entry.due,
                String::from_utf8_lossy(decoded.message.body()).into_owned(),
            ));
        }
        out
    }
}

impl State {
    /// Adds a waiting message to the heap, after those due at the same time.
    fn schedule(&mut self, due: u64, at: At) {
        self.seq += 1;
        let seq = self.seq;
        self.heap.push(Reverse(Entry { due, seq, at }));
    }
}

/// `STORE_PREFIX exchange NUL level.index.generation.kind`.
fn store_name(exchange: &str, key: BucketKey, generation: u64, store: usize) -> String {
    let kind = if store == SYNCED { 'p' } else { 't' };
    format!(
        "{STORE_PREFIX}{exchange}\u{0}{}.{}.{generation}.{kind}",
        key.level, key.index
    )
}

/// The exchange a bucket store belongs to, from its name.
pub(crate) fn store_exchange(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(STORE_PREFIX)?;
    Some(rest.rsplit_once('\u{0}')?.0)
}

fn parse_store_name(name: &str) -> Option<(BucketKey, u64)> {
    let rest = name.strip_prefix(STORE_PREFIX)?;
    let (_, tail) = rest.rsplit_once('\u{0}')?;
    let mut parts = tail.split('.');
    let level: u8 = parts.next()?.parse().ok()?;
    let index: u64 = parts.next()?.parse().ok()?;
    let generation: u64 = parts.next()?.parse().ok()?;
    if level > MAX_LEVEL {
        return None;
    }
    Some((
        BucketKey {
            trigger: index.saturating_sub(1) << width_shift(level),
            level,
            index,
        },
        generation,
    ))
}

#[cfg(test)]
mod tests;
