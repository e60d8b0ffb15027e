//! Publisher confirms and transactions over real TCP with lapin, with RabbitMQ 3.10 as the
//! reference: confirm.select, ack numbering, tx of publishes and acks, and the mode conflicts.

use std::time::Duration;

use bourse_tests::{TestBroker, uniq};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Consumer};

const WAIT: Duration = Duration::from_secs(5);
/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs a whole test under one deadline, so a broker that stops answering an unwrapped call
/// fails the test instead of hanging it.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}
const QUIET: Duration = Duration::from_millis(300);
const PRECONDITION_FAILED: u16 = 406;
const NO_ROUTE: u16 = 312;

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

fn assert_code<T: std::fmt::Debug>(res: lapin::Result<T>, code: u16, what: &str) {
    match res {
        Ok(v) => panic!("{what}: expected AMQP error {code}, got Ok({v:?})"),
        Err(e) => assert_eq!(reply_code(&e), Some(code), "{what}: wrong error {e:?}"),
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

async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = ready_count(ch, queue).await;
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue}: expected {n} ready messages, still {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes without waiting for a confirm.
async fn send(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> lapin::PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish")
}

/// A synchronous round trip on `ch`: once it returns, the broker has processed every frame
/// sent on `ch` before it.
async fn sync(ch: &Channel) {
    within("round trip", ch.basic_qos(0, BasicQosOptions::default()))
        .await
        .expect("basic.qos round trip");
}

async fn drain(consumer: &mut Consumer) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Ok(next) = tokio::time::timeout(QUIET, consumer.next()).await {
        match next {
            Some(Ok(d)) => out.push(d),
            Some(Err(e)) => panic!("consumer error: {e:?}"),
            None => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// confirms

#[tokio::test]
async fn confirm_select_acks_routed_and_unrouted_messages() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "confirm").await;
        within(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .expect("confirm.select");
        assert!(ch.status().confirm());

        let routed = send(&ch, "", &q, b"routed").await;
        assert_eq!(
            within("routed confirm", routed).await.unwrap(),
            Confirmation::Ack(None)
        );
        let unrouted = send(&ch, "amq.direct", "nobody-bound", b"unrouted").await;
        assert_eq!(
            within("unrouted confirm", unrouted).await.unwrap(),
            Confirmation::Ack(None),
            "an unroutable message is confirmed too"
        );
        wait_ready(&ch, &q, 1).await;
    })
    .await;
}

/// lapin numbers publishes 1, 2, 3... and resolves a confirm only when the broker acks that
/// tag, so each in-order resolution checks the broker's numbering. A basic.return precedes
/// the ack of the same message, so the return must land on exactly the unroutable publishes.
#[tokio::test]
async fn confirm_delivery_tags_follow_publish_order() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "order").await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..20u32 {
            let unroutable = i % 3 == 1;
            let key = if unroutable { "nowhere" } else { q.as_str() };
            let body = format!("m{i}");
            let confirm = ch
                .basic_publish(
                    "".into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap();
            match within("confirm", confirm).await.expect("confirm") {
                Confirmation::Ack(None) if !unroutable => {}
                Confirmation::Ack(Some(ret)) if unroutable => {
                    assert_eq!(ret.reply_code, NO_ROUTE);
                    assert_eq!(
                        ret.delivery.data,
                        body.as_bytes(),
                        "return matches publish {i}"
                    );
                }
                other => panic!("publish {i} (unroutable={unroutable}): got {other:?}"),
            }
        }
        // Tags keep counting across routed and unrouted publishes: a burst now confirms as 21..=30.
        let confirms: Vec<_> = {
            let mut v = Vec::new();
            for i in 0..10 {
                v.push(send(&ch, "", &q, format!("b{i}").as_bytes()).await);
            }
            v
        };
        for c in confirms {
            assert!(within("burst confirm", c).await.unwrap().is_ack());
        }
        let returned = within("wait_for_confirms", ch.wait_for_confirms())
            .await
            .unwrap();
        assert!(returned.is_empty());
    })
    .await;
}

