//! AMQP field tables as the management API shows them: RabbitMQ's plain JSON (numbers,
//! strings, booleans, arrays, objects), not amq-protocol's tagged form.

use amq_protocol::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

/// Tables from clients are at most 64 levels deep (`protocol/table.rs`); deeper is shown as
/// null rather than walked.
const DEPTH_MAX: usize = 64;

/// `table` as a JSON object.
pub fn table(table: &FieldTable) -> Value {
    table_at(table, 0)
}

fn table_at(table: &FieldTable, depth: usize) -> Value {
    let mut out = Map::new();
    for (key, value) in table.inner() {
        out.insert(key.to_string(), value_at(value, depth + 1));
    }
    Value::Object(out)
}

fn value_at(value: &AMQPValue, depth: usize) -> Value {
    if depth > DEPTH_MAX {
        return Value::Null;
    }
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(bytes) => {
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into())
        }
        AMQPValue::FieldArray(items) => Value::Array(
            items
                .as_slice()
                .iter()
                .map(|v| value_at(v, depth + 1))
                .collect(),
        ),
        AMQPValue::FieldTable(inner) => table_at(inner, depth),
        AMQPValue::Void => Value::Null,
    }
}
