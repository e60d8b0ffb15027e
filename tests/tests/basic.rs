//! The basic class over real TCP with lapin: qos, consume/cancel, publish errors and returns,
//! get, ack/nack/reject, recover, and requeueing of unacked messages. RabbitMQ 3.10 is the
//! reference for every expected reply code.

use std::time::Duration;

use bourse_tests::{TestBroker, eventually, uniq};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer, Event};

/// Upper bound for anything the broker should do promptly.
const WAIT: Duration = Duration::from_secs(5);
/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs a whole test under one deadline, so a broker that stops answering an unwrapped call
/// fails the test instead of hanging it.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}
/// How long a consumer must stay silent to count as "received nothing more".
const QUIET: Duration = Duration::from_millis(300);

const PRECONDITION_FAILED: u16 = 406;
const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const NO_ROUTE: u16 = 312;
const NOT_ALLOWED: u16 = 530;
const NOT_IMPLEMENTED: u16 = 540;

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
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

/// Waits for the next channel or connection error event and returns its reply code.
async fn next_error_code(events: &mut (impl futures_lite::Stream<Item = Event> + Unpin)) -> u16 {
    loop {
        match within("error event", events.next()).await {
            Some(Event::Error(e)) => {
                return reply_code(&e).unwrap_or_else(|| panic!("not a protocol error: {e:?}"));
            }
            Some(_) => continue,
            None => panic!("event stream ended without an error"),
        }
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

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish")
    .await
    .expect("publish confirmation");
}

/// Ready-message count as reported by a passive queue.declare.
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

/// Polls the ready count until it equals `n`.
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

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_with(
        ch,
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
    args: FieldTable,
) -> Consumer {
    ch.basic_consume(queue.into(), tag.into(), options, args)
        .await
        .expect("basic.consume")
}

async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    within("delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Collects deliveries until the consumer has been silent for [`QUIET`].
async fn drain(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(next) = tokio::time::timeout(QUIET, consumer.next()).await {
        match next {
            Some(Ok(d)) => out.push(d),
            Some(Err(e)) => panic!("consumer error: {e:?}"),
            None => break,
        }
        assert!(out.len() < 10_000, "runaway consumer");
    }
    out
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}

async fn publish_n(ch: &Channel, queue: &str, prefix: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("{prefix}{i}").as_bytes()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// qos

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
// publish errors and returns

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_with_no_route() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();

        for (exchange, key) in [("", "no-such-queue"), ("amq.direct", "unbound-key")] {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    b"lost",
                    BasicProperties::default().with_message_id("m-1".into()),
                )
                .await
                .unwrap();
            match within("confirm", confirm).await.expect("confirm") {
                Confirmation::Ack(Some(ret)) => {
                    assert_eq!(ret.reply_code, NO_ROUTE, "{exchange:?}");
                    assert_eq!(ret.delivery.exchange.as_str(), exchange);
                    assert_eq!(ret.delivery.routing_key.as_str(), key);
                    assert_eq!(ret.delivery.data, b"lost", "returned body");
                    assert_eq!(
                        ret.delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str()),
                        Some("m-1"),
                        "returned properties"
                    );
                }
                other => panic!("expected ack carrying a basic.return, got {other:?}"),
            }
        }

        // Without mandatory an unroutable message is silently dropped (and still acked).
        let confirm = ch
            .basic_publish(
                "".into(),
                "no-such-queue".into(),
                BasicPublishOptions::default(),
                b"dropped",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            within("confirm", confirm).await.unwrap(),
            Confirmation::Ack(None)
        );
    })
    .await;
}

#[tokio::test]
async fn publish_to_missing_exchange_closes_channel_with_not_found() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let ch = conn.create_channel().await.unwrap();
        ch.basic_publish(
            "no-such-exchange".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(next_error_code(&mut events).await, NOT_FOUND);
        assert!(
            eventually(WAIT, || !ch.status().connected()).await,
            "channel closed"
        );
        // Only the channel: the connection still works.
        let ch2 = conn
            .create_channel()
            .await
            .expect("new channel after channel error");
        let q = declare(&ch2, "after-404").await;
        publish(&ch2, "", &q, b"ok").await;
    })
    .await;
}

#[tokio::test]
async fn immediate_publish_is_not_implemented() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "immediate").await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions {
                    immediate: true,
                    ..Default::default()
                },
                b"now",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert_code(
            within("confirm", confirm).await,
            NOT_IMPLEMENTED,
            "immediate=true",
        );
        // 540 is a hard error: the connection is closed.
        assert!(
            eventually(WAIT, || !conn.status().connected()).await,
            "connection should be closed after 540"
        );
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

/// On the wire, basic.recover-ok comes before the redeliveries, as in RabbitMQ (the channel
/// replies, then the queues redeliver). lapin relies on this: it drops the deliveries it has
/// buffered when recover-ok arrives.
#[tokio::test]
async fn recover_ok_precedes_redeliveries_on_the_wire() {
    bounded(async {
        use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
        use amq_protocol::protocol::{AMQPClass, basic, queue};
        use bourse_tests::raw::{RawClient, basic_publish};

        let broker = TestBroker::start().await;
        let (mut raw, _) = RawClient::open(broker.addr()).await;
        raw.open_channel(1).await;
        let q = uniq("raw-recover");
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
        let consume = basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
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
