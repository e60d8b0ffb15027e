//! The `bourse:exchange@0.1.x` contract: the one `bindgen!` of this version, and the lowering of
//! broker values (field tables, properties, messages) into its borrowed WIT types.
//!
//! Types are generated in *borrowing* mode, so a message is lowered straight from the broker's
//! `BasicProperties` and routing key without copying strings into owned WIT values first.
//!
//! The `0.2` contract (`v0_2.rs`) reuses this version's types and imports unchanged: its
//! `bindgen!` maps them onto the modules generated here, so the lowering below serves both.

// The bindings wasmtime generates implement its typed-lowering traits with `unsafe` blocks
// (`TypedFunc::new_unchecked` on export indices that it type-checked at instantiation). This is
// the only generated code in the crate; no hand-written code here uses `unsafe`.
#[allow(unsafe_code)]
pub(super) mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "bourse:exchange/exchange-type@0.1.0",
        ownership: Borrowing { duplicate_if_necessary: true },
        imports: { default: trappable },
    });
}

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable as AmqpTable};

pub use generated::ExchangeType as Bindings;
pub use generated::ExchangeTypePre as BindingsPre;
pub use generated::bourse::exchange::types::{
    Binding, Decimal, Description, Field, FieldTable, FieldValue, HeaderSelection, InputFields,
    Inputs, Message, Properties,
};
pub use generated::bourse::exchange::{clock, logging, state};

/// The interface name prefix every supported component exports.
pub const ROUTER_EXPORT_PREFIX: &str = "bourse:exchange/router@";

/// Adds this version's imports (logging, clock, state) to `linker`.
pub fn add_to_linker(
    linker: &mut wasmtime::component::Linker<super::host::HostState>,
) -> wasmtime::Result<()> {
    use super::host::{HostState, Imports};
    logging::add_to_linker::<HostState, Imports>(linker, |s| s)?;
    // Reading the clock or the state makes a call impure: its decision is not cached.
    clock::add_to_linker::<HostState, Imports>(linker, |s| {
        s.impure = true;
        s
    })?;
    state::add_to_linker::<HostState, Imports>(linker, |s| {
        s.impure = true;
        s
    })?;
    Ok(())
}

/// A field table flattened the way the WIT wants it: nested tables and arrays moved out to
/// side lists and referred to by index, numbered depth-first in pre-order. Borrows every
/// string and byte array from the source table.
#[derive(Default)]
pub struct FlatTable<'a> {
    entries: Vec<Field<'a>>,
    tables: Vec<Vec<Field<'a>>>,
    arrays: Vec<Vec<FieldValue<'a>>>,
}

impl<'a> FlatTable<'a> {
    /// Flattens every entry of `table`.
    pub fn all(table: &'a AmqpTable) -> Self {
        let mut flat = Self::default();
        for (name, value) in table.inner() {
            let value = flat.value(value);
            flat.entries.push(Field {
                name: name.as_str(),
                value,
            });
        }
        flat
    }

    /// Flattens the entries of `table` whose names are in `names` (in the table's order).
    pub fn named(table: &'a AmqpTable, names: &[String]) -> Self {
        let mut flat = Self::default();
        for (name, value) in table.inner() {
            if names.iter().any(|n| n == name.as_str()) {
                let value = flat.value(value);
                flat.entries.push(Field {
                    name: name.as_str(),
                    value,
                });
            }
        }
        flat
    }

    fn value(&mut self, value: &'a AMQPValue) -> FieldValue<'a> {
        match value {
            AMQPValue::Boolean(b) => FieldValue::Boolean(*b),
            AMQPValue::ShortShortInt(v) => FieldValue::Int8(*v),
            AMQPValue::ShortShortUInt(v) => FieldValue::Uint8(*v),
            AMQPValue::ShortInt(v) => FieldValue::Int16(*v),
            AMQPValue::ShortUInt(v) => FieldValue::Uint16(*v),
            AMQPValue::LongInt(v) => FieldValue::Int32(*v),
            AMQPValue::LongUInt(v) => FieldValue::Uint32(*v),
            AMQPValue::LongLongInt(v) => FieldValue::Int64(*v),
            AMQPValue::Float(v) => FieldValue::Float32(*v),
            AMQPValue::Double(v) => FieldValue::Float64(*v),
            AMQPValue::DecimalValue(d) => FieldValue::Decimal(Decimal {
                scale: d.scale,
                value: d.value,
            }),
            AMQPValue::ShortString(s) => FieldValue::ShortString(s.as_str()),
            AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
                Ok(text) => FieldValue::LongString(text),
                Err(_) => FieldValue::RawString(s.as_bytes()),
            },
            AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
            AMQPValue::ByteArray(b) => FieldValue::ByteArray(b.as_slice()),
            AMQPValue::Void => FieldValue::Void,
            AMQPValue::FieldTable(inner) => {
                // Reserve the slot first so indices follow pre-order.
                let index = self.tables.len();
                self.tables.push(Vec::new());
                let mut fields = Vec::with_capacity(inner.inner().len());
                for (name, value) in inner.inner() {
                    let value = self.value(value);
                    fields.push(Field {
                        name: name.as_str(),
                        value,
                    });
                }
                self.tables[index] = fields;
                FieldValue::Table(index_u32(index))
            }
            AMQPValue::FieldArray(inner) => {
                let index = self.arrays.len();
                self.arrays.push(Vec::new());
                let mut values = Vec::with_capacity(inner.as_slice().len());
                for value in inner.as_slice() {
                    values.push(self.value(value));
                }
                self.arrays[index] = values;
                FieldValue::Array(index_u32(index))
            }
        }
    }

