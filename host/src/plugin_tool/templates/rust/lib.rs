//! `{{name}}`: every binding whose key is a prefix of the routing key gets the message (an
//! empty key matches everything). Change `route` and the cases in `cases.toml` to make it yours.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::sync::Mutex;

use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Message,
    Router,
};

/// The bindings of the one exchange this instance serves: (id, key).
static BINDINGS: Mutex<Vec<(BindingId, String)>> = Mutex::new(Vec::new());

fn bindings() -> std::sync::MutexGuard<'static, Vec<(BindingId, String)>> {
    BINDINGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ids of the bindings whose key is a prefix of `routing_key`: the routing rule, kept in
/// plain Rust so `cargo test` checks it natively.
pub fn matching(bindings: &[(BindingId, String)], routing_key: &str) -> Vec<BindingId> {
    bindings
        .iter()
        .filter(|(_, key)| routing_key.starts_with(key.as_str()))
        .map(|(id, _)| *id)
        .collect()
}

struct Plugin;

impl Router for Plugin {
    fn describe() -> Description {
        Description {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "every binding whose key is a prefix of the routing key".into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        // No exchange arguments of its own; return Err(text) to refuse a declare (406).
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        // Ask only for what `route` reads: here the routing key, and the same key always
        // routes the same way, so the broker may cache the answer.
        Ok(Inputs {
            fields: InputFields::ROUTING_KEY,
            headers: HeaderSelection::None,
            cacheable: true,
        })
    }

    fn validate_binding(binding: Binding) -> Result<(), String> {
        if binding.key.len() > 255 {
            return Err("a binding key is at most 255 bytes".into());
        }
        Ok(())
    }

    fn add_binding(binding: Binding) {
        bindings().push((binding.id, binding.key));
    }

    fn remove_binding(id: BindingId) {
        bindings().retain(|(bound, _)| *bound != id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        Ok(matching(&bindings(), &message.routing_key))
    }
}

// Native builds (unit tests) skip the export: its symbol names are not valid for native linkers.
#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        let bound = vec![(1, "order.".to_owned()), (2, String::new()), (3, "x".to_owned())];
        assert_eq!(matching(&bound, "order.eu.1"), vec![1, 2]);
        assert_eq!(matching(&bound, "invoice.7"), vec![2]);
    }
}
