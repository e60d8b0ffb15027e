//! The opening handshake: protocol header, start / start-ok (SASL), tune / tune-ok, open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use super::{Reader, SocketWrite, TlsInfo, Writer, send_connection_close};
use crate::auth::{AuthError, MECHANISMS, MECHANISMS_WITH_EXTERNAL};
use crate::broker::Shared;
use crate::config::FRAME_MIN_SIZE;
use crate::limits::{Held, Slot, UserUsage};
use crate::protocol::{AmqpError, Frame, PROTOCOL_HEADER, write_method};
use crate::queue::ConnectionId;
use crate::vhost::VHost;

/// A client must finish the handshake within this time (RabbitMQ's handshake_timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame accepted before connection.tune-ok has fixed frame_max, as RabbitMQ 4.1+:
/// a peer that has not logged in may not make the broker buffer and parse 128 KiB frames.
pub(crate) const HANDSHAKE_FRAME_MAX: u32 = 8192;

/// What the handshake settled.
pub(crate) struct Negotiated {
    pub vhost: Arc<VHost>,
    pub user: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: Option<Duration>,
    /// The client announced the `connection.blocked` capability: it is told when the memory
    /// alarm blocks it and when it resumes.
    pub blocked_notifications: bool,
    /// What the client said of itself (shown by the management API).
    pub client: super::registry::ClientProperties,
    /// The connection's places in the broker's, the vhost's and the user's connection counts.
    pub slots: (Slot, Slot, Held),
    /// The user's counters and limits, for channel.open.
    pub user_usage: Arc<UserUsage>,
    /// What the user may do in the vhost.
    pub grants: Arc<crate::auth::Grants>,
    /// The users' generation read before `grants` were taken.
    pub grants_generation: u64,
}

/// Runs the handshake; starts the writer task once the protocol header is accepted. `None`
/// means the connection is over (bad header, refused login, timeout).
pub(crate) async fn run(
    shared: &Arc<Shared>,
    reader: &mut Reader,
    socket: SocketWrite,
    writer: &Arc<Writer>,
    peer: SocketAddr,
    id: ConnectionId,
    tls: Option<&TlsInfo>,
) -> Option<Negotiated> {
    let mut header = [0u8; 8];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.socket.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        _ => return None,
    }
    let heartbeat_offer = shared.config.heartbeat_secs;
    if &header != PROTOCOL_HEADER {
        // Spec 4.2.2: answer with the header we support, then close.
        debug!(id, %peer, "unsupported protocol header");
        writer.write(|out| out.extend_from_slice(PROTOCOL_HEADER));
        writer.close();
        tokio::spawn(writer.clone().run(socket));
        return None;
    }
    // The writer task starts now so every reply below is flushed by it; it learns the
    // heartbeat interval once tune-ok has fixed it.
    tokio::spawn(writer.clone().run(socket));
    let result = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        negotiate(shared, reader, writer, peer, heartbeat_offer, tls),
    )
    .await;
    match result {
        Ok(Ok(negotiated)) => Some(negotiated),
        Ok(Err(error)) => {
            warn!(id, %peer, error = %error, "handshake failed");
            send_connection_close(writer, &error);
            // Give the client a moment to read the close before the socket goes.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                reader.next_frame(HANDSHAKE_FRAME_MAX),
            )
            .await;
            writer.close();
            None
        }
        Err(_) => {
            debug!(id, %peer, "handshake timed out");
            writer.close();
            None
        }
    }
}

