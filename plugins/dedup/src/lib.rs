//! `x-dedup`: a fanout exchange that drops a message whose deduplication key was already seen
//! within a time window, after the naming of RabbitMQ's message-deduplication plugin.
//!
//! The key is the value of the header named by the exchange argument `x-deduplication-header`,
//! or else of the message header `x-deduplication-header` itself, or else the `message-id`
//! property; a message with none of them is routed unchecked. A key is remembered for
//! `x-cache-ttl` milliseconds (exchange argument, overridden per message by an `x-cache-ttl`
//! header).
//!
//! Seen keys live in the host's per-exchange `state` store, not in instance memory, so a trap
//! or reload forgets nothing. Entries hold their expiry time; every route call also sweeps a
//! couple of stored keys (a cursor walking the key space), deleting expired ones, so the store
//! holds roughly the keys of the last window. When the store is full the message is routed
//! unchecked (fail open) and a warning is logged.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use bourse_guest::hash::hash64;
use bourse_guest::state::StateError;
use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Level,
    Message, Router,
};

/// The window when `x-cache-ttl` is not given: 5 minutes.
pub const DEFAULT_TTL_MS: u64 = 5 * 60 * 1000;
/// The longest window: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// The message header holding the key when no `x-deduplication-header` argument names one.
pub const KEY_HEADER: &str = "x-deduplication-header";
/// Keys swept per routed message.
pub const SWEEP_PER_MESSAGE: u32 = 2;
/// Keys swept when the store is full, before retrying once.
pub const SWEEP_WHEN_FULL: u32 = 256;

/// The host's `state` interface, abstracted so the logic runs natively in tests.
pub trait Store {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StateError>;
    fn keys(&self, after: Option<&str>, limit: u32) -> Vec<String>;
}

/// One exchange's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub ttl_ms: u64,
    pub key_header: String,
}

/// Reads the exchange arguments.
pub fn config(arguments: &FieldTable) -> Result<Config, String> {
    let ttl_ms = match arguments.get("x-cache-ttl") {
        None => DEFAULT_TTL_MS,
        Some(v) => match v.as_u64_lenient() {
            Some(ms) if (1..=MAX_TTL_MS).contains(&ms) => ms,
            _ => {
                return Err(format!(
                    "x-dedup: x-cache-ttl must be milliseconds between 1 and {MAX_TTL_MS}"
                ));
            }
        },
    };
    if let Some(v) = arguments.get("x-cache-size") {
        // Accepted for compatibility with RabbitMQ's plugin; the host's state cap bounds the cache.
        if v.as_u64_lenient().is_none_or(|n| n == 0) {
            return Err("x-dedup: x-cache-size must be a positive integer".into());
        }
    }
    if let Some(v) = arguments.get("x-cache-persistence")
        && !matches!(v.as_str(), Some("memory" | "disk"))
    {
        return Err("x-dedup: x-cache-persistence must be \"memory\" or \"disk\"".into());
    }
    let key_header = match arguments.get(KEY_HEADER) {
        None => KEY_HEADER.to_owned(),
        Some(v) => match v.as_str() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => return Err(format!("x-dedup: {KEY_HEADER} must name a header")),
        },
    };
    Ok(Config { ttl_ms, key_header })
}

/// The message's deduplication key, if it has one.
pub fn dedup_key(config: &Config, message: &Message) -> Option<Vec<u8>> {
    if let Some(v) = message.headers.get(&config.key_header) {
        return v.canonical_bytes().map(|b| b.into_owned());
    }
    let id = message.properties.as_ref()?.message_id.as_ref()?;
    Some(id.clone().into_bytes())
}

/// How long this message's key is remembered.
pub fn ttl_ms(config: &Config, message: &Message) -> u64 {
    message
        .headers
        .get("x-cache-ttl")
        .and_then(|v| v.as_u64_lenient())
        .map_or(config.ttl_ms, |ms| ms.clamp(1, MAX_TTL_MS))
}

/// The store key for a deduplication key: readable when short UTF-8, else a 128-bit hash.
pub fn store_key(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) if s.len() <= 200 => format!("d:{s}"),
        _ => {
            let mut salted = Vec::with_capacity(raw.len() + 1);
            salted.push(0x01);
            salted.extend_from_slice(raw);
            format!("h:{:016x}{:016x}", hash64(raw), hash64(&salted))
        }
    }
}

