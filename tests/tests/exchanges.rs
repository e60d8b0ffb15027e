//! Exchanges end to end: declare/delete semantics and their reply codes, exchange-to-exchange
//! bindings, the pre-declared exchanges, the four built-in types, alternate exchanges and
//! sender-selected distribution (CC/BCC).
//!
//! Every publish uses publisher confirms, so by the time a test looks at a queue the broker has
//! finished routing; "no message" assertions are therefore meaningful without sleeping.

use std::collections::BTreeSet;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use bourse_tests::raw::{assert_reply_code, reply_code, within};
use bourse_tests::{TestBroker, confirm_channel, session};
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};

// ---------------------------------------------------------------------------------------------
// Helpers

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn try_declare(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    within(ch.exchange_declare(name.into(), kind, options, args)).await
}

async fn declare(ch: &Channel, name: &str, kind: ExchangeKind) {
    try_declare(
        ch,
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

async fn declare_queue(ch: &Channel, name: &str) {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    ))
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

async fn unbind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_unbind(
        queue.into(),
        exchange.into(),
        key.into(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("unbind {queue} from {exchange}: {e}"));
}

/// Binds exchange `destination` to `source`.
async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    within(ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("bind exchange {destination} to {source}: {e}"));
}

/// A queue bound to `exchange` with `key`, in one step.
async fn queue_on(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    declare_queue(ch, queue).await;
    bind_queue(ch, queue, exchange, key, FieldTable::default()).await;
}

/// Publishes and waits for the broker's confirm; returns the confirmation or the channel error.
async fn try_publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<Confirmation, lapin::Error> {
    let options = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let confirm =
        within(ch.basic_publish(exchange.into(), key.into(), options, body, properties)).await?;
    within(confirm).await
}

/// Publishes a plain message and expects an ack without a return.
async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str) {
    let confirmation = try_publish(
        ch,
        exchange,
        key,
        body.as_bytes(),
        BasicProperties::default(),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("publish to {exchange:?} with {key:?}: {e}"));
    assert!(
        confirmation.is_ack(),
        "publish to {exchange:?} with {key:?} was not acked"
    );
}

/// Publishes a message with headers and expects an ack.
async fn publish_headers(ch: &Channel, exchange: &str, body: &str, headers: FieldTable) {
    let props = BasicProperties::default().with_headers(headers);
    let confirmation = try_publish(ch, exchange, "", body.as_bytes(), props, false)
        .await
        .unwrap_or_else(|e| panic!("publish to {exchange:?}: {e}"));
    assert!(
        confirmation.is_ack(),
        "publish to {exchange:?} was not acked"
    );
}

/// Takes every ready message from `queue`.
async fn drain(ch: &Channel, queue: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
        {
            Some(msg) => out.push(msg.delivery),
            None => return out,
        }
    }
    panic!("queue {queue} never emptied");
}

/// The bodies of every ready message in `queue`, in order.
async fn bodies(ch: &Channel, queue: &str) -> Vec<String> {
    drain(ch, queue)
        .await
        .into_iter()
        .map(|d| String::from_utf8(d.data).expect("utf-8 body"))
        .collect()
}

/// Whether exchange `name` exists, checked with a passive declare on a throwaway channel.
async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = within(conn.create_channel()).await.expect("channel opens");
    let res = try_declare(
        &ch,
        name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    match res {
        Ok(()) => true,
        Err(e) if reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of {name}: {e}"),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Declare and delete

#[tokio::test]
async fn passive_declare_of_missing_exchange_is_not_found() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let res = try_declare(
        &ch,
        "no-such-exchange",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 404);
    // A channel error: the connection carries on.
    let ch = confirm_channel(&conn).await;
    declare(&ch, "x", ExchangeKind::Fanout).await;
    assert!(exchange_exists(&conn, "x").await);
}

#[tokio::test]
async fn passive_declare_ignores_type_and_flags() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "x", ExchangeKind::Topic).await;
    let passive = ExchangeDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    try_declare(
        &ch,
        "x",
        ExchangeKind::Fanout,
        passive,
        FieldTable::default(),
    )
    .await
    .expect("passive declare only checks existence");
}

