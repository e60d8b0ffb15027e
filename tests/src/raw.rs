//! A raw AMQP 0-9-1 client over a plain `TcpStream`, for what a well-behaved client library will
//! not send: bad protocol headers, malformed or oversized frames, methods on unopened channels,
//! silence after tuning.
//!
//! Frames are encoded and decoded with amq-protocol's generated codecs; hand-written byte
//! sequences appear only where a test needs a frame amq-protocol would refuse to produce.
//! Every read is bounded by [`RECV_TIMEOUT`] (or an explicit limit), so a broker that never
//! answers fails the test instead of hanging it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How long any single receive waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The AMQP 0-9-1 protocol header a client sends first and a server sends back when refusing.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame-end octet (AMQP 0-9-1 section 4.2.3).
pub const FRAME_END: u8 = 0xCE;

/// Size of a frame's header (type, channel, payload size).
const FRAME_HEADER_LEN: usize = 7;

/// Why a receive did not produce a frame.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the socket (clean EOF or reset).
    Closed,
    /// Nothing arrived within the limit.
    Timeout,
    /// The bytes received are not a valid frame.
    Malformed(String),
    /// Another socket error.
    Io(std::io::Error),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str("socket closed by the broker"),
            RecvError::Timeout => f.write_str("timed out waiting for a frame"),
            RecvError::Malformed(e) => write!(f, "malformed frame from the broker: {e}"),
            RecvError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// What the client answers in connection.start-ok, tune-ok and open.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// SASL mechanism; `PLAIN` and `AMQPLAIN` are encoded by this client.
    pub mechanism: String,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host for connection.open.
    pub vhost: String,
    /// channel-max for tune-ok; `None` echoes the server's value.
    pub channel_max: Option<u16>,
    /// frame-max for tune-ok; `None` echoes the server's value.
    pub frame_max: Option<u32>,
    /// heartbeat for tune-ok; `None` echoes the server's value.
    pub heartbeat: Option<u16>,
    /// Announce the `connection.blocked` capability in start-ok (lapin and the RabbitMQ
    /// clients do), asking for connection.blocked / connection.unblocked notifications.
    pub connection_blocked: bool,
}

impl Default for Handshake {
    fn default() -> Self {
        Self {
            mechanism: "PLAIN".into(),
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            channel_max: None,
            frame_max: None,
            heartbeat: None,
            connection_blocked: false,
        }
    }
}

/// What the server said during a completed handshake.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// connection.start as received.
    pub start: connection::Start,
    /// connection.tune as received.
    pub tune: connection::Tune,
    /// The values this client sent in tune-ok.
    pub tune_ok: connection::TuneOk,
}

/// A connection.close or channel.close the broker sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// Reply code (e.g. 501 FRAME_ERROR).
    pub code: u16,
    /// Reply text.
    pub text: String,
    /// Class id of the failing method, 0 if none.
    pub class_id: u16,
    /// Method id of the failing method, 0 if none.
    pub method_id: u16,
}

