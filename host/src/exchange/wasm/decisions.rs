//! The decision cache of one WASM exchange: routing decisions by the inputs they were made
//! from.
//!
//! A key holds exactly what the plugin was given besides the exchange name (which is fixed per
//! exchange): the body size (always passed), and each input `init` declared: the routing key
//! and the CC/BCC keys, the basic properties, the selected headers (AMQP's wire encoding of
//! each value). Every part is length-prefixed or tagged, so two different inputs never share
//! a key. A plugin reading the body is not cached at all (bodies are too large and too unique).
//!
//! Keys are written into one buffer the cache keeps, so looking a message up allocates nothing
//! once the buffer has grown; only storing a new decision allocates.
//!
//! The cache is only a shortcut: its owner (`router.rs`) empties it on every binding change, a
//! reload, a rollback and an instance rebuild, and stores no decision whose `route` call read
//! a clock, randomness or the state store, whatever the plugin declared.

use std::collections::HashMap;

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_value;

use super::v0_1::{HeaderSelection, InputFields, Inputs};
use crate::exchange::{Destination, RoutingInput};

/// Most bytes (keys and destinations, estimated) one exchange's decision cache holds; it is
/// cleared when full, like when it reaches its entry limit.
pub const ROUTE_CACHE_BYTES_MAX: usize = 4 << 20;
/// Decisions larger than this (key and destinations) are not cached.
pub const ROUTE_CACHE_ENTRY_BYTES_MAX: usize = 64 << 10;

/// What a look-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The decision was appended to the output.
    Hit,
    /// No decision yet: [`Decisions::store`] may keep the one the plugin makes.
    Miss,
    /// This message cannot be cached (the plugin reads bodies, or a header value could not
    /// be encoded).
    Uncacheable,
}

/// Routing decisions by their inputs.
#[derive(Debug, Default)]
pub struct Decisions {
    map: HashMap<Box<[u8]>, Box<[Destination]>>,
    /// Estimated bytes held by `map`.
    bytes: usize,
    entries_max: usize,
    /// The key of the last message looked up (reused: no allocation per message).
    key: Vec<u8>,
}

impl Decisions {
    /// An empty cache of at most `entries_max` decisions.
    pub fn new(entries_max: usize) -> Self {
        Self {
            entries_max,
            ..Self::default()
        }
    }

