//! Malformed input over real TCP, and the reply codes for it: bad frame ends, oversized or
//! unknown frames, undecodable arguments, methods on unopened channels, content frames out of
//! order. Each is a connection error; other connections are untouched.
//!
//! RabbitMQ 3.10 is the reference; where its reply code is not the obvious one the test names
//! the `rabbit_reader`/`rabbit_channel` clause it follows. The helpers are in
//! [`bourse_tests::connection`] and [`bourse_tests::raw`].

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, channel};
use bourse_tests::TestBroker;
use bourse_tests::connection::{Bystander, raw_with_channel};
use bourse_tests::raw::{
    FRAME_END, Handshake, RawClient, basic_publish, channel_open, encode_frame, queue_declare,
    raw_frame,
};

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