#[tokio::test]
async fn thousand_publishes_are_all_confirmed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let q = declare(&ch, "bulk").await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut confirms = Vec::with_capacity(1000);
        for i in 0..1000u32 {
            confirms.push(send(&ch, "", &q, &i.to_be_bytes()).await);
        }
        let all = async {
            for c in confirms {
                let conf = c.await.expect("confirm");
                assert_eq!(conf, Confirmation::Ack(None));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("1000 confirms within 30 s");
        wait_ready(&ch, &q, 1000).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// tx

#[tokio::test]
async fn tx_publishes_are_invisible_until_commit_and_dropped_on_rollback() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let tx = conn.create_channel().await.unwrap();
        let observer = conn.create_channel().await.unwrap();
        let q = declare(&observer, "tx-pub").await;
        within("tx.select", tx.tx_select())
            .await
            .expect("tx.select");

        for i in 0..3 {
            send(&tx, "", &q, format!("t{i}").as_bytes()).await;
        }
        sync(&tx).await;
        // A marker from another channel shows the queue is live and holds nothing else.
        send(&observer, "", &q, b"marker").await;
        wait_ready(&observer, &q, 1).await;
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            ready_count(&observer, &q).await,
            1,
            "uncommitted publishes are invisible"
        );

        within("tx.commit", tx.tx_commit())
            .await
            .expect("tx.commit");
        wait_ready(&observer, &q, 4).await;
        let order: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                let m = observer
                    .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap()
                    .expect("get-ok");
                v.push(m.delivery.data.clone());
            }
            v
        };
        assert_eq!(order, [&b"marker"[..], b"t0", b"t1", b"t2"]);

        for i in 0..2 {
            send(&tx, "", &q, format!("r{i}").as_bytes()).await;
        }
        within("tx.rollback", tx.tx_rollback())
            .await
            .expect("tx.rollback");
        within("empty tx.commit", tx.tx_commit())
            .await
            .expect("commit after rollback");
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            ready_count(&observer, &q).await,
            0,
            "rolled-back publishes are discarded"
        );

        // The channel stays transactional after commit and rollback.
        send(&tx, "", &q, b"later").await;
        tx.tx_commit().await.unwrap();
        wait_ready(&observer, &q, 1).await;
    })
    .await;
}

#[tokio::test]
async fn tx_ack_takes_effect_only_on_commit() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "tx-ack").await;
        for i in 0..3 {
            send(&ch, "", &q, format!("m{i}").as_bytes()).await;
        }
        wait_ready(&ch, &q, 3).await;

        // With prefetch 1 an applied ack frees credit for the next delivery; a pending one does not.
        ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
        ch.tx_select().await.unwrap();
        let mut c = ch
            .basic_consume(
                q.as_str().into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let first = drain(&mut c).await;
        assert_eq!(first.len(), 1);
        ch.basic_ack(first[0].delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        assert!(
            drain(&mut c).await.is_empty(),
            "ack inside a tx is not applied before commit"
        );

        within("tx.commit", ch.tx_commit())
            .await
            .expect("tx.commit");
        let second = drain(&mut c).await;
        assert_eq!(second.len(), 1, "commit applies the ack and frees the slot");
        assert_eq!(second[0].data, b"m1");
        within("tx.commit", ch.tx_commit())
            .await
            .expect("tx.commit");
    })
    .await;
}

#[tokio::test]
async fn tx_rollback_keeps_acked_messages_unacked() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "tx-rb").await;
        for i in 0..3 {
            send(&ch, "", &q, format!("m{i}").as_bytes()).await;
        }
        wait_ready(&ch, &q, 3).await;
        ch.tx_select().await.unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let m = ch
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .expect("get-ok");
            last = m.delivery.delivery_tag;
        }
        ch.basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .unwrap();
        within("tx.rollback", ch.tx_rollback())
            .await
            .expect("tx.rollback");

        // Rollback restores them as unacked: acking one again is legal (no 406), and the two
        // never re-acked come back when the channel closes.
        ch.basic_ack(1, BasicAckOptions::default()).await.unwrap();
        ch.tx_commit().await.expect("commit of the re-ack");
        ch.close(200, "bye".into()).await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        wait_ready(&ch2, &q, 2).await;
        let m = ch2
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("requeued");
        assert_eq!(
            m.delivery.data, b"m1",
            "m0 was acked by the commit, m1 and m2 requeued"
        );
        assert!(m.delivery.redelivered);
    })
    .await;
}

