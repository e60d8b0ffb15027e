//! basic.ack, basic.nack, basic.reject and basic.recover over real TCP with lapin, and the
//! requeueing of unacked messages when their channel or connection closes. RabbitMQ 3.10 is the
//! reference for every expected reply code; the helpers are in [`bourse_tests::basic`].

use bourse_tests::basic::{
    QUIET, bodies, bounded, consume, declare, drain, get, next_delivery, next_error_code, publish,
    publish_n, ready_count, wait_ready, within,
};
use bourse_tests::{TestBroker, uniq};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRecoverOptions, BasicRejectOptions,
};
use lapin::{BasicProperties, Channel, Connection, Consumer};

const PRECONDITION_FAILED: u16 = 406;

// ---------------------------------------------------------------------------------------------
// ack, nack, reject, recover

#[tokio::test]
async fn ack_single_and_multiple() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "ack").await;
        publish_n(&ch, &q, "m", 4).await;
        wait_ready(&ch, &q, 4).await;
        for _ in 0..4 {
            get(&ch, &q).await.expect("get-ok");
        }
        ch.basic_ack(1, BasicAckOptions { multiple: false })
            .await
            .unwrap();
        ch.basic_ack(3, BasicAckOptions { multiple: true })
            .await
            .unwrap();
        // Only tag 4 (m3) is still unacked; closing the channel requeues exactly it.
        ch.close(200, "bye".into()).await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        wait_ready(&ch2, &q, 1).await;
        let m = get(&ch2, &q).await.expect("requeued message");
        assert_eq!(m.delivery.data, b"m3");
        assert!(m.delivery.redelivered);
        assert_eq!(m.message_count, 0);
    })
    .await;
}

#[tokio::test]
async fn reject_requeue_true_and_false() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "reject").await;
        publish_n(&ch, &q, "m", 2).await;
        wait_ready(&ch, &q, 2).await;
        let m0 = get(&ch, &q).await.unwrap();
        let m1 = get(&ch, &q).await.unwrap();
        ch.basic_reject(
            m0.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        )
        .await
        .unwrap();
        ch.basic_reject(
            m1.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
        wait_ready(&ch, &q, 1).await;
        let again = get(&ch, &q).await.expect("requeued m0");
        assert_eq!(again.delivery.data, b"m0");
        assert!(
            again.delivery.redelivered,
            "a requeued message is redelivered"
        );
        assert_eq!(again.message_count, 0, "m1 was discarded");
        ch.basic_ack(again.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        assert!(get(&ch, &q).await.is_none());
    })
    .await;
}

#[tokio::test]
async fn nack_single_and_multiple_with_and_without_requeue() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "nack").await;
        publish_n(&ch, &q, "m", 4).await;
        wait_ready(&ch, &q, 4).await;
        for _ in 0..4 {
            get(&ch, &q).await.expect("get-ok");
        }
        // Tag 1 (m0) dropped; tags 2..=3 (m1, m2) requeued in order; tag 4 (m3) left unacked.
        ch.basic_nack(
            1,
            BasicNackOptions {
                multiple: false,
                requeue: false,
            },
        )
        .await
        .unwrap();
        ch.basic_nack(
            3,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .unwrap();
        wait_ready(&ch, &q, 2).await;
        let a = get(&ch, &q).await.unwrap();
        let b = get(&ch, &q).await.unwrap();
        assert_eq!(
            (a.delivery.data.as_slice(), b.delivery.data.as_slice()),
            (&b"m1"[..], &b"m2"[..])
        );
        assert!(a.delivery.redelivered && b.delivery.redelivered);
        assert_eq!((a.delivery.delivery_tag, b.delivery.delivery_tag), (5, 6));

        // Drop everything outstanding (tags 4, 5, 6).
        ch.basic_nack(
            6,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        )
        .await
        .unwrap();
        ch.close(200, "bye".into()).await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            ready_count(&ch2, &q).await,
            0,
            "nothing left unacked to requeue"
        );
    })
    .await;
}

