//! bourse's own routes under `/api/plugins`: the exchange-type plugins of the broker (its
//! plugin directory) and of each vhost, with their versions and per-exchange stats; a
//! tenant's upload, rollback and removal in its vhost (who may: `auth::plugin_access`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use crate::broker::Shared;
use crate::exchange::wasm::tenant::VhostPluginError;
use crate::exchange::wasm::{ExchangeStatus, PluginStatus, VersionStatus};

type Api = Result<Response, ApiError>;

impl From<VhostPluginError> for ApiError {
    fn from(error: VhostPluginError) -> Self {
        let reason = error.to_string();
        match error {
            VhostPluginError::TooLarge { .. } => ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                error: "payload_too_large",
                reason,
            },
            VhostPluginError::NoVhost(_)
            | VhostPluginError::UnknownPlugin { .. }
            | VhostPluginError::NoExchange { .. } => ApiError::not_found(),
            VhostPluginError::NoShadow { .. } => ApiError {
                status: StatusCode::NOT_FOUND,
                error: "not_found",
                reason,
            },
            VhostPluginError::Denied(_) => ApiError::not_authorised(reason),
            VhostPluginError::NameTaken { .. }
            | VhostPluginError::NotAPlugin { .. }
            | VhostPluginError::Wasm(_) => ApiError::bad_request(reason),
            VhostPluginError::Meta(meta) => meta.into(),
            VhostPluginError::Storage(_) => ApiError::internal(reason),
        }
    }
}

fn version_json(v: &VersionStatus) -> Value {
    json!({
        "version": v.version, "summary": v.summary, "sha256": v.sha256, "origin": v.origin,
        "compile_ms": v.compile_time.as_secs_f64() * 1e3, "from_cache": v.from_cache,
        "wit": v.wit,
    })
}

fn exchange_json(x: &ExchangeStatus) -> Value {
    json!({
        "vhost": x.vhost, "name": x.exchange, "plugin_version": x.plugin_version,
        "plugin_sha256": x.plugin_sha256, "bindings": x.bindings, "cacheable": x.cacheable,
        "failed": x.failed, "routed": x.routed, "cache_hits": x.cache_hits,
        "failures": x.failures, "deadlines": x.deadlines, "caps": x.caps, "traps": x.traps,
        "unknown_ids": x.unknown_ids, "impure_calls": x.impure, "oversized": x.oversized,
        "plugin_errors": x.plugin_errors, "replaced": x.replaced, "reloads": x.reloads,
        "log_lines_dropped": x.log_lines_dropped, "state_entries": x.state_entries,
        "latency_us": {
            "p50": x.latency_p50.map(|d| d.as_secs_f64() * 1e6),
            "p99": x.latency_p99.map(|d| d.as_secs_f64() * 1e6),
            "samples": x.latency_samples,
        },
        "busy_ms": x.busy.as_secs_f64() * 1e3,
        "memory_bytes": x.memory_bytes,
        "cache_hit_ratio": hit_ratio(x.cache_hits, x.routed),
        "last_error": x.last_error.as_ref().map(|(at, reason)| json!({"at": at, "reason": reason})),
        "logs": x.logs.iter().map(|l| json!({"at": l.at_ms, "level": l.level, "text": l.text}))
            .collect::<Vec<_>>(),
    })
}

/// Cache hits over all messages routed, None before any.
fn hit_ratio(hits: u64, calls: u64) -> Option<f64> {
    let total = hits + calls;
    (total > 0).then(|| hits as f64 / total as f64)
}

/// One plugin type: `scope` is `broker` for the plugin directory's, else its vhost. Only the
/// exchanges of vhosts the user sees are listed.
fn plugin_json(who: &Who, scope: &str, p: &PluginStatus) -> Value {
    json!({
        "name": p.name,
        "scope": scope,
        "state": if p.registered { "registered" } else { "removed" },
        "current": version_json(&p.current),
        "previous": p.previous.as_ref().map(version_json),
        "exchanges": p.exchanges.iter().filter(|x| who.sees_vhost(&x.vhost))
            .map(exchange_json).collect::<Vec<_>>(),
    })
}

/// A component in a request body, refused with 413 beyond `wasm_upload_max_bytes`.
fn component(shared: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let max = shared.config.wasm_upload_max_bytes;
    body.map_err(|e| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        error: "payload_too_large",
        reason: format!("{e} (wasm_upload_max_bytes is {max})"),
    })
}

