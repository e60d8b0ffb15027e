//! Whether a redeclared queue's arguments match the existing queue's, and RabbitMQ's wording
//! of the difference.

use amq_protocol::types::{AMQPValue, FieldTable};

/// The first `x-` argument whose value differs between two declarations, with both values
/// described as RabbitMQ does ("the value '10' of type 'signedint'", or "none"). Like
/// `rabbit_misc:assert_args_equivalence`, integers of different AMQP types are equal when their
/// values are, and a missing `x-queue-type` equals 'classic'. Every `x-` argument a queue can
/// hold is one bourse understands (unknown ones are refused at declare).
pub(super) fn inequivalent_argument(
    current: &FieldTable,
    received: &FieldTable,
) -> Option<(String, String, String)> {
    let keys = current.inner().keys().chain(received.inner().keys());
    for key in keys.filter(|k| k.as_str().starts_with("x-")) {
        let (was, now) = (current.inner().get(key), received.inner().get(key));
        if !equivalent(key.as_str(), was, now) {
            return Some((key.to_string(), describe(now), describe(was)));
        }
    }
    None
}

fn equivalent(key: &str, a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    let classic = |v: Option<&AMQPValue>| {
        v.and_then(crate::queue::string_value)
            .is_some_and(|s| s == "classic")
    };
    match (a, b) {
        (Some(a), Some(b)) => match (integer(a), integer(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        (None, None) => true,
        (None, other) | (other, None) => key == "x-queue-type" && classic(other),
    }
}

fn integer(value: &AMQPValue) -> Option<i128> {
    crate::queue::int_value(value).map(i128::from)
}

/// RabbitMQ's description of an argument value in equivalence errors.
fn describe(value: Option<&AMQPValue>) -> String {
    let Some(value) = value else {
        return "none".into();
    };
    let shown = match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(d) => d.to_string(),
        other => match (integer(other), crate::queue::string_value(other)) {
            (Some(n), _) => n.to_string(),
            (None, Some(s)) => s.to_owned(),
            (None, None) => format!("{other:?}"),
        },
    };
    format!(
        "the value '{shown}' of type '{}'",
        crate::queue::type_name(value)
    )
}
