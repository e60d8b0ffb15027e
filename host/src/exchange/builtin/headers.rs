//! The `headers` exchange: bindings match on message headers; the routing key is ignored.
//!
//! This follows RabbitMQ's `rabbit_exchange_type_headers`:
//!
//! * The binding argument `x-match` chooses the rule: `all` (the default when absent), `any`,
//!   `all-with-x` or `any-with-x`. Any other value is refused when binding ("Invalid x-match
//!   field value ..."), and so is a value that is not a string ("Invalid x-match field type ...").
//! * The other binding arguments are the pattern. `x-match` itself never takes part, and for
//!   `all` / `any` neither does any argument whose name starts with `x-`; the `*-with-x` rules
//!   count those.
//! * A pattern entry matches when the message has a header of that name and, unless the entry
//!   is of type void ("a 'no value' in a pattern field is supposed to mean simple presence of the
//!   corresponding data field"), an equal value.
//! * `all` routes when every entry matches, so an empty pattern matches every message; `any`
//!   routes when at least one does, so an empty pattern matches nothing. A message without
//!   headers is matched as if it had an empty table.
//!
//! Values are compared as RabbitMQ compares them, with Erlang's `==` on the decoded terms:
//! integers of every width, timestamps and floats compare numerically (`1 == 1.0`); long strings
//! and byte arrays are both binaries and compare by bytes; booleans, voids and decimals equal
//! only their own kind; a number never equals a string. Inside arrays and tables RabbitMQ keeps
//! each value with its wire type, so nested values must also agree on type (`[1]` as a 32-bit
//! int differs from `[1]` as a 64-bit one). Tables here are sorted maps, so nested tables compare
//! regardless of key order, where RabbitMQ compares them in wire order.
//!
//! Matching is a linear scan of the bindings, as in RabbitMQ; each binding's pattern is parsed
//! once when it is added. Binding and unbinding find the binding through a hash index.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use foldhash::HashMap;

use crate::exchange::{
    Binding, Destination, ExchangeType, Invalid, RouteError, Router, RoutingInput, identity_hash,
};

/// The `headers` exchange type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers;

impl ExchangeType for Headers {
    fn name(&self) -> &str {
        "headers"
    }

    fn validate(&self, _arguments: &FieldTable) -> Result<(), Invalid> {
        Ok(())
    }

    fn create(&self, _exchange: &str, _arguments: &FieldTable) -> Result<Box<dyn Router>, Invalid> {
        Ok(Box::<HeadersRouter>::default())
    }
}

/// The binding argument choosing the rule.
const X_MATCH: &str = "x-match";

