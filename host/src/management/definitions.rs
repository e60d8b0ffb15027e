//! The definitions routes: RabbitMQ's definitions JSON exported from the broker's state, and
//! imported through `crate::definitions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use super::json::table;
use super::objects::{binding_json, exchange_json};
use super::routes::{ok, permission_json};
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
        .filter(|(_, v)| !v.limits.is_empty())
        .map(|(name, v)| {
            json!({
                "vhost": name, "component": "vhost-limits", "name": "limits", "value": v.limits,
            })
        })
        .collect();
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for vhost in shared.vhost_list() {
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
            exchanges.push(exchange_json(&vhost.name, &x));
        }
        for x in vhost.exchanges() {
            let source = x.spec.name.to_string();
            for b in x.bindings() {
                bindings.push(binding_json(&vhost.name, &source, &b));
            }
        }
    }
    ok(json!({
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
    }))
}
