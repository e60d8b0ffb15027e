//! Declaring and deleting exchanges end to end, with their reply codes, and the pre-declared
//! exchanges (`amq.*` and the default exchange) and what clients may not do to them.
//!
//! Every publish uses publisher confirms, so by the time a test looks at a queue the broker has
//! finished routing; "no message" assertions are therefore meaningful without sleeping. The
//! helpers are in [`bourse_tests::exchanges`].

use amq_protocol::types::FieldTable;
use bourse_tests::exchanges::{
    bind_exchange, bind_queue, bodies, declare, exchange_exists, publish, publish_headers, queue,
    queue_on, table, text, try_declare, try_publish,
};
use bourse_tests::raw::{assert_reply_code, reply_code, within};
use bourse_tests::{TestBroker, confirm_channel, session};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Channel, ExchangeKind};

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
    let args = table(&[("alternate-exchange", text("ae1")), ("x-note", text("one"))]);
    try_declare(&ch, "x", ExchangeKind::Direct, Default::default(), args)
        .await
        .expect("declare with arguments");

    let same_ae = table(&[("alternate-exchange", text("ae1")), ("x-note", text("two"))]);
    try_declare(&ch, "x", ExchangeKind::Direct, Default::default(), same_ae)
        .await
        .expect("other arguments are not compared");

    let other_ae = table(&[("alternate-exchange", text("ae2"))]);
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

/// RabbitMQ 3.13+ (`rabbit_exchange:check_type`): an unknown type is 406 PRECONDITION_FAILED,
/// a channel error; the connection and its other channels carry on.
#[tokio::test]
async fn unknown_exchange_type_is_precondition_failed_channel_error() {
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
    assert_reply_code(res, 406);
    let ch2 = confirm_channel(&conn).await;
    assert!(
        !exchange_exists(&conn, "x").await,
        "the exchange was not created"
    );
    declare(&ch2, "after", ExchangeKind::Fanout).await;
}

/// The exact reply on the wire: channel.close 406 with RabbitMQ's text, then the channel can be
/// opened again on the same connection.
#[tokio::test]
async fn unknown_exchange_type_reply_text_is_rabbitmqs() {
    use amq_protocol::protocol::{AMQPClass, exchange};
    use bourse_tests::raw::RawClient;
    let broker = TestBroker::start().await;
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    let declare = exchange::Declare {
        exchange: "e".into(),
        kind: "x-foo".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    raw.send_method(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)),
    )
    .await
    .unwrap();
    let reason = raw.expect_channel_close(1).await;
    assert_eq!(reason.code, 406, "{reason:?}");
    assert_eq!(
        reason.text,
        "PRECONDITION_FAILED - unknown exchange type 'x-foo'"
    );
    assert_eq!((reason.class_id, reason.method_id), (40, 10));
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
        queue(&ch, &q).await;
        bind_queue(&ch, &q, x, "", table(&[("h", text("v"))])).await;
        publish_headers(&ch, x, "headers-hit", table(&[("h", text("v"))])).await;
        publish_headers(&ch, x, "headers-miss", table(&[("h", text("w"))])).await;
        assert_eq!(bodies(&ch, &q).await, ["headers-hit"], "{x}");
    }
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    queue(&ch, "orders").await;
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

/// RabbitMQ looks the name up before checking the reserved prefix: redeclaring a pre-declared
/// `amq.*` exchange with its own type and flags (durable, not auto-delete, not internal) is
/// declare-ok, passive or not; other flags are 406 as for any exchange.
#[tokio::test]
async fn redeclaring_predeclared_amq_exchanges_is_ok() {
    let broker = TestBroker::start().await;
    let (conn, _) = session(&broker).await;
    let kinds = [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ];
    for (name, kind) in kinds {
        let ch = confirm_channel(&conn).await;
        for passive in [false, true] {
            let options = ExchangeDeclareOptions {
                durable: true,
                passive,
                ..Default::default()
            };
            try_declare(&ch, name, kind.clone(), options, FieldTable::default())
                .await
                .unwrap_or_else(|e| panic!("redeclare {name} (passive {passive}): {e}"));
        }
        let transient = ExchangeDeclareOptions::default();
        let res = try_declare(&ch, name, kind.clone(), transient, FieldTable::default()).await;
        match res {
            Ok(()) => panic!("{name} redeclared non-durable"),
            Err(e) => assert_eq!(reply_code(&e), Some(406), "{name} non-durable: {e}"),
        }
        let ch = confirm_channel(&conn).await;
        let other = if name == "amq.fanout" {
            ExchangeKind::Direct
        } else {
            ExchangeKind::Fanout
        };
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let res = try_declare(&ch, name, other, durable, FieldTable::default()).await;
        match res {
            Ok(()) => panic!("{name} redeclared with another type"),
            Err(e) => assert_eq!(reply_code(&e), Some(406), "{name} other type: {e}"),
        }
    }
    // The exchanges still route.
    let ch = confirm_channel(&conn).await;
    queue_on(&ch, "q-amq", "amq.direct", "k").await;
    publish(&ch, "amq.direct", "k", "still routes").await;
    assert_eq!(bodies(&ch, "q-amq").await, ["still routes"]);
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
    queue(&ch, "q").await;
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

/// Unbinding is idempotent in current RabbitMQ: a binding, a queue or an exchange that no longer
/// exists still gets unbind-ok (queue.unbind and exchange.unbind alike).
#[tokio::test]
async fn unbind_of_missing_binding_queue_or_exchange_is_ok() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "src", ExchangeKind::Direct).await;
    queue(&ch, "q").await;
    // A binding that was never made.
    unbind_queue(&ch, "q", "src", "never-bound").await;
    // A queue that does not exist, from an exchange that exists.
    unbind_queue(&ch, "no-such-queue", "src", "k").await;
    // An exchange that does not exist.
    unbind_queue(&ch, "q", "no-such-exchange", "k").await;
    // Both gone after a binding existed.
    bind_queue(&ch, "q", "src", "k", FieldTable::default()).await;
    within(ch.queue_delete("q".into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    within(ch.exchange_delete("src".into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
    unbind_queue(&ch, "q", "src", "k").await;
    // exchange.unbind with a missing destination, source, or binding.
    declare(&ch, "dst", ExchangeKind::Fanout).await;
    for (destination, source) in [("dst", "gone"), ("gone", "dst"), ("dst", "amq.direct")] {
        within(ch.exchange_unbind(
            destination.into(),
            source.into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap_or_else(|e| panic!("exchange.unbind {destination} from {source}: {e}"));
    }
    // The channel is still open: every unbind was answered with unbind-ok.
    assert!(exchange_exists(&conn, "dst").await);
    declare(&ch, "still-open", ExchangeKind::Fanout).await;
}
