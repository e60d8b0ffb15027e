//! Queue declare arguments: validated once at declare time into a compact [`QueueArgs`], so the
//! per-message paths test a few plain fields instead of looking into a table.
//!
//! Names, accepted types and the wording of errors follow RabbitMQ 3.10
//! (`rabbit_amqqueue:declare_args/0`): integers may be any AMQP integer type except
//! timestamps, strings must be long strings, and an invalid value is reported as
//! `invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}`.
//!
//! RabbitMQ ignores `x-` arguments it does not know. bourse rejects them instead (issue 4: an
//! unsupported argument must not be silently ignored), and also rejects the RabbitMQ arguments
//! whose behaviour it does not implement (quorum and stream queue settings, per-queue consumer
//! timeouts). Arguments without the `x-` prefix are kept and ignored, as RabbitMQ does.
//! docs/queues.md has the full table.

use std::fmt;
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::exchange::Name;

/// What `x-overflow` asks for when a length limit is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message to make room.
    #[default]
    DropHead,
    /// Refuse the new message; the publisher gets basic.nack under confirms.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// Where dead-lettered messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterTarget {
    /// `x-dead-letter-exchange` ("" is the default exchange).
    pub exchange: Name,
    /// `x-dead-letter-routing-key`; the message's own routing keys when unset.
    pub routing_key: Option<Name>,
}

