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
use super::{access, activity, rates};
use crate::auth::{Algorithm, PasswordHash};
use crate::broker::Shared;
use crate::meta::{MetaCommand, VhostMeta};
use crate::vhost::VHost;

pub(super) type Api = Result<Response, ApiError>;

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
        .route("/api/permissions", get(access::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(access::permission_get)
                .put(access::permission_put)
                .delete(access::permission_delete),
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
            get(super::objects::exchange_get)
                .put(super::objects::exchange_put)
                .delete(super::objects::exchange_delete),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            axum::routing::post(super::messages::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/explain",
            axum::routing::post(super::messages::explain),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{target}",
            get(super::objects::bindings_between).post(super::objects::binding_post),
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
        .route("/api/connections", get(activity::connections))
        .route(
            "/api/connections/{name}",
            get(activity::connection_get).delete(activity::connection_delete),
        )
        .route(
            "/api/connections/{name}/channels",
            get(activity::connection_channels),
        )
        .route("/api/channels", get(activity::channels))
        .route("/api/channels/{name}", get(activity::channel_get))
        .route("/api/vhosts/{vhost}/channels", get(activity::channels_in))
        .route("/api/consumers", get(activity::consumers))
        .route("/api/consumers/{vhost}", get(activity::consumers_in))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node_get))
        .route("/api/cluster", get(super::cluster::status))
        .route(
            "/api/cluster/members",
            axum::routing::post(super::cluster::join),
        )
        .route(
            "/api/cluster/members/{name}",
            axum::routing::delete(super::cluster::leave),
        )
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/vhosts/{vhost}/permissions", get(access::of_vhost))
        .route("/api/users/{name}/permissions", get(access::of_user))
        .route("/api/topic-permissions", get(access::topic_all))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(access::topic_get)
                .put(access::topic_put)
                .delete(access::topic_delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/get",
            axum::routing::post(super::messages::get),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(super::objects::queue_bindings),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(super::objects::exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(super::objects::exchange_bindings_destination),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{target}/{props}",
            get(super::objects::binding_get).delete(super::objects::binding_delete),
        )
        .route(
            "/api/definitions/{vhost}",
            get(super::definitions::export_vhost)
                .post(super::definitions::import_vhost)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::definitions::DEFINITIONS_MAX_BYTES,
                )),
        )
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/virtual-hosts", get(healthy))
        .route("/api/health/checks/node-is-quorum-critical", get(healthy))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/plugins", get(super::plugins::list))
        .route(
            "/api/plugins/retry",
            axum::routing::post(super::plugins::retry),
        )
        .route(
            "/api/plugins/{vhost}/exchanges/{exchange}/reset",
            axum::routing::post(super::plugins::reset),
        )
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
            "/api/plugins/{vhost}/{name}/shadow",
            get(super::plugins::shadow_status)
                .put(super::plugins::shadow_start)
                .delete(super::plugins::shadow_drop)
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/api/plugins/{vhost}/{name}/shadow/promote",
            axum::routing::post(super::plugins::shadow_promote),
        )
        .route(
            "/api/plugins/{vhost}/{name}",
            axum::routing::delete(super::plugins::remove),
        )
        .route("/", get(super::console::index))
        .route("/console/{file}", get(super::console::file))
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

