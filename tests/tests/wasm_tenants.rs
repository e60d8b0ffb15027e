//! Tenant isolation of WASM routing (issue 11), measured: tenant B publishes through an
//! `x-modulus-hash` exchange while tenant A hammers hostile plugins (a route that loops, one
//! that allocates until the memory cap, an `init` that spins) with its call deadline raised
//! to 300 ms and a CPU budget of 100 ms/s. B's confirmed throughput must stay at 90% or more
//! of what it is with A idle; both figures and B's slowest round trip are printed.
//!
//! Each condition is measured twice and its better window counts, the idle one too: on a
//! shared 2-core machine something else only ever takes throughput away, so the best window
//! is the closest view of what each condition allows, and one disturbed window of three
//! seconds does not decide the verdict.
//!
//! Alone in its file: other tests running beside it would disturb the measurement.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};
use bourse_tests::bounded;
use bourse_tests::connection::lapin_connect;
use bourse_tests::raw::within;
use bourse_tests::tenancy::{grant_all, put_vhost, vhost_limits, vhost_url};
use bourse_tests::wasm::{PluginBroker, confirm_channel, declare, try_bind};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

/// How long each phase measures B.
const WINDOW: Duration = Duration::from_secs(3);
/// Publishes each of B's publishers keeps in flight.
const BATCH: usize = 256;

/// B's two publishers at once, so that B keeps the broker's CPU busy (where a neighbour's
/// CPU use would show): msg/s of both and the slowest batch of either.
async fn measure_b(chs: &[Channel; 2], phase: &str, next_key: &AtomicU64) -> (f64, Duration) {
    let ((r0, s0), (r1, s1)) = tokio::join!(
        publish_b(&chs[0], phase, next_key),
        publish_b(&chs[1], phase, next_key)
    );
    let (rate, slowest) = (r0 + r1, s0.max(s1));
    eprintln!(
        "b {phase}: {rate:.0} msg/s routed by x-modulus-hash, slowest batch of {BATCH} {:.1} ms",
        slowest.as_secs_f64() * 1e3
    );
    (rate, slowest)
}

/// B measured twice under one condition, the queues purged after each window: the better
/// rate of the two and the slowest batch of either.
async fn best_of_two<P, F>(
    chs: &[Channel; 2],
    phase: &str,
    next_key: &AtomicU64,
    purge: &P,
) -> (f64, Duration)
where
    P: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    let (first, first_slowest) = measure_b(chs, phase, next_key).await;
    purge().await;
    let (second, second_slowest) = measure_b(chs, phase, next_key).await;
    purge().await;
    (first.max(second), first_slowest.max(second_slowest))
}

/// One of B's publishers: unique routing keys (every message is a plugin call, no cache
/// hit) in batches of [`BATCH`] confirmed publishes, for [`WINDOW`].
async fn publish_b(ch: &Channel, phase: &str, next_key: &AtomicU64) -> (f64, Duration) {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < WINDOW {
        let batch_started = Instant::now();
        let mut confirms = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let key = format!("k{}", next_key.fetch_add(1, Ordering::Relaxed));
            confirms.push(
                within(ch.basic_publish(
                    "bx".into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    b"b",
                    BasicProperties::default(),
                ))
                .await
                .expect("publish in b"),
            );
        }
        for confirm in confirms {
            let confirmation = within(confirm).await.expect("confirm in b");
            assert!(confirmation.is_ack(), "{phase}: {confirmation:?}");
        }
        sent += BATCH as u64;
        slowest = slowest.max(batch_started.elapsed());
    }
    (sent as f64 / started.elapsed().as_secs_f64(), slowest)
}

