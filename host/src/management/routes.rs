//! The routes: RabbitMQ's paths, methods, status codes and JSON shapes.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use crate::auth::{Algorithm, PasswordHash};
use crate::broker::Shared;
use crate::connection::ConnectionInfo;
use crate::meta::{MetaCommand, VhostMeta};
use crate::vhost::VHost;

type Api = Result<Response, ApiError>;

/// Every route, over the broker's state.
pub fn router(shared: Arc<Shared>) -> Router {
    // One byte over the limit reaches the broker, which answers with the limit's name.
    let upload_limit = usize::try_from(shared.config.wasm_upload_max_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost_get).put(vhost_put).delete(vhost_delete),
        )
        .route("/api/users", get(users))
        .route(
            "/api/users/{name}",
            get(user_get).put(user_put).delete(user_delete),
        )
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission_get)
                .put(permission_put)
                .delete(permission_delete),
        )
        .route("/api/vhost-limits", get(vhost_limits_all))
        .route("/api/vhost-limits/{vhost}", get(vhost_limits_of))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(vhost_limit_put).delete(vhost_limit_delete),
        )
        .route("/api/queues", get(super::objects::queues_all))
        .route("/api/queues/{vhost}", get(super::objects::queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(super::objects::queue_get)
                .put(super::objects::queue_put)
                .delete(super::objects::queue_delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(super::objects::queue_purge),
        )
        .route(
            "/api/exchanges/{vhost}/{name}",
            axum::routing::put(super::objects::exchange_put)
                .delete(super::objects::exchange_delete),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            axum::routing::post(super::objects::publish),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{target}",
            axum::routing::post(super::objects::binding_post),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{target}/{props}",
            axum::routing::delete(super::objects::binding_delete),
        )
        .route("/api/exchanges", get(super::objects::exchanges_all))
        .route("/api/exchanges/{vhost}", get(super::objects::exchanges_in))
        .route("/api/bindings", get(super::objects::bindings_all))
        .route("/api/bindings/{vhost}", get(super::objects::bindings_in))
        .route(
            "/api/definitions",
            get(super::definitions::export)
                .post(super::definitions::import)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::definitions::DEFINITIONS_MAX_BYTES,
                )),
        )
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection_get).delete(connection_delete),
        )
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/plugins", get(super::plugins::list))
        .route(
            "/api/plugins/{vhost}",
            get(super::plugins::of_vhost)
                .post(super::plugins::upload)
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/api/plugins/{vhost}/{name}/rollback",
            axum::routing::post(super::plugins::rollback),
        )
        .route(
            "/api/plugins/{vhost}/{name}",
            axum::routing::delete(super::plugins::remove),
        )
        .fallback(|| async { ApiError::not_found() })
        .with_state(shared)
}

pub(super) fn ok(value: Value) -> Api {
    Ok(Json(value).into_response())
}

pub(super) fn no_content() -> Api {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// 201 for a new object, 204 for a changed one, as RabbitMQ.
pub(super) fn created_or_updated(existed: bool) -> Api {
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
    .into_response())
}

/// Applies a metadata command on a blocking thread (it syncs the meta log).
pub(super) async fn execute(shared: &Arc<Shared>, command: MetaCommand) -> Result<(), ApiError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || shared.execute_meta(command))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// A JSON object body; anything else is 400 with the parser's reason.
pub(super) fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("expected a JSON object")),
        Err(error) => Err(ApiError::bad_request(format!("invalid JSON: {error}"))),
    }
}

fn string_field(
    body: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

/// RabbitMQ's tags: a comma-separated string (3.x) or an array of strings (4.x).
fn tags_field(body: &serde_json::Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(split(s))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::bad_request("tags must be a string or a list")),
    }
}

pub(super) fn node_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        format!("bourse@{host}")
    })
}

/// Ready, unacknowledged and consumers of a vhost's queues.
fn counts(vhost: &VHost) -> (usize, usize, usize) {
    vhost.queues().iter().fold((0, 0, 0), |(r, u, c), q| {
        (
            r + q.message_count(),
            u + q.unacked_count(),
            c + q.consumer_count(),
        )
    })
}

