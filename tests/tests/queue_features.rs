//! The RabbitMQ queue features through lapin: message TTL (per queue and per message, expiry
//! from the head only), queue expiry, length limits and overflow modes, priority queues, single
//! active consumer, the consumer (acknowledgement) timeout, and declare-argument validation.
//! Dead-lettering and direct reply-to have their own files.
//!
//! Timing-dependent checks use short TTLs (tens to hundreds of ms) and poll for the outcome
//! with a bound, so they neither sleep long nor flake on a slow machine.

use std::time::Duration;

use bourse_tests::TestBroker;
use bourse_tests::raw::{reply_code, within};
use bourse_tests::wasm::{assert_error, confirm_channel, publish, session, table, text};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer, Event};

/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(30);
/// How long a poll for an expected state may take.
const SETTLE: Duration = Duration::from_secs(5);
/// How long a consumer must stay silent to count as "received nothing".
const QUIET: Duration = Duration::from_millis(300);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}

fn int(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

async fn try_declare_queue(
    ch: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<lapin::Queue, lapin::Error> {
    within(ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)).await
}

async fn declare_queue(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    try_declare_queue(ch, name, table(args))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// Ready messages of `queue`, by passive declare (which does not consume anything).
async fn ready(ch: &Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(ch.queue_declare(queue.into(), options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("passive declare {queue}: {e}"))
        .message_count()
}

/// Polls until `queue` holds exactly `n` ready messages.
async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let count = ready(ch, queue).await;
        if count == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue}: expected {n} ready messages, still {count} after {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(ch: &Channel, queue: &str, body: &str, properties: BasicProperties) -> Confirmation {
    publish(ch, "", queue, body.as_bytes(), properties, false).await
}

async fn send_acked(ch: &Channel, queue: &str, body: &str, properties: BasicProperties) {
    match send(ch, queue, body, properties).await {
        Confirmation::Ack(None) => {}
        other => panic!("publish {body:?} to {queue}: expected a plain ack, got {other:?}"),
    }
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
}

/// Every ready message's body, taken with no-ack.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(msg) = get(ch, queue).await {
        out.push(String::from_utf8_lossy(&msg.delivery.data).into_owned());
    }
    out
}

async fn consume(ch: &Channel, queue: &str, tag: &str, args: FieldTable) -> Consumer {
    within(ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        args,
    ))
    .await
    .unwrap_or_else(|e| panic!("consume {queue} as {tag}: {e}"))
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within(consumer.next())
        .await
        .expect("consumer stream open")
        .expect("delivery")
}

/// The next delivery within [`QUIET`], if any.
async fn maybe_next(consumer: &mut Consumer) -> Option<Delivery> {
    match tokio::time::timeout(QUIET, consumer.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        _ => None,
    }
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

/// Whether `queue` still exists, without touching its x-expires lease (a declare or basic.get
/// would renew it): a mandatory publish to it comes back only if it is gone.
async fn exists_untouched(ch: &Channel, queue: &str) -> bool {
    match publish(ch, "", queue, b"probe", BasicProperties::default(), true).await {
        Confirmation::Ack(None) => true,
        Confirmation::Ack(Some(_)) => false,
        other => panic!("probe publish to {queue}: {other:?}"),
    }
}

async fn new_session(broker: &TestBroker) -> (Connection, Channel) {
    session(broker).await
}

// ---------------------------------------------------------------------------------------------
// Message TTL

#[tokio::test]
async fn queue_ttl_drops_expired_messages_without_a_consumer() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "ttl", &[("x-message-ttl", int(150))]).await;
        for i in 0..3 {
            send_acked(&ch, "ttl", &format!("m{i}"), BasicProperties::default()).await;
        }
        assert_eq!(ready(&ch, "ttl").await, 3, "not expired yet");
        // Nobody consumes or polls with basic.get: the queue's timer removes them.
        wait_ready(&ch, "ttl", 0).await;
    })
    .await;
}

#[tokio::test]
async fn per_message_expiration_and_queue_ttl_the_sooner_wins() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "mixed", &[("x-message-ttl", int(60_000))]).await;
        send_acked(&ch, "mixed", "short", expiring("100")).await;
        declare_queue(&ch, "plain", &[]).await;
        send_acked(&ch, "plain", "short", expiring("100")).await;
        send_acked(&ch, "plain", "forever", BasicProperties::default()).await;
        wait_ready(&ch, "mixed", 0).await;
        wait_ready(&ch, "plain", 1).await;
        assert_eq!(drain(&ch, "plain").await, ["forever"]);
    })
    .await;
}

