//! WASM exchange types end to end: every plugin of `plugins/` (the real components built by
//! `plugins/build.sh`) routes as its README says, through lapin and an in-process broker; an
//! unknown type is 406 (a channel error, as RabbitMQ 3.13+); arguments and bindings the plugin
//! rejects are 406 with its text.

use std::collections::{BTreeMap, BTreeSet};

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bourse_tests::wasm::{
    PluginBroker, assert_error, bodies, declare, hash64, publish, publish_acked, queue, queue_on,
    session, table, text, try_bind, try_declare,
};
use lapin::{BasicProperties, Confirmation};

/// The queue x-modulus-hash picks for `key` among `queues` bound in that order (binding ids
/// increase with creation order, so position i is the i-th queue bound).
fn modulus_target<'a>(key: &str, queues: &[&'a str]) -> &'a str {
    queues[(hash64(key.as_bytes()) % queues.len() as u64) as usize]
}

async fn check_modulus(kind: &str) {
    let broker = PluginBroker::start(&[kind]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "m", kind, FieldTable::default()).await;
    let queues = ["m0", "m1", "m2"];
    for q in queues {
        queue_on(&ch, q, "m", "anything").await;
    }
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..60 {
        let key = format!("order.eu.{i}");
        publish_acked(&ch, "m", &key, &key).await;
        expected
            .entry(modulus_target(&key, &queues))
            .or_default()
            .push(key);
    }
    for q in queues {
        assert_eq!(
            bodies(&ch, q).await,
            expected.remove(q).unwrap_or_default(),
            "{kind}: queue {q}"
        );
    }
}

#[tokio::test]
async fn modulus_hash_sends_each_key_to_hash_mod_n() {
    // README's known value: with three bindings, order.eu.42 goes to the second.
    assert_eq!(modulus_target("order.eu.42", &["a", "b", "c"]), "b");
    check_modulus("x-modulus-hash").await;
}

#[tokio::test]
async fn python_modulus_hash_gives_the_same_answers() {
    check_modulus("x-py-modulus-hash").await;
}

