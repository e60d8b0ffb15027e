//! Durable plugin state with the real broker binary ([`bourse_tests::process`]): `x-dedup`
//! keeps the message ids it has seen in its exchange's `state` store, which for a durable
//! exchange lives in the vhost's `plugin-state.log`, group-committed with the message store.
//!
//! - across a clean restart (SIGTERM) and a SIGKILL, a durable `x-dedup` exchange still drops
//!   the ids it saw before;
//! - a persistent message's confirm means what routing wrote to state is on disk, even when
//!   the message went to no durable queue: ids confirmed just before a SIGKILL are all
//!   remembered;
//! - a deleted exchange takes its state along, and a non-durable one keeps it in memory only.
//!
//! These tests ignore `BOURSE_TEST_AMQP_URL`: they restart and kill the broker.

use std::time::Duration;

use bourse_tests::process::BrokerProcess;
use bourse_tests::wasm::plugin_bytes;
use bourse_tests::{TempDir, bounded, confirm_channel};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

/// Upper bound of each test.
const LIMIT: Duration = Duration::from_secs(120);
/// Messages published in a burst just before the SIGKILL.
const BURST: usize = 300;

/// A broker whose plugin directory holds `x-dedup`; the directory lives as long as it.
async fn start() -> (BrokerProcess, TempDir) {
    let plugins = TempDir::new();
    std::fs::write(plugins.path.join("x-dedup.wasm"), plugin_bytes("x-dedup")).expect("copy");
    let dir = plugins.path.to_str().expect("UTF-8 path").to_owned();
    let broker = BrokerProcess::start_with_args(&["--plugin-dir", &dir]).await;
    broker.plugins_loaded(PLUGINS_LOADED).await;
    (broker, plugins)
}

/// How long a start may take to compile (or load from the cache) x-dedup.
const PLUGINS_LOADED: Duration = Duration::from_secs(60);

/// Restarts the broker and waits for its plugin directory: the broker listens before it has
/// loaded its plugins, and restores the durable x-dedup exchanges once it has.
async fn restart(broker: &mut BrokerProcess) {
    broker.restart().await;
    broker.plugins_loaded(PLUGINS_LOADED).await;
}

async fn channel(broker: &BrokerProcess) -> (lapin::Connection, Channel) {
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    (conn, ch)
}

/// Declares `exchange` of type x-dedup with a one-hour window, a queue, and binds them.
async fn topology(ch: &Channel, exchange: &str, durable: bool, queue: &str, queue_durable: bool) {
    let mut args = FieldTable::default();
    args.insert("x-cache-ttl".into(), AMQPValue::LongLongInt(3_600_000));
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Custom("x-dedup".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the x-dedup exchange");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: queue_durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the queue");
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
}

/// Publishes persistent messages with these ids (body = id) and waits for every confirm.
async fn publish_ids(ch: &Channel, exchange: &str, ids: impl IntoIterator<Item = String>) {
    let mut confirms = Vec::new();
    for id in ids {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into());
        let confirm = ch
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                id.as_bytes(),
                properties,
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack(), "publish nacked");
    }
}

/// Empties `queue`: after a SIGKILL, messages taken (auto-acked) just before it may come back,
/// since an acknowledgement is synced lazily (docs/storage.md).
async fn purge(ch: &Channel, queue: &str) {
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
}

