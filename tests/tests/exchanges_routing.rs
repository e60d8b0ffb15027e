//! Routing beyond one exchange end to end: exchange-to-exchange bindings (chains, cycles,
//! diamonds), alternate exchanges, and sender-selected distribution (CC/BCC).
//!
//! Every publish uses publisher confirms, so by the time a test looks at a queue the broker has
//! finished routing; "no message" assertions are therefore meaningful without sleeping. The
//! helpers are in [`bourse_tests::exchanges`].

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use bourse_tests::exchanges::{
    bind_exchange, bind_queue, bodies, declare, drain, publish, queue_on, table, text, try_declare,
    try_publish,
};
use bourse_tests::raw::within;
use bourse_tests::{TestBroker, session};
use lapin::options::ExchangeUnbindOptions;
use lapin::{BasicProperties, ExchangeKind};

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
// Alternate exchanges

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "ae", ExchangeKind::Fanout).await;
    queue_on(&ch, "q-ae", "ae", "").await;
    let args = table(&[("alternate-exchange", text("ae"))]);
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
    let args = table(&[("alternate-exchange", text("ae"))]);
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
    let cc = AMQPValue::FieldArray(FieldArray::from(vec![text("k1")]));
    let bcc = AMQPValue::FieldArray(FieldArray::from(vec![text("k2")]));
    let headers = table(&[("CC", cc.clone()), ("BCC", bcc), ("keep", text("me"))]);
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
        assert_eq!(headers.get("keep"), Some(&text("me")));
        assert_eq!(
            got[0].routing_key.as_str(),
            "k0",
            "delivery carries the publish routing key"
        );
    }
    assert!(drain(&ch, "q3").await.is_empty(), "no CC/BCC for k3");
}
