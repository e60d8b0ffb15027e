//! Deeply nested field tables, the input that used to abort the broker: amq-protocol's table
//! parser recursed once per level, so a `connection.start-ok` whose client-properties nested an
//! array 25,000 deep overflowed a worker's stack before the peer had logged in. Each test sends
//! such a table on one path where a peer can put a table and checks the broker answers with an
//! error and goes on serving another client.

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use bourse_tests::TestBroker;
use bourse_tests::connection::{Bystander, raw_with_channel};
use bourse_tests::raw::{
    FRAME_END, RawClient, basic_publish, encode_frame, nested_table, raw_frame, sasl_response,
};
use bourse_tests::wasm::{PluginBroker, declare};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};

/// The depth of the reported attack: about 150 KB of nesting, more than a frame may hold
/// before tune-ok.
const ATTACK_DEPTH: usize = 25_000;
/// As deep as fits a 128 KiB frame after login (about 120 KB).
const POST_LOGIN_DEPTH: usize = 20_000;
/// The deepest nesting the broker accepts (bourse::protocol::MAX_FIELD_DEPTH).
const LIMIT: usize = 64;

fn short_string(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A start-ok frame with `client_properties` as raw table bytes.
fn start_ok_frame(client_properties: &[u8], mechanism: &str, response: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 10, 0, 11];
    payload.extend_from_slice(client_properties);
    short_string(&mut payload, mechanism);
    payload.extend_from_slice(&(response.len() as u32).to_be_bytes());
    payload.extend_from_slice(response);
    short_string(&mut payload, "en_US");
    raw_frame(1, 0, &payload, FRAME_END)
}

/// Nesting that an 8 KiB pre-login frame can still carry (a level costs 5 or 7 bytes).
fn deepest_under_8k() -> Vec<u8> {
    let table = nested_table(1_200);
    assert!(table.len() < 7_600, "{} bytes", table.len());
    table
}

#[tokio::test]
async fn the_reported_start_ok_is_refused_before_login() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    let frame = start_ok_frame(
        &nested_table(ATTACK_DEPTH),
        "PLAIN",
        &sasl_response("PLAIN", "guest", "guest"),
    );
    assert!(frame.len() > 120_000, "{} bytes", frame.len());
    // Larger than the 8,192 bytes accepted before tune-ok: refused unread, as RabbitMQ 4.1+.
    let _ = raw.send_bytes(&frame).await;
    let reason = raw.expect_connection_close_code(501).await;
    assert!(reason.text.contains("8192"), "{reason:?}");
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn nesting_that_fits_a_pre_login_frame_is_a_syntax_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    let frame = start_ok_frame(
        &deepest_under_8k(),
        "PLAIN",
        &sasl_response("PLAIN", "guest", "guest"),
    );
    assert!(frame.len() <= 8192);
    raw.send_bytes(&frame).await.expect("send start-ok");
    let reason = raw.expect_connection_close_code(502).await;
    assert!(reason.text.contains("nested deeper than 64"), "{reason:?}");
    assert_eq!((reason.class_id, reason.method_id), (10, 11));
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn a_nested_amqplain_response_is_refused() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    // AMQPLAIN's response is a table without its length prefix.
    let response = deepest_under_8k()[4..].to_vec();
    let frame = start_ok_frame(&0u32.to_be_bytes(), "AMQPLAIN", &response);
    raw.send_bytes(&frame).await.expect("send start-ok");
    raw.expect_connection_close_code(403).await;
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn nested_headers_in_a_content_header_are_a_syntax_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    // class 60, weight 0, body size 0, flags = headers only, then the table.
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&0u64.to_be_bytes());
    payload.extend_from_slice(&(1u16 << 13).to_be_bytes());
    payload.extend_from_slice(&nested_table(POST_LOGIN_DEPTH));
    let mut bytes = encode_frame(&amq_protocol::frame::AMQPFrame::Method(
        1,
        basic_publish("", "anywhere"),
    ));
    bytes.extend(raw_frame(2, 1, &payload, FRAME_END));
    raw.send_bytes(&bytes).await.expect("send publish");
    let reason = raw.expect_connection_close_code(502).await;
    assert!(reason.text.contains("content header"), "{reason:?}");
    bystander.assert_unaffected(&broker).await;
}

