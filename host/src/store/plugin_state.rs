//! Plugin state: the small key-value store each WASM exchange keeps through the `state`
//! import (`wit/exchange.wit`), in memory, and for a durable exchange of a vhost with storage
//! also in the vhost's `plugin-state.log`, group-committed with the message store.
//!
//! # Durability
//!
//! A write ([`ExchangeState::compare_and_swap`]) changes the in-memory map and, for a durable
//! exchange, copies a record into the journal's buffer and takes a [`Ticket`] from the message
//! store's sequence: no system call, no waiting, whatever thread routes. The message store's
//! flusher writes the buffered records in its next round and fdatasyncs the log before it
//! publishes that round's `synced` ticket, so a state write is on disk before any publisher
//! confirm that waits for a later ticket. Routing a persistent message notes the highest ticket
//! its plugins' writes took on this thread ([`take_thread_ticket`]); the channel holds that
//! message's confirm until it is synced, whether or not the message itself was stored.
//!
//! The state of a non-durable exchange (or of any exchange of a vhost kept in memory) lives in
//! memory only, like the exchange: gone at restart.
//!
//! # The file
//!
//! `<vhost dir>/plugin-state.log`: an 8-byte header (`BPST`, version u32 LE), then framed
//! records (`frame.rs`), one write each: a tag byte, the exchange name (`u16 LE length +
//! UTF-8`), then for `put` the key (same encoding) and the value (the rest), for `delete` the
//! key, for `drop` (the exchange was deleted) nothing. Replaying the records in order rebuilds
//! every exchange's map; replaying a suffix of them onto a map that already reflects them gives
//! the same map (the last write to a key wins), which is what lets compaction run while
//! writers go on: the flusher writes a snapshot of the live maps once the log holds four times
//! more bytes than they do, at least [`COMPACT_MIN_BYTES`] and twice its size after the last
//! snapshot, and records buffered while it did so are written after the snapshot.
//!
//! # Limits
//!
//! Entries per exchange and bytes per vhost are checked on every write that adds; an entry
//! costs its key and value plus [`ENTRY_OVERHEAD_BYTES`]. Recovered state counts against its
//! vhost from the start, restored exchange or not.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::StoreError;
use super::messages::{Shared, Ticket};
use super::record_log::RecordLog;
use crate::exchange::Name;

const HEADER: [u8; 8] = *b"BPST\x01\x00\x00\x00";
/// The journal's file name in the vhost's directory.
pub const FILE_NAME: &str = "plugin-state.log";

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DROP: u8 = 3;

/// What one entry costs against its vhost's byte limit besides its key and value.
pub const ENTRY_OVERHEAD_BYTES: u64 = 32;
/// The log is not compacted below this size.
pub const COMPACT_MIN_BYTES: u64 = 1024 * 1024;
/// ... nor before it holds this many times the bytes of the live state.
const COMPACT_RATIO: u64 = 4;

/// One exchange's entries.
pub type StateMap = BTreeMap<String, Vec<u8>>;

thread_local! {
    /// The highest journal ticket taken on this thread since the last [`take_thread_ticket`].
    static THREAD_TICKET: Cell<Ticket> = const { Cell::new(0) };
    /// Whether writes on this thread are a dry run's ([`dry_run`]).
    static DRY_RUN: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every state write on this thread answered as it would be (the comparison and
/// the limits checked) but not applied: a route explained (`vhost::explain`) runs the real
/// plugins, and a plugin that records what it saw (`x-dedup`) must not remember an explained
/// message. Plugin calls run on the routing thread, so the flag reaches them.
pub fn dry_run<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            DRY_RUN.with(|d| d.set(self.0));
        }
    }
    let _reset = Reset(DRY_RUN.with(|d| d.replace(true)));
    f()
}

/// The highest ticket a durable state write took on this thread since the last call (0:
/// none), and starts again from 0. Routing calls it before and after a message's routers run:
/// plugin calls run on the routing thread, so the second call returns what that message's
/// routing wrote.
pub fn take_thread_ticket() -> Ticket {
    THREAD_TICKET.with(|t| t.replace(0))
}

