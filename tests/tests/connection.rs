//! Connection-level behaviour over real TCP: protocol header, connection.start, SASL, tuning,
//! heartbeats, connection and channel lifecycle, and the reply codes for malformed input.
//!
//! RabbitMQ 3.10 is the reference; where its reply code is not the obvious one the test names
//! the `rabbit_reader`/`rabbit_channel` clause it follows.

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use bourse_tests::TestBroker;
use bourse_tests::raw::{
    FRAME_END, Handshake, PROTOCOL_HEADER, RawClient, RecvError, basic_publish, channel_open,
    encode_frame, raw_frame, reply_code, within,
};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ChannelFlowOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A queue.declare for `name` with default flags.
fn queue_declare(name: &str) -> AMQPClass {
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

/// A content header for a basic-class body of `size` bytes.
fn content_header(channel: u16, size: u64) -> AMQPFrame {
    AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default(),
        },
    )
}

/// Connects with lapin to `url`, bounded in time.
async fn lapin_connect(url: &str) -> Result<Connection, lapin::Error> {
    within(Connection::connect(url, ConnectionProperties::default())).await
}

/// Proves a channel still works: declares a fresh exclusive queue and reads its declare-ok.
async fn assert_channel_works(ch: &Channel) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("healthy-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let q = within(ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("queue.declare on a healthy channel");
    assert_eq!(q.name().as_str(), name);
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
}

/// A lapin connection opened before a misbehaving client, to check it is not disturbed.
struct Bystander {
    _conn: Connection,
    ch: Channel,
}

impl Bystander {
    async fn new(broker: &TestBroker) -> Self {
        let (conn, ch) = within(broker.channel()).await;
        Self { _conn: conn, ch }
    }

    /// The bystander's own channel still works and a brand-new connection can be opened.
    async fn assert_unaffected(&self, broker: &TestBroker) {
        assert_channel_works(&self.ch).await;
        let (_conn, ch) = within(broker.channel()).await;
        assert_channel_works(&ch).await;
    }
}

/// Opens a raw connection with channel 1 open, ready to misbehave.
async fn raw_with_channel(broker: &TestBroker) -> RawClient {
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    raw
}

/// Keeps a raw connection busy for `dur`: sends a heartbeat every `send_every` (if any) and counts
/// the heartbeat frames received. Panics if the broker closes the connection.
async fn pump(raw: &mut RawClient, dur: Duration, send_every: Option<Duration>) -> usize {
    let deadline = Instant::now() + dur;
    let mut next_send = send_every.map(|d| Instant::now() + d);
    let mut received = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return received;
        }
        if let (Some(at), Some(every)) = (next_send, send_every)
            && now >= at
        {
            raw.send_heartbeat().await.expect("send heartbeat");
            next_send = Some(now + every);
            continue;
        }
        let wake = next_send.map_or(deadline, |at| at.min(deadline));
        match raw.recv_frame_within(wake - now).await {
            Ok(AMQPFrame::Heartbeat) => received += 1,
            Ok(_) | Err(RecvError::Timeout) => {}
            Err(e) => panic!("connection lost while exchanging heartbeats: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol header

#[tokio::test]
async fn wrong_protocol_version_gets_server_header_and_close() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x02")
        .await
        .expect("send header");
    let reply = raw.recv_bytes(8).await.expect("server protocol header");
    assert_eq!(
        reply, PROTOCOL_HEADER,
        "server answers with the version it supports"
    );
    assert!(
        raw.wait_closed(Duration::from_secs(5)).await,
        "socket closed after refusing"
    );
}

#[tokio::test]
async fn http_request_gets_server_header_and_close() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send_bytes(b"HTTP/1.1").await.expect("send header");
    let reply = raw.recv_bytes(8).await.expect("server protocol header");
    assert_eq!(reply, PROTOCOL_HEADER);
    assert!(
        raw.wait_closed(Duration::from_secs(5)).await,
        "socket closed after refusing"
    );
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

// ---------------------------------------------------------------------------------------------
// connection.start

#[tokio::test]
async fn connection_start_advertises_server_properties() {
    let broker = TestBroker::start().await;
    let (_raw, start) = RawClient::connect_until_start(broker.addr()).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));

    let props = start.server_properties.inner();
    for key in ["product", "version", "platform"] {
        match props.get(key) {
            Some(AMQPValue::LongString(s)) => assert!(!s.is_empty(), "{key} is empty"),
            other => panic!("server property {key} should be a long string, got {other:?}"),
        }
    }
    let caps = match props.get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.inner().clone(),
        other => panic!("capabilities should be a table, got {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }

    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN"), "mechanisms {mechanisms:?}");
    assert!(
        mechanisms.contains(&"AMQPLAIN"),
        "mechanisms {mechanisms:?}"
    );
    let locales = String::from_utf8_lossy(start.locales.as_bytes()).into_owned();
    assert!(
        locales.split(' ').any(|l| l == "en_US"),
        "locales {locales:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SASL

#[tokio::test]
async fn plain_login_succeeds() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.url())
        .await
        .expect("PLAIN login as guest");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;
}

