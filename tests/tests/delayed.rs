//! Delayed delivery (`x-delayed-message`, docs/delayed.md) with lapin against an in-process
//! broker and, for the crash test, the real binary: messages fire in order of due time, delay
//! headers of 0 or less route at once, `mandatory` is decided at publish time, the underlying
//! type may be a WASM plugin, the waiting count is in the management API, and persistent
//! messages whose confirm arrived survive SIGKILL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};
use bourse_tests::exchanges::{queue_on, table, text};
use bourse_tests::process::BrokerProcess;
use bourse_tests::wasm::{PluginBroker, assert_error, bodies, try_declare};
use bourse_tests::{TestBroker, bounded, confirm_channel, session};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

const LIMIT: Duration = Duration::from_secs(60);

fn delayed_args(kind: &str) -> FieldTable {
    table(&[("x-delayed-type", text(kind))])
}

async fn declare_delayed(ch: &Channel, name: &str, kind: &str, durable: bool) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        delayed_args(kind),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(name.into(), value);
    BasicProperties::default().with_headers(headers)
}

fn delay(ms: i64) -> BasicProperties {
    with_header("x-delay", AMQPValue::LongLongInt(ms))
}

async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    properties: BasicProperties,
    mandatory: bool,
) -> Confirmation {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory,
            ..Default::default()
        },
        body.as_bytes(),
        properties,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm")
}

