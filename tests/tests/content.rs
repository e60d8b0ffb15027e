//! Content handling over real TCP with lapin: bodies split across frames at frame_max, the
//! message size limit, and round-tripping of all 14 basic properties and every field type
//! lapin can put in a headers table.

use std::time::Duration;

use bourse_tests::{TestBroker, uniq};
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Channel, Consumer};

const WAIT: Duration = Duration::from_secs(5);
/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs a whole test under one deadline, so a broker that stops answering an unwrapped call
/// fails the test instead of hanging it.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}
const PRECONDITION_FAILED: u16 = 406;
/// The smallest frame_max lapin will negotiate: amq-protocol's FRAME_MIN_SIZE is 8192, above
/// the 4096 of AMQP 0-9-1 and RabbitMQ. The 4096 case is covered with the raw client below.
const FRAME_MAX: u32 = 8192;
/// AMQP 0-9-1's (and RabbitMQ's) smallest frame_max.
const SPEC_FRAME_MIN: u32 = 4096;
/// Frame header (7) plus frame-end octet (1): a body frame carries at most frame_max - 8.
const FRAME_OVERHEAD: usize = 8;

async fn within<F: std::future::Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

async fn declare(ch: &Channel, base: &str) -> String {
    let name = uniq(base);
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    name
}

async fn consume(ch: &Channel, queue: &str) -> Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

/// A body whose every byte depends on its position and the body's length, so a lost,
/// duplicated or reordered frame changes it.
fn body(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + len * 7 + i / 4093) % 251) as u8)
        .collect()
}

async fn publish_confirmed(ch: &Channel, queue: &str, payload: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            props,
        )
        .await
        .expect("basic.publish");
    let conf = within("confirm", Duration::from_secs(30), confirm)
        .await
        .expect("confirm");
    assert!(
        conf.is_ack(),
        "publish of {} bytes not acked: {conf:?}",
        payload.len()
    );
}

/// Publishes each size then checks each arrives byte-identical and in order, first through a
/// consumer, then through basic.get.
async fn round_trip_sizes(sizes: &[usize]) {
    let broker = TestBroker::start_with(|cfg| cfg.frame_max_bytes = FRAME_MAX).await;
    let (conn, ch) = broker.channel().await;
    assert_eq!(
        conn.configuration().frame_max(),
        FRAME_MAX,
        "the client must have negotiated the small frame_max for this test to mean anything"
    );
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = declare(&ch, "sizes").await;
    let mut c = consume(&ch, &q).await;
    for &n in sizes {
        publish_confirmed(&ch, &q, &body(n), BasicProperties::default()).await;
    }
    for &n in sizes {
        let d = within("delivery", Duration::from_secs(30), c.next())
            .await
            .expect("stream ended")
            .expect("delivery");
        assert_eq!(d.data.len(), n, "delivered length");
        assert!(d.data == body(n), "delivered body of {n} bytes differs");
    }

    // The same through basic.get-ok.
    let (_c2, ch2) = broker.channel().await;
    let q2 = declare(&ch2, "sizes-get").await;
    for &n in sizes {
        publish_confirmed(&ch, &q2, &body(n), BasicProperties::default()).await;
    }
    for &n in sizes {
        let m = within(
            "basic.get",
            Duration::from_secs(30),
            ch2.basic_get(q2.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get")
        .expect("get-ok");
        assert_eq!(m.delivery.data.len(), n, "get-ok length");
        assert!(
            m.delivery.data == body(n),
            "get-ok body of {n} bytes differs"
        );
    }
}

#[tokio::test]
async fn bodies_at_frame_boundaries_arrive_intact() {
    bounded(async {
        let per_frame = FRAME_MAX as usize - FRAME_OVERHEAD;
        round_trip_sizes(&[
            0,
            1,
            per_frame - 1,
            per_frame,
            per_frame + 1,
            FRAME_MAX as usize,
            2 * per_frame,
            2 * per_frame + 1,
            3 * per_frame - 1,
        ])
        .await;
    })
    .await;
}

#[tokio::test]
async fn large_bodies_split_at_frame_max_arrive_intact() {
    bounded(async {
        round_trip_sizes(&[1 << 20, 5 << 20]).await;
    })
    .await;
}

#[tokio::test]
async fn body_above_max_message_size_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start_with(|cfg| cfg.max_message_bytes = 1024).await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let q = declare(&ch, "limit").await;
        // Exactly at the limit is fine.
        publish_confirmed(&ch, &q, &body(1024), BasicProperties::default()).await;

        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &body(1025),
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish");
        match within("confirm", WAIT, confirm).await {
            Err(e) => assert_eq!(reply_code(&e), Some(PRECONDITION_FAILED), "{e:?}"),
            Ok(c) => panic!("oversized body: expected channel error 406, got {c:?}"),
        }
        // A channel error: the connection still works and the small message is there.
        let ch2 = conn.create_channel().await.expect("new channel");
        let m = ch2
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the 1024-byte message");
        assert_eq!(m.delivery.data.len(), 1024);
        assert_eq!(m.message_count, 0, "the oversized message was not enqueued");
    })
    .await;
}