#[tokio::test]
async fn amqplain_login_succeeds() {
    let broker = TestBroker::start().await;
    let url = format!("{}?auth_mechanism=amqplain", broker.url());
    let conn = lapin_connect(&url).await.expect("AMQPLAIN login as guest");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;

    // The same through the raw client, which encodes the AMQPLAIN table itself.
    let hs = Handshake {
        mechanism: "AMQPLAIN".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    raw.open_channel(1).await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_access_refused() {
    let broker = TestBroker::start().await;

    // Raw client: it advertises authentication_failure_close, so RabbitMQ sends
    // connection.close 403 before closing (rabbit_reader:auth_fail).
    let hs = Handshake {
        password: "wrong".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    raw.send_start_ok(&hs).await;
    raw.expect_connection_close_code(403).await;

    // lapin advertises the same capability.
    let url = broker.url().replace("guest:guest@", "guest:wrong@");
    match lapin_connect(&url).await {
        Ok(_) => panic!("login with a wrong password succeeded"),
        Err(e) => assert_eq!(reply_code(&e), Some(403), "error: {e}"),
    }
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

#[tokio::test]
async fn unknown_user_is_refused_with_access_refused() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        user: "nobody".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    raw.send_start_ok(&hs).await;
    raw.expect_connection_close_code(403).await;
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_not_allowed() {
    let broker = TestBroker::start().await;

    let hs = Handshake {
        vhost: "no-such-vhost".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::start_and_tune(broker.addr(), &hs).await;
    raw.send_connection_open(&hs.vhost).await;
    raw.expect_connection_close_code(530).await;

    let url = broker.url().replace("/%2f", "/no-such-vhost");
    match lapin_connect(&url).await {
        Ok(_) => panic!("connection.open to an unknown vhost succeeded"),
        Err(e) => assert_eq!(reply_code(&e), Some(530), "error: {e}"),
    }
}

#[tokio::test]
async fn configured_user_logs_in() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.users = vec![("alice".to_string(), "s3cret".to_string())];
    })
    .await;
    let good = broker.url().replace("guest:guest@", "alice:s3cret@");
    let conn = lapin_connect(&good).await.expect("configured user logs in");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;

    let bad = broker.url().replace("guest:guest@", "alice:guest@");
    match lapin_connect(&bad).await {
        Ok(_) => panic!("configured user logged in with the wrong password"),
        Err(e) => assert_eq!(reply_code(&e), Some(403), "error: {e}"),
    }
}

#[tokio::test]
async fn guest_loopback_only_still_allows_loopback() {
    let broker = TestBroker::start_with(|cfg| cfg.guest_loopback_only = true).await;
    let conn = lapin_connect(broker.url())
        .await
        .expect("guest from 127.0.0.1");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;
}

// ---------------------------------------------------------------------------------------------
// Tuning

#[tokio::test]
async fn tune_offers_rabbitmq_defaults() {
    let broker = TestBroker::start().await;
    let (_raw, negotiated) = RawClient::open(broker.addr()).await;
    let tune = negotiated.tune;
    assert_eq!(tune.channel_max, 2047, "channel_max");
    assert_eq!(tune.frame_max, 131_072, "frame_max");
    assert_eq!(tune.heartbeat, 60, "heartbeat");
}

#[tokio::test]
async fn tune_offers_configured_limits() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.frame_max_bytes = 65_536;
        cfg.channel_max = 100;
        cfg.heartbeat_secs = 10;
    })
    .await;
    let (_raw, negotiated) = RawClient::open(broker.addr()).await;
    let tune = negotiated.tune;
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (100, 65_536, 10)
    );
}

