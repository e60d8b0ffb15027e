//! The broker's list of open connections and the state each is in, for operators: RabbitMQ's
//! connection states `running`, `flow` (publishing slowed by a queue's flow control) and
//! `blocked` (the memory alarm stopped it), read through [`crate::BrokerHandle::connections`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;

use crate::queue::ConnectionId;

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
#[derive(Debug)]
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
    state: AtomicU8,
    /// Raised to make the connection close with 320 (its vhost or user was deleted, its
    /// access revoked), with the reason sent in connection.close.
    forced: tokio::sync::Notify,
    forced_reason: Mutex<Option<String>>,
}

impl ConnectionInfo {
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
        id: ConnectionId,
        peer: SocketAddr,
        user: &str,
        vhost: &str,
        tls: Option<super::TlsInfo>,
    ) -> Listed {
        let info = Arc::new(ConnectionInfo {
            id,
            peer,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            tls,
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
