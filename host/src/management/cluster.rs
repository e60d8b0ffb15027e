//! The cluster in the management API: every member in `/api/nodes` (each with a `cluster`
//! object: role, leader, voter, the replica's lag as the leader sees it), `GET /api/cluster`
//! (this node's view), and members added and removed at runtime (`POST /api/cluster/members`,
//! `DELETE /api/cluster/members/{name}`, administrators only).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use super::routes::{Api, body_object, no_content, ok};
use crate::broker::Shared;
use crate::replication::{ClusterError, Join, Leave};

/// How long `/api/nodes` waits for each member's own view.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// `/api/nodes` in a cluster: `me` (this node's full entry) and every other member, each
/// with its `cluster` object; a member that did not answer is `running: false`.
pub(super) async fn nodes(shared: &Arc<Shared>, me: Value) -> Vec<Value> {
    let Some(cluster) = shared.cluster() else {
        return vec![me];
    };
    let mut out = Vec::new();
    for (member, status) in cluster.probe_members(PROBE_TIMEOUT).await {
        let mut entry = if member.name == cluster.name() {
            me.clone()
        } else {
            json!({
                "name": format!("bourse@{}", member.name),
                "type": "disc",
                "running": status.is_some(),
                "product_name": "bourse",
            })
        };
        entry["cluster"] = json!({
            "member": member.name,
            "address": member.addr,
            "voter": member.voter,
            "leader": member.leader,
            "role": status.as_ref().map(|s| s.role.clone()),
            "term": status.as_ref().map(|s| s.term),
            "last_applied_index": status.as_ref().and_then(|s| s.last_applied_index),
            "matched_index": member.matched_index,
            "lag": member.lag,
        });
        out.push(entry);
    }
    out
}

/// GET /api/cluster: this node's view (the leader's, with replica lag, when it answers).
pub(super) async fn status(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    who.require_monitoring()?;
    let cluster = shared
        .cluster()
        .ok_or_else(|| ApiError::bad_request("this node is not in a cluster"))?;
    let status = cluster.status_from_leader().await;
    ok(serde_json::to_value(status).map_err(|e| ApiError::internal(e.to_string()))?)
}

/// POST /api/cluster/members `{"name": ..., "address": "host:port"}`: adds a node (it must be
/// running with the same secret); it votes once it has caught up.
pub(super) async fn join(State(shared): State<Arc<Shared>>, who: Who, body: Bytes) -> Api {
    who.require_admin()?;
    let cluster = shared
        .cluster()
        .ok_or_else(|| ApiError::bad_request("this node is not in a cluster"))?;
    let object = body_object(&body)?;
    let field = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request(format!("{key} (a string) is required")))
    };
    let (name, addr) = (field("name")?, field("address")?);
    crate::config::check_node_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    addr.parse::<std::net::SocketAddr>()
        .map_err(|e| ApiError::bad_request(format!("address {addr:?}: {e}")))?;
    cluster.join(Join { name, addr }).await.map_err(refused)?;
    no_content()
}

/// DELETE /api/cluster/members/{name}: removes a node from the cluster.
pub(super) async fn leave(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
) -> Api {
    who.require_admin()?;
    let cluster = shared
        .cluster()
        .ok_or_else(|| ApiError::bad_request("this node is not in a cluster"))?;
    cluster.leave(Leave { name }).await.map_err(refused)?;
    no_content()
}

fn refused(error: ClusterError) -> ApiError {
    match error {
        ClusterError::Unavailable(reason) => ApiError::unavailable(reason),
        ClusterError::Refused(reason) => ApiError::bad_request(reason),
    }
}
