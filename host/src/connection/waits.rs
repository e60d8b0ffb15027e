//! Why a connection stops reading for a while, and what ends each wait: the memory alarm and
//! its vhost's `max-queued-bytes` (state `blocked`), a queue's flow control, the vhost's
//! `max-publish-rate` and WASM CPU budget (state `flow`), and its own full writer. Every wait
//! still closes timed-out channels, and ends early when the connection is forced closed
//! (returning the reason) or, where noted, when the broker shuts down.

use std::time::Duration;

use amq_protocol::protocol::connection;
use tracing::debug;

use super::{Connection, ConnectionState};

impl Connection {
    /// Stops reading until the memory alarm clears, as RabbitMQ blocks a publishing
    /// connection: the socket is left unread (TCP back-pressure stops the client), the
    /// client's heartbeats are not checked (it may be blocked on a full socket), and ours keep
    /// going out from the writer task. Consumer timeouts still close their channels. Returns
    /// the reason when the connection was forced closed meanwhile.
    pub(super) async fn block_while_memory_alarm(&mut self) -> Option<String> {
        let mut alarm = self.shared.memory.subscribe();
        if !*alarm.borrow_and_update() {
            return None;
        }
        debug!(id = self.id, "memory alarm: connection blocked");
        self.listed.info.set_state(ConnectionState::Blocked);
        if self.blocked_notifications {
            self.send_connection_method(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            }));
        }
        loop {
            tokio::select! {
                // Cannot fail: `self.shared` keeps the sender alive.
                _ = alarm.wait_for(|alarmed| !alarmed) => break,
                _ = self.wake.notified() => self.close_timed_out_channels(),
                reason = self.listed.info.forced() => return Some(reason),
            }
        }
        debug!(id = self.id, "memory alarm cleared: connection resumes");
        self.listed.info.set_state(ConnectionState::Running);
        if self.blocked_notifications {
            self.send_connection_method(connection::AMQPMethod::Unblocked(
                connection::Unblocked {},
            ));
        }
        None
    }

    /// Stops reading while the queues this connection just published into are in flow
    /// (`queue/flow.rs`): TCP back-pressure then slows the publisher to what those queues'
    /// consumers take. Consumer timeouts still close channels; a broker shutdown ends the
    /// wait, and a forced close (returning its reason).
    pub(super) async fn wait_for_flow(
        &mut self,
        closing: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<String> {
        let queues = std::mem::take(self.throttled.get_mut());
        self.listed.info.set_state(ConnectionState::Flow);
        for queue in queues {
            loop {
                tokio::select! {
                    () = queue.throttle() => break,
                    _ = self.wake.notified() => self.close_timed_out_channels(),
                    reason = self.listed.info.forced() => return Some(reason),
                    () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                        self.listed.info.set_state(ConnectionState::Running);
                        return None;
                    }
                }
            }
        }
        self.listed.info.set_state(ConnectionState::Running);
        None
    }

    /// Stops reading while the vhost's queues hold its `max-queued-bytes` (RabbitMQ's memory
    /// alarm, for one vhost): told with connection.blocked when the client asked for it. A
    /// forced close (the vhost deleted) ends the wait with its reason.
    pub(super) async fn block_while_vhost_full(
        &mut self,
        closing: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<String> {
        let mut full = self.vhost.admission().subscribe_full();
        if !*full.borrow_and_update() {
            return None;
        }
        debug!(id = self.id, vhost = %self.vhost.name, "vhost queued-bytes limit: connection blocked");
        self.listed.info.set_state(ConnectionState::Blocked);
        if self.blocked_notifications {
            let reason = format!("vhost '{}' holds its max-queued-bytes", self.vhost.name);
            self.send_connection_method(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: reason.as_str().into(),
            }));
        }
        loop {
            tokio::select! {
                // The sender lives in the vhost this connection holds.
                _ = full.wait_for(|full| !full) => break,
                _ = self.wake.notified() => self.close_timed_out_channels(),
                reason = self.listed.info.forced() => return Some(reason),
                () = async { drop(closing.wait_for(|closing| *closing).await) } => break,
            }
        }
        self.listed.info.set_state(ConnectionState::Running);
        if self.blocked_notifications {
            self.send_connection_method(connection::AMQPMethod::Unblocked(
                connection::Unblocked {},
            ));
        }
        None
    }

    /// Stops reading for `wait`, then for as long as `still_owed` says (state `flow`, as for
    /// a queue's flow control): the vhost's publishers went over its `max-publish-rate`, or
    /// its WASM exchanges over their CPU budget. A forced close ends the wait with its
    /// reason.
    pub(super) async fn wait_in_flow(
        &mut self,
        wait: Duration,
        still_owed: fn(&Self) -> Option<Duration>,
        closing: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<String> {
        self.listed.info.set_state(ConnectionState::Flow);
        let mut wait = Some(wait);
        'owed: while let Some(owed) = wait {
            let until = tokio::time::Instant::now() + owed;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    _ = self.wake.notified() => self.close_timed_out_channels(),
                    reason = self.listed.info.forced() => return Some(reason),
                    () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                        break 'owed;
                    }
                }
            }
            // Still owed after a capped wait: wait on, at the rate in force now.
            wait = still_owed(self);
        }
        self.listed.info.set_state(ConnectionState::Running);
        None
    }

    /// Stops reading until the writer has drained below its congestion threshold: what this
    /// connection asks for comes back through its own socket, so a peer that does not read
    /// cannot make the broker buffer without bound. Consumer timeouts still close channels;
    /// a forced close ends the wait with its reason.
    pub(super) async fn pause_while_congested(&mut self) -> Option<String> {
        debug!(id = self.id, "writer congested: reading paused");
        loop {
            tokio::select! {
                _ = self.writer.drained() => return None,
                _ = self.wake.notified() => self.close_timed_out_channels(),
                reason = self.listed.info.forced() => return Some(reason),
            }
        }
    }
}
