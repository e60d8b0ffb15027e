//! basic.qos, basic.consume and basic.cancel, dispatch across consumers and basic.get over real
//! TCP with lapin. RabbitMQ 3.10 is the reference for every expected reply code; the helpers
//! are in [`bourse_tests::basic`].

use bourse_tests::basic::{
    QUIET, WAIT, assert_code, bodies, bounded, consume, consume_with, declare, drain, get,
    next_delivery, publish, publish_n, ready_count, wait_ready, within,
};
use bourse_tests::{TestBroker, eventually};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};

const ACCESS_REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;

// ---------------------------------------------------------------------------------------------
// qos

/// basic.qos with a non-zero prefetch-size: RabbitMQ does not implement byte-based prefetch
/// and answers 540 NOT_IMPLEMENTED "prefetch_size!=0 (N)" (a connection error). lapin cannot
/// send the field (amq-protocol drops it), so the frame is written by hand.
#[tokio::test]
async fn qos_with_prefetch_size_is_not_implemented() {
    bounded(async {
        use bourse_tests::raw::{RawClient, raw_frame};
        let broker = TestBroker::start().await;
        let (mut raw, _) = RawClient::open(broker.addr()).await;
        raw.open_channel(1).await;
        // basic.qos: class 60, method 10, prefetch-size 1000, prefetch-count 5, global false.
        let mut payload = vec![0, 60, 0, 10];
        payload.extend_from_slice(&1000u32.to_be_bytes());
        payload.extend_from_slice(&5u16.to_be_bytes());
        payload.push(0);
        raw.send_bytes(&raw_frame(1, 1, &payload, 0xCE))
            .await
            .unwrap();
        let reason = raw.expect_connection_close_code(540).await;
        assert_eq!(reason.text, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)");
        assert_eq!((reason.class_id, reason.method_id), (60, 10));

        // prefetch-size 0 is the ordinary case: qos-ok.
        let (_conn, ch) = broker.channel().await;
        ch.basic_qos(5, BasicQosOptions::default())
            .await
            .expect("qos with prefetch-size 0");
    })
    .await;
}

#[tokio::test]
async fn qos_per_consumer_prefetch_limits_each_consumer() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q1 = declare(&ch, "qos-c1").await;
        let q2 = declare(&ch, "qos-c2").await;
        publish_n(&ch, &q1, "a", 5).await;
        publish_n(&ch, &q2, "b", 5).await;
        wait_ready(&ch, &q1, 5).await;
        wait_ready(&ch, &q2, 5).await;

        ch.basic_qos(2, BasicQosOptions { global: false })
            .await
            .expect("basic.qos");
        let mut c1 = consume(&ch, &q1, "c1").await;
        let mut c2 = consume(&ch, &q2, "c2").await;
        let (got1, got2) = futures_lite::future::zip(drain(&mut c1), drain(&mut c2)).await;
        // global=false in RabbitMQ is per consumer: each consumer gets its own 2.
        assert_eq!(bodies(&got1), ["a0", "a1"]);
        assert_eq!(bodies(&got2), ["b0", "b1"]);

        got1[0].ack(BasicAckOptions::default()).await.expect("ack");
        let more = drain(&mut c1).await;
        assert_eq!(bodies(&more), ["a2"], "one ack frees exactly one slot");
        assert!(
            drain(&mut c2).await.is_empty(),
            "acking on c1 must not free credit for c2"
        );
    })
    .await;
}