async fn overview(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let vhosts: Vec<Arc<VHost>> = shared
        .vhost_list()
        .into_iter()
        .filter(|v| who.sees_vhost(&v.name))
        .collect();
    let (mut ready, mut unacked, mut consumers, mut queues, mut exchanges) = (0, 0, 0, 0, 0);
    for vhost in &vhosts {
        let (r, u, c) = counts(vhost);
        ready += r;
        unacked += u;
        consumers += c;
        queues += vhost.queues().len();
        exchanges += vhost.exchanges().len();
    }
    let connections = shared
        .connection_list()
        .iter()
        .filter(|c| who.sees_all() || c.user == who.user.name)
        .count();
    let version = env!("CARGO_PKG_VERSION");
    let mut listeners = vec![json!({
        "node": node_name(), "protocol": "amqp",
        "ip_address": shared.config.listen.ip().to_string(), "port": shared.config.listen.port(),
    })];
    if let Some(tls) = &shared.config.tls {
        listeners.push(json!({
            "node": node_name(), "protocol": "amqp/ssl",
            "ip_address": tls.listen.ip().to_string(), "port": tls.listen.port(),
        }));
    }
    ok(json!({
        "management_version": version,
        "product_name": "bourse",
        "product_version": version,
        "rabbitmq_version": version,
        "cluster_name": node_name(),
        "node": node_name(),
        "object_totals": {
            "connections": connections,
            "queues": queues,
            "exchanges": exchanges,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "listeners": listeners,
    }))
}

async fn whoami(who: Who) -> Api {
    ok(json!({ "name": who.user.name, "tags": who.user.tags }))
}

fn vhost_json(name: &str, meta: &VhostMeta, open: Option<&VHost>) -> Value {
    let (ready, unacked, _) = open.map(counts).unwrap_or_default();
    json!({
        "name": name,
        "description": meta.description,
        "tags": meta.tags,
        "metadata": { "description": meta.description, "tags": meta.tags },
        "default_queue_type": "classic",
        "tracing": false,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

async fn vhosts(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let state = shared.meta.state();
    let list: Vec<Value> = state
        .vhosts
        .iter()
        .filter(|(name, _)| who.sees_vhost(name))
        .map(|(name, meta)| vhost_json(name, meta, shared.vhost(name).as_deref()))
        .collect();
    ok(Value::Array(list))
}

async fn vhost_get(State(shared): State<Arc<Shared>>, who: Who, Path(vhost): Path<String>) -> Api {
    who.require_vhost(&vhost)?;
    let state = shared.meta.state();
    let meta = state.vhosts.get(&vhost).ok_or_else(ApiError::not_found)?;
    ok(vhost_json(&vhost, meta, shared.vhost(&vhost).as_deref()))
}

async fn vhost_put(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
    body: Bytes,
) -> Api {
    who.require_admin()?;
    let body = body_object(&body)?;
    let existing = shared.meta.state().vhosts.get(&vhost).cloned();
    let description = string_field(&body, "description")?
        .or_else(|| existing.as_ref().map(|v| v.description.clone()))
        .unwrap_or_default();
    let tags = tags_field(&body)?
        .or_else(|| existing.as_ref().map(|v| v.tags.clone()))
        .unwrap_or_default();
    execute(
        &shared,
        MetaCommand::PutVhost {
            name: vhost,
            description,
            tags,
        },
    )
    .await?;
    created_or_updated(existing.is_some())
}

async fn vhost_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_admin()?;
    execute(&shared, MetaCommand::DeleteVhost { name: vhost }).await?;
    no_content()
}

fn user_json(shared: &Shared, name: &str) -> Option<Value> {
    let state = shared.meta.state();
    let user = state.users.get(name)?;
    let limits = state.user_limits.get(name).cloned().unwrap_or_default();
    Some(json!({
        "name": name,
        "password_hash": user.password_hash,
        "hashing_algorithm": user.hashing_algorithm,
        "tags": user.tags,
        "limits": limits,
    }))
}

async fn users(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_admin()?;
    let names: Vec<String> = shared.meta.state().users.keys().cloned().collect();
    ok(Value::Array(
        names.iter().filter_map(|n| user_json(&shared, n)).collect(),
    ))
}

async fn user_get(State(shared): State<Arc<Shared>>, who: Who, Path(name): Path<String>) -> Api {
    who.require_admin()?;
    ok(user_json(&shared, &name).ok_or_else(ApiError::not_found)?)
}

async fn user_put(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
    body: Bytes,
) -> Api {
    who.require_admin()?;
    let body = body_object(&body)?;
    let existing = shared.meta.state().users.get(&name).cloned();
    let tags = tags_field(&body)?
        .or_else(|| existing.as_ref().map(|u| u.tags.clone()))
        .unwrap_or_default();
    let (password_hash, hashing_algorithm) = match (
        string_field(&body, "password")?,
        string_field(&body, "password_hash")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give password or password_hash, not both",
            ));
        }
        (Some(password), None) => {
            let hash = PasswordHash::new(&password, Algorithm::Sha256)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            (
                hash.to_rabbit(),
                "rabbit_password_hashing_sha256".to_owned(),
            )
        }
        (None, Some(hash)) => (
            hash,
            string_field(&body, "hashing_algorithm")?
                .unwrap_or_else(|| "rabbit_password_hashing_sha256".to_owned()),
        ),
        (None, None) => match &existing {
            Some(user) => (user.password_hash.clone(), user.hashing_algorithm.clone()),
            None => {
                return Err(ApiError::bad_request(
                    "password or password_hash is required",
                ));
            }
        },
    };
    execute(
        &shared,
        MetaCommand::PutUser {
            name,
            password_hash,
            hashing_algorithm,
            tags,
        },
    )
    .await?;
    created_or_updated(existing.is_some())
}

