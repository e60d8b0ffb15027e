//! Durability through lapin across clean restarts of the in-process broker: which topology
//! and which messages survive (durable and persistent only, as in RabbitMQ), redelivered flags
//! of delivered-but-unacked messages, acks, purges and deletions that stay done, transactions,
//! TTLs after a restart, paging of long queues, and WASM exchanges with their plugin arguments.
//! Crashes (SIGKILL of the real binary) are in `crash.rs`.

use std::time::Duration;

use bourse_tests::basic::{ready_count, wait_ready};
use bourse_tests::exchanges::exchange_exists;
use bourse_tests::raw::within;
use bourse_tests::wasm::{PluginBroker, bodies, publish, table, text};
use bourse_tests::{TestBroker, session};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};

const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn declare_queue(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    within(ch.queue_declare(name.into(), options, args))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

async fn queue_exists(ch: &Channel, name: &str) -> bool {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(ch.queue_declare(name.into(), options, FieldTable::default()))
        .await
        .is_ok()
}

async fn send(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    match publish(ch, exchange, key, body.as_bytes(), props, false).await {
        Confirmation::Ack(None) => {}
        other => panic!("publish {body:?}: expected ack, got {other:?}"),
    }
}

/// Publishes `total` messages `{prefix}{i:05}` to `queue` without waiting between them, then
/// checks every confirm is an ack.
async fn publish_pipelined(
    ch: &Channel,
    queue: &str,
    total: usize,
    prefix: &str,
    properties: impl Fn(usize) -> BasicProperties,
) {
    let mut confirms = Vec::with_capacity(total);
    for i in 0..total {
        let body = format!("{prefix}{i:05}");
        confirms.push(
            within(ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                body.as_bytes(),
                properties(i),
            ))
            .await
            .expect("publish"),
        );
    }
    for confirm in confirms {
        assert!(within(confirm).await.expect("confirm").is_ack());
    }
}

/// Closes the client, restarts the broker and opens a new session.
async fn restart(broker: &mut TestBroker, conn: Connection) -> (Connection, Channel) {
    within(conn.close(200, "restart".into()))
        .await
        .expect("close");
    broker.restart().await;
    session(broker).await
}

#[tokio::test]
async fn durable_topology_survives_a_restart_and_transient_does_not() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        let durable_x = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, options) in [
            ("d-x", durable_x),
            ("t-x", ExchangeDeclareOptions::default()),
        ] {
            within(ch.exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            ))
            .await
            .expect("exchange");
        }
        declare_queue(&ch, "d-q", true, FieldTable::default()).await;
        declare_queue(&ch, "t-q", false, FieldTable::default()).await;
        let exclusive = QueueDeclareOptions {
            durable: true,
            exclusive: true,
            ..Default::default()
        };
        within(ch.queue_declare("x-q".into(), exclusive, FieldTable::default()))
            .await
            .expect("exclusive queue");
        for (queue, exchange, key) in [
            ("d-q", "d-x", "a.*"),
            ("t-q", "d-x", "b.*"),
            ("d-q", "t-x", "c.*"),
        ] {
            within(ch.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("bind");
        }
        // A durable binding that is removed again must stay removed.
        within(ch.queue_bind(
            "d-q".into(),
            "d-x".into(),
            "gone.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("bind");
        within(ch.queue_unbind(
            "d-q".into(),
            "d-x".into(),
            "gone.*".into(),
            FieldTable::default(),
        ))
        .await
        .expect("unbind");

        let (conn, ch) = restart(&mut broker, conn).await;
        assert!(exchange_exists(&conn, "d-x").await, "durable exchange kept");
        assert!(
            !exchange_exists(&conn, "t-x").await,
            "transient exchange gone"
        );
        assert!(queue_exists(&ch, "d-q").await, "durable queue kept");
        let ch = within(conn.create_channel()).await.expect("channel");
        assert!(!queue_exists(&ch, "t-q").await, "transient queue gone");
        let ch = within(conn.create_channel()).await.expect("channel");
        assert!(!queue_exists(&ch, "x-q").await, "exclusive queue gone");
        let ch = bourse_tests::confirm_channel(&conn).await;
        // The durable binding routes; the removed one does not.
        send(&ch, "d-x", "a.1", "kept", BasicProperties::default()).await;
        send(&ch, "d-x", "gone.1", "unbound", BasicProperties::default()).await;
        assert_eq!(bodies(&ch, "d-q").await, ["kept"]);
    })
    .await;
}