    /// Calls `f` with the WIT view of this table (which borrows the side lists).
    pub fn with<R>(&self, f: impl FnOnce(FieldTable<'_>) -> R) -> R {
        if self.tables.is_empty() && self.arrays.is_empty() {
            return f(FieldTable {
                entries: &self.entries,
                tables: &[],
                arrays: &[],
            });
        }
        let tables: Vec<&[Field<'_>]> = self.tables.iter().map(Vec::as_slice).collect();
        let arrays: Vec<&[FieldValue<'_>]> = self.arrays.iter().map(Vec::as_slice).collect();
        f(FieldTable {
            entries: &self.entries,
            tables: &tables,
            arrays: &arrays,
        })
    }
}

/// Frame size limits keep tables far below 4 billion nested values.
fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// The basic properties, without headers, borrowed.
pub fn properties(p: &BasicProperties) -> Properties<'_> {
    fn text(v: &Option<amq_protocol::types::ShortString>) -> Option<&str> {
        v.as_ref().map(|s| s.as_str())
    }
    Properties {
        content_type: text(p.content_type()),
        content_encoding: text(p.content_encoding()),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        expiration: text(p.expiration()),
        message_id: text(p.message_id()),
        timestamp: *p.timestamp(),
        message_type: text(p.kind()),
        user_id: text(p.user_id()),
        app_id: text(p.app_id()),
        cluster_id: text(p.cluster_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldArray, LongString, ShortString};

    #[test]
    fn nested_values_are_flattened_in_pre_order() {
        // {a: 1, b: {c: [true, {d: "x"}]}, e: [[]]}
        let mut d = AmqpTable::default();
        d.insert(
            ShortString::from("d"),
            AMQPValue::LongString(LongString::from("x")),
        );
        let array = FieldArray::from(vec![AMQPValue::Boolean(true), AMQPValue::FieldTable(d)]);
        let mut b = AmqpTable::default();
        b.insert(ShortString::from("c"), AMQPValue::FieldArray(array));
        let mut top = AmqpTable::default();
        top.insert(ShortString::from("a"), AMQPValue::LongInt(1));
        top.insert(ShortString::from("b"), AMQPValue::FieldTable(b));
        top.insert(
            ShortString::from("e"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldArray(
                FieldArray::default(),
            )])),
        );
        let flat = FlatTable::all(&top);
        flat.with(|t| {
            assert_eq!(t.entries.len(), 3);
            assert!(matches!(t.entries[1].value, FieldValue::Table(0)));
            assert!(matches!(t.tables[0][0].value, FieldValue::Array(0)));
            assert!(matches!(t.arrays[0][1], FieldValue::Table(1)));
            assert!(matches!(t.tables[1][0].value, FieldValue::LongString("x")));
            assert!(matches!(t.entries[2].value, FieldValue::Array(1)));
            assert!(matches!(t.arrays[1][0], FieldValue::Array(2)));
            assert_eq!(t.arrays[2].len(), 0);
        });
        let named = FlatTable::named(&top, &["a".to_owned()]);
        named.with(|t| {
            assert_eq!(t.entries.len(), 1);
            assert!(t.tables.is_empty());
        });
    }

    #[test]
    fn non_utf8_long_strings_are_raw() {
        let mut top = AmqpTable::default();
        top.insert(
            ShortString::from("k"),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        );
        let flat = FlatTable::all(&top);
        flat.with(|t| {
            assert!(matches!(
                t.entries[0].value,
                FieldValue::RawString([0xff, 0xfe])
            ))
        });
    }
}
