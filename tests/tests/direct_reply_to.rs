//! Direct reply-to (`amq.rabbitmq.reply-to`) through lapin: an RPC round trip without a reply
//! queue, RabbitMQ's rules for the reply consumer (no-ack only, one per channel), the 406 for
//! a request that names the pseudo-queue without consuming from it, replies to a requester
//! that has gone (dropped), declaring reply names, and the advertised capability.

use std::time::Duration;

use bourse_tests::TestBroker;
use bourse_tests::raw::{RawClient, reply_code, within};
use bourse_tests::wasm::{assert_error, confirm_channel, publish, session};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};

const TEST_LIMIT: Duration = Duration::from_secs(30);
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}

async fn consume_replies(ch: &Channel, tag: &str, no_ack: bool) -> Result<Consumer, lapin::Error> {
    within(ch.basic_consume(
        REPLY_TO.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
}

async fn consume(ch: &Channel, queue: &str) -> Consumer {
    within(ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within(consumer.next())
        .await
        .expect("consumer stream open")
        .expect("delivery")
}

async fn declare(ch: &Channel, name: &str, passive: bool) -> Result<lapin::Queue, lapin::Error> {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
}

fn request(reply_to: &str) -> BasicProperties {
    BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id("42".into())
}

#[tokio::test]
async fn rpc_round_trip_without_a_reply_queue() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_server_conn, server) = session(&broker).await;
        declare(&server, "rpc", false).await.expect("declare rpc");
        let mut requests = consume(&server, "rpc").await;

        let (_client_conn, client) = session(&broker).await;
        let mut replies = consume_replies(&client, "replies", true)
            .await
            .expect("consume amq.rabbitmq.reply-to with no-ack");
        match publish(&client, "", "rpc", b"ping", request(REPLY_TO), false).await {
            Confirmation::Ack(None) => {}
            other => panic!("request: {other:?}"),
        }

        let req = next(&mut requests).await;
        let reply_to = req
            .properties
            .reply_to()
            .as_ref()
            .expect("reply_to set")
            .to_string();
        assert!(
            reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > REPLY_TO.len() + 1,
            "reply_to rewritten to a routable name: {reply_to}"
        );
        assert_eq!(
            req.properties.correlation_id().as_ref().map(|c| c.as_str()),
            Some("42"),
            "other properties untouched"
        );
        within(req.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack request");
        // The name can be declared (passively or not) while the requester is there.
        let q = declare(&server, &reply_to, false)
            .await
            .expect("declare the reply name");
        assert_eq!((q.message_count(), q.consumer_count()), (0, 1));

        // The reply goes through the default exchange, straight to the requester's channel.
        let reply_props = BasicProperties::default().with_correlation_id("42".into());
        match publish(&server, "", &reply_to, b"pong", reply_props, true).await {
            Confirmation::Ack(None) => {}
            other => panic!("reply: expected a plain ack (routed, not returned), got {other:?}"),
        }
        let reply = next(&mut replies).await;
        assert_eq!(reply.data, b"pong");
        assert_eq!(reply.routing_key.as_str(), reply_to);
        assert_eq!(reply.exchange.as_str(), "");
        assert!(!reply.redelivered);
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some("42")
        );
    })
    .await;
}

#[tokio::test]
async fn reply_consumer_rules_match_rabbitmq() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        assert_error(
            consume_replies(&ch, "acking", false).await,
            406,
            "reply consumer cannot acknowledge",
        );
        let ch = confirm_channel(&conn).await;
        let _r1 = consume_replies(&ch, "r1", true).await.expect("first");
        assert_error(
            consume_replies(&ch, "r2", true).await,
            406,
            "reply consumer already set",
        );
        // Another channel may have its own.
        let other = confirm_channel(&conn).await;
        let _r2 = consume_replies(&other, "r1", true)
            .await
            .expect("one per channel");
        // The pseudo-queue itself always "exists".
        let q = declare(&other, REPLY_TO, true).await.expect("declare");
        assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    })
    .await;
}

#[tokio::test]
async fn request_naming_the_pseudo_queue_without_a_reply_consumer_is_precondition_failed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare(&ch, "rpc", false).await.expect("declare");
        let confirm = within(ch.basic_publish(
            "".into(),
            "rpc".into(),
            Default::default(),
            b"ping",
            request(REPLY_TO),
        ))
        .await
        .expect("basic.publish");
        assert_error(
            within(confirm).await,
            406,
            "fast reply consumer does not exist",
        );
    })
    .await;
}

