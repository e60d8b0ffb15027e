//! One raw connection: TCP, the handshake (PLAIN, the server's tune, no heartbeats), channel 1
//! opened, a big read buffer and synchronous method calls for the set-up steps.

use std::{str::FromStr, time::Duration};

use amq_protocol::{
    auth::{Credentials, SASLMechanism},
    frame::ProtocolVersion,
    protocol::{AMQPClass, channel, connection},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};
use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::codec::{Event, Inbound, Step, describe_close, encode_method};

/// The only channel a raw connection uses.
pub const CHANNEL: u16 = 1;
/// Read buffer size: many deliveries per read system call.
const READ_BUF_BYTES: usize = 256 * 1024;
/// Read at least this much at once; compact the buffer when less is free at its end.
const MIN_READ_BYTES: usize = 16 * 1024;
/// Each set-up step (connect, one method call) gets this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Used if the server leaves frame_max unlimited (0).
const DEFAULT_FRAME_MAX: u32 = 128 * 1024;

/// A read buffer: bytes `[start, end)` are received and not yet parsed.
#[derive(Debug)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn new() -> Self {
        Self {
            data: vec![0; READ_BUF_BYTES],
            start: 0,
            end: 0,
        }
    }

    /// Received bytes not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after moving a partial frame to the front when the tail is
    /// short, and growing the buffer if a frame of `frame_max` bytes could not fit.
    pub fn spare(&mut self, frame_max: u32) -> &mut [u8] {
        let want = (frame_max as usize).max(MIN_READ_BYTES) + MIN_READ_BYTES;
        if self.data.len() < want {
            self.data.resize(want, 0);
        }
        if self.data.len() - self.end < MIN_READ_BYTES {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes read into [`Self::spare`] as received.
    pub fn advance(&mut self, n: usize) {
        self.end += n;
    }

    /// Reads once; 0 means end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        frame_max: u32,
    ) -> std::io::Result<usize> {
        let n = r.read(self.spare(frame_max)).await?;
        self.advance(n);
        Ok(n)
    }
}

/// A connection with channel 1 open.
#[derive(Debug)]
pub struct RawConn {
    pub stream: TcpStream,
    pub buf: ReadBuf,
    pub parser: Inbound,
    /// Negotiated: the largest frame either side may send, envelope included.
    pub frame_max: u32,
    out: Vec<u8>,
}

impl RawConn {
    /// Connects, authenticates with PLAIN, accepts the server's frame_max and channel_max,
    /// turns heartbeats off, opens the URI's vhost and channel 1.
    pub async fn open(uri: &str, name: &str) -> anyhow::Result<Self> {
        let parsed =
            AMQPUri::from_str(uri).map_err(|e| anyhow!("invalid AMQP URI {uri:?}: {e}"))?;
        let host = parsed
            .authority
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::time::timeout(
            STEP_TIMEOUT,
            TcpStream::connect((host, parsed.authority.port)),
        )
        .await
        .map_err(|_| anyhow!("connecting to {host}:{}: timed out", parsed.authority.port))?
        .with_context(|| format!("connecting to {host}:{}", parsed.authority.port))?;
        stream.set_nodelay(true)?;
        let mut conn = Self {
            stream,
            buf: ReadBuf::new(),
            parser: Inbound::new(),
            frame_max: 4096,
            out: Vec::new(),
        };
        tokio::time::timeout(STEP_TIMEOUT * 3, conn.handshake(&parsed, name))
            .await
            .map_err(|_| anyhow!("AMQP handshake with {uri}: timed out"))?
            .with_context(|| format!("AMQP handshake with {uri}"))?;
        Ok(conn)
    }