fn note_thread_ticket(ticket: Ticket) {
    THREAD_TICKET.with(|t| t.set(t.get().max(ticket)));
}

/// The limits one write is checked against.
#[derive(Debug, Clone, Copy)]
pub struct StateLimits {
    /// Entries in one exchange's map.
    pub entries_max: u64,
    /// Bytes (keys, values and [`ENTRY_OVERHEAD_BYTES`] each) of every exchange of the vhost.
    pub vhost_bytes_max: u64,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateRefused {
    /// The exchange holds `entries_max` entries.
    #[error("the exchange's state holds its limit of {0} entries")]
    ExchangeFull(u64),
    /// The vhost's plugin state holds `vhost_bytes_max` bytes.
    #[error("the vhost's plugin state holds its limit of {0} bytes")]
    VhostFull(u64),
    /// The exchange was deleted, or the store failed or closed.
    #[error("state unavailable: {0}")]
    Unavailable(String),
}

/// The plugin state of one vhost: the byte count against its limit and, with storage, the
/// journal. Cheap to clone.
#[derive(Clone)]
pub struct PluginState {
    core: Arc<StateCore>,
    /// The message store's shared state (tickets, flusher); None for a vhost in memory.
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("bytes", &self.core.bytes.load(Ordering::Relaxed))
            .field("durable", &self.shared.is_some())
            .finish()
    }
}

/// What a vhost's exchange states share; the flusher reaches it through the message store.
pub(super) struct StateCore {
    /// Bytes of every entry of the vhost's exchanges, live or only recovered.
    bytes: AtomicU64,
    /// Durable exchanges' states by name: recovered at open (restored or not yet) and
    /// attached since. An entry leaves when its exchange is deleted, or when nothing else
    /// holds it and it is empty.
    registry: Mutex<HashMap<Name, Arc<ExchangeState>>>,
    /// Records written by writers and not yet taken by the flusher.
    pending: Mutex<Vec<Vec<u8>>>,
    /// The file; None for a vhost in memory. Only the flusher (and open) touch it.
    log: Option<Mutex<JournalFile>>,
}

struct JournalFile {
    log: RecordLog,
    /// Bytes in the file (header included).
    len: u64,
    /// Its size right after the last compaction (0: none since open). The next one waits
    /// until the file has doubled since, so records larger than the live estimate (long
    /// exchange names) cannot make every round rewrite the file.
    compacted_len: u64,
}

impl PluginState {
    /// The plugin state of a vhost kept in memory.
    pub fn memory() -> Self {
        PluginState {
            core: Arc::new(StateCore {
                bytes: AtomicU64::new(0),
                registry: Mutex::new(HashMap::new()),
                pending: Mutex::new(Vec::new()),
                log: None,
            }),
            shared: None,
        }
    }