/// Every method that carries a field table, with the arguments before it.
fn methods_with_tables() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |name, ids: [u8; 4], strings: &[&str], flags: bool| {
        let mut payload = ids.to_vec();
        payload.extend_from_slice(&[0, 0]); // reserved short
        for s in strings {
            short_string(&mut payload, s);
        }
        if flags {
            payload.push(0);
        }
        payload.extend_from_slice(&nested_table(POST_LOGIN_DEPTH));
        out.push((name, payload));
    };
    push("exchange.declare", [0, 40, 0, 10], &["x", "direct"], true);
    push(
        "exchange.bind",
        [0, 40, 0, 30],
        &["x", "amq.direct", "k"],
        true,
    );
    push(
        "exchange.unbind",
        [0, 40, 0, 40],
        &["x", "amq.direct", "k"],
        true,
    );
    push("queue.declare", [0, 50, 0, 10], &["q"], true);
    push(
        "queue.bind",
        [0, 50, 0, 20],
        &["q", "amq.direct", "k"],
        true,
    );
    push(
        "queue.unbind",
        [0, 50, 0, 50],
        &["q", "amq.direct", "k"],
        false,
    );
    push("basic.consume", [0, 60, 0, 20], &["q", "tag"], true);
    out
}

#[tokio::test]
async fn nested_method_arguments_are_a_syntax_error() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    for (name, payload) in methods_with_tables() {
        let mut raw = raw_with_channel(&broker).await;
        raw.send_bytes(&raw_frame(1, 1, &payload, FRAME_END))
            .await
            .expect("send method");
        let reason = raw.expect_connection_close_code(502).await;
        assert_eq!(
            [reason.class_id, reason.method_id],
            [
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]])
            ],
            "{name}: {reason:?}"
        );
    }
    bystander.assert_unaffected(&broker).await;
}

/// A header value nesting `levels` arrays below the headers table.
fn nested_header(levels: usize) -> AMQPValue {
    let mut value = AMQPValue::LongString(LongString::from(b"bottom".to_vec()));
    for _ in 0..levels {
        value = AMQPValue::FieldArray(FieldArray::from(vec![value]));
    }
    value
}

#[tokio::test]
async fn headers_at_the_limit_reach_a_wasm_exchange_and_one_more_level_is_refused() {
    let plugins = PluginBroker::start(&["x-header-expr"]).await;
    let broker = &plugins.broker;
    let bystander = Bystander::new(broker).await;
    let (conn, ch) = broker.channel().await;
    declare(&ch, "deep", "x-header-expr", FieldTable::default()).await;
    ch.queue_declare(
        "deep-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare queue");
    ch.queue_bind(
        "deep-q".into(),
        "deep".into(),
        "exists(deep)".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let publish = |levels: usize| {
        let mut headers = FieldTable::default();
        headers.insert("deep".into(), nested_header(levels));
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "deep".into(),
                "".into(),
                BasicPublishOptions::default(),
                b"payload",
                BasicProperties::default().with_headers(headers),
            )
            .await
        }
    };
    // The headers table is level 1: LIMIT - 1 arrays below it is the deepest accepted, and the
    // plugin is handed the whole structure.
    publish(LIMIT - 1).await.expect("publish at the limit");
    let got = bourse_tests::raw::within(async {
        loop {
            if let Some(m) = ch
                .basic_get("deep-q".into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                break m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(got.delivery.data, b"payload");
    let _ = publish(LIMIT).await;
    assert!(
        bourse_tests::eventually(std::time::Duration::from_secs(5), || !conn
            .status()
            .connected())
        .await,
        "a header one level too deep must close the connection"
    );
    bystander.assert_unaffected(broker).await;
}

#[tokio::test]
async fn start_ok_is_still_accepted_with_ordinary_properties() {
    // The pre-login frame cap must not refuse what real clients send (lapin's is ~300 bytes).
    let broker = TestBroker::start().await;
    let (_conn, ch) = broker.channel().await;
    bourse_tests::connection::assert_channel_works(&ch).await;
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    raw.send_start_ok(&Default::default()).await;
    match raw.recv_method().await.expect("tune") {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))) => {}
        other => panic!("expected connection.tune, got {other:?}"),
    }
}
