//! `x-json-route`: reads the message body as JSON and routes to every binding whose predicate
//! holds. A binding states its predicate either as the binding key, a `bourse-expr` expression
//! whose names are JSON paths (`$.type == "order" && $.total >= 100`), or with the binding
//! arguments `x-json-path` (a path) and optionally `x-json-equals` (a value; without it the path
//! only has to exist). An empty key without arguments matches every JSON body. A body that is
//! not JSON, or that the host did not pass (too large), goes nowhere.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bourse_expr::{CmpOp, Expr, Literal, Operand, Value};
use bourse_guest::{
    Binding, BindingId, Description, FieldTable, FieldValue, HeaderSelection, InputFields, Inputs,
    Level, Message, Router,
};
use serde_json::Value as Json;

/// One step of a JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Parses `$`, `$.a.b`, `$.items[0]`, `$["odd key"].x`, `$['k']`.
pub fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("invalid JSON path {path:?}: {why}");
    let rest = path
        .strip_prefix('$')
        .ok_or_else(|| bad("a path starts with '$'"))?;
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                i = start;
                while i < b.len() && !matches!(b[i], b'.' | b'[') {
                    i += 1;
                }
                if i == start {
                    return Err(bad("empty name after '.'"));
                }
                steps.push(Step::Key(rest[start..i].to_owned()));
            }
            b'[' => {
                let close = rest[i..].find(']').ok_or_else(|| bad("unclosed '['"))? + i;
                let inner = rest[i + 1..close].trim();
                let quoted = inner.len() >= 2
                    && ((inner.starts_with('"') && inner.ends_with('"'))
                        || (inner.starts_with('\'') && inner.ends_with('\'')));
                if quoted {
                    steps.push(Step::Key(inner[1..inner.len() - 1].to_owned()));
                } else {
                    let n = inner
                        .parse()
                        .map_err(|_| bad("'[...]' holds an index or a quoted key"))?;
                    steps.push(Step::Index(n));
                }
                i = close + 1;
            }
            _ => return Err(bad("expected '.' or '['")),
        }
    }
    Ok(steps)
}

/// Follows `path` into `doc`.
pub fn lookup<'a>(doc: &'a Json, path: &[Step]) -> Option<&'a Json> {
    path.iter().try_fold(doc, |v, step| match step {
        Step::Key(k) => v.as_object()?.get(k),
        Step::Index(n) => v.as_array()?.get(*n),
    })
}

/// The expression view of a JSON value.
pub fn value_of(v: &Json) -> Value<'_> {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i.into()),
            (_, Some(u)) => Value::Int(u.into()),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s),
        Json::Array(_) | Json::Object(_) => Value::Other,
    }
}

/// A binding's predicate, from its key or its `x-json-path` / `x-json-equals` arguments.
pub fn predicate(key: &str, arguments: &FieldTable) -> Result<Expr<Vec<Step>>, String> {
    let fail = |e: String| format!("x-json-route: {e}");
    let Some(path) = arguments.get("x-json-path") else {
        if arguments.get("x-json-equals").is_some() {
            return Err(fail("x-json-equals needs x-json-path".into()));
        }
        if key.trim().is_empty() {
            return Ok(Expr::Const(true));
        }
        return bourse_expr::parse(key, |name| {
            if name.starts_with('$') {
                parse_path(name)
            } else {
                Err(format!(
                    "'{name}' is not a JSON path (paths start with '$')"
                ))
            }
        })
        .map_err(|e| fail(format!("invalid binding key {key:?}: {e}")));
    };
    if !key.is_empty() {
        return Err(fail(
            "give the predicate either as the binding key or as x-json-path, not both".into(),
        ));
    }
    let path = path
        .as_str()
        .ok_or_else(|| fail("x-json-path must be a string".into()))?;
    let path = parse_path(path).map_err(fail)?;
    let Some(expected) = arguments.get("x-json-equals") else {
        return Ok(Expr::Exists(path));
    };
    let literal = match expected {
        FieldValue::Void => Literal::Null,
        FieldValue::Boolean(b) => Literal::Bool(*b),
        FieldValue::Float32(f) => Literal::Float(f64::from(*f)),
        FieldValue::Float64(f) => Literal::Float(*f),
        FieldValue::Decimal(d) => {
            Literal::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        v => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => Literal::Str(s.to_owned()),
            (_, Some(i)) => Literal::Int(i),
            _ => {
                return Err(fail(
                    "x-json-equals must be a string, number, boolean or void".into(),
                ));
            }
        },
    };
    Ok(Expr::Compare(
        Operand::Var(path),
        CmpOp::Eq,
        Operand::Lit(literal),
    ))
}

#[derive(Debug, Default)]
pub struct Bindings {
    predicates: BTreeMap<BindingId, Expr<Vec<Step>>>,
}

