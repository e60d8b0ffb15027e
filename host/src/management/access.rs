//! Who may do what: users' permissions in vhosts and their topic permissions on exchanges,
//! listed and changed as RabbitMQ's routes do (administrators only).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use super::routes::{body_object, created_or_updated, execute, no_content, ok, string_field};
use crate::broker::Shared;
use crate::meta::{MetaCommand, TopicPermissionMeta};

type Api = Result<axum::response::Response, ApiError>;

pub(super) fn permission_json(user: &str, vhost: &str, p: &crate::meta::PermissionMeta) -> Value {
    json!({
        "user": user, "vhost": vhost,
        "configure": p.configure, "write": p.write, "read": p.read,
    })
}

pub(super) async fn permissions(State(shared): State<Arc<Shared>>, who: Who) -> Api {
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

pub(super) async fn permission_get(
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

pub(super) async fn permission_put(
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

pub(super) async fn permission_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, user)): Path<(String, String)>,
) -> Api {
    who.require_admin()?;
    execute(&shared, MetaCommand::ClearPermissions { user, vhost }).await?;
    no_content()
}

/// GET /api/vhosts/{vhost}/permissions
pub(super) async fn of_vhost(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_admin()?;
    let state = shared.meta.state();
    if !state.vhosts.contains_key(&vhost) {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(
        state
            .permissions
            .iter()
            .filter(|((_, v), _)| *v == vhost)
            .map(|((user, vhost), p)| permission_json(user, vhost, p))
            .collect(),
    ))
}

/// GET /api/users/{name}/permissions
pub(super) async fn of_user(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
) -> Api {
    who.require_admin()?;
    let state = shared.meta.state();
    if !state.users.contains_key(&name) {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(
        state
            .permissions
            .iter()
            .filter(|((u, _), _)| *u == name)
            .map(|((user, vhost), p)| permission_json(user, vhost, p))
            .collect(),
    ))
}

fn topic_json(user: &str, vhost: &str, exchange: &str, t: &TopicPermissionMeta) -> Value {
    json!({ "user": user, "vhost": vhost, "exchange": exchange, "write": t.write, "read": t.read })
}

/// GET /api/topic-permissions
pub(super) async fn topic_all(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_admin()?;
    let state = shared.meta.state();
    ok(Value::Array(
        state
            .topic_permissions
            .iter()
            .map(|((u, v, x), t)| topic_json(u, v, x, t))
            .collect(),
    ))
}

/// GET /api/topic-permissions/{vhost}/{user}: one entry per exchange; 404 when none.
pub(super) async fn topic_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, user)): Path<(String, String)>,
) -> Api {
    who.require_admin()?;
    let state = shared.meta.state();
    let list: Vec<Value> = state
        .topic_permissions
        .iter()
        .filter(|((u, v, _), _)| *u == user && *v == vhost)
        .map(|((u, v, x), t)| topic_json(u, v, x, t))
        .collect();
    if list.is_empty() {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(list))
}

/// PUT /api/topic-permissions/{vhost}/{user} with `{"exchange", "write", "read"}`.
pub(super) async fn topic_put(
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
    let (exchange, write, read) = (field("exchange")?, field("write")?, field("read")?);
    let existed = shared.meta.state().topic_permissions.contains_key(&(
        user.clone(),
        vhost.clone(),
        exchange.clone(),
    ));
    execute(
        &shared,
        MetaCommand::SetTopicPermissions {
            user,
            vhost,
            exchange,
            write,
            read,
        },
    )
    .await?;
    created_or_updated(existed)
}

/// DELETE /api/topic-permissions/{vhost}/{user}: every exchange's.
pub(super) async fn topic_delete(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, user)): Path<(String, String)>,
) -> Api {
    who.require_admin()?;
    execute(
        &shared,
        MetaCommand::ClearTopicPermissions {
            user,
            vhost,
            exchange: None,
        },
    )
    .await?;
    no_content()
}
