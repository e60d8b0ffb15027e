//! `connection`: hostile bytes on a real TCP connection to an in-process broker, which must go
//! on serving other clients.
//!
//! One broker per process ([`broker`]: 127.0.0.1:0, a temporary data directory, no plugin
//! directory), started on its own tokio runtime the first time an input runs. For each input a
//! fresh connection sends the protocol header, then the valid handshake prefix chosen by the
//! first byte ([`Stage`]), then the rest of the input verbatim; it half-closes and reads what
//! the broker answers until the broker closes (bounded by [`DRAIN`]). Then a second client must
//! complete the handshake, open a channel and get a queue.declare-ok within [`LIVENESS`], and no
//! broker task may have panicked. A stack overflow or abort in the broker is a crash of the
//! fuzzing process itself.
//!
//! Clients use blocking std sockets with read and write timeouts, so nothing here waits on the
//! broker's runtime.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel, connection, queue};
use amq_protocol::types::{FieldTable, LongString};
use bourse::protocol::PROTOCOL_HEADER;
use bourse::{Broker, BrokerHandle, Config};

/// How long the fuzzed connection's answers are read before giving up on the broker closing.
const DRAIN: Duration = Duration::from_secs(1);
/// How long the second client may take for the whole handshake and queue.declare round trip.
const LIVENESS: Duration = Duration::from_secs(5);

/// How far the fuzzed connection gets with valid frames before the input's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// After the protocol header and connection.start: the input starts at start-ok.
    Start,
    /// After start-ok and connection.tune: the input starts at tune-ok.
    Tune,
    /// After tune-ok: the input starts at connection.open.
    Tuned,
    /// After connection.open-ok: logged in, no channel.
    Open,
    /// After channel.open-ok on channel 1.
    Channel,
}

impl Stage {
    /// The stage the first input byte picks.
    pub fn from_byte(byte: u8) -> Self {
        match byte % 5 {
            0 => Stage::Start,
            1 => Stage::Tune,
            2 => Stage::Tuned,
            3 => Stage::Open,
            _ => Stage::Channel,
        }
    }
}

struct Fixture {
    _runtime: tokio::runtime::Runtime,
    _handle: BrokerHandle,
    addr: SocketAddr,
}

/// Panics seen anywhere in the process since the broker started (broker tasks included: tokio
/// would otherwise swallow a connection task's panic).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The process's broker, started on first use.
fn broker() -> SocketAddr {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICS.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }));
            let data_dir = std::env::temp_dir().join(format!("bourse-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data_dir);
            std::fs::create_dir_all(&data_dir).expect("broker data dir");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let config = Config {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                data_dir,
                plugin_dir: None,
                // Below libFuzzer's 2 GB RSS limit: inputs that publish into queues they
                // declared get blocked by the memory alarm instead of growing the process.
                memory_high_watermark_bytes: Some(768 << 20),
                ..Config::default()
            };
            let handle = runtime
                .block_on(Broker::start(config))
                .expect("broker starts");
            let addr = handle.local_addr();
            Fixture {
                _runtime: runtime,
                _handle: handle,
                addr,
            }
        })
        .addr
}

/// The target's body.
pub fn run(data: &[u8]) {
    let Some((&stage, input)) = data.split_first() else {
        return;
    };
    let addr = broker();
    let stage = Stage::from_byte(stage);
    if let Some(mut client) = Client::connect(addr, DRAIN)
        && client.handshake(stage).is_some()
    {
        client.hostile(input);
    }
    let served = Client::connect(addr, LIVENESS).and_then(|mut c| c.declare_round_trip());
    assert!(
        served.is_some(),
        "the broker stopped serving a second client after {stage:?} + {} input bytes",
        input.len()
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a broker task panicked");
}

/// A blocking AMQP client speaking through amq-protocol's codecs.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Client {
    fn connect(addr: SocketAddr, limit: Duration) -> Option<Self> {
        let stream = TcpStream::connect_timeout(&addr, limit).ok()?;
        stream.set_nodelay(true).ok()?;
        stream.set_write_timeout(Some(limit)).ok()?;
        Some(Self {
            stream,
            buf: Vec::new(),
            deadline: Instant::now() + limit,
        })
    }

    /// Sends the protocol header and the valid frames up to `stage`, reading the answers.
    fn handshake(&mut self, stage: Stage) -> Option<()> {
        self.stream.write_all(PROTOCOL_HEADER).ok()?;
        let AMQPClass::Connection(connection::AMQPMethod::Start(_)) = self.recv_method()? else {
            return None;
        };
        if stage == Stage::Start {
            return Some(());
        }
        self.send(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            },
        )))?;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = self.recv_method()? else {
            return None;
        };
        if stage == Stage::Tune {
            return Some(());
        }
        self.send(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            },
        )))?;
        if stage == Stage::Tuned {
            return Some(());
        }
        self.send(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: "/".into(),
            },
        )))?;
        let AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) = self.recv_method()? else {
            return None;
        };
        if stage == Stage::Open {
            return Some(());
        }
        self.send_on(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        let AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) = self.recv_method()? else {
            return None;
        };
        Some(())
    }

    /// Writes the input, half-closes, and reads until the broker closes or [`DRAIN`] passes.
    fn hostile(&mut self, input: &[u8]) {
        // The broker may close first (a connection error): a failed write is expected.
        let _ = self.stream.write_all(input);
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + DRAIN;
        let mut chunk = [0u8; 16 * 1024];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The liveness probe: handshake, channel.open, queue.declare (server-named, exclusive),
    /// connection.close.
    fn declare_round_trip(&mut self) -> Option<()> {
        self.handshake(Stage::Channel)?;
        self.send_on(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "".into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: true,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )?;
        let AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) = self.recv_method()? else {
            return None;
        };
        self.send(AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )))?;
        let AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) = self.recv_method()? else {
            return None;
        };
        Some(())
    }

    fn send(&mut self, method: AMQPClass) -> Option<()> {
        self.send_on(0, method)
    }

    fn send_on(&mut self, channel: u16, method: AMQPClass) -> Option<()> {
        let frame = AMQPFrame::Method(channel, method);
        let bytes = gen_frame(&frame)(WriteContext::from(Vec::new()))
            .ok()?
            .into_inner()
            .0;
        self.stream.write_all(&bytes).ok()
    }

    /// The next method frame (heartbeats skipped), or `None` on close, garbage or the deadline.
    fn recv_method(&mut self) -> Option<AMQPClass> {
        loop {
            match parse_frame(self.buf.as_slice()) {
                Ok((rest, frame)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    match frame {
                        AMQPFrame::Method(_, method) => return Some(method),
                        AMQPFrame::Heartbeat => continue,
                        _ => return None,
                    }
                }
                Err(amq_protocol::types::parsing::ParserError::Incomplete(_)) => {}
                Err(_) => return None,
            }
            let left = self.deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
}
