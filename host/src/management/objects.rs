//! Declaring, deleting and purging through the API, as RabbitMQ's management plugin does it:
//! exchanges, queues and bindings in a vhost, checked against the user's AMQP permissions
//! there (the same rules as the AMQP methods: `channel/access.rs`), applied through the same
//! `VHost` calls as a channel's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use super::json::table;
use super::routes::{body_object, created_or_updated, node_name, ok};
use crate::auth::{Access, ResourceKind};
use crate::broker::Shared;
use crate::exchange::{Binding, Destination};
use crate::protocol::{AmqpError, ReplyCode};
use crate::queue::QueueSpec;
use crate::vhost::{ExchangeSpec, VHost};

type Api = Result<Response, ApiError>;

/// Not a client connection: exclusive queues are not this caller's.
const API_CONNECTION: crate::queue::ConnectionId = 0;

impl From<AmqpError> for ApiError {
    fn from(error: AmqpError) -> Self {
        match error.code {
            ReplyCode::NotFound => ApiError::not_found(),
            ReplyCode::AccessRefused => ApiError::not_authorised(error.text),
            _ => ApiError::bad_request(error.text),
        }
    }
}

/// The open vhost, and a check of `access` on `name` with the user's permissions there.
struct Scope {
    vhost: Arc<VHost>,
    grants: Arc<crate::auth::Grants>,
}

impl Scope {
    fn of(shared: &Shared, who: &Who, vhost: &str) -> Result<Self, ApiError> {
        let open = open_vhost(shared, who, vhost)?;
        let grants = shared
            .users
            .grants(&who.user.name, vhost)
            .ok_or_else(|| ApiError::not_authorised("Access refused."))?;
        Ok(Self {
            vhost: open,
            grants,
        })
    }

    fn may(&self, access: Access, kind: ResourceKind, name: &str) -> Result<(), ApiError> {
        self.grants
            .check(access, kind, name)
            .map_err(ApiError::from)
    }
}

fn flag(body: &serde_json::Map<String, Value>, key: &str, default: bool) -> bool {
    body.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn arguments(
    body: &serde_json::Map<String, Value>,
) -> Result<amq_protocol::types::FieldTable, ApiError> {
    crate::definitions::arguments(body.get("arguments"))
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Runs a vhost change on a blocking thread (it may log and sync).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AmqpError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// PUT /api/exchanges/{vhost}/{name}: `{"type", "durable", "auto_delete", "internal",
/// "arguments"}`; configure on the exchange.
pub async fn exchange_put(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    let body = body_object(&body)?;
    scope.may(Access::Configure, ResourceKind::Exchange, &name)?;
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("type is required"))?;
    let spec = ExchangeSpec {
        name: name.as_str().into(),
        kind: kind.into(),
        durable: flag(&body, "durable", true),
        auto_delete: flag(&body, "auto_delete", false),
        internal: flag(&body, "internal", false),
        arguments: arguments(&body)?,
    };
    let existed = scope.vhost.exchange(&name).is_ok();
    let open = scope.vhost.clone();
    blocking(move || open.declare_exchange(spec)).await?;
    created_or_updated(existed)
}

/// DELETE /api/exchanges/{vhost}/{name}; configure on the exchange.
pub async fn exchange_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    scope.may(Access::Configure, ResourceKind::Exchange, &name)?;
    scope.vhost.exchange(&name).map_err(ApiError::from)?;
    let open = scope.vhost.clone();
    blocking(move || open.delete_exchange(&name, false)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// PUT /api/queues/{vhost}/{name}: `{"durable", "auto_delete", "arguments"}`; configure on
/// the queue.
pub async fn queue_put(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    let body = body_object(&body)?;
    scope.may(Access::Configure, ResourceKind::Queue, &name)?;
    let spec = QueueSpec {
        name: name.as_str().into(),
        durable: flag(&body, "durable", true),
        exclusive_owner: None,
        auto_delete: flag(&body, "auto_delete", false),
        arguments: arguments(&body)?,
    };
    let existed = scope.vhost.queue(&name).is_ok();
    let open = scope.vhost.clone();
    blocking(move || open.declare_queue(spec).map(|_| ())).await?;
    created_or_updated(existed)
}

/// DELETE /api/queues/{vhost}/{name}; configure on the queue.
pub async fn queue_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    scope.may(Access::Configure, ResourceKind::Queue, &name)?;
    scope.vhost.queue(&name).map_err(ApiError::from)?;
    let open = scope.vhost.clone();
    blocking(move || open.delete_queue(&name, API_CONNECTION, false, false)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// DELETE /api/queues/{vhost}/{name}/contents: purge; read on the queue.
pub async fn queue_purge(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    scope.may(Access::Read, ResourceKind::Queue, &name)?;
    let queue = scope.vhost.queue(&name).map_err(ApiError::from)?;
    queue.purge();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn destination(kind: &str, name: &str) -> Result<(Destination, ResourceKind), ApiError> {
    match kind {
        "q" => Ok((Destination::Queue(name.into()), ResourceKind::Queue)),
        "e" => Ok((Destination::Exchange(name.into()), ResourceKind::Exchange)),
        _ => Err(ApiError::not_found()),
    }
}

/// POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}: `{"routing_key",
/// "arguments"}`; write on the destination, read on the source. Answers 201.
pub async fn binding_post(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, source, kind, target)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    let body = body_object(&body)?;
    let (destination, target_kind) = destination(&kind, &target)?;
    scope.may(Access::Write, target_kind, &target)?;
    scope.may(Access::Read, ResourceKind::Exchange, &source)?;
    let key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let binding = Binding {
        destination,
        routing_key: key.as_str().into(),
        arguments: arguments(&body)?,
    };
    let open = scope.vhost.clone();
    blocking(move || open.bind(&source, binding)).await?;
    Ok(StatusCode::CREATED.into_response())
}

/// DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}: removes the binding
/// whose `properties_key` is `props` (the routing key, for bindings without arguments).
pub async fn binding_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, source, kind, target, props)): Path<(String, String, String, String, String)>,
) -> Api {
    let scope = Scope::of(&shared, &who, &vhost)?;
    let (destination, target_kind) = destination(&kind, &target)?;
    scope.may(Access::Write, target_kind, &target)?;
    scope.may(Access::Read, ResourceKind::Exchange, &source)?;
    let exchange = scope.vhost.exchange(&source).map_err(ApiError::from)?;
    let binding = exchange
        .bindings()
        .into_iter()
        .find(|b| b.destination == destination && *b.routing_key == *props)
        .ok_or_else(ApiError::not_found)?;
    let open = scope.vhost.clone();
    blocking(move || open.unbind(&source, &binding)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

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
    use base64::Engine as _;
    let scope = Scope::of(&shared, &who, &vhost)?;
    let body = body_object(&body)?;
    let exchange_name = if name == "amq.default" {
        ""
    } else {
        name.as_str()
    };
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
        raw,
        payload,
    ));
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
        for queue in routed.queues.drain(..) {
            queue.publish(message.clone());
        }
        for reply in routed.replies.drain(..) {
            reply.deliver_reply(&message);
        }
        reached
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(serde_json::json!({ "routed": routed })).into_response())
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

