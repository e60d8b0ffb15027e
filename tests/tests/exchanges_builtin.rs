//! The four built-in exchange types end to end: direct, fanout, topic (wildcards, empty words)
//! and headers (x-match rules, x- arguments, typed values), with their binding errors.
//!
//! Every publish uses publisher confirms, so by the time a test looks at a queue the broker has
//! finished routing; "no message" assertions are therefore meaningful without sleeping. The
//! helpers are in [`bourse_tests::exchanges`].

use std::collections::BTreeSet;

use amq_protocol::types::{AMQPValue, FieldTable};
use bourse_tests::exchanges::{
    bind_queue, bodies, declare, publish, publish_headers, queue, queue_on, table, text,
};
use bourse_tests::raw::{assert_reply_code, within};
use bourse_tests::{TestBroker, session};
use lapin::ExchangeKind;
use lapin::options::QueueBindOptions;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Built-in types

#[tokio::test]
async fn direct_exchange_routes_on_exact_key() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "d", ExchangeKind::Direct).await;
    queue_on(&ch, "q1", "d", "red").await;
    queue_on(&ch, "q2", "d", "red").await;
    queue_on(&ch, "q3", "d", "green").await;
    bind_queue(&ch, "q3", "d", "red.dark", FieldTable::default()).await;

    publish(&ch, "d", "red", "r").await;
    publish(&ch, "d", "green", "g").await;
    publish(&ch, "d", "red.dark", "rd").await;
    publish(&ch, "d", "blue", "b").await;
    publish(&ch, "d", "RED", "upper").await;
    assert_eq!(bodies(&ch, "q1").await, ["r"]);
    assert_eq!(bodies(&ch, "q2").await, ["r"]);
    assert_eq!(bodies(&ch, "q3").await, ["g", "rd"]);
}

#[tokio::test]
async fn fanout_exchange_ignores_routing_key() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "f", ExchangeKind::Fanout).await;
    queue_on(&ch, "q1", "f", "").await;
    queue_on(&ch, "q2", "f", "some-key").await;
    publish(&ch, "f", "", "m1").await;
    publish(&ch, "f", "other", "m2").await;
    for q in ["q1", "q2"] {
        assert_eq!(bodies(&ch, q).await, ["m1", "m2"], "{q}");
    }
}

#[tokio::test]
async fn topic_exchange_wildcards_and_empty_words() {
    // Matches follow rabbit_exchange_type_topic: words are split on '.', the empty routing key
    // has zero words, '*' is exactly one (possibly empty) word, '#' is zero or more words.
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "t", ExchangeKind::Topic).await;

    let keys = [
        "", "a", "a.b", "a.b.c", "a..c", ".b", "a.b.b.c", "c", "x.a.b.c", "a.", "a.c",
    ];
    let cases: &[(&str, &[&str])] = &[
        ("#", &keys),
        ("*", &["a", "c"]),
        ("a.*", &["a.b", "a.", "a.c"]),
        ("a.*.c", &["a.b.c", "a..c"]),
        (
            "a.#",
            &["a", "a.b", "a.b.c", "a..c", "a.b.b.c", "a.", "a.c"],
        ),
        ("#.c", &["a.b.c", "a..c", "a.b.b.c", "c", "x.a.b.c", "a.c"]),
        ("a.#.c", &["a.b.c", "a..c", "a.b.b.c", "a.c"]),
        ("*.b", &["a.b", ".b"]),
        ("#.b.#", &["a.b", "a.b.c", ".b", "a.b.b.c", "x.a.b.c"]),
        ("", &[""]),
        ("a.b.c", &["a.b.c"]),
        ("*.*.*", &["a.b.c", "a..c"]),
    ];
    for (i, (pattern, _)) in cases.iter().enumerate() {
        queue_on(&ch, &format!("t{i}"), "t", pattern).await;
    }
    for key in keys {
        publish(&ch, "t", key, key).await;
    }
    for (i, (pattern, expected)) in cases.iter().enumerate() {
        let got: BTreeSet<String> = bodies(&ch, &format!("t{i}")).await.into_iter().collect();
        assert_eq!(got, set(expected), "binding pattern {pattern:?}");
    }
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "h", ExchangeKind::Headers).await;
    let one = AMQPValue::LongInt(1);
    let pattern = |mode: Option<&str>| {
        let mut t = table(&[("a", one.clone()), ("b", text("x"))]);
        if let Some(mode) = mode {
            t.insert("x-match".into(), text(mode));
        }
        t
    };
    for (q, mode) in [
        ("q-all", Some("all")),
        ("q-any", Some("any")),
        ("q-default", None),
    ] {
        queue(&ch, q).await;
        bind_queue(&ch, q, "h", "", pattern(mode)).await;
    }

    publish_headers(
        &ch,
        "h",
        "both",
        table(&[("a", one.clone()), ("b", text("x"))]),
    )
    .await;
    publish_headers(&ch, "h", "only-a", table(&[("a", one.clone())])).await;
    publish_headers(
        &ch,
        "h",
        "b-and-extra",
        table(&[("b", text("x")), ("c", AMQPValue::LongInt(9))]),
    )
    .await;
    publish_headers(
        &ch,
        "h",
        "wrong-a",
        table(&[("a", AMQPValue::LongInt(2)), ("b", text("y"))]),
    )
    .await;
    publish(&ch, "h", "", "no-headers").await;

    assert_eq!(bodies(&ch, "q-all").await, ["both"]);
    assert_eq!(
        bodies(&ch, "q-default").await,
        ["both"],
        "x-match defaults to all"
    );
    assert_eq!(
        bodies(&ch, "q-any").await,
        ["both", "only-a", "b-and-extra"]
    );
}