/// Applies a metadata command: through the cluster's leader when clustered, else on a
/// blocking thread (it syncs the meta log).
pub(super) async fn execute(shared: &Arc<Shared>, command: MetaCommand) -> Result<(), ApiError> {
    shared.submit_meta(command).await.map_err(ApiError::from)
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

pub(super) fn string_field(
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
    let visible: Vec<_> = shared
        .connection_list()
        .into_iter()
        .filter(|c| who.sees_all() || c.user == who.user.name)
        .collect();
    let connections = visible.len();
    let channels: usize = visible.iter().map(|c| c.channels().len()).sum();
    let version = env!("CARGO_PKG_VERSION");
    let listeners: Vec<Value> = listeners(&shared)
        .into_iter()
        .map(|(protocol, at)| {
            json!({
                "node": shared.node_name(), "protocol": protocol,
                "ip_address": at.ip().to_string(), "port": at.port(),
            })
        })
        .collect();
    ok(json!({
        "management_version": version,
        "product_name": "bourse",
        "product_version": version,
        "rabbitmq_version": version,
        "cluster_name": shared.node_name(),
        "node": shared.node_name(),
        "message_stats": rates::vhosts(&shared.rates, &vhosts),
        "object_totals": {
            "channels": channels,
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

/// The configured listeners by RabbitMQ's protocol names.
fn listeners(shared: &Shared) -> Vec<(&'static str, std::net::SocketAddr)> {
    let config = &shared.config;
    let mut out = vec![("amqp", config.listen)];
    out.extend(config.tls.as_ref().map(|tls| ("amqp/ssl", tls.listen)));
    out.extend(config.management_listen.map(|at| ("http", at)));
    out.extend(config.management_tls_listen.map(|at| ("https", at)));
    out.extend(config.prometheus_listen.map(|at| ("http/prometheus", at)));
    out
}

/// This node, as RabbitMQ describes one (the fields its clients and console read).
fn node_json(shared: &Shared) -> Value {
    static STARTED: OnceLock<std::time::Instant> = OnceLock::new();
    let started = STARTED.get_or_init(std::time::Instant::now);
    let processors = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "name": shared.node_name(),
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        // Before the monitor's first sample (a broker just started), read it now.
        "mem_used": shared
            .memory
            .rss_bytes()
            .or_else(|| crate::memory::process_rss_bytes().ok())
            .unwrap_or(0),
        "mem_limit": shared.memory.watermark_bytes(),
        "mem_alarm": shared.memory.is_alarmed(),
        "disk_free_alarm": false,
        "processors": processors,
        "uptime": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "sockets_used": shared.connection_list().len(),
        "rates_mode": "basic",
        "being_drained": false,
        "partitions": [],
        "product_name": "bourse",
        "product_version": env!("CARGO_PKG_VERSION"),
    })
}

/// GET /api/nodes (monitoring users and administrators, as RabbitMQ). In a cluster: every
/// member, each with its `cluster` object (`super::cluster`).
async fn nodes(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_monitoring()?;
    if shared.cluster().is_some() {
        return ok(Value::Array(
            super::cluster::nodes(&shared, node_json(&shared)).await,
        ));
    }
    ok(json!([node_json(&shared)]))
}

/// GET /api/nodes/{name}
async fn node_get(State(shared): State<Arc<Shared>>, who: Who, Path(name): Path<String>) -> Api {
    who.require_monitoring()?;
    if name != shared.node_name() {
        return Err(ApiError::not_found());
    }
    ok(node_json(&shared))
}

/// GET /api/aliveness-test/{vhost}: a message through a queue of the vhost and back (RabbitMQ
/// declares `aliveness-test` and publishes into it; here the queue is the API's own and
/// never listed).
async fn aliveness(State(shared): State<Arc<Shared>>, who: Who, Path(vhost): Path<String>) -> Api {
    who.require_vhost(&vhost)?;
    let open = shared.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let queue = crate::queue::Queue::new(crate::queue::QueueSpec {
        name: "aliveness-test".into(),
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: Default::default(),
    });
    let properties = Default::default();
    let raw = crate::protocol::encode_properties(&properties).map_err(ApiError::from)?;
    let body = axum::body::Bytes::from_static(b"test_message");
    let message = Arc::new(crate::message::Message::new(
        "".into(),
        "aliveness-test".into(),
        &properties,
        &raw,
        body.clone(),
    ));
    queue.publish(message);
    let back = queue.get(true).map(|(entry, _)| entry.message.body_bytes());
    if back.as_ref() != Some(&body) || shared.memory.is_alarmed() {
        let reason = format!("vhost '{}' could not take a message", open.name);
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed", "reason": reason })),
        )
            .into_response());
    }
    ok(json!({ "status": "ok" }))
}

async fn whoami(who: Who) -> Api {
    ok(json!({ "name": who.user.name, "tags": who.user.tags }))
}

fn vhost_json(
    rates: &crate::stats::Rates,
    name: &str,
    meta: &VhostMeta,
    open: Option<&Arc<VHost>>,
) -> Value {
    let (ready, unacked, _) = open.map(|v| counts(v)).unwrap_or_default();
    let stats = match open {
        Some(v) => rates::vhosts(rates, std::slice::from_ref(v)),
        None => json!({}),
    };
    json!({
        "message_stats": stats,
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
        .map(|(name, meta)| vhost_json(&shared.rates, name, meta, shared.vhost(name).as_ref()))
        .collect();
    ok(Value::Array(list))
}

async fn vhost_get(State(shared): State<Arc<Shared>>, who: Who, Path(vhost): Path<String>) -> Api {
    who.require_vhost(&vhost)?;
    let state = shared.meta.state();
    let meta = state.vhosts.get(&vhost).ok_or_else(ApiError::not_found)?;
    ok(vhost_json(
        &shared.rates,
        &vhost,
        meta,
        shared.vhost(&vhost).as_ref(),
    ))
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

/// Health checks that a single node always passes: every vhost runs once it exists, and no
/// queue is replicated, so none depends on this node for its quorum.
async fn healthy(_who: Who) -> Api {
    ok(json!({ "status": "ok" }))
}

/// 503 with RabbitMQ's body unless `listening` holds, naming `what` is missing.
fn listener_check(shared: &Shared, listening: bool, missing: String) -> Api {
    if listening {
        return ok(json!({ "status": "ok" }));
    }
    let body = json!({
        "status": "failed",
        "reason": missing,
        "missing": missing,
        "ports": listeners(shared).iter().map(|(_, at)| at.port()).collect::<Vec<_>>(),
        "protocols": listeners(shared).iter().map(|(p, _)| *p).collect::<Vec<_>>(),
    });
    Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response())
}

async fn port_listener(
    State(shared): State<Arc<Shared>>,
    _who: Who,
    Path(port): Path<String>,
) -> Api {
    let Ok(port) = port.parse::<u16>() else {
        return Err(ApiError::bad_request(format!("invalid port '{port}'")));
    };
    let listening = listeners(&shared).iter().any(|(_, at)| at.port() == port);
    listener_check(&shared, listening, format!("no listener on port {port}"))
}

async fn protocol_listener(
    State(shared): State<Arc<Shared>>,
    _who: Who,
    Path(protocol): Path<String>,
) -> Api {
    // RabbitMQ accepts its aliases: amqp091, amqp0.9.1, amqps, https.
    let wanted = match protocol.to_ascii_lowercase().as_str() {
        "amqp" | "amqp091" | "amqp0.9.1" | "amqp0-9-1" => "amqp",
        "amqps" | "amqp/ssl" => "amqp/ssl",
        "http" | "management" => "http",
        "https" | "management/ssl" => "https",
        "prometheus" | "http/prometheus" => "http/prometheus",
        _ => "",
    };
    let listening = listeners(&shared).iter().any(|(p, _)| *p == wanted);
    listener_check(
        &shared,
        listening,
        format!("no listener for protocol {protocol}"),
    )
}

async fn alarms(State(shared): State<Arc<Shared>>, _who: Who) -> Api {
    if shared.memory.is_alarmed() {
        let body = json!({
            "status": "failed",
            "reason": "resource alarm(s) in effect in the cluster",
            "alarms": [{ "node": shared.node_name(), "resource": "memory" }],
        });
        return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    ok(json!({ "status": "ok" }))
}
