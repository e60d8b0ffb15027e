//! `x-header-expr`: the binding key is a boolean expression over the message's headers, e.g.
//! `region == "eu" && priority >= 5`; a message goes to every binding whose expression is
//! true. The language is `bourse-expr`'s; names are top-level header names.
//!
//! Expressions are parsed when a binding is validated and again when it is added (a replay
//! after a trap re-parses), never per message.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bourse_expr::{Expr, Value};
use bourse_guest::{
    Binding, BindingId, Description, FieldTable, FieldValue, HeaderSelection, InputFields, Inputs,
    Level, Message, Router,
};

/// Parses a binding key; names are header names, used as they are.
pub fn parse_key(key: &str) -> Result<Expr<String>, String> {
    if key.trim().is_empty() {
        return Err(
            "x-header-expr: the binding key must be an expression, e.g. region == \"eu\"".into(),
        );
    }
    bourse_expr::parse(key, |name| Ok(name.to_owned()))
        .map_err(|e| format!("x-header-expr: invalid binding key {key:?}: {e}"))
}

/// The expression view of a header value.
pub fn value_of(v: &FieldValue) -> Value<'_> {
    match v {
        FieldValue::Void => Value::Null,
        FieldValue::Boolean(b) => Value::Bool(*b),
        FieldValue::Float32(f) => Value::Float(f64::from(*f)),
        FieldValue::Float64(f) => Value::Float(*f),
        FieldValue::Decimal(d) => Value::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        FieldValue::ShortString(s) | FieldValue::LongString(s) => Value::Str(s),
        FieldValue::RawString(b) | FieldValue::ByteArray(b) => Value::Bytes(b),
        FieldValue::Timestamp(t) => Value::Int(i128::from(*t)),
        FieldValue::Table(_) | FieldValue::Array(_) => Value::Other,
        other => Value::Int(other.as_i64().map_or(0, i128::from)),
    }
}

/// The bindings and their parsed expressions.
#[derive(Debug, Default)]
pub struct Bindings {
    exprs: BTreeMap<BindingId, Expr<String>>,
}

impl Bindings {
    pub const fn new() -> Self {
        Bindings {
            exprs: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, id: BindingId, expr: Expr<String>) {
        self.exprs.insert(id, expr);
    }

    pub fn remove(&mut self, id: BindingId) {
        self.exprs.remove(&id);
    }

    /// The bindings whose expression holds for `headers`.
    pub fn matching(&self, headers: &FieldTable) -> Vec<BindingId> {
        let lookup = |name: &String| headers.get(name).map(value_of);
        self.exprs
            .iter()
            .filter(|(_, e)| e.eval(&lookup))
            .map(|(id, _)| *id)
            .collect()
    }
}

static BINDINGS: Mutex<Bindings> = Mutex::new(Bindings::new());

fn bindings() -> MutexGuard<'static, Bindings> {
    BINDINGS.lock().unwrap_or_else(|e| e.into_inner())
}

struct HeaderExpr;

impl Router for HeaderExpr {
    fn describe() -> Description {
        Description {
            name: "x-header-expr".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "routes to every binding whose key, a boolean expression over headers, holds"
                .into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        // Which headers matter depends on bindings added later, so ask for all of them.
        Ok(Inputs {
            fields: InputFields::empty(),
            headers: HeaderSelection::All,
            cacheable: true,
        })
    }

    fn validate_binding(binding: Binding) -> Result<(), String> {
        parse_key(&binding.key).map(drop)
    }

    fn add_binding(binding: Binding) {
        match parse_key(&binding.key) {
            Ok(expr) => bindings().add(binding.id, expr),
            // Only reachable if the host skipped validate-binding: such a binding matches nothing.
            Err(e) => bourse_guest::log(Level::Warn, &e),
        }
    }

    fn remove_binding(id: BindingId) {
        bindings().remove(id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        Ok(bindings().matching(&message.headers))
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(HeaderExpr);

#[cfg(test)]
mod tests {
    use super::*;
    use bourse_guest::{Decimal, Field};

    fn headers() -> FieldTable {
        let mut t = FieldTable::from_entries([
            ("region", FieldValue::LongString("eu".into())),
            ("priority", FieldValue::Uint8(7)),
            (
                "price",
                FieldValue::Decimal(Decimal {
                    scale: 2,
                    value: 1999,
                }),
            ),
            ("urgent", FieldValue::Boolean(true)),
            ("nested", FieldValue::Table(0)),
        ]);
        t.tables.push(vec![Field {
            name: "x".into(),
            value: FieldValue::Void,
        }]);
        t
    }

    #[test]
    fn routes_to_every_matching_binding() {
        let mut b = Bindings::new();
        b.add(1, parse_key(r#"region == "eu" && priority >= 5"#).unwrap());
        b.add(2, parse_key(r#"region == "us""#).unwrap());
        b.add(3, parse_key("price < 20 && urgent").unwrap());
        b.add(4, parse_key("exists(nested) && !exists(missing)").unwrap());
        b.add(5, parse_key("nested == 1 || missing != 1").unwrap());
        assert_eq!(b.matching(&headers()), vec![1, 3, 4]);
        b.remove(3);
        assert_eq!(b.matching(&headers()), vec![1, 4]);
        assert_eq!(b.matching(&FieldTable::empty()), Vec::<BindingId>::new());
    }

    #[test]
    fn invalid_keys_are_explained() {
        let e = parse_key("region = 'eu'").unwrap_err();
        assert!(e.contains("use '=='") && e.contains("byte 7"), "{e}");
        assert!(
            parse_key("  ")
                .unwrap_err()
                .contains("must be an expression")
        );
    }
}