#[tokio::test]
async fn frame_max_below_minimum_is_refused_with_not_allowed() {
    let broker = TestBroker::start().await;
    // rabbit_reader:validate_negotiated_integer_value -> not_allowed (530) below 4096.
    let hs = Handshake {
        frame_max: Some(1024),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::start_and_tune(broker.addr(), &hs).await;
    // RabbitMQ refuses at tune-ok; the open may already meet a closing socket.
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    let _ = raw
        .send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
        .await;
    raw.expect_connection_close_code(530).await;
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

#[tokio::test]
async fn frame_max_at_minimum_is_accepted() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        frame_max: Some(4096),
        ..Handshake::default()
    };
    let (mut raw, negotiated) = RawClient::open_with(broker.addr(), hs).await;
    assert_eq!(negotiated.tune_ok.frame_max, 4096);
    raw.open_channel(1).await;
}

#[tokio::test]
async fn channel_beyond_channel_max_is_refused_with_not_allowed() {
    let broker = TestBroker::start_with(|cfg| cfg.channel_max = 2).await;
    let (mut raw, negotiated) = RawClient::open(broker.addr()).await;
    assert_eq!(negotiated.tune.channel_max, 2);
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    // rabbit_reader:create_channel -> not_allowed once channel_max channels are open.
    raw.send_method(3, channel_open())
        .await
        .expect("send channel.open 3");
    raw.expect_connection_close_code(530).await;
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

// ---------------------------------------------------------------------------------------------
// Heartbeats

#[tokio::test]
async fn broker_sends_heartbeats_at_negotiated_interval() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        heartbeat: Some(1),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    let received = pump(
        &mut raw,
        Duration::from_secs(3),
        Some(Duration::from_millis(400)),
    )
    .await;
    assert!(
        received >= 2,
        "expected at least 2 heartbeats in 3 s at 1 s, got {received}"
    );
}

#[tokio::test]
async fn silent_client_is_disconnected_after_missed_heartbeats() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        heartbeat: Some(1),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    let silent_since = Instant::now();
    let closed = raw.wait_closed(Duration::from_millis(4500)).await;
    let after = silent_since.elapsed();
    assert!(
        closed,
        "broker kept a silent client connected for 4.5 s with heartbeat 1 s"
    );
    assert!(
        after >= Duration::from_millis(1000),
        "broker disconnected after {after:?}, before a single heartbeat interval had passed"
    );
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

#[tokio::test]
async fn client_sending_heartbeats_stays_connected() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        heartbeat: Some(1),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    pump(
        &mut raw,
        Duration::from_secs(4),
        Some(Duration::from_millis(400)),
    )
    .await;
    raw.open_channel(1).await;
}

// ---------------------------------------------------------------------------------------------
// Connection and channel lifecycle