/// Runs a plugin operation as `who` on a blocking thread (compiling and fsyncs are slow).
async fn as_user<T: Send + 'static>(
    shared: &Arc<Shared>,
    who: &Who,
    operation: impl FnOnce(&Shared, &str) -> Result<T, VhostPluginError> + Send + 'static,
) -> Result<T, ApiError> {
    let (shared, user) = (shared.clone(), who.user.name.clone());
    tokio::task::spawn_blocking(move || operation(&shared, &user))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// GET /api/plugins: the broker's plugin types and those of every vhost the user sees.
pub async fn list(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let mut out: Vec<Value> = shared
        .plugins
        .as_ref()
        .map(|m| m.status())
        .unwrap_or_default()
        .iter()
        .map(|p| plugin_json(&who, "broker", p))
        .collect();
    for vhost in shared.vhost_list() {
        if who.sees_vhost(&vhost.name) {
            out.extend(
                shared
                    .vhost_plugins(&vhost.name)
                    .iter()
                    .map(|p| plugin_json(&who, &vhost.name, p)),
            );
        }
    }
    Ok(Json(Value::Array(out)).into_response())
}

/// GET /api/plugins/{vhost}: the vhost's own plugin types.
pub async fn of_vhost(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_vhost(&vhost)?;
    if shared.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let list: Vec<Value> = shared
        .vhost_plugins(&vhost)
        .iter()
        .map(|p| plugin_json(&who, &vhost, p))
        .collect();
    Ok(Json(Value::Array(list)).into_response())
}

/// POST /api/plugins/{vhost}: the body is a component; it becomes the vhost's type of the
/// name it describes (a new type, or a new version of one). Answers the type's status.
pub async fn upload(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Api {
    let body = component(&shared, body)?;
    let scope = vhost.clone();
    let status = as_user(&shared, &who, move |shared, user| {
        shared.put_vhost_plugin(&vhost, &body, Some(user))
    })
    .await?;
    Ok(Json(plugin_json(&who, &scope, &status)).into_response())
}

/// POST /api/plugins/{vhost}/{name}/rollback: back to the previous version.
pub async fn rollback(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let scope = vhost.clone();
    let status = as_user(&shared, &who, move |shared, user| {
        shared.rollback_vhost_plugin(&vhost, &name, Some(user))
    })
    .await?;
    Ok(Json(plugin_json(&who, &scope, &status)).into_response())
}

/// POST /api/plugins/{vhost}/exchanges/{exchange}/reset: brings a WASM exchange (typically
/// one marked failed) back into service on a fresh instance. Answers its status.
pub async fn reset(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, exchange)): Path<(String, String)>,
) -> Api {
    let status = as_user(&shared, &who, move |shared, user| {
        shared.reset_plugin_exchange(&vhost, &exchange, Some(user))
    })
    .await?;
    Ok(Json(exchange_json(&status)).into_response())
}

/// POST /api/plugins/retry: loads again every file of the plugin directory that was refused
/// (administrators only). Answers what loaded and what was refused again.
pub async fn retry(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_admin()?;
    let Some(manager) = shared.plugins.clone() else {
        return Err(ApiError::not_found());
    };
    let report = tokio::task::spawn_blocking(move || manager.retry_refused())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let files = |list: &[(std::path::PathBuf, String)], what: &str| -> Vec<Value> {
        list.iter()
            .map(|(file, text)| json!({ "file": file.display().to_string(), what: text }))
            .collect()
    };
    Ok(Json(json!({
        "loaded": files(&report.loaded, "name"),
        "refused": files(&report.refused, "reason"),
        "removed": report.removed,
    }))
    .into_response())
}

/// DELETE /api/plugins/{vhost}/{name}: removes the type (its exchanges keep routing).
pub async fn remove(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    as_user(&shared, &who, move |shared, user| {
        shared.delete_vhost_plugin(&vhost, &name, Some(user))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A shadow trial as the API shows it: the active and candidate versions, how many messages
/// both routed, how many they routed differently, the candidate's failures, and the recent
/// mismatches.
fn shadow_json(
    vhost: &str,
    candidate: &crate::exchange::wasm::shadow::Candidate,
    status: &PluginStatus,
) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let side = |r: &Result<(Vec<String>, u64), String>| match r {
        Ok((to, delay)) => json!({ "destinations": to, "delay_ms": delay }),
        Err(e) => json!({ "error": e }),
    };
    let examples: Vec<Value> = candidate
        .examples()
        .iter()
        .map(|m| {
            json!({
                "at": m.at_ms,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "active": side(&m.active),
                "candidate": side(&m.candidate),
            })
        })
        .collect();
    let v = &candidate.version;
    json!({
        "name": status.name,
        "vhost": vhost,
        "active": version_json(&status.current),
        "candidate": {
            "version": v.version,
            "sha256": v.sha256,
            "summary": v.summary,
        },
        "started_at": candidate.started_ms,
        "compared": candidate.compared.load(Relaxed),
        "mismatches": candidate.mismatches.load(Relaxed),
        "candidate_failures": candidate.failures.load(Relaxed),
        "examples": examples,
    })
}

/// PUT /api/plugins/{vhost}/{name}/shadow: the body is a component describing type `name`;
/// it runs beside the active version on every message of the type's exchanges, its decisions
/// compared and never used, until promoted or dropped. Answers the trial.
pub async fn shadow_start(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Api {
    let body = component(&shared, body)?;
    let scope = vhost.clone();
    let (candidate, status) = as_user(&shared, &who, move |shared, user| {
        shared.shadow_vhost_plugin(&vhost, &name, &body, Some(user))?;
        shared.vhost_plugin_shadow(&vhost, &name, Some(user))
    })
    .await?;
    Ok(Json(shadow_json(&scope, &candidate, &status)).into_response())
}

/// GET /api/plugins/{vhost}/{name}/shadow: the running trial (404 if none).
pub async fn shadow_status(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let scope = vhost.clone();
    let (candidate, status) = as_user(&shared, &who, move |shared, user| {
        shared.vhost_plugin_shadow(&vhost, &name, Some(user))
    })
    .await?;
    Ok(Json(shadow_json(&scope, &candidate, &status)).into_response())
}

/// POST /api/plugins/{vhost}/{name}/shadow/promote: the candidate becomes the type's version
/// (as an upload of it would: stored, logged, rollback possible). Answers the type's status.
pub async fn shadow_promote(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    let scope = vhost.clone();
    let status = as_user(&shared, &who, move |shared, user| {
        shared.end_vhost_plugin_shadow(&vhost, &name, true, Some(user))
    })
    .await?;
    Ok(Json(plugin_json(&who, &scope, &status)).into_response())
}

/// DELETE /api/plugins/{vhost}/{name}/shadow: drops the candidate.
pub async fn shadow_drop(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path((vhost, name)): Path<(String, String)>,
) -> Api {
    as_user(&shared, &who, move |shared, user| {
        shared.end_vhost_plugin_shadow(&vhost, &name, false, Some(user))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