#[tokio::test]
async fn qos_global_prefetch_is_shared_by_consumers_of_the_channel() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q1 = declare(&ch, "qos-g1").await;
        let q2 = declare(&ch, "qos-g2").await;
        publish_n(&ch, &q1, "a", 5).await;
        publish_n(&ch, &q2, "b", 5).await;
        wait_ready(&ch, &q1, 5).await;
        wait_ready(&ch, &q2, 5).await;

        ch.basic_qos(3, BasicQosOptions { global: true })
            .await
            .expect("basic.qos");
        let mut c1 = consume(&ch, &q1, "c1").await;
        let mut c2 = consume(&ch, &q2, "c2").await;
        let (got1, got2) = futures_lite::future::zip(drain(&mut c1), drain(&mut c2)).await;
        assert_eq!(
            got1.len() + got2.len(),
            3,
            "global prefetch 3 shared by both consumers: got {:?} and {:?}",
            bodies(&got1),
            bodies(&got2)
        );

        let first = got1
            .first()
            .or(got2.first())
            .expect("at least one delivery");
        first.ack(BasicAckOptions::default()).await.expect("ack");
        let (more1, more2) = futures_lite::future::zip(drain(&mut c1), drain(&mut c2)).await;
        assert_eq!(
            more1.len() + more2.len(),
            1,
            "one ack frees exactly one channel-wide slot"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// consume / cancel

#[tokio::test]
async fn consume_with_given_tag_delivers_under_that_tag() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "tagged").await;
        let mut c = consume(&ch, &q, "my-tag").await;
        assert_eq!(c.tag().as_str(), "my-tag");
        publish(&ch, "", &q, b"hello").await;
        // lapin routes basic.deliver by consumer tag: arriving here proves the broker used ours.
        let d = next_delivery(&mut c).await;
        assert_eq!(d.data, b"hello");
        assert_eq!(d.routing_key.as_str(), q);
        assert_eq!(d.exchange.as_str(), "");
        assert!(!d.redelivered);
        assert_eq!(d.delivery_tag, 1, "delivery tags start at 1 on a channel");
    })
    .await;
}

#[tokio::test]
async fn consume_with_empty_tag_gets_server_generated_tag() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "gen-tag").await;
        let mut c1 = consume(&ch, &q, "").await;
        let c2 = consume(&ch, &q, "").await;
        assert!(
            c1.tag().as_str().starts_with("amq.ctag-"),
            "tag {:?}",
            c1.tag()
        );
        assert!(
            c2.tag().as_str().starts_with("amq.ctag-"),
            "tag {:?}",
            c2.tag()
        );
        assert_ne!(c1.tag(), c2.tag(), "generated tags must be unique");
        // The generated tag names the consumer for basic.cancel too.
        within(
            "basic.cancel",
            ch.basic_cancel(c2.tag(), BasicCancelOptions::default()),
        )
        .await
        .expect("cancel by generated tag");
        publish(&ch, "", &q, b"x").await;
        let d = next_delivery(&mut c1).await;
        assert_eq!(d.data, b"x");
    })
    .await;
}

#[tokio::test]
async fn exclusive_consumer_refuses_other_consumers() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "excl").await;
        let _excl = consume_with(
            &ch,
            &q,
            "only",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        let ch2 = conn.create_channel().await.unwrap();
        let res = ch2
            .basic_consume(
                q.as_str().into(),
                "second".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(
            res,
            ACCESS_REFUSED,
            "second consumer on exclusively consumed queue",
        );

        // The other direction: an exclusive consume on a queue that already has a consumer.
        let ch3 = conn.create_channel().await.unwrap();
        let q2 = declare(&ch3, "excl2").await;
        let _plain = consume(&ch3, &q2, "plain").await;
        let ch4 = conn.create_channel().await.unwrap();
        let res = ch4
            .basic_consume(
                q2.as_str().into(),
                "wants-excl".into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        assert_code(
            res,
            ACCESS_REFUSED,
            "exclusive consume on a queue with consumers",
        );

        // Channel errors only: the connection and the first channel keep working.
        publish(&ch, "", &q, b"still").await;
        assert!(conn.status().connected());
    })
    .await;
}

#[tokio::test]
async fn no_ack_consumer_messages_are_settled_on_delivery() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "noack").await;
        // Prefetch does not limit no-ack consumers.
        ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
        let mut c = consume_with(
            &ch,
            &q,
            "noack",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        publish_n(&ch, &q, "m", 3).await;
        let got = drain(&mut c).await;
        assert_eq!(bodies(&got), ["m0", "m1", "m2"]);
        // Closing the channel without acking must not bring anything back.
        ch.close(200, "bye".into()).await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            ready_count(&ch2, &q).await,
            0,
            "no-ack deliveries are never requeued"
        );
    })
    .await;
}

