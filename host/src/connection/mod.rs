//! One client connection: the only code that touches sockets.
//!
//! A reader task decodes frames (check, then parse), runs the handshake, dispatches methods to
//! channels and enforces heartbeats; a writer task ([`Writer`]) flushes coalesced frames. All
//! errors funnel through [`Connection::fail`], which applies the one mapping from an
//! [`AmqpError`] to channel.close or connection.close.
//!
//! While the memory alarm is on, a connection that has published stops reading (RabbitMQ's
//! "blocked" state) until it clears; see [`Connection::block_while_memory_alarm`].

mod handshake;
mod registry;
mod tls;
mod waits;
mod writer;

pub use registry::{ClientProperties, ConnectionInfo, ConnectionState, Connections};
pub use tls::{TlsError, TlsInfo, TlsServer};
pub use writer::{DrainWaiter, Writer};

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::broker::Shared;
use crate::channel::{Channel, Session};
use crate::limits::{ContentBudget, Held, Slot, UserUsage, VhostLimits};
use crate::protocol::{AmqpError, Frame, parse_frame, write_method};
use crate::queue::{ConnectionId, Queue};
use crate::stats::OwnedCounter;
use crate::vhost::{ExchangeTally, VHost};

/// Frames handled per turn of a connection's loop before it yields to other tasks (about 340
/// small published messages: each is three frames).
const FRAMES_PER_TURN: usize = 1024;
/// basic.ack frames handled per turn. Acks are settled when a turn ends, and the deliveries
/// they make room for are written once the turn yields: ending turns after a few dozen acks
/// sends a client's one write of a whole prefetch window of acks back as several smaller
/// batches of deliveries, so the client works on the first batch while the broker settles the
/// next, instead of both sides taking turns over one window.
const ACKS_PER_TURN: usize = 32;
/// How long a closing connection waits for the peer's close-ok.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a closed connection keeps reading (and discarding) until the client closes its
/// side of the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(3);
/// Bytes requested per socket read when the buffer is empty; grows while reads fill it.
const READ_CHUNK_MIN: usize = 4096;
const READ_CHUNK_MAX: usize = 256 << 10;

/// The read side of a client socket: a TCP half, or the read side of a TLS stream. One
/// dynamic call per socket read (not per frame).
pub type SocketRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write side of a client socket.
pub type SocketWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Serves one accepted plain-TCP socket until it closes.
pub async fn serve(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr, id: ConnectionId) {
    let _ = socket.set_nodelay(true);
    let (read, write) = socket.into_split();
    serve_stream(shared, Box::new(read), Box::new(write), peer, id, None).await;
}

/// Serves one socket accepted by the AMQPS listener: the TLS handshake first (bounded in
/// time, in this task: a stalled peer holds nothing else), then AMQP over it.
pub async fn serve_tls(
    shared: Arc<Shared>,
    tls: Arc<TlsServer>,
    socket: TcpStream,
    peer: SocketAddr,
    id: ConnectionId,
) {
    let _ = socket.set_nodelay(true);
    let (stream, info) = match tls.accept(socket).await {
        Ok(accepted) => accepted,
        Err(error) => {
            debug!(id, %peer, %error, "TLS handshake failed");
            return;
        }
    };
    drop(tls);
    let (read, write) = tokio::io::split(stream);
    serve_stream(
        shared,
        Box::new(read),
        Box::new(write),
        peer,
        id,
        Some(info),
    )
    .await;
}

