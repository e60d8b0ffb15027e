//! The memory high watermark over real TCP (docs/memory.md): while the alarm is on, a
//! connection that has published stops being read, and is told so with connection.blocked /
//! connection.unblocked if it announced the capability; connections that only consume keep
//! working so queues can drain; what was published while blocked is routed once the alarm
//! clears.
//!
//! The alarm is driven by changing the watermark at run time (1 byte: on; 2^60 bytes: off)
//! through the in-process broker's handle, so these tests are skipped when
//! `BOURSE_TEST_AMQP_URL` points them at another broker.

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, connection, queue};
use amq_protocol::types::FieldTable;
use bourse::config::{Cli, ConfigError};
use bourse::{BrokerHandle, Config};
use bourse_tests::raw::{Handshake, RawClient, RecvError, within};
use bourse_tests::{TempDir, TestBroker, bounded, eventually, uniq};
use clap::Parser;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::{Channel, Consumer};

/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(30);
/// How long a blocked connection must stay silent to count as "not reading": it answers a
/// basic.get or queue.declare in well under a millisecond when it reads.
const QUIET: Duration = Duration::from_millis(400);
/// A watermark no test process reaches.
const HUGE: u64 = 1 << 60;

/// A broker whose watermark the test controls, starting far above any real use; `None` when
/// the tests are pointed at another broker.
async fn start() -> Option<TestBroker> {
    let broker = TestBroker::start_with(|c| c.memory_high_watermark_bytes = Some(HUGE)).await;
    if broker.handle().is_none() {
        eprintln!("skipped: the memory alarm is driven through the in-process broker");
        return None;
    }
    Some(broker)
}

fn handle(broker: &TestBroker) -> &BrokerHandle {
    broker.handle().expect("in-process broker")
}

/// Sets the alarm (watermark 1 byte) and checks it took effect before returning.
fn raise_alarm(broker: &TestBroker) {
    handle(broker).set_memory_high_watermark_bytes(1);
    assert!(
        handle(broker).memory_alarm(),
        "alarm on at a 1-byte watermark"
    );
}

/// Clears the alarm and checks it took effect before returning.
fn clear_alarm(broker: &TestBroker) {
    handle(broker).set_memory_high_watermark_bytes(HUGE);
    assert!(
        !handle(broker).memory_alarm(),
        "alarm off at a 2^60-byte watermark"
    );
}

/// A raw client with channel 1 open, announcing `connection.blocked` or not.
async fn raw_publisher(broker: &TestBroker, hs: Handshake) -> RawClient {
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    raw.open_channel(1).await;
    raw
}

fn capable() -> Handshake {
    Handshake {
        connection_blocked: true,
        ..Handshake::default()
    }
}

fn queue_declare(name: &str, passive: bool) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn basic_get(queue: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: queue.into(),
        no_ack: true,
    }))
}

/// The message count of the next queue.declare-ok on channel 1.
async fn recv_declare_ok(raw: &mut RawClient) -> u32 {
    match raw.recv_method().await.expect("queue.declare-ok") {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => ok.message_count,
        other => panic!("expected queue.declare-ok on channel 1, got {other:?}"),
    }
}

/// Declares `name` (or checks it passively) and returns its ready-message count.
async fn declare(raw: &mut RawClient, name: &str, passive: bool) -> u32 {
    raw.send_method(1, queue_declare(name, passive))
        .await
        .expect("send queue.declare");
    recv_declare_ok(raw).await
}

