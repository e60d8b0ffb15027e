//! `x-regex`: the binding key is a regular expression (Rust `regex` syntax) that must match the
//! whole routing key; a message goes to every binding matching its routing key or one of its
//! `CC`/`BCC` keys. Matching is linear-time (no backtracking), and each pattern's compiled size
//! is capped so one binding cannot take the instance's memory.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Level,
    Message, Router,
};
use regex::{Regex, RegexBuilder};

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Cap on one compiled pattern (and on its lazy DFA cache), in bytes.
pub const MAX_COMPILED_BYTES: usize = 256 * 1024;

/// Compiles a binding key, anchored at both ends.
pub fn compile(key: &str) -> Result<Regex, String> {
    if key.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "x-regex: pattern longer than {MAX_PATTERN_LEN} bytes"
        ));
    }
    RegexBuilder::new(&format!("^(?:{key})$"))
        .size_limit(MAX_COMPILED_BYTES)
        .dfa_size_limit(MAX_COMPILED_BYTES)
        .nest_limit(64)
        .build()
        .map_err(|e| format!("x-regex: invalid pattern {key:?}: {e}"))
}

#[derive(Debug, Default)]
pub struct Bindings {
    patterns: BTreeMap<BindingId, Regex>,
}

impl Bindings {
    pub const fn new() -> Self {
        Bindings {
            patterns: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, id: BindingId, re: Regex) {
        self.patterns.insert(id, re);
    }

    pub fn remove(&mut self, id: BindingId) {
        self.patterns.remove(&id);
    }

    /// The bindings whose pattern matches one of `keys`.
    pub fn matching<'k>(&self, keys: impl Iterator<Item = &'k str> + Clone) -> Vec<BindingId> {
        self.patterns
            .iter()
            .filter(|(_, re)| keys.clone().any(|k| re.is_match(k)))
            .map(|(id, _)| *id)
            .collect()
    }
}

static BINDINGS: Mutex<Bindings> = Mutex::new(Bindings::new());

fn bindings() -> MutexGuard<'static, Bindings> {
    BINDINGS.lock().unwrap_or_else(|e| e.into_inner())
}

struct RegexExchange;

impl Router for RegexExchange {
    fn describe() -> Description {
        Description {
            name: "x-regex".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary:
                "routes to every binding whose key, a regular expression, matches the routing key"
                    .into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        Ok(Inputs {
            fields: InputFields::ROUTING_KEY,
            headers: HeaderSelection::None,
            cacheable: true,
        })
    }

    fn validate_binding(binding: Binding) -> Result<(), String> {
        compile(&binding.key).map(drop)
    }

    fn add_binding(binding: Binding) {
        match compile(&binding.key) {
            Ok(re) => bindings().add(binding.id, re),
            Err(e) => bourse_guest::log(Level::Warn, &e),
        }
    }

    fn remove_binding(id: BindingId) {
        bindings().remove(id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        Ok(bindings().matching(message.routing_keys()))
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(RegexExchange);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_whole_key() {
        let mut b = Bindings::new();
        b.add(1, compile(r"order\.(eu|us)\.\d+").unwrap());
        b.add(2, compile("order").unwrap());
        b.add(3, compile(".*").unwrap());
        b.add(4, compile("a|b").unwrap());
        assert_eq!(b.matching(["order.eu.42"].into_iter()), vec![1, 3]);
        assert_eq!(b.matching(["order"].into_iter()), vec![2, 3]);
        // The alternation is grouped before anchoring: "ab" matches neither branch whole.
        assert_eq!(b.matching(["ab"].into_iter()), vec![3]);
        assert_eq!(b.matching(["x", "b"].into_iter()), vec![3, 4]);
        b.remove(3);
        assert_eq!(b.matching([""].into_iter()), Vec::<BindingId>::new());
    }

    #[test]
    fn invalid_and_oversized_patterns_are_refused() {
        assert!(
            compile("(unclosed")
                .unwrap_err()
                .starts_with("x-regex: invalid pattern")
        );
        assert!(
            compile(&"a".repeat(MAX_PATTERN_LEN + 1))
                .unwrap_err()
                .contains("longer")
        );
        assert!(
            compile(r"\w{1000}\w{1000}")
                .unwrap_err()
                .contains("invalid pattern")
        );
    }
}
