//! What clients are doing: connections (listed, closed), their channels and the consumers
//! on them, with their byte and message rates, in RabbitMQ's shapes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::auth::Who;
use super::error::ApiError;
use super::rates;
use super::routes::{no_content, ok};
use crate::broker::Shared;
use crate::channel::ChannelOutlet;
use crate::connection::ConnectionInfo;
use crate::vhost::VHost;

type Api = Result<axum::response::Response, ApiError>;

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

pub(super) async fn connection_get(
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
pub(super) async fn connection_delete(
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

pub(super) async fn connections(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let list: Vec<Value> = visible_connections(&shared, &who)
        .iter()
        .map(|c| connection_json(&shared, c))
        .collect();
    ok(Value::Array(list))
}

fn connection_json(shared: &Shared, c: &ConnectionInfo) -> Value {
    let local = shared.config.listen;
    let tls = c.tls.as_ref();
    let mut out = json!({
        "name": connection_name(shared, c),
        "node": shared.node_name(),
        "user": c.user,
        "vhost": c.vhost,
        "state": c.state().as_str(),
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": local.ip().to_string(),
        "port": local.port(),
        "ssl": tls.is_some(),
        "ssl_protocol": tls.map(|t| t.protocol),
        "ssl_cipher": tls.map(|t| t.cipher.clone()),
        "peer_cert_subject": tls.and_then(|t| t.peer_cert_subject.clone()),
        "channels": c.channels().len(),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat_secs,
        "connected_at": millis(c.connected_at),
        "client_properties": client_properties(&c.client),
    });
    if let Some(name) = c.client.connection_name() {
        out["user_provided_name"] = json!(name);
    }
    merge(&mut out, rates::connection(&shared.rates, c));
    out
}

/// A client's properties as RabbitMQ shows them: its text entries, and `capabilities`.
fn client_properties(client: &crate::connection::ClientProperties) -> Value {
    let mut out: serde_json::Map<String, Value> = client
        .text
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let capabilities: serde_json::Map<String, Value> = client
        .capabilities
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    out.insert("capabilities".into(), Value::Object(capabilities));
    Value::Object(out)
}

/// Milliseconds since the epoch, as RabbitMQ's timestamps.
fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Adds `extra`'s fields to `out` (both objects).
fn merge(out: &mut Value, extra: Value) {
    if let (Value::Object(out), Value::Object(extra)) = (out, extra) {
        out.extend(extra);
    }
}

/// RabbitMQ's channel name: the connection's and the number, `peer -> listener (1)`.
fn channel_name(shared: &Shared, c: &ConnectionInfo, ch: &ChannelOutlet) -> String {
    format!("{} ({})", connection_name(shared, c), ch.number())
}

fn channel_json(shared: &Shared, c: &ConnectionInfo, ch: &ChannelOutlet) -> Value {
    let name = connection_name(shared, c);
    json!({
        "name": channel_name(shared, c, ch),
        "number": ch.number(),
        "node": shared.node_name(),
        "user": c.user,
        "vhost": c.vhost,
        "state": c.state().as_str(),
        "connection_details": {
            "name": name,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
        },
        "consumer_count": ch.info.consumers.get(),
        "messages_unacknowledged": ch.unacked_count(),
        "messages_unconfirmed": ch.info.unconfirmed.get(),
        "prefetch_count": ch.info.prefetch.get(),
        "global_prefetch_count": ch.global_prefetch(),
        "confirm": ch.info.confirm.get() == 1,
        "transactional": ch.info.transactional.get() == 1,
        "message_stats": rates::channel(&shared.rates, c, ch),
    })
}

/// Every open channel of the connections `who` sees, with its connection.
fn visible_channels(shared: &Shared, who: &Who) -> Vec<(Arc<ConnectionInfo>, Arc<ChannelOutlet>)> {
    visible_connections(shared, who)
        .into_iter()
        .flat_map(|c| c.channels().into_iter().map(move |ch| (c.clone(), ch)))
        .collect()
}

/// GET /api/channels
pub(super) async fn channels(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let list = visible_channels(&shared, &who)
        .iter()
        .map(|(c, ch)| channel_json(&shared, c, ch))
        .collect();
    ok(Value::Array(list))
}

/// GET /api/vhosts/{vhost}/channels
pub(super) async fn channels_in(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_vhost(&vhost)?;
    let list = visible_channels(&shared, &who)
        .iter()
        .filter(|(c, _)| c.vhost == vhost)
        .map(|(c, ch)| channel_json(&shared, c, ch))
        .collect();
    ok(Value::Array(list))
}

/// GET /api/channels/{name}
pub(super) async fn channel_get(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
) -> Api {
    let found = visible_channels(&shared, &who)
        .into_iter()
        .find(|(c, ch)| channel_name(&shared, c, ch) == name)
        .ok_or_else(ApiError::not_found)?;
    ok(channel_json(&shared, &found.0, &found.1))
}

/// GET /api/connections/{name}/channels
pub(super) async fn connection_channels(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(name): Path<String>,
) -> Api {
    let c = visible_connections(&shared, &who)
        .into_iter()
        .find(|c| connection_name(&shared, c) == name)
        .ok_or_else(ApiError::not_found)?;
    let list = c
        .channels()
        .iter()
        .map(|ch| channel_json(&shared, &c, ch))
        .collect();
    ok(Value::Array(list))
}

/// The consumers of the queues of `vhost`, as RabbitMQ lists them. Only consumers on the
/// channels of connections `who` sees (all for monitoring users).
fn consumers_of(shared: &Shared, who: &Who, vhost: &VHost) -> Vec<Value> {
    let connections = visible_connections(shared, who);
    let mut out = Vec::new();
    for q in vhost.queues() {
        for consumer in q.consumers() {
            let Some((id, number)) = consumer.outlet.channel() else {
                continue;
            };
            let Some(c) = connections.iter().find(|c| c.id == id) else {
                continue;
            };
            out.push(json!({
                "consumer_tag": consumer.tag.to_string(),
                "queue": { "name": q.name().to_string(), "vhost": vhost.name.to_string() },
                "channel_details": {
                    "name": format!("{} ({number})", connection_name(shared, c)),
                    "number": number,
                    "connection_name": connection_name(shared, c),
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                    "user": c.user,
                    "node": shared.node_name(),
                },
                "ack_required": !consumer.no_ack,
                "exclusive": consumer.exclusive,
                "prefetch_count": consumer.prefetch,
                "consumer_timeout": shared.config.consumer_timeout_ms.unwrap_or(0),
                "active": true,
                "activity_status": "up",
                "arguments": if consumer.priority != 0 {
                    json!({ "x-priority": consumer.priority })
                } else {
                    json!({})
                },
            }));
        }
    }
    out
}

/// GET /api/consumers
pub(super) async fn consumers(State(shared): State<Arc<Shared>>, who: Who) -> Api {
    let mut list = Vec::new();
    for vhost in shared.vhost_list() {
        if who.sees_vhost(&vhost.name) {
            list.extend(consumers_of(&shared, &who, &vhost));
        }
    }
    ok(Value::Array(list))
}

/// GET /api/consumers/{vhost}
pub(super) async fn consumers_in(
    State(shared): State<Arc<Shared>>,
    who: Who,
    Path(vhost): Path<String>,
) -> Api {
    who.require_vhost(&vhost)?;
    let open = shared.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    ok(Value::Array(consumers_of(&shared, &who, &open)))
}