#[tokio::test]
async fn persistent_messages_in_durable_queues_survive_and_others_do_not() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "dq", true, FieldTable::default()).await;
        declare_queue(&ch, "tq", false, FieldTable::default()).await;
        for i in 0..5 {
            send(&ch, "", "dq", &format!("p{i}"), persistent()).await;
            send(&ch, "", "dq", &format!("t{i}"), BasicProperties::default()).await;
            send(&ch, "", "tq", &format!("p{i}"), persistent()).await;
        }
        let (_conn, ch) = restart(&mut broker, conn).await;
        assert_eq!(bodies(&ch, "dq").await, ["p0", "p1", "p2", "p3", "p4"]);
        assert!(!queue_exists(&ch, "tq").await);
    })
    .await;
}

#[tokio::test]
async fn unacked_deliveries_come_back_redelivered_and_acked_ones_never() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "work", true, FieldTable::default()).await;
        for i in 0..6 {
            send(&ch, "", "work", &format!("m{i}"), persistent()).await;
        }
        // Take four with manual ack, ack two of them, leave two unacked.
        let mut taken = Vec::new();
        for _ in 0..4 {
            let got = within(ch.basic_get("work".into(), BasicGetOptions { no_ack: false }))
                .await
                .expect("get")
                .expect("a message");
            assert!(!got.delivery.redelivered);
            taken.push(got.delivery);
        }
        for delivery in &taken[..2] {
            within(delivery.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
        // Make sure the acks reached the broker before it stops.
        assert!(queue_exists(&ch, "work").await);

        let (_conn, ch) = restart(&mut broker, conn).await;
        let mut seen = Vec::new();
        while let Some(got) = within(ch.basic_get("work".into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("get")
        {
            let body = String::from_utf8_lossy(&got.delivery.data).into_owned();
            seen.push((body, got.delivery.redelivered));
        }
        let expected = [("m2", true), ("m3", true), ("m4", false), ("m5", false)];
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(b, r)| (b.to_string(), *r)).collect();
        assert_eq!(seen, expected);
    })
    .await;
}

#[tokio::test]
async fn purged_and_deleted_queues_stay_empty_after_a_restart() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "purged", true, FieldTable::default()).await;
        declare_queue(&ch, "deleted", true, FieldTable::default()).await;
        for i in 0..3 {
            send(&ch, "", "purged", &format!("a{i}"), persistent()).await;
            send(&ch, "", "deleted", &format!("b{i}"), persistent()).await;
        }
        let purged = within(ch.queue_purge("purged".into(), QueuePurgeOptions::default()))
            .await
            .expect("purge");
        assert_eq!(purged, 3);
        send(&ch, "", "purged", "after-purge", persistent()).await;
        within(ch.queue_delete("deleted".into(), Default::default()))
            .await
            .expect("delete");

        let (conn, ch) = restart(&mut broker, conn).await;
        assert_eq!(bodies(&ch, "purged").await, ["after-purge"]);
        assert!(!queue_exists(&ch, "deleted").await);
        // Declared again, the deleted queue starts empty: nothing is resurrected.
        let ch = bourse_tests::confirm_channel(&conn).await;
        declare_queue(&ch, "deleted", true, FieldTable::default()).await;
        assert!(bodies(&ch, "deleted").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn committed_transactions_survive_a_restart() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = broker.channel().await;
        declare_queue(&ch, "txq", true, FieldTable::default()).await;
        within(ch.tx_select()).await.expect("tx.select");
        for body in ["one", "two"] {
            within(ch.basic_publish(
                "".into(),
                "txq".into(),
                Default::default(),
                body.as_bytes(),
                persistent(),
            ))
            .await
            .expect("publish");
        }
        within(ch.tx_commit()).await.expect("tx.commit");
        within(ch.basic_publish(
            "".into(),
            "txq".into(),
            Default::default(),
            b"rolled-back",
            persistent(),
        ))
        .await
        .expect("publish");
        within(ch.tx_rollback()).await.expect("tx.rollback");

        let (_conn, ch) = restart(&mut broker, conn).await;
        assert_eq!(bodies(&ch, "txq").await, ["one", "two"]);
    })
    .await;
}

