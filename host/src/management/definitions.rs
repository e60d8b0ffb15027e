//! The definitions routes: RabbitMQ's definitions JSON exported from the broker's state, and
//! imported through `crate::definitions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::access::permission_json;
use super::auth::Who;
use super::error::ApiError;
use super::json::table;
use super::objects::binding_json;
use super::routes::ok;
use crate::broker::Shared;

type Api = Result<axum::response::Response, ApiError>;

/// POST /api/definitions: imports a definitions document (`crate::definitions`); answers
/// what was skipped, if anything, as `{"warnings": [...]}`.
pub async fn import(State(shared): State<Arc<Shared>>, who: Who, body: Bytes) -> Api {
    who.require_admin()?;
    let document: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let importing = shared.clone();
    let warnings =
        tokio::task::spawn_blocking(move || crate::definitions::import(&importing, &document))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    for warning in &warnings {
        tracing::warn!(%warning, "definitions import");
    }
    ok(json!({ "warnings": warnings }))
}

/// GET /api/definitions: the broker's definitions in RabbitMQ's format (users with their
/// hashes, vhosts, permissions, topic permissions, vhost limits as parameters, and the
/// durable queues, exchanges and bindings clients declared; exclusive queues and the
/// pre-declared exchanges are left out, as RabbitMQ does).
pub async fn export(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_admin()?;
    ok(document(&shared, None))
}

/// GET /api/definitions/{vhost}: one vhost's queues, exchanges, bindings and limits, with no
/// `vhost` fields (RabbitMQ's per-vhost export, which loads into any vhost).
pub async fn export_vhost(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_admin()?;
    if shared.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let mut all = document(&shared, Some(&vhost));
    let mut out = serde_json::Map::new();
    for key in [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
    ] {
        if let Some(v) = all.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    for key in ["parameters", "policies", "queues", "exchanges", "bindings"] {
        let mut items = all.get_mut(key).map(Value::take).unwrap_or(json!([]));
        for item in items.as_array_mut().into_iter().flatten() {
            if let Some(item) = item.as_object_mut() {
                item.remove("vhost");
            }
        }
        out.insert(key.to_owned(), items);
    }
    ok(Value::Object(out))
}

/// POST /api/definitions/{vhost}: imports queues, exchanges, bindings and limits into the
/// vhost, whatever vhost the document names (users, vhosts and permissions are ignored).
pub async fn import_vhost(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
    body: Bytes,
) -> Api {
    who.require_admin()?;
    if shared.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let document: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let Value::Object(mut top) = document else {
        return Err(ApiError::bad_request("definitions must be a JSON object"));
    };
    let mut warnings = Vec::new();
    for key in ["users", "vhosts", "permissions", "topic_permissions"] {
        if top.remove(key).is_some() {
            warnings.push(format!("ignored '{key}' in a per-vhost import"));
        }
    }
    for key in ["parameters", "policies", "queues", "exchanges", "bindings"] {
        for item in top
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(item) = item.as_object_mut() {
                item.insert("vhost".to_owned(), json!(vhost));
            }
        }
    }
    let document = Value::Object(top);
    let importing = shared.clone();
    let more =
        tokio::task::spawn_blocking(move || crate::definitions::import(&importing, &document))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    warnings.extend(more);
    for warning in &warnings {
        tracing::warn!(%warning, %vhost, "definitions import");
    }
    ok(json!({ "warnings": warnings }))
}

/// The whole definitions document, or (`only`) that of one vhost's objects.
fn document(shared: &Shared, only: Option<&str>) -> Value {
    let state = shared.meta.state();
    let version = env!("CARGO_PKG_VERSION");
    let users: Vec<Value> = state
        .users
        .iter()
        .map(|(name, u)| {
            json!({
                "name": name, "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm, "tags": u.tags, "limits": {},
            })
        })
        .collect();
    let vhosts: Vec<Value> = state
        .vhosts
        .iter()
        .map(|(name, v)| {
            json!({
                "name": name, "description": v.description, "tags": v.tags,
                "metadata": { "description": v.description, "tags": v.tags },
                "limits": [],
            })
        })
        .collect();
    let permissions: Vec<Value> = state
        .permissions
        .iter()
        .map(|((user, vhost), p)| permission_json(user, vhost, p))
        .collect();
    let topic_permissions: Vec<Value> = state
        .topic_permissions
        .iter()
        .map(|((user, vhost, exchange), t)| {
            json!({
                "user": user, "vhost": vhost, "exchange": exchange,
                "write": t.write, "read": t.read,
            })
        })
        .collect();
    let parameters: Vec<Value> = state
        .vhosts
        .iter()
        .filter(|(name, v)| !v.limits.is_empty() && only.is_none_or(|o| o == *name))
        .map(|(name, v)| {
            json!({
                "vhost": name, "component": "vhost-limits", "name": "limits", "value": v.limits,
            })
        })
        .collect();
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for vhost in shared.vhost_list() {
        if only.is_some_and(|v| *v != *vhost.name) {
            continue;
        }
        for q in vhost.queues() {
            if q.spec.durable && q.spec.exclusive_owner.is_none() {
                queues.push(json!({
                    "name": q.name().to_string(), "vhost": vhost.name.to_string(),
                    "durable": true, "auto_delete": q.spec.auto_delete,
                    "arguments": table(&q.spec.arguments),
                }));
            }
        }
        for x in vhost.exchanges() {
            let name = x.spec.name.to_string();
            if !x.spec.durable || name.is_empty() || name.starts_with("amq.") {
                continue;
            }
            exchanges.push(exchange_definition(&vhost.name, &x));
        }
        for x in vhost.exchanges() {
            let source = x.spec.name.to_string();
            for b in x.bindings() {
                bindings.push(binding_json(&vhost.name, &source, &b));
            }
        }
    }
    json!({
        "rabbit_version": version,
        "rabbitmq_version": version,
        "product_name": "bourse",
        "product_version": version,
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": parameters,
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// An exchange as definitions hold it (no rates).
fn exchange_definition(vhost: &str, x: &crate::vhost::Exchange) -> Value {
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