async fn serve_stream(
    shared: Arc<Shared>,
    read: SocketRead,
    write: SocketWrite,
    peer: SocketAddr,
    id: ConnectionId,
    tls: Option<TlsInfo>,
) {
    // Held until this task ends: broker shutdown waits for every receiver to go.
    let mut closing = shared.closing.subscribe();
    let writer = Writer::new(shared.config.frame_max_bytes);
    let mut reader = Reader {
        socket: read,
        buf: BytesMut::new(),
        chunk: READ_CHUNK_MIN,
        received: Arc::new(OwnedCounter::default()),
    };
    let negotiated =
        match handshake::run(&shared, &mut reader, write, &writer, peer, id, tls.as_ref()).await {
            Some(negotiated) => negotiated,
            None => return,
        };
    info!(id, %peer, user = %negotiated.user, vhost = %negotiated.vhost.name, "connection opened");
    // The per-connection limits of the vhost as it opens (a later change applies to new
    // connections).
    let limits = negotiated.vhost.limits();
    let listed = shared.open.register(
        registry::Opened {
            id,
            peer,
            user: negotiated.user.clone(),
            vhost: negotiated.vhost.name.to_string(),
            tls,
            frame_max: negotiated.frame_max,
            channel_max: negotiated.channel_max,
            heartbeat_secs: negotiated.heartbeat.map_or(0, |h| h.as_secs()),
            client: negotiated.client.clone(),
        },
        writer.clone(),
        reader.received.clone(),
    );
    let wasm_budget = shared.wasm_budget(&negotiated.vhost.name);
    let mut connection = Connection {
        id,
        shared,
        writer,
        vhost: negotiated.vhost,
        user: negotiated.user,
        frame_max: negotiated.frame_max,
        channel_max: negotiated.channel_max,
        heartbeat: negotiated.heartbeat,
        channels: HashMap::new(),
        closing: HashMap::new(),
        wake: Arc::new(tokio::sync::Notify::new()),
        published: false,
        turn_publishes: 0,
        blocked_notifications: negotiated.blocked_notifications,
        content: ContentBudget::new(limits.connection_content_max_bytes),
        limits,
        _slots: negotiated.slots,
        user_usage: negotiated.user_usage,
        grants: negotiated.grants,
        grants_generation: negotiated.grants_generation,
        throttled: RefCell::new(Vec::new()),
        exchange_tally: RefCell::new(ExchangeTally::default()),
        wasm_budget,
        listed,
    };
    let reason = connection.run(&mut reader, &mut closing).await;
    connection.shutdown();
    // The connection is over for the broker's counts (its connection and channel slots come
    // back now), even while the socket lingers below.
    drop(connection);
    if !matches!(reason, CLIENT_EOF | SOCKET_ERROR) {
        // As RabbitMQ: after close-ok, read and discard until the client closes its side.
        // Closing with unread bytes in the receive buffer would make the kernel answer with a
        // reset, and the client could lose our close-ok.
        reader.discard_until_eof(CLOSE_LINGER).await;
    }
    info!(id, %peer, reason, "connection closed");
}

/// Why a connection ended when the client closed the socket first, or the socket failed:
/// nothing is left to drain.
const CLIENT_EOF: &str = "client closed the socket";
const SOCKET_ERROR: &str = "socket error";

/// Waits until the message store syncs again (forever without a store).
async fn store_synced(synced: &mut Option<tokio::sync::watch::Receiver<crate::store::Ticket>>) {
    match synced {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            rx.borrow_and_update();
        }
        None => std::future::pending().await,
    }
}

/// The read half with its buffer.
pub(crate) struct Reader {
    socket: SocketRead,
    buf: BytesMut,
    chunk: usize,
    /// Bytes read (RabbitMQ's `recv_oct`), shown through the connection's entry.
    received: Arc<OwnedCounter>,
}

impl Reader {
    /// Reads and drops whatever arrives until end of stream, a read error or `limit`. Memory
    /// stays bounded: the buffer is cleared before every read.
    async fn discard_until_eof(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                self.buf.clear();
                match self.fill().await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Reads more bytes; `Ok(0)` is end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
            self.buf.reserve(self.chunk);
        }
        let n = self.socket.read_buf(&mut self.buf).await?;
        self.received.add(n as u64);
        // Grow the read size while reads come back full, so busy connections make fewer
        // syscalls and idle ones keep a small buffer.
        if n >= self.chunk / 2 {
            self.chunk = (self.chunk * 2).min(READ_CHUNK_MAX);
        } else if n < self.chunk / 8 {
            self.chunk = (self.chunk / 2).max(READ_CHUNK_MIN);
        }
        Ok(n)
    }

    /// The next frame, reading as needed; `None` at end of stream or on a read error.
    async fn next_frame(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        loop {
            if let Some(frame) = parse_frame(&mut self.buf, frame_max)? {
                return Ok(Some(frame));
            }
            match self.fill().await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }
}