#[tokio::test]
async fn redeclare_with_same_attributes_is_ok() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for _ in 0..2 {
        try_declare(&ch, "x", ExchangeKind::Topic, opts, FieldTable::default())
            .await
            .expect("idempotent declare");
    }
}

#[tokio::test]
async fn redeclare_with_other_type_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "x", ExchangeKind::Direct).await;
    let res = try_declare(
        &ch,
        "x",
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 406);
}

#[tokio::test]
async fn redeclare_with_other_flags_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    try_declare(
        &ch,
        "x",
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await
    .expect("durable declare");

    let variants = [
        ("durable", ExchangeDeclareOptions::default()),
        (
            "auto_delete",
            ExchangeDeclareOptions {
                auto_delete: true,
                ..durable
            },
        ),
        (
            "internal",
            ExchangeDeclareOptions {
                internal: true,
                ..durable
            },
        ),
    ];
    for (what, opts) in variants {
        let ch = confirm_channel(&conn).await;
        let res = try_declare(&ch, "x", ExchangeKind::Direct, opts, FieldTable::default()).await;
        match res {
            Ok(()) => panic!("redeclare with different {what} succeeded"),
            Err(e) => assert_eq!(reply_code(&e), Some(406), "different {what}: {e}"),
        }
    }
    // The original is untouched.
    assert!(exchange_exists(&conn, "x").await);
}

#[tokio::test]
async fn redeclare_compares_only_the_alternate_exchange_argument() {
    // rabbit_exchange:assert_args_equivalence: "The only arg we care about is alternate-exchange".
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let args = table(&[
        ("alternate-exchange", long_str("ae1")),
        ("x-note", long_str("one")),
    ]);
    try_declare(&ch, "x", ExchangeKind::Direct, Default::default(), args)
        .await
        .expect("declare with arguments");

    let same_ae = table(&[
        ("alternate-exchange", long_str("ae1")),
        ("x-note", long_str("two")),
    ]);
    try_declare(&ch, "x", ExchangeKind::Direct, Default::default(), same_ae)
        .await
        .expect("other arguments are not compared");

    let other_ae = table(&[("alternate-exchange", long_str("ae2"))]);
    let res = try_declare(&ch, "x", ExchangeKind::Direct, Default::default(), other_ae).await;
    assert_reply_code(res, 406);

    let ch = confirm_channel(&conn).await;
    let res = try_declare(
        &ch,
        "x",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 406);
}

#[tokio::test]
async fn unknown_exchange_type_is_command_invalid_connection_error() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let res = try_declare(
        &ch,
        "x",
        ExchangeKind::Custom("no-such-type".into()),
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 503);
    assert!(
        within(conn.create_channel()).await.is_err(),
        "503 closes the whole connection"
    );
    // Other connections are unaffected and the exchange was not created.
    let (conn2, _) = session(&broker).await;
    assert!(!exchange_exists(&conn2, "x").await);
}

#[tokio::test]
async fn delete_removes_exchange() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "x", ExchangeKind::Direct).await;
    within(ch.exchange_delete("x".into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
    assert!(!exchange_exists(&conn, "x").await);
    // Publishing to it is now a 404 channel error.
    let res = try_publish(&ch, "x", "k", b"m", BasicProperties::default(), false).await;
    assert_reply_code(res, 404);
}

#[tokio::test]
async fn delete_if_unused_on_bound_exchange_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "x", ExchangeKind::Direct).await;
    queue_on(&ch, "q", "x", "k").await;
    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_reply_code(within(ch.exchange_delete("x".into(), if_unused)).await, 406);
    assert!(
        exchange_exists(&conn, "x").await,
        "still there after the refused delete"
    );

    let ch = confirm_channel(&conn).await;
    unbind_queue(&ch, "q", "x", "k").await;
    within(ch.exchange_delete("x".into(), if_unused))
        .await
        .expect("unused now");
    assert!(!exchange_exists(&conn, "x").await);
}

