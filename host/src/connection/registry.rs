//! The broker's list of open connections and the state each is in, for operators: RabbitMQ's
//! connection states `running`, `flow` (publishing slowed by a queue's flow control) and
//! `blocked` (the memory alarm stopped it), read through [`crate::BrokerHandle::connections`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;

use super::Writer;
use crate::channel::ChannelOutlet;
use crate::queue::ConnectionId;
use crate::stats::OwnedCounter;

/// What a connection is doing, as RabbitMQ names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionState {
    /// Reading and serving requests.
    Running = 0,
    /// Not reading for a while: it published into a queue whose consumers are behind, its
    /// vhost's publishers went over the vhost's `max-publish-rate`, or its vhost's plugins
    /// over their CPU budget.
    Flow = 1,
    /// Not reading until the memory alarm clears, or its vhost's queues hold less than the
    /// vhost's `max-queued-bytes`.
    Blocked = 2,
}

impl ConnectionState {
    /// RabbitMQ's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Running => "running",
            ConnectionState::Flow => "flow",
            ConnectionState::Blocked => "blocked",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => ConnectionState::Flow,
            2 => ConnectionState::Blocked,
            _ => ConnectionState::Running,
        }
    }
}

/// One open connection (past connection.open).
pub struct ConnectionInfo {
    /// The broker's id for it.
    pub id: ConnectionId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// What TLS negotiated, for a connection of the AMQPS listener.
    pub tls: Option<super::TlsInfo>,
    /// Negotiated frame size.
    pub frame_max: u32,
    /// Negotiated highest channel number.
    pub channel_max: u16,
    /// Negotiated heartbeat interval in seconds (0: none).
    pub heartbeat_secs: u64,
    /// When connection.open was accepted.
    pub connected_at: SystemTime,
    /// What the client said of itself in connection.start-ok.
    pub client: ClientProperties,
    /// Bytes read from the client.
    received: Arc<OwnedCounter>,
    /// Its frames out (bytes sent).
    writer: Arc<Writer>,
    /// Its channels, as the connection opened them (closed ones are pruned).
    channels: Mutex<Vec<Weak<ChannelOutlet>>>,
    state: AtomicU8,
    /// Raised to make the connection close with 320 (its vhost or user was deleted, its
    /// access revoked), with the reason sent in connection.close.
    forced: tokio::sync::Notify,
    forced_reason: Mutex<Option<String>>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .field("tls", &self.tls)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// What a connection negotiated, for its entry.
pub(crate) struct Opened {
    pub id: ConnectionId,
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub tls: Option<super::TlsInfo>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u64,
    pub client: ClientProperties,
}

/// What a client said of itself in connection.start-ok (RabbitMQ lists it as a connection's
/// `client_properties`): its text fields and its capability flags, bounded, since a peer
/// chose them: at most [`ClientProperties::MAX_ENTRIES`] of each, each text cut to
/// [`ClientProperties::MAX_TEXT_BYTES`].
#[derive(Debug, Clone, Default)]
pub struct ClientProperties {
    /// `product`, `version`, `platform`, `connection_name`, ...: the string-valued entries.
    pub text: Vec<(String, String)>,
    /// The `capabilities` table's boolean entries.
    pub capabilities: Vec<(String, bool)>,
}

impl ClientProperties {
    /// How many text entries and capabilities are kept.
    pub const MAX_ENTRIES: usize = 32;
    /// How long a kept name or text may be.
    pub const MAX_TEXT_BYTES: usize = 256;

    /// Reads `table` (a start-ok's client-properties), keeping what the bounds allow.
    pub fn from_table(table: &amq_protocol::types::FieldTable) -> Self {
        use amq_protocol::types::AMQPValue;
        let text_of = |value: &AMQPValue| match value {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        };
        let mut out = Self::default();
        for (name, value) in table.inner() {
            if let AMQPValue::FieldTable(capabilities) = value
                && name.as_str() == "capabilities"
            {
                out.capabilities = capabilities
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        AMQPValue::Boolean(b) => Some((cut(k.as_str()), *b)),
                        _ => None,
                    })
                    .take(Self::MAX_ENTRIES)
                    .collect();
            } else if let Some(text) = text_of(value)
                && out.text.len() < Self::MAX_ENTRIES
            {
                out.text.push((cut(name.as_str()), cut(&text)));
            }
        }
        out
    }

    /// The client-provided connection name (`connection_name`), if any.
    pub fn connection_name(&self) -> Option<&str> {
        self.text
            .iter()
            .find(|(k, _)| k == "connection_name")
            .map(|(_, v)| v.as_str())
    }
}