#[tokio::test]
async fn consumer_priority_prefers_higher_priority_while_it_has_credit() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch_hi = conn.create_channel().await.unwrap();
        let ch_lo = conn.create_channel().await.unwrap();
        let q = declare(&ch_hi, "prio").await;

        ch_hi
            .basic_qos(2, BasicQosOptions::default())
            .await
            .unwrap();
        let mut hi_args = FieldTable::default();
        hi_args.insert("x-priority".into(), AMQPValue::LongInt(10));
        // The low-priority consumer registers first so plain round-robin would favour it.
        let mut lo = consume(&ch_lo, &q, "lo").await;
        let mut hi = consume_with(&ch_hi, &q, "hi", BasicConsumeOptions::default(), hi_args).await;

        publish_n(&ch_lo, &q, "m", 5).await;
        let (got_hi, got_lo) = futures_lite::future::zip(drain(&mut hi), drain(&mut lo)).await;
        assert_eq!(
            bodies(&got_hi),
            ["m0", "m1"],
            "high priority gets messages while it has credit"
        );
        assert_eq!(
            bodies(&got_lo),
            ["m2", "m3", "m4"],
            "low priority gets the overflow"
        );

        got_hi[0].ack(BasicAckOptions::default()).await.unwrap();
        publish(&ch_lo, "", &q, b"m5").await;
        let (more_hi, more_lo) = futures_lite::future::zip(drain(&mut hi), drain(&mut lo)).await;
        assert_eq!(
            bodies(&more_hi),
            ["m5"],
            "credit regained: high priority again"
        );
        assert!(more_lo.is_empty());
    })
    .await;
}

#[tokio::test]
async fn duplicate_consumer_tag_is_not_allowed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "dup").await;
        let _c = consume(&ch, &q, "same").await;
        let res = ch
            .basic_consume(
                q.as_str().into(),
                "same".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(res, NOT_ALLOWED, "reusing a consumer tag on a channel");
        // 530 is a hard error: RabbitMQ closes the whole connection.
        assert!(
            eventually(WAIT, || !conn.status().connected()).await,
            "connection should be closed after 530"
        );
    })
    .await;
}

#[tokio::test]
async fn cancel_stops_deliveries_and_ends_the_stream() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "cancel").await;
        let mut c = consume(&ch, &q, "c").await;
        publish(&ch, "", &q, b"before").await;
        let d = next_delivery(&mut c).await;
        d.ack(BasicAckOptions::default()).await.unwrap();

        within(
            "basic.cancel",
            ch.basic_cancel("c".into(), BasicCancelOptions::default()),
        )
        .await
        .expect("basic.cancel");
        assert!(
            within("stream end", c.next()).await.is_none(),
            "consumer stream ends after cancel"
        );
        publish(&ch, "", &q, b"after").await;
        wait_ready(&ch, &q, 1).await;
        let m = get(&ch, &q).await.expect("message stays in the queue");
        assert_eq!(m.delivery.data, b"after");
    })
    .await;
}

#[tokio::test]
async fn deleting_a_consumed_queue_sends_basic_cancel() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let other = conn.create_channel().await.unwrap();
        let q = declare(&ch, "deleted").await;
        let mut c = consume(&ch, &q, "victim").await;
        other
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        match within("server-sent basic.cancel", c.next()).await {
            None => {}
            Some(other) => panic!("expected the stream to end, got {other:?}"),
        }
        // The consumer's channel stays open.
        let q2 = declare(&ch, "after-cancel").await;
        publish(&ch, "", &q2, b"ok").await;
        assert!(get(&ch, &q2).await.is_some());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// dispatch, get

