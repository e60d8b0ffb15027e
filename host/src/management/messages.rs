//! Messages through the API, as RabbitMQ's management plugin offers them for tests and
//! debugging: publish into an exchange, and get (and requeue or drop) from a queue. Neither
//! is a fast path; both are checked against the user's AMQP permissions in the vhost.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use super::json::table;
use super::objects::Scope;
use super::routes::{body_object, ok};
use crate::auth::{Access, ResourceKind};
use crate::broker::Shared;

type Api = Result<Response, ApiError>;

/// At most this many messages per get request.
const GET_MAX: u64 = 10_000;

/// POST /api/exchanges/{vhost}/{name}/publish: `{"routing_key", "payload",
/// "payload_encoding": "string" | "base64", "properties": {...}}`; write on the exchange.
/// Answers `{"routed": bool}` (as RabbitMQ: for tests and debugging, not a fast path; no
/// confirm waits for the disk).
pub async fn publish(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    let Posted {
        scope,
        exchange,
        routing_key,
        properties,
        message,
    } = posted_message(&shared, &who, &vhost, &name, &body)?;
    let open = scope.vhost.clone();
    let routed = tokio::task::spawn_blocking(move || {
        let mut routed = crate::vhost::Routed::default();
        open.route(
            &exchange,
            &message,
            &properties,
            &[&routing_key],
            &mut routed,
        );
        let reached = !routed.queues.is_empty() || !routed.replies.is_empty();
        crate::vhost::ExchangeTally::default().count(&exchange, reached);
        open.count_published(1);
        // A delayed exchange holds it (the answer says whether it would be routed now).
        if let Some(delayed) = exchange.delayed().filter(|d| !d.decided())
            && let Some(due) =
                crate::vhost::delayed::due_time(&properties, crate::vhost::delayed::now_ms())
        {
            routed.queues.clear();
            routed.replies.clear();
            return delayed.hold(&message, &[], due).map(|_| reached);
        }
        // A plugin delayed it: held for the queues it reached now.
        if routed.delay_ms > 0
            && let Some(delayed) = exchange.delayed()
        {
            let queues: Vec<_> = routed.queues.drain(..).map(|q| q.name().clone()).collect();
            routed.replies.clear();
            let due = crate::vhost::delayed::now_ms().saturating_add(routed.delay_ms);
            return delayed
                .hold_decided(&message, &queues, due)
                .map(|_| reached);
        }
        for queue in routed.queues.drain(..) {
            queue.publish(message.clone());
        }
        for reply in routed.replies.drain(..) {
            reply.deliver_reply(&message);
        }
        Ok(reached)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::from)?;
    Ok(axum::Json(serde_json::json!({ "routed": routed })).into_response())
}

/// POST /api/exchanges/{vhost}/{name}/explain (bourse's own): the body of a publish; write on
/// the exchange. Answers where the message would go now, without sending it: each exchange
/// passed through (how it was reached, what its router chose through which bindings, a
/// router's failure, an alternate exchange taken), the queues that would receive it, and for
/// a delayed exchange the time it would be held until. The routing key and the `CC` and
/// `BCC` headers' keys are routed, as a publish routes them.
pub async fn explain(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    let Posted {
        scope,
        exchange,
        routing_key,
        properties,
        message,
    } = posted_message(&shared, &who, &vhost, &name, &body)?;
    let mut keys = vec![crate::exchange::Name::from(routing_key)];
    if let Some(headers) = properties.headers() {
        crate::message::header_keys(headers.inner().get("CC"), &mut keys);
        crate::message::header_keys(headers.inner().get("BCC"), &mut keys);
    }
    let open = scope.vhost.clone();
    let explained = tokio::task::spawn_blocking(move || {
        let keys: Vec<&str> = keys.iter().map(|k| &**k).collect();
        open.explain(&exchange, &message, &properties, &keys)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(explanation_json(&vhost, &explained)).into_response())
}

/// An explanation as the explain route answers it: `{"routed", "queues": [names],
/// "direct_reply_consumers", "held_until": ms or null, "hops": [{"exchange", "type", "via":
/// {"kind": "published" | "binding" | "alternate", "from"}, "error", "alternate", "reached":
/// [{"destination", "destination_type", "exists", "bindings": [RabbitMQ's binding
/// objects]}]}]}`.
fn explanation_json(vhost: &str, explained: &crate::vhost::Explanation) -> Value {
    use crate::exchange::Destination;
    use crate::vhost::explain::Via;
    let name = |n: &str| if n.is_empty() { "amq.default" } else { n }.to_owned();
    let hops: Vec<Value> = explained
        .hops
        .iter()
        .map(|hop| {
            let via = match &hop.via {
                Via::Published => json!({ "kind": "published" }),
                Via::Binding(from) => json!({ "kind": "binding", "from": name(from) }),
                Via::Alternate(from) => json!({ "kind": "alternate", "from": name(from) }),
            };
            let reached: Vec<Value> = hop
                .reached
                .iter()
                .map(|r| {
                    let (kind, to) = match &r.destination {
                        Destination::Queue(q) => ("queue", q),
                        Destination::Exchange(x) => ("exchange", x),
                    };
                    json!({
                        "destination": &**to,
                        "destination_type": kind,
                        "exists": r.exists,
                        "bindings": r.bindings.iter()
                            .map(|b| super::objects::binding_json(vhost, &hop.exchange, b))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "exchange": name(&hop.exchange),
                "type": &*hop.kind,
                "via": via,
                "reached": reached,
                "error": hop.error,
                "alternate": hop.alternate.as_deref(),
            })
        })
        .collect();
    json!({
        "routed": explained.routed(),
        "queues": explained.queues.iter().map(|q| &**q).collect::<Vec<_>>(),
        "direct_reply_consumers": explained.replies,
        "held_until": explained.held_until_ms,
        "hops": hops,
    })
}

/// A message posted to the publish or explain route, checked.
struct Posted {
    scope: Scope,
    exchange: Arc<crate::vhost::Exchange>,
    routing_key: String,
    properties: amq_protocol::protocol::BasicProperties,
    message: Arc<crate::message::Message>,
}

/// Reads a publish body (`{"routing_key", "payload", "payload_encoding": "string" |
/// "base64", "properties": {...}}`) for exchange `name` of `vhost`, which the user must
/// be allowed to write to.
fn posted_message(
    shared: &Arc<Shared>,
    who: &Who,
    vhost: &str,
    name: &str,
    body: &Bytes,
) -> Result<Posted, ApiError> {
    use base64::Engine as _;
    let scope = Scope::of(shared, who, vhost)?;
    let body = body_object(body)?;
    let exchange_name = if name == "amq.default" { "" } else { name };
    scope.may(
        Access::Write,
        ResourceKind::Exchange,
        if exchange_name.is_empty() {
            "amq.default"
        } else {
            exchange_name
        },
    )?;
    let exchange = scope
        .vhost
        .exchange(exchange_name)
        .map_err(ApiError::from)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let payload = body
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("payload is required"))?;
    let payload = match body.get("payload_encoding").and_then(Value::as_str) {
        None | Some("string") => Bytes::copy_from_slice(payload.as_bytes()),
        Some("base64") => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, not {other}"
            )));
        }
    };
    if payload.len() as u64 > shared.config.max_message_bytes {
        return Err(ApiError::bad_request(
            "payload larger than max_message_bytes",
        ));
    }
    let properties = properties(body.get("properties"))?;
    let raw = crate::protocol::encode_properties(&properties).map_err(ApiError::from)?;
    let message = Arc::new(crate::message::Message::new(
        exchange.spec.name.clone(),
        routing_key.as_str().into(),
        &properties,
        &raw,
        payload,
    ));
    Ok(Posted {
        scope,
        exchange,
        routing_key,
        properties,
        message,
    })
}