#[tokio::test]
async fn messages_expire_only_from_the_head() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "head", &[]).await;
        send_acked(&ch, "head", "long", expiring("60000")).await;
        send_acked(&ch, "head", "short", expiring("50")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // RabbitMQ only expires from the head: "short" waits behind "long".
        assert_eq!(ready(&ch, "head").await, 2);
        // Once "long" is gone, the expired "short" at the head goes without any consumer.
        assert_eq!(
            get(&ch, "head").await.map(|m| m.delivery.data),
            Some(b"long".to_vec())
        );
        wait_ready(&ch, "head", 0).await;
    })
    .await;
}

#[tokio::test]
async fn ttl_zero_reaches_only_a_consumer_that_is_waiting() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "now", &[("x-message-ttl", int(0))]).await;
        send_acked(&ch, "now", "nobody-waits", BasicProperties::default()).await;
        wait_ready(&ch, "now", 0).await;
        let consumer_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&consumer_ch, "now", "c", FieldTable::default()).await;
        send_acked(&ch, "now", "delivered", BasicProperties::default()).await;
        assert_eq!(body(&next(&mut consumer).await), "delivered");
    })
    .await;
}

#[tokio::test]
async fn requeued_messages_keep_their_expiry() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "keep", &[("x-message-ttl", int(200))]).await;
        send_acked(&ch, "keep", "m", BasicProperties::default()).await;
        let consumer_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&consumer_ch, "keep", "c", FieldTable::default()).await;
        let d = next(&mut consumer).await;
        within(consumer_ch.basic_cancel("c".into(), BasicCancelOptions::default()))
            .await
            .expect("cancel");
        tokio::time::sleep(Duration::from_millis(300)).await;
        within(d.acker.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }))
        .await
        .expect("nack");
        // Back at the head with its original (passed) deadline: dropped, not redelivered.
        wait_ready(&ch, "keep", 0).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_expiration_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "exp", &[]).await;
        let cases = [
            ("abc", "invalid expiration 'abc': no_integer"),
            ("-1", "invalid expiration '-1': {value_negative,-1}"),
            ("10s", "invalid expiration '10s': {leftover_string,\"s\"}"),
        ];
        let mut ch = ch;
        for (expiration, text) in cases {
            let confirm = within(ch.basic_publish(
                "".into(),
                "exp".into(),
                Default::default(),
                b"x",
                expiring(expiration),
            ))
            .await
            .expect("basic.publish");
            assert_error(within(confirm).await, 406, text);
            ch = confirm_channel(&conn).await;
        }
        assert_eq!(ready(&ch, "exp").await, 0, "nothing was enqueued");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Queue expiry (x-expires)

#[tokio::test]
async fn unused_queue_expires() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "short-lived", &[("x-expires", int(200))]).await;
        // Messages do not count as use.
        assert!(exists_untouched(&ch, "short-lived").await);
        let gone = async {
            while exists_untouched(&ch, "short-lived").await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(SETTLE, gone)
            .await
            .expect("the unused queue expired");
    })
    .await;
}

#[tokio::test]
async fn consumers_declares_and_gets_keep_a_queue_alive() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "leased", &[("x-expires", int(800))]).await;
        // A consumer keeps it alive however long it stays.
        let consumer_ch = within(conn.create_channel()).await.expect("channel");
        let _consumer = consume(&consumer_ch, "leased", "c", FieldTable::default()).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            exists_untouched(&ch, "leased").await,
            "alive with a consumer"
        );
        within(consumer_ch.basic_cancel("c".into(), BasicCancelOptions::default()))
            .await
            .expect("cancel");
        // Renewing by redeclare and basic.get, each well within the lease.
        for round in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if round % 2 == 0 {
                declare_queue(&ch, "leased", &[("x-expires", int(800))]).await;
            } else {
                get(&ch, "leased").await;
            }
        }
        assert!(exists_untouched(&ch, "leased").await, "alive while used");
        let gone = async {
            while exists_untouched(&ch, "leased").await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(SETTLE, gone)
            .await
            .expect("expired once unused");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Length limits

#[tokio::test]
async fn max_length_drops_from_the_head() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "bounded", &[("x-max-length", int(3))]).await;
        for i in 0..5 {
            send_acked(&ch, "bounded", &format!("m{i}"), BasicProperties::default()).await;
        }
        assert_eq!(drain(&ch, "bounded").await, ["m2", "m3", "m4"]);
    })
    .await;
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "bytes", &[("x-max-length-bytes", int(10))]).await;
        for body in ["aaaa", "bbbb", "cccc", "dd"] {
            send_acked(&ch, "bytes", body, BasicProperties::default()).await;
        }
        assert_eq!(drain(&ch, "bytes").await, ["bbbb", "cccc", "dd"]);
        // A message larger than the limit does not stay either.
        send_acked(&ch, "bytes", "0123456789ab", BasicProperties::default()).await;
        assert_eq!(ready(&ch, "bytes").await, 0);
    })
    .await;
}