async fn user_delete(State(shared): State<Arc<Shared>>, who: Who, Path(name): Path<String>) -> Api {
    who.require_admin()?;
    execute(&shared, MetaCommand::DeleteUser { name }).await?;
    no_content()
}

pub(super) fn permission_json(user: &str, vhost: &str, p: &crate::meta::PermissionMeta) -> Value {
    json!({
        "user": user, "vhost": vhost,
        "configure": p.configure, "write": p.write, "read": p.read,
    })
}

async fn permissions(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_admin()?;
    let state = shared.meta.state();
    ok(Value::Array(
        state
            .permissions
            .iter()
            .map(|((user, vhost), p)| permission_json(user, vhost, p))
            .collect(),
    ))
}

async fn permission_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, user)): Path<(String, String)>,
) -> Api {
    who.require_admin()?;
    let state = shared.meta.state();
    let p = state
        .permissions
        .get(&(user.clone(), vhost.clone()))
        .ok_or_else(ApiError::not_found)?;
    ok(permission_json(&user, &vhost, p))
}

async fn permission_put(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    who.require_admin()?;
    let body = body_object(&body)?;
    let field = |key: &str| -> Result<String, ApiError> {
        string_field(&body, key)?.ok_or_else(|| ApiError::bad_request(format!("{key} is required")))
    };
    let (configure, write, read) = (field("configure")?, field("write")?, field("read")?);
    let existed = shared
        .meta
        .state()
        .permissions
        .contains_key(&(user.clone(), vhost.clone()));
    execute(
        &shared,
        MetaCommand::SetPermissions {
            user,
            vhost,
            configure,
            write,
            read,
        },
    )
    .await?;
    created_or_updated(existed)
}

async fn permission_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, user)): Path<(String, String)>,
) -> Api {
    who.require_admin()?;
    execute(&shared, MetaCommand::ClearPermissions { user, vhost }).await?;
    no_content()
}

fn limits_json(vhost: &str, meta: &VhostMeta) -> Option<Value> {
    (!meta.limits.is_empty()).then(|| json!({ "vhost": vhost, "value": meta.limits }))
}