impl Bindings {
    pub const fn new() -> Self {
        Bindings {
            predicates: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, id: BindingId, p: Expr<Vec<Step>>) {
        self.predicates.insert(id, p);
    }

    pub fn remove(&mut self, id: BindingId) {
        self.predicates.remove(&id);
    }

    /// The bindings whose predicate holds for `body`; none if it is not JSON.
    pub fn matching(&self, body: &[u8]) -> Vec<BindingId> {
        if self.predicates.is_empty() {
            return Vec::new();
        }
        let Ok(doc) = serde_json::from_slice::<Json>(body) else {
            return Vec::new();
        };
        let get = |path: &Vec<Step>| lookup(&doc, path).map(value_of);
        self.predicates
            .iter()
            .filter(|(_, p)| p.eval(&get))
            .map(|(id, _)| *id)
            .collect()
    }
}

static BINDINGS: Mutex<Bindings> = Mutex::new(Bindings::new());

fn bindings() -> MutexGuard<'static, Bindings> {
    BINDINGS.lock().unwrap_or_else(|e| e.into_inner())
}

struct JsonRoute;

impl Router for JsonRoute {
    fn describe() -> Description {
        Description {
            name: "x-json-route".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "routes JSON bodies to every binding whose predicate over body fields holds"
                .into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        Ok(Inputs {
            fields: InputFields::BODY,
            headers: HeaderSelection::None,
            cacheable: true,
        })
    }

    fn validate_binding(binding: Binding) -> Result<(), String> {
        predicate(&binding.key, &binding.arguments).map(drop)
    }

    fn add_binding(binding: Binding) {
        match predicate(&binding.key, &binding.arguments) {
            Ok(p) => bindings().add(binding.id, p),
            Err(e) => bourse_guest::log(Level::Warn, &e),
        }
    }

    fn remove_binding(id: BindingId) {
        bindings().remove(id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        Ok(message
            .body
            .as_deref()
            .map(|b| bindings().matching(b))
            .unwrap_or_default())
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(JsonRoute);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        use Step::*;
        assert_eq!(parse_path("$"), Ok(vec![]));
        assert_eq!(
            parse_path(r#"$.a["b c"][2].d['e']"#),
            Ok(vec![
                Key("a".into()),
                Key("b c".into()),
                Index(2),
                Key("d".into()),
                Key("e".into())
            ])
        );
        assert!(parse_path("a.b").is_err());
        assert!(parse_path("$.").is_err());
        assert!(parse_path("$[x]").is_err());
        assert!(parse_path("$[0").is_err());
        assert!(parse_path("$a").is_err());
    }

    #[test]
    fn routes_on_key_expressions_and_arguments() {
        let none = FieldTable::empty();
        let mut b = Bindings::new();
        b.add(1, predicate(r#"$.type == "order""#, &none).unwrap());
        b.add(
            2,
            predicate("$.total >= 100 && $.lines[0].sku == 'A-1'", &none).unwrap(),
        );
        let eq = FieldTable::from_entries([
            (
                "x-json-path",
                FieldValue::LongString("$.customer.tier".into()),
            ),
            ("x-json-equals", FieldValue::LongString("gold".into())),
        ]);
        b.add(3, predicate("", &eq).unwrap());
        let exists =
            FieldTable::from_entries([("x-json-path", FieldValue::LongString("$.refund".into()))]);
        b.add(4, predicate("", &exists).unwrap());
        b.add(5, predicate("", &none).unwrap());
        let num = FieldTable::from_entries([
            ("x-json-path", FieldValue::LongString("$.total".into())),
            ("x-json-equals", FieldValue::Int32(120)),
        ]);
        b.add(6, predicate("", &num).unwrap());

        let order =
            br#"{"type":"order","total":120,"lines":[{"sku":"A-1"}],"customer":{"tier":"gold"}}"#;
        assert_eq!(b.matching(order), vec![1, 2, 3, 5, 6]);
        assert_eq!(
            b.matching(br#"{"type":"refund","refund":null}"#),
            vec![4, 5]
        );
        assert_eq!(b.matching(b"not json"), Vec::<BindingId>::new());
        assert_eq!(b.matching(b"[1,2]"), vec![5]);
    }

    #[test]
    fn bad_bindings_are_explained() {
        let none = FieldTable::empty();
        assert!(
            predicate("type == 'order'", &none)
                .unwrap_err()
                .contains("not a JSON path")
        );
        assert!(
            predicate("$.a ==", &none)
                .unwrap_err()
                .contains("expected a value")
        );
        let both =
            FieldTable::from_entries([("x-json-path", FieldValue::LongString("$.a".into()))]);
        assert!(
            predicate("$.a == 1", &both)
                .unwrap_err()
                .contains("not both")
        );
        let orphan = FieldTable::from_entries([("x-json-equals", FieldValue::Int8(1))]);
        assert!(
            predicate("", &orphan)
                .unwrap_err()
                .contains("needs x-json-path")
        );
        let bad = FieldTable::from_entries([("x-json-path", FieldValue::LongString("a".into()))]);
        assert!(
            predicate("", &bad)
                .unwrap_err()
                .contains("invalid JSON path")
        );
    }
}