struct Connection {
    id: ConnectionId,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    vhost: Arc<VHost>,
    user: String,
    frame_max: u32,
    channel_max: u16,
    heartbeat: Option<Duration>,
    channels: HashMap<u16, Channel>,
    /// Channels we closed, waiting for the client's channel.close-ok.
    closing: HashMap<u16, ()>,
    /// Interrupts a read: raised by a channel whose consumer timeout fired (see
    /// `close_timed_out_channels`) and, once the connection has published, by the memory
    /// monitor when its alarm sets.
    wake: Arc<tokio::sync::Notify>,
    /// A basic.publish was received: the memory alarm blocks this connection.
    published: bool,
    /// basic.publish methods of the current read turn, charged against the vhost's
    /// publish rate when the turn ends.
    turn_publishes: u32,
    /// The client asked for connection.blocked / connection.unblocked.
    blocked_notifications: bool,
    /// Bodies of messages still arriving on any channel, against
    /// `connection_content_max_bytes`.
    content: Arc<ContentBudget>,
    /// The vhost's limits when the connection opened.
    limits: VhostLimits,
    /// This connection's places in the broker's, vhost's and user's counts, given back when
    /// the connection ends.
    _slots: (Slot, Slot, Held),
    /// The user's counters and limits (channels over all its connections).
    user_usage: Arc<UserUsage>,
    /// What the user may do in the vhost (checked on every operation).
    grants: Arc<crate::auth::Grants>,
    /// The users' generation `grants` were taken at (`UserStore::generation`).
    grants_generation: u64,
    /// Queues in flow this connection published into during the current turn.
    throttled: RefCell<Vec<Arc<Queue>>>,
    /// What this turn published per exchange (added to the exchange's counters at its end).
    exchange_tally: RefCell<ExchangeTally>,
    /// The vhost's WASM budget: while it is spent, this connection's publishing waits.
    wasm_budget: Option<Arc<crate::exchange::wasm::budget::VhostBudget>>,
    /// Its entry in the broker's list of connections (state shown to operators).
    listed: registry::Listed,
}