/// The value of `x-match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl Rule {
    /// Reads `x-match` from binding arguments, refusing what RabbitMQ refuses.
    fn parse(arguments: &FieldTable) -> Result<Rule, Invalid> {
        let Some(value) = arguments.inner().get(X_MATCH) else {
            return Ok(Rule::All);
        };
        let text = match value {
            AMQPValue::LongString(s) => s.as_bytes(),
            // A short string cannot arrive in a wire table (RabbitMQ reads `s` as a short int),
            // but one built in-process is the same string.
            AMQPValue::ShortString(s) => s.as_str().as_bytes(),
            other => {
                return Err(Invalid(format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    rabbit_type(other),
                    erlang_repr(other)
                )));
            }
        };
        match text {
            b"all" => Ok(Rule::All),
            b"any" => Ok(Rule::Any),
            b"all-with-x" => Ok(Rule::AllWithX),
            b"any-with-x" => Ok(Rule::AnyWithX),
            other => Err(Invalid(format!(
                "Invalid x-match field value <<\"{}\">>; \
                 expected all, any, all-with-x, or any-with-x",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Whether `x-` arguments other than `x-match` are part of the pattern.
    fn counts_x_arguments(self) -> bool {
        matches!(self, Rule::AllWithX | Rule::AnyWithX)
    }

    fn needs_every_entry(self) -> bool {
        matches!(self, Rule::All | Rule::AllWithX)
    }
}

/// One binding (or several identical ones) with its pattern ready for matching.
#[derive(Debug)]
struct Entry {
    destination: Destination,
    /// The binding arguments as given: with the destination, the identity used to unbind.
    arguments: FieldTable,
    /// Bindings with this destination and these arguments (they may differ in routing key).
    count: u32,
    rule: Rule,
    /// The arguments that take part in matching.
    pattern: Vec<(ShortString, AMQPValue)>,
    /// `identity_hash` of destination and arguments, the key of `HeadersRouter::index`.
    hash: u64,
}

impl Entry {
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let mut outcomes = self.pattern.iter().map(|(name, wanted)| {
            match headers.and_then(|h| h.inner().get(name.as_str())) {
                None => false,
                Some(_) if matches!(wanted, AMQPValue::Void) => true,
                Some(found) => values_equal(wanted, found),
            }
        });
        if self.rule.needs_every_entry() {
            outcomes.all(|matched| matched)
        } else {
            outcomes.any(|matched| matched)
        }
    }
}

/// Routing state of one headers exchange.
#[derive(Debug, Default)]
pub struct HeadersRouter {
    entries: Vec<Entry>,
    /// Positions in `entries` by identity hash: bind and unbind without a scan.
    index: HashMap<u64, Vec<usize>>,
}

impl HeadersRouter {
    fn hash(binding: &Binding) -> u64 {
        identity_hash(&binding.destination, None, &binding.arguments)
    }

    fn position(&self, binding: &Binding) -> Option<usize> {
        self.index
            .get(&Self::hash(binding))?
            .iter()
            .copied()
            .find(|&i| {
                let e = &self.entries[i];
                e.destination == binding.destination
                    && tables_identical(&e.arguments, &binding.arguments)
            })
    }

    /// Removes entry `i`, moving the last one into its place (and its index position).
    fn remove_entry(&mut self, i: usize) {
        let last = self.entries.len() - 1;
        let hash = self.entries[i].hash;
        unindex(&mut self.index, hash, i);
        self.entries.swap_remove(i);
        if i != last {
            let moved = self.entries[i].hash;
            if let Some(at) = self.index.get_mut(&moved) {
                for p in at.iter_mut().filter(|p| **p == last) {
                    *p = i;
                }
            }
        }
    }
}

fn unindex(index: &mut HashMap<u64, Vec<usize>>, hash: u64, i: usize) {
    if let Some(at) = index.get_mut(&hash) {
        at.retain(|p| *p != i);
        if at.is_empty() {
            index.remove(&hash);
        }
    }
}

impl Router for HeadersRouter {
    fn validate_binding(&self, binding: &Binding) -> Result<(), Invalid> {
        Rule::parse(&binding.arguments).map(drop)
    }

    fn add_binding(&mut self, binding: &Binding) {
        if let Some(i) = self.position(binding) {
            self.entries[i].count += 1;
            return;
        }
        // A binding that skipped validation (say, replayed from an old log) falls back to
        // `all`, as RabbitMQ's `parse_x_match(_) -> all` does.
        let rule = Rule::parse(&binding.arguments).unwrap_or(Rule::All);
        let pattern = binding
            .arguments
            .inner()
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                name != X_MATCH && (rule.counts_x_arguments() || !name.starts_with("x-"))
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let hash = Self::hash(binding);
        self.index.entry(hash).or_default().push(self.entries.len());
        self.entries.push(Entry {
            destination: binding.destination.clone(),
            arguments: binding.arguments.clone(),
            count: 1,
            rule,
            pattern,
            hash,
        });
    }

    fn remove_binding(&mut self, binding: &Binding) {
        if let Some(i) = self.position(binding) {
            self.entries[i].count -= 1;
            if self.entries[i].count == 0 {
                self.remove_entry(i);
            }
        }
    }

    fn route(
        &self,
        message: &RoutingInput<'_>,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        let headers = message.properties.headers().as_ref();
        out.extend(
            self.entries
                .iter()
                .filter(|e| e.matches(headers))
                .map(|e| e.destination.clone()),
        );
        Ok(())
    }
}

/// A header value seen as the Erlang term RabbitMQ decodes it to.
enum Term<'a> {
    Integer(i128),
    Float(f64),
    Binary(&'a [u8]),
    Boolean(bool),
    /// `{Scale, Value}`.
    Decimal(u8, u32),
    /// The atom `undefined`, RabbitMQ's void.
    Undefined,
    /// A list of `{Type, Value}`.
    Array(&'a FieldArray),
    /// A list of `{Name, Type, Value}`.
    Table(&'a FieldTable),
}

impl<'a> Term<'a> {
    fn of(value: &'a AMQPValue) -> Self {
        match value {
            AMQPValue::Boolean(b) => Term::Boolean(*b),
            AMQPValue::ShortShortInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::ShortShortUInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::ShortInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::ShortUInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::LongInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::LongUInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::LongLongInt(i) => Term::Integer(i128::from(*i)),
            AMQPValue::Timestamp(t) => Term::Integer(i128::from(*t)),
            AMQPValue::Float(f) => Term::Float(f64::from(*f)),
            AMQPValue::Double(d) => Term::Float(*d),
            AMQPValue::DecimalValue(d) => Term::Decimal(d.scale, d.value),
            AMQPValue::ShortString(s) => Term::Binary(s.as_str().as_bytes()),
            AMQPValue::LongString(s) => Term::Binary(s.as_bytes()),
            AMQPValue::ByteArray(b) => Term::Binary(b.as_slice()),
            AMQPValue::FieldArray(a) => Term::Array(a),
            AMQPValue::FieldTable(t) => Term::Table(t),
            AMQPValue::Void => Term::Undefined,
        }
    }
}

/// Erlang `==` between two header values, as `headers_match` applies it.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (Term::of(a), Term::of(b)) {
        (Term::Integer(x), Term::Integer(y)) => x == y,
        (Term::Float(x), Term::Float(y)) => x == y,
        (Term::Integer(i), Term::Float(f)) | (Term::Float(f), Term::Integer(i)) => {
            // Erlang compares an integer and a float exactly (the float is integral and has
            // the same value), which the saturating cast gives for every i64 / u64.
            f.fract() == 0.0 && f as i128 == i
        }
        (Term::Binary(x), Term::Binary(y)) => x == y,
        (Term::Boolean(x), Term::Boolean(y)) => x == y,
        (Term::Decimal(s, v), Term::Decimal(t, w)) => s == t && v == w,
        (Term::Undefined, Term::Undefined) => true,
        (Term::Array(x), Term::Array(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| typed_equal(a, b))
        }
        (Term::Table(x), Term::Table(y)) => {
            x.inner().len() == y.inner().len()
                && x.inner()
                    .iter()
                    .zip(y.inner())
                    .all(|((k, a), (l, b))| k == l && typed_equal(a, b))
        }
        // Both are Erlang lists: only the empty ones are equal.
        (Term::Array(a), Term::Table(t)) | (Term::Table(t), Term::Array(a)) => {
            a.as_slice().is_empty() && t.inner().is_empty()
        }
        _ => false,
    }
}

/// Equality of values nested in an array or table, where RabbitMQ keeps the wire type.
fn typed_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    rabbit_type(a) == rabbit_type(b) && values_equal(a, b)
}

/// RabbitMQ's name for the wire type of a value (`rabbit_binary_parser`).
fn rabbit_type(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A short rendering of a value in the style of Erlang's `~tp`, for error messages.
fn erlang_repr(value: &AMQPValue) -> String {
    match Term::of(value) {
        Term::Integer(i) => i.to_string(),
        Term::Float(f) => format!("{f:?}"),
        Term::Binary(b) => format!("<<\"{}\">>", String::from_utf8_lossy(b)),
        Term::Boolean(b) => b.to_string(),
        Term::Decimal(scale, v) => format!("{{{scale},{v}}}"),
        Term::Undefined => "undefined".to_owned(),
        Term::Array(_) | Term::Table(_) => format!("{value:?}"),
    }
}

/// Identity of binding arguments: `==`, except that floats compare by bit pattern so that a
/// binding whose arguments hold a NaN can still be removed.
fn tables_identical(a: &FieldTable, b: &FieldTable) -> bool {
    a.inner().len() == b.inner().len()
        && a.inner()
            .iter()
            .zip(b.inner())
            .all(|((k, x), (l, y))| k == l && values_identical(x, y))
}

fn values_identical(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (a, b) {
        (AMQPValue::Float(x), AMQPValue::Float(y)) => x.to_bits() == y.to_bits(),
        (AMQPValue::Double(x), AMQPValue::Double(y)) => x.to_bits() == y.to_bits(),
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_identical(a, b))
        }
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => tables_identical(x, y),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