/// The answer to a basic.get on channel 1: the body, or `None` for get-empty.
async fn recv_get(raw: &mut RawClient) -> Option<Vec<u8>> {
    let size = match raw.recv_method().await.expect("basic.get-ok or get-empty") {
        (1, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => return None,
        (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {
            match raw.recv_frame().await.expect("content header") {
                AMQPFrame::Header(1, header) => header.body_size as usize,
                other => panic!("expected a content header, got {other:?}"),
            }
        }
        other => panic!("expected basic.get-ok or get-empty, got {other:?}"),
    };
    let mut body = Vec::new();
    while body.len() < size {
        match raw.recv_frame().await.expect("content body") {
            AMQPFrame::Body(1, chunk) => body.extend(chunk),
            other => panic!("expected a content body, got {other:?}"),
        }
    }
    Some(body)
}

async fn get(raw: &mut RawClient, queue: &str) -> Option<Vec<u8>> {
    raw.send_method(1, basic_get(queue))
        .await
        .expect("send basic.get");
    recv_get(raw).await
}

async fn expect_blocked(raw: &mut RawClient) {
    match raw.recv_method().await.expect("connection.blocked") {
        (0, AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked))) => {
            assert_eq!(blocked.reason.as_str(), "low on memory")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
}

async fn expect_unblocked(raw: &mut RawClient) {
    match raw.recv_method().await.expect("connection.unblocked") {
        (0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
}

/// Asserts the broker sends nothing but heartbeats for [`QUIET`].
async fn expect_silence(raw: &mut RawClient, why: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.recv_frame_within(left).await {
            Err(RecvError::Timeout) => return,
            Ok(AMQPFrame::Heartbeat) => continue,
            Ok(frame) => panic!("{why}: expected no frame, got {frame:?}"),
            Err(error) => panic!("{why}: {error}"),
        }
    }
}

/// Ready messages of `queue`, asked over a lapin connection that never publishes.
async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("passive queue.declare")
    .message_count()
}

async fn next_body(consumer: &mut Consumer) -> Vec<u8> {
    let delivery = within(consumer.next())
        .await
        .expect("consumer stream open")
        .expect("delivery");
    within(delivery.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    delivery.data
}

// ---------------------------------------------------------------------------------------------
// (a) connection.blocked / connection.unblocked

#[tokio::test]
async fn publisher_is_told_blocked_then_unblocked_and_its_held_publish_is_routed_after() {
    bounded(TEST_LIMIT, async {
        let Some(broker) = start().await else { return };
        let mut raw = raw_publisher(&broker, capable()).await;
        let q = uniq("mem-blocked");
        declare(&mut raw, &q, false).await;
        raw.publish(1, "", &q, b"before").await.unwrap();
        assert_eq!(get(&mut raw, &q).await.as_deref(), Some(&b"before"[..]));

        raise_alarm(&broker);
        // Idle when the alarm sets, the connection is told at once (it has published).
        expect_blocked(&mut raw).await;
        // And the broker shows it blocked (the only connection so far).
        let states = || -> Vec<&'static str> {
            handle(&broker)
                .connections()
                .iter()
                .map(|c| c.state().as_str())
                .collect()
        };
        assert_eq!(states(), ["blocked"]);

        // Sent while blocked: not read, so neither routed nor answered; and no second
        // connection.blocked.
        raw.publish(1, "", &q, b"held").await.unwrap();
        raw.send_method(1, basic_get(&q)).await.unwrap();
        expect_silence(&mut raw, "blocked connection").await;
        let (_observer, ch) = broker.channel().await;
        assert_eq!(ready_count(&ch, &q).await, 0, "held publish not routed yet");

        clear_alarm(&broker);
        expect_unblocked(&mut raw).await;
        assert!(states().iter().all(|s| *s == "running"), "{:?}", states());
        // The held publish is read first, then the basic.get sent after it finds it.
        assert_eq!(recv_get(&mut raw).await.as_deref(), Some(&b"held"[..]));

        // A second alarm blocks (and tells) the connection again.
        raise_alarm(&broker);
        expect_blocked(&mut raw).await;
        clear_alarm(&broker);
        expect_unblocked(&mut raw).await;
        assert_eq!(get(&mut raw, &q).await, None);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// (b) consumers drain while publishers are blocked

#[tokio::test]
async fn consumer_only_connection_drains_the_queue_while_the_publisher_is_blocked() {
    bounded(TEST_LIMIT, async {
        let Some(broker) = start().await else { return };
        let mut publisher = raw_publisher(&broker, capable()).await;
        let q = uniq("mem-drain");
        declare(&mut publisher, &q, false).await;
        for body in [&b"m0"[..], b"m1", b"m2"] {
            publisher.publish(1, "", &q, body).await.unwrap();
        }
        assert_eq!(declare(&mut publisher, &q, true).await, 3);

        raise_alarm(&broker);
        expect_blocked(&mut publisher).await;
        publisher.publish(1, "", &q, b"held").await.unwrap();

        // A consumer connected during the alarm receives and acknowledges what was queued.
        let (_consumer_conn, ch) = broker.channel().await;
        let mut consumer = within(ch.basic_consume(
            q.as_str().into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("basic.consume");
        for expected in [&b"m0"[..], b"m1", b"m2"] {
            assert_eq!(next_body(&mut consumer).await, expected);
        }
        // The publish made while blocked is not routed as long as the alarm lasts.
        let more = tokio::time::timeout(QUIET, consumer.next()).await;
        assert!(more.is_err(), "delivered while blocked: {more:?}");
        assert!(handle(&broker).memory_alarm());

        clear_alarm(&broker);
        expect_unblocked(&mut publisher).await;
        assert_eq!(next_body(&mut consumer).await, b"held");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// (c) clients without the capability

#[tokio::test]
async fn client_without_the_capability_is_blocked_silently_and_resumes() {
    bounded(TEST_LIMIT, async {
        let Some(broker) = start().await else { return };
        let mut raw = raw_publisher(&broker, Handshake::default()).await;
        let q = uniq("mem-silent");
        declare(&mut raw, &q, false).await;
        raw.publish(1, "", &q, b"first").await.unwrap();
        assert_eq!(declare(&mut raw, &q, true).await, 1);

        raise_alarm(&broker);
        raw.publish(1, "", &q, b"held").await.unwrap();
        raw.send_method(1, queue_declare(&q, true)).await.unwrap();
        // Neither connection.blocked nor the declare-ok: the connection is not read.
        expect_silence(&mut raw, "blocked connection without the capability").await;
        let (_observer, ch) = broker.channel().await;
        assert_eq!(ready_count(&ch, &q).await, 1, "held publish not routed yet");

        clear_alarm(&broker);
        // The first frame is the answer (no connection.unblocked), counting the held publish.
        assert_eq!(recv_declare_ok(&mut raw).await, 2);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Heartbeats while blocked

/// The broker closes a connection silent for two heartbeat intervals, but not while it has
/// stopped reading it; its own heartbeats keep flowing.
#[tokio::test]
async fn blocked_connection_is_not_closed_for_missed_heartbeats() {
    bounded(TEST_LIMIT, async {
        let Some(broker) = start().await else { return };
        let hs = Handshake {
            heartbeat: Some(1),
            ..capable()
        };
        let mut raw = raw_publisher(&broker, hs).await;
        let q = uniq("mem-heartbeat");
        declare(&mut raw, &q, false).await;
        raw.publish(1, "", &q, b"m").await.unwrap();
        assert_eq!(declare(&mut raw, &q, true).await, 1);

        raise_alarm(&broker);
        expect_blocked(&mut raw).await;
        // Three of the broker's heartbeats, one a second, while the client sends nothing:
        // more than the two intervals after which a reading connection would be closed.
        let mut heartbeats = 0;
        while heartbeats < 3 {
            match raw.recv_frame().await {
                Ok(AMQPFrame::Heartbeat) => heartbeats += 1,
                other => panic!("expected heartbeats while blocked, got {other:?}"),
            }
        }

        clear_alarm(&broker);
        expect_unblocked(&mut raw).await;
        assert_eq!(
            declare(&mut raw, &q, true).await,
            1,
            "the connection still works"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// (d) configuration

/// Parses a TOML file and flags as the `bourse` binary does.
fn parse(toml: &str, flags: &[&str]) -> Result<Config, ConfigError> {
    let dir = TempDir::new();
    let path = dir.path.join("bourse.toml");
    std::fs::write(&path, toml).expect("write config");
    let path = path.to_string_lossy().into_owned();
    let mut argv = vec!["bourse", "--config", path.as_str()];
    argv.extend_from_slice(flags);
    Config::from_cli(Cli::try_parse_from(argv).expect("flags parse"))
}

/// A broker with the watermark keys of `config`.
async fn start_with_watermark(config: &Config) -> TestBroker {
    let (fraction, bytes) = (
        config.memory_high_watermark,
        config.memory_high_watermark_bytes,
    );
    TestBroker::start_with(|c| {
        c.memory_high_watermark = fraction;
        c.memory_high_watermark_bytes = bytes;
    })
    .await
}

#[tokio::test]
async fn watermark_bytes_from_the_config_file_set_the_alarm() {
    bounded(TEST_LIMIT, async {
        let config = parse("memory_high_watermark_bytes = 1\n", &[]).expect("valid config");
        assert_eq!(config.memory_high_watermark_bytes, Some(1));
        let broker = start_with_watermark(&config).await;
        let Some(handle) = broker.handle() else {
            return;
        };
        assert_eq!(handle.shared().memory.watermark_bytes(), 1);
        assert!(
            eventually(Duration::from_secs(5), || handle.memory_alarm()).await,
            "the sampler sets the alarm on its own"
        );
    })
    .await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn watermark_fraction_is_of_total_memory_and_the_flag_wins() {
    bounded(TEST_LIMIT, async {
        let config = parse(
            "memory_high_watermark = 0.5\n",
            &["--memory-high-watermark", "0.25"],
        )
        .expect("valid config");
        assert_eq!(config.memory_high_watermark, 0.25);
        assert_eq!(config.memory_high_watermark_bytes, None);
        let broker = start_with_watermark(&config).await;
        let Some(handle) = broker.handle() else {
            return;
        };
        let total = bourse::memory::total_memory_bytes().expect("MemTotal");
        assert_eq!(
            handle.shared().memory.watermark_bytes(),
            (total as f64 * 0.25) as u64
        );
        // Sampled at least once, and this test process is far below a quarter of memory.
        let memory = &handle.shared().memory;
        assert!(eventually(Duration::from_secs(5), || memory.rss_bytes().is_some()).await);
        assert!(!handle.memory_alarm());
    })
    .await;
}

#[tokio::test]
async fn invalid_watermarks_are_refused() {
    for (toml, flags) in [
        ("memory_high_watermark = 0.0\n", &[][..]),
        ("memory_high_watermark = 1.5\n", &[]),
        ("memory_high_watermark_bytes = 0\n", &[]),
        ("", &["--memory-high-watermark", "0"]),
        ("", &["--memory-high-watermark-bytes", "0"]),
    ] {
        match parse(toml, flags) {
            Err(ConfigError::Invalid(text)) => {
                assert!(
                    text.contains("memory_high_watermark"),
                    "{toml}{flags:?}: {text}"
                )
            }
            other => panic!("{toml}{flags:?}: expected Invalid, got {other:?}"),
        }
    }
    // A Config built in code is checked when the broker starts.
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        memory_high_watermark_bytes: Some(0),
        ..Config::default()
    };
    assert!(bourse::Broker::start(config).await.is_err());
}