#[tokio::test]
async fn delete_of_missing_exchange_is_ok() {
    // RabbitMQ 3.10 answers delete-ok for an exchange that does not exist.
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    within(ch.exchange_delete("no-such-exchange".into(), ExchangeDeleteOptions::default()))
        .await
        .expect("delete-ok");
    declare(&ch, "x", ExchangeKind::Direct).await; // channel still open
}

#[tokio::test]
async fn durable_exchange_is_declared() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    try_declare(
        &ch,
        "dx",
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .expect("durable declare");
    assert!(exchange_exists(&conn, "dx").await);
    queue_on(&ch, "q", "dx", "").await;
    publish(&ch, "dx", "any", "m").await;
    assert_eq!(bodies(&ch, "q").await, ["m"]);
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let auto = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    try_declare(&ch, "ad", ExchangeKind::Fanout, auto, FieldTable::default())
        .await
        .expect("auto-delete declare");
    assert!(
        exchange_exists(&conn, "ad").await,
        "not deleted before it ever had a binding"
    );

    queue_on(&ch, "q1", "ad", "").await;
    queue_on(&ch, "q2", "ad", "").await;
    unbind_queue(&ch, "q1", "ad", "").await;
    assert!(exchange_exists(&conn, "ad").await, "one binding left");
    unbind_queue(&ch, "q2", "ad", "").await;
    assert!(
        !exchange_exists(&conn, "ad").await,
        "deleted with its last binding"
    );
}

#[tokio::test]
async fn auto_delete_exchange_goes_when_its_bound_queue_is_deleted() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let auto = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    try_declare(&ch, "ad", ExchangeKind::Direct, auto, FieldTable::default())
        .await
        .expect("auto-delete declare");
    queue_on(&ch, "q", "ad", "k").await;
    within(ch.queue_delete("q".into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    assert!(!exchange_exists(&conn, "ad").await);
}

#[tokio::test]
async fn internal_exchange_refuses_publish_but_routes_via_exchange_binding() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let internal = ExchangeDeclareOptions {
        internal: true,
        ..Default::default()
    };
    try_declare(
        &ch,
        "int",
        ExchangeKind::Fanout,
        internal,
        FieldTable::default(),
    )
    .await
    .expect("internal declare");
    queue_on(&ch, "q", "int", "").await;
    declare(&ch, "front", ExchangeKind::Fanout).await;
    bind_exchange(&ch, "int", "front", "").await;

    publish(&ch, "front", "k", "via-front").await;
    assert_eq!(bodies(&ch, "q").await, ["via-front"]);

    let res = try_publish(
        &ch,
        "int",
        "k",
        b"direct",
        BasicProperties::default(),
        false,
    )
    .await;
    assert_reply_code(res, 403);
    let ch = confirm_channel(&conn).await;
    assert!(
        bodies(&ch, "q").await.is_empty(),
        "the refused message was not routed"
    );
}

// ---------------------------------------------------------------------------------------------
// Exchange-to-exchange bindings

#[tokio::test]
async fn exchange_binding_routes_through_two_levels() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "top", ExchangeKind::Direct).await;
    declare(&ch, "mid", ExchangeKind::Topic).await;
    bind_exchange(&ch, "mid", "top", "orders.eu").await;
    queue_on(&ch, "q", "mid", "orders.*").await;

    publish(&ch, "top", "orders.eu", "routed").await;
    publish(&ch, "top", "orders.us", "not-bound-at-top").await;
    assert_eq!(bodies(&ch, "q").await, ["routed"]);

    within(ch.exchange_unbind(
        "mid".into(),
        "top".into(),
        "orders.eu".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange.unbind");
    publish(&ch, "top", "orders.eu", "after-unbind").await;
    assert!(
        bodies(&ch, "q").await.is_empty(),
        "unbound exchange no longer routes"
    );
}

#[tokio::test]
async fn exchange_binding_cycle_delivers_at_most_once() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "a", ExchangeKind::Fanout).await;
    declare(&ch, "b", ExchangeKind::Fanout).await;
    bind_exchange(&ch, "b", "a", "").await;
    bind_exchange(&ch, "a", "b", "").await;
    queue_on(&ch, "qa", "a", "").await;
    queue_on(&ch, "qb", "b", "").await;
    queue_on(&ch, "qboth", "a", "").await;
    bind_queue(&ch, "qboth", "b", "", FieldTable::default()).await;

    publish(&ch, "a", "", "from-a").await;
    publish(&ch, "b", "", "from-b").await;
    for q in ["qa", "qb", "qboth"] {
        assert_eq!(bodies(&ch, q).await, ["from-a", "from-b"], "queue {q}");
    }
}

