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
use super::routes::{body_object, created_or_updated, ok};
use crate::auth::{Access, ResourceKind};
use crate::broker::Shared;
use crate::exchange::{Binding, Destination};
use crate::protocol::{AmqpError, ReplyCode};
use crate::queue::QueueSpec;
use crate::stats::Rates;
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
pub(super) struct Scope {
    pub(super) vhost: Arc<VHost>,
    grants: Arc<crate::auth::Grants>,
}

impl Scope {
    pub(super) fn of(shared: &Shared, who: &Who, vhost: &str) -> Result<Self, ApiError> {
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

    pub(super) fn may(
        &self,
        access: Access,
        kind: ResourceKind,
        name: &str,
    ) -> Result<(), ApiError> {
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
        .find(|b| b.destination == destination && properties_key(b) == props)
        .ok_or_else(ApiError::not_found)?;
    let open = scope.vhost.clone();
    blocking(move || open.unbind(&source, &binding)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) fn queue_json(shared: &Shared, vhost: &str, q: &crate::queue::Queue) -> Value {
    let rates = &shared.rates;
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
        "node": shared.node_name(),
        "consumers": q.consumer_count(),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_bytes": q.message_bytes(),
        "memory": q.memory_bytes(),
        "message_stats": super::rates::queue(rates, vhost, q),
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
        list.extend(
            vhost
                .queues()
                .iter()
                .map(|q| queue_json(&shared, &vhost.name, q)),
        );
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
            .map(|q| queue_json(&shared, &vhost, q))
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
    ok(queue_json(&shared, &vhost, &queue))
}

pub(super) fn exchange_json(rates: &Rates, vhost: &str, x: &crate::vhost::Exchange) -> Value {
    let mut out = json!({
        "name": x.spec.name.to_string(),
        "vhost": vhost,
        "type": x.spec.kind.to_string(),
        "durable": x.spec.durable,
        "auto_delete": x.spec.auto_delete,
        "internal": x.spec.internal,
        "arguments": table(&x.spec.arguments),
        "message_stats": super::rates::exchange(rates, vhost, x),
    });
    // A delayed-message exchange shows its waiting messages like a queue's count.
    if let (Some(delayed), Some(map)) = (x.delayed(), out.as_object_mut()) {
        map.insert("messages_delayed".into(), json!(delayed.waiting()));
    }
    out
}

pub async fn exchanges_all(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let mut list = Vec::new();
    for vhost in visible_vhosts(&shared, &who) {
        list.extend(
            vhost
                .exchanges()
                .iter()
                .map(|x| exchange_json(&shared.rates, &vhost.name, x)),
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
            .map(|x| exchange_json(&shared.rates, &vhost, x))
            .collect(),
    ))
}

/// GET /api/exchanges/{vhost}/{name} (`amq.default` names the default exchange).
pub async fn exchange_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let open = open_vhost(&shared, &who, &vhost)?;
    let name = if name == "amq.default" { "" } else { &name };
    let x = open.exchange(name).map_err(|_| ApiError::not_found())?;
    ok(exchange_json(&shared.rates, &vhost, &x))
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
        "properties_key": properties_key(b),
    })
}

/// What names one binding among those from a source to a destination in routes (RabbitMQ's
/// `properties_key`): the routing key, and for a binding with arguments `~` and a digest of
/// them (RabbitMQ's digest differs; clients take the key from a listing).
pub(super) fn properties_key(b: &Binding) -> String {
    if b.arguments.inner().is_empty() {
        return b.routing_key.to_string();
    }
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(table(&b.arguments).to_string().as_bytes());
    let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9]);
    format!("{}~{short}", b.routing_key)
}

/// The bindings of the exchange `source` in `vhost` that `keep` selects.
fn bindings_where(
    shared: &Shared,
    who: &Who,
    vhost: &str,
    keep: impl Fn(&str, &Binding) -> bool,
) -> Result<Vec<Value>, ApiError> {
    let open = open_vhost(shared, who, vhost)?;
    let mut out = Vec::new();
    for x in open.exchanges() {
        for b in x.bindings() {
            if keep(&x.spec.name, &b) {
                out.push(binding_json(vhost, &x.spec.name, &b));
            }
        }
    }
    Ok(out)
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}
pub async fn bindings_between(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, source, kind, target)): Path<(String, String, String, String)>,
) -> Api {
    let (destination, _) = destination(&kind, &target)?;
    let list = bindings_where(&shared, &who, &vhost, |x, b| {
        x == source && b.destination == destination
    })?;
    ok(Value::Array(list))
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}
pub async fn binding_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, source, kind, target, props)): Path<(String, String, String, String, String)>,
) -> Api {
    let (destination, _) = destination(&kind, &target)?;
    let mut list = bindings_where(&shared, &who, &vhost, |x, b| {
        x == source && b.destination == destination && properties_key(b) == props
    })?;
    ok(list.pop().ok_or_else(ApiError::not_found)?)
}

/// GET /api/queues/{vhost}/{name}/bindings: the default exchange's implicit one, then the
/// rest.
pub async fn queue_bindings(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let open = open_vhost(&shared, &who, &vhost)?;
    if open.queue(&name).is_err() {
        return Err(ApiError::not_found());
    }
    let queue = Destination::Queue(name.as_str().into());
    let mut list = vec![json!({
        "source": "", "vhost": vhost, "destination": name, "destination_type": "queue",
        "routing_key": name, "arguments": {}, "properties_key": name,
    })];
    list.extend(bindings_where(&shared, &who, &vhost, |_, b| {
        b.destination == queue
    })?);
    ok(Value::Array(list))
}

/// GET /api/exchanges/{vhost}/{name}/bindings/source
pub async fn exchange_bindings_source(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let list = bindings_where(&shared, &who, &vhost, |x, _| x == name)?;
    ok(Value::Array(list))
}

/// GET /api/exchanges/{vhost}/{name}/bindings/destination
pub async fn exchange_bindings_destination(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let target = Destination::Exchange(name.as_str().into());
    let list = bindings_where(&shared, &who, &vhost, |_, b| b.destination == target)?;
    ok(Value::Array(list))
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