fn expiry(value: &[u8]) -> u64 {
    value.try_into().map_or(0, u64::from_be_bytes)
}

/// What happened to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First sighting in the window: route it (its key is now remembered).
    New,
    /// Seen within the window: drop it.
    Duplicate,
    /// Could not be recorded: route it anyway.
    Unchecked(StateError),
}

/// The instance's memory: the bindings and where the sweep left off.
#[derive(Debug, Default)]
pub struct Dedup {
    pub bindings: BTreeSet<BindingId>,
    pub config: Option<Config>,
    cursor: Option<String>,
}

impl Dedup {
    pub const fn new() -> Self {
        Dedup {
            bindings: BTreeSet::new(),
            config: None,
            cursor: None,
        }
    }

    /// Records `key` unless it is live, deciding the message's fate.
    pub fn check(&mut self, store: &impl Store, key: &str, now: u64, ttl: u64) -> Verdict {
        let mut swept_for_room = false;
        for _ in 0..4 {
            let current = store.get(key);
            if current.as_deref().is_some_and(|v| expiry(v) > now) {
                return Verdict::Duplicate;
            }
            let until = now.saturating_add(ttl).to_be_bytes();
            match store.cas(key, current.as_deref(), Some(&until)) {
                Ok(true) => return Verdict::New,
                // Someone changed it in between: look again.
                Ok(false) => {}
                Err(StateError::Full) if !swept_for_room => {
                    swept_for_room = true;
                    self.sweep(store, now, SWEEP_WHEN_FULL);
                }
                Err(e) => return Verdict::Unchecked(e),
            }
        }
        // Lost the race every time: another writer keeps recording this key.
        Verdict::Duplicate
    }

    /// Deletes expired entries among the next `budget` keys after the cursor.
    pub fn sweep(&mut self, store: &impl Store, now: u64, budget: u32) {
        let keys = store.keys(self.cursor.as_deref(), budget);
        for k in &keys {
            if let Some(v) = store.get(k)
                && expiry(&v) <= now
            {
                // Losing this race means the key was just re-recorded: keep it.
                let _ = store.cas(k, Some(&v), None);
            }
        }
        self.cursor = if keys.len() < budget as usize {
            None
        } else {
            keys.last().cloned()
        };
    }

    /// Routes one message: all bindings, unless it is a duplicate.
    pub fn route(&mut self, store: &impl Store, now: u64, message: &Message) -> Vec<BindingId> {
        let Some(config) = self.config.clone() else {
            return Vec::new();
        };
        self.sweep(store, now, SWEEP_PER_MESSAGE);
        let Some(raw) = dedup_key(&config, message) else {
            return self.all();
        };
        match self.check(store, &store_key(&raw), now, ttl_ms(&config, message)) {
            Verdict::New => self.all(),
            Verdict::Duplicate => Vec::new(),
            Verdict::Unchecked(e) => {
                bourse_guest::log(
                    Level::Warn,
                    &format!("x-dedup: key not recorded ({e:?}), routed unchecked"),
                );
                self.all()
            }
        }
    }

    fn all(&self) -> Vec<BindingId> {
        self.bindings.iter().copied().collect()
    }
}

/// The host's store.
struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        bourse_guest::state::get(key)
    }

    fn cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StateError> {
        bourse_guest::state::compare_and_swap(key, expected, new)
    }

    fn keys(&self, after: Option<&str>, limit: u32) -> Vec<String> {
        bourse_guest::state::keys(after, limit)
    }
}

static DEDUP: Mutex<Dedup> = Mutex::new(Dedup::new());

fn dedup() -> MutexGuard<'static, Dedup> {
    DEDUP.lock().unwrap_or_else(|e| e.into_inner())
}

struct DedupExchange;

impl Router for DedupExchange {
    fn describe() -> Description {
        Description {
            name: "x-dedup".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary:
                "fanout that drops messages whose deduplication key was seen within x-cache-ttl"
                    .into(),
        }
    }

    fn validate(arguments: FieldTable) -> Result<(), String> {
        config(&arguments).map(drop)
    }