#[tokio::test]
async fn headers_exchange_x_prefixed_keys() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "h", ExchangeKind::Headers).await;
    let bindings = [
        (
            "q-all",
            table(&[
                ("x-match", text("all")),
                ("x-k", text("v")),
                ("a", AMQPValue::LongInt(1)),
            ]),
        ),
        (
            "q-all-x",
            table(&[
                ("x-match", text("all-with-x")),
                ("x-k", text("v")),
                ("a", AMQPValue::LongInt(1)),
            ]),
        ),
        (
            "q-any",
            table(&[("x-match", text("any")), ("x-k", text("v"))]),
        ),
        (
            "q-any-x",
            table(&[("x-match", text("any-with-x")), ("x-k", text("v"))]),
        ),
    ];
    for (q, args) in bindings {
        queue(&ch, q).await;
        bind_queue(&ch, q, "h", "", args).await;
    }

    publish_headers(&ch, "h", "a", table(&[("a", AMQPValue::LongInt(1))])).await;
    publish_headers(
        &ch,
        "h",
        "a+xk",
        table(&[("a", AMQPValue::LongInt(1)), ("x-k", text("v"))]),
    )
    .await;
    publish_headers(&ch, "h", "xk", table(&[("x-k", text("v"))])).await;

    assert_eq!(
        bodies(&ch, "q-all").await,
        ["a", "a+xk"],
        "all ignores x- keys"
    );
    assert_eq!(
        bodies(&ch, "q-all-x").await,
        ["a+xk"],
        "all-with-x requires x- keys too"
    );
    assert!(bodies(&ch, "q-any").await.is_empty(), "any ignores x- keys");
    assert_eq!(
        bodies(&ch, "q-any-x").await,
        ["a+xk", "xk"],
        "any-with-x matches on x- keys"
    );
}

#[tokio::test]
async fn headers_exchange_typed_values() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "h", ExchangeKind::Headers).await;
    queue(&ch, "q-int").await;
    bind_queue(
        &ch,
        "q-int",
        "h",
        "",
        table(&[("n", AMQPValue::LongInt(5))]),
    )
    .await;
    queue(&ch, "q-str").await;
    bind_queue(&ch, "q-str", "h", "", table(&[("n", text("5"))])).await;
    queue(&ch, "q-present").await;
    bind_queue(&ch, "q-present", "h", "", table(&[("n", AMQPValue::Void)])).await;

    publish_headers(&ch, "h", "int5", table(&[("n", AMQPValue::LongInt(5))])).await;
    publish_headers(&ch, "h", "str5", table(&[("n", text("5"))])).await;
    publish_headers(&ch, "h", "int6", table(&[("n", AMQPValue::LongInt(6))])).await;
    publish_headers(
        &ch,
        "h",
        "other-key",
        table(&[("m", AMQPValue::LongInt(5))]),
    )
    .await;

    assert_eq!(
        bodies(&ch, "q-int").await,
        ["int5"],
        "int 5 matches int 5 but not \"5\""
    );
    assert_eq!(
        bodies(&ch, "q-str").await,
        ["str5"],
        "\"5\" matches \"5\" but not int 5"
    );
    assert_eq!(
        bodies(&ch, "q-present").await,
        ["int5", "str5", "int6"],
        "void matches presence"
    );
}

#[tokio::test]
async fn headers_exchange_compares_integers_by_value() {
    // RabbitMQ 3.10 compares header values with Erlang ==, so a 32-bit 5 equals a 64-bit 5.
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "h", ExchangeKind::Headers).await;
    queue(&ch, "q").await;
    bind_queue(&ch, "q", "h", "", table(&[("n", AMQPValue::LongInt(5))])).await;
    publish_headers(
        &ch,
        "h",
        "long5",
        table(&[("n", AMQPValue::LongLongInt(5))]),
    )
    .await;
    assert_eq!(bodies(&ch, "q").await, ["long5"]);
}

#[tokio::test]
async fn headers_binding_with_invalid_x_match_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "h", ExchangeKind::Headers).await;
    queue(&ch, "q").await;
    let args = table(&[("x-match", text("sometimes")), ("a", AMQPValue::LongInt(1))]);
    let res = within(ch.queue_bind(
        "q".into(),
        "h".into(),
        "".into(),
        QueueBindOptions::default(),
        args,
    ))
    .await;
    assert_reply_code(res, 406);
}