#[tokio::test]
async fn exchange_binding_diamond_delivers_one_copy() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    for x in ["x", "a", "b"] {
        declare(&ch, x, ExchangeKind::Fanout).await;
    }
    bind_exchange(&ch, "a", "x", "").await;
    bind_exchange(&ch, "b", "x", "").await;
    queue_on(&ch, "q", "a", "").await;
    bind_queue(&ch, "q", "b", "", FieldTable::default()).await;

    publish(&ch, "x", "", "once").await;
    assert_eq!(bodies(&ch, "q").await, ["once"]);
}

// ---------------------------------------------------------------------------------------------
// Pre-declared exchanges

#[tokio::test]
async fn predeclared_exchanges_exist_with_their_types() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    for x in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        assert!(exchange_exists(&conn, x).await, "{x} exists");
    }

    queue_on(&ch, "qd", "amq.direct", "k").await;
    publish(&ch, "amq.direct", "k", "direct-hit").await;
    publish(&ch, "amq.direct", "k2", "direct-miss").await;
    assert_eq!(bodies(&ch, "qd").await, ["direct-hit"]);

    queue_on(&ch, "qf", "amq.fanout", "ignored").await;
    publish(&ch, "amq.fanout", "anything", "fanout").await;
    assert_eq!(bodies(&ch, "qf").await, ["fanout"]);

    queue_on(&ch, "qt", "amq.topic", "a.*").await;
    publish(&ch, "amq.topic", "a.b", "topic-hit").await;
    publish(&ch, "amq.topic", "a.b.c", "topic-miss").await;
    assert_eq!(bodies(&ch, "qt").await, ["topic-hit"]);

    for x in ["amq.headers", "amq.match"] {
        let q = format!("q-{x}");
        declare_queue(&ch, &q).await;
        bind_queue(&ch, &q, x, "", table(&[("h", long_str("v"))])).await;
        publish_headers(&ch, x, "headers-hit", table(&[("h", long_str("v"))])).await;
        publish_headers(&ch, x, "headers-miss", table(&[("h", long_str("w"))])).await;
        assert_eq!(bodies(&ch, &q).await, ["headers-hit"], "{x}");
    }
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare_queue(&ch, "orders").await;
    publish(&ch, "", "orders", "m1").await;
    assert_eq!(bodies(&ch, "orders").await, ["m1"]);

    // No queue of that name: unroutable, returned when mandatory.
    let confirmation = try_publish(&ch, "", "nobody", b"m2", BasicProperties::default(), true)
        .await
        .expect("publish");
    let returned = confirmation
        .take_message()
        .expect("unroutable mandatory message returned");
    assert_eq!(returned.reply_code, 312, "NO_ROUTE");
}

#[tokio::test]
async fn default_exchange_passive_declare_is_access_refused() {
    // rabbit_channel: exchange.declare (passive or not) calls check_not_default_exchange.
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    let res = try_declare(
        &ch,
        "",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 403);
}

#[tokio::test]
async fn declaring_amq_prefixed_exchange_is_access_refused() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let res = try_declare(
        &ch,
        "amq.custom",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 403);
    assert!(!exchange_exists(&conn, "amq.custom").await);
}

