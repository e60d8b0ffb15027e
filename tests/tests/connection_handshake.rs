//! Connection set-up over real TCP: the protocol header, connection.start, SASL, tuning, and
//! heartbeats.
//!
//! RabbitMQ 3.10 is the reference; where its reply code is not the obvious one the test names
//! the `rabbit_reader`/`rabbit_channel` clause it follows. The helpers are in
//! [`bourse_tests::connection`] and [`bourse_tests::raw`].

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::AMQPValue;
use bourse_tests::TestBroker;
use bourse_tests::connection::{Bystander, assert_channel_works, lapin_connect};
use bourse_tests::raw::{
    Handshake, PROTOCOL_HEADER, RawClient, RecvError, channel_open, reply_code, within,
};
use tokio::time::Instant;

/// Keeps a raw connection busy for `dur`: sends a heartbeat every `send_every` (if any) and counts
/// the heartbeat frames received. Panics if the broker closes the connection.
async fn pump(raw: &mut RawClient, dur: Duration, send_every: Option<Duration>) -> usize {
    let deadline = Instant::now() + dur;
    let mut next_send = send_every.map(|d| Instant::now() + d);
    let mut received = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return received;
        }
        if let (Some(at), Some(every)) = (next_send, send_every)
            && now >= at
        {
            raw.send_heartbeat().await.expect("send heartbeat");
            next_send = Some(now + every);
            continue;
        }
        let wake = next_send.map_or(deadline, |at| at.min(deadline));
        match raw.recv_frame_within(wake - now).await {
            Ok(AMQPFrame::Heartbeat) => received += 1,
            Ok(_) | Err(RecvError::Timeout) => {}
            Err(e) => panic!("connection lost while exchanging heartbeats: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol header

#[tokio::test]
async fn wrong_protocol_version_gets_server_header_and_close() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x02")
        .await
        .expect("send header");
    let reply = raw.recv_bytes(8).await.expect("server protocol header");
    assert_eq!(
        reply, PROTOCOL_HEADER,
        "server answers with the version it supports"
    );
    assert!(
        raw.wait_closed(Duration::from_secs(5)).await,
        "socket closed after refusing"
    );
}

#[tokio::test]
async fn http_request_gets_server_header_and_close() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send_bytes(b"HTTP/1.1").await.expect("send header");
    let reply = raw.recv_bytes(8).await.expect("server protocol header");
    assert_eq!(reply, PROTOCOL_HEADER);
    assert!(
        raw.wait_closed(Duration::from_secs(5)).await,
        "socket closed after refusing"
    );
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

// ---------------------------------------------------------------------------------------------
// connection.start

#[tokio::test]
async fn connection_start_advertises_server_properties() {
    let broker = TestBroker::start().await;
    let (_raw, start) = RawClient::connect_until_start(broker.addr()).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));

    let props = start.server_properties.inner();
    for key in ["product", "version", "platform"] {
        match props.get(key) {
            Some(AMQPValue::LongString(s)) => assert!(!s.is_empty(), "{key} is empty"),
            other => panic!("server property {key} should be a long string, got {other:?}"),
        }
    }
    let caps = match props.get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.inner().clone(),
        other => panic!("capabilities should be a table, got {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }

    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN"), "mechanisms {mechanisms:?}");
    assert!(
        mechanisms.contains(&"AMQPLAIN"),
        "mechanisms {mechanisms:?}"
    );
    let locales = String::from_utf8_lossy(start.locales.as_bytes()).into_owned();
    assert!(
        locales.split(' ').any(|l| l == "en_US"),
        "locales {locales:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SASL

#[tokio::test]
async fn plain_login_succeeds() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.url())
        .await
        .expect("PLAIN login as guest");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;
}

