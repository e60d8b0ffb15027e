//! `x-consistent-hash`: RabbitMQ's consistent-hash exchange. Each message goes to exactly one
//! binding, chosen by hashing the routing key (or the header named by the `hash-header`
//! argument, or the property named by `hash-property`); the binding key is an integer weight.
//!
//! Placement follows RabbitMQ 3.8+: every binding owns `weight` consecutive buckets, bindings
//! in the order they were created (here: increasing binding id, which the host assigns in
//! creation order and keeps across restarts), and a message's bucket is Lamping and Veach's
//! jump consistent hash of its 64-bit key hash over the total bucket count. Adding a binding
//! moves only the share of keys its buckets take; removing one shifts the buckets after it,
//! exactly as in RabbitMQ. Which queue a given key lands on differs from RabbitMQ (that uses
//! Erlang's `phash2`), the distribution does not.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bourse_guest::hash::hash64;
use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Message,
    Router,
};

/// Most buckets one exchange may hold (8 bytes each).
pub const MAX_BUCKETS: u32 = 1 << 18;

/// What the hash is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    RoutingKey,
    Header(String),
    Property(Property),
}

/// The properties RabbitMQ's `hash-property` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    MessageId,
    CorrelationId,
    Timestamp,
}

/// Reads `hash-header` / `hash-property` (mutually exclusive, as in RabbitMQ).
pub fn hash_on(arguments: &FieldTable) -> Result<HashOn, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match arguments.get(name) {
            None => Ok(None),
            Some(v) => match v.as_str() {
                Some(s) if !s.is_empty() => Ok(Some(s)),
                _ => Err(format!(
                    "x-consistent-hash: '{name}' must be a non-empty string"
                )),
            },
        }
    };
    match (text("hash-header")?, text("hash-property")?) {
        (None, None) => Ok(HashOn::RoutingKey),
        (Some(h), None) => Ok(HashOn::Header(h.to_owned())),
        (None, Some(p)) => Ok(HashOn::Property(match p {
            "message_id" => Property::MessageId,
            "correlation_id" => Property::CorrelationId,
            "timestamp" => Property::Timestamp,
            other => {
                return Err(format!(
                    "x-consistent-hash: unsupported hash-property '{other}' \
                     (use message_id, correlation_id or timestamp)"
                ));
            }
        })),
        (Some(_), Some(_)) => {
            Err("x-consistent-hash: hash-header and hash-property are mutually exclusive".into())
        }
    }
}

/// The bytes a message is hashed on, or `None` when the message lacks them (it is then not
/// routed: there is nothing consistent to hash).
pub fn hash_input(on: &HashOn, message: &Message) -> Option<Vec<u8>> {
    match on {
        HashOn::RoutingKey => Some(message.routing_key.as_bytes().to_vec()),
        HashOn::Header(h) => Some(message.headers.get(h)?.canonical_bytes()?.into_owned()),
        HashOn::Property(p) => {
            let props = message.properties.as_ref()?;
            match p {
                Property::MessageId => props.message_id.clone().map(String::into_bytes),
                Property::CorrelationId => props.correlation_id.clone().map(String::into_bytes),
                Property::Timestamp => props.timestamp.map(|t| t.to_string().into_bytes()),
            }
        }
    }
}

/// Parses a binding key: a weight of at least 1.
pub fn weight(key: &str) -> Result<u32, String> {
    match key.trim().parse::<u64>() {
        Ok(0) => Err("x-consistent-hash: the binding key (a weight) must be greater than 0".into()),
        Ok(w) if w <= u64::from(MAX_BUCKETS) => Ok(w as u32),
        Ok(_) => Err(format!(
            "x-consistent-hash: weight above the limit of {MAX_BUCKETS}"
        )),
        Err(_) => Err(format!(
            "x-consistent-hash: the binding key must be an integer weight, got {key:?}"
        )),
    }
}

/// Lamping and Veach's jump consistent hash: a bucket in `0..buckets` (`buckets` > 0), such
/// that growing `buckets` by one moves only `1/buckets` of the keys, all into the new bucket.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let mut chosen: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        chosen = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = (1u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        next = ((chosen + 1) as f64 * r) as i64;
    }
    chosen as u32
}

/// The buckets of one exchange: bucket `i` belongs to `owner[i]`.
#[derive(Debug, Default)]
pub struct Ring {
    weights: BTreeMap<BindingId, u32>,
    owner: Vec<BindingId>,
}

impl Ring {
    pub const fn new() -> Self {
        Ring {
            weights: BTreeMap::new(),
            owner: Vec::new(),
        }
    }

    /// Buckets in use.
    pub fn total(&self) -> u32 {
        self.owner.len() as u32
    }