    /// Opens (creating if needed) `vhost_dir/plugin-state.log` and replays it. The caller
    /// (`MessageStore::open`) hands the core to its flusher.
    pub(super) fn open(vhost_dir: &Path, shared: &Arc<Shared>) -> Result<Self, StoreError> {
        let (log, records) = RecordLog::open(vhost_dir, FILE_NAME, HEADER)?;
        let len = std::fs::metadata(log.path())
            .map_err(StoreError::io("stat", log.path()))?
            .len();
        let mut maps: HashMap<Name, StateMap> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            if let Err(reason) = replay(&mut maps, record) {
                // A record that passed its checksum but does not decode: written by a newer
                // or broken version. Everything after it is kept out too, in order.
                tracing::warn!(file = %log.path().display(), record = i, reason,
                    "undecodable plugin state record; it and the records after it are ignored");
                break;
            }
        }
        let mut bytes = 0;
        let registry = maps
            .into_iter()
            .filter(|(_, map)| !map.is_empty())
            .map(|(name, map)| {
                let cost = map.iter().map(|(k, v)| entry_cost(k, v)).sum::<u64>();
                bytes += cost;
                (name, (map, cost))
            })
            .collect::<Vec<_>>();
        let core = Arc::new(StateCore {
            bytes: AtomicU64::new(bytes),
            registry: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            log: Some(Mutex::new(JournalFile {
                log,
                len,
                compacted_len: 0,
            })),
        });
        let state = PluginState {
            core,
            shared: Some(shared.clone()),
        };
        let mut reg = state.core.registry.lock();
        for (name, (map, cost)) in registry {
            let entry = state.new_exchange(name.clone(), true, map, cost);
            reg.insert(name, entry);
        }
        drop(reg);
        Ok(state)
    }

    pub(super) fn core(&self) -> &Arc<StateCore> {
        &self.core
    }

    fn new_exchange(
        &self,
        name: Name,
        durable: bool,
        map: StateMap,
        bytes: u64,
    ) -> Arc<ExchangeState> {
        Arc::new(ExchangeState {
            name,
            core: self.core.clone(),
            shared: if durable { self.shared.clone() } else { None },
            inner: Mutex::new(Inner {
                map,
                bytes,
                deleted: false,
            }),
        })
    }

    /// Whether durable exchanges' state is journaled (the vhost has storage).
    pub fn is_durable(&self) -> bool {
        self.shared.is_some()
    }

    /// Bytes of the vhost's plugin state (live and recovered), as counted against its limit.
    pub fn bytes(&self) -> u64 {
        self.core.bytes.load(Ordering::Relaxed)
    }

    /// The state of exchange `name`. For a durable exchange of a vhost with storage: the one
    /// recovered or already attached under that name (every router of the exchange, whatever
    /// its version, shares it); otherwise a fresh map in memory.
    pub fn attach(&self, name: &str, durable: bool) -> StateHandle {
        if !(durable && self.shared.is_some()) {
            return StateHandle(self.new_exchange(Name::from(name), false, StateMap::new(), 0));
        }
        let mut registry = self.core.registry.lock();
        let state = registry
            .entry(Name::from(name))
            .or_insert_with(|| self.new_exchange(Name::from(name), true, StateMap::new(), 0))
            .clone();
        StateHandle(state)
    }

    /// Exchange `name` was deleted: its state is emptied, its routers' later writes are
    /// refused, and a `drop` record is journaled (no fsync here: the next group commit).
    pub fn drop_exchange(&self, name: &str) {
        let removed = self.core.registry.lock().remove(name);
        if let Some(state) = removed {
            let mut inner = state.inner.lock();
            inner.deleted = true;
            self.core.bytes.fetch_sub(inner.bytes, Ordering::Relaxed);
            inner.bytes = 0;
            inner.map.clear();
            if let Some(shared) = &state.shared {
                let mut record = vec![TAG_DROP];
                push_str(&mut record, &state.name);
                // A failed store writes nothing more; the state is forgotten in memory only.
                let _ = journal(&self.core, shared, record);
            }
        }
    }

    /// Drops the recovered state of every exchange `keep` refuses (one deleted just before a
    /// crash, after its definitions record but before its `drop` record).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let names: Vec<Name> = self
            .core
            .registry
            .lock()
            .keys()
            .filter(|name| !keep(name))
            .cloned()
            .collect();
        for name in names {
            tracing::warn!(exchange = %name, "removing the plugin state of an exchange that no longer exists");
            self.drop_exchange(&name);
        }
    }
}

/// Buffers one journal record and takes its ticket. Like a queue append: the record is in
/// the buffer before its ticket is issued, so a flusher round whose target includes the
/// ticket finds the record (in the buffer it takes, or in an earlier one).
fn journal(core: &StateCore, shared: &Shared, record: Vec<u8>) -> Result<Ticket, StoreError> {
    shared.check_open()?;
    let mut pending = core.pending.lock();
    let wake = pending.is_empty();
    pending.push(record);
    let ticket = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    drop(pending);
    if wake {
        shared.wake_flusher();
    }
    Ok(ticket)
}

