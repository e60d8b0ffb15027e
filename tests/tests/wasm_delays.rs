//! Delays decided by plugins (`bourse:exchange@0.2`, wit/README.md): `x-retry-backoff` delays
//! a message by `base * 2^(n-1)` for an `x-death` count `n`. A delayed message is not delivered
//! before its delay and reaches the queues decided at publish; mandatory is decided at
//! publish; a decision with a delay is never served from the decision cache; the delayed
//! count shows in the management API, whose publish holds it too; a persistent message on a
//! durable exchange survives a restart; the delay applies only to the exchange published to;
//! 0.1 components load and route beside the 0.2 one.
//!
//! These tests ignore `BOURSE_TEST_AMQP_URL`: they need the broker's plugins.

use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use bourse_tests::wasm::{
    PluginBroker, bodies, confirm_channel, declare, publish, publish_acked, queue_on, table,
};
use bourse_tests::{TestBroker, bounded};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

const LIMIT: Duration = Duration::from_secs(60);

/// Properties carrying an `x-death` header whose first entry has `count` (as dead-lettering
/// writes it).
fn died(count: i64) -> BasicProperties {
    let entry = table(&[
        ("count", AMQPValue::LongLongInt(count)),
        ("reason", AMQPValue::LongString("rejected".into())),
    ]);
    let deaths = FieldArray::from(vec![AMQPValue::FieldTable(entry)]);
    BasicProperties::default().with_headers(table(&[("x-death", AMQPValue::FieldArray(deaths))]))
}

fn backoff(base_ms: i64) -> FieldTable {
    table(&[
        ("x-backoff-base-ms", AMQPValue::LongLongInt(base_ms)),
        ("x-backoff-max-ms", AMQPValue::LongLongInt(60_000)),
    ])
}

/// Waits until `queue` holds `body` (taken without ack) and answers when it came; fails past
/// `limit`. Other bodies found meanwhile are returned too.
async fn wait_for(
    ch: &Channel,
    queue: &str,
    body: &str,
    limit: Duration,
) -> (Instant, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let got = bodies(ch, queue).await;
        let now = Instant::now();
        let found = got.iter().any(|b| b == body);
        seen.extend(got);
        if found {
            return (now, seen);
        }
        assert!(
            now < deadline,
            "{body:?} not in {queue} after {limit:?} (saw {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mgmt_broker(plugins: &[&str]) -> (PluginBroker, bourse_tests::http::Api) {
    let broker = PluginBroker::start_with(plugins, |cfg| {
        cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
        let mut guest = bourse::config::UserSeed::clear("guest", "guest");
        guest.tags = vec!["administrator".into()];
        cfg.users = vec![guest];
    })
    .await;
    let addr = broker
        .broker
        .handle()
        .expect("in-process broker")
        .management_addr()
        .expect("a management listener");
    let api = bourse_tests::http::Api::new(addr, "guest", "guest");
    (broker, api)
}

#[tokio::test]
async fn a_0_2_plugin_delays_its_messages_to_the_decided_queues() {
    bounded(LIMIT, async {
        // A 0.1 component (x-modulus-hash) in the same broker as the 0.2 one.
        let (pb, api) = mgmt_broker(&["x-retry-backoff", "x-modulus-hash"]).await;
        let conn = pb.broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "retry", "x-retry-backoff", backoff(800)).await;
        queue_on(&ch, "qa", "retry", "a").await;
        queue_on(&ch, "qb", "retry", "b").await;

        let published = Instant::now();
        // n = 1: 800 ms; n = 2: 1,600 ms; no x-death: at once.
        let ack = |c: Confirmation| assert_eq!(c, Confirmation::Ack(None));
        ack(publish(&ch, "retry", "a", b"once", died(1), false).await);
        ack(publish(&ch, "retry", "b", b"twice", died(2), false).await);
        ack(publish(
            &ch,
            "retry",
            "a",
            b"first",
            BasicProperties::default(),
            false,
        )
        .await);
        // Mandatory is decided at publish: no binding for "nowhere", so it comes back now
        // and is not held.
        match publish(&ch, "retry", "nowhere", b"lost", died(1), true).await {
            Confirmation::Ack(Some(returned)) => {
                assert_eq!(returned.delivery.data, b"lost");
            }
            other => panic!("a mandatory delayed message reaching no queue: {other:?}"),
        }

        let reply = api.get("/api/exchanges/%2F/retry").await;
        assert_eq!(reply.json["messages_delayed"], 2, "{:?}", reply.json);
        assert_eq!(
            bodies(&ch, "qa").await,
            ["first"],
            "only the undelayed one at once"
        );
        assert!(bodies(&ch, "qb").await.is_empty(), "delivered early");

        let (at, seen) = wait_for(&ch, "qa", "once", Duration::from_secs(10)).await;
        let waited = at - published;
        assert!(
            waited >= Duration::from_millis(800),
            "fired after {waited:?}"
        );
        assert_eq!(seen, ["once"], "{seen:?}");
        let (at, seen) = wait_for(&ch, "qb", "twice", Duration::from_secs(10)).await;
        let waited = at - published;
        assert!(
            waited >= Duration::from_millis(1_600),
            "fired after {waited:?}"
        );
        assert_eq!(seen, ["twice"], "each to its own queue, once");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(bodies(&ch, "qa").await.is_empty(), "delivered twice");
        let reply = api.get("/api/exchanges/%2F/retry").await;
        assert_eq!(reply.json["messages_delayed"], 0, "{:?}", reply.json);

        // The management API's publish: held the same way (the answer says it was routed).
        let published = Instant::now();
        let reply = api
            .post(
                "/api/exchanges/%2F/retry/publish",
                serde_json::json!({"routing_key": "a", "payload": "api",
                    "properties": {"headers": {"x-death": [{"count": 1}]}}}),
            )
            .await;
        assert_eq!(reply.json, serde_json::json!({"routed": true}));
        assert!(bodies(&ch, "qa").await.is_empty(), "delivered early");
        let (at, _) = wait_for(&ch, "qa", "api", Duration::from_secs(10)).await;
        assert!(at - published >= Duration::from_millis(800));

        // The 0.1 component loads and routes (at once) beside it.
        declare(&ch, "hash", "x-modulus-hash", FieldTable::default()).await;
        queue_on(&ch, "qh", "hash", "").await;
        publish_acked(&ch, "hash", "k", "now").await;
        assert_eq!(bodies(&ch, "qh").await, ["now"]);
    })
    .await;
}