#[tokio::test]
async fn deleting_predeclared_exchanges_is_access_refused() {
    let broker = TestBroker::start().await;
    let (conn, _) = session(&broker).await;
    for x in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
        "",
    ] {
        let ch = confirm_channel(&conn).await;
        let res = within(ch.exchange_delete(x.into(), ExchangeDeleteOptions::default())).await;
        match res {
            Ok(()) => panic!("deleting {x:?} succeeded"),
            Err(e) => assert_eq!(reply_code(&e), Some(403), "delete {x:?}: {e}"),
        }
    }
    assert!(
        exchange_exists(&conn, "amq.direct").await,
        "amq.direct survives"
    );
}

#[tokio::test]
async fn binding_to_default_exchange_is_access_refused() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare_queue(&ch, "q").await;
    let res = within(ch.queue_bind(
        "q".into(),
        "".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_reply_code(res, 403);
    let ch = confirm_channel(&conn).await;
    let res =
        within(ch.queue_unbind("q".into(), "".into(), "q".into(), FieldTable::default())).await;
    assert_reply_code(res, 403);
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
        let mut t = table(&[("a", one.clone()), ("b", long_str("x"))]);
        if let Some(mode) = mode {
            t.insert("x-match".into(), long_str(mode));
        }
        t
    };
    for (q, mode) in [
        ("q-all", Some("all")),
        ("q-any", Some("any")),
        ("q-default", None),
    ] {
        declare_queue(&ch, q).await;
        bind_queue(&ch, q, "h", "", pattern(mode)).await;
    }

    publish_headers(
        &ch,
        "h",
        "both",
        table(&[("a", one.clone()), ("b", long_str("x"))]),
    )
    .await;
    publish_headers(&ch, "h", "only-a", table(&[("a", one.clone())])).await;
    publish_headers(
        &ch,
        "h",
        "b-and-extra",
        table(&[("b", long_str("x")), ("c", AMQPValue::LongInt(9))]),
    )
    .await;
    publish_headers(
        &ch,
        "h",
        "wrong-a",
        table(&[("a", AMQPValue::LongInt(2)), ("b", long_str("y"))]),
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
                ("x-match", long_str("all")),
                ("x-k", long_str("v")),
                ("a", AMQPValue::LongInt(1)),
            ]),
        ),
        (
            "q-all-x",
            table(&[
                ("x-match", long_str("all-with-x")),
                ("x-k", long_str("v")),
                ("a", AMQPValue::LongInt(1)),
            ]),
        ),
        (
            "q-any",
            table(&[("x-match", long_str("any")), ("x-k", long_str("v"))]),
        ),
        (
            "q-any-x",
            table(&[("x-match", long_str("any-with-x")), ("x-k", long_str("v"))]),
        ),
    ];
    for (q, args) in bindings {
        declare_queue(&ch, q).await;
        bind_queue(&ch, q, "h", "", args).await;
    }

    publish_headers(&ch, "h", "a", table(&[("a", AMQPValue::LongInt(1))])).await;
    publish_headers(
        &ch,
        "h",
        "a+xk",
        table(&[("a", AMQPValue::LongInt(1)), ("x-k", long_str("v"))]),
    )
    .await;
    publish_headers(&ch, "h", "xk", table(&[("x-k", long_str("v"))])).await;

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
    declare_queue(&ch, "q-int").await;
    bind_queue(
        &ch,
        "q-int",
        "h",
        "",
        table(&[("n", AMQPValue::LongInt(5))]),
    )
    .await;
    declare_queue(&ch, "q-str").await;
    bind_queue(&ch, "q-str", "h", "", table(&[("n", long_str("5"))])).await;
    declare_queue(&ch, "q-present").await;
    bind_queue(&ch, "q-present", "h", "", table(&[("n", AMQPValue::Void)])).await;

    publish_headers(&ch, "h", "int5", table(&[("n", AMQPValue::LongInt(5))])).await;
    publish_headers(&ch, "h", "str5", table(&[("n", long_str("5"))])).await;
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
    declare_queue(&ch, "q").await;
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
    declare_queue(&ch, "q").await;
    let args = table(&[
        ("x-match", long_str("sometimes")),
        ("a", AMQPValue::LongInt(1)),
    ]);
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