/// A router's hold on its exchange's state. Dropping the last hold on an empty durable state
/// removes it from the registry (a declare that failed leaves nothing behind).
pub struct StateHandle(Arc<ExchangeState>);

impl std::ops::Deref for StateHandle {
    type Target = ExchangeState;
    fn deref(&self) -> &ExchangeState {
        &self.0
    }
}

impl Drop for StateHandle {
    fn drop(&mut self) {
        if self.0.shared.is_none() {
            self.0
                .core
                .bytes
                .fetch_sub(self.0.inner.lock().bytes, Ordering::Relaxed);
            return;
        }
        let mut registry = self.0.core.registry.lock();
        // The registry's reference and this one: nobody else can attach while the lock is held.
        if Arc::strong_count(&self.0) == 2
            && self.0.inner.lock().map.is_empty()
            && registry
                .get(&self.0.name)
                .is_some_and(|s| Arc::ptr_eq(s, &self.0))
        {
            registry.remove(&self.0.name);
        }
    }
}

/// One exchange's state.
pub struct ExchangeState {
    name: Name,
    core: Arc<StateCore>,
    /// Set for a journaled (durable) exchange.
    shared: Option<Arc<Shared>>,
    inner: Mutex<Inner>,
}

struct Inner {
    map: StateMap,
    /// Bytes of `map` as counted against the vhost.
    bytes: u64,
    /// The exchange was deleted: nothing more is written.
    deleted: bool,
}

fn entry_cost(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES
}

impl ExchangeState {
    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().map.get(key).cloned()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether writes are journaled.
    pub fn is_durable(&self) -> bool {
        self.shared.is_some()
    }

    /// Up to `limit` keys greater than `after`, in byte order.
    pub fn keys(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        let inner = self.inner.lock();
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        inner
            .map
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// If the value of `key` equals `expected` (None: absent), sets it to `new` (None:
    /// delete) and returns true; otherwise changes nothing and returns false. A durable write
    /// is journaled (buffered; see the module docs) and its ticket noted for this thread.
    /// Deleting is never refused for a limit.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        limits: &StateLimits,
    ) -> Result<bool, StateRefused> {
        let mut inner = self.inner.lock();
        if inner.deleted {
            return Err(StateRefused::Unavailable("the exchange was deleted".into()));
        }
        let old = inner.map.get(key);
        if old.map(Vec::as_slice) != expected {
            return Ok(false);
        }
        let old_cost = old.map_or(0, |v| entry_cost(key, v));
        let new_cost = new.as_ref().map_or(0, |v| entry_cost(key, v));
        if new.is_some() && old.is_none() && inner.map.len() as u64 >= limits.entries_max {
            return Err(StateRefused::ExchangeFull(limits.entries_max));
        }
        // Reserve the growth against the vhost before anything is written.
        let growth = new_cost.saturating_sub(old_cost);
        if DRY_RUN.with(Cell::get) {
            let total = self.core.bytes.load(Ordering::Relaxed);
            return match total.checked_add(growth) {
                Some(sum) if sum <= limits.vhost_bytes_max => Ok(true),
                _ => Err(StateRefused::VhostFull(limits.vhost_bytes_max)),
            };
        }
        if growth > 0 {
            let reserved =
                self.core
                    .bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                        total
                            .checked_add(growth)
                            .filter(|sum| *sum <= limits.vhost_bytes_max)
                    });
            if reserved.is_err() {
                return Err(StateRefused::VhostFull(limits.vhost_bytes_max));
            }
        }
        if let Some(shared) = &self.shared {
            let mut record = vec![if new.is_some() { TAG_PUT } else { TAG_DELETE }];
            push_str(&mut record, &self.name);
            push_str(&mut record, key);
            if let Some(value) = &new {
                record.extend_from_slice(value);
            }
            match journal(&self.core, shared, record) {
                Ok(ticket) => note_thread_ticket(ticket),
                Err(e) if new.is_some() => {
                    self.core.bytes.fetch_sub(growth, Ordering::Relaxed);
                    return Err(StateRefused::Unavailable(e.to_string()));
                }
                // A delete still frees the memory; the store reports its own failure.
                Err(_) => {}
            }
        }
        let shrink = old_cost.saturating_sub(new_cost);
        if shrink > 0 {
            self.core.bytes.fetch_sub(shrink, Ordering::Relaxed);
        }
        inner.bytes = inner.bytes + new_cost - old_cost;
        match new {
            Some(value) => {
                inner.map.insert(key.to_owned(), value);
            }
            None => {
                inner.map.remove(key);
            }
        }
        Ok(true)
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Exchange names are at most 255 bytes and keys are bounded by the caller far below
    // 64 KiB; a longer string is cut rather than written with a wrong length.
    let len = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, &'static str> {
    let (len, rest) = buf
        .split_first_chunk::<2>()
        .ok_or("string length cut short")?;
    let len = usize::from(u16::from_le_bytes(*len));
    let bytes = rest.get(..len).ok_or("string cut short")?;
    *buf = &rest[len..];
    std::str::from_utf8(bytes).map_err(|_| "string is not UTF-8")
}