/// A raw AMQP client connection.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// The socket and the bytes already read but not decoded, for a test that must see the
    /// socket's own errors (a reset, which [`RawClient`]'s reads treat as a close).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Opens a TCP connection without sending anything.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = timeout(RECV_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects, sends the protocol header and reads connection.start, stopping before start-ok.
    pub async fn connect_until_start(addr: SocketAddr) -> (Self, connection::Start) {
        let mut client = Self::connect(addr).await;
        client
            .send_bytes(&PROTOCOL_HEADER)
            .await
            .expect("send protocol header");
        let start = match client.recv_method().await.expect("connection.start") {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => start,
            other => panic!("expected connection.start on channel 0, got {other:?}"),
        };
        (client, start)
    }

    /// Runs the whole handshake as guest/guest on vhost `/`, echoing the server's tune values.
    pub async fn open(addr: SocketAddr) -> (Self, Negotiated) {
        Self::open_with(addr, Handshake::default()).await
    }

    /// Runs the whole handshake with the given answers and expects connection.open-ok.
    pub async fn open_with(addr: SocketAddr, hs: Handshake) -> (Self, Negotiated) {
        let (mut client, negotiated) = Self::start_and_tune(addr, &hs).await;
        client.send_connection_open(&hs.vhost).await;
        match client.recv_method().await.expect("connection.open-ok") {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        (client, negotiated)
    }

    /// Sends the header, answers start with start-ok, reads tune and answers tune-ok; stops
    /// before connection.open.
    pub async fn start_and_tune(addr: SocketAddr, hs: &Handshake) -> (Self, Negotiated) {
        let (mut client, start) = Self::connect_until_start(addr).await;
        client.send_start_ok(hs).await;
        let tune = match client.recv_method().await.expect("connection.tune") {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        let tune_ok = connection::TuneOk {
            channel_max: hs.channel_max.unwrap_or(tune.channel_max),
            frame_max: hs.frame_max.unwrap_or(tune.frame_max),
            heartbeat: hs.heartbeat.unwrap_or(tune.heartbeat),
        };
        client
            .send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok.clone())),
            )
            .await
            .expect("send tune-ok");
        (
            client,
            Negotiated {
                start,
                tune,
                tune_ok,
            },
        )
    }

    /// Sends connection.start-ok with client capabilities that ask for
    /// authentication_failure_close, as lapin and the RabbitMQ clients do.
    pub async fn send_start_ok(&mut self, hs: &Handshake) {
        let mut capabilities = FieldTable::default();
        capabilities.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        if hs.connection_blocked {
            capabilities.insert("connection.blocked".into(), AMQPValue::Boolean(true));
        }
        let mut client_properties = FieldTable::default();
        client_properties.insert("product".into(), AMQPValue::LongString("bourse-raw".into()));
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let response = sasl_response(&hs.mechanism, &hs.user, &hs.password);
        let start_ok = connection::StartOk {
            client_properties,
            mechanism: hs.mechanism.as_str().into(),
            response: response.into(),
            locale: "en_US".into(),
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        )
        .await
        .expect("send start-ok");
    }

    /// Sends connection.open for `vhost`.
    pub async fn send_connection_open(&mut self, vhost: &str) {
        let open = connection::Open {
            virtual_host: vhost.into(),
        };
        self.send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
            .await
            .expect("send connection.open");
    }

    /// Opens `channel` and expects channel.open-ok on it.
    pub async fn open_channel(&mut self, id: u16) {
        self.send_method(id, channel_open())
            .await
            .expect("send channel.open");
        match self.recv_method().await.expect("channel.open-ok") {
            (ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if ch == id => {}
            other => panic!("expected channel.open-ok on channel {id}, got {other:?}"),
        }
    }

    /// The socket, for tests that read and write it from separate tasks (what was read into
    /// this client's buffer and not parsed yet is dropped).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Encodes and writes one frame.
    pub async fn send_frame(&mut self, frame: &AMQPFrame) -> std::io::Result<()> {
        let bytes = encode_frame(frame);
        self.send_bytes(&bytes).await
    }

    /// Encodes and writes one method frame.
    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) -> std::io::Result<()> {
        self.send_frame(&AMQPFrame::Method(channel, method)).await
    }

    /// Publishes `body` (one body frame, so at most frame_max - 8 bytes) on `channel` with
    /// default properties.
    pub async fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> std::io::Result<()> {
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: BasicProperties::default(),
        };
        let mut bytes = encode_frame(&AMQPFrame::Method(
            channel,
            basic_publish(exchange, routing_key),
        ));
        bytes.extend(encode_frame(&AMQPFrame::Header(channel, header)));
        if !body.is_empty() {
            bytes.extend(encode_frame(&AMQPFrame::Body(channel, body.to_vec())));
        }
        self.send_bytes(&bytes).await
    }

    /// Writes a heartbeat frame on channel 0.
    pub async fn send_heartbeat(&mut self) -> std::io::Result<()> {
        self.send_frame(&AMQPFrame::Heartbeat).await
    }

    /// Reads exactly `n` raw bytes (e.g. the protocol header a server sends when refusing).
    pub async fn recv_bytes(&mut self, n: usize) -> Result<Vec<u8>, RecvError> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        while self.buf.len() < n {
            self.fill(deadline).await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Receives the next frame, waiting at most [`RECV_TIMEOUT`].
    pub async fn recv_frame(&mut self) -> Result<AMQPFrame, RecvError> {
        self.recv_frame_within(RECV_TIMEOUT).await
    }

    /// Receives the next frame, waiting at most `limit`. Cancel-safe: bytes already read stay
    /// buffered for the next call.
    pub async fn recv_frame_within(&mut self, limit: Duration) -> Result<AMQPFrame, RecvError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(frame) = self.try_decode()? {
                return Ok(frame);
            }
            self.fill(deadline).await?;
        }
    }

    /// Receives the next method frame, skipping heartbeats.
    pub async fn recv_method(&mut self) -> Result<(u16, AMQPClass), RecvError> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_frame_within(left).await? {
                AMQPFrame::Heartbeat => continue,
                AMQPFrame::Method(ch, method) => return Ok((ch, method)),
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Reads frames until the broker's connection.close, skipping anything else, and returns its
    /// reason. Panics if the socket closes first or nothing arrives in time, naming the frames
    /// that did arrive.
    pub async fn expect_connection_close(&mut self) -> CloseReason {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_frame_within(left).await {
                Ok(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    return CloseReason {
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                        class_id: c.class_id,
                        method_id: c.method_id,
                    };
                }
                Ok(AMQPFrame::Heartbeat) => continue,
                Ok(frame) => skipped.push(frame),
                Err(e) => panic!(
                    "expected connection.close from the broker, got: {e}; frames received \
                     meanwhile: {skipped:?}"
                ),
            }
        }
    }

    /// Expects connection.close with `code`, answers close-ok, and expects the broker to close the
    /// socket. Returns the reason for further checks.
    pub async fn expect_connection_close_code(&mut self, code: u16) -> CloseReason {
        let reason = self.expect_connection_close().await;
        assert_eq!(
            reason.code, code,
            "connection.close reply code (reason: {reason:?})"
        );
        // The broker may already have closed the socket after a fatal frame error.
        let close_ok =
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
        let _ = self.send_method(0, close_ok).await;
        assert!(
            self.wait_closed(RECV_TIMEOUT).await,
            "broker kept the socket open after connection.close/close-ok"
        );
        reason
    }

    /// Reads frames until the broker's channel.close on `id` and returns its reason.
    pub async fn expect_channel_close(&mut self, id: u16) -> CloseReason {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_frame_within(left).await {
                Ok(AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))))
                    if ch == id =>
                {
                    return CloseReason {
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                        class_id: c.class_id,
                        method_id: c.method_id,
                    };
                }
                Ok(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    panic!("expected channel.close on {id}, got connection.close {c:?}")
                }
                Ok(_) => continue,
                Err(e) => panic!("expected channel.close on {id}, got: {e}"),
            }
        }
    }

    /// Waits up to `limit` for the broker to close the socket, discarding whatever it sends.
    /// Returns false if the socket is still open at the deadline.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.buf.clear();
            match self.fill(deadline).await {
                Ok(()) => continue,
                Err(RecvError::Closed) | Err(RecvError::Io(_)) => return true,
                Err(RecvError::Timeout) => return false,
                Err(RecvError::Malformed(_)) => unreachable!("fill does not decode"),
            }
        }
    }

    /// Reads more bytes into the buffer, failing at `deadline`.
    async fn fill(&mut self, deadline: Instant) -> Result<(), RecvError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(RecvError::Timeout),
            Ok(Ok(0)) => Err(RecvError::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(RecvError::Closed),
            Ok(Err(e)) => Err(RecvError::Io(e)),
        }
    }

    /// Decodes one frame if a whole one is buffered (check first, then parse).
    fn try_decode(&mut self) -> Result<Option<AMQPFrame>, RecvError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let size =
            u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
        let total = FRAME_HEADER_LEN + size + 1;
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = match parse_frame(&self.buf[..total]) {
            Ok(([], frame)) => frame,
            Ok((rest, _)) => {
                return Err(RecvError::Malformed(format!(
                    "{} trailing bytes",
                    rest.len()
                )));
            }
            Err(e) => return Err(RecvError::Malformed(format!("{e:?}"))),
        };
        self.buf.drain(..total);
        Ok(Some(frame))
    }
}