    /// Number of decisions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no decision is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets every decision.
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Looks up the decision for `message` (with extra routing keys `cc`) under `inputs`,
    /// appending its destinations to `out` on a hit.
    pub fn lookup(
        &mut self,
        inputs: &Inputs,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Lookup {
        if !write_key(inputs, message, cc, &mut self.key) {
            self.key.clear();
            return Lookup::Uncacheable;
        }
        match self.map.get(self.key.as_slice()) {
            Some(hit) => {
                out.extend(hit.iter().cloned());
                Lookup::Hit
            }
            None => Lookup::Miss,
        }
    }

    /// Keeps `destinations` as the decision for the message of the last [`lookup`], which
    /// must have been a [`Lookup::Miss`].
    ///
    /// [`lookup`]: Self::lookup
    pub fn store(&mut self, destinations: &[Destination]) {
        let entry_bytes =
            self.key.len() + std::mem::size_of_val(destinations) + std::mem::size_of::<usize>() * 8;
        if entry_bytes > ROUTE_CACHE_ENTRY_BYTES_MAX {
            return;
        }
        // Full: start over (cheap, and a working set that fits refills it fast).
        if self.map.len() >= self.entries_max || self.bytes + entry_bytes > ROUTE_CACHE_BYTES_MAX {
            self.clear();
        }
        if self
            .map
            .insert(self.key.as_slice().into(), destinations.into())
            .is_none()
        {
            self.bytes += entry_bytes;
        }
    }
}

/// Writes the key of `message` under `inputs` into `key`; false when it is not cacheable.
fn write_key(inputs: &Inputs, message: &RoutingInput<'_>, cc: &[&str], key: &mut Vec<u8>) -> bool {
    key.clear();
    if inputs.fields.contains(InputFields::BODY) {
        return false;
    }
    key.extend_from_slice(&(message.body.len() as u64).to_le_bytes());
    if inputs.fields.contains(InputFields::ROUTING_KEY) {
        put_len(key, 1 + cc.len());
        put_str(key, message.routing_key);
        for k in cc {
            put_str(key, k);
        }
    }
    let p = message.properties;
    if inputs.fields.contains(InputFields::PROPERTIES) {
        for text in [
            p.content_type(),
            p.content_encoding(),
            p.correlation_id(),
            p.reply_to(),
            p.expiration(),
            p.message_id(),
            p.kind(),
            p.user_id(),
            p.app_id(),
            p.cluster_id(),
        ] {
            match text {
                Some(text) => {
                    key.push(1);
                    put_str(key, text.as_str());
                }
                None => key.push(0),
            }
        }
        for byte in [p.delivery_mode(), p.priority()] {
            match byte {
                Some(b) => key.extend_from_slice(&[1, *b]),
                None => key.push(0),
            }
        }
        match p.timestamp() {
            Some(t) => {
                key.push(1);
                key.extend_from_slice(&t.to_le_bytes());
            }
            None => key.push(0),
        }
    }
    let Some(headers) = p.headers() else {
        return true;
    };
    for (name, value) in headers.inner() {
        let selected = match &inputs.headers {
            HeaderSelection::None => return true,
            HeaderSelection::All => true,
            HeaderSelection::Named(names) => names.iter().any(|n| n == name.as_str()),
        };
        if !selected {
            continue;
        }
        put_str(key, name.as_str());
        // The wire encoding: a type tag, then a self-delimiting value. Its depth is bounded
        // by the frame check (`protocol/table.rs`) that let the headers in.
        let buffer = std::mem::take(key);
        match gen_value(value)(WriteContext::from(buffer)) {
            Ok(written) => *key = written.into_inner().0,
            Err(_) => return false,
        }
    }
    true
}

fn put_len(key: &mut Vec<u8>, len: usize) {
    key.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(key: &mut Vec<u8>, text: &str) {
    put_len(key, text.len());
    key.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

    fn inputs(fields: InputFields, headers: HeaderSelection) -> Inputs {
        Inputs {
            fields,
            headers,
            cacheable: true,
        }
    }

    fn key_of(inputs: &Inputs, rk: &str, cc: &[&str], p: &BasicProperties, body: &[u8]) -> Vec<u8> {
        let message = RoutingInput {
            exchange: "x",
            routing_key: rk,
            properties: p,
            body,
        };
        let mut key = Vec::new();
        assert!(write_key(inputs, &message, cc, &mut key));
        key
    }

    fn headers(pairs: &[(&str, &str)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert(
                ShortString::from(*k),
                AMQPValue::LongString(LongString::from(*v)),
            );
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn every_declared_input_is_in_the_key_and_nothing_else() {
        let none = BasicProperties::default();
        let rk = inputs(InputFields::ROUTING_KEY, HeaderSelection::None);
        // Body size is always an input.
        assert_ne!(
            key_of(&rk, "a", &[], &none, b"1"),
            key_of(&rk, "a", &[], &none, b"12")
        );
        assert_eq!(
            key_of(&rk, "a", &[], &none, b"1"),
            key_of(&rk, "a", &[], &none, b"2")
        );
        // CC keys, and where the key boundaries are.
        assert_ne!(
            key_of(&rk, "a", &[], &none, b""),
            key_of(&rk, "a", &["b"], &none, b"")
        );
        assert_ne!(
            key_of(&rk, "ab", &[], &none, b""),
            key_of(&rk, "a", &["b"], &none, b"")
        );
        // Properties only when declared.
        let typed = BasicProperties::default().with_type(ShortString::from("t"));
        assert_eq!(
            key_of(&rk, "a", &[], &none, b""),
            key_of(&rk, "a", &[], &typed, b"")
        );
        let props = inputs(InputFields::PROPERTIES, HeaderSelection::None);
        assert_ne!(
            key_of(&props, "a", &[], &none, b""),
            key_of(&props, "a", &[], &typed, b"")
        );
        // Without the routing-key input, keys do not matter.
        assert_eq!(
            key_of(&props, "a", &["c"], &none, b""),
            key_of(&props, "b", &[], &none, b"")
        );
        // Headers: only the selected ones.
        let named = inputs(
            InputFields::empty(),
            HeaderSelection::Named(vec!["h".into()]),
        );
        assert_eq!(
            key_of(&named, "", &[], &headers(&[("h", "1"), ("i", "1")]), b""),
            key_of(&named, "", &[], &headers(&[("h", "1"), ("i", "2")]), b"")
        );
        assert_ne!(
            key_of(&named, "", &[], &headers(&[("h", "1")]), b""),
            key_of(&named, "", &[], &headers(&[("h", "2")]), b"")
        );
        let all = inputs(InputFields::empty(), HeaderSelection::All);
        assert_ne!(
            key_of(&all, "", &[], &headers(&[("h", "1"), ("i", "1")]), b""),
            key_of(&all, "", &[], &headers(&[("h", "1"), ("i", "2")]), b"")
        );
        assert_ne!(
            key_of(&all, "", &[], &headers(&[("h", "1i")]), b""),
            key_of(&all, "", &[], &headers(&[("h", "1"), ("i", "")]), b"")
        );
    }

    #[test]
    fn hits_after_a_store_and_not_after_a_clear() {
        let none = BasicProperties::default();
        let rk = inputs(InputFields::ROUTING_KEY, HeaderSelection::None);
        let message = RoutingInput {
            exchange: "x",
            routing_key: "k",
            properties: &none,
            body: b"",
        };
        let mut cache = Decisions::new(2);
        let mut out = Vec::new();
        assert_eq!(cache.lookup(&rk, &message, &[], &mut out), Lookup::Miss);
        cache.store(&[Destination::Queue("q".into())]);
        assert_eq!(cache.lookup(&rk, &message, &[], &mut out), Lookup::Hit);
        assert_eq!(out, [Destination::Queue("q".into())]);
        assert_eq!(cache.lookup(&rk, &message, &["c"], &mut out), Lookup::Miss);
        cache.clear();
        assert_eq!(cache.lookup(&rk, &message, &[], &mut out), Lookup::Miss);
        let body = inputs(InputFields::BODY, HeaderSelection::None);
        assert_eq!(
            cache.lookup(&body, &message, &[], &mut out),
            Lookup::Uncacheable
        );
    }

    #[test]
    fn the_entry_limit_empties_the_cache() {
        let none = BasicProperties::default();
        let rk = inputs(InputFields::ROUTING_KEY, HeaderSelection::None);
        let mut cache = Decisions::new(2);
        let mut out = Vec::new();
        for key in ["a", "b", "c"] {
            let message = RoutingInput {
                exchange: "x",
                routing_key: key,
                properties: &none,
                body: b"",
            };
            assert_eq!(cache.lookup(&rk, &message, &[], &mut out), Lookup::Miss);
            cache.store(&[]);
        }
        assert_eq!(cache.len(), 1);
    }
}