#[tokio::test]
async fn recover_requeues_unacked_with_redelivered_set() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "recover").await;
        let mut c = consume(&ch, &q, "c").await;
        publish_n(&ch, &q, "m", 2).await;
        let first = drain(&mut c).await;
        assert_eq!(bodies(&first), ["m0", "m1"]);
        assert!(first.iter().all(|d| !d.redelivered));

        within(
            "basic.recover",
            ch.basic_recover(BasicRecoverOptions { requeue: true }),
        )
        .await
        .expect("basic.recover");
        let again = drain(&mut c).await;
        assert_eq!(bodies(&again), ["m0", "m1"]);
        assert!(
            again.iter().all(|d| d.redelivered),
            "recovered messages are redelivered"
        );
        let last = again.last().unwrap().delivery_tag;
        ch.basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .unwrap();
        ch.basic_cancel("c".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(QUIET).await;
        assert_eq!(ready_count(&ch, &q).await, 0);
    })
    .await;
}

#[tokio::test]
async fn ack_of_unknown_delivery_tag_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let ch = conn.create_channel().await.unwrap();
        ch.basic_ack(99, BasicAckOptions::default()).await.unwrap();
        assert_eq!(next_error_code(&mut events).await, PRECONDITION_FAILED);
        let ch2 = conn
            .create_channel()
            .await
            .expect("connection survives a channel error");
        declare(&ch2, "after").await;
    })
    .await;
}

#[tokio::test]
async fn double_ack_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "double").await;
        publish(&ch, "", &q, b"x").await;
        wait_ready(&ch, &q, 1).await;
        let m = get(&ch, &q).await.unwrap();
        let tag = m.delivery.delivery_tag;
        ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
        ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
        assert_eq!(next_error_code(&mut events).await, PRECONDITION_FAILED);
        // The first ack took effect: nothing comes back when the channel died.
        let ch2 = conn.create_channel().await.unwrap();
        tokio::time::sleep(QUIET).await;
        assert_eq!(ready_count(&ch2, &q).await, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// requeue on close

/// Consumes one message on `victim_ch` and starts a consumer on another connection, which
/// must not get it while the victim holds it.
async fn hold_one_unacked(broker: &TestBroker, victim_ch: &Channel) -> (Connection, Consumer) {
    let q = declare(victim_ch, "requeue").await;
    let mut victim = consume(victim_ch, &q, "victim").await;
    publish(victim_ch, "", &q, b"precious").await;
    let d = next_delivery(&mut victim).await;
    assert!(!d.redelivered);

    let (conn2, ch2) = broker.channel().await;
    let mut survivor = consume(&ch2, &q, "survivor").await;
    assert!(
        drain(&mut survivor).await.is_empty(),
        "message is held by the victim"
    );
    (conn2, survivor)
}

/// The held message arrives at the survivor, flagged redelivered.
async fn survivor_gets_it(survivor: &mut Consumer) {
    let again = next_delivery(survivor).await;
    assert_eq!(again.data, b"precious");
    assert!(
        again.redelivered,
        "requeued message carries redelivered=true"
    );
    again.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test]
async fn unacked_messages_of_closed_channel_are_requeued() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = broker.channel().await;
        let (_conn2, mut survivor) = hold_one_unacked(&broker, &ch).await;
        ch.close(200, "bye".into()).await.expect("channel.close");
        survivor_gets_it(&mut survivor).await;
        assert!(
            conn.status().connected(),
            "closing a channel keeps the connection"
        );
    })
    .await;
}

#[tokio::test]
async fn unacked_messages_of_closed_connection_are_requeued() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = broker.channel().await;
        let (_conn2, mut survivor) = hold_one_unacked(&broker, &ch).await;
        conn.close(200, "bye".into())
            .await
            .expect("connection.close");
        survivor_gets_it(&mut survivor).await;
    })
    .await;
}

