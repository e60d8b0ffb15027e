//! Connection and channel lifecycle over real TCP: connection.close, channel open, close and
//! reopen, channel.close from the broker, channel.flow, many channels on one connection.
//!
//! RabbitMQ 3.10 is the reference; where its reply code is not the obvious one the test names
//! the `rabbit_reader`/`rabbit_channel` clause it follows. The helpers are in
//! [`bourse_tests::connection`] and [`bourse_tests::raw`].

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, BasicProperties, channel, connection, queue};
use amq_protocol::types::FieldTable;
use bourse_tests::TestBroker;
use bourse_tests::connection::{assert_channel_works, lapin_connect, raw_with_channel};
use bourse_tests::raw::{RawClient, within};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ChannelFlowOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};

// ---------------------------------------------------------------------------------------------
// Connection and channel lifecycle

/// A client that pipelines publishes, connection.close and then more frames it still had in
/// flight, in one write: RabbitMQ answers close-ok and keeps reading (discarding) until the
/// client closes its side, so the client sees close-ok and then a clean end of stream. Closing
/// the socket with those bytes unread makes the kernel send a reset instead.
#[tokio::test]
async fn close_ok_then_clean_eof_for_a_client_that_floods_then_closes() {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use bourse_tests::raw::{basic_publish, encode_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = TestBroker::start().await;
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    let mut publish = encode_frame(&AMQPFrame::Method(1, basic_publish("", "nowhere")));
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: 1000,
        properties: BasicProperties::default(),
    };
    publish.extend(encode_frame(&AMQPFrame::Header(1, header)));
    publish.extend(encode_frame(&AMQPFrame::Body(1, vec![b'x'; 1000])));
    let close = connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    let mut pipeline = publish.repeat(500);
    pipeline.extend(encode_frame(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(close)),
    )));
    // 4 MB still in flight after the close: more than the broker's read buffer holds.
    pipeline.extend(publish.repeat(4000));

    let (stream, _) = raw.into_parts();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let written = write.write_all(&pipeline).await;
        (write, written)
    });
    let mut received = Vec::new();
    let outcome = within(async {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let close_ok = encode_frame(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    ));
    assert!(
        outcome.is_ok(),
        "expected a clean end of stream after close-ok, got {outcome:?} after {} bytes",
        received.len()
    );
    assert!(
        received.ends_with(&close_ok),
        "the last frame before end of stream is close-ok ({} bytes received)",
        received.len()
    );
    let (mut write, written) = within(writer).await.expect("writer task");
    assert!(written.is_ok(), "the pipeline was written: {written:?}");
    // A broker that closed with those bytes unread has reset the connection by now, and the
    // client's next writes fail; one that drains takes them until the client closes its side.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let heartbeat = encode_frame(&AMQPFrame::Heartbeat);
        let sent = write.write_all(&heartbeat).await;
        assert!(
            sent.is_ok(),
            "the broker reset the connection instead of draining it: {sent:?}"
        );
    }
    let _ = write.shutdown().await;
}

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