#[tokio::test]
async fn reject_publish_nacks_the_publisher_and_keeps_the_oldest() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(
            &ch,
            "full",
            &[
                ("x-max-length", int(2)),
                ("x-overflow", text("reject-publish")),
            ],
        )
        .await;
        send_acked(&ch, "full", "m0", BasicProperties::default()).await;
        send_acked(&ch, "full", "m1", BasicProperties::default()).await;
        assert!(
            matches!(
                send(&ch, "full", "m2", BasicProperties::default()).await,
                Confirmation::Nack(_)
            ),
            "a publish the queue refuses is nacked"
        );
        // Without confirms it is dropped silently; the channel stays usable.
        let plain = within(conn.create_channel()).await.expect("channel");
        within(plain.basic_publish(
            "".into(),
            "full".into(),
            Default::default(),
            b"m3",
            BasicProperties::default(),
        ))
        .await
        .expect("publish");
        assert_eq!(drain(&ch, "full").await, ["m0", "m1"]);
        // Room again: accepted.
        send_acked(&ch, "full", "m4", BasicProperties::default()).await;
        assert_eq!(drain(&plain, "full").await, ["m4"]);
    })
    .await;
}

#[tokio::test]
async fn reject_publish_applies_even_with_a_waiting_consumer_at_max_length_zero() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(
            &ch,
            "zero",
            &[
                ("x-max-length", int(0)),
                ("x-overflow", text("reject-publish")),
            ],
        )
        .await;
        let consumer_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&consumer_ch, "zero", "c", FieldTable::default()).await;
        assert!(matches!(
            send(&ch, "zero", "m", BasicProperties::default()).await,
            Confirmation::Nack(_)
        ));
        assert!(maybe_next(&mut consumer).await.is_none());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Priorities

fn priority(p: u8) -> BasicProperties {
    BasicProperties::default().with_priority(p)
}

#[tokio::test]
async fn priority_queue_serves_higher_priorities_first() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "prio", &[("x-max-priority", int(5))]).await;
        let published = [
            ("a", None),
            ("b", Some(5)),
            ("c", Some(1)),
            ("d", Some(9)), // above the maximum: counts as 5
            ("e", Some(1)),
            ("f", Some(0)),
        ];
        for (body, p) in published {
            let props = p.map_or_else(BasicProperties::default, priority);
            send_acked(&ch, "prio", body, props).await;
        }
        assert_eq!(drain(&ch, "prio").await, ["b", "d", "c", "e", "a", "f"]);
        // Without x-max-priority, priorities are ignored.
        declare_queue(&ch, "fifo", &[]).await;
        send_acked(&ch, "fifo", "low", priority(0)).await;
        send_acked(&ch, "fifo", "high", priority(9)).await;
        assert_eq!(drain(&ch, "fifo").await, ["low", "high"]);
    })
    .await;
}