    pub fn add(&mut self, id: BindingId, weight: u32) {
        let newest = self
            .weights
            .last_key_value()
            .is_none_or(|(&last, _)| id > last);
        if self.weights.insert(id, weight).is_none() && newest {
            // The common case, including replays in id order: append, no rebuild.
            self.owner.extend(std::iter::repeat_n(id, weight as usize));
        } else {
            self.rebuild();
        }
    }

    pub fn remove(&mut self, id: BindingId) {
        if self.weights.remove(&id).is_some() {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.owner.clear();
        for (&id, &w) in &self.weights {
            self.owner.extend(std::iter::repeat_n(id, w as usize));
        }
    }

    /// The binding owning the bucket `key` jumps to.
    pub fn pick(&self, key: &[u8]) -> Option<BindingId> {
        let n = self.total();
        (n > 0).then(|| self.owner[jump(hash64(key), n) as usize])
    }
}

struct Exchange {
    on: HashOn,
    ring: Ring,
}

static EXCHANGE: Mutex<Exchange> = Mutex::new(Exchange {
    on: HashOn::RoutingKey,
    ring: Ring::new(),
});

fn exchange() -> MutexGuard<'static, Exchange> {
    EXCHANGE.lock().unwrap_or_else(|e| e.into_inner())
}

struct ConsistentHash;

impl Router for ConsistentHash {
    fn describe() -> Description {
        Description {
            name: "x-consistent-hash".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "one binding per message by weighted consistent hashing (RabbitMQ-compatible)"
                .into(),
        }
    }

    fn validate(arguments: FieldTable) -> Result<(), String> {
        hash_on(&arguments).map(drop)
    }

    fn init(_exchange: String, arguments: FieldTable) -> Result<Inputs, String> {
        let on = hash_on(&arguments)?;
        let inputs = match &on {
            HashOn::RoutingKey => Inputs {
                fields: InputFields::ROUTING_KEY,
                headers: HeaderSelection::None,
                cacheable: true,
            },
            HashOn::Header(h) => Inputs {
                fields: InputFields::empty(),
                headers: HeaderSelection::Named(vec![h.clone()]),
                cacheable: true,
            },
            HashOn::Property(_) => Inputs {
                fields: InputFields::PROPERTIES,
                headers: HeaderSelection::None,
                cacheable: true,
            },
        };
        exchange().on = on;
        Ok(inputs)
    }

    fn validate_binding(binding: Binding) -> Result<(), String> {
        let w = weight(&binding.key)?;
        let total = exchange().ring.total();
        if total.saturating_add(w) > MAX_BUCKETS {
            return Err(format!(
                "x-consistent-hash: the weights of this exchange's bindings would exceed {MAX_BUCKETS}"
            ));
        }
        Ok(())
    }

    fn add_binding(binding: Binding) {
        // A key that no longer parses (never validated) counts as weight 1 rather than vanish.
        let w = weight(&binding.key).unwrap_or(1);
        exchange().ring.add(binding.id, w);
    }

