//! The writer's one congestion rule on every path that sends a message to a client: a
//! client that asks for messages (basic.get), makes the broker send them back (mandatory
//! publishes that come back as basic.return) or is sent replies (direct reply-to) but does not
//! read its socket cannot make the broker buffer for it without bound.

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties as RawProperties, basic};
use bourse_tests::TestBroker;
use bourse_tests::basic::{declare, publish, ready_count};
use bourse_tests::connection::raw_with_channel;
use bourse_tests::raw::{encode_frame, within};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

/// Bytes of each message: 1,000 of them are 16 MiB, far more than the 1 MiB congestion
/// threshold plus what loopback socket buffers hold.
const BODY: usize = 16 << 10;
const MESSAGES: usize = 1_000;

/// A publish frame set (method, header, one body frame) with `properties`.
fn publish_frames(
    exchange: &str,
    key: &str,
    mandatory: bool,
    properties: RawProperties,
) -> Vec<u8> {
    let mut bytes = encode_frame(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory,
            immediate: false,
        })),
    ));
    bytes.extend(encode_frame(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: BODY as u64,
            properties,
        },
    )));
    bytes.extend(encode_frame(&AMQPFrame::Body(1, vec![b'r'; BODY])));
    bytes
}

/// Reads and discards `bytes` bytes (at least) from `read`.
async fn read_at_least(read: &mut tokio::net::tcp::OwnedReadHalf, bytes: usize) {
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 20];
    while received < bytes {
        let n = within(tokio::io::AsyncReadExt::read(read, &mut buf))
            .await
            .expect("read");
        assert!(n > 0, "broker closed the connection");
        received += n;
    }
}

/// Basic.get replies that are never read: the broker stops reading the connection once its
/// unsent replies pass the writer's congestion threshold, instead of buffering every reply.
#[tokio::test]
async fn a_client_that_does_not_read_its_get_replies_is_not_read_either() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = broker.channel().await;
    let q = declare(&ch, "unread").await;
    let body = vec![b'g'; BODY];
    for _ in 0..MESSAGES {
        publish(&ch, "", &q, &body).await;
    }
    assert_eq!(ready_count(&ch, &q).await, MESSAGES as u32);
    let raw = raw_with_channel(&broker).await;
    let mut gets = Vec::new();
    for _ in 0..MESSAGES {
        gets.extend(encode_frame(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: q.as_str().into(),
                no_ack: true,
            })),
        )));
    }
    // Written from another task: the broker may stop reading before all of it is taken.
    let (mut read_half, write) = raw.into_stream().into_split();
    let writer = tokio::spawn(async move {
        let mut write = write;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut write, &gets).await;
        write
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // 16 MiB of replies were asked for; about 1 MiB waits in the broker and what the socket
    // buffers holds, so most messages must still be queued.
    let left = ready_count(&ch, &q).await;
    assert!(
        left as usize > MESSAGES / 3,
        "the broker answered {} of {MESSAGES} gets without the client reading",
        MESSAGES - left as usize
    );
    // Once the client reads, every get is answered.
    read_at_least(&mut read_half, MESSAGES * BODY).await;
    let _ = writer.await;
    assert_eq!(ready_count(&ch, &q).await, 0);
}

/// Mandatory publishes that cannot be routed come back as basic.return with their bodies: a
/// publisher that never reads them is not read further, so a later publish waits.
#[tokio::test]
async fn a_publisher_that_does_not_read_its_returns_is_not_read_either() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = broker.channel().await;
    let marker = declare(&ch, "marker").await;
    let raw = raw_with_channel(&broker).await;
    let mut bytes = Vec::new();
    for _ in 0..MESSAGES {
        bytes.extend(publish_frames(
            "",
            "nowhere",
            true,
            RawProperties::default(),
        ));
    }
    bytes.extend(publish_frames("", &marker, false, RawProperties::default()));
    let (mut read_half, write) = raw.into_stream().into_split();
    let writer = tokio::spawn(async move {
        let mut write = write;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut write, &bytes).await;
        write
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        ready_count(&ch, &marker).await,
        0,
        "the broker read past 16 MiB of unread returns"
    );
    read_at_least(&mut read_half, MESSAGES * BODY).await;
    let _ = writer.await;
    // Once the returns are read, the broker reads on and the marker arrives.
    within(async {
        while ready_count(&ch, &marker).await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Replies to a direct reply-to requester that does not read: once its connection is
/// congested the replies are dropped, and a mandatory reply comes back to the responder.
#[tokio::test]
async fn replies_to_a_requester_that_does_not_read_are_returned() {
    let broker = TestBroker::start().await;
    let (_conn, responder) = broker.channel().await;
    let requests = declare(&responder, "rpc").await;
    let mut incoming = within(responder.basic_consume(
        requests.as_str().into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("consume requests");
    let mut requester = raw_with_channel(&broker).await;
    requester
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "amq.rabbitmq.reply-to".into(),
                consumer_tag: "replies".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await
        .expect("consume replies");
    requester.recv_method().await.expect("consume-ok");
    requester
        .send_bytes(&publish_frames(
            "",
            &requests,
            false,
            RawProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        ))
        .await
        .expect("request");
    let request = within(incoming.next())
        .await
        .expect("stream")
        .expect("request");
    let reply_to = request
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .to_string();
    // The requester stops reading; the responder answers with far more than it can hold.
    responder
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for _ in 0..MESSAGES {
        confirms.push(
            within(responder.basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &[b'p'; BODY],
                BasicProperties::default(),
            ))
            .await
            .expect("publish reply"),
        );
    }
    let mut returned = 0;
    for confirm in confirms {
        if let Confirmation::Ack(Some(_)) = within(confirm).await.expect("confirm") {
            returned += 1;
        }
    }
    assert!(
        returned > MESSAGES / 3,
        "only {returned} of {MESSAGES} replies came back: the rest were buffered for a \
         requester that does not read"
    );
    drop(requester);
}
