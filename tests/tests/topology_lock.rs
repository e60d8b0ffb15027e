//! A slow topology change stalls nobody else in the vhost (issue 10): while one connection
//! declares an exchange whose plugin `init` is slow, or binds through a plugin whose
//! `validate-binding` is slow (`x-slow`, spinning for `spin-ms`), a publisher with confirms to
//! another exchange of the same vhost completes its round trips. The tests assert the order
//! (every confirm before the slow declare-ok / bind-ok), not wall-clock figures.
//!
//! Concurrent declares of one name from several connections all succeed and make one object
//! (one queue, one exchange, one plugin instance, one binding), which survives a restart.
//!
//! The runtime has two workers: the broker runs in-process, and a current-thread runtime would
//! be stalled by any synchronous 1.5 s call whatever the broker's locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};
use bourse_tests::raw::within;
use bourse_tests::wasm::{
    PluginBroker, declare, publish_acked, queue_on, session, table, try_bind, try_declare,
};
use bourse_tests::{TestBroker, bounded};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::{BasicProperties, Confirmation, ExchangeKind};

/// How long `x-slow` spins: long next to 20 confirm round trips on loopback, short for a test.
const SPIN_MS: u32 = 1500;
/// Confirm round trips the publisher completes while the slow change is in progress.
const ROUND_TRIPS: usize = 20;

fn spin(ms: u32) -> FieldTable {
    table(&[("spin-ms", AMQPValue::LongUInt(ms))])
}

/// A broker with `x-slow` whose setup deadline lets a 1.5 s `init` finish.
async fn slow_broker() -> PluginBroker {
    PluginBroker::start_with(&["x-slow"], |cfg| cfg.wasm.setup_deadline_ms = 10_000).await
}

/// Runs `change` on its own task; while it is in progress, publishes [`ROUND_TRIPS`] messages
/// with confirms to exchange `fast` and checks that all were confirmed before `change` ended.
async fn publisher_keeps_going<F>(broker: &PluginBroker, change: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (_pc, publisher) = session(&broker.broker).await;
    declare(&publisher, "fast", "fanout", FieldTable::default()).await;
    queue_on(&publisher, "fast-q", "fast", "").await;
    // Warm up: the first publish on a channel is no slower than the rest.
    publish_acked(&publisher, "fast", "", "warm-up").await;

    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        change.await;
        finished.store(true, Ordering::SeqCst);
    });
    // Give the change time to reach the broker and start spinning (it spins for 1.5 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !done.load(Ordering::SeqCst),
        "the slow change ended before the publisher started: the plugin did not spin"
    );
    let mut worst = Duration::ZERO;
    for i in 0..ROUND_TRIPS {
        let sent = Instant::now();
        publish_acked(&publisher, "fast", "", &format!("m{i}")).await;
        worst = worst.max(sent.elapsed());
    }
    let confirmed_first = !done.load(Ordering::SeqCst);
    within(slow).await.expect("the slow change's task");
    println!(
        "{ROUND_TRIPS} confirms, slowest {:.2} ms; the slow change took {:.0} ms",
        worst.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        confirmed_first,
        "the publisher's confirms came after the slow change's reply: it was stalled by it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_init_stalls_no_publisher_of_the_vhost() {
    bounded(Duration::from_secs(60), async {
        let broker = slow_broker().await;
        let (_dc, declarer) = session(&broker.broker).await;
        publisher_keeps_going(&broker, async move {
            try_declare(&declarer, "slow", "x-slow", spin(SPIN_MS))
                .await
                .expect("the slow declare succeeds");
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_binding_call_stalls_no_publisher_of_the_vhost() {
    bounded(Duration::from_secs(60), async {
        let broker = slow_broker().await;
        let (_dc, binder) = session(&broker.broker).await;
        declare(&binder, "slow", "x-slow", FieldTable::default()).await;
        bourse_tests::wasm::queue(&binder, "slow-q").await;
        publisher_keeps_going(&broker, async move {
            try_bind(&binder, "slow-q", "slow", "k", spin(SPIN_MS))
                .await
                .expect("the slow bind succeeds");
        })
        .await;
    })
    .await;
}

/// Declares the durable exchange `race-x`, the durable queue `race-q` and the binding between
/// them on a connection of its own.
async fn declare_all(url: String) {
    let conn = within(lapin::Connection::connect(
        &url,
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("connects");
    let ch = within(conn.create_channel()).await.expect("channel");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.exchange_declare(
        "race-x".into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    ))
    .await
    .expect("exchange.declare in the race");
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare("race-q".into(), queue, FieldTable::default()))
        .await
        .expect("queue.declare in the race");
    within(ch.queue_bind(
        "race-q".into(),
        "race-x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("queue.bind in the race");
    let _ = within(conn.close(200, "done".into())).await;
}

/// Publishes one persistent message to `race-x` and returns the queue's message count.
async fn publish_and_count(broker: &TestBroker) -> u32 {
    let (conn, ch) = session(broker).await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let confirm = within(ch.basic_publish(
        "race-x".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"once",
        persistent,
    ))
    .await
    .expect("publish");
    assert!(matches!(
        within(confirm).await.expect("confirm"),
        Confirmation::Ack(None)
    ));
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = within(ch.queue_declare("race-q".into(), passive, FieldTable::default()))
        .await
        .expect("passive declare of race-q");
    let _ = within(conn.close(200, "done".into())).await;
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_declares_make_one_object_that_survives_a_restart() {
    bounded(Duration::from_secs(60), async {
        let mut broker = TestBroker::start().await;
        let racers: Vec<_> = (0..8)
            .map(|_| tokio::spawn(declare_all(broker.url().to_owned())))
            .collect();
        for racer in racers {
            within(racer).await.expect("racer");
        }
        // One queue, one binding: one message published through the exchange is queued once.
        assert_eq!(publish_and_count(&broker).await, 1);
        broker.restart().await;
        assert_eq!(
            publish_and_count(&broker).await,
            2,
            "after the restart: the queue kept its message, and is bound once"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_declares_of_a_slow_plugin_exchange_keep_one_instance() {
    bounded(Duration::from_secs(60), async {
        let broker = slow_broker().await;
        let mut racers = Vec::new();
        for _ in 0..4 {
            let (conn, ch) = session(&broker.broker).await;
            racers.push(tokio::spawn(async move {
                try_declare(&ch, "race-slow", "x-slow", spin(200))
                    .await
                    .expect("declare in the race");
                conn
            }));
        }
        let mut conns = Vec::new();
        for racer in racers {
            conns.push(within(racer).await.expect("racer"));
        }
        let status = broker.plugins().status_of("x-slow").expect("x-slow loaded");
        let exchanges: Vec<_> = status
            .exchanges
            .iter()
            .filter(|x| x.exchange == "race-slow")
            .collect();
        assert_eq!(
            exchanges.len(),
            1,
            "the losers' instances were dropped: {exchanges:?}"
        );
        // And the exchange routes, once.
        let (_c, ch) = session(&broker.broker).await;
        queue_on(&ch, "race-slow-q", "race-slow", "").await;
        publish_acked(&ch, "race-slow", "", "one").await;
        let q = within(ch.queue_declare(
            "race-slow-q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .expect("passive declare");
        assert_eq!(q.message_count(), 1);
        drop(conns);
    })
    .await;
}