/// Applies one record to `maps`.
fn replay(maps: &mut HashMap<Name, StateMap>, record: &[u8]) -> Result<(), &'static str> {
    let (&tag, mut rest) = record.split_first().ok_or("empty record")?;
    let exchange = take_str(&mut rest)?;
    match tag {
        TAG_PUT => {
            let key = take_str(&mut rest)?;
            maps.entry(Name::from(exchange))
                .or_default()
                .insert(key.to_owned(), rest.to_vec());
        }
        TAG_DELETE => {
            let key = take_str(&mut rest)?;
            if let Some(map) = maps.get_mut(exchange) {
                map.remove(key);
            }
        }
        TAG_DROP => {
            maps.remove(exchange);
        }
        _ => return Err("unknown record tag"),
    }
    Ok(())
}

impl StateCore {
    /// Flusher: writes the buffered records (one fdatasync). Returns whether there were any,
    /// and the bytes written.
    pub(super) fn flush(&self) -> Result<Option<u64>, StoreError> {
        let Some(file) = &self.log else {
            return Ok(None);
        };
        let records = std::mem::take(&mut *self.pending.lock());
        if records.is_empty() {
            return Ok(None);
        }
        let mut file = file.lock();
        let bytes: u64 = records
            .iter()
            .map(|r| (super::frame::HEADER_LEN + r.len()) as u64)
            .sum();
        file.log.append_all(&records)?;
        file.len += bytes;
        Ok(Some(bytes))
    }

    /// Flusher, after [`StateCore::flush`]: rewrites the log as a snapshot of the live maps
    /// when it has grown far past them. Returns whether it did.
    pub(super) fn compact_if_due(&self) -> Result<bool, StoreError> {
        let Some(file) = &self.log else {
            return Ok(false);
        };
        let mut file = file.lock();
        let live = self.bytes.load(Ordering::Relaxed);
        if file.len < COMPACT_MIN_BYTES
            || file.len < live.saturating_mul(COMPACT_RATIO)
            || file.len < file.compacted_len.saturating_mul(2)
        {
            return Ok(false);
        }
        let states: Vec<Arc<ExchangeState>> = self.registry.lock().values().cloned().collect();
        let mut records = Vec::new();
        for state in states {
            // One exchange's lock at a time, held while its entries are copied out.
            let inner = state.inner.lock();
            if inner.deleted {
                continue;
            }
            for (key, value) in &inner.map {
                let mut record = vec![TAG_PUT];
                push_str(&mut record, &state.name);
                push_str(&mut record, key);
                record.extend_from_slice(value);
                records.push(record);
            }
        }
        file.log.rewrite(&records)?;
        file.len = HEADER.len() as u64
            + records
                .iter()
                .map(|r| (super::frame::HEADER_LEN + r.len()) as u64)
                .sum::<u64>();
        file.compacted_len = file.len;
        Ok(true)
    }
}