#[tokio::test]
async fn connection_close_is_answered_with_close_ok() {
    let broker = TestBroker::start().await;

    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    let close = connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(close)),
    )
    .await
    .expect("send connection.close");
    match raw.recv_method().await.expect("connection.close-ok") {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    assert!(
        raw.wait_closed(Duration::from_secs(5)).await,
        "socket closed after close-ok"
    );

    let conn = lapin_connect(broker.url()).await.expect("connects");
    within(conn.close(200, "bye".into()))
        .await
        .expect("lapin close handshake");
    assert!(
        !conn.status().connected(),
        "lapin sees the connection closed"
    );
}

#[tokio::test]
async fn channel_open_close_and_reopen() {
    let broker = TestBroker::start().await;

    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    let close = channel::Close {
        reply_code: 200,
        reply_text: "done".into(),
        class_id: 0,
        method_id: 0,
    };
    raw.send_method(1, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
        .await
        .expect("send channel.close");
    match raw.recv_method().await.expect("channel.close-ok") {
        (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected channel.close-ok on 1, got {other:?}"),
    }
    // The number is free again.
    raw.open_channel(1).await;

    let conn = lapin_connect(broker.url()).await.expect("connects");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;
    within(ch.close(200, "done".into()))
        .await
        .expect("channel close handshake");
    assert!(!ch.status().connected(), "lapin sees the channel closed");
    let again = within(conn.create_channel())
        .await
        .expect("another channel");
    assert_channel_works(&again).await;
}

#[tokio::test]
async fn channel_close_from_broker_is_acknowledged_and_channel_reusable() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    let passive = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "no-such-queue".into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }));
    raw.send_method(1, passive)
        .await
        .expect("send passive declare");
    let reason = raw.expect_channel_close(1).await;
    assert_eq!(reason.code, 404, "{reason:?}");
    assert_eq!(
        (reason.class_id, reason.method_id),
        (50, 10),
        "failing method is queue.declare"
    );
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await
    .expect("send channel.close-ok");
    raw.open_channel(1).await;
}

#[tokio::test]
async fn channel_flow_active_is_acknowledged() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = within(broker.channel()).await;
    let active = within(ch.channel_flow(ChannelFlowOptions { active: true }))
        .await
        .expect("channel.flow active=true");
    assert!(active, "flow-ok reports active");
    assert_channel_works(&ch).await;
}

#[tokio::test]
async fn channel_flow_inactive_is_not_implemented() {
    // rabbit_channel: channel.flow{active = false} -> not_implemented (540), a connection error.
    let broker = TestBroker::start().await;
    let mut raw = raw_with_channel(&broker).await;
    let flow = AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false }));
    raw.send_method(1, flow).await.expect("send channel.flow");
    raw.expect_connection_close_code(540).await;
}