/// A headers table with every field type lapin can encode. (AMQPValue::ShortString is
/// omitted: lapin writes it with the type octet '_', which is not an AMQP field type.)
fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    nested.insert("n".into(), AMQPValue::LongInt(-7));
    let mut nested_outer = FieldTable::default();
    nested_outer.insert("level2".into(), AMQPValue::FieldTable(nested.clone()));

    let array = FieldArray::from(vec![
        AMQPValue::LongInt(1),
        AMQPValue::LongString("two".into()),
        AMQPValue::Boolean(false),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Double(3.5)])),
        AMQPValue::FieldTable(nested.clone()),
        AMQPValue::Void,
    ]);

    let mut h = FieldTable::default();
    h.insert("bool".into(), AMQPValue::Boolean(true));
    h.insert("i8".into(), AMQPValue::ShortShortInt(-128));
    h.insert("u8".into(), AMQPValue::ShortShortUInt(255));
    h.insert("i16".into(), AMQPValue::ShortInt(-32768));
    h.insert("u16".into(), AMQPValue::ShortUInt(65535));
    h.insert("i32".into(), AMQPValue::LongInt(i32::MIN));
    h.insert("u32".into(), AMQPValue::LongUInt(u32::MAX));
    h.insert("i64".into(), AMQPValue::LongLongInt(i64::MIN));
    h.insert("f32".into(), AMQPValue::Float(1.5e-3));
    h.insert("f64".into(), AMQPValue::Double(-2.25e300));
    h.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 3,
            value: 123_456,
        }),
    );
    h.insert(
        "longstr".into(),
        AMQPValue::LongString(LongString::from("héllo \u{1F600}")),
    );
    h.insert(
        "binary-longstr".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 255, 10])),
    );
    h.insert("array".into(), AMQPValue::FieldArray(array));
    h.insert(
        "empty-array".into(),
        AMQPValue::FieldArray(FieldArray::default()),
    );
    h.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    h.insert("table".into(), AMQPValue::FieldTable(nested_outer));
    h.insert(
        "empty-table".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3, 0])),
    );
    h.insert("void".into(), AMQPValue::Void);
    h
}

fn all_properties(user_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_field_type())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-42".into())
        .with_reply_to("reply.queue".into())
        .with_expiration("86400000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id(ShortString::from(user_id))
        .with_app_id("bourse-tests".into())
        .with_cluster_id("cluster-a".into())
}

#[tokio::test]
async fn all_basic_properties_and_header_types_round_trip() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let q = declare(&ch, "props").await;
        let sent = all_properties("guest");
        publish_confirmed(&ch, &q, b"with properties", sent.clone()).await;
        publish_confirmed(&ch, &q, b"bare", BasicProperties::default()).await;

        let mut c = consume(&ch, &q).await;
        let d = within("delivery", WAIT, c.next())
            .await
            .expect("stream")
            .expect("delivery");
        assert_eq!(d.data, b"with properties");
        let got = &d.properties;
        // Field by field first, for a readable failure.
        assert_eq!(got.content_type(), sent.content_type());
        assert_eq!(got.content_encoding(), sent.content_encoding());
        assert_eq!(got.delivery_mode(), &Some(2));
        assert_eq!(got.priority(), &Some(7));
        assert_eq!(got.correlation_id(), sent.correlation_id());
        assert_eq!(got.reply_to(), sent.reply_to());
        assert_eq!(got.expiration(), sent.expiration());
        assert_eq!(got.message_id(), sent.message_id());
        assert_eq!(got.timestamp(), &Some(1_700_000_123));
        assert_eq!(got.kind(), sent.kind());
        assert_eq!(got.user_id(), sent.user_id());
        assert_eq!(got.app_id(), sent.app_id());
        assert_eq!(got.cluster_id(), sent.cluster_id());
        let (got_h, sent_h) = (
            got.headers().as_ref().expect("headers"),
            sent.headers().as_ref().unwrap(),
        );
        for (k, v) in sent_h.inner() {
            assert_eq!(got_h.inner().get(k), Some(v), "header {k}");
        }
        assert_eq!(got_h, sent_h, "no extra headers");
        assert_eq!(got, &sent);

        // And a message without properties gets none added.
        let d = within("delivery", WAIT, c.next())
            .await
            .expect("stream")
            .expect("delivery");
        assert_eq!(d.data, b"bare");
        assert_eq!(d.properties, BasicProperties::default());
    })
    .await;
}

