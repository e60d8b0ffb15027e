//! The limits of docs/limits.md: reaching each gives its documented reply code and text, the
//! object that would cross it is not created, and other clients are unaffected.

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties as RawProperties, basic};
use bourse::limits::{UserLimits, VhostLimits};
use bourse_tests::TestBroker;
use bourse_tests::basic::{assert_code, declare, get, next_error_code, publish, ready_count};
use bourse_tests::connection::{Bystander, assert_channel_works, raw_with_channel};
use bourse_tests::raw::{Handshake, RawClient, basic_publish, encode_frame, within};
use lapin::ExchangeKind;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

/// Runs the handshake up to connection.open and returns the broker's refusal of it.
async fn open_refused(broker: &TestBroker) -> bourse_tests::raw::CloseReason {
    let (mut raw, _) = RawClient::start_and_tune(broker.addr(), &Handshake::default()).await;
    raw.send_connection_open("/").await;
    raw.expect_connection_close_code(530).await
}

#[tokio::test]
async fn connection_max_refuses_the_next_connection_until_one_closes() {
    let broker = TestBroker::start_with(|cfg| cfg.limits.connection_max = 2).await;
    let first = broker.connect().await;
    let (_second, ch) = broker.channel().await;
    let reason = open_refused(&broker).await;
    assert_eq!(
        reason.text,
        "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
    );
    assert_eq!((reason.class_id, reason.method_id), (10, 40));
    assert_channel_works(&ch).await;
    within(first.close(200, "bye".into())).await.expect("close");
    // The slot comes back when the connection ends.
    connect_eventually(&broker).await;
}

/// Connects, retrying for a moment: a closed connection's slot is given back when its task
/// ends, which may be just after the client saw the socket close.
async fn connect_eventually(broker: &TestBroker) -> lapin::Connection {
    for _ in 0..50 {
        if let Ok(conn) = lapin::Connection::connect(broker.url(), Default::default()).await {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a connection slot must come back when a connection closes");
}

#[tokio::test]
async fn vhost_max_connections_refuses_with_rabbitmqs_text() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.vhost_limits.insert(
            "/".into(),
            bourse::config::VhostLimitOverrides {
                max_connections: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    let (_conn, ch) = broker.channel().await;
    let reason = open_refused(&broker).await;
    assert_eq!(
        reason.text,
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached"
    );
    assert_channel_works(&ch).await;
}

#[tokio::test]
async fn user_limits_refuse_connections_and_channels() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.user_limits.insert(
            "guest".into(),
            UserLimits {
                max_connections: Some(2),
                max_channels: Some(2),
            },
        );
    })
    .await;
    let (conn, ch) = broker.channel().await;
    let _second_channel = within(conn.create_channel()).await.expect("2nd channel");
    // A third channel, here on a second connection: the count is the user's, not the
    // connection's.
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.send_method(1, bourse_tests::raw::channel_open())
        .await
        .expect("send channel.open");
    let reason = raw.expect_connection_close_code(530).await;
    assert_eq!(
        reason.text,
        "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum \
         allowed user limit of (2)"
    );
    // That connection is gone: a second one may open, a third may not.
    let _again = connect_eventually(&broker).await;
    let reason = open_refused(&broker).await;
    assert_eq!(
        reason.text,
        "NOT_ALLOWED - Connection refused for user 'guest': user connection limit (2) is reached"
    );
    assert_channel_works(&ch).await;
}

#[tokio::test]
async fn consumer_max_per_channel_closes_the_connection_with_530() {
    let broker = TestBroker::start_with(|cfg| cfg.limits.vhost.consumer_max_per_channel = 2).await;
    let bystander = Bystander::new(&broker).await;
    let (_conn, ch) = broker.channel().await;
    let q = declare(&ch, "consumers").await;
    let mut raw = raw_with_channel(&broker).await;
    for tag in ["a", "b", "c"] {
        let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        raw.send_method(1, consume).await.expect("send consume");
    }
    let reason = raw.expect_connection_close_code(530).await;
    assert_eq!(
        reason.text,
        "NOT_ALLOWED - reached maximum (2) of consumers per channel"
    );
    assert_eq!((reason.class_id, reason.method_id), (60, 20));
    bystander.assert_unaffected(&broker).await;
}

