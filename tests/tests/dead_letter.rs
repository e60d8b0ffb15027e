//! Dead-lettering through lapin, checked against RabbitMQ 3.10's behaviour: the three reasons
//! (`rejected`, `expired`, `maxlen`, including reject-publish-dlx), the `x-death` header and
//! `x-first-death-*`, `x-dead-letter-routing-key`, the removed `expiration`, counts that grow
//! when a message dies again in the same queue for the same reason, and cycles broken unless a
//! rejection happened on the way.

use std::time::Duration;

use bourse_tests::TestBroker;
use bourse_tests::raw::within;
use bourse_tests::wasm::{publish, session, table, text};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind};

const TEST_LIMIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(5);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}

fn int(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

async fn declare_queue(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    within(ch.queue_declare(name.into(), QueueDeclareOptions::default(), table(args)))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
}

async fn send(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    match publish(ch, exchange, key, body.as_bytes(), props, false).await {
        Confirmation::Ack(None) => {}
        other => panic!("publish {body:?}: expected ack, got {other:?}"),
    }
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
}

/// Polls `queue` with basic.get until a message arrives.
async fn get_eventually(ch: &Channel, queue: &str) -> Delivery {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if let Some(m) = get(ch, queue).await {
            return m.delivery;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived in {queue} within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn consume(ch: &Channel, queue: &str) -> Consumer {
    within(ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within(consumer.next())
        .await
        .expect("consumer stream open")
        .expect("delivery")
}

fn ltext(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name)
}

/// The `x-death` entries of a delivery, most recent first.
fn deaths(d: &Delivery) -> Vec<&std::collections::BTreeMap<ShortString, AMQPValue>> {
    match header(d, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|e| match e {
                AMQPValue::FieldTable(t) => t.inner(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

fn count(entry: &std::collections::BTreeMap<ShortString, AMQPValue>) -> i64 {
    match entry.get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("count is not a long: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rejected_message_is_dead_lettered_with_x_death() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_exchange(&ch, "dlx", ExchangeKind::Direct).await;
        declare_queue(&ch, "dead", &[]).await;
        bind(&ch, "dead", "dlx", "work").await;
        declare_exchange(&ch, "jobs", ExchangeKind::Direct).await;
        declare_queue(&ch, "work", &[("x-dead-letter-exchange", text("dlx"))]).await;
        bind(&ch, "work", "jobs", "work").await;

        let mut cc = FieldTable::default();
        cc.insert(
            "CC".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![ltext("other")])),
        );
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_correlation_id("c-1".into())
            .with_headers(cc);
        send(&ch, "jobs", "work", "job", props).await;
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&c_ch, "work").await;
        let d = next(&mut consumer).await;
        within(d.acker.reject(BasicRejectOptions { requeue: false }))
            .await
            .expect("reject");

        let dead = get_eventually(&ch, "dead").await;
        assert_eq!(dead.data, b"job");
        assert_eq!(
            dead.exchange.as_str(),
            "dlx",
            "delivered from the dead-letter exchange"
        );
        assert_eq!(
            dead.routing_key.as_str(),
            "work",
            "original routing key kept"
        );
        assert_eq!(
            dead.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        assert_eq!(
            dead.properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("c-1")
        );
        assert_eq!(
            header(&dead, "x-first-death-reason"),
            Some(&ltext("rejected"))
        );
        assert_eq!(header(&dead, "x-first-death-queue"), Some(&ltext("work")));
        assert_eq!(
            header(&dead, "x-first-death-exchange"),
            Some(&ltext("jobs"))
        );
        assert!(
            header(&dead, "CC").is_some(),
            "CC kept without a dead-letter routing key"
        );
        let entries = deaths(&dead);
        assert_eq!(entries.len(), 1);
        let e = entries[0];
        assert_eq!(count(e), 1);
        assert_eq!(e.get("reason"), Some(&ltext("rejected")));
        assert_eq!(e.get("queue"), Some(&ltext("work")));
        assert_eq!(e.get("exchange"), Some(&ltext("jobs")));
        assert_eq!(
            e.get("routing-keys"),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![
                ltext("work"),
                ltext("other")
            ])))
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        match e.get("time") {
            Some(AMQPValue::Timestamp(t)) => assert!(now.abs_diff(*t) < 60, "time {t} vs {now}"),
            other => panic!("time is not a timestamp: {other:?}"),
        }
        assert!(e.get("original-expiration").is_none());
    })
    .await;
}

#[tokio::test]
async fn nack_multiple_without_requeue_dead_letters_each_and_requeue_does_not() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "dead", &[]).await;
        declare_queue(
            &ch,
            "work",
            &[
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dead")),
            ],
        )
        .await;
        for i in 0..3 {
            send(
                &ch,
                "",
                "work",
                &format!("m{i}"),
                BasicProperties::default(),
            )
            .await;
        }
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&c_ch, "work").await;
        let mut last = None;
        for _ in 0..3 {
            last = Some(next(&mut consumer).await);
        }
        let last = last.expect("three deliveries");
        // requeue=true first for the last one only: it comes back, not dead-lettered.
        within(last.acker.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        }))
        .await
        .expect("nack requeue");
        let again = next(&mut consumer).await;
        assert!(again.redelivered);
        within(again.acker.nack(BasicNackOptions {
            multiple: true,
            requeue: false,
        }))
        .await
        .expect("nack all");
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let d = get_eventually(&ch, "dead").await;
            assert_eq!(
                d.routing_key.as_str(),
                "dead",
                "x-dead-letter-routing-key used"
            );
            assert_eq!(d.exchange.as_str(), "");
            bodies.push(String::from_utf8(d.data).expect("utf-8"));
        }
        assert_eq!(bodies, ["m0", "m1", "m2"]);
    })
    .await;
}

