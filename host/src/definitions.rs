//! Importing definitions in RabbitMQ's JSON format (a `definitions.json` exported by RabbitMQ
//! 3.x/4.x or by bourse): vhosts, users with their hashes, permissions, topic permissions,
//! vhost limits, then durable exchanges, queues and bindings. Used by `POST
//! /api/definitions` and by `load_definitions` at start-up.
//!
//! Objects are applied in that order through the same paths as clients and operators use
//! (metadata commands, `VHost::declare_*`, `VHost::bind`); the first refused one stops the
//! import with its reason (what came before stays, as in RabbitMQ). What bourse does not
//! understand (policies, parameters other than vhost limits, global parameters, queue types
//! other than classic) is skipped and named in the returned warnings.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Value};

use crate::broker::Shared;
use crate::exchange::{Binding, Destination};
use crate::meta::MetaCommand;
use crate::queue::QueueSpec;
use crate::vhost::ExchangeSpec;

/// Largest definitions document accepted (RabbitMQ's own default upload limit is smaller).
pub const DEFINITIONS_MAX_BYTES: usize = 64 << 20;
/// Most objects of one kind in a document.
const OBJECTS_MAX: usize = 1_000_000;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The document is not what RabbitMQ writes.
    #[error("{0}")]
    Invalid(String),
    /// An object was refused (its reason: a bad name, an unknown vhost, a limit reached...).
    #[error("{what}: {reason}")]
    Refused {
        /// Which object.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Imports `document` into the broker; returns the warnings (what was skipped). Slow (each
/// metadata change and durable declaration is synced): call it off the async threads.
pub fn import(shared: &Shared, document: &Value) -> Result<Vec<String>, ImportError> {
    let top = document
        .as_object()
        .ok_or_else(|| ImportError::Invalid("definitions must be a JSON object".into()))?;
    let mut warnings = Vec::new();
    for key in top.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            warnings.push(format!("ignored unknown key '{key}'"));
        }
    }
    for (key, what) in [
        ("policies", "policies"),
        ("global_parameters", "global parameters"),
    ] {
        let n = list(top, key)?.len();
        if n > 0 {
            warnings.push(format!("ignored {n} {what} (bourse has no policies yet)"));
        }
    }
    for v in list(top, "vhosts")? {
        let name = text(v, "name")?;
        let metadata = v.get("metadata");
        let description = v
            .get("description")
            .or_else(|| metadata.and_then(|m| m.get("description")))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let tags = tags(
            v.get("tags")
                .or_else(|| metadata.and_then(|m| m.get("tags"))),
        );
        meta(
            shared,
            &format!("vhost '{name}'"),
            MetaCommand::PutVhost {
                name,
                description,
                tags,
            },
        )?;
    }
    for u in list(top, "users")? {
        let name = text(u, "name")?;
        let (password_hash, hashing_algorithm) = match u.get("password").and_then(Value::as_str) {
            Some(clear) => (
                crate::auth::PasswordHash::new(clear, crate::auth::Algorithm::Sha256)
                    .map_err(|e| refused(&format!("user '{name}'"), e))?
                    .to_rabbit(),
                "rabbit_password_hashing_sha256".to_owned(),
            ),
            None => (
                u.get("password_hash")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                u.get("hashing_algorithm")
                    .and_then(Value::as_str)
                    .unwrap_or("rabbit_password_hashing_sha256")
                    .to_owned(),
            ),
        };
        let tags = tags(u.get("tags"));
        meta(
            shared,
            &format!("user '{name}'"),
            MetaCommand::PutUser {
                name,
                password_hash,
                hashing_algorithm,
                tags,
            },
        )?;
    }
    for p in list(top, "permissions")? {
        let (user, vhost) = (text(p, "user")?, text(p, "vhost")?);
        meta(
            shared,
            &format!("permissions of '{user}' in '{vhost}'"),
            MetaCommand::SetPermissions {
                configure: text(p, "configure")?,
                write: text(p, "write")?,
                read: text(p, "read")?,
                user,
                vhost,
            },
        )?;
    }
    for t in list(top, "topic_permissions")? {
        let (user, vhost) = (text(t, "user")?, text(t, "vhost")?);
        meta(
            shared,
            &format!("topic permissions of '{user}' in '{vhost}'"),
            MetaCommand::SetTopicPermissions {
                exchange: text(t, "exchange")?,
                write: text(t, "write")?,
                read: text(t, "read")?,
                user,
                vhost,
            },
        )?;
    }
    for p in list(top, "parameters")? {
        let component = p.get("component").and_then(Value::as_str).unwrap_or("");
        if component != "vhost-limits" {
            warnings.push(format!("ignored parameter of component '{component}'"));
            continue;
        }
        let vhost = text(p, "vhost")?;
        let value = p
            .get("value")
            .and_then(Value::as_object)
            .ok_or_else(|| ImportError::Invalid("a vhost-limits value must be an object".into()))?;
        let mut limits = std::collections::BTreeMap::new();
        for (name, n) in value {
            let n = n.as_i64().ok_or_else(|| {
                ImportError::Invalid(format!("vhost limit '{name}' must be an integer"))
            })?;
            limits.insert(name.clone(), n);
        }
        meta(
            shared,
            &format!("limits of vhost '{vhost}'"),
            MetaCommand::SetVhostLimits { vhost, limits },
        )?;
    }
    for x in list(top, "exchanges")? {
        let (name, vhost) = (text(x, "name")?, text(x, "vhost")?);
        let what = format!("exchange '{name}' in vhost '{vhost}'");
        let open = shared
            .vhost(&vhost)
            .ok_or_else(|| refused(&what, "no such vhost"))?;
        let arguments = table(x.get("arguments"))?;
        let spec = ExchangeSpec {
            name: name.as_str().into(),
            kind: text(x, "type")?.as_str().into(),
            durable: flag(x, "durable", true),
            auto_delete: flag(x, "auto_delete", false),
            internal: flag(x, "internal", false),
            arguments,
        };
        crate::blocking::blocking(true, || open.declare_exchange(spec))
            .map_err(|e| refused(&what, e))?;
    }
    for q in list(top, "queues")? {
        let (name, vhost) = (text(q, "name")?, text(q, "vhost")?);
        let what = format!("queue '{name}' in vhost '{vhost}'");
        let open = shared
            .vhost(&vhost)
            .ok_or_else(|| refused(&what, "no such vhost"))?;
        let kind = q
            .get("type")
            .and_then(Value::as_str)
            .or_else(|| {
                q.get("arguments")
                    .and_then(|a| a.get("x-queue-type"))
                    .and_then(Value::as_str)
            })
            .unwrap_or("classic")
            .to_owned();
        if kind != "classic" {
            warnings.push(format!("{what}: type '{kind}' imported as a classic queue"));
        }
        // bourse has classic queues only: the type argument would be refused.
        let mut without_type = q.get("arguments").cloned();
        if let Some(Value::Object(map)) = &mut without_type {
            map.remove("x-queue-type");
        }
        let arguments = table(without_type.as_ref())?;
        let spec = QueueSpec {
            name: name.as_str().into(),
            durable: flag(q, "durable", true),
            exclusive_owner: None,
            auto_delete: flag(q, "auto_delete", false),
            arguments,
        };
        crate::blocking::blocking(true, || open.declare_queue(spec))
            .map_err(|e| refused(&what, e))?;
    }
    for b in list(top, "bindings")? {
        let (source, vhost) = (text(b, "source")?, text(b, "vhost")?);
        let destination = text(b, "destination")?;
        let what = format!("binding of '{destination}' to '{source}' in vhost '{vhost}'");
        let open = shared
            .vhost(&vhost)
            .ok_or_else(|| refused(&what, "no such vhost"))?;
        let destination = match b.get("destination_type").and_then(Value::as_str) {
            Some("queue") => Destination::Queue(destination.as_str().into()),
            Some("exchange") => Destination::Exchange(destination.as_str().into()),
            other => {
                return Err(ImportError::Invalid(format!(
                    "{what}: destination_type must be queue or exchange, not {other:?}"
                )));
            }
        };
        let binding = Binding {
            destination,
            routing_key: b
                .get("routing_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            arguments: table(b.get("arguments"))?,
        };
        crate::blocking::blocking(true, || open.bind(&source, binding))
            .map_err(|e| refused(&what, e))?;
    }
    Ok(warnings)
}