/// basic.recover and basic.recover-async with requeue=false (redeliver to the same consumer
/// only) are not implemented by RabbitMQ either: 540 NOT_IMPLEMENTED closes the connection,
/// and the unacked message is requeued with it rather than lost.
#[tokio::test]
async fn recover_without_requeue_is_not_implemented() {
    bounded(async {
        use amq_protocol::protocol::{AMQPClass, basic};
        use bourse_tests::raw::RawClient;

        let broker = TestBroker::start().await;
        let recovers = [
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
                requeue: false,
            })),
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: false,
            })),
        ];
        for (i, recover) in recovers.into_iter().enumerate() {
            let (conn, ch) = broker.channel().await;
            let q = declare(&ch, "recover-no-requeue").await;
            publish(&ch, "", &q, b"kept").await;
            wait_ready(&ch, &q, 1).await;
            let (mut raw, _) = RawClient::open(broker.addr()).await;
            raw.open_channel(1).await;
            let get = basic::Get {
                queue: q.as_str().into(),
                no_ack: false,
            };
            raw.send_method(1, AMQPClass::Basic(basic::AMQPMethod::Get(get)))
                .await
                .unwrap();
            raw.send_method(1, recover).await.unwrap();
            let reason = raw.expect_connection_close_code(540).await;
            assert_eq!(
                reason.text, "NOT_IMPLEMENTED - requeue=false",
                "recover #{i}"
            );
            assert_eq!(reason.class_id, 60, "recover #{i}: {reason:?}");
            wait_ready(&ch, &q, 1).await;
            drop(conn);
        }
    })
    .await;
}