/// The error form of a Python plugin (docs/plugins.md): `raise Err(text)` in `validate`
/// becomes 406 with the text.
#[tokio::test]
async fn a_python_plugin_refuses_arguments_with_its_own_text() {
    let broker = PluginBroker::start(&["x-py-modulus-hash"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    let refused = try_declare(
        &ch,
        "p",
        "x-py-modulus-hash",
        table(&[("hash-header", text("h"))]),
    )
    .await;
    assert_error(refused, 406, "hash-header is not supported");
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "p", "x-py-modulus-hash", FieldTable::default()).await;
}

#[tokio::test]
async fn javascript_modulus_hash_gives_the_same_answers() {
    check_modulus("x-js-modulus-hash").await;
}

#[tokio::test]
async fn consistent_hash_spreads_by_weight_and_keeps_keys_together() {
    let broker = PluginBroker::start(&["x-consistent-hash"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "ch", "x-consistent-hash", FieldTable::default()).await;
    for (q, weight) in [("p1", "1"), ("p2", "1"), ("p3", "2")] {
        queue_on(&ch, q, "ch", weight).await;
    }
    let total = 2000;
    for i in 0..total {
        publish_acked(&ch, "ch", &format!("user-{i}"), &i.to_string()).await;
    }
    // Same key again: must land where the first one did.
    for i in 0..50 {
        publish_acked(&ch, "ch", &format!("user-{i}"), &format!("again-{i}")).await;
    }
    let mut seen = BTreeSet::new();
    let mut counts = BTreeMap::new();
    for q in ["p1", "p2", "p3"] {
        let got = bodies(&ch, q).await;
        let firsts: BTreeSet<String> = got
            .iter()
            .filter(|b| !b.starts_with("again"))
            .cloned()
            .collect();
        for again in got.iter().filter_map(|b| b.strip_prefix("again-")) {
            assert!(firsts.contains(again), "key user-{again} moved to {q}");
        }
        for b in &firsts {
            assert!(seen.insert(b.clone()), "message {b} delivered twice");
        }
        counts.insert(q, firsts.len());
    }
    assert_eq!(seen.len(), total, "every message reaches exactly one queue");
    let share = |q| counts[q] as f64 / total as f64;
    println!(
        "x-consistent-hash weights 1:1:2 -> {:.3} {:.3} {:.3}",
        share("p1"),
        share("p2"),
        share("p3")
    );
    assert!((share("p1") - 0.25).abs() < 0.06, "{counts:?}");
    assert!((share("p2") - 0.25).abs() < 0.06, "{counts:?}");
    assert!((share("p3") - 0.50).abs() < 0.06, "{counts:?}");
}

#[tokio::test]
async fn consistent_hash_on_a_header() {
    let broker = PluginBroker::start(&["x-consistent-hash"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(
        &ch,
        "byuser",
        "x-consistent-hash",
        table(&[("hash-header", text("user-id"))]),
    )
    .await;
    for q in ["u1", "u2", "u3", "u4"] {
        queue_on(&ch, q, "byuser", "1").await;
    }
    for i in 0..40 {
        // Routing keys differ, the header decides.
        let user = i % 4;
        let props = BasicProperties::default()
            .with_headers(table(&[("user-id", AMQPValue::LongLongInt(user))]));
        let c = publish(
            &ch,
            "byuser",
            &format!("k{i}"),
            user.to_string().as_bytes(),
            props,
            false,
        )
        .await;
        assert!(matches!(c, Confirmation::Ack(None)), "{c:?}");
    }
    let mut users_per_queue = Vec::new();
    for q in ["u1", "u2", "u3", "u4"] {
        let got: BTreeSet<String> = bodies(&ch, q).await.into_iter().collect();
        users_per_queue.extend(got.iter().cloned());
    }
    // Each user id's 10 messages went to one queue only.
    let distinct: BTreeSet<&String> = users_per_queue.iter().collect();
    assert_eq!(
        users_per_queue.len(),
        distinct.len(),
        "a user's messages were split"
    );
    assert_eq!(distinct.len(), 4);
    // Without the header there is nothing to hash: not routed (returned when mandatory).
    let c = publish(
        &ch,
        "byuser",
        "k",
        b"no header",
        BasicProperties::default(),
        true,
    )
    .await;
    assert!(
        matches!(c, Confirmation::Ack(Some(_))),
        "expected a return: {c:?}"
    );
}

#[tokio::test]
async fn regex_matches_the_whole_routing_key() {
    let broker = PluginBroker::start(&["x-regex"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "orders", "x-regex", FieldTable::default()).await;
    queue_on(&ch, "eu", "orders", r"order\.eu\.\d+").await;
    queue_on(&ch, "audit", "orders", r"(order|refund)\..*").await;
    publish_acked(&ch, "orders", "order.eu.42", "1").await;
    publish_acked(&ch, "orders", "refund.us.7", "2").await;
    publish_acked(&ch, "orders", "order.eu.x", "3").await;
    let c = publish(
        &ch,
        "orders",
        "xorder.eu.1",
        b"4",
        BasicProperties::default(),
        true,
    )
    .await;
    assert!(
        matches!(c, Confirmation::Ack(Some(_))),
        "no match: returned, {c:?}"
    );
    assert_eq!(bodies(&ch, "eu").await, ["1"]);
    assert_eq!(bodies(&ch, "audit").await, ["1", "2", "3"]);

    queue(&ch, "bad").await;
    let err = try_bind(&ch, "bad", "orders", "(unclosed", FieldTable::default()).await;
    assert_error(err, 406, "x-regex: invalid pattern");
}

#[tokio::test]
async fn json_route_reads_the_body() {
    let broker = PluginBroker::start(&["x-json-route"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "docs", "x-json-route", FieldTable::default()).await;
    queue_on(&ch, "big", "docs", r#"$.type == "order" && $.total >= 100"#).await;
    queue(&ch, "gold").await;
    try_bind(
        &ch,
        "gold",
        "docs",
        "",
        table(&[
            ("x-json-path", text("$.customer.tier")),
            ("x-json-equals", text("gold")),
        ]),
    )
    .await
    .expect("bind with arguments");
    let send = |body: &'static str| {
        let ch = ch.clone();
        async move {
            publish(
                &ch,
                "docs",
                "",
                body.as_bytes(),
                BasicProperties::default(),
                true,
            )
            .await
        }
    };
    let big = r#"{"type":"order","total":250,"customer":{"tier":"silver"}}"#;
    let gold = r#"{"type":"order","total":5,"customer":{"tier":"gold"}}"#;
    let both = r#"{"type":"order","total":100,"customer":{"tier":"gold"}}"#;
    for body in [big, gold, both] {
        assert!(matches!(send(body).await, Confirmation::Ack(None)));
    }
    assert!(matches!(send("not json").await, Confirmation::Ack(Some(_))));
    assert!(matches!(
        send(r#"{"type":"refund"}"#).await,
        Confirmation::Ack(Some(_))
    ));
    assert_eq!(bodies(&ch, "big").await, [big, both]);
    assert_eq!(bodies(&ch, "gold").await, [gold, both]);

    queue(&ch, "bad").await;
    let err = try_bind(&ch, "bad", "docs", "$.a ==", FieldTable::default()).await;
    assert_error(err, 406, "x-json-route");
}

#[tokio::test]
async fn dedup_drops_repeats_within_the_window() {
    let broker = PluginBroker::start(&["x-dedup"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(
        &ch,
        "pay",
        "x-dedup",
        table(&[("x-cache-ttl", AMQPValue::LongInt(300))]),
    )
    .await;
    queue_on(&ch, "ledger", "pay", "").await;
    queue_on(&ch, "audit", "pay", "").await;
    let with_id = |id: &str| BasicProperties::default().with_message_id(ShortString::from(id));
    for (body, id) in [
        ("1", "pay-1"),
        ("2", "pay-1"),
        ("3", "pay-2"),
        ("4", "pay-1"),
    ] {
        publish(&ch, "pay", "", body.as_bytes(), with_id(id), false).await;
    }
    // No message id: routed unchecked.
    publish_acked(&ch, "pay", "", "5").await;
    publish_acked(&ch, "pay", "", "6").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // The window (300 ms) has passed: pay-1 is new again.
    publish(&ch, "pay", "", b"7", with_id("pay-1"), false).await;
    assert_eq!(bodies(&ch, "ledger").await, ["1", "3", "5", "6", "7"]);
    assert_eq!(bodies(&ch, "audit").await, ["1", "3", "5", "6", "7"]);
    // The window lives in the host's state store.
    let status = broker.plugins().status_of("x-dedup").expect("loaded");
    assert!(status.exchanges[0].state_entries >= 1, "{status:?}");
    assert!(!status.exchanges[0].cacheable);

    let err = try_declare(
        &ch,
        "bad",
        "x-dedup",
        table(&[("x-cache-ttl", AMQPValue::LongInt(0))]),
    )
    .await;
    assert_error(err, 406, "x-dedup: x-cache-ttl must be milliseconds");
}

#[tokio::test]
async fn header_expr_evaluates_typed_headers() {
    let broker = PluginBroker::start(&["x-header-expr"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "tasks", "x-header-expr", FieldTable::default()).await;
    queue_on(
        &ch,
        "eu-urgent",
        "tasks",
        r#"region == "eu" && priority >= 5"#,
    )
    .await;
    queue_on(&ch, "no-test", "tasks", "!exists(test)").await;
    let send = |body: &'static str, headers: FieldTable| {
        let ch = ch.clone();
        async move {
            let props = BasicProperties::default().with_headers(headers);
            publish(&ch, "tasks", "", body.as_bytes(), props, true).await
        }
    };
    send(
        "a",
        table(&[
            ("region", text("eu")),
            ("priority", AMQPValue::ShortShortInt(7)),
        ]),
    )
    .await;
    send(
        "b",
        table(&[("region", text("eu")), ("priority", AMQPValue::Double(4.5))]),
    )
    .await;
    send(
        "c",
        table(&[
            ("region", text("eu")),
            ("priority", AMQPValue::LongLongInt(5)),
            ("test", AMQPValue::Boolean(true)),
        ]),
    )
    .await;
    let returned = send("d", table(&[("test", AMQPValue::Void)])).await;
    assert!(
        matches!(returned, Confirmation::Ack(Some(_))),
        "{returned:?}"
    );
    assert_eq!(bodies(&ch, "eu-urgent").await, ["a", "c"]);
    assert_eq!(bodies(&ch, "no-test").await, ["a", "b"]);

    queue(&ch, "bad").await;
    let err = try_bind(&ch, "bad", "tasks", "region = 'eu'", FieldTable::default()).await;
    assert_error(err, 406, "'=' is not an operator, use '=='");
}

#[tokio::test]
async fn unknown_type_and_plugin_rejections_are_406() {
    let broker = PluginBroker::start(&["x-consistent-hash"]).await;
    {
        // 406 closes only the channel (RabbitMQ 3.13+ `rabbit_exchange:check_type`).
        let (_conn, ch) = session(&broker.broker).await;
        let err = try_declare(&ch, "nope", "x-no-such-type", FieldTable::default()).await;
        assert_error(err, 406, "unknown exchange type 'x-no-such-type'");
    }
    let (conn, ch) = session(&broker.broker).await;
    let args = table(&[
        ("hash-header", text("h")),
        ("hash-property", text("message_id")),
    ]);
    let err = try_declare(&ch, "both", "x-consistent-hash", args).await;
    assert_error(
        err,
        406,
        "x-consistent-hash: hash-header and hash-property are mutually exclusive",
    );

    let ch = bourse_tests::wasm::confirm_channel(&conn).await;
    declare(&ch, "w", "x-consistent-hash", FieldTable::default()).await;
    queue(&ch, "q").await;
    let err = try_bind(&ch, "q", "w", "0", FieldTable::default()).await;
    assert_error(err, 406, "must be greater than 0");
    let ch = bourse_tests::wasm::confirm_channel(&conn).await;
    let err = try_bind(&ch, "q", "w", "heavy", FieldTable::default()).await;
    assert_error(err, 406, "x-consistent-hash");
}