/// Encodes a frame with amq-protocol's generator.
pub fn encode_frame(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = WriteContext::from(Vec::new());
    let (bytes, _) = gen_frame(frame)(ctx).expect("frame encodes").into_inner();
    bytes
}

/// A frame assembled by hand: type, channel, payload and an explicit frame-end octet.
pub fn raw_frame(frame_type: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len() + 1);
    out.push(frame_type);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(end);
    out
}

/// A length-prefixed field table nesting `depth` levels (the table is level 1), the shape of
/// the stack-overflow report; see `bourse::protocol::nested_table_for_tests`.
pub fn nested_table(depth: usize) -> Vec<u8> {
    bourse::protocol::nested_table_for_tests(depth)
}

/// The SASL response for PLAIN (`\0user\0password`) or AMQPLAIN (a field table without its
/// length prefix: LOGIN and PASSWORD as long strings).
pub fn sasl_response(mechanism: &str, user: &str, password: &str) -> Vec<u8> {
    match mechanism {
        "AMQPLAIN" => {
            let mut out = Vec::new();
            for (key, value) in [("LOGIN", user), ("PASSWORD", password)] {
                out.push(key.len() as u8);
                out.extend_from_slice(key.as_bytes());
                out.push(b'S');
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value.as_bytes());
            }
            out
        }
        _ => format!("\0{user}\0{password}").into_bytes(),
    }
}