#[tokio::test]
async fn expired_message_is_dead_lettered_without_its_expiration() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_queue(&ch, "dead", &[]).await;
        declare_queue(
            &ch,
            "delay",
            &[
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dead")),
            ],
        )
        .await;
        let mut cc = FieldTable::default();
        cc.insert("CC".into(), ltext("elsewhere"));
        let props = BasicProperties::default()
            .with_expiration("60".into())
            .with_headers(cc);
        send(&ch, "", "delay", "later", props).await;
        // Nobody consumes "delay": the message moves on its own.
        let d = get_eventually(&ch, "dead").await;
        assert_eq!(d.data, b"later");
        assert_eq!(d.properties.expiration(), &None, "expiration removed");
        assert!(
            header(&d, "CC").is_none(),
            "CC removed with a dead-letter routing key"
        );
        let e = deaths(&d)[0];
        assert_eq!(e.get("reason"), Some(&ltext("expired")));
        assert_eq!(e.get("queue"), Some(&ltext("delay")));
        assert_eq!(e.get("exchange"), Some(&ltext("")));
        assert_eq!(e.get("original-expiration"), Some(&ltext("60")));
        assert_eq!(header(&d, "x-first-death-reason"), Some(&ltext("expired")));
    })
    .await;
}

#[tokio::test]
async fn queue_ttl_dead_letters_without_original_expiration() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_queue(&ch, "dead", &[]).await;
        declare_queue(
            &ch,
            "ttl",
            &[
                ("x-message-ttl", int(50)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dead")),
            ],
        )
        .await;
        send(&ch, "", "ttl", "m", BasicProperties::default()).await;
        let d = get_eventually(&ch, "dead").await;
        let e = deaths(&d)[0];
        assert_eq!(e.get("reason"), Some(&ltext("expired")));
        assert!(e.get("original-expiration").is_none());
    })
    .await;
}

#[tokio::test]
async fn max_length_drops_and_reject_publish_dlx_dead_letter_as_maxlen() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_queue(&ch, "dead", &[]).await;
        let dlx = |extra: (&'static str, AMQPValue)| {
            vec![
                ("x-max-length", int(1)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dead")),
                extra,
            ]
        };
        declare_queue(&ch, "drop", &dlx(("x-overflow", text("drop-head")))).await;
        send(&ch, "", "drop", "old", BasicProperties::default()).await;
        send(&ch, "", "drop", "new", BasicProperties::default()).await;
        let d = get_eventually(&ch, "dead").await;
        assert_eq!(d.data, b"old", "drop-head dead-letters the oldest");
        assert_eq!(deaths(&d)[0].get("reason"), Some(&ltext("maxlen")));
        assert_eq!(
            get(&ch, "drop").await.map(|m| m.delivery.data),
            Some(b"new".to_vec())
        );

        declare_queue(
            &ch,
            "refuse",
            &dlx(("x-overflow", text("reject-publish-dlx"))),
        )
        .await;
        send(&ch, "", "refuse", "kept", BasicProperties::default()).await;
        let refused = publish(
            &ch,
            "",
            "refuse",
            b"refused",
            BasicProperties::default(),
            false,
        )
        .await;
        assert!(matches!(refused, Confirmation::Nack(_)), "{refused:?}");
        let d = get_eventually(&ch, "dead").await;
        assert_eq!(
            d.data, b"refused",
            "reject-publish-dlx dead-letters the new message"
        );
        assert_eq!(deaths(&d)[0].get("reason"), Some(&ltext("maxlen")));
        assert_eq!(deaths(&d)[0].get("queue"), Some(&ltext("refuse")));
        assert_eq!(
            get(&ch, "refuse").await.map(|m| m.delivery.data),
            Some(b"kept".to_vec())
        );
    })
    .await;
}