#[tokio::test]
async fn messages_round_robin_across_consumers() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "rr").await;
        let mut c1 = consume(&ch, &q, "c1").await;
        let mut c2 = consume(&ch, &q, "c2").await;
        publish_n(&ch, &q, "m", 6).await;
        let (got1, got2) = futures_lite::future::zip(drain(&mut c1), drain(&mut c2)).await;
        let (mut b1, mut b2) = (bodies(&got1), bodies(&got2));
        assert_eq!(b1.len(), 3, "c1 got {b1:?}, c2 got {b2:?}");
        assert_eq!(b2.len(), 3, "c1 got {b1:?}, c2 got {b2:?}");
        if b1[0] != "m0" {
            std::mem::swap(&mut b1, &mut b2);
        }
        assert_eq!(b1, ["m0", "m2", "m4"], "strict alternation");
        assert_eq!(b2, ["m1", "m3", "m5"], "strict alternation");
    })
    .await;
}

#[tokio::test]
async fn basic_get_reports_message_count_and_empty() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "get").await;
        assert!(get(&ch, &q).await.is_none(), "get-empty on an empty queue");
        publish_n(&ch, &q, "m", 3).await;
        wait_ready(&ch, &q, 3).await;

        for (i, remaining) in [(0, 2), (1, 1), (2, 0)] {
            let m = get(&ch, &q).await.expect("get-ok");
            assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
            assert_eq!(m.message_count, remaining, "message_count after m{i}");
            assert_eq!(m.delivery.delivery_tag, i + 1);
            assert!(!m.delivery.redelivered);
            assert_eq!(m.delivery.routing_key.as_str(), q);
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        assert!(get(&ch, &q).await.is_none(), "get-empty once drained");

        // no_ack get removes the message without an ack.
        publish(&ch, "", &q, b"auto").await;
        wait_ready(&ch, &q, 1).await;
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("get-ok");
        assert_eq!(m.delivery.data, b"auto");
        ch.close(200, "bye".into()).await.unwrap();
        let (_c2, ch2) = broker.channel().await;
        tokio::time::sleep(QUIET).await;
        assert_eq!(ready_count(&ch2, &q).await, 0);
    })
    .await;
}

/// `x-priority` accepts every AMQP integer type whole, as RabbitMQ does (its integers are
/// unbounded): a long beyond i32 is not truncated. Truncating i64::MAX `as i32` gave -1, which
/// ranked the "highest" consumer below one at priority 0; i64::MIN became 0 and tied.
#[tokio::test]
async fn consumer_priorities_beyond_i32_keep_their_order() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let q = {
            let ch = conn.create_channel().await.unwrap();
            declare(&ch, "prio-wide").await
        };
        let priorities = [
            ("zero", AMQPValue::LongInt(0)),
            ("max-long", AMQPValue::LongLongInt(i64::MAX)),
            ("min-long", AMQPValue::LongLongInt(i64::MIN)),
            ("max-uint", AMQPValue::LongUInt(u32::MAX)),
        ];
        let mut consumers = Vec::new();
        for (tag, priority) in priorities {
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
            let mut args = FieldTable::default();
            args.insert("x-priority".into(), priority);
            let consumer = consume_with(&ch, &q, tag, BasicConsumeOptions::default(), args).await;
            consumers.push((tag, ch, consumer));
        }
        let ch = conn.create_channel().await.unwrap();
        publish_n(&ch, &q, "m", 4).await;
        let mut got = Vec::new();
        for (tag, _, consumer) in &mut consumers {
            for d in drain(consumer).await {
                got.push((String::from_utf8_lossy(&d.data).into_owned(), *tag));
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("m0".to_owned(), "max-long"),
                ("m1".to_owned(), "max-uint"),
                ("m2".to_owned(), "zero"),
                ("m3".to_owned(), "min-long"),
            ],
            "one message each (prefetch 1), highest priority first"
        );

        // A timestamp is not an integer argument (RabbitMQ's ?INTEGER_ARG_TYPES): 406.
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-priority".into(), AMQPValue::Timestamp(5));
        let res = ch
            .basic_consume(
                q.as_str().into(),
                "ts".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await;
        assert_code(res, 406, "x-priority as a timestamp");
    })
    .await;
}
