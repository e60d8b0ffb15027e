//! The decision cache of WASM exchanges: a message with the same declared inputs as an earlier
//! one is answered from the cache (no plugin call); any other is a miss; a bind, an unbind, a
//! reload and a rollback empty it; and a plugin that declares itself cacheable but reads the
//! state, a clock or randomness while routing has those decisions not cached (`x-impure`).

use amq_protocol::types::FieldTable;
use bourse::exchange::wasm::ExchangeStatus;
use bourse_tests::TempDir;
use bourse_tests::wasm::{
    PluginBroker, bodies, declare, plugin_bytes, publish_acked, queue_on, session,
};

fn exchange(broker: &PluginBroker, kind: &str) -> ExchangeStatus {
    broker.plugins().status_of(kind).expect("loaded").exchanges[0].clone()
}

/// `(plugin calls, cache hits)` of the only exchange of `kind`.
fn calls(broker: &PluginBroker, kind: &str) -> (u64, u64) {
    let x = exchange(broker, kind);
    (x.routed, x.cache_hits)
}

/// `bytes` (a component) with a custom section appended: another file, another SHA-256, the
/// same behaviour. A reload onto it is a real version swap.
fn with_custom_section(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(tag.len(), &mut payload);
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"same behaviour");
    bytes.push(0);
    leb(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

#[tokio::test]
async fn same_inputs_hit_other_inputs_miss_and_changes_empty_the_cache() {
    let broker = PluginBroker::start(&["x-regex"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "r", "x-regex", FieldTable::default()).await;
    queue_on(&ch, "qa", "r", "a.*").await;
    assert!(exchange(&broker, "x-regex").cacheable);

    // The same key and body size: one call, then hits.
    for _ in 0..3 {
        publish_acked(&ch, "r", "a1", "m").await;
    }
    assert_eq!(calls(&broker, "x-regex"), (1, 2));
    // Another key, another body size: misses.
    publish_acked(&ch, "r", "a2", "m").await;
    publish_acked(&ch, "r", "a1", "mm").await;
    assert_eq!(calls(&broker, "x-regex"), (3, 2));
    assert_eq!(bodies(&ch, "qa").await.len(), 5);

    // A bind: the next message is a miss, and reaches the new queue.
    queue_on(&ch, "qa2", "r", "a1").await;
    publish_acked(&ch, "r", "a1", "m").await;
    assert_eq!(calls(&broker, "x-regex"), (4, 2));
    assert_eq!(bodies(&ch, "qa2").await, ["m"]);
    publish_acked(&ch, "r", "a1", "m").await;
    assert_eq!(calls(&broker, "x-regex"), (4, 3));

    // An unbind: a miss, and the unbound queue gets nothing.
    bourse_tests::raw::within(ch.queue_unbind(
        "qa2".into(),
        "r".into(),
        "a1".into(),
        FieldTable::default(),
    ))
    .await
    .expect("unbind");
    publish_acked(&ch, "r", "a1", "m").await;
    assert_eq!(calls(&broker, "x-regex"), (5, 3));
    assert_eq!(
        bodies(&ch, "qa2").await,
        ["m"],
        "only the one before the unbind"
    );
    assert_eq!(bodies(&ch, "qa").await.len(), 3);

    // A reload onto another build (same behaviour): a miss.
    let versions = TempDir::new();
    let next = versions.path.join("regex-next.wasm");
    std::fs::write(&next, with_custom_section(plugin_bytes("x-regex"), "next")).expect("write");
    let manager = broker.plugins().clone();
    tokio::task::spawn_blocking(move || manager.replace(&next))
        .await
        .expect("join")
        .expect("reload");
    assert_eq!(exchange(&broker, "x-regex").reloads, 1);
    publish_acked(&ch, "r", "a1", "m").await;
    assert_eq!(calls(&broker, "x-regex"), (6, 3));
    publish_acked(&ch, "r", "a1", "m").await;
    assert_eq!(calls(&broker, "x-regex"), (6, 4));

    // A rollback: a miss again.
    let manager = broker.plugins().clone();
    tokio::task::spawn_blocking(move || manager.rollback("x-regex"))
        .await
        .expect("join")
        .expect("rollback");
    publish_acked(&ch, "r", "a1", "m").await;
    assert_eq!(calls(&broker, "x-regex"), (7, 4));
    assert_eq!(bodies(&ch, "qa").await.len(), 3);
}

#[tokio::test]
async fn decisions_that_read_state_clock_or_randomness_are_not_cached() {
    let broker = PluginBroker::start(&["x-impure"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "i", "x-impure", FieldTable::default()).await;
    let queues = ["i0", "i1", "i2"];
    for q in queues {
        queue_on(&ch, q, "i", "").await;
    }
    assert!(exchange(&broker, "x-impure").cacheable, "it says so");

    // Round robin through the state store: a cached decision would freeze it on one queue.
    for n in 0..6 {
        publish_acked(&ch, "i", "state", &format!("s{n}")).await;
    }
    for (i, q) in queues.iter().enumerate() {
        let expected = [format!("s{i}"), format!("s{}", i + 3)];
        assert_eq!(bodies(&ch, q).await, expected, "{q}");
    }
    for key in ["clock", "wasi-clock", "random"] {
        for _ in 0..3 {
            publish_acked(&ch, "i", key, key).await;
        }
    }
    let x = exchange(&broker, "x-impure");
    assert_eq!((x.routed, x.cache_hits, x.impure), (15, 0, 15), "{x:?}");

    // Its pure decisions are still cached.
    for _ in 0..3 {
        publish_acked(&ch, "i", "pure", "p").await;
    }
    let x = exchange(&broker, "x-impure");
    assert_eq!((x.routed, x.cache_hits, x.impure), (16, 2, 15), "{x:?}");
    for q in queues {
        assert_eq!(bodies(&ch, q).await.len(), 9 + 3, "{q}");
    }
}
