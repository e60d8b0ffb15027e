//! Graceful shutdown (SIGTERM, ctrl-c, [`bourse::BrokerHandle::shutdown`]): the broker stops
//! accepting, closes every open connection with connection.close 320 CONNECTION_FORCED and
//! RabbitMQ's text, waits a bounded time for close-ok, syncs and closes its stores, and exits
//! within a bound (`bourse::broker::SHUTDOWN_GRACE` for the connections, plus the final sync).
//!
//! The in-process tests call the same `shutdown` that the binary runs on a signal; the last test
//! sends SIGTERM to the real binary ([`bourse_tests::process`]). These tests ignore
//! `BOURSE_TEST_AMQP_URL`: they stop the broker.

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use bourse::broker::SHUTDOWN_GRACE;
use bourse_tests::basic::next_error_code;
use bourse_tests::process::BrokerProcess;
use bourse_tests::raw::RawClient;
use bourse_tests::{TestBroker, bounded, confirm_channel, uniq};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// RabbitMQ's text for a shutdown (rabbit_networking closing connections).
const SHUTDOWN_TEXT: &str =
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

/// A lapin client sees 320 CONNECTION_FORCED; it answers close-ok, so shutdown does not wait
/// for the grace period.
#[tokio::test]
async fn shutdown_closes_lapin_connections_with_320() {
    bounded(TEST_LIMIT, async {
        let mut broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let ch = confirm_channel(&conn).await;
        ch.queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        let took = broker.shutdown().await;
        println!("shutdown with a lapin client: {took:?}");
        assert_eq!(next_error_code(&mut events).await, 320);
        assert!(
            took < SHUTDOWN_GRACE,
            "a client that answers close-ok does not hold the shutdown up: {took:?}"
        );
        assert!(!conn.status().connected());
    })
    .await;
}

/// On the wire: connection.close 320 with RabbitMQ's text on channel 0, then, after close-ok,
/// the socket closes; new connections are refused once shutdown began.
#[tokio::test]
async fn shutdown_sends_connection_forced_with_rabbitmqs_text() {
    bounded(TEST_LIMIT, async {
        let mut broker = TestBroker::start().await;
        let addr = broker.addr();
        let (mut raw, _) = RawClient::open(addr).await;
        raw.open_channel(1).await;
        let client = tokio::spawn(async move {
            let reason = raw.expect_connection_close_code(320).await;
            assert_eq!(reason.text, SHUTDOWN_TEXT);
            assert_eq!((reason.class_id, reason.method_id), (0, 0));
        });
        let took = broker.shutdown().await;
        client
            .await
            .expect("the raw client saw 320 and the socket close");
        assert!(took < SHUTDOWN_GRACE, "{took:?}");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    })
    .await;
}

/// A client that never answers close-ok (nor closes its socket) holds the shutdown up for at
/// most the grace period.
#[tokio::test]
async fn shutdown_is_bounded_when_a_client_never_answers() {
    bounded(TEST_LIMIT, async {
        let mut broker = TestBroker::start().await;
        let (mut silent, _) = RawClient::open(broker.addr()).await;
        silent.open_channel(1).await;
        let took = broker.shutdown().await;
        println!("shutdown with a client that never answers: {took:?}");
        assert!(
            took <= SHUTDOWN_GRACE + Duration::from_secs(1),
            "shutdown took {took:?}, more than the {SHUTDOWN_GRACE:?} grace period"
        );
        // The silent client was told, even though it never answered.
        let reason = silent.expect_connection_close().await;
        assert_eq!(reason.code, 320);
        let close_ok =
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
        let _ = silent.send_method(0, close_ok).await;
    })
    .await;
}

/// The real binary on SIGTERM: the connected client gets 320, the process exits 0 within the
/// bound, and a persistent message confirmed before the signal is there after a restart.
#[tokio::test]
async fn sigterm_closes_connections_and_keeps_confirmed_messages() {
    bounded(TEST_LIMIT, async {
        let mut broker = BrokerProcess::start().await;
        let queue = uniq("sigterm");
        let conn = broker.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let ch = confirm_channel(&conn).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await
            .expect("queue.declare");
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"kept",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("basic.publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{confirm:?}");

        // The grace period for connections, plus the final sync and process exit.
        let bound = SHUTDOWN_GRACE + Duration::from_secs(5);
        let (status, took) = broker.terminate(bound).await;
        println!("SIGTERM to process exit: {took:?}");
        assert!(
            status.success(),
            "exit status {status}\n{}",
            broker.log_tail()
        );
        assert_eq!(next_error_code(&mut events).await, 320);
        assert!(
            took < SHUTDOWN_GRACE,
            "the client answered close-ok, so exit is prompt: {took:?}\n{}",
            broker.log_tail()
        );
        assert!(
            broker.log().contains("shutdown complete"),
            "{}",
            broker.log_tail()
        );

        broker.restart().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        let got = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        let message = got.unwrap_or_else(|| {
            panic!(
                "the confirmed message is gone after SIGTERM\n{}",
                broker.log_tail()
            )
        });
        assert_eq!(message.delivery.data, b"kept");
    })
    .await;
}