async fn negotiate(
    shared: &Arc<Shared>,
    reader: &mut Reader,
    writer: &Arc<Writer>,
    peer: SocketAddr,
    heartbeat_offer: u16,
    tls: Option<&TlsInfo>,
) -> Result<Negotiated, AmqpError> {
    let config = &shared.config;
    // EXTERNAL only where a verified client certificate names the user.
    let certificate_user = tls.and_then(|tls| tls.peer_cn.as_deref());
    let mechanisms = match certificate_user {
        Some(_) => MECHANISMS_WITH_EXTERNAL,
        None => MECHANISMS,
    };
    writer.write(|out| {
        write_method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(mechanisms.as_bytes().to_vec()),
                locales: LongString::from(b"en_US".to_vec()),
            })),
        )
    });
    let start_ok = match expect(reader, HANDSHAKE_FRAME_MAX).await? {
        connection::AMQPMethod::StartOk(start_ok) => start_ok,
        _ => {
            return Err(
                AmqpError::command_invalid("expected connection.start-ok").on_method(10, 11)
            );
        }
    };
    let blocked_notifications = has_capability(&start_ok.client_properties, "connection.blocked");
    let client = super::registry::ClientProperties::from_table(&start_ok.client_properties);
    let user = match (start_ok.mechanism.as_str(), certificate_user) {
        ("EXTERNAL", Some(name)) => shared.users.authenticate_external(name, peer.ip()),
        (mechanism, _) => {
            shared
                .users
                .authenticate(mechanism, start_ok.response.as_bytes(), peer.ip())
        }
    }
    .map_err(|e| match e {
        AuthError::Mechanism(_)
        | AuthError::Malformed(_)
        | AuthError::Refused(_)
        | AuthError::LoopbackOnly(_) => AmqpError::access_refused(e).on_method(10, 11),
    })?;
    writer.write(|out| {
        write_method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: config.channel_max,
                frame_max: config.frame_max_bytes,
                heartbeat: heartbeat_offer,
            })),
        )
    });
    let tune_ok = match expect(reader, HANDSHAKE_FRAME_MAX).await? {
        connection::AMQPMethod::TuneOk(tune_ok) => tune_ok,
        _ => {
            return Err(AmqpError::command_invalid("expected connection.tune-ok").on_method(10, 31));
        }
    };
    let frame_max = match tune_ok.frame_max {
        0 => config.frame_max_bytes,
        n if n < FRAME_MIN_SIZE => {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={n} < {FRAME_MIN_SIZE} min size"
            ))
            .on_method(10, 31));
        }
        n if n > config.frame_max_bytes => {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={n} > {} max size",
                config.frame_max_bytes
            ))
            .on_method(10, 31));
        }
        n => n,
    };
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        n => n.min(config.channel_max),
    };
    let heartbeat = (tune_ok.heartbeat > 0).then(|| Duration::from_secs(tune_ok.heartbeat.into()));
    writer.set_frame_max(frame_max);
    writer.set_heartbeat(tune_ok.heartbeat);
    let open = match expect(reader, frame_max).await? {
        connection::AMQPMethod::Open(open) => open,
        _ => return Err(AmqpError::command_invalid("expected connection.open").on_method(10, 40)),
    };
    let vhost = shared.vhost(open.virtual_host.as_str()).ok_or_else(|| {
        AmqpError::not_allowed(format!("vhost {} not found", open.virtual_host)).on_method(10, 40)
    })?;
    let grants_generation = shared.users.generation();
    let grants = shared
        .users
        .grants(&user.name, open.virtual_host.as_str())
        .ok_or_else(|| {
            AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{}'",
                open.virtual_host, user.name
            ))
            .on_method(10, 40)
        })?;
    // RabbitMQ's order: the node's limit, the vhost's, then the user's.
    let connection_max = config.limits.connection_max;
    let broker_slot = Slot::take(&shared.connections, connection_max).ok_or_else(|| {
        AmqpError::not_allowed(format!(
            "connection refused: node connection limit ({connection_max}) is reached"
        ))
        .on_method(10, 40)
    })?;
    let vhost_slot = vhost
        .open_connection(&user.name)
        .map_err(|e| e.on_method(10, 40))?;
    let user_usage = shared.user_usage(&user.name);
    let user_limits = user_usage.limits();
    let user_slot = user_usage
        .open_connection(&user.name, &user_limits)
        .map_err(|e| e.on_method(10, 40))?;
    writer.write(|out| {
        write_method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        )
    });
    Ok(Negotiated {
        vhost,
        user: user.name.clone(),
        frame_max,
        channel_max,
        heartbeat,
        blocked_notifications,
        client,
        slots: (broker_slot, vhost_slot, user_slot),
        user_usage,
        grants,
        grants_generation,
    })
}

/// Whether client-properties announce `capability` (`capabilities` table, value `true`).
fn has_capability(client_properties: &FieldTable, capability: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(capabilities)) => matches!(
            capabilities.inner().get(capability),
            Some(AMQPValue::Boolean(true))
        ),
        _ => false,
    }
}

/// Reads the next connection-class method on channel 0, skipping heartbeats.
async fn expect(reader: &mut Reader, frame_max: u32) -> Result<connection::AMQPMethod, AmqpError> {
    loop {
        match reader.next_frame(frame_max).await? {
            None => return Err(AmqpError::frame_error("connection closed during handshake")),
            Some(Frame::Heartbeat(_)) => continue,
            Some(Frame::Method(0, AMQPClass::Connection(method))) => return Ok(method),
            Some(_) => {
                return Err(AmqpError::command_invalid(
                    "unexpected frame during the handshake",
                ));
            }
        }
    }
}

/// connection.start server-properties, with the capabilities RabbitMQ clients look for.
fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let mut properties = FieldTable::default();
    properties.insert("product".into(), text("bourse"));
    properties.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    properties.insert("platform".into(), text("Rust"));
    properties.insert(
        "information".into(),
        text("An AMQP 0-9-1 broker with WebAssembly exchange types"),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    properties
}
