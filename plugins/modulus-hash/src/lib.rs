//! `x-modulus-hash`: each message goes to exactly one binding, chosen as
//! `hash64(routing key) % number of bindings` over the bindings sorted by id.
//!
//! Unlike `x-consistent-hash`, adding or removing a binding moves most keys; in exchange the
//! choice is trivial to predict from outside (the Python port `x-py-modulus-hash` computes the
//! same answer), which makes it a good reference for tests.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::sync::Mutex;

use bourse_guest::hash::hash64;
use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Message,
    Router,
};

/// The bound ids in increasing order: the modulus picks by position.
#[derive(Debug, Default)]
pub struct Ring {
    ids: Vec<BindingId>,
}

impl Ring {
    pub const fn new() -> Self {
        Ring { ids: Vec::new() }
    }

    pub fn add(&mut self, id: BindingId) {
        if let Err(at) = self.ids.binary_search(&id) {
            self.ids.insert(at, id);
        }
    }

    pub fn remove(&mut self, id: BindingId) {
        if let Ok(at) = self.ids.binary_search(&id) {
            self.ids.remove(at);
        }
    }

    /// The binding `key` goes to, if any binding exists.
    pub fn pick(&self, key: &[u8]) -> Option<BindingId> {
        let n = self.ids.len() as u64;
        (n > 0).then(|| self.ids[(hash64(key) % n) as usize])
    }
}

static RING: Mutex<Ring> = Mutex::new(Ring::new());

fn ring() -> std::sync::MutexGuard<'static, Ring> {
    RING.lock().unwrap_or_else(|e| e.into_inner())
}

struct ModulusHash;

impl Router for ModulusHash {
    fn describe() -> Description {
        Description {
            name: "x-modulus-hash".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "one binding per message: hash of the routing key modulo the binding count"
                .into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        // No arguments of its own; others (alternate-exchange, ...) belong to the broker.
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        Ok(Inputs {
            fields: InputFields::ROUTING_KEY,
            headers: HeaderSelection::None,
            cacheable: true,
        })
    }

    fn validate_binding(_binding: Binding) -> Result<(), String> {
        // Any key and arguments: a binding is just one more slot.
        Ok(())
    }

    fn add_binding(binding: Binding) {
        ring().add(binding.id);
    }

    fn remove_binding(id: BindingId) {
        ring().remove(id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        Ok(ring()
            .pick(message.routing_key.as_bytes())
            .into_iter()
            .collect())
    }
}

// Native builds (unit tests) skip the export: its symbol names are not valid for native linkers.
#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(ModulusHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_by_position_in_id_order() {
        let mut ring = Ring::new();
        assert_eq!(ring.pick(b"k"), None);
        for id in [30, 10, 20] {
            ring.add(id);
        }
        // hash64("order.eu.42") = 0x4a3f654452954981, which is 1 mod 3 -> the second id.
        assert_eq!(0x4a3f_6544_5295_4981_u64 % 3, 1);
        assert_eq!(ring.pick(b"order.eu.42"), Some(20));
        ring.remove(10);
        ring.remove(99);
        assert_eq!(ring.ids, vec![20, 30]);
    }

    #[test]
    fn spreads_keys_over_every_binding() {
        let mut ring = Ring::new();
        for id in 1..=4 {
            ring.add(id);
        }
        let mut counts = [0u32; 5];
        for i in 0..4000 {
            counts[ring.pick(format!("key-{i}").as_bytes()).unwrap() as usize] += 1;
        }
        assert!(
            counts[1..].iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