/// `text` cut to [`ClientProperties::MAX_TEXT_BYTES`] on a character boundary.
fn cut(text: &str) -> String {
    let mut end = text.len().min(ClientProperties::MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl ConnectionInfo {
    /// Bytes received from and sent to the client (RabbitMQ's `recv_oct`, `send_oct`).
    pub fn octets(&self) -> (u64, u64) {
        (self.received.get(), self.writer.sent.get())
    }

    /// Its open channels, in channel-number order.
    pub fn channels(&self) -> Vec<Arc<ChannelOutlet>> {
        let mut open: Vec<Arc<ChannelOutlet>> = self
            .channels
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.is_open())
            .collect();
        open.sort_by_key(|c| c.number());
        open
    }

    /// Records a newly opened channel (and forgets closed ones).
    pub(crate) fn channel_opened(&self, outlet: &Arc<ChannelOutlet>) {
        let mut channels = self.channels.lock();
        channels.retain(|c| c.upgrade().is_some_and(|c| c.is_open()));
        channels.push(Arc::downgrade(outlet));
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, state: ConnectionState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Makes the connection close with 320 CONNECTION_FORCED and `reason` at its next turn
    /// (the first reason given wins).
    pub(crate) fn force_close(&self, reason: impl Into<String>) {
        self.forced_reason
            .lock()
            .get_or_insert_with(|| reason.into());
        self.forced.notify_one();
    }

    /// Resolves once [`ConnectionInfo::force_close`] was called, with its reason; at once if
    /// it already was (so every wait of the connection sees it, not only the first).
    pub(crate) async fn forced(&self) -> String {
        loop {
            if let Some(reason) = self.forced_reason.lock().clone() {
                return reason;
            }
            self.forced.notified().await;
        }
    }
}

/// The open connections.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<ConnectionId, Arc<ConnectionInfo>>>,
}

impl Connections {
    /// Lists a connection until the returned guard is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        opened: Opened,
        writer: Arc<Writer>,
        received: Arc<OwnedCounter>,
    ) -> Listed {
        let id = opened.id;
        let info = Arc::new(ConnectionInfo {
            id,
            peer: opened.peer,
            user: opened.user,
            vhost: opened.vhost,
            tls: opened.tls,
            frame_max: opened.frame_max,
            channel_max: opened.channel_max,
            heartbeat_secs: opened.heartbeat_secs,
            connected_at: SystemTime::now(),
            client: opened.client,
            received,
            writer,
            channels: Mutex::new(Vec::new()),
            state: AtomicU8::new(ConnectionState::Running as u8),
            forced: tokio::sync::Notify::new(),
            forced_reason: Mutex::new(None),
        });
        self.open.lock().insert(id, info.clone());
        Listed {
            connections: self.clone(),
            info,
        }
    }

    /// Closes with 320 and `reason` every open connection `which` selects; returns how many.
    pub(crate) fn force_close_where(
        &self,
        which: impl Fn(&ConnectionInfo) -> bool,
        reason: &str,
    ) -> usize {
        let chosen: Vec<_> = self
            .open
            .lock()
            .values()
            .filter(|c| which(c))
            .cloned()
            .collect();
        for connection in &chosen {
            connection.force_close(reason);
        }
        chosen.len()
    }

    /// Every open connection, in id order.
    pub fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut all: Vec<_> = self.open.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }
}

/// A connection's entry in [`Connections`]; removed when dropped.
pub(crate) struct Listed {
    connections: Arc<Connections>,
    /// The entry.
    pub(crate) info: Arc<ConnectionInfo>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.connections.open.lock().remove(&self.info.id);
    }
}