/// channel.open.
pub fn channel_open() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

/// basic.publish to `exchange` with `routing_key`, not mandatory.
pub fn basic_publish(exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: false,
        immediate: false,
    }))
}

/// basic.consume of `queue` as `tag`, with manual acks unless `no_ack`.
pub fn basic_consume(queue: &str, tag: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

/// A queue.declare for `name` with default flags.
pub fn queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

/// A long string from bytes, for field tables.
pub fn long_string(bytes: &[u8]) -> LongString {
    LongString::from(bytes.to_vec())
}

/// The AMQP reply code carried by a lapin error, if the broker sent one (channel.close or
/// connection.close).
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Asserts that a lapin result failed with the broker's reply `code`.
#[track_caller]
pub fn assert_reply_code<T: fmt::Debug>(result: Result<T, lapin::Error>, code: u16) {
    match result {
        Ok(v) => {
            panic!("expected the broker to fail the operation with {code}, it succeeded: {v:?}")
        }
        Err(e) => assert_eq!(
            reply_code(&e),
            Some(code),
            "expected reply code {code}, got error: {e}"
        ),
    }
}

/// How long a test waits for any one broker reply through lapin.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most [`REPLY_TIMEOUT`], failing the test if the broker does not answer.
#[track_caller]
pub fn within<F: std::future::Future>(fut: F) -> impl std::future::Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    async move {
        match timeout(REPLY_TIMEOUT, fut).await {
            Ok(out) => out,
            Err(_) => panic!("no answer from the broker within {REPLY_TIMEOUT:?} (at {caller})"),
        }
    }
}