#[tokio::test]
async fn requeue_returns_to_the_original_place_within_its_priority() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "prio-requeue", &[("x-max-priority", int(3))]).await;
        for (body, p) in [("h1", 3), ("l1", 1), ("h2", 3), ("l2", 1)] {
            send_acked(&ch, "prio-requeue", body, priority(p)).await;
        }
        let consumer_ch = within(conn.create_channel()).await.expect("channel");
        within(consumer_ch.basic_qos(3, BasicQosOptions::default()))
            .await
            .expect("qos");
        let mut consumer = consume(&consumer_ch, "prio-requeue", "c", FieldTable::default()).await;
        let got: Vec<Delivery> = vec![
            next(&mut consumer).await,
            next(&mut consumer).await,
            next(&mut consumer).await,
        ];
        assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["h1", "h2", "l1"]);
        within(consumer_ch.basic_cancel("c".into(), BasicCancelOptions::default()))
            .await
            .expect("cancel");
        within(consumer_ch.basic_nack(
            0,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ))
        .await
        .expect("nack all");
        assert_eq!(
            drain(&ch, "prio-requeue").await,
            ["h1", "h2", "l1", "l2"],
            "requeued to their places"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Single active consumer

fn consumer_priority(p: i32) -> FieldTable {
    table(&[("x-priority", AMQPValue::LongInt(p))])
}

#[tokio::test]
async fn single_active_consumer_hands_over_in_registration_and_priority_order() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(
            &ch,
            "sac",
            &[("x-single-active-consumer", AMQPValue::Boolean(true))],
        )
        .await;
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let mut first = consume(&c_ch, "sac", "first", FieldTable::default()).await;
        let mut second = consume(&c_ch, "sac", "second", FieldTable::default()).await;
        // Registered later but with a higher priority: next in line after `first`.
        let mut urgent = consume(&c_ch, "sac", "urgent", consumer_priority(5)).await;
        let q = try_declare_queue(
            &ch,
            "sac",
            table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
        )
        .await
        .expect("redeclare");
        assert_eq!(q.consumer_count(), 3, "all three are registered");
        for i in 0..3 {
            send_acked(&ch, "sac", &format!("m{i}"), BasicProperties::default()).await;
        }
        for i in 0..3 {
            let d = next(&mut first).await;
            assert_eq!(body(&d), format!("m{i}"));
            within(d.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
        assert!(maybe_next(&mut second).await.is_none(), "second waits");
        assert!(maybe_next(&mut urgent).await.is_none(), "urgent waits");

        within(c_ch.basic_cancel("first".into(), BasicCancelOptions::default()))
            .await
            .expect("cancel first");
        send_acked(&ch, "sac", "after-first", BasicProperties::default()).await;
        let d = next(&mut urgent).await;
        assert_eq!(body(&d), "after-first");
        within(d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
        assert!(maybe_next(&mut second).await.is_none());

        // The active consumer's channel closing also hands over; its unacked message is
        // redelivered to the next one.
        let u_ch = within(conn.create_channel()).await.expect("channel");
        let mut late = consume(&u_ch, "sac", "late", FieldTable::default()).await;
        within(c_ch.basic_cancel("urgent".into(), BasicCancelOptions::default()))
            .await
            .expect("cancel urgent");
        send_acked(&ch, "sac", "to-second", BasicProperties::default()).await;
        let held = next(&mut second).await;
        assert_eq!(body(&held), "to-second");
        within(c_ch.close(200, "bye".into())).await.expect("close");
        let d = next(&mut late).await;
        assert_eq!(body(&d), "to-second");
        assert!(d.redelivered);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Consumer timeout

#[tokio::test]
async fn unacked_delivery_past_the_consumer_timeout_closes_the_channel() {
    bounded(async {
        let broker = TestBroker::start_with(|c| c.consumer_timeout_ms = Some(300)).await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "slow", &[]).await;
        send_acked(&ch, "slow", "m", BasicProperties::default()).await;
        let mut events = Box::pin(conn.events_listener());
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let channel_id = c_ch.id();
        let mut consumer = consume(&c_ch, "slow", "c", FieldTable::default()).await;
        let d = next(&mut consumer).await;
        assert!(!d.redelivered);
        // Never acked: after the timeout the broker closes the channel with RabbitMQ's error.
        let error = loop {
            match within(events.next()).await {
                Some(Event::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("event stream ended without an error"),
            }
        };
        assert_eq!(reply_code(&error), Some(406), "{error}");
        assert!(
            error.to_string().contains(&format!(
                "delivery acknowledgement on channel {channel_id} timed out. Timeout value used: 300 ms"
            )),
            "{error}"
        );
        // The message was requeued, and the connection is fine.
        let m = get(&ch, "slow").await.expect("requeued");
        assert!(m.delivery.redelivered);
    })
    .await;
}

#[tokio::test]
async fn acks_within_the_consumer_timeout_keep_the_channel_open() {
    bounded(async {
        let broker = TestBroker::start_with(|c| c.consumer_timeout_ms = Some(1000)).await;
        let (conn, ch) = new_session(&broker).await;
        declare_queue(&ch, "prompt", &[]).await;
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&c_ch, "prompt", "c", FieldTable::default()).await;
        for i in 0..4 {
            send_acked(&ch, "prompt", &format!("m{i}"), BasicProperties::default()).await;
            let d = next(&mut consumer).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            within(d.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
        within(c_ch.basic_qos(1, BasicQosOptions::default()))
            .await
            .expect("channel still open");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Declare-argument validation

#[tokio::test]
async fn invalid_arguments_are_precondition_failed_with_rabbitmq_texts() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, _ch) = new_session(&broker).await;
        let cases: Vec<(Vec<(&str, AMQPValue)>, &str)> = vec![
            (
                vec![("x-max-length", int(-1))],
                "invalid arg 'x-max-length' for queue 'bad' in vhost '/': {value_negative,-1}",
            ),
            (
                vec![("x-max-length", text("ten"))],
                "invalid arg 'x-max-length' for queue 'bad' in vhost '/': \"expected integer, got longstr\"",
            ),
            (
                vec![("x-message-ttl", int(-5))],
                "invalid arg 'x-message-ttl' for queue 'bad' in vhost '/': {value_negative,-5}",
            ),
            (
                vec![("x-expires", int(0))],
                "invalid arg 'x-expires' for queue 'bad' in vhost '/': {value_zero,0}",
            ),
            (
                vec![("x-max-priority", int(300))],
                "invalid arg 'x-max-priority' for queue 'bad' in vhost '/': {max_value_exceeded,300}",
            ),
            (
                vec![("x-overflow", text("drop-tail"))],
                "invalid arg 'x-overflow' for queue 'bad' in vhost '/': invalid_overflow",
            ),
            (
                vec![("x-single-active-consumer", int(1))],
                "invalid arg 'x-single-active-consumer' for queue 'bad' in vhost '/': {unacceptable_type,long}",
            ),
            (
                vec![("x-dead-letter-routing-key", text("k"))],
                "routing_key_but_no_dlx_defined",
            ),
            (
                vec![("x-dead-letter-exchange", int(1))],
                "invalid type 'long' for arg 'x-dead-letter-exchange' in queue 'bad' in vhost '/'",
            ),
            (
                vec![("x-queue-type", text("quorum"))],
                "queue type 'quorum' is not supported by bourse (only 'classic')",
            ),
            (
                vec![("x-queue-type", text("stream"))],
                "queue type 'stream' is not supported",
            ),
            (
                vec![("x-delivery-limit", int(3))],
                "invalid arg 'x-delivery-limit' for queue 'bad' in vhost '/': argument is a quorum queue argument",
            ),
            (vec![("x-max-lenght", int(3))], "unknown argument"),
            (vec![("x-queue-mode", text("eager"))], "unsupported queue mode 'eager'"),
        ];
        for (args, needle) in cases {
            let ch = confirm_channel(&conn).await;
            assert_error(try_declare_queue(&ch, "bad", table(&args)).await, 406, needle);
        }
        let ch = confirm_channel(&conn).await;
        assert_eq!(
            within(ch.queue_declare(
                "bad".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default()
            ))
            .await
            .map(|_| ())
            .map_err(|e| reply_code(&e)),
            Err(Some(404)),
            "no queue was created by a refused declaration"
        );
    })
    .await;
}

#[tokio::test]
async fn accepted_arguments_include_hints_and_non_x_arguments() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = new_session(&broker).await;
        let args = vec![
            ("x-queue-type", text("classic")),
            ("x-queue-mode", text("lazy")),
            ("x-queue-version", int(2)),
            ("x-message-ttl", AMQPValue::LongUInt(60_000)),
            ("x-max-length", AMQPValue::ShortInt(100)),
            ("x-overflow", text("drop-head")),
            ("x-max-priority", AMQPValue::ShortShortUInt(10)),
            ("x-single-active-consumer", AMQPValue::Boolean(false)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("elsewhere")),
            ("application-tag", text("ignored like RabbitMQ does")),
        ];
        try_declare_queue(&ch, "good", table(&args))
            .await
            .expect("all accepted");
        // Redeclaring with the same arguments is fine; a different value is 406.
        try_declare_queue(&ch, "good", table(&args))
            .await
            .expect("same again");
        // As in RabbitMQ, integer types do not matter, only values, and a missing x-queue-type
        // means classic.
        let mut same: Vec<(&str, AMQPValue)> = args
            .iter()
            .filter(|(k, _)| *k != "x-queue-type")
            .cloned()
            .collect();
        for (k, v) in same.iter_mut() {
            if *k == "x-max-length" {
                *v = AMQPValue::LongInt(100);
            }
        }
        try_declare_queue(&ch, "good", table(&same))
            .await
            .expect("equivalent with other integer types");
        for (k, v) in same.iter_mut() {
            if *k == "x-max-length" {
                *v = int(5);
            }
        }
        assert_error(
            try_declare_queue(&ch, "good", table(&same)).await,
            406,
            "inequivalent arg 'x-max-length' for queue 'good' in vhost '/': received the value \
             '5' of type 'long' but current is the value '100' of type 'short'",
        );
    })
    .await;
}