#[tokio::test]
async fn user_id_other_than_the_connection_user_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let q = declare(&ch, "userid").await;
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"spoofed",
                BasicProperties::default().with_user_id("mallory".into()),
            )
            .await
            .expect("basic.publish");
        match within("confirm", WAIT, confirm).await {
            Err(e) => assert_eq!(reply_code(&e), Some(PRECONDITION_FAILED), "{e:?}"),
            Ok(c) => panic!("spoofed user_id: expected channel error 406, got {c:?}"),
        }
        let ch2 = conn.create_channel().await.expect("connection survives");
        let m = ch2
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert!(m.is_none(), "the spoofed message was not enqueued");
    })
    .await;
}

/// frame_max 4096 (the spec minimum, which lapin cannot negotiate), driven with the raw client:
/// bodies published in 4088-byte frames are delivered split into frames that never exceed
/// 4096 bytes and reassemble byte-identical.
#[tokio::test]
async fn bodies_split_at_spec_minimum_frame_max_arrive_intact() {
    bounded(async {
        use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
        use amq_protocol::protocol::{AMQPClass, basic, queue};
        use bourse_tests::raw::{RawClient, basic_publish};

        let per_frame = SPEC_FRAME_MIN as usize - FRAME_OVERHEAD;
        let sizes = [
            0,
            1,
            per_frame - 1,
            per_frame,
            per_frame + 1,
            SPEC_FRAME_MIN as usize,
            2 * per_frame,
            2 * per_frame + 1,
            1 << 20,
            5 << 20,
        ];
        let broker = TestBroker::start_with(|cfg| cfg.frame_max_bytes = SPEC_FRAME_MIN).await;
        let (mut raw, negotiated) = RawClient::open(broker.addr()).await;
        assert_eq!(
            negotiated.tune.frame_max, SPEC_FRAME_MIN,
            "connection.tune frame_max"
        );
        raw.open_channel(1).await;
        let q = uniq("raw-frames");
        let declare = queue::Declare {
            queue: q.as_str().into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        };
        raw.send_method(1, AMQPClass::Queue(queue::AMQPMethod::Declare(declare)))
            .await
            .unwrap();
        match raw.recv_method().await.expect("queue.declare-ok") {
            (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }

        // Publish everything before consuming, so the broker never writes while we write.
        for &n in &sizes {
            let payload = body(n);
            raw.send_method(1, basic_publish("", &q)).await.unwrap();
            let header = AMQPContentHeader {
                class_id: 60,
                body_size: n as u64,
                properties: BasicProperties::default(),
            };
            raw.send_frame(&AMQPFrame::Header(1, header)).await.unwrap();
            for chunk in payload.chunks(per_frame) {
                raw.send_frame(&AMQPFrame::Body(1, chunk.to_vec()))
                    .await
                    .unwrap();
            }
        }
        let consume = basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        };
        raw.send_method(1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume)))
            .await
            .unwrap();
        match raw.recv_method().await.expect("basic.consume-ok") {
            (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {}
            other => panic!("expected basic.consume-ok, got {other:?}"),
        }

        for &n in &sizes {
            match raw.recv_method().await.expect("basic.deliver") {
                (1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => {}
                other => panic!("expected basic.deliver for {n} bytes, got {other:?}"),
            }
            let declared = match raw.recv_frame().await.expect("content header") {
                AMQPFrame::Header(1, h) => h.body_size,
                other => panic!("expected a content header, got {other:?}"),
            };
            assert_eq!(declared, n as u64, "content header body_size");
            let mut got = Vec::with_capacity(n);
            while got.len() < n {
                match raw.recv_frame().await.expect("body frame") {
                    AMQPFrame::Body(1, chunk) => {
                        assert!(
                            chunk.len() <= per_frame,
                            "body frame of {} payload bytes exceeds frame_max {SPEC_FRAME_MIN}",
                            chunk.len()
                        );
                        got.extend_from_slice(&chunk);
                    }
                    other => panic!(
                        "expected a body frame ({} of {n} bytes), got {other:?}",
                        got.len()
                    ),
                }
            }
            assert_eq!(got.len(), n, "body frames overran body_size");
            assert!(got == body(n), "delivered body of {n} bytes differs");
        }
    })
    .await;
}