/// One of A's hostile clients: declares fresh exchanges of `kind` (dodging the failure limit
/// that marks an exchange failed), binds a queue and publishes into each, until `stop`.
async fn hammer(conn: Connection, kind: &'static str, args: FieldTable, stop: Arc<AtomicBool>) {
    let Ok(mut ch) = conn.create_channel().await else {
        return;
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let exchange = format!("{kind}-{n}");
        // No timeouts here: A is slowed on purpose, and stopped by aborting this task.
        let declared = ch
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Custom(kind.to_owned()),
                ExchangeDeclareOptions::default(),
                args.clone(),
            )
            .await;
        if declared.is_err() {
            // A refused declare closes the channel; open another.
            match conn.create_channel().await {
                Ok(fresh) => {
                    ch = fresh;
                    continue;
                }
                Err(_) => return,
            }
        }
        let _ = ch
            .queue_bind(
                "sink".into(),
                exchange.as_str().into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        for i in 0..8 {
            if ch
                .basic_publish(
                    exchange.as_str().into(),
                    format!("k{i}").as_str().into(),
                    BasicPublishOptions::default(),
                    b"a",
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Per hostile type: exchanges declared, deadlines and memory caps hit.
fn hostile_stats(handle: &bourse::BrokerHandle) -> Vec<(String, usize, u64, u64)> {
    handle
        .plugins()
        .expect("plugins")
        .status()
        .iter()
        .filter(|p| p.name == "x-loop" || p.name == "x-membomb" || p.name == "x-slow")
        .map(|p| {
            let (deadlines, caps) = p
                .exchanges
                .iter()
                .fold((0, 0), |(d, c), x| (d + x.deadlines, c + x.caps));
            (p.name.clone(), p.exchanges.len(), deadlines, caps)
        })
        .collect()
}

async fn session_in(base: &str, vhost: &str) -> Connection {
    lapin_connect(&vhost_url(base, vhost))
        .await
        .unwrap_or_else(|e| panic!("connect to {vhost}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_leaves_anothers_wasm_routing_at_90_percent() {
    bounded(Duration::from_secs(90), async {
        let broker =
            PluginBroker::start(&["x-modulus-hash", "x-loop", "x-membomb", "x-slow"]).await;
        let handle = broker.broker.handle().expect("in-process broker");
        for command in [
            put_vhost("a"),
            put_vhost("b"),
            grant_all("guest", "a"),
            grant_all("guest", "b"),
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let base = broker.broker.url().to_owned();

        let (b, b2) = (session_in(&base, "b").await, session_in(&base, "b").await);
        let bch = confirm_channel(&b).await;
        let bchs = [confirm_channel(&b).await, confirm_channel(&b2).await];
        declare(&bch, "bx", "x-modulus-hash", FieldTable::default()).await;
        for q in ["b0", "b1"] {
            within(bch.queue_declare(
                q.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("queue in b");
            try_bind(&bch, q, "bx", "any", FieldTable::default())
                .await
                .expect("bind in b");
        }
        let a = session_in(&base, "a").await;
        let ach = within(a.create_channel()).await.expect("channel in a");
        within(ach.queue_declare(
            "sink".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("queue in a");
        let purge = || async {
            for q in ["b0", "b1"] {
                within(bch.queue_purge(q.into(), QueuePurgeOptions::default()))
                    .await
                    .expect("purge");
            }
        };
        let keys = AtomicU64::new(0);

        // Warm up (compiled code paths, caches), then B alone.
        measure_b(&bchs, "warm-up", &keys).await;
        purge().await;
        let (idle, _) = measure_b(&bchs, "with a idle", &keys).await;
        purge().await;

        // A turns hostile within a CPU budget of 100 ms/s, at the default 5 ms deadline first.
        handle
            .execute(vhost_limits("a", &[("wasm-cpu-ms-per-sec", 100)]))
            .await
            .expect("a's budget");
        let stop = Arc::new(AtomicBool::new(false));
        let mut spin = FieldTable::default();
        spin.insert("spin-ms".into(), AMQPValue::LongLongInt(150));
        let mut hostile = Vec::new();
        for (kind, args) in [
            ("x-loop", FieldTable::default()),
            ("x-loop", FieldTable::default()),
            ("x-membomb", FieldTable::default()),
            ("x-slow", spin),
        ] {
            let conn = session_in(&base, "a").await;
            hostile.push(tokio::spawn(hammer(conn, kind, args, stop.clone())));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (attacked, slowest) = best_of_two(&bchs, "with a hostile", &keys, &purge).await;
        // Then with its deadline raised to 300 ms (the stall of other tenants).
        handle
            .execute(vhost_limits("a", &[("wasm-call-deadline-ms", 300)]))
            .await
            .expect("a's deadline");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (attacked_long, slowest_long) =
            best_of_two(&bchs, "with a hostile, 300 ms deadline", &keys, &purge).await;
        stop.store(true, Ordering::Relaxed);
        for task in &hostile {
            task.abort();
        }
        let stats = hostile_stats(handle);
        // A gone (its connections closed with it), B alone again: the baseline is the better
        // of both idle phases, as each hostile figure is the better of its two windows.
        handle
            .execute(bourse::meta::MetaCommand::DeleteVhost { name: "a".into() })
            .await
            .expect("delete a");
        let (idle_after, _) = measure_b(&bchs, "with a deleted", &keys).await;
        let idle = idle.max(idle_after);

        eprintln!(
            "a's hostile plugins (type, exchanges, deadlines hit, memory caps hit): {stats:?}"
        );
        for (phase, rate, slowest) in [
            ("5 ms", attacked, slowest),
            ("300 ms", attacked_long, slowest_long),
        ] {
            let ratio = rate / idle;
            eprintln!(
                "b's WASM routing with a hostile at a {phase} deadline: {:.0}% of idle \
                 ({rate:.0} / {idle:.0} msg/s); slowest batch {:.1} ms",
                ratio * 100.0,
                slowest.as_secs_f64() * 1e3
            );
            assert!(
                ratio >= 0.9,
                "b's WASM routing fell to {:.0}% of idle under a hostile a ({phase} deadline)",
                ratio * 100.0
            );
        }
        let hit = |kind: &str| {
            stats
                .iter()
                .filter(|(name, ..)| name == kind)
                .map(|(_, _, d, c)| d + c)
                .sum::<u64>()
        };
        assert!(
            hit("x-loop") > 0 && hit("x-membomb") > 0,
            "a's hostile plugins never hit their limits: the test measured nothing ({stats:?})"
        );
    })
    .await;
}