/// Waits until `queue` has received `n` messages in all (taking them without ack), and
/// returns them in order; fails past `limit`.
async fn collect(ch: &Channel, queue: &str, n: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(bodies(ch, queue).await);
        assert!(
            Instant::now() < deadline,
            "only {got:?} of {n} messages in {queue} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

#[tokio::test]
async fn messages_fire_in_order_of_due_time_and_zero_or_negative_route_at_once() {
    bounded(LIMIT, async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_delayed(&ch, "d", "direct", false).await;
        queue_on(&ch, "q", "d", "k").await;
        let started = Instant::now();
        for (body, ms) in [("c", 900), ("a", 300), ("now", 0), ("b", 600), ("neg", -50)] {
            let confirm = publish(&ch, "d", "k", body, delay(ms), false).await;
            assert_eq!(confirm, Confirmation::Ack(None), "{body}");
        }
        // Other spellings: an absolute time (x-opt-delivery-time) and a relative one.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let at = with_header("x-opt-delivery-time", AMQPValue::LongLongInt(now_ms + 750));
        publish(&ch, "d", "k", "b2", at, false).await;
        let rel = with_header("x-opt-delivery-delay", AMQPValue::LongInt(450));
        publish(&ch, "d", "k", "a2", rel, false).await;
        assert_eq!(
            bodies(&ch, "q").await,
            ["now", "neg"],
            "undelayed ones at once"
        );
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "test too slow to tell"
        );
        let fired = collect(&ch, "q", 5, Duration::from_secs(5)).await;
        assert_eq!(fired, ["a", "a2", "b", "b2", "c"], "in order of due time");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "the last fired too early: {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn delayed_messages_are_not_delivered_early_and_count_as_waiting() {
    bounded(LIMIT, async {
        let (broker, api) = bourse_tests::http::api_broker_with(|cfg| {
            cfg.prometheus_listen = Some(([127, 0, 0, 1], 0).into());
        })
        .await;
        let (_conn, ch) = session(&broker).await;
        declare_delayed(&ch, "later", "fanout", true).await;
        queue_on(&ch, "q", "later", "").await;
        for i in 0..10 {
            publish(&ch, "later", "", &format!("m{i}"), delay(1_500), false).await;
        }
        let reply = api.get("/api/exchanges/%2F/later").await;
        assert_eq!(reply.json["messages_delayed"], 10, "{:?}", reply.json);
        assert_eq!(reply.json["type"], "x-delayed-message");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(bodies(&ch, "q").await.is_empty(), "delivered early");
        let fired = collect(&ch, "q", 10, Duration::from_secs(5)).await;
        assert_eq!(fired.len(), 10);
        let reply = api.get("/api/exchanges/%2F/later").await;
        assert_eq!(reply.json["messages_delayed"], 0, "{:?}", reply.json);
        let handle = broker.handle().expect("in-process broker");
        let prometheus =
            bourse_tests::http::Api::anonymous(handle.prometheus_addr().expect("Prometheus"));
        let (_, _, metrics) = prometheus.get_text("/metrics").await;
        assert!(
            metrics.contains("bourse_exchange_messages_delayed{vhost=\"/\",exchange=\"later\"} 0"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_missing_or_unknown_delayed_type_is_406() {
    bounded(LIMIT, async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        let missing = try_declare(&ch, "d", "x-delayed-message", FieldTable::default()).await;
        assert_error(missing, 406, "x-delayed-type");
        let ch = confirm_channel(&conn).await;
        let unknown = try_declare(&ch, "d", "x-delayed-message", delayed_args("nope")).await;
        assert_error(unknown, 406, "must be an existing exchange type");
        let ch = confirm_channel(&conn).await;
        let itself = try_declare(
            &ch,
            "d",
            "x-delayed-message",
            delayed_args("x-delayed-message"),
        )
        .await;
        assert_error(itself, 406, "x-delayed-type");
        let ch = confirm_channel(&conn).await;
        declare_delayed(&ch, "d", "topic", false).await;
        let other = try_declare(&ch, "d", "x-delayed-message", delayed_args("direct")).await;
        assert_error(other, 406, "inequivalent arg 'x-delayed-type'");
    })
    .await;
}

#[tokio::test]
async fn mandatory_is_honoured_when_published() {
    bounded(LIMIT, async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_delayed(&ch, "d", "direct", false).await;
        queue_on(&ch, "q", "d", "bound").await;
        let started = Instant::now();
        match publish(&ch, "d", "unbound", "lost", delay(2_000), true).await {
            Confirmation::Ack(Some(returned)) => {
                assert_eq!(returned.reply_code, 312);
                assert_eq!(returned.delivery.data, b"lost");
            }
            other => panic!("expected a return, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(1_000),
            "returned at publish, not when due"
        );
        let kept = publish(&ch, "d", "bound", "kept", delay(300), true).await;
        assert_eq!(
            kept,
            Confirmation::Ack(None),
            "routable: held, not returned"
        );
        assert_eq!(collect(&ch, "q", 1, Duration::from_secs(5)).await, ["kept"]);
    })
    .await;
}

#[tokio::test]
async fn a_mandatory_check_at_publish_leaves_a_stateful_plugin_unchanged() {
    bounded(LIMIT, async {
        // Over x-dedup, the publish-time route (for mandatory) must not record the id, or
        // the message would be dropped as its own repeat when it fires.
        let broker = PluginBroker::start(&["x-dedup"]).await;
        let (_conn, ch) = session(&broker.broker).await;
        declare_delayed(&ch, "dd", "x-dedup", false).await;
        queue_on(&ch, "ledger", "dd", "").await;
        let once = |id: &str| {
            let mut headers = FieldTable::default();
            headers.insert("x-delay".into(), AMQPValue::LongLongInt(200));
            BasicProperties::default()
                .with_headers(headers)
                .with_message_id(id.into())
        };
        let held = publish(&ch, "dd", "", "first", once("pay-1"), true).await;
        assert_eq!(held, Confirmation::Ack(None), "routable: held");
        assert_eq!(
            collect(&ch, "ledger", 1, Duration::from_secs(5)).await,
            ["first"]
        );
        // When it fired, x-dedup recorded it: a repeat is dropped when it fires in turn.
        publish(&ch, "dd", "", "again", once("pay-1"), false).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(bodies(&ch, "ledger").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_wasm_type_routes_delayed_messages_when_they_fire() {
    bounded(LIMIT, async {
        let broker = PluginBroker::start(&["x-regex"]).await;
        let (_conn, ch) = session(&broker.broker).await;
        declare_delayed(&ch, "rx", "x-regex", false).await;
        queue_on(&ch, "eu", "rx", r"order\.eu\.\d+").await;
        queue_on(&ch, "all", "rx", r"order\..*").await;
        publish(&ch, "rx", "order.eu.7", "eu7", delay(400), false).await;
        publish(&ch, "rx", "order.us.1", "us1", delay(200), false).await;
        assert!(
            bodies(&ch, "all").await.is_empty(),
            "nothing before it is due"
        );
        assert_eq!(
            collect(&ch, "all", 2, Duration::from_secs(5)).await,
            ["us1", "eu7"]
        );
        assert_eq!(collect(&ch, "eu", 1, Duration::from_secs(5)).await, ["eu7"]);
    })
    .await;
}

#[tokio::test]
async fn deleting_the_exchange_drops_its_messages() {
    bounded(LIMIT, async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare_delayed(&ch, "gone", "direct", true).await;
        queue_on(&ch, "q", "gone", "k").await;
        let persistent = delay(500).with_delivery_mode(2);
        publish(&ch, "gone", "k", "x", persistent, false).await;
        ch.exchange_delete("gone".into(), Default::default())
            .await
            .expect("delete");
        declare_delayed(&ch, "gone", "direct", true).await;
        ch.queue_bind(
            "q".into(),
            "gone".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(
            bodies(&ch, "q").await.is_empty(),
            "a deleted exchange's message fired"
        );
    })
    .await;
}

/// Publishes `n` persistent delayed messages with confirms to a durable delayed exchange bound
/// to a durable queue, SIGKILLs the broker once every confirm is in, restarts it, and expects
/// every message in the queue once due (at least once: duplicates are allowed by the guarantee).
#[tokio::test]
async fn confirmed_persistent_delayed_messages_survive_sigkill() {
    bounded(Duration::from_secs(120), async {
        let mut broker = BrokerProcess::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_delayed(&ch, "dk", "direct", true).await;
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
        ch.queue_bind(
            "dq".into(),
            "dk".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let n = 300;
        let mut confirms = Vec::new();
        for i in 0..n {
            let ms = 1_500 + (i * 7919 % 1_500) as i64;
            let properties = delay(ms).with_delivery_mode(2);
            let confirm = ch
                .basic_publish(
                    "dk".into(),
                    "k".into(),
                    BasicPublishOptions::default(),
                    format!("{i}").as_bytes(),
                    properties,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None));
        }
        broker.kill();
        broker.restart().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        let fired = collect(&ch, "dq", n, Duration::from_secs(20)).await;
        let distinct: BTreeSet<String> = fired.into_iter().collect();
        assert_eq!(
            distinct.len(),
            n,
            "every confirmed message fired after the crash\n{}",
            broker.log_tail()
        );
    })
    .await;
}