/// The bodies of the messages ready in `queue`, taken.
async fn take(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn dedup_remembers_across_a_restart_and_a_sigkill() {
    // Built (if need be) outside the time bound.
    bourse_tests::process::broker_binary();
    bounded(LIMIT, async {
        let (mut broker, _plugins) = start().await;
        {
            let (_conn, ch) = channel(&broker).await;
            topology(&ch, "pay", true, "ledger", true).await;
            publish_ids(&ch, "pay", ids("a", 0..3)).await;
            publish_ids(&ch, "pay", ids("a", 0..3)).await;
            assert_eq!(take(&ch, "ledger").await, ids("a", 0..3));
        }
        let (status, _) = broker.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "clean stop: {status}");
        restart(&mut broker).await;
        {
            let (_conn, ch) = channel(&broker).await;
            // Seen before the restart: dropped. New ones pass.
            publish_ids(&ch, "pay", ids("a", 0..5)).await;
            assert_eq!(
                take(&ch, "ledger").await,
                ids("a", 3..5),
                "{}",
                broker.log_tail()
            );
        }
        // SIGKILL right after the confirms: no shutdown code runs.
        restart(&mut broker).await;
        {
            let (_conn, ch) = channel(&broker).await;
            purge(&ch, "ledger").await;
            publish_ids(&ch, "pay", ids("a", 0..6)).await;
            assert_eq!(take(&ch, "ledger").await, ids("a", 5..6));
            // Deleted and declared again: a fresh window.
            ch.exchange_delete("pay".into(), ExchangeDeleteOptions::default())
                .await
                .expect("delete");
            topology(&ch, "pay", true, "ledger", true).await;
            publish_ids(&ch, "pay", ids("a", 0..2)).await;
            assert_eq!(take(&ch, "ledger").await, ids("a", 0..2));
        }
        restart(&mut broker).await;
        let (_conn, ch) = channel(&broker).await;
        purge(&ch, "ledger").await;
        publish_ids(&ch, "pay", ids("a", 0..3)).await;
        assert_eq!(
            take(&ch, "ledger").await,
            ids("a", 2..3),
            "the state of the deleted exchange must not come back"
        );
    })
    .await;
}

/// The confirm of a persistent message waits for its state write even when the message itself
/// is stored nowhere (here: a transient queue), so every id confirmed before a SIGKILL is
/// remembered after it. Without that, the last group commit's ids would be lost.
#[tokio::test]
async fn a_confirmed_state_write_survives_a_sigkill() {
    // Built (if need be) outside the time bound.
    bourse_tests::process::broker_binary();
    bounded(LIMIT, async {
        let (mut broker, _plugins) = start().await;
        {
            let (_conn, ch) = channel(&broker).await;
            topology(&ch, "seen", true, "scratch", false).await;
            publish_ids(&ch, "seen", ids("b", 0..BURST)).await;
            // Killed as soon as the last confirm arrived.
            restart(&mut broker).await;
        }
        let (_conn, ch) = channel(&broker).await;
        // The transient queue and its binding are gone; the durable exchange is back.
        topology(&ch, "seen", true, "scratch", false).await;
        publish_ids(&ch, "seen", ids("b", 0..BURST + 1)).await;
        assert_eq!(
            take(&ch, "scratch").await,
            ids("b", BURST..BURST + 1),
            "ids confirmed before the kill must all be remembered"
        );
    })
    .await;
}

/// A non-durable exchange's state lives in memory, like the exchange.
#[tokio::test]
async fn a_transient_exchange_keeps_its_state_in_memory_only() {
    // Built (if need be) outside the time bound.
    bourse_tests::process::broker_binary();
    bounded(LIMIT, async {
        let (mut broker, _plugins) = start().await;
        {
            let (_conn, ch) = channel(&broker).await;
            topology(&ch, "brief", false, "box", true).await;
            publish_ids(&ch, "brief", ids("c", 0..2)).await;
            publish_ids(&ch, "brief", ids("c", 0..2)).await;
            assert_eq!(take(&ch, "box").await, ids("c", 0..2));
        }
        let log = std::fs::metadata(
            broker
                .data_dir()
                .join("vhosts")
                .read_dir()
                .expect("vhosts")
                .next()
                .expect("one vhost")
                .expect("entry")
                .path()
                .join("plugin-state.log"),
        )
        .expect("the journal exists")
        .len();
        assert_eq!(log, 8, "only the header: nothing journaled");
        restart(&mut broker).await;
        let (_conn, ch) = channel(&broker).await;
        topology(&ch, "brief", false, "box", true).await;
        purge(&ch, "box").await;
        publish_ids(&ch, "brief", ids("c", 0..2)).await;
        assert_eq!(take(&ch, "box").await, ids("c", 0..2));
    })
    .await;
}