/// The queue features a declaration asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    /// `x-message-ttl`: how long a message may stay in the queue.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: the queue is deleted after being unused this long.
    pub expires: Option<Duration>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange` and `x-dead-letter-routing-key`.
    pub dead_letter: Option<DeadLetterTarget>,
    /// `x-max-priority`: message priorities 0..=max are honoured.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
}

/// A declare argument with a wrong type or value: key and RabbitMQ-style detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The argument name.
    pub key: String,
    /// Why it was refused, in RabbitMQ's wording (an Erlang term where RabbitMQ prints one).
    pub detail: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid arg '{}': {}", self.key, self.detail)
    }
}

impl std::error::Error for ArgError {}

/// RabbitMQ's largest `x-max-priority` (`?MAX_SUPPORTED_PRIORITY`).
pub const MAX_PRIORITY: i64 = 255;

/// Arguments RabbitMQ 3.10 knows whose behaviour bourse does not implement, with the reason
/// given to the client.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("x-delivery-limit", "is a quorum queue argument"),
    ("x-max-in-memory-length", "is a quorum queue argument"),
    ("x-max-in-memory-bytes", "is a quorum queue argument"),
    ("x-quorum-initial-group-size", "is a quorum queue argument"),
    ("x-initial-cluster-size", "is a stream argument"),
    ("x-max-age", "is a stream argument"),
    ("x-max-segment-size", "is a stream argument"),
    ("x-max-segment-size-bytes", "is a stream argument"),
    ("x-stream-max-segment-size-bytes", "is a stream argument"),
    (
        "x-queue-leader-locator",
        "applies to quorum queues and streams",
    ),
    (
        "x-consumer-timeout",
        "is not supported (RabbitMQ 3.11.15+); use the broker's consumer_timeout_ms",
    ),
];

/// Arguments accepted as hints with no effect on a single bourse node, with their valid values.
const HINTS: &[(&str, &[&str])] = &[
    // Classic queue storage hints: bourse's store decides what stays in memory.
    ("x-queue-mode", &["default", "lazy"]),
    ("x-queue-version", &[]),
    // Mirroring placement: there is one node.
    (
        "x-queue-master-locator",
        &["client-local", "min-masters", "random"],
    ),
];

impl QueueArgs {
    /// Validates declare arguments and extracts the features they ask for.
    pub fn parse(arguments: &FieldTable) -> Result<Self, ArgError> {
        let table = arguments.inner();
        let get = |key: &str| table.get(key);
        let err = |key: &str, detail: String| ArgError {
            key: key.to_owned(),
            detail,
        };
        let mut args = QueueArgs::default();

        if let Some(value) = get("x-queue-type") {
            match string(value) {
                Some("classic") => {}
                Some(kind @ ("quorum" | "stream")) => {
                    return Err(err(
                        "x-queue-type",
                        format!("queue type '{kind}' is not supported by bourse (only 'classic')"),
                    ));
                }
                Some(other) => {
                    return Err(err(
                        "x-queue-type",
                        format!("\"unsupported queue type '{other}'\""),
                    ));
                }
                None => return Err(err("x-queue-type", unacceptable(value))),
            }
        }
        // The order follows RabbitMQ's declare_args/0, so the first error reported is the same.
        if let Some(value) = get("x-expires") {
            let ms = int(value).map_err(|d| err("x-expires", d))?;
            if ms == 0 {
                return Err(err("x-expires", "{value_zero,0}".into()));
            }
            args.expires = Some(Duration::from_millis(
                non_negative(ms).map_err(|d| err("x-expires", d))?,
            ));
        }
        if let Some(value) = get("x-message-ttl") {
            let ms = int(value).map_err(|d| err("x-message-ttl", d))?;
            args.message_ttl = Some(Duration::from_millis(
                non_negative(ms).map_err(|d| err("x-message-ttl", d))?,
            ));
        }
        if let Some(value) = get("x-dead-letter-exchange") {
            let exchange =
                string(value).ok_or_else(|| err("x-dead-letter-exchange", unacceptable(value)))?;
            args.dead_letter = Some(DeadLetterTarget {
                exchange: Name::from(exchange),
                routing_key: None,
            });
        }
        if let Some(value) = get("x-dead-letter-routing-key") {
            let key = string(value)
                .ok_or_else(|| err("x-dead-letter-routing-key", unacceptable(value)))?;
            // Routing keys are AMQP short strings in bourse (basic.publish, the message
            // store): a longer one could never be stored with a dead-lettered message.
            if key.len() > 255 {
                return Err(err(
                    "x-dead-letter-routing-key",
                    format!("{{routing_key_too_long,{}}}", key.len()),
                ));
            }
            match &mut args.dead_letter {
                Some(target) => target.routing_key = Some(Name::from(key)),
                None => {
                    return Err(err(
                        "x-dead-letter-routing-key",
                        "routing_key_but_no_dlx_defined".into(),
                    ));
                }
            }
        }
        for key in ["x-max-length", "x-max-length-bytes"] {
            if let Some(value) = get(key) {
                let n = int(value).and_then(non_negative).map_err(|d| err(key, d))?;
                if key == "x-max-length" {
                    args.max_length = Some(n);
                } else {
                    args.max_length_bytes = Some(n);
                }
            }
        }
        if let Some(value) = get("x-max-priority") {
            let n = int(value)
                .and_then(non_negative)
                .map_err(|d| err("x-max-priority", d))?;
            if n > MAX_PRIORITY as u64 {
                return Err(err("x-max-priority", format!("{{max_value_exceeded,{n}}}")));
            }
            args.max_priority = Some(n as u8);
        }
        if let Some(value) = get("x-overflow") {
            args.overflow = match string(value) {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                Some(_) => return Err(err("x-overflow", "invalid_overflow".into())),
                None => return Err(err("x-overflow", unacceptable(value))),
            };
        }
        if let Some(value) = get("x-single-active-consumer") {
            match value {
                AMQPValue::Boolean(on) => args.single_active_consumer = *on,
                other => return Err(err("x-single-active-consumer", unacceptable(other))),
            }
        }
        for (key, allowed) in HINTS {
            let Some(value) = get(key) else { continue };
            if allowed.is_empty() {
                // x-queue-version: 1 or 2 (classic queue index formats).
                match int(value) {
                    Ok(1 | 2) => {}
                    Ok(n) => return Err(err(key, format!("{{unsupported_queue_version,{n}}}"))),
                    Err(d) => return Err(err(key, d)),
                }
            } else {
                match string(value) {
                    Some(s) if allowed.contains(&s) => {}
                    Some(s) if *key == "x-queue-mode" => {
                        return Err(err(key, format!("\"unsupported queue mode '{s}'\"")));
                    }
                    Some(_) => return Err(err(key, "invalid_queue_locator_arg".into())),
                    None => return Err(err(key, unacceptable(value))),
                }
            }
        }
        for (key, why) in UNSUPPORTED {
            if table.contains_key(*key) {
                return Err(err(key, format!("argument {why}")));
            }
        }
        if let Some((key, _)) = table
            .iter()
            .find(|(k, _)| k.as_str().starts_with("x-") && !is_known(k.as_str()))
        {
            return Err(err(
                key.as_str(),
                "unknown argument (bourse refuses x- arguments it does not implement)".into(),
            ));
        }
        Ok(args)
    }

    /// Whether `x-max-length` or `x-max-length-bytes` is set.
    pub fn has_length_limit(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }
}

/// Every `x-` argument bourse accepts at queue.declare.
fn is_known(key: &str) -> bool {
    matches!(
        key,
        "x-queue-type"
            | "x-expires"
            | "x-message-ttl"
            | "x-dead-letter-exchange"
            | "x-dead-letter-routing-key"
            | "x-max-length"
            | "x-max-length-bytes"
            | "x-max-priority"
            | "x-overflow"
            | "x-single-active-consumer"
    ) || HINTS.iter().any(|(k, _)| *k == key)
}

/// A string argument's value (long strings, and the short strings some clients send).
pub(crate) fn string(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads an integer argument of any AMQP integer type (RabbitMQ's `?INTEGER_ARG_TYPES`: a
/// timestamp is not one).
pub(crate) fn int_value(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    })
}

/// An integer argument, as RabbitMQ's `check_int_arg` accepts them.
fn int(value: &AMQPValue) -> Result<i64, String> {
    int_value(value).ok_or_else(|| format!("\"expected integer, got {}\"", type_name(value)))
}

fn non_negative(n: i64) -> Result<u64, String> {
    u64::try_from(n).map_err(|_| format!("{{value_negative,{n}}}"))
}

fn unacceptable(value: &AMQPValue) -> String {
    format!("{{unacceptable_type,{}}}", type_name(value))
}

/// RabbitMQ's name for a field type (rabbit_binary_parser), used in error texts.
pub(crate) fn type_name(value: &AMQPValue) -> &'static str {
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
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    fn parse(entries: &[(&str, AMQPValue)]) -> Result<QueueArgs, ArgError> {
        QueueArgs::parse(&table(entries))
    }

    #[test]
    fn no_arguments_means_no_features() {
        assert_eq!(parse(&[]), Ok(QueueArgs::default()));
        // Non-x- arguments are ignored, as RabbitMQ does.
        assert_eq!(parse(&[("custom", text("v"))]), Ok(QueueArgs::default()));
    }

    #[test]
    fn every_supported_argument_is_extracted() {
        let args = parse(&[
            ("x-message-ttl", AMQPValue::LongInt(1500)),
            ("x-expires", AMQPValue::ShortUInt(60_000)),
            ("x-max-length", AMQPValue::LongLongInt(10)),
            ("x-max-length-bytes", AMQPValue::LongUInt(4096)),
            ("x-overflow", text("reject-publish-dlx")),
            ("x-dead-letter-exchange", text("dlx")),
            ("x-dead-letter-routing-key", text("dead")),
            ("x-max-priority", AMQPValue::ShortShortUInt(10)),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-queue-type", text("classic")),
            ("x-queue-mode", text("lazy")),
        ])
        .expect("valid");
        assert_eq!(args.message_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(args.expires, Some(Duration::from_secs(60)));
        assert_eq!(args.max_length, Some(10));
        assert_eq!(args.max_length_bytes, Some(4096));
        assert_eq!(args.overflow, Overflow::RejectPublishDlx);
        assert_eq!(
            args.dead_letter,
            Some(DeadLetterTarget {
                exchange: Name::from("dlx"),
                routing_key: Some(Name::from("dead")),
            })
        );
        assert_eq!(args.max_priority, Some(10));
        assert!(args.single_active_consumer);
    }

    type Case<'a> = (&'a [(&'a str, AMQPValue)], &'a str, &'a str);

    #[test]
    fn wrong_types_and_ranges_are_reported_like_rabbitmq() {
        let cases: &[Case<'_>] = &[
            (
                &[("x-max-length", text("10"))],
                "x-max-length",
                "\"expected integer, got longstr\"",
            ),
            (
                &[("x-max-length", AMQPValue::LongInt(-1))],
                "x-max-length",
                "{value_negative,-1}",
            ),
            (
                &[("x-expires", AMQPValue::LongInt(0))],
                "x-expires",
                "{value_zero,0}",
            ),
            (
                &[("x-message-ttl", AMQPValue::LongInt(-5))],
                "x-message-ttl",
                "{value_negative,-5}",
            ),
            (
                &[("x-max-priority", AMQPValue::LongInt(256))],
                "x-max-priority",
                "{max_value_exceeded,256}",
            ),
            (
                &[("x-overflow", text("drop-tail"))],
                "x-overflow",
                "invalid_overflow",
            ),
            (
                &[("x-single-active-consumer", text("true"))],
                "x-single-active-consumer",
                "{unacceptable_type,longstr}",
            ),
            (
                &[("x-dead-letter-routing-key", text("k"))],
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ),
            (
                &[("x-message-ttl", AMQPValue::Timestamp(5))],
                "x-message-ttl",
                "\"expected integer, got timestamp\"",
            ),
        ];
        for (entries, key, detail) in cases {
            let error = parse(entries).expect_err(key);
            assert_eq!((error.key.as_str(), error.detail.as_str()), (*key, *detail));
        }
    }

    #[test]
    fn unsupported_types_and_arguments_are_refused() {
        for kind in ["quorum", "stream"] {
            let error = parse(&[("x-queue-type", text(kind))]).expect_err(kind);
            assert!(error.detail.contains("not supported"), "{error}");
        }
        let error = parse(&[("x-queue-type", text("fancy"))]).expect_err("unknown type");
        assert_eq!(error.detail, "\"unsupported queue type 'fancy'\"");
        let error = parse(&[("x-delivery-limit", AMQPValue::LongInt(3))]).expect_err("qq arg");
        assert_eq!(error.key, "x-delivery-limit");
        let error = parse(&[("x-max-lenght", AMQPValue::LongInt(3))]).expect_err("typo");
        assert_eq!(error.key, "x-max-lenght");
        assert!(error.detail.contains("unknown argument"));
        let error = parse(&[("x-queue-mode", text("eager"))]).expect_err("mode");
        assert_eq!(error.detail, "\"unsupported queue mode 'eager'\"");
    }
}