// ---------------------------------------------------------------------------------------------
// Alternate exchanges

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "ae", ExchangeKind::Fanout).await;
    queue_on(&ch, "q-ae", "ae", "").await;
    let args = table(&[("alternate-exchange", long_str("ae"))]);
    try_declare(&ch, "main", ExchangeKind::Direct, Default::default(), args)
        .await
        .expect("declare with alternate-exchange");
    queue_on(&ch, "q-main", "main", "k").await;

    publish(&ch, "main", "k", "routable").await;
    publish(&ch, "main", "other", "unroutable").await;
    assert_eq!(bodies(&ch, "q-main").await, ["routable"]);
    assert_eq!(
        bodies(&ch, "q-ae").await,
        ["unroutable"],
        "only unroutable messages reach the AE"
    );
}

#[tokio::test]
async fn mandatory_publish_routed_by_alternate_exchange_is_not_returned() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "ae", ExchangeKind::Fanout).await;
    queue_on(&ch, "q-ae", "ae", "").await;
    let args = table(&[("alternate-exchange", long_str("ae"))]);
    try_declare(
        &ch,
        "with-ae",
        ExchangeKind::Direct,
        Default::default(),
        args,
    )
    .await
    .expect("declare with alternate-exchange");
    declare(&ch, "without-ae", ExchangeKind::Direct).await;

    let confirmation = try_publish(
        &ch,
        "with-ae",
        "nowhere",
        b"m1",
        BasicProperties::default(),
        true,
    )
    .await
    .expect("publish");
    assert!(confirmation.is_ack());
    assert!(
        confirmation.take_message().is_none(),
        "routed via the AE, so not returned"
    );
    assert_eq!(bodies(&ch, "q-ae").await, ["m1"]);

    // Control: the same publish without an AE is returned.
    let confirmation = try_publish(
        &ch,
        "without-ae",
        "nowhere",
        b"m2",
        BasicProperties::default(),
        true,
    )
    .await
    .expect("publish");
    let returned = confirmation.take_message().expect("returned without an AE");
    assert_eq!(returned.reply_code, 312);
}

// ---------------------------------------------------------------------------------------------
// Sender-selected distribution

#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "d", ExchangeKind::Direct).await;
    for (q, key) in [("q0", "k0"), ("q1", "k1"), ("q2", "k2"), ("q3", "k3")] {
        queue_on(&ch, q, "d", key).await;
    }
    let cc = AMQPValue::FieldArray(FieldArray::from(vec![long_str("k1")]));
    let bcc = AMQPValue::FieldArray(FieldArray::from(vec![long_str("k2")]));
    let headers = table(&[("CC", cc.clone()), ("BCC", bcc), ("keep", long_str("me"))]);
    let props = BasicProperties::default().with_headers(headers);
    let confirmation = try_publish(&ch, "d", "k0", b"sent", props, false)
        .await
        .expect("publish");
    assert!(confirmation.is_ack());

    for q in ["q0", "q1", "q2"] {
        let got = drain(&ch, q).await;
        assert_eq!(got.len(), 1, "{q} gets exactly one copy");
        let headers = got[0].properties.headers().clone().expect("headers kept");
        let headers = headers.inner();
        assert!(
            !headers.contains_key("BCC"),
            "BCC removed before delivery to {q}"
        );
        assert_eq!(headers.get("CC"), Some(&cc), "CC kept on delivery to {q}");
        assert_eq!(headers.get("keep"), Some(&long_str("me")));
        assert_eq!(
            got[0].routing_key.as_str(),
            "k0",
            "delivery carries the publish routing key"
        );
    }
    assert!(drain(&ch, "q3").await.is_empty(), "no CC/BCC for k3");
}