/// The vhost's bytes limit spans its exchanges; past it a write is `err(full)` for the plugin
/// (x-dedup then routes unchecked) and the host says which limit in the exchange's log.
#[tokio::test]
async fn the_vhost_limit_spans_exchanges_and_is_reported_to_the_plugin() {
    use bourse_tests::wasm::{PluginBroker, session};
    bounded(LIMIT, async {
        // Each entry of x-dedup: "d:" + a 3-byte id, an 8-byte expiry, 32 bytes of overhead
        // = 45 bytes. Room for four.
        let broker = PluginBroker::start_with(&["x-dedup"], |cfg| {
            cfg.wasm.state_vhost_bytes_max = 4 * 45 + 10;
        })
        .await;
        let (_conn, ch) = session(&broker.broker).await;
        topology(&ch, "one", true, "q1", true).await;
        topology(&ch, "two", true, "q2", true).await;
        publish_ids(&ch, "one", ids("a", 0..3)).await;
        publish_ids(&ch, "two", ids("b", 0..1)).await;
        // Full: b-1 cannot be recorded, so its repeat is not caught.
        publish_ids(&ch, "two", ids("b", 1..2)).await;
        publish_ids(&ch, "two", ids("b", 0..2)).await;
        assert_eq!(take(&ch, "q2").await, ["b-0", "b-1", "b-1"]);
        // What was recorded still holds.
        publish_ids(&ch, "one", ids("a", 0..3)).await;
        assert_eq!(take(&ch, "q1").await, ids("a", 0..3));
        let status = broker.plugins().status_of("x-dedup").expect("loaded");
        let two = status
            .exchanges
            .iter()
            .find(|x| x.exchange == "two")
            .expect("exchange two");
        assert!(
            two.logs.iter().any(|l| l
                .text
                .contains("the vhost's plugin state holds its limit of 190 bytes")),
            "{:?}",
            two.logs
        );
    })
    .await;
}

/// `x-dedup` with a custom section appended: the same code, another file hash, so the broker
/// takes it for a new version of the type.
fn dedup_v2() -> Vec<u8> {
    let mut bytes = plugin_bytes("x-dedup");
    let name = b"bourse-test-version";
    let payload = b"2";
    // Custom section: id 0, size, then the name (length-prefixed) and the payload; sizes < 128
    // are one LEB128 byte.
    bytes.push(0);
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

/// The state belongs to the exchange, not to the version serving it: a hot reload and a
/// rollback keep every id seen.
#[tokio::test]
async fn a_reload_and_a_rollback_keep_the_state() {
    use bourse_tests::wasm::{PluginBroker, session};
    bounded(LIMIT, async {
        let broker = PluginBroker::start(&["x-dedup"]).await;
        let (_conn, ch) = session(&broker.broker).await;
        topology(&ch, "pay", true, "ledger", true).await;
        publish_ids(&ch, "pay", ids("r", 0..2)).await;
        let before = broker.plugins().status_of("x-dedup").expect("loaded");

        broker.install("x-dedup.wasm", &dedup_v2());
        broker.plugins().scan();
        let after = broker.plugins().status_of("x-dedup").expect("loaded");
        assert_ne!(after.current.sha256, before.current.sha256, "reloaded");
        publish_ids(&ch, "pay", ids("r", 0..3)).await;

        broker.plugins().rollback("x-dedup").expect("rollback");
        let back = broker.plugins().status_of("x-dedup").expect("loaded");
        assert_eq!(back.current.sha256, before.current.sha256, "rolled back");
        publish_ids(&ch, "pay", ids("r", 0..4)).await;
        assert_eq!(take(&ch, "ledger").await, ids("r", 0..4));
    })
    .await;
}