    fn remove_binding(id: BindingId) {
        exchange().ring.remove(id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        let x = exchange();
        Ok(hash_input(&x.on, &message)
            .and_then(|k| x.ring.pick(&k))
            .into_iter()
            .collect())
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(ConsistentHash);

#[cfg(test)]
mod tests {
    use super::*;
    use bourse_guest::{FieldValue, Properties};

    fn spread(ring: &Ring, n: u32) -> BTreeMap<BindingId, u32> {
        let mut counts = BTreeMap::new();
        for i in 0..n {
            *counts
                .entry(ring.pick(format!("k{i}").as_bytes()).unwrap())
                .or_default() += 1;
        }
        counts
    }

    #[test]
    fn jump_is_in_range_and_consistent_when_growing() {
        for key in 0..2000u64 {
            let k = bourse_guest::hash::fmix64(key);
            let mut prev = jump(k, 1);
            assert_eq!(prev, 0);
            for n in 2..50 {
                let b = jump(k, n);
                assert!(b < n);
                // Growing by one bucket either keeps the key or moves it into the new bucket.
                assert!(b == prev || b == n - 1);
                prev = b;
            }
        }
    }

    #[test]
    fn weights_split_traffic_proportionally() {
        let mut ring = Ring::new();
        ring.add(1, 1);
        ring.add(2, 1);
        ring.add(3, 2);
        let counts = spread(&ring, 40_000);
        assert!((9_000..11_000).contains(&counts[&1]), "{counts:?}");
        assert!((9_000..11_000).contains(&counts[&2]), "{counts:?}");
        assert!((19_000..21_000).contains(&counts[&3]), "{counts:?}");
    }

    #[test]
    fn adding_a_binding_moves_only_its_share() {
        let mut ring = Ring::new();
        for id in 1..=4 {
            ring.add(id, 10);
        }
        let before: Vec<_> = (0..10_000)
            .map(|i| ring.pick(format!("k{i}").as_bytes()))
            .collect();
        ring.add(5, 10);
        let mut moved = 0;
        for (i, old) in before.iter().enumerate() {
            let new = ring.pick(format!("k{i}").as_bytes());
            if new != *old {
                assert_eq!(new, Some(5), "a key moved between old bindings");
                moved += 1;
            }
        }
        assert!((1_700..2_300).contains(&moved), "{moved}");
    }

    #[test]
    fn replay_in_any_order_gives_the_same_ring() {
        let mut a = Ring::new();
        let mut b = Ring::new();
        for (id, w) in [(1, 3), (5, 1), (9, 2)] {
            a.add(id, w);
        }
        for (id, w) in [(9, 2), (1, 3), (5, 1)] {
            b.add(id, w);
        }
        assert_eq!(a.owner, b.owner);
        assert_eq!(a.owner, vec![1, 1, 1, 5, 9, 9]);
        a.remove(5);
        assert_eq!(a.owner, vec![1, 1, 1, 9, 9]);
        a.remove(42);
        assert_eq!(a.total(), 5);
    }

    #[test]
    fn weights_parse_like_rabbitmq() {
        assert_eq!(weight("10"), Ok(10));
        assert!(weight("0").unwrap_err().contains("greater than 0"));
        assert!(weight("-1").unwrap_err().contains("integer"));
        assert!(weight("abc").unwrap_err().contains("integer"));
        assert!(
            weight(&(MAX_BUCKETS + 1).to_string())
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn arguments_choose_the_hash_input() {
        let args = |entries: Vec<(&'static str, FieldValue)>| FieldTable::from_entries(entries);
        assert_eq!(hash_on(&FieldTable::empty()), Ok(HashOn::RoutingKey));
        assert_eq!(
            hash_on(&args(vec![(
                "hash-header",
                FieldValue::LongString("user".into())
            )])),
            Ok(HashOn::Header("user".into()))
        );
        assert_eq!(
            hash_on(&args(vec![(
                "hash-property",
                FieldValue::LongString("message_id".into())
            )])),
            Ok(HashOn::Property(Property::MessageId))
        );
        assert!(
            hash_on(&args(vec![(
                "hash-property",
                FieldValue::LongString("app_id".into())
            )]))
            .is_err()
        );
        assert!(hash_on(&args(vec![("hash-header", FieldValue::Int32(1))])).is_err());
        let both = args(vec![
            ("hash-header", FieldValue::LongString("a".into())),
            ("hash-property", FieldValue::LongString("timestamp".into())),
        ]);
        assert!(hash_on(&both).unwrap_err().contains("mutually exclusive"));
        // Arguments that belong to the broker are left alone.
        assert!(
            hash_on(&args(vec![(
                "alternate-exchange",
                FieldValue::LongString("ae".into())
            )]))
            .is_ok()
        );
    }

    #[test]
    fn hash_inputs_come_from_the_message() {
        let mut m = Message {
            exchange: "x".into(),
            routing_key: "rk".into(),
            cc: vec![],
            properties: None,
            headers: FieldTable::from_entries([("user", FieldValue::Int64(42))]),
            body_size: 0,
            body: None,
        };
        assert_eq!(hash_input(&HashOn::RoutingKey, &m), Some(b"rk".to_vec()));
        assert_eq!(
            hash_input(&HashOn::Header("user".into()), &m),
            Some(b"42".to_vec())
        );
        assert_eq!(hash_input(&HashOn::Header("nope".into()), &m), None);
        assert_eq!(hash_input(&HashOn::Property(Property::Timestamp), &m), None);
        m.properties = Some(Properties {
            content_type: None,
            content_encoding: None,
            delivery_mode: None,
            priority: None,
            correlation_id: Some("c-1".into()),
            reply_to: None,
            expiration: None,
            message_id: None,
            timestamp: Some(1_700_000_000),
            message_type: None,
            user_id: None,
            app_id: None,
            cluster_id: None,
        });
        assert_eq!(
            hash_input(&HashOn::Property(Property::Timestamp), &m),
            Some(b"1700000000".to_vec())
        );
        assert_eq!(
            hash_input(&HashOn::Property(Property::CorrelationId), &m),
            Some(b"c-1".to_vec())
        );
        assert_eq!(hash_input(&HashOn::Property(Property::MessageId), &m), None);
    }
}