#[tokio::test]
async fn repeated_deaths_count_up_when_a_rejection_breaks_the_cycle() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        // work --(rejected)--> retry --(expired after 50 ms)--> work --> ...
        declare_queue(
            &ch,
            "work",
            &[
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("retry")),
            ],
        )
        .await;
        declare_queue(
            &ch,
            "retry",
            &[
                ("x-message-ttl", int(50)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("work")),
            ],
        )
        .await;
        send(&ch, "", "work", "task", BasicProperties::default()).await;
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&c_ch, "work").await;
        for _ in 0..2 {
            let d = next(&mut consumer).await;
            within(d.acker.reject(BasicRejectOptions { requeue: false }))
                .await
                .expect("reject");
        }
        let third = next(&mut consumer).await;
        assert_eq!(third.data, b"task");
        let entries = deaths(&third);
        assert_eq!(entries.len(), 2, "one entry per queue and reason");
        assert_eq!(entries[0].get("queue"), Some(&ltext("retry")));
        assert_eq!(entries[0].get("reason"), Some(&ltext("expired")));
        assert_eq!(count(entries[0]), 2);
        assert_eq!(entries[1].get("queue"), Some(&ltext("work")));
        assert_eq!(entries[1].get("reason"), Some(&ltext("rejected")));
        assert_eq!(count(entries[1]), 2);
        assert_eq!(header(&third, "x-first-death-queue"), Some(&ltext("work")));
        assert_eq!(
            header(&third, "x-first-death-reason"),
            Some(&ltext("rejected"))
        );
    })
    .await;
}

#[tokio::test]
async fn automatic_dead_letter_cycles_are_dropped() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        // q1 --(expired)--> fan1 -> q2 + seen1;  q2 --(expired)--> fan2 -> q1 + seen2.
        // Going back to q1 without any rejection is a cycle: dropped there, not in seen2.
        for fan in ["fan1", "fan2"] {
            declare_exchange(&ch, fan, ExchangeKind::Fanout).await;
        }
        declare_queue(
            &ch,
            "q1",
            &[
                ("x-message-ttl", int(50)),
                ("x-dead-letter-exchange", text("fan1")),
            ],
        )
        .await;
        declare_queue(
            &ch,
            "q2",
            &[
                ("x-message-ttl", int(50)),
                ("x-dead-letter-exchange", text("fan2")),
            ],
        )
        .await;
        declare_queue(&ch, "seen1", &[]).await;
        declare_queue(&ch, "seen2", &[]).await;
        bind(&ch, "q2", "fan1", "").await;
        bind(&ch, "seen1", "fan1", "").await;
        bind(&ch, "q1", "fan2", "").await;
        bind(&ch, "seen2", "fan2", "").await;
        send(&ch, "", "q1", "loop", BasicProperties::default()).await;

        let first = get_eventually(&ch, "seen1").await;
        assert_eq!(deaths(&first).len(), 1);
        let second = get_eventually(&ch, "seen2").await;
        let entries = deaths(&second);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].get("queue"), Some(&ltext("q2")));
        assert_eq!(entries[1].get("queue"), Some(&ltext("q1")));
        // Nothing keeps going round.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for q in ["q1", "q2", "seen1", "seen2"] {
            assert!(get(&ch, q).await.is_none(), "{q} is empty");
        }

        // A queue dead-lettering to itself on expiry drops the message too.
        declare_queue(
            &ch,
            "self",
            &[
                ("x-message-ttl", int(30)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("self")),
            ],
        )
        .await;
        send(&ch, "", "self", "once", BasicProperties::default()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(get(&ch, "self").await.is_none());
    })
    .await;
}

#[tokio::test]
async fn missing_dead_letter_exchange_drops_the_message() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(
            &ch,
            "orphan",
            &[("x-dead-letter-exchange", text("nowhere"))],
        )
        .await;
        send(&ch, "", "orphan", "m", BasicProperties::default()).await;
        let c_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = consume(&c_ch, "orphan").await;
        let d = next(&mut consumer).await;
        within(d.acker.reject(BasicRejectOptions { requeue: false }))
            .await
            .expect("reject");
        // The channel and connection carry on; the message is gone.
        send(&ch, "", "orphan", "next", BasicProperties::default()).await;
        assert_eq!(next(&mut consumer).await.data, b"next");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Hostile arguments and headers