    async fn handshake(&mut self, uri: &AMQPUri, name: &str) -> anyhow::Result<()> {
        let v = ProtocolVersion::amqp_0_9_1();
        self.stream
            .write_all(&[b'A', b'M', b'Q', b'P', 0, v.major, v.minor, v.revision])
            .await?;
        let start = match self.recv_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
            (ch, other) => bail!("expected connection.start, got {other:?} on channel {ch}"),
        };
        let plain = SASLMechanism::Plain.to_string();
        if !start
            .mechanisms
            .to_string()
            .split_whitespace()
            .any(|m| m == plain)
        {
            bail!(
                "the broker does not offer {plain} (offers {})",
                start.mechanisms
            );
        }
        let credentials = Credentials::new(
            uri.authority.userinfo.username.as_str().into(),
            uri.authority.userinfo.password.as_str().into(),
        );
        let mut props = FieldTable::default();
        props.insert(
            ShortString::from("product"),
            AMQPValue::LongString(LongString::from("bourse-perf (raw)")),
        );
        props.insert(
            ShortString::from("connection_name"),
            AMQPValue::LongString(LongString::from(name)),
        );
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: plain.as_str().into(),
                response: credentials.sasl_auth_string(SASLMechanism::Plain),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match self.recv_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            (ch, other) => bail!("expected connection.tune, got {other:?} on channel {ch}"),
        };
        self.frame_max = match tune.frame_max {
            0 => DEFAULT_FRAME_MAX,
            n => n,
        };
        self.parser.set_frame_max(self.frame_max);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: self.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        self.call(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
            |m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))),
        )
        .await
        .context("connection.open")?;
        self.call(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            |m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
        )
        .await
        .context("channel.open")?;
        Ok(())
    }

    /// The socket, the buffered bytes not yet parsed, and the parser with its content state.
    pub fn into_parts(self) -> (TcpStream, ReadBuf, Inbound) {
        (self.stream, self.buf, self.parser)
    }

    /// Writes one method frame.
    pub async fn send(&mut self, channel: u16, method: AMQPClass) -> anyhow::Result<()> {
        self.out.clear();
        encode_method(&mut self.out, channel, method)?;
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Sends a method and waits (bounded) for the reply `is_reply` accepts.
    pub async fn call(
        &mut self,
        channel: u16,
        method: AMQPClass,
        is_reply: impl Fn(&AMQPClass) -> bool,
    ) -> anyhow::Result<AMQPClass> {
        self.send(channel, method).await?;
        tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                let (_, m) = self.recv_method().await?;
                if is_reply(&m) {
                    return Ok(m);
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no reply within {STEP_TIMEOUT:?}"))?
    }

    /// The next method from the broker, one frame at a time so that whatever follows (e.g. the
    /// first deliveries after basic.consume-ok) stays in the buffer. A close is an error;
    /// heartbeats are skipped; a delivery here is unexpected.
    pub async fn recv_method(&mut self) -> anyhow::Result<(u16, AMQPClass)> {
        loop {
            match self.parser.next(self.buf.filled())? {
                Step::NeedMore => {
                    if self.buf.fill(&mut self.stream, self.frame_max).await? == 0 {
                        bail!("the broker closed the connection");
                    }
                }
                Step::Frame { used, event } => {
                    self.buf.consume(used);
                    match event {
                        Some(Event::Method(ch, m)) => {
                            if let Some(why) = describe_close(&m) {
                                bail!(why);
                            }
                            return Ok((ch, m));
                        }
                        Some(Event::Delivery { delivery_tag, .. }) => {
                            bail!("unexpected delivery {delivery_tag} during set-up")
                        }
                        Some(Event::Heartbeat) | None => {}
                    }
                }
            }
        }
    }

    /// Sends connection.close and waits up to a second for close-ok, discarding anything else
    /// (deliveries still in flight). Errors are ignored: the socket is dropped either way.
    pub async fn close(mut self) {
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "OK".into(),
            class_id: 0,
            method_id: 0,
        }));
        if self.send(0, close).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let used = match self.parser.next(self.buf.filled()) {
                    Ok(Step::Frame { used, event }) => {
                        if let Some(Event::Method(_, m)) = event
                            && (matches!(
                                m,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                            ) || describe_close(&m).is_some())
                        {
                            return;
                        }
                        used
                    }
                    Ok(Step::NeedMore) => {
                        match self.buf.fill(&mut self.stream, self.frame_max).await {
                            Ok(n) if n > 0 => 0,
                            _ => return,
                        }
                    }
                    Err(_) => return,
                };
                self.buf.consume(used);
            }
        })
        .await;
    }
}