pub(super) fn queue_json(vhost: &str, q: &crate::queue::Queue) -> Value {
    let (ready, unacked) = (q.message_count(), q.unacked_count());
    json!({
        "name": q.name().to_string(),
        "vhost": vhost,
        "durable": q.spec.durable,
        "auto_delete": q.spec.auto_delete,
        "exclusive": q.spec.exclusive_owner.is_some(),
        "arguments": table(&q.spec.arguments),
        "type": "classic",
        "state": "running",
        "node": node_name(),
        "consumers": q.consumer_count(),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_bytes": q.message_bytes(),
        "memory": q.memory_bytes(),
    })
}

fn visible_vhosts(shared: &Shared, who: &Who) -> Vec<Arc<VHost>> {
    shared
        .vhost_list()
        .into_iter()
        .filter(|v| who.sees_vhost(&v.name))
        .collect()
}

pub async fn queues_all(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let mut list = Vec::new();
    for vhost in visible_vhosts(&shared, &who) {
        list.extend(vhost.queues().iter().map(|q| queue_json(&vhost.name, q)));
    }
    ok(Value::Array(list))
}

fn open_vhost(shared: &Shared, who: &Who, vhost: &str) -> Result<Arc<VHost>, ApiError> {
    who.require_vhost(vhost)?;
    shared.vhost(vhost).ok_or_else(ApiError::not_found)
}

pub async fn queues_in(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    let open = open_vhost(&shared, &who, &vhost)?;
    ok(Value::Array(
        open.queues()
            .iter()
            .map(|q| queue_json(&vhost, q))
            .collect(),
    ))
}

pub async fn queue_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let open = open_vhost(&shared, &who, &vhost)?;
    let queue = open.queue(&name).map_err(|_| ApiError::not_found())?;
    ok(queue_json(&vhost, &queue))
}

pub(super) fn exchange_json(vhost: &str, x: &crate::vhost::Exchange) -> Value {
    json!({
        "name": x.spec.name.to_string(),
        "vhost": vhost,
        "type": x.spec.kind.to_string(),
        "durable": x.spec.durable,
        "auto_delete": x.spec.auto_delete,
        "internal": x.spec.internal,
        "arguments": table(&x.spec.arguments),
    })
}

pub async fn exchanges_all(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let mut list = Vec::new();
    for vhost in visible_vhosts(&shared, &who) {
        list.extend(
            vhost
                .exchanges()
                .iter()
                .map(|x| exchange_json(&vhost.name, x)),
        );
    }
    ok(Value::Array(list))
}

pub async fn exchanges_in(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    let open = open_vhost(&shared, &who, &vhost)?;
    ok(Value::Array(
        open.exchanges()
            .iter()
            .map(|x| exchange_json(&vhost, x))
            .collect(),
    ))
}

pub(super) fn binding_json(vhost: &str, source: &str, b: &crate::exchange::Binding) -> Value {
    let (destination, destination_type) = match &b.destination {
        Destination::Queue(name) => (name.to_string(), "queue"),
        Destination::Exchange(name) => (name.to_string(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": b.routing_key.to_string(),
        "arguments": table(&b.arguments),
        "properties_key": b.routing_key.to_string(),
    })
}

/// The bindings of `vhost` as RabbitMQ lists them: the default exchange's implicit binding
/// of every queue by its name first, then each exchange's.
fn vhost_bindings(vhost: &VHost) -> Vec<Value> {
    let mut out: Vec<Value> = vhost
        .queues()
        .iter()
        .map(|q| {
            json!({
                "source": "", "vhost": vhost.name.to_string(),
                "destination": q.name().to_string(), "destination_type": "queue",
                "routing_key": q.name().to_string(), "arguments": {},
                "properties_key": q.name().to_string(),
            })
        })
        .collect();
    for exchange in vhost.exchanges() {
        for binding in exchange.bindings() {
            out.push(binding_json(&vhost.name, &exchange.spec.name, &binding));
        }
    }
    out
}

pub async fn bindings_all(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let mut list = Vec::new();
    for vhost in visible_vhosts(&shared, &who) {
        list.extend(vhost_bindings(&vhost));
    }
    ok(Value::Array(list))
}

pub async fn bindings_in(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    let open = open_vhost(&shared, &who, &vhost)?;
    ok(Value::Array(vhost_bindings(&open)))
}