#[tokio::test]
async fn tx_commit_or_rollback_without_select_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        assert_code(
            within("tx.commit", ch.tx_commit()).await,
            PRECONDITION_FAILED,
            "tx.commit",
        );
        let ch = conn.create_channel().await.expect("connection survives");
        assert_code(
            within("tx.rollback", ch.tx_rollback()).await,
            PRECONDITION_FAILED,
            "tx.rollback",
        );
        conn.create_channel().await.expect("connection survives");
    })
    .await;
}

#[tokio::test]
async fn confirm_and_tx_modes_are_exclusive() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;

        let ch = conn.create_channel().await.unwrap();
        ch.tx_select().await.unwrap();
        assert_code(
            within(
                "confirm.select",
                ch.confirm_select(ConfirmSelectOptions::default()),
            )
            .await,
            PRECONDITION_FAILED,
            "confirm.select on a transactional channel",
        );

        let ch = conn.create_channel().await.expect("connection survives");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        assert_code(
            within("tx.select", ch.tx_select()).await,
            PRECONDITION_FAILED,
            "tx.select on a confirm channel",
        );

        // Repeating the same mode is fine.
        let ch = conn.create_channel().await.expect("connection survives");
        ch.tx_select().await.unwrap();
        ch.tx_select().await.expect("tx.select twice");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select twice");
    })
    .await;
}

/// The same numbering checked on the wire with the raw client: every publish from 1 to n is
/// acked exactly once (singly or by a `multiple` ack), never a tag outside 1..=n, never a nack.
#[tokio::test]
async fn confirm_acks_cover_tags_one_to_n_exactly_once_on_the_wire() {
    bounded(async {
        use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
        use amq_protocol::protocol::{AMQPClass, basic, confirm, queue};
        use bourse_tests::raw::{RawClient, basic_publish};

        const N: usize = 200;
        let broker = TestBroker::start().await;
        let (mut raw, _) = RawClient::open(broker.addr()).await;
        raw.open_channel(1).await;
        let q = uniq("raw-confirm");
        raw.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q.as_str().into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await
        .unwrap();
        match raw.recv_method().await.expect("queue.declare-ok") {
            (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
        raw.send_method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await
        .unwrap();
        match raw.recv_method().await.expect("confirm.select-ok") {
            (1, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => {}
            other => panic!("expected confirm.select-ok, got {other:?}"),
        }

        for i in 0..N {
            // Every third message is unroutable: those are confirmed too.
            let key = if i % 3 == 2 { "nowhere" } else { q.as_str() };
            raw.send_method(1, basic_publish("", key)).await.unwrap();
            let header = AMQPContentHeader {
                class_id: 60,
                body_size: 2,
                properties: BasicProperties::default(),
            };
            raw.send_frame(&AMQPFrame::Header(1, header)).await.unwrap();
            raw.send_frame(&AMQPFrame::Body(1, (i as u16).to_be_bytes().to_vec()))
                .await
                .unwrap();
        }

        let mut acked = vec![false; N + 1];
        let mut covered = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        while covered < N {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = raw
                .recv_frame_within(left)
                .await
                .unwrap_or_else(|e| panic!("after {covered} of {N} confirms: {e}"));
            let ack = match frame {
                AMQPFrame::Heartbeat => continue,
                AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => ack,
                other => panic!("expected basic.ack, got {other:?}"),
            };
            let tag = usize::try_from(ack.delivery_tag).unwrap();
            assert!((1..=N).contains(&tag), "ack for tag {tag} outside 1..={N}");
            let range = if ack.multiple { 1..=tag } else { tag..=tag };
            assert!(
                !acked[tag],
                "tag {tag} acked twice (multiple={})",
                ack.multiple
            );
            for t in range {
                if !acked[t] {
                    acked[t] = true;
                    covered += 1;
                }
            }
        }
        let extra = raw.recv_frame_within(QUIET).await;
        assert!(
            !matches!(extra, Ok(AMQPFrame::Method(..))),
            "nothing after the last confirm, got {extra:?}"
        );
    })
    .await;
}