#[tokio::test]
async fn message_ttl_still_applies_after_a_restart() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        let args = table(&[("x-message-ttl", AMQPValue::LongLongInt(1500))]);
        declare_queue(&ch, "ttl", true, args).await;
        send(&ch, "", "ttl", "short-lived", persistent()).await;
        let (_conn, ch) = restart(&mut broker, conn).await;
        // Recovered, and the TTL counts again from the restart: the message then expires.
        assert_eq!(ready_count(&ch, "ttl").await, 1, "recovered");
        wait_ready(&ch, "ttl", 0).await;
    })
    .await;
}

#[tokio::test]
async fn a_long_queue_pages_out_and_delivers_everything_in_order() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "long", true, FieldTable::default()).await;
        let total = 6_000;
        // Every tenth message is transient: it waits in memory among the paged ones.
        publish_pipelined(&ch, "long", total, "m", |i| {
            if i % 10 == 9 {
                BasicProperties::default()
            } else {
                persistent()
            }
        })
        .await;
        let queue = broker
            .handle()
            .expect("in-process")
            .shared()
            .vhost("/")
            .expect("vhost")
            .queue("long")
            .expect("queue");
        assert!(
            queue.paged_count() > 1000,
            "bodies beyond the in-memory window are paged out ({} paged)",
            queue.paged_count()
        );
        drop(queue);
        let consumer_ch = within(conn.create_channel()).await.expect("channel");
        let mut consumer = within(consumer_ch.basic_consume(
            "long".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .expect("consume");
        for i in 0..total {
            let delivery = within(consumer.next())
                .await
                .expect("a delivery")
                .expect("delivery ok");
            assert_eq!(
                String::from_utf8_lossy(&delivery.data),
                format!("m{i:05}"),
                "delivery {i} in publish order"
            );
        }
        // Only the persistent ones were on disk, and all were consumed: nothing comes back.
        let (_conn, ch) = restart(&mut broker, conn).await;
        assert!(bodies(&ch, "long").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn paged_messages_recover_after_a_restart() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "big", true, FieldTable::default()).await;
        let total = 5_000;
        publish_pipelined(&ch, "big", total, "b", |_| persistent()).await;
        let (_conn, ch) = restart(&mut broker, conn).await;
        let got = bodies(&ch, "big").await;
        let expected: Vec<String> = (0..total).map(|i| format!("b{i:05}")).collect();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "recovered in publish order");
    })
    .await;
}

#[tokio::test]
async fn wasm_exchanges_and_their_plugin_arguments_survive_a_restart() {
    bounded(async {
        let mut pb = PluginBroker::start(&["x-consistent-hash"]).await;
        let (conn, ch) = session(&pb.broker).await;
        // Hash the `user` header, not the routing key: a plugin argument.
        within(ch.exchange_declare(
            "users".into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("hash-header", text("user"))]),
        ))
        .await
        .expect("declare x-consistent-hash");
        for queue in ["shard-a", "shard-b"] {
            declare_queue(&ch, queue, true, FieldTable::default()).await;
            within(ch.queue_bind(
                queue.into(),
                "users".into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("bind");
        }

        let (_conn, ch) = restart(&mut pb.broker, conn).await;
        // Twenty routing keys, one user: all in one shard only if the header is hashed.
        for i in 0..20 {
            let props = BasicProperties::default().with_headers(table(&[("user", text("alice"))]));
            send(&ch, "users", &format!("key-{i}"), "m", props).await;
        }
        let counts = (
            bodies(&ch, "shard-a").await.len(),
            bodies(&ch, "shard-b").await.len(),
        );
        assert!(
            counts == (20, 0) || counts == (0, 20),
            "one user goes to one shard after the restart: {counts:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_dead_lettered_persistent_message_moves_between_durable_queues() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_queue(&ch, "dead", true, FieldTable::default()).await;
        let args = table(&[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dead")),
        ]);
        declare_queue(&ch, "work-dl", true, args).await;
        for body in ["rejected", "kept"] {
            send(&ch, "", "work-dl", body, persistent()).await;
        }
        let got = within(ch.basic_get("work-dl".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("get")
            .expect("a message");
        within(
            got.delivery
                .acker
                .reject(lapin::options::BasicRejectOptions { requeue: false }),
        )
        .await
        .expect("reject");
        // The reject has been handled once a later synchronous method returns.
        assert!(queue_exists(&ch, "dead").await);

        let (_conn, ch) = restart(&mut broker, conn).await;
        assert_eq!(bodies(&ch, "work-dl").await, ["kept"]);
        assert_eq!(bodies(&ch, "dead").await, ["rejected"]);
    })
    .await;
}
