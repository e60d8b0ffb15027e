//! What a plugin is given and what the host does with its answer: a message's CC and BCC keys
//! reach the plugin in one `route` call (so a hash exchange still picks one queue), and binding
//! ids that are not bound are ignored and counted while the bound ones are delivered.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bourse_tests::wasm::{
    PluginBroker, bodies, declare, hash64, publish, publish_acked, queue_on, session,
};
use lapin::{BasicProperties, Confirmation};

fn keys(list: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        list.iter()
            .map(|k| AMQPValue::LongString(LongString::from(*k)))
            .collect::<Vec<_>>(),
    ))
}

fn with_cc(cc: &[&str], bcc: &[&str]) -> BasicProperties {
    let mut headers = FieldTable::default();
    if !cc.is_empty() {
        headers.insert(ShortString::from("CC"), keys(cc));
    }
    if !bcc.is_empty() {
        headers.insert(ShortString::from("BCC"), keys(bcc));
    }
    BasicProperties::default().with_headers(headers)
}

/// The queue x-consistent-hash picks for `key` among `n` bindings of weight 1 (jump
/// consistent hash over n buckets, as `plugins/guest/src/hash.rs`).
fn jump(key: &str, n: i64) -> usize {
    let mut k = hash64(key.as_bytes());
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n {
        b = j;
        k = k.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((k >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[tokio::test]
async fn a_cc_message_through_consistent_hash_reaches_one_queue() {
    let broker = PluginBroker::start(&["x-consistent-hash"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "ch", "x-consistent-hash", FieldTable::default()).await;
    let queues = ["c0", "c1", "c2", "c3"];
    for q in queues {
        queue_on(&ch, q, "ch", "1").await;
    }
    // Keys chosen so that the CC keys hash to other queues than the publish key.
    let mut sent = Vec::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        let others: Vec<String> = (0..200)
            .map(|j| format!("cc-{i}-{j}"))
            .filter(|k| jump(k, 4) != jump(&key, 4))
            .take(3)
            .collect();
        let cc: Vec<&str> = others.iter().map(String::as_str).collect();
        let confirmation = publish(
            &ch,
            "ch",
            &key,
            key.as_bytes(),
            with_cc(&cc[..2], &cc[2..]),
            false,
        )
        .await;
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "{confirmation:?}"
        );
        sent.push(key);
    }
    // Each message once, in the queue its publish key hashes to (CC keys are not hashed).
    for (i, q) in queues.iter().enumerate() {
        let expected: Vec<String> = sent.iter().filter(|k| jump(k, 4) == i).cloned().collect();
        assert_eq!(bodies(&ch, q).await, expected, "{q}");
    }
    let x = &broker
        .plugins()
        .status_of("x-consistent-hash")
        .expect("loaded")
        .exchanges[0];
    assert_eq!(
        x.routed + x.cache_hits,
        40,
        "one route call per message: {x:?}"
    );
}

#[tokio::test]
async fn cc_and_bcc_keys_reach_a_plugin_that_routes_on_every_key() {
    let broker = PluginBroker::start(&["x-regex"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "rx", "x-regex", FieldTable::default()).await;
    queue_on(&ch, "ra", "rx", "a.*").await;
    queue_on(&ch, "rb", "rx", "b.*").await;
    queue_on(&ch, "rc", "rx", "c.*").await;
    publish(&ch, "rx", "a1", b"cc", with_cc(&["b1"], &[]), false).await;
    publish(&ch, "rx", "a2", b"bcc", with_cc(&[], &["c2"]), false).await;
    publish(
        &ch,
        "rx",
        "z",
        b"only-cc",
        with_cc(&["c3", "a3"], &[]),
        false,
    )
    .await;
    assert_eq!(bodies(&ch, "ra").await, ["cc", "bcc", "only-cc"]);
    assert_eq!(bodies(&ch, "rb").await, ["cc"]);
    assert_eq!(bodies(&ch, "rc").await, ["bcc", "only-cc"]);
    // Same keys again, in another order: a cached decision of the first is not reused.
    publish(&ch, "rx", "b1", b"swapped", with_cc(&["a1"], &[]), false).await;
    publish(&ch, "rx", "a1", b"no-cc", BasicProperties::default(), false).await;
    assert_eq!(bodies(&ch, "ra").await, ["swapped", "no-cc"]);
    assert_eq!(bodies(&ch, "rb").await, ["swapped"]);
}

#[tokio::test]
async fn unknown_binding_ids_are_ignored_and_counted() {
    let broker = PluginBroker::start(&["x-garbage"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "g", "x-garbage", FieldTable::default()).await;
    queue_on(&ch, "g1", "g", "k").await;
    queue_on(&ch, "g2", "g", "k").await;
    // Bound ids with unknown ones: delivered to the bound queues, many times over.
    for i in 0..8 {
        publish_acked(&ch, "g", "mixed", &format!("m{i}")).await;
    }
    let all: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&ch, "g1").await, all);
    assert_eq!(bodies(&ch, "g2").await, all);
    // Only unknown ids: routed nowhere (a mandatory publish comes back), not a failure.
    match publish(&ch, "g", "none", b"lost", BasicProperties::default(), true).await {
        Confirmation::Ack(Some(returned)) => assert_eq!(returned.reply_code, 312),
        other => panic!("expected basic.return then ack, got {other:?}"),
    }
    let x = &broker
        .plugins()
        .status_of("x-garbage")
        .expect("loaded")
        .exchanges[0];
    assert!(x.failed.is_none(), "{x:?}");
    assert_eq!(x.failures, 0, "{x:?}");
    assert_eq!(x.replaced, 0, "{x:?}");
    assert_eq!(x.routed, 9, "{x:?}");
    // x-garbage answers 4 or 5 unknown ids per call (see plugins/hostile/garbage).
    assert!(x.unknown_ids >= 4 * 9, "{x:?}");
}