const KNOWN_KEYS: [&str; 14] = [
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
];

fn refused(what: &str, reason: impl std::fmt::Display) -> ImportError {
    ImportError::Refused {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

fn meta(shared: &Shared, what: &str, command: MetaCommand) -> Result<(), ImportError> {
    shared
        .submit_meta_blocking(command)
        .map_err(|e| refused(what, e))
}

fn list<'a>(top: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], ImportError> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) if items.len() <= OBJECTS_MAX => Ok(items),
        Some(Value::Array(_)) => Err(ImportError::Invalid(format!(
            "more than {OBJECTS_MAX} {key}"
        ))),
        Some(_) => Err(ImportError::Invalid(format!("{key} must be a list"))),
    }
}

fn text(object: &Value, key: &str) -> Result<String, ImportError> {
    object
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            ImportError::Invalid(format!("an object lacks the string '{key}': {object}"))
        })
}

fn flag(object: &Value, key: &str, default: bool) -> bool {
    object.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// RabbitMQ's tags: a comma-separated string (3.x) or a list (3.10+).
fn tags(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Declare or binding arguments: JSON values as AMQP field values, at most as deep as a
/// client's tables may be (`protocol/table.rs`), so what is logged restores.
pub fn arguments(value: Option<&Value>) -> Result<FieldTable, ImportError> {
    table(value)
}

fn table(value: Option<&Value>) -> Result<FieldTable, ImportError> {
    let mut out = FieldTable::default();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, v) in map {
                out.insert(key.as_str().into(), field(v, 1)?);
            }
        }
        Some(_) => return Err(ImportError::Invalid("arguments must be an object".into())),
    }
    Ok(out)
}

fn field(value: &Value, depth: usize) -> Result<AMQPValue, ImportError> {
    if depth > crate::protocol::MAX_FIELD_DEPTH {
        return Err(ImportError::Invalid(format!(
            "arguments nested deeper than {} levels",
            crate::protocol::MAX_FIELD_DEPTH
        )));
    }
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(|v| field(v, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(map) => {
            let mut inner = FieldTable::default();
            for (key, v) in map {
                inner.insert(key.as_str().into(), field(v, depth + 1)?);
            }
            AMQPValue::FieldTable(inner)
        }
    })
}