#[tokio::test]
async fn replies_to_a_requester_that_is_gone_are_dropped() {
    bounded(async {
        let broker = TestBroker::start().await;
        let (_server_conn, server) = session(&broker).await;
        declare(&server, "rpc", false).await.expect("declare");
        let mut requests = consume(&server, "rpc").await;

        let (client_conn, client) = session(&broker).await;
        // (Kept alive: lapin cancels a consumer it drops.)
        let _replies = consume_replies(&client, "replies", true)
            .await
            .expect("reply consumer");
        publish(&client, "", "rpc", b"ping", request(REPLY_TO), false).await;
        let req = next(&mut requests).await;
        let reply_to = req
            .properties
            .reply_to()
            .as_ref()
            .expect("reply_to")
            .to_string();
        within(req.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");

        // Cancelling the reply consumer (or closing its channel) retires the name.
        within(client.basic_cancel("replies".into(), BasicCancelOptions::default()))
            .await
            .expect("cancel");
        let probe = confirm_channel(&client_conn).await;
        let gone = declare(&probe, &reply_to, true).await;
        assert_eq!(gone.map(|_| ()).map_err(|e| reply_code(&e)), Err(Some(404)));

        // A reply now is silently dropped (a plain ack); only a mandatory one comes back.
        match publish(
            &server,
            "",
            &reply_to,
            b"late",
            BasicProperties::default(),
            false,
        )
        .await
        {
            Confirmation::Ack(None) => {}
            other => panic!("reply to a gone requester: {other:?}"),
        }
        match publish(
            &server,
            "",
            &reply_to,
            b"late",
            BasicProperties::default(),
            true,
        )
        .await
        {
            Confirmation::Ack(Some(returned)) => assert_eq!(returned.delivery.data, b"late"),
            other => panic!("mandatory reply to a gone requester: {other:?}"),
        }
        // The server's channel is fine.
        declare(&server, "rpc", true)
            .await
            .expect("server channel open");
    })
    .await;
}

#[tokio::test]
async fn direct_reply_to_capability_is_advertised() {
    let broker = TestBroker::start().await;
    let (_client, start) = RawClient::connect_until_start(broker.addr()).await;
    let capabilities = match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("no capabilities table: {other:?}"),
    };
    assert_eq!(
        capabilities.inner().get("direct_reply_to"),
        Some(&AMQPValue::Boolean(true))
    );
}

/// Reply-to names act as capabilities: whoever knows one can send to that channel. They come
/// from the OS CSPRNG in the format clients expect: `amq.rabbitmq.reply-to.` then two
/// 22-character URL-safe base64 words joined by a dot; `amq.gen-` queue names and `amq.ctag-`
/// consumer tags use one such word. This checks uniqueness, length and alphabet; no test can
/// show the names are unpredictable (a seeded generator passes it too): that rests on the code
/// using the OS generator.
#[tokio::test]
async fn generated_names_are_unique_and_well_formed() {
    fn is_word(s: &str) -> bool {
        s.len() == 22
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
    bounded(async {
        let broker = TestBroker::start().await;
        let (_server_conn, server) = session(&broker).await;
        declare(&server, "rpc-names", false).await.expect("declare");
        let mut requests = consume(&server, "rpc-names").await;
        let (client_conn, _) = session(&broker).await;
        let mut names = std::collections::HashSet::new();
        let mut channels = Vec::new();
        for _ in 0..50 {
            let ch = confirm_channel(&client_conn).await;
            let replies = consume_replies(&ch, "", true)
                .await
                .expect("consume replies");
            match publish(&ch, "", "rpc-names", b"?", request(REPLY_TO), false).await {
                Confirmation::Ack(None) => {}
                other => panic!("request: {other:?}"),
            }
            let req = next(&mut requests).await;
            within(req.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
            let name = req
                .properties
                .reply_to()
                .as_ref()
                .expect("reply_to")
                .to_string();
            let suffix = name
                .strip_prefix("amq.rabbitmq.reply-to.")
                .unwrap_or_else(|| panic!("reply-to prefix: {name}"));
            let words: Vec<&str> = suffix.split('.').collect();
            assert!(
                words.len() == 2 && words.iter().all(|w| is_word(w)),
                "reply-to name format: {name}"
            );
            assert!(names.insert(name.clone()), "reply-to name repeated: {name}");
            channels.push((ch, replies));
        }
        for _ in 0..50 {
            let q = declare(&server, "", false)
                .await
                .expect("server-named queue");
            let name = q.name().as_str().to_owned();
            let word = name.strip_prefix("amq.gen-").expect("amq.gen- prefix");
            assert!(is_word(word), "queue name format: {name}");
            assert!(names.insert(name.clone()), "queue name repeated: {name}");
            let tag = consume(&server, &name).await.tag().as_str().to_owned();
            let word = tag.strip_prefix("amq.ctag-").expect("amq.ctag- prefix");
            assert!(is_word(word), "consumer tag format: {tag}");
            assert!(names.insert(tag.clone()), "consumer tag repeated: {tag}");
        }
    })
    .await;
}