/// `x-retry-backoff` declares itself cacheable. The same inputs twice must be delayed twice:
/// a cache holding the first decision without its delay would deliver the second at once.
#[tokio::test]
async fn a_decision_with_a_delay_is_not_served_from_the_cache() {
    bounded(LIMIT, async {
        let pb = PluginBroker::start(&["x-retry-backoff"]).await;
        let conn = pb.broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "retry", "x-retry-backoff", backoff(1_000)).await;
        queue_on(&ch, "q", "retry", "k").await;
        let published = Instant::now();
        for body in ["m1", "m2", "m3"] {
            assert_eq!(
                publish(&ch, "retry", "k", body.as_bytes(), died(1), false).await,
                Confirmation::Ack(None)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            bodies(&ch, "q").await.is_empty(),
            "a cached decision lost its delay"
        );
        let (at, _) = wait_for(&ch, "q", "m3", Duration::from_secs(10)).await;
        assert!(at - published >= Duration::from_millis(1_000));
    })
    .await;
}

/// A persistent message on a durable 0.2 exchange is stored synced: confirmed, then the broker
/// restarts before it is due, and it is delivered once due, once.
#[tokio::test]
async fn a_persistent_delayed_message_survives_a_restart() {
    bounded(LIMIT, async {
        let mut pb = PluginBroker::start(&["x-retry-backoff"]).await;
        let conn = pb.broker.connect().await;
        let ch = confirm_channel(&conn).await;
        ch.exchange_declare(
            "retry".into(),
            ExchangeKind::Custom("x-retry-backoff".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            backoff(3_000),
        )
        .await
        .expect("declare");
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
            "retry".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let published = Instant::now();
        let confirm = publish(
            &ch,
            "retry",
            "k",
            b"kept",
            died(1).with_delivery_mode(2),
            false,
        )
        .await;
        assert_eq!(confirm, Confirmation::Ack(None));
        let _ = conn.close(200, "restart".into()).await;
        restart(&mut pb.broker).await;
        let conn = pb.broker.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        if published.elapsed() < Duration::from_millis(2_500) {
            assert!(bodies(&ch, "dq").await.is_empty(), "delivered early");
        }
        let (at, seen) = wait_for(&ch, "dq", "kept", Duration::from_secs(15)).await;
        assert!(at - published >= Duration::from_millis(3_000));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut seen = seen;
        seen.extend(bodies(&ch, "dq").await);
        assert_eq!(seen, ["kept"], "delivered once");
    })
    .await;
}

async fn restart(broker: &mut TestBroker) {
    broker.restart().await;
}

/// Where a 0.2 plugin's delay is ignored: behind an exchange-to-exchange binding the message
/// goes on at once; as the routing type of `x-delayed-message`, only `x-delay` delays it (the
/// plugin, called again when it fires, must not hold it a second time).
#[tokio::test]
async fn the_delay_applies_only_to_the_exchange_published_to() {
    bounded(LIMIT, async {
        let pb = PluginBroker::start(&["x-retry-backoff"]).await;
        let conn = pb.broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "retry", "x-retry-backoff", backoff(10_000)).await;
        queue_on(&ch, "q", "retry", "k").await;
        ch.exchange_declare(
            "front".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare front");
        ch.exchange_bind(
            "retry".into(),
            "front".into(),
            "".into(),
            lapin::options::ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind front to retry");
        publish(&ch, "front", "k", b"through", died(1), false).await;
        assert_eq!(bodies(&ch, "q").await, ["through"], "routed at once");

        let mut args = backoff(10_000);
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("x-retry-backoff".into()),
        );
        ch.exchange_declare(
            "later".into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .expect("declare the delayed exchange");
        queue_on(&ch, "ql", "later", "k").await;
        publish(&ch, "later", "k", b"no-header", died(1), false).await;
        assert_eq!(
            bodies(&ch, "ql").await,
            ["no-header"],
            "no x-delay: at once"
        );
        let mut properties = died(1);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(300));
        properties = properties.with_headers(headers);
        let published = Instant::now();
        publish(&ch, "later", "k", b"header", properties, false).await;
        let (at, _) = wait_for(&ch, "ql", "header", Duration::from_secs(5)).await;
        let waited = at - published;
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "x-delay decides, not the plugin: fired after {waited:?}"
        );
    })
    .await;
}