fn with_vhost_limits(limits: VhostLimits) -> impl FnOnce(&mut bourse::Config) {
    move |cfg| cfg.limits.vhost = limits
}

#[tokio::test]
async fn max_queues_refuses_new_queues_but_not_redeclares() {
    let broker = TestBroker::start_with(with_vhost_limits(VhostLimits {
        max_queues: 2,
        ..VhostLimits::default()
    }))
    .await;
    let (conn, ch) = broker.channel().await;
    let a = declare(&ch, "qa").await;
    let _b = declare(&ch, "qb").await;
    let declare_c = within(ch.queue_declare(
        "qc".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    match declare_c {
        Err(e) => {
            assert_eq!(bourse_tests::raw::reply_code(&e), Some(406), "{e:?}");
            assert!(
                e.to_string()
                    .contains("cannot declare queue 'qc': queue limit in vhost '/' (2) is reached"),
                "{e}"
            );
        }
        Ok(q) => panic!("third queue declared: {q:?}"),
    }
    let ch = within(conn.create_channel()).await.expect("channel");
    // Redeclaring is not creating.
    within(ch.queue_declare(
        a.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("redeclare");
    within(ch.queue_delete(a.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("delete");
    declare(&ch, "qc").await;
}

#[tokio::test]
async fn max_exchanges_does_not_count_the_predeclared_ones() {
    let broker = TestBroker::start_with(with_vhost_limits(VhostLimits {
        max_exchanges: 1,
        ..VhostLimits::default()
    }))
    .await;
    let (conn, ch) = broker.channel().await;
    let declare = |ch: lapin::Channel, name: &'static str| async move {
        within(ch.exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
    };
    declare(ch.clone(), "x1").await.expect("first exchange");
    declare(ch.clone(), "x1").await.expect("redeclare");
    assert_code(declare(ch.clone(), "x2").await, 406, "second exchange");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;
}

#[tokio::test]
async fn max_bindings_counts_every_binding_and_frees_them_when_queues_go() {
    let broker = TestBroker::start_with(with_vhost_limits(VhostLimits {
        max_bindings: 2,
        ..VhostLimits::default()
    }))
    .await;
    let (conn, ch) = broker.channel().await;
    let q1 = declare(&ch, "b1").await;
    let q2 = declare(&ch, "b2").await;
    let bind = |ch: lapin::Channel, q: String, key: &'static str| async move {
        within(ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
    };
    bind(ch.clone(), q1.clone(), "k1")
        .await
        .expect("1st binding");
    bind(ch.clone(), q2.clone(), "k2")
        .await
        .expect("2nd binding");
    bind(ch.clone(), q1.clone(), "k1")
        .await
        .expect("an existing binding is not a new one");
    match bind(ch.clone(), q1.clone(), "k3").await {
        Err(e) => {
            assert_eq!(bourse_tests::raw::reply_code(&e), Some(406), "{e:?}");
            assert!(
                e.to_string()
                    .contains("binding limit in vhost '/' (2) is reached"),
                "{e}"
            );
        }
        Ok(()) => panic!("third binding made"),
    }
    let ch = within(conn.create_channel()).await.expect("channel");
    within(ch.queue_unbind(
        q1.as_str().into(),
        "amq.direct".into(),
        "k1".into(),
        FieldTable::default(),
    ))
    .await
    .expect("unbind");
    bind(ch.clone(), q1.clone(), "k3")
        .await
        .expect("room after unbind");
    // Deleting a queue drops its bindings, and their count.
    within(ch.queue_delete(q2.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("delete");
    bind(ch.clone(), q1.clone(), "k4")
        .await
        .expect("room after the queue went");
}

#[tokio::test]
async fn tx_max_bytes_closes_the_channel_and_discards_the_transaction() {
    // Set through the vhost's override, as `[vhost_limits."/"] tx_max_bytes = 1000`.
    let broker = TestBroker::start_with(|cfg| {
        cfg.vhost_limits.insert(
            "/".into(),
            bourse::config::VhostLimitOverrides {
                tx_max_bytes: Some(1_000),
                ..Default::default()
            },
        );
    })
    .await;
    let (conn, ch) = broker.channel().await;
    let mut events = Box::pin(conn.events_listener());
    let q = declare(&ch, "tx").await;
    within(ch.tx_select()).await.expect("tx.select");
    publish(&ch, "", &q, &[b'a'; 600]).await;
    publish(&ch, "", &q, &[b'b'; 600]).await;
    // The publish that crosses the limit closes the channel with 406; the commit, sent before
    // or after lapin saw that close, fails either way.
    assert!(
        within(ch.tx_commit()).await.is_err(),
        "commit after the limit"
    );
    assert_eq!(next_error_code(&mut events).await, 406);
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_eq!(
        ready_count(&ch, &q).await,
        0,
        "nothing of the transaction was enqueued"
    );
}

#[tokio::test]
async fn bodies_still_arriving_are_bounded_per_connection() {
    let broker =
        TestBroker::start_with(|cfg| cfg.limits.vhost.connection_content_max_bytes = 10_000).await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = raw_with_channel(&broker).await;
    raw.open_channel(2).await;
    // Two publishes of 8,000 bytes each, interleaved: 4,000 + 4,000 + 4,000 fit nowhere.
    let mut bytes = Vec::new();
    for ch in [1, 2] {
        bytes.extend(encode_frame(&AMQPFrame::Method(
            ch,
            basic_publish("", "nowhere"),
        )));
        bytes.extend(encode_frame(&AMQPFrame::Header(
            ch,
            AMQPContentHeader {
                class_id: 60,
                body_size: 8_000,
                properties: RawProperties::default(),
            },
        )));
    }
    for ch in [1, 2, 1] {
        bytes.extend(encode_frame(&AMQPFrame::Body(ch, vec![b'x'; 4_000])));
    }
    let _ = raw.send_bytes(&bytes).await;
    let reason = raw.expect_connection_close_code(506).await;
    assert!(
        reason.text.contains("connection_content_max_bytes (10000)"),
        "{reason:?}"
    );
    bystander.assert_unaffected(&broker).await;
}

#[tokio::test]
async fn a_complete_large_message_does_not_count_against_the_content_budget() {
    let broker =
        TestBroker::start_with(|cfg| cfg.limits.vhost.connection_content_max_bytes = 10_000).await;
    let (_conn, ch) = broker.channel().await;
    let q = declare(&ch, "big").await;
    // Under the budget while arriving, then handed to the queue: the budget comes back, so
    // the next one fits too.
    for _ in 0..5 {
        publish(&ch, "", &q, &[b'z'; 9_000]).await;
    }
    let got = get(&ch, &q).await.expect("a message");
    assert_eq!(got.delivery.data.len(), 9_000);
}

#[test]
fn max_message_bytes_above_512_mib_is_refused_at_start_up() {
    let mut config = bourse::Config {
        max_message_bytes: 512 << 20,
        ..Default::default()
    };
    config
        .check()
        .expect("512 MiB is RabbitMQ's ceiling, allowed");
    config.max_message_bytes = (512 << 20) + 1;
    let error = config.check().unwrap_err().to_string();
    assert!(error.contains("max_message_bytes"), "{error}");
}

#[tokio::test]
async fn wasm_instances_max_bounds_one_vhosts_wasm_exchanges() {
    use bourse_tests::wasm::{PluginBroker, try_declare};
    let plugins = PluginBroker::start_with(&["x-modulus-hash"], |cfg| {
        cfg.vhost_limits.insert(
            "/".into(),
            bourse::config::VhostLimitOverrides {
                wasm_instances_max: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    let (conn, ch) = plugins.broker.channel().await;
    for name in ["w1", "w2"] {
        try_declare(&ch, name, "x-modulus-hash", FieldTable::default())
            .await
            .expect("under the limit");
    }
    match try_declare(&ch, "w3", "x-modulus-hash", FieldTable::default()).await {
        Err(e) => {
            assert_eq!(bourse_tests::raw::reply_code(&e), Some(406), "{e:?}");
            assert!(e.to_string().contains("wasm_instances_max"), "{e}");
        }
        Ok(()) => panic!("a third WASM exchange was declared"),
    }
    // Deleting one gives its instance back.
    let ch = within(conn.create_channel()).await.expect("channel");
    within(ch.exchange_delete("w1".into(), Default::default()))
        .await
        .expect("delete");
    try_declare(&ch, "w3", "x-modulus-hash", FieldTable::default())
        .await
        .expect("room after the delete");
}
