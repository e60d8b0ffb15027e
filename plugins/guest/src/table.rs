//! Helpers on the flattened field tables of the WIT (`types.field-table`).

use std::borrow::Cow;

use crate::{Field, FieldTable, FieldValue};

impl FieldTable {
    /// A table with no entries.
    pub fn empty() -> Self {
        FieldTable {
            entries: Vec::new(),
            tables: Vec::new(),
            arrays: Vec::new(),
        }
    }

    /// A table of top-level scalar entries (tests and examples).
    pub fn from_entries(entries: impl IntoIterator<Item = (&'static str, FieldValue)>) -> Self {
        let entries = entries
            .into_iter()
            .map(|(name, value)| Field {
                name: name.to_owned(),
                value,
            })
            .collect();
        FieldTable {
            entries,
            tables: Vec::new(),
            arrays: Vec::new(),
        }
    }

    /// The first top-level entry called `name` (AMQP forbids duplicates; the first one wins).
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.entries
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }

    /// The entries of the nested table a `FieldValue::Table(index)` refers to.
    pub fn nested_table(&self, index: u32) -> Option<&[Field]> {
        self.tables.get(index as usize).map(Vec::as_slice)
    }

    /// The elements of the nested array a `FieldValue::Array(index)` refers to.
    pub fn nested_array(&self, index: u32) -> Option<&[FieldValue]> {
        self.arrays.get(index as usize).map(Vec::as_slice)
    }
}

impl FieldValue {
    /// The text of a short or long string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::ShortString(s) | FieldValue::LongString(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value (timestamps included) that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::Int8(v) => v.into(),
            FieldValue::Uint8(v) => v.into(),
            FieldValue::Int16(v) => v.into(),
            FieldValue::Uint16(v) => v.into(),
            FieldValue::Int32(v) => v.into(),
            FieldValue::Uint32(v) => v.into(),
            FieldValue::Int64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// A non-negative integer, or a string holding one (clients often send numeric arguments
    /// as strings).
    pub fn as_u64_lenient(&self) -> Option<u64> {
        match self.as_str() {
            Some(s) => s.trim().parse().ok(),
            None => u64::try_from(self.as_i64()?).ok(),
        }
    }

    /// The canonical bytes of a scalar, used wherever a value is hashed or used as a key:
    /// strings and byte arrays as they are, numbers in decimal (`-12`, `1.5`, a decimal as
    /// `12.34`), booleans as `true`/`false`, void as empty. `None` for tables and arrays.
    pub fn canonical_bytes(&self) -> Option<Cow<'_, [u8]>> {
        let text = match self {
            FieldValue::ShortString(s) | FieldValue::LongString(s) => {
                return Some(Cow::Borrowed(s.as_bytes()));
            }
            FieldValue::RawString(b) | FieldValue::ByteArray(b) => return Some(Cow::Borrowed(b)),
            FieldValue::Void => return Some(Cow::Borrowed(b"")),
            FieldValue::Boolean(b) => b.to_string(),
            FieldValue::Float32(v) => v.to_string(),
            FieldValue::Float64(v) => v.to_string(),
            FieldValue::Decimal(d) => decimal_text(d.value, d.scale),
            FieldValue::Timestamp(v) => v.to_string(),
            FieldValue::Table(_) | FieldValue::Array(_) => return None,
            other => other.as_i64()?.to_string(),
        };
        Some(Cow::Owned(text.into_bytes()))
    }
}

/// `value / 10^scale` in plain decimal notation, exactly.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decimal;

    #[test]
    fn canonical_bytes_of_scalars() {
        let text = |v: FieldValue| String::from_utf8(v.canonical_bytes().unwrap().into_owned());
        assert_eq!(text(FieldValue::LongString("eu".into())).unwrap(), "eu");
        assert_eq!(text(FieldValue::Int8(-12)).unwrap(), "-12");
        assert_eq!(
            text(FieldValue::Timestamp(1_700_000_000)).unwrap(),
            "1700000000"
        );
        assert_eq!(text(FieldValue::Boolean(true)).unwrap(), "true");
        assert_eq!(text(FieldValue::Float64(1.5)).unwrap(), "1.5");
        assert_eq!(
            text(FieldValue::Decimal(Decimal {
                scale: 2,
                value: 1234
            }))
            .unwrap(),
            "12.34"
        );
        assert_eq!(
            text(FieldValue::Decimal(Decimal { scale: 3, value: 5 })).unwrap(),
            "0.005"
        );
        assert!(FieldValue::Table(0).canonical_bytes().is_none());
    }

    #[test]
    fn lookups_follow_indices() {
        let t = FieldTable {
            entries: vec![
                Field {
                    name: "a".into(),
                    value: FieldValue::Int32(1),
                },
                Field {
                    name: "b".into(),
                    value: FieldValue::Table(0),
                },
            ],
            tables: vec![vec![Field {
                name: "c".into(),
                value: FieldValue::Array(0),
            }]],
            arrays: vec![vec![FieldValue::Boolean(true)]],
        };
        assert_eq!(t.get("a"), Some(&FieldValue::Int32(1)));
        let Some(FieldValue::Table(i)) = t.get("b") else {
            panic!()
        };
        let inner = t.nested_table(*i).unwrap();
        let FieldValue::Array(j) = inner[0].value else {
            panic!()
        };
        assert_eq!(t.nested_array(j), Some(&[FieldValue::Boolean(true)][..]));
        assert_eq!(t.get("missing"), None);
    }

    #[test]
    fn lenient_integers() {
        assert_eq!(
            FieldValue::LongString(" 60000 ".into()).as_u64_lenient(),
            Some(60_000)
        );
        assert_eq!(FieldValue::Int16(-1).as_u64_lenient(), None);
        assert_eq!(FieldValue::Uint32(7).as_u64_lenient(), Some(7));
    }
}