async fn vhost_limits_all(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let state = shared.meta.state();
    ok(Value::Array(
        state
            .vhosts
            .iter()
            .filter(|(name, _)| who.sees_vhost(name))
            .filter_map(|(name, meta)| limits_json(name, meta))
            .collect(),
    ))
}

async fn vhost_limits_of(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_vhost(&vhost)?;
    let state = shared.meta.state();
    let meta = state.vhosts.get(&vhost).ok_or_else(ApiError::not_found)?;
    ok(Value::Array(
        limits_json(&vhost, meta).into_iter().collect(),
    ))
}

async fn vhost_limit_put(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Api {
    who.require_admin()?;
    let body = body_object(&body)?;
    let value = body
        .get("value")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("value must be an integer"))?;
    let limits = [(name, value)].into_iter().collect();
    execute(&shared, MetaCommand::SetVhostLimits { vhost, limits }).await?;
    no_content()
}

async fn vhost_limit_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    who.require_admin()?;
    // A negative value removes the runtime limit (the config file's applies again).
    let limits = [(name, -1)].into_iter().collect();
    execute(&shared, MetaCommand::SetVhostLimits { vhost, limits }).await?;
    no_content()
}

/// The connections `who` may see: all for monitoring users, their own for the others (as
/// RabbitMQ).
fn visible_connections(shared: &Shared, who: &Who) -> Vec<Arc<ConnectionInfo>> {
    shared
        .connection_list()
        .into_iter()
        .filter(|c| who.sees_all() || c.user == who.user.name)
        .collect()
}

/// RabbitMQ's connection name: `peer -> listener`.
fn connection_name(shared: &Shared, c: &ConnectionInfo) -> String {
    let local = match &c.tls {
        Some(_) => shared
            .config
            .tls
            .as_ref()
            .map_or(shared.config.listen, |t| t.listen),
        None => shared.config.listen,
    };
    format!("{} -> {}", c.peer, local)
}

async fn connection_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
) -> Api {
    let found = visible_connections(&shared, &who)
        .into_iter()
        .find(|c| connection_name(&shared, c) == name)
        .ok_or_else(ApiError::not_found)?;
    ok(connection_json(&shared, &found))
}

/// Closes a connection with 320 CONNECTION_FORCED and the `X-Reason` header's text, as
/// RabbitMQ (administrators close any, others their own).
async fn connection_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Api {
    let found = visible_connections(&shared, &who)
        .into_iter()
        .find(|c| connection_name(&shared, c) == name)
        .ok_or_else(ApiError::not_found)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .map(|r| r.chars().take(200).collect::<String>())
        .unwrap_or_else(|| "Closed via management plugin".to_owned());
    found.force_close(reason);
    no_content()
}

async fn connections(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let list: Vec<Value> = visible_connections(&shared, &who)
        .iter()
        .map(|c| connection_json(&shared, c))
        .collect();
    ok(Value::Array(list))
}

fn connection_json(shared: &Shared, c: &ConnectionInfo) -> Value {
    let local = shared.config.listen;
    let tls = c.tls.as_ref();
    json!({
                "name": connection_name(shared, c),
                "node": node_name(),
                "user": c.user,
                "vhost": c.vhost,
                "state": c.state().as_str(),
                "protocol": "AMQP 0-9-1",
                "peer_host": c.peer.ip().to_string(),
                "peer_port": c.peer.port(),
                "host": local.ip().to_string(),
                "port": local.port(),
                "ssl": tls.is_some(),
                "ssl_protocol": tls.map(|t| t.protocol),
                "ssl_cipher": tls.map(|t| t.cipher.clone()),
                "peer_cert_subject": tls.and_then(|t| t.peer_cert_subject.clone()),
    })
}

async fn alarms(State(shared): State<Arc<Shared>>, _who: Who) -> Api {
    if shared.memory.is_alarmed() {
        let body = json!({
            "status": "failed",
            "reason": "resource alarm(s) in effect in the cluster",
            "alarms": [{ "node": node_name(), "resource": "memory" }],
        });
        return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    ok(json!({ "status": "ok" }))
}