    fn init(_exchange: String, arguments: FieldTable) -> Result<Inputs, String> {
        let config = config(&arguments)?;
        let headers = HeaderSelection::Named(vec![config.key_header.clone(), "x-cache-ttl".into()]);
        dedup().config = Some(config);
        Ok(Inputs {
            fields: InputFields::PROPERTIES,
            headers,
            cacheable: false,
        })
    }

    fn validate_binding(_binding: Binding) -> Result<(), String> {
        Ok(())
    }

    fn add_binding(binding: Binding) {
        dedup().bindings.insert(binding.id);
    }

    fn remove_binding(id: BindingId) {
        dedup().bindings.remove(&id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        let now = bourse_guest::clock::now_millis();
        Ok(dedup().route(&HostStore, now, &message))
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(DedupExchange);

#[cfg(test)]
mod tests {
    use super::*;
    use bourse_guest::{FieldValue, Properties};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// The host's store as the WIT describes it, with a small entry cap.
    struct MemStore {
        map: RefCell<BTreeMap<String, Vec<u8>>>,
        cap: usize,
    }

    impl MemStore {
        fn new(cap: usize) -> Self {
            MemStore {
                map: RefCell::default(),
                cap,
            }
        }
    }

    impl Store for MemStore {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.map.borrow().get(key).cloned()
        }

        fn cas(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: Option<&[u8]>,
        ) -> Result<bool, StateError> {
            let mut map = self.map.borrow_mut();
            if map.get(key).map(Vec::as_slice) != expected {
                return Ok(false);
            }
            match new {
                None => {
                    map.remove(key);
                }
                Some(v) => {
                    if !map.contains_key(key) && map.len() >= self.cap {
                        return Err(StateError::Full);
                    }
                    map.insert(key.to_owned(), v.to_vec());
                }
            }
            Ok(true)
        }

        fn keys(&self, after: Option<&str>, limit: u32) -> Vec<String> {
            use std::ops::Bound::{Excluded, Unbounded};
            let map = self.map.borrow();
            let lower = after.map_or(Unbounded, |a| Excluded(a.to_owned()));
            map.range((lower, Unbounded))
                .take(limit as usize)
                .map(|(k, _)| k.clone())
                .collect()
        }
    }

    fn message(id: Option<&str>, headers: FieldTable) -> Message {
        Message {
            exchange: "dedup".into(),
            routing_key: String::new(),
            cc: vec![],
            properties: Some(Properties {
                content_type: None,
                content_encoding: None,
                delivery_mode: None,
                priority: None,
                correlation_id: None,
                reply_to: None,
                expiration: None,
                message_id: id.map(str::to_owned),
                timestamp: None,
                message_type: None,
                user_id: None,
                app_id: None,
                cluster_id: None,
            }),
            headers,
            body_size: 0,
            body: None,
        }
    }

    fn exchange(args: FieldTable) -> Dedup {
        let mut d = Dedup::new();
        d.config = Some(config(&args).unwrap());
        d.bindings.extend([7, 9]);
        d
    }

    #[test]
    fn drops_repeats_within_the_window_only() {
        let store = MemStore::new(100);
        let mut d = exchange(FieldTable::from_entries([(
            "x-cache-ttl",
            FieldValue::Int32(1000),
        )]));
        let m = message(Some("m-1"), FieldTable::empty());
        assert_eq!(d.route(&store, 10_000, &m), vec![7, 9]);
        assert_eq!(d.route(&store, 10_500, &m), Vec::<BindingId>::new());
        assert_eq!(d.route(&store, 10_999, &m), Vec::<BindingId>::new());
        assert_eq!(d.route(&store, 11_000, &m), vec![7, 9]);
        // Messages without a key are never dropped.
        let anon = message(None, FieldTable::empty());
        assert_eq!(d.route(&store, 11_001, &anon), vec![7, 9]);
        assert_eq!(d.route(&store, 11_002, &anon), vec![7, 9]);
    }

    #[test]
    fn key_header_wins_over_message_id_and_ttl_header_overrides() {
        let store = MemStore::new(100);
        let mut d = exchange(FieldTable::empty());
        let h = |k: &str, ttl: i32| {
            message(
                Some("same-id"),
                FieldTable::from_entries([
                    (KEY_HEADER, FieldValue::LongString(k.into())),
                    ("x-cache-ttl", FieldValue::Int32(ttl)),
                ]),
            )
        };
        assert_eq!(d.route(&store, 0, &h("a", 10)), vec![7, 9]);
        assert_eq!(d.route(&store, 1, &h("b", 10)), vec![7, 9]);
        assert_eq!(d.route(&store, 5, &h("a", 10)), Vec::<BindingId>::new());
        assert_eq!(d.route(&store, 10, &h("a", 10)), vec![7, 9]);
    }

    #[test]
    fn a_named_header_replaces_the_default_one() {
        let store = MemStore::new(100);
        let args =
            FieldTable::from_entries([(KEY_HEADER, FieldValue::LongString("order-id".into()))]);
        let mut d = exchange(args);
        let m = message(
            None,
            FieldTable::from_entries([("order-id", FieldValue::Int64(42))]),
        );
        assert_eq!(d.route(&store, 0, &m), vec![7, 9]);
        assert_eq!(d.route(&store, 1, &m), Vec::<BindingId>::new());
        assert_eq!(store.get("d:42").map(|v| expiry(&v)), Some(DEFAULT_TTL_MS));
    }

    #[test]
    fn sweeping_keeps_the_store_near_the_live_window() {
        let store = MemStore::new(10_000);
        let mut d = exchange(FieldTable::from_entries([(
            "x-cache-ttl",
            FieldValue::Int32(100),
        )]));
        for i in 0..5_000u64 {
            d.route(
                &store,
                i,
                &message(Some(&format!("id-{i}")), FieldTable::empty()),
            );
        }
        // About 100 keys are live; the sweep (2 per message) keeps the rest from piling up.
        let stored = store.map.borrow().len();
        assert!(stored < 1_500, "{stored} entries stored");
    }

    #[test]
    fn a_full_store_is_swept_then_fails_open() {
        let store = MemStore::new(3);
        let mut d = exchange(FieldTable::from_entries([(
            "x-cache-ttl",
            FieldValue::Int32(1000),
        )]));
        for i in 0..3 {
            d.route(
                &store,
                0,
                &message(Some(&format!("{i}")), FieldTable::empty()),
            );
        }
        let fresh = message(Some("fresh"), FieldTable::empty());
        assert_eq!(
            d.check(&store, &store_key(b"fresh"), 10, 1000),
            Verdict::Unchecked(StateError::Full)
        );
        assert_eq!(d.route(&store, 10, &fresh), vec![7, 9]);
        // Once the old entries expire, a full store makes room.
        assert_eq!(
            d.check(&store, &store_key(b"fresh"), 2_000, 1000),
            Verdict::New
        );
        assert_eq!(
            d.check(&store, &store_key(b"fresh"), 2_001, 1000),
            Verdict::Duplicate
        );
    }

    #[test]
    fn arguments_are_checked() {
        let args = |e: Vec<(&'static str, FieldValue)>| config(&FieldTable::from_entries(e));
        assert_eq!(args(vec![]).unwrap().ttl_ms, DEFAULT_TTL_MS);
        assert_eq!(
            args(vec![("x-cache-ttl", FieldValue::LongString("1500".into()))])
                .unwrap()
                .ttl_ms,
            1500
        );
        assert!(args(vec![("x-cache-ttl", FieldValue::Int32(0))]).is_err());
        assert!(args(vec![("x-cache-size", FieldValue::Int32(-5))]).is_err());
        assert!(args(vec![("x-cache-size", FieldValue::Int32(1000))]).is_ok());
        assert!(
            args(vec![(
                "x-cache-persistence",
                FieldValue::LongString("tape".into())
            )])
            .is_err()
        );
        assert!(args(vec![(KEY_HEADER, FieldValue::LongString(String::new()))]).is_err());
    }

    #[test]
    fn long_or_binary_keys_are_hashed() {
        assert_eq!(store_key(b"abc"), "d:abc");
        let long = store_key(&[b'x'; 300]);
        assert!(long.starts_with("h:") && long.len() == 34, "{long}");
        assert_ne!(store_key(&[0xff, 0]), store_key(&[0xff, 1]));
    }
}