/// On the wire, basic.recover-ok comes before the redeliveries, as in RabbitMQ (the channel
/// replies, then the queues redeliver). lapin relies on this: it drops the deliveries it has
/// buffered when recover-ok arrives.
#[tokio::test]
async fn recover_ok_precedes_redeliveries_on_the_wire() {
    bounded(async {
        use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
        use amq_protocol::protocol::{AMQPClass, basic, queue};
        use bourse_tests::raw::{RawClient, basic_consume, basic_publish, queue_declare};

        let broker = TestBroker::start().await;
        let (mut raw, _) = RawClient::open(broker.addr()).await;
        raw.open_channel(1).await;
        let q = uniq("raw-recover");
        raw.send_method(1, queue_declare(&q)).await.unwrap();
        match raw.recv_method().await.expect("queue.declare-ok") {
            (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
        raw.send_method(1, basic_consume(&q, "c", false))
            .await
            .unwrap();
        match raw.recv_method().await.expect("basic.consume-ok") {
            (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {}
            other => panic!("expected basic.consume-ok, got {other:?}"),
        }
        for body in [b"m0", b"m1"] {
            raw.send_method(1, basic_publish("", &q)).await.unwrap();
            let header = AMQPContentHeader {
                class_id: 60,
                body_size: 2,
                properties: BasicProperties::default(),
            };
            raw.send_frame(&AMQPFrame::Header(1, header)).await.unwrap();
            raw.send_frame(&AMQPFrame::Body(1, body.to_vec()))
                .await
                .unwrap();
        }

        /// The basic methods received on channel 1 until `n` message bodies have arrived and, if
        /// `recover_ok`, a recover-ok too.
        async fn methods_until(
            raw: &mut RawClient,
            n: usize,
            recover_ok: bool,
        ) -> Vec<basic::AMQPMethod> {
            let mut seen = Vec::new();
            let mut bodies = 0;
            let mut ok_seen = !recover_ok;
            while bodies < n || !ok_seen {
                match raw.recv_frame().await.expect("frame") {
                    AMQPFrame::Method(1, AMQPClass::Basic(m)) => {
                        ok_seen |= matches!(m, basic::AMQPMethod::RecoverOk(_));
                        seen.push(m);
                    }
                    AMQPFrame::Body(1, _) => bodies += 1,
                    AMQPFrame::Header(..) | AMQPFrame::Heartbeat => {}
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            seen
        }

        let first = methods_until(&mut raw, 2, false).await;
        assert!(
            first
                .iter()
                .all(|m| matches!(m, basic::AMQPMethod::Deliver(d) if !d.redelivered))
        );
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        )
        .await
        .unwrap();
        let after = methods_until(&mut raw, 2, true).await;
        let names: Vec<&str> = after
            .iter()
            .map(|m| match m {
                basic::AMQPMethod::RecoverOk(_) => "recover-ok",
                basic::AMQPMethod::Deliver(d) if d.redelivered => "deliver(redelivered)",
                basic::AMQPMethod::Deliver(_) => "deliver",
                _ => "other",
            })
            .collect();
        assert_eq!(
            names,
            ["recover-ok", "deliver(redelivered)", "deliver(redelivered)"],
            "recover-ok first, then the redeliveries"
        );
    })
    .await;
}

/// Acks are settled in their queue when the broker's read turn ends, but every other method
/// sees them as settled: a client that writes acks and basic.recover (or a bad ack) in one
/// write gets exactly what it would get had it written them one at a time.
#[tokio::test]
async fn acks_written_together_with_other_methods_take_effect_in_order() {
    bounded(async {
        use amq_protocol::frame::AMQPFrame;
        use amq_protocol::protocol::{AMQPClass, basic, queue};
        use bourse_tests::raw::{RawClient, basic_consume, encode_frame, queue_declare};

        let broker = TestBroker::start().await;
        let (mut raw, _) = RawClient::open(broker.addr()).await;
        raw.open_channel(1).await;
        let q = uniq("raw-acks");
        raw.send_method(1, queue_declare(&q)).await.unwrap();
        match raw.recv_method().await.expect("queue.declare-ok") {
            (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
        for i in 0..5 {
            raw.publish(1, "", &q, format!("m{i}").as_bytes())
                .await
                .unwrap();
        }
        raw.send_method(1, basic_consume(&q, "c", false))
            .await
            .unwrap();

        /// The (delivery tag, redelivered, body) of the next `n` deliveries on channel 1.
        async fn deliveries(raw: &mut RawClient, n: usize) -> Vec<(u64, bool, Vec<u8>)> {
            let mut out = Vec::new();
            let mut current = None;
            while out.len() < n {
                match raw.recv_frame().await.expect("frame") {
                    AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                        current = Some((d.delivery_tag, d.redelivered));
                    }
                    AMQPFrame::Body(1, body) => {
                        let (tag, redelivered) = current.take().expect("a body after a deliver");
                        out.push((tag, redelivered, body));
                    }
                    AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
                    | AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_)))
                    | AMQPFrame::Header(..)
                    | AMQPFrame::Heartbeat => {}
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            out
        }
        fn ack(tag: u64, multiple: bool) -> Vec<u8> {
            encode_frame(&AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple,
                })),
            ))
        }

        let first = deliveries(&mut raw, 5).await;
        assert_eq!(
            first.iter().map(|d| d.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        // Three acks and a recover in one write: only m3 and m4 come back.
        let mut bytes = ack(1, false);
        bytes.extend(ack(3, true));
        bytes.extend(encode_frame(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        )));
        raw.send_bytes(&bytes).await.unwrap();
        let again = deliveries(&mut raw, 2).await;
        let bodies: Vec<(bool, &[u8])> = again.iter().map(|d| (d.1, &d.2[..])).collect();
        assert_eq!(bodies, [(true, &b"m3"[..]), (true, &b"m4"[..])]);
        // A good ack, then an unknown tag, in one write: 406 closes the channel, the good ack
        // counts (m3 is gone) and the other unacked message (m4) is requeued.
        let mut bytes = ack(again[0].0, false);
        bytes.extend(ack(999, false));
        raw.send_bytes(&bytes).await.unwrap();
        let close = raw.expect_channel_close(1).await;
        assert_eq!(close.code, PRECONDITION_FAILED);
        let (_conn, ch) = broker.channel().await;
        wait_ready(&ch, &q, 1).await;
        let left = get(&ch, &q).await.expect("m4 requeued");
        assert_eq!(left.delivery.data, b"m4");
        assert_eq!(left.message_count, 0, "m3 was acked before the bad tag");
    })
    .await;
}