/// What ended the main loop.
enum Outcome {
    Continue,
    Closed(&'static str),
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut Reader,
        closing: &mut tokio::sync::watch::Receiver<bool>,
    ) -> &'static str {
        // The peer must send something (a frame or heartbeat) at least every two intervals.
        let silence = self.heartbeat.map(|h| h * 2);
        // Confirms of persistent messages wait for the message store's group commit.
        let mut synced = self.vhost.subscribe_synced();
        loop {
            // Before the frames of the next read batch: one atomic load, and only for
            // connections that publish.
            // A wait ends early when the connection is forced closed (its vhost or user
            // deleted, its access revoked): a blocked publisher is closed like any other.
            if self.published
                && self.shared.memory.is_alarmed()
                && let Some(reason) = self.block_while_memory_alarm().await
            {
                return self.force_close(reader, reason).await;
            }
            if self.published
                && self.vhost.admission().is_full()
                && let Some(reason) = self.block_while_vhost_full(closing).await
            {
                return self.force_close(reader, reason).await;
            }
            if self.writer.is_congested()
                && let Some(reason) = self.pause_while_congested().await
            {
                return self.force_close(reader, reason).await;
            }
            // Users and permissions changed: later operations are checked against the new
            // grants. One atomic load per turn.
            if self.shared.users.generation() != self.grants_generation
                && let Err(error) = self.refresh_grants()
            {
                return self.fail_connection(reader, 0, error).await;
            }
            let (mut turn, mut acks) = (0, 0);
            let more_buffered = loop {
                // A client that does not read what it asks for (basic.get, basic.return) is
                // not read either until its replies drain: the writer's one congestion rule.
                if turn == FRAMES_PER_TURN || acks == ACKS_PER_TURN || self.writer.is_congested() {
                    break true;
                }
                // The vhost's WASM budget is spent: stop here (one atomic load). A queue in
                // flow this turn published into is waited for when the turn ends: a turn
                // (at most about 340 small messages) against `FLOW_PACE` deliveries.
                if self.wasm_budget.as_ref().is_some_and(|b| b.in_debt()) {
                    break true;
                }
                turn += 1;
                let frame = match parse_frame(&mut reader.buf, self.frame_max) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break false,
                    Err(error) => return self.fail_connection(reader, 0, error).await,
                };
                if matches!(
                    frame,
                    Frame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(_)))
                ) {
                    acks += 1;
                }
                match self.handle(frame) {
                    Ok(Outcome::Continue) => {}
                    Ok(Outcome::Closed(reason)) => return reason,
                    Err((channel, error)) => {
                        if error.closes_connection(channel) {
                            return self.fail_connection(reader, channel, error).await;
                        }
                        self.close_channel_with(channel, error);
                    }
                }
            };
            self.flush_confirms();
            if !self.throttled.get_mut().is_empty()
                && let Some(reason) = self.wait_for_flow(closing).await
            {
                return self.force_close(reader, reason).await;
            }
            let published = std::mem::take(&mut self.turn_publishes);
            if published > 0 {
                self.vhost.count_published(published);
                self.exchange_tally.get_mut().flush();
            }
            if published > 0
                && let Some(wait) = self.vhost.admission().charge(published)
                && let Some(reason) = self
                    .wait_in_flow(wait, |c| c.vhost.admission().charge(0), closing)
                    .await
            {
                return self.force_close(reader, reason).await;
            }
            // The vhost's plugins (routing, or building instances for declares) used more
            // than its WASM CPU budget: its connections stop reading until the budget
            // refills (other vhosts' do not).
            if self.wasm_budget.as_ref().is_some_and(|b| b.in_debt())
                && let Some(wait) = self.wasm_budget.as_ref().and_then(|b| b.debt_wait())
                && let Some(reason) = self
                    .wait_in_flow(wait, |c| c.wasm_budget.as_ref()?.debt_wait(), closing)
                    .await
            {
                return self.force_close(reader, reason).await;
            }
            // Let the tasks this turn woke run first: a delivery wakes the consumer's writer
            // task into this worker's LIFO slot, which no other worker may steal, so a
            // publisher whose socket always has data would otherwise starve its consumers
            // until tokio's budget forced a yield (measured: a manual-ack consumer got 2k
            // msg/s while a publisher flooded). A turn is at most FRAMES_PER_TURN frames, so
            // a connection acking a few deliveries gets the CPU as often as one publishing
            // thousands of messages per read.
            tokio::task::yield_now().await;
            if more_buffered {
                continue;
            }
            let fill = async {
                match silence {
                    Some(limit) => tokio::time::timeout(limit, reader.fill()).await.ok(),
                    None => Some(reader.fill().await),
                }
            };
            // Reading is cancel-safe: a channel's consumer timeout or the memory alarm may
            // interrupt it.
            let read = tokio::select! {
                read = fill => match read {
                    Some(read) => read,
                    None => {
                        warn!(id = self.id, "missed heartbeats from client; closing");
                        return "missed heartbeats";
                    }
                },
                _ = self.wake.notified() => {
                    self.close_timed_out_channels();
                    continue;
                }
                _ = store_synced(&mut synced), if self.awaiting_sync() => {
                    continue;
                }
                reason = self.listed.info.forced() => {
                    return self.force_close(reader, reason).await;
                }
                // Cannot fail: `self.shared` keeps the sender alive. The guard `wait_for`
                // returns is dropped inside: it must not live across the close below.
                () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                    self.flush_confirms();
                    let error = AmqpError::new(
                        crate::protocol::ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    return self.fail_connection(reader, 0, error).await;
                }
            };
            match read {
                Ok(0) => return CLIENT_EOF,
                Ok(_) => {}
                Err(_) => return SOCKET_ERROR,
            }
        }
    }

    /// Closes the connection with 320 CONNECTION_FORCED and `reason`.
    async fn force_close(&mut self, reader: &mut Reader, reason: String) -> &'static str {
        let error = AmqpError::new(crate::protocol::ReplyCode::ConnectionForced, reason);
        self.fail_connection(reader, 0, error).await
    }

    /// Takes the user's grants in this vhost again after a change of users or permissions.
    /// A user deleted, or whose access to the vhost was revoked, loses the connection (320),
    /// in case the broker's own close of its connections (`Shared::execute_meta`) raced
    /// with this connection's opening.
    fn refresh_grants(&mut self) -> Result<(), AmqpError> {
        let users = &self.shared.users;
        self.grants_generation = users.generation();
        let forced = |text: String| {
            Err(AmqpError::new(
                crate::protocol::ReplyCode::ConnectionForced,
                text,
            ))
        };
        if users.get(&self.user).is_none() {
            return forced(user_deleted(&self.user));
        }
        match users.grants(&self.user, &self.vhost.name) {
            Some(grants) => {
                self.grants = grants;
                Ok(())
            }
            None => forced(access_revoked(&self.vhost.name, &self.user)),
        }
    }

    fn awaiting_sync(&self) -> bool {
        self.channels.values().any(Channel::awaiting_sync)
    }

    /// Ends a read turn on every channel: the turn's acks settle in their queues (which
    /// deliver again), then the confirms it produced are sent.
    fn flush_confirms(&mut self) {
        let (cx, channels) = self.parts();
        for channel in channels.values_mut() {
            channel.settle_acked();
            channel.flush_confirms(&cx);
        }
    }

    /// Handles one frame; an error carries the channel it happened on.
    fn handle(&mut self, frame: Frame) -> Result<Outcome, (u16, AmqpError)> {
        match frame {
            Frame::Heartbeat(0) => Ok(Outcome::Continue),
            // Spec 4.2.7: heartbeats belong to channel 0; RabbitMQ answers 505 otherwise.
            Frame::Heartbeat(ch) => Err((
                0,
                AmqpError::unexpected_frame(format!("heartbeat frame on channel {ch}")),
            )),
            Frame::Method(0, method) => self.connection_method(method),
            Frame::Method(ch, method) => self.channel_method(ch, method),
            Frame::Header(ch, header) => self.content(ch, "content header", |channel, cx| {
                channel.handle_header(cx, header)
            }),
            Frame::Body(ch, body) => self.content(ch, "content body", |channel, cx| {
                channel.handle_body(cx, body)
            }),
        }
    }

    /// Feeds a content frame to its channel; content for a channel we are closing is dropped.
    fn content(
        &mut self,
        ch: u16,
        what: &str,
        feed: impl FnOnce(&mut Channel, &Session<'_>) -> Result<(), AmqpError>,
    ) -> Result<Outcome, (u16, AmqpError)> {
        if self.closing.contains_key(&ch) {
            return Ok(Outcome::Continue);
        }
        let (cx, channels) = self.parts();
        let channel = channels.get_mut(&ch).ok_or_else(|| {
            (
                0,
                AmqpError::unexpected_frame(format!("{what} on channel {ch} which is not open")),
            )
        })?;
        feed(channel, &cx).map_err(|e| (ch, e))?;
        Ok(Outcome::Continue)
    }

    /// The channels' shared context and the channel map, borrowed apart so a channel can be
    /// driven with its connection's context.
    fn parts(&mut self) -> (Session<'_>, &mut HashMap<u16, Channel>) {
        let cx = Session {
            vhost: &self.vhost,
            connection_id: self.id,
            max_message_bytes: self.shared.config.max_message_bytes,
            limits: &self.limits,
            content: &self.content,
            user: &self.user,
            throttled: &self.throttled,
            exchanges: &self.exchange_tally,
            grants: &self.grants,
        };
        (cx, &mut self.channels)
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<Outcome, (u16, AmqpError)> {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                debug!(id = self.id, code = close.reply_code, text = %close.reply_text, "client closed the connection");
                self.writer.write(|out| {
                    write_method(
                        out,
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    )
                });
                Ok(Outcome::Closed("client closed the connection"))
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                Ok(Outcome::Closed("close-ok"))
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.writer.write(|out| {
                    write_method(
                        out,
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                            connection::UpdateSecretOk {},
                        )),
                    )
                });
                Ok(Outcome::Continue)
            }
            other => {
                let ids = (other.get_amqp_class_id(), other.get_amqp_method_id());
                Err((
                    0,
                    AmqpError::command_invalid(format!(
                        "method {}.{} is not valid on channel 0",
                        ids.0, ids.1
                    ))
                    .on_method(ids.0, ids.1),
                ))
            }
        }
    }

    fn channel_method(&mut self, ch: u16, method: AMQPClass) -> Result<Outcome, (u16, AmqpError)> {
        let ids = (method.get_amqp_class_id(), method.get_amqp_method_id());
        if self.closing.contains_key(&ch) {
            // After we sent channel.close, only close and close-ok matter (spec 4.2.5.1... ).
            match method {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.closing.remove(&ch);
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.send_channel_close_ok(ch);
                }
                _ => {}
            }
            return Ok(Outcome::Continue);
        }
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                if self.channels.contains_key(&ch) {
                    return Err((
                        0,
                        AmqpError::channel_error(format!(
                            "second 'channel.open' seen on channel {ch}"
                        ))
                        .on_method(ids.0, ids.1),
                    ));
                }
                if ch > self.channel_max {
                    return Err((
                        0,
                        AmqpError::not_allowed(format!(
                            "channel id {ch} is above the negotiated channel_max {}",
                            self.channel_max
                        ))
                        .on_method(ids.0, ids.1),
                    ));
                }
                let slot = self
                    .user_usage
                    .open_channel(&self.user, &self.user_usage.limits())
                    .map_err(|e| (0, e.on_method(ids.0, ids.1)))?;
                let mut channel = Channel::new(ch, self.id, self.writer.clone());
                self.listed.info.channel_opened(channel.outlet());
                channel.hold(slot);
                if let Some(ms) = self.shared.config.consumer_timeout_ms {
                    channel.set_consumer_timeout(Duration::from_millis(ms), self.wake.clone());
                }
                self.channels.insert(ch, channel);
                self.writer.write(|out| {
                    write_method(
                        out,
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                    )
                });
                Ok(Outcome::Continue)
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                let Some(mut channel) = self.channels.remove(&ch) else {
                    return Err((
                        0,
                        AmqpError::channel_error(format!("channel {ch} is not open"))
                            .on_method(ids.0, ids.1),
                    ));
                };
                channel.close(&self.vhost);
                self.send_channel_close_ok(ch);
                Ok(Outcome::Continue)
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Err((
                0,
                AmqpError::channel_error(format!("unexpected channel.close-ok on channel {ch}"))
                    .on_method(ids.0, ids.1),
            )),
            method => {
                let publish = matches!(method, AMQPClass::Basic(basic::AMQPMethod::Publish(_)));
                self.turn_publishes += u32::from(publish);
                if !self.published && publish {
                    // From now on the memory alarm blocks this connection; be woken when it
                    // sets, so an idle publisher is blocked (and told) at once.
                    self.published = true;
                    self.shared.memory.wake_on_alarm(&self.wake);
                }
                let (cx, channels) = self.parts();
                let Some(channel) = channels.get_mut(&ch) else {
                    return Err((
                        0,
                        AmqpError::channel_error(format!(
                            "expected 'channel.open' on channel {ch}"
                        ))
                        .on_method(ids.0, ids.1),
                    ));
                };
                if channel.expects_content() {
                    return Err((
                        0,
                        AmqpError::unexpected_frame(format!(
                            "method {}.{} while content of a publish was expected on channel {ch}",
                            ids.0, ids.1
                        ))
                        .on_method(ids.0, ids.1),
                    ));
                }
                channel.handle_method(&cx, method).map_err(|e| (ch, e))?;
                Ok(Outcome::Continue)
            }
        }
    }

    fn send_channel_close_ok(&self, ch: u16) {
        self.writer.write(|out| {
            write_method(
                out,
                ch,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            )
        });
    }

    /// Closes the channels whose delivery acknowledgement timeout fired (406, unacked
    /// messages requeued), as RabbitMQ does.
    fn close_timed_out_channels(&mut self) {
        let timed_out: Vec<(u16, AmqpError)> = self
            .channels
            .iter()
            .filter_map(|(&ch, channel)| channel.timed_out().map(|e| (ch, e)))
            .collect();
        for (ch, error) in timed_out {
            warn!(id = self.id, channel = ch, error = %error, "consumer timeout");
            self.close_channel_with(ch, error);
        }
    }

    fn send_connection_method(&self, method: connection::AMQPMethod) {
        self.writer
            .write(|out| write_method(out, 0, AMQPClass::Connection(method)));
    }

    /// Closes one channel because of a soft error.
    fn close_channel_with(&mut self, ch: u16, error: AmqpError) {
        debug!(id = self.id, channel = ch, error = %error, "closing channel");
        if let Some(mut channel) = self.channels.remove(&ch) {
            channel.close(&self.vhost);
        }
        self.closing.insert(ch, ());
        self.writer.write(|out| {
            write_method(
                out,
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: error.code as u16,
                    reply_text: error.text.as_str().into(),
                    class_id: error.class_id,
                    method_id: error.method_id,
                })),
            )
        });
    }

    /// Sends connection.close for a hard error and waits briefly for close-ok.
    async fn fail_connection(
        &mut self,
        reader: &mut Reader,
        channel: u16,
        error: AmqpError,
    ) -> &'static str {
        warn!(id = self.id, channel, error = %error, "closing connection on error");
        send_connection_close(&self.writer, &error);
        // Discard everything until close-ok (spec 2.3.8), within a bounded time.
        let frame_max = self.frame_max;
        let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, async {
            loop {
                match reader.next_frame(frame_max).await {
                    Ok(Some(Frame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                    )))
                    | Ok(None)
                    | Err(_) => break,
                    Ok(Some(Frame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                    ))) => {
                        self.writer.write(|out| {
                            write_method(
                                out,
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            )
                        });
                        break;
                    }
                    Ok(Some(_)) => {}
                }
            }
        })
        .await;
        "connection error"
    }

    /// Releases everything the connection holds.
    fn shutdown(&mut self) {
        for (_, mut channel) in self.channels.drain() {
            channel.close(&self.vhost);
        }
        self.vhost.remove_exclusive_queues(self.id);
        self.writer.close();
    }
}

/// Writes connection.close for `error`.
pub(crate) fn send_connection_close(writer: &Writer, error: &AmqpError) {
    writer.write(|out| {
        write_method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: error.code as u16,
                reply_text: error.text.as_str().into(),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        )
    });
}

/// connection.close text for the connections of a deleted vhost.
pub(crate) fn vhost_deleted(vhost: &str) -> String {
    format!("vhost '{vhost}' is deleted")
}

/// connection.close text for the connections of a deleted user.
pub(crate) fn user_deleted(user: &str) -> String {
    format!("user '{user}' was deleted")
}

/// connection.close text for a user's connections to a vhost it may no longer open.
pub(crate) fn access_revoked(vhost: &str, user: &str) -> String {
    format!("access to vhost '{vhost}' was revoked for user '{user}'")
}
