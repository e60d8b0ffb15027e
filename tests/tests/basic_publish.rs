//! basic.publish errors and returns over real TCP with lapin: mandatory messages returned with
//! no-route, a missing exchange, the unsupported immediate flag. RabbitMQ 3.10 is the reference
//! for every expected reply code; the helpers are in [`bourse_tests::basic`].

use bourse_tests::basic::{
    WAIT, assert_code, bounded, declare, next_error_code, publish, ready_count, wait_ready, within,
};
use bourse_tests::{TestBroker, eventually};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

const NOT_FOUND: u16 = 404;
const NO_ROUTE: u16 = 312;
const NOT_IMPLEMENTED: u16 = 540;

// ---------------------------------------------------------------------------------------------
// publish errors and returns

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_with_no_route() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();

        for (exchange, key) in [("", "no-such-queue"), ("amq.direct", "unbound-key")] {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    b"lost",
                    BasicProperties::default().with_message_id("m-1".into()),
                )
                .await
                .unwrap();
            match within("confirm", confirm).await.expect("confirm") {
                Confirmation::Ack(Some(ret)) => {
                    assert_eq!(ret.reply_code, NO_ROUTE, "{exchange:?}");
                    assert_eq!(ret.delivery.exchange.as_str(), exchange);
                    assert_eq!(ret.delivery.routing_key.as_str(), key);
                    assert_eq!(ret.delivery.data, b"lost", "returned body");
                    assert_eq!(
                        ret.delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str()),
                        Some("m-1"),
                        "returned properties"
                    );
                }
                other => panic!("expected ack carrying a basic.return, got {other:?}"),
            }
        }

        // Without mandatory an unroutable message is silently dropped (and still acked).
        let confirm = ch
            .basic_publish(
                "".into(),
                "no-such-queue".into(),
                BasicPublishOptions::default(),
                b"dropped",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            within("confirm", confirm).await.unwrap(),
            Confirmation::Ack(None)
        );
    })
    .await;
}

#[tokio::test]
async fn publish_to_missing_exchange_closes_channel_with_not_found() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let ch = conn.create_channel().await.unwrap();
        ch.basic_publish(
            "no-such-exchange".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(next_error_code(&mut events).await, NOT_FOUND);
        assert!(
            eventually(WAIT, || !ch.status().connected()).await,
            "channel closed"
        );
        // Only the channel: the connection still works.
        let ch2 = conn
            .create_channel()
            .await
            .expect("new channel after channel error");
        let q = declare(&ch2, "after-404").await;
        publish(&ch2, "", &q, b"ok").await;
    })
    .await;
}

/// A channel keeps the exchange it last published to; deleting or re-declaring that exchange
/// from another channel must take effect on its very next publish.
#[tokio::test]
async fn publishing_again_after_the_exchange_was_deleted_or_redeclared_elsewhere() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let publisher = conn.create_channel().await.unwrap();
        let admin = conn.create_channel().await.unwrap();
        let direct_q = declare(&admin, "cached-direct").await;
        let fanout_q = declare(&admin, "cached-fanout").await;
        let x = "cached-x";
        let declare_x = |kind: lapin::ExchangeKind| {
            admin.exchange_declare(
                x.into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
        };
        let bind = |queue: &str, key: &str| {
            admin.queue_bind(
                queue.into(),
                x.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
        };
        declare_x(lapin::ExchangeKind::Direct).await.unwrap();
        bind(&direct_q, "k").await.unwrap();
        publish(&publisher, x, "k", b"to direct").await;
        wait_ready(&admin, &direct_q, 1).await;

        // Deleted and declared again, as fanout, bound to the other queue only.
        admin
            .exchange_delete(x.into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
        declare_x(lapin::ExchangeKind::Fanout).await.unwrap();
        bind(&fanout_q, "").await.unwrap();
        publish(&publisher, x, "k", b"to fanout").await;
        wait_ready(&admin, &fanout_q, 1).await;
        assert_eq!(
            ready_count(&admin, &direct_q).await,
            1,
            "the old exchange routed it"
        );

        // Deleted for good: the next publish is refused with 404 like any unknown exchange.
        admin
            .exchange_delete(x.into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
        publisher
            .basic_publish(
                x.into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"nowhere",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert_eq!(next_error_code(&mut events).await, NOT_FOUND);
        assert!(
            eventually(WAIT, || !publisher.status().connected()).await,
            "publisher's channel closed"
        );
        assert_eq!(ready_count(&admin, &direct_q).await, 1);
        assert_eq!(ready_count(&admin, &fanout_q).await, 1);
    })
    .await;
}

#[tokio::test]
async fn immediate_publish_is_not_implemented() {
    bounded(async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = declare(&ch, "immediate").await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions {
                    immediate: true,
                    ..Default::default()
                },
                b"now",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert_code(
            within("confirm", confirm).await,
            NOT_IMPLEMENTED,
            "immediate=true",
        );
        // 540 is a hard error: the connection is closed.
        assert!(
            eventually(WAIT, || !conn.status().connected()).await,
            "connection should be closed after 540"
        );
    })
    .await;
}