#[tokio::test]
async fn amqplain_login_succeeds() {
    let broker = TestBroker::start().await;
    let url = format!("{}?auth_mechanism=amqplain", broker.url());
    let conn = lapin_connect(&url).await.expect("AMQPLAIN login as guest");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;

    // The same through the raw client, which encodes the AMQPLAIN table itself.
    let hs = Handshake {
        mechanism: "AMQPLAIN".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    raw.open_channel(1).await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_access_refused() {
    let broker = TestBroker::start().await;

    // Raw client: it advertises authentication_failure_close, so RabbitMQ sends
    // connection.close 403 before closing (rabbit_reader:auth_fail).
    let hs = Handshake {
        password: "wrong".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    raw.send_start_ok(&hs).await;
    raw.expect_connection_close_code(403).await;

    // lapin advertises the same capability.
    let url = broker.url().replace("guest:guest@", "guest:wrong@");
    match lapin_connect(&url).await {
        Ok(_) => panic!("login with a wrong password succeeded"),
        Err(e) => assert_eq!(reply_code(&e), Some(403), "error: {e}"),
    }
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

#[tokio::test]
async fn unknown_user_is_refused_with_access_refused() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        user: "nobody".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::connect_until_start(broker.addr()).await;
    raw.send_start_ok(&hs).await;
    raw.expect_connection_close_code(403).await;
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_not_allowed() {
    let broker = TestBroker::start().await;

    let hs = Handshake {
        vhost: "no-such-vhost".into(),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::start_and_tune(broker.addr(), &hs).await;
    raw.send_connection_open(&hs.vhost).await;
    raw.expect_connection_close_code(530).await;

    let url = broker.url().replace("/%2f", "/no-such-vhost");
    match lapin_connect(&url).await {
        Ok(_) => panic!("connection.open to an unknown vhost succeeded"),
        Err(e) => assert_eq!(reply_code(&e), Some(530), "error: {e}"),
    }
}

#[tokio::test]
async fn configured_user_logs_in() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.users = vec![bourse::config::UserSeed::clear("alice", "s3cret")];
    })
    .await;
    let good = broker.url().replace("guest:guest@", "alice:s3cret@");
    let conn = lapin_connect(&good).await.expect("configured user logs in");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;

    let bad = broker.url().replace("guest:guest@", "alice:guest@");
    match lapin_connect(&bad).await {
        Ok(_) => panic!("configured user logged in with the wrong password"),
        Err(e) => assert_eq!(reply_code(&e), Some(403), "error: {e}"),
    }
}

#[tokio::test]
async fn guest_loopback_only_still_allows_loopback() {
    let broker = TestBroker::start_with(|cfg| cfg.guest_loopback_only = true).await;
    let conn = lapin_connect(broker.url())
        .await
        .expect("guest from 127.0.0.1");
    let ch = within(conn.create_channel()).await.expect("channel");
    assert_channel_works(&ch).await;
}

// ---------------------------------------------------------------------------------------------
// Tuning

#[tokio::test]
async fn tune_offers_rabbitmq_defaults() {
    let broker = TestBroker::start().await;
    let (_raw, negotiated) = RawClient::open(broker.addr()).await;
    let tune = negotiated.tune;
    assert_eq!(tune.channel_max, 2047, "channel_max");
    assert_eq!(tune.frame_max, 131_072, "frame_max");
    assert_eq!(tune.heartbeat, 60, "heartbeat");
}

#[tokio::test]
async fn tune_offers_configured_limits() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.frame_max_bytes = 65_536;
        cfg.channel_max = 100;
        cfg.heartbeat_secs = 10;
    })
    .await;
    let (_raw, negotiated) = RawClient::open(broker.addr()).await;
    let tune = negotiated.tune;
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (100, 65_536, 10)
    );
}

#[tokio::test]
async fn frame_max_below_minimum_is_refused_with_not_allowed() {
    let broker = TestBroker::start().await;
    // rabbit_reader:validate_negotiated_integer_value -> not_allowed (530) below 4096.
    let hs = Handshake {
        frame_max: Some(1024),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::start_and_tune(broker.addr(), &hs).await;
    // RabbitMQ refuses at tune-ok; the open may already meet a closing socket.
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    let _ = raw
        .send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
        .await;
    raw.expect_connection_close_code(530).await;
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

#[tokio::test]
async fn frame_max_at_minimum_is_accepted() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        frame_max: Some(4096),
        ..Handshake::default()
    };
    let (mut raw, negotiated) = RawClient::open_with(broker.addr(), hs).await;
    assert_eq!(negotiated.tune_ok.frame_max, 4096);
    raw.open_channel(1).await;
}

#[tokio::test]
async fn channel_beyond_channel_max_is_refused_with_not_allowed() {
    let broker = TestBroker::start_with(|cfg| cfg.channel_max = 2).await;
    let (mut raw, negotiated) = RawClient::open(broker.addr()).await;
    assert_eq!(negotiated.tune.channel_max, 2);
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    // rabbit_reader:create_channel -> not_allowed once channel_max channels are open.
    raw.send_method(3, channel_open())
        .await
        .expect("send channel.open 3");
    raw.expect_connection_close_code(530).await;
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

// ---------------------------------------------------------------------------------------------
// Heartbeats

#[tokio::test]
async fn broker_sends_heartbeats_at_negotiated_interval() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        heartbeat: Some(1),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    let received = pump(
        &mut raw,
        Duration::from_secs(3),
        Some(Duration::from_millis(400)),
    )
    .await;
    assert!(
        received >= 2,
        "expected at least 2 heartbeats in 3 s at 1 s, got {received}"
    );
}

#[tokio::test]
async fn silent_client_is_disconnected_after_missed_heartbeats() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        heartbeat: Some(1),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    let silent_since = Instant::now();
    let closed = raw.wait_closed(Duration::from_millis(4500)).await;
    let after = silent_since.elapsed();
    assert!(
        closed,
        "broker kept a silent client connected for 4.5 s with heartbeat 1 s"
    );
    assert!(
        after >= Duration::from_millis(1000),
        "broker disconnected after {after:?}, before a single heartbeat interval had passed"
    );
    Bystander::new(&broker)
        .await
        .assert_unaffected(&broker)
        .await;
}

#[tokio::test]
async fn client_sending_heartbeats_stays_connected() {
    let broker = TestBroker::start().await;
    let hs = Handshake {
        heartbeat: Some(1),
        ..Handshake::default()
    };
    let (mut raw, _) = RawClient::open_with(broker.addr(), hs).await;
    pump(
        &mut raw,
        Duration::from_secs(4),
        Some(Duration::from_millis(400)),
    )
    .await;
    raw.open_channel(1).await;
}