/// The AMQP properties RabbitMQ's publish route takes.
fn properties(value: Option<&Value>) -> Result<amq_protocol::protocol::BasicProperties, ApiError> {
    let mut p = amq_protocol::protocol::BasicProperties::default();
    let Some(map) = value.and_then(Value::as_object) else {
        return Ok(p);
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(|s| s.into());
    if let Some(mode) = map.get("delivery_mode").and_then(Value::as_u64) {
        p = p.with_delivery_mode(u8::try_from(mode).unwrap_or(1));
    }
    if let Some(priority) = map.get("priority").and_then(Value::as_u64) {
        p = p.with_priority(u8::try_from(priority).unwrap_or(u8::MAX));
    }
    if let Some(v) = text("content_type") {
        p = p.with_content_type(v);
    }
    if let Some(v) = text("correlation_id") {
        p = p.with_correlation_id(v);
    }
    if let Some(v) = text("message_id") {
        p = p.with_message_id(v);
    }
    if let Some(v) = text("reply_to") {
        p = p.with_reply_to(v);
    }
    if let Some(v) = text("expiration") {
        p = p.with_expiration(v);
    }
    if let Some(v) = text("type") {
        p = p.with_type(v);
    }
    if let Some(v) = text("app_id") {
        p = p.with_app_id(v);
    }
    if let Some(headers) = map.get("headers") {
        p = p.with_headers(
            crate::definitions::arguments(Some(headers))
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
    }
    Ok(p)
}

// Listing: what GET shows of them.

/// What a get does with the messages it took.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    /// Back to the queue, marked redelivered (RabbitMQ's `ack_requeue_true` and
    /// `reject_requeue_true`).
    Requeue,
    /// Removed (`ack_requeue_false`).
    Ack,
    /// Removed and dead-lettered when the queue has a dead-letter exchange
    /// (`reject_requeue_false`).
    Reject,
}

/// POST /api/queues/{vhost}/{name}/get: `{"count", "ackmode", "encoding", "truncate"}`;
/// read on the queue. Answers RabbitMQ's list of messages.
pub async fn get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    let body = body_object(&body)?;
    scope.may(Access::Read, ResourceKind::Queue, &name)?;
    let queue = scope
        .vhost
        .queue(&name)
        .map_err(|_| ApiError::not_found())?;
    let count = match body.get("count") {
        None => 1,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| (1..=GET_MAX).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("count must be 1 to {GET_MAX}")))?,
    };
    let mode = match body.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true" | "reject_requeue_true") => AckMode::Requeue,
        Some("ack_requeue_false") => AckMode::Ack,
        Some("reject_requeue_false") => AckMode::Reject,
        _ => {
            return Err(ApiError::bad_request(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true \
                 or reject_requeue_false",
            ));
        }
    };
    let base64_only = match body.get("encoding").and_then(Value::as_str) {
        None | Some("auto") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding must be auto or base64, not {other}"
            )));
        }
    };
    let truncate = body
        .get("truncate")
        .and_then(Value::as_u64)
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let list = tokio::task::spawn_blocking(move || {
        let mut taken = Vec::new();
        let mut out = Vec::new();
        for _ in 0..count {
            // Taken as unacked, whatever the mode: a stored message stays in the store until
            // it is settled below (requeued ones come back after a crash too).
            let Some((entry, remaining)) = queue.get(false) else {
                break;
            };
            out.push(message_json(&entry, remaining, base64_only, truncate));
            taken.push(entry);
        }
        match mode {
            AckMode::Requeue => queue.requeue(taken),
            AckMode::Ack => {
                let positions: Vec<u64> = taken
                    .iter()
                    .map(|e| e.position)
                    .filter(|p| *p != 0)
                    .collect();
                queue.settle(taken.len(), &positions);
            }
            AckMode::Reject => queue.reject(taken),
        }
        out
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    ok(Value::Array(list))
}

fn message_json(
    entry: &crate::message::QueuedMessage,
    remaining: usize,
    base64_only: bool,
    truncate: usize,
) -> Value {
    use base64::Engine as _;
    let m = &entry.message;
    let body = &m.body()[..m.body().len().min(truncate)];
    let (payload, encoding) = match std::str::from_utf8(body) {
        Ok(text) if !base64_only => (text.to_owned(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    };
    json!({
        "payload_bytes": m.body().len(),
        "redelivered": entry.redelivered(),
        "exchange": m.exchange().to_string(),
        "routing_key": m.routing_key().to_string(),
        "message_count": remaining,
        "properties": properties_json(&m.properties()),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// A message's properties as RabbitMQ's API shows them (only those set).
fn properties_json(p: &amq_protocol::protocol::BasicProperties) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            out.insert(key.to_owned(), value);
        }
    };
    let text = |s: Option<&amq_protocol::types::ShortString>| s.map(|s| json!(s.as_str()));
    put("content_type", text(p.content_type().as_ref()));
    put("content_encoding", text(p.content_encoding().as_ref()));
    put("headers", p.headers().as_ref().map(table));
    put("delivery_mode", p.delivery_mode().map(|m| json!(m)));
    put("priority", p.priority().map(|m| json!(m)));
    put("correlation_id", text(p.correlation_id().as_ref()));
    put("reply_to", text(p.reply_to().as_ref()));
    put("expiration", text(p.expiration().as_ref()));
    put("message_id", text(p.message_id().as_ref()));
    put("timestamp", p.timestamp().map(|m| json!(m)));
    put("type", text(p.kind().as_ref()));
    put("user_id", text(p.user_id().as_ref()));
    put("app_id", text(p.app_id().as_ref()));
    Value::Object(out)
}