#[tokio::test]
async fn many_channels_on_one_connection() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.url()).await.expect("connects");
    let mut channels = Vec::new();
    for i in 0..100 {
        let ch = within(conn.create_channel())
            .await
            .unwrap_or_else(|e| panic!("channel {i}: {e}"));
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .expect("confirm.select");
        let name = format!("many-{i}");
        within(ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap_or_else(|e| panic!("declare on channel {i}: {e}"));
        let confirm = within(ch.basic_publish(
            "".into(),
            name.as_str().into(),
            BasicPublishOptions::default(),
            name.as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .expect("publish");
        assert!(
            within(confirm).await.expect("confirm").is_ack(),
            "publish on channel {i} acked"
        );
        channels.push((ch, name));
    }
    let ids: std::collections::HashSet<u16> = channels.iter().map(|(ch, _)| ch.id()).collect();
    assert_eq!(ids.len(), 100, "distinct channel numbers");
    for (ch, name) in &channels {
        let got = within(ch.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("message for {name} missing"));
        assert_eq!(got.delivery.data, name.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed input: each is a connection error; other connections are untouched.

#[tokio::test]
async fn bad_frame_end_is_frame_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    let mut frame = encode_frame(&AMQPFrame::Method(1, channel_open()));
    *frame.last_mut().expect("non-empty frame") = 0x00;
    raw.send_bytes(&frame).await.expect("send");
    raw.expect_connection_close_code(501).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn frame_larger_than_frame_max_is_frame_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let hs = Handshake {
        frame_max: Some(4096),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    raw.open_channel(1).await;
    // A well-formed publish whose single body frame is larger than the negotiated frame_max.
    let body = vec![b'x'; 10_000];
    let mut bytes = encode_frame(&AMQPFrame::Method(1, basic_publish("", "nowhere")));
    bytes.extend(encode_frame(&content_header(1, body.len() as u64)));
    bytes.extend(encode_frame(&AMQPFrame::Body(1, body)));
    let _ = raw.send_bytes(&bytes).await; // the broker may stop reading mid-frame
    raw.expect_connection_close_code(501).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn undecodable_method_arguments_are_frame_error() {
    // RabbitMQ: the generated decode_method_fields falls through to rabbit_misc:frame_error,
    // i.e. 501 FRAME_ERROR ("cannot decode ..."), not 502.
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    // queue.declare (50, 10): ticket, then a short string claiming 200 bytes but holding 1.
    let payload = [0, 50, 0, 10, 0, 0, 200, b'q'];
    raw.send_bytes(&raw_frame(1, 1, &payload, FRAME_END))
        .await
        .expect("send");
    raw.expect_connection_close_code(501).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn unknown_frame_type_is_frame_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.send_bytes(&raw_frame(0x42, 0, b"junk", FRAME_END))
        .await
        .expect("send");
    raw.expect_connection_close_code(501).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn method_on_unopened_channel_is_channel_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;

    // Never opened.
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.send_method(5, queue_declare("q")).await.expect("send");
    raw.expect_connection_close_code(504).await;

    // Opened, then closed.
    let mut raw = raw_with_channel(&broker).await;
    let close = channel::Close {
        reply_code: 200,
        reply_text: "done".into(),
        class_id: 0,
        method_id: 0,
    };
    raw.send_method(1, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
        .await
        .expect("send");
    match raw.recv_method().await.expect("channel.close-ok") {
        (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected channel.close-ok, got {other:?}"),
    }
    raw.send_method(1, queue_declare("q")).await.expect("send");
    raw.expect_connection_close_code(504).await;

    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn second_channel_open_is_channel_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send_method(1, channel_open()).await.expect("send");
    raw.expect_connection_close_code(504).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn body_without_publish_is_unexpected_frame() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send_frame(&AMQPFrame::Body(1, b"hello".to_vec()))
        .await
        .expect("send");
    raw.expect_connection_close_code(505).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn header_without_publish_is_unexpected_frame() {
    let broker = TestBroker::start().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send_frame(&content_header(1, 5)).await.expect("send");
    raw.expect_connection_close_code(505).await;
}

#[tokio::test]
async fn method_while_header_pending_is_unexpected_frame() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send_method(1, basic_publish("", "q"))
        .await
        .expect("send publish");
    raw.send_method(1, queue_declare("q"))
        .await
        .expect("send declare");
    raw.expect_connection_close_code(505).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn method_while_body_pending_is_unexpected_frame() {
    let broker = TestBroker::start().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send_method(1, basic_publish("", "q"))
        .await
        .expect("send publish");
    raw.send_frame(&content_header(1, 10))
        .await
        .expect("send header");
    raw.send_frame(&AMQPFrame::Body(1, b"12345".to_vec()))
        .await
        .expect("send half the body");
    raw.send_method(1, queue_declare("q"))
        .await
        .expect("send declare");
    raw.expect_connection_close_code(505).await;
}

#[tokio::test]
async fn heartbeat_on_nonzero_channel_is_unexpected_frame() {
    // rabbit_reader:handle_frame: a heartbeat on channel N > 0 goes to unexpected_frame -> 505.
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send_frame(&AMQPFrame::InvalidHeartbeat(1))
        .await
        .expect("send");
    raw.expect_connection_close_code(505).await;
    bystander.assert_unaffected(&broker).await;
}