/// Routing keys are AMQP short strings in bourse (basic.publish and the message store): an
/// `x-dead-letter-routing-key` over 255 bytes could never be stored with a dead-lettered
/// message, so queue.declare refuses it with 406; 255 bytes is fine.
#[tokio::test]
async fn dead_letter_routing_key_over_255_bytes_is_refused_at_declare() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        let long = "k".repeat(256);
        let res = within(ch.queue_declare(
            "dlrk-long".into(),
            QueueDeclareOptions::default(),
            table(&[
                ("x-dead-letter-exchange", ltext("")),
                ("x-dead-letter-routing-key", ltext(&long)),
            ]),
        ))
        .await;
        match res {
            Ok(q) => panic!("declared {q:?} with a 256-byte dead-letter routing key"),
            Err(e) => assert_eq!(bourse_tests::raw::reply_code(&e), Some(406), "{e}"),
        }
        let ch = bourse_tests::confirm_channel(&conn).await;
        declare_queue(
            &ch,
            "dlrk-255",
            &[
                ("x-dead-letter-exchange", ltext("")),
                ("x-dead-letter-routing-key", ltext(&"k".repeat(255))),
            ],
        )
        .await;
    })
    .await;
}

/// An `x-death` count published by a client, of any integer type, is counted on saturating:
/// i64::MAX stays i64::MAX (no overflow panic, no wrap to a negative count).
#[tokio::test]
async fn client_supplied_x_death_counts_saturate() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_queue(&ch, "sat-dead", &[]).await;
        declare_queue(
            &ch,
            "sat",
            &[
                ("x-dead-letter-exchange", ltext("")),
                ("x-dead-letter-routing-key", ltext("sat-dead")),
            ],
        )
        .await;
        let counts = [
            (int(i64::MAX), i64::MAX),
            (AMQPValue::LongUInt(u32::MAX), i64::from(u32::MAX) + 1),
            (AMQPValue::LongInt(i32::MAX), i64::from(i32::MAX) + 1),
            (AMQPValue::ShortShortUInt(u8::MAX), i64::from(u8::MAX) + 1),
            (int(i64::MIN), i64::MIN + 1),
        ];
        for (count, expected) in counts {
            let mut death = FieldTable::default();
            death.insert("queue".into(), ltext("sat"));
            death.insert("reason".into(), ltext("rejected"));
            death.insert("count".into(), count.clone());
            let mut headers = FieldTable::default();
            headers.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            );
            let props = BasicProperties::default().with_headers(headers);
            send(&ch, "", "sat", "m", props).await;
            let got = within(ch.basic_get("sat".into(), BasicGetOptions { no_ack: false }))
                .await
                .expect("basic.get")
                .expect("the message is in the queue");
            within(got.delivery.reject(BasicRejectOptions { requeue: false }))
                .await
                .expect("reject");
            let dead = get_eventually(&ch, "sat-dead").await;
            let entries = deaths(&dead);
            assert_eq!(
                entries[0].get("count"),
                Some(&int(expected)),
                "count {count:?}"
            );
        }
    })
    .await;
}

/// A message leaves its source queue's store only when every dead-letter target accepted it.
/// Here the target is full with `x-overflow` reject-publish: the rejected persistent message
/// keeps its copy in the durable source queue's store and is back there after a restart.
#[tokio::test]
async fn a_refused_dead_letter_keeps_the_source_copy() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        {
            let (_conn, ch) = session(&broker).await;
            within(ch.queue_declare(
                "dl-full".into(),
                durable,
                table(&[
                    ("x-max-length", int(1)),
                    ("x-overflow", ltext("reject-publish")),
                ]),
            ))
            .await
            .expect("declare the target");
            within(ch.queue_declare(
                "dl-src".into(),
                durable,
                table(&[
                    ("x-dead-letter-exchange", ltext("")),
                    ("x-dead-letter-routing-key", ltext("dl-full")),
                ]),
            ))
            .await
            .expect("declare the source");
            let persistent = BasicProperties::default().with_delivery_mode(2);
            send(&ch, "", "dl-full", "filler", persistent.clone()).await;
            send(&ch, "", "dl-src", "precious", persistent).await;
            let got = within(ch.basic_get("dl-src".into(), BasicGetOptions { no_ack: false }))
                .await
                .expect("basic.get")
                .expect("the message is in the source");
            within(got.delivery.reject(BasicRejectOptions { requeue: false }))
                .await
                .expect("reject");
            // The target refused it: it still holds only the filler.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let q = within(ch.queue_declare(
                "dl-full".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ))
            .await
            .expect("passive declare");
            assert_eq!(q.message_count(), 1);
        }
        broker.restart().await;
        let (_conn, ch) = session(&broker).await;
        let back = get(&ch, "dl-src").await.unwrap_or_else(|| {
            panic!("the refused dead-letter is gone from its source queue after a restart")
        });
        assert_eq!(back.delivery.data, b"precious");
    })
    .await;
}
