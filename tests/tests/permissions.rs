//! Permissions (issue 11): RabbitMQ's configure / write / read expressions per user and vhost,
//! checked on every operation with RabbitMQ's rules and texts, and topic permissions on the
//! routing keys of topic exchanges.

use bourse::config::{PermissionSeed, TopicPermissionSeed, UserSeed};
use bourse_tests::TestBroker;
use bourse_tests::connection::lapin_connect;
use bourse_tests::raw::{assert_reply_code, reply_code, within};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

/// alice may configure `alice.*`, write to `alice.*` and `amq.default`, read `alice.*` and
/// `shared.*`; bob has nothing in `/`; carol may publish to the topic exchange `alice.logs`
/// only with keys that start with her name.
async fn start() -> TestBroker {
    TestBroker::start_with(|cfg| {
        cfg.users = vec![
            UserSeed::clear("guest", "guest"),
            UserSeed::clear("alice", "a"),
            UserSeed::clear("bob", "b"),
            UserSeed::clear("carol", "c"),
        ];
        let grant = |user: &str, configure: &str, write: &str, read: &str| PermissionSeed {
            user: user.into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        };
        cfg.permissions = vec![
            grant("guest", ".*", ".*", ".*"),
            grant(
                "alice",
                "^alice\\.",
                "^(alice\\.|amq\\.default$)",
                "^(alice|shared)\\.",
            ),
            grant("carol", "", ".*", ".*"),
        ];
        cfg.topic_permissions = vec![TopicPermissionSeed {
            user: "carol".into(),
            vhost: "/".into(),
            exchange: "alice.logs".into(),
            write: "^{username}\\.".into(),
            read: ".*".into(),
        }];
    })
    .await
}

async fn login(broker: &TestBroker, user: &str, password: &str) -> (Connection, Channel) {
    let url = broker
        .url()
        .replace("guest:guest@", &format!("{user}:{password}@"));
    let conn = lapin_connect(&url).await.expect("login");
    let ch = within(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .map(|_| ())
}

/// Runs `op` on a fresh channel of `conn` and expects 403 with `text` in the reply.
async fn refused<F, Fut, T>(conn: &Connection, text: &str, op: F)
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    T: std::fmt::Debug,
{
    let ch = within(conn.create_channel()).await.expect("channel");
    let result = op(ch).await;
    let error = result
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains(text), "expected '{text}' in: {error}");
    assert_reply_code(result, 403);
}

#[tokio::test]
async fn a_user_without_permissions_in_the_vhost_cannot_open_it() {
    let broker = start().await;
    let url = broker.url().replace("guest:guest@", "bob:b@");
    match lapin_connect(&url).await {
        Ok(_) => panic!("bob opened a vhost he has no permissions in"),
        Err(e) => {
            assert_eq!(reply_code(&e), Some(530), "{e}");
            assert!(
                e.to_string()
                    .contains("access to vhost '/' refused for user 'bob'"),
                "{e}"
            );
        }
    }
}

#[tokio::test]
async fn configure_write_and_read_are_checked_with_rabbitmq_texts() {
    let broker = start().await;
    let (admin_conn, admin) = login(&broker, "guest", "guest").await;
    declare(&admin, "shared.jobs")
        .await
        .expect("guest declares");
    declare(&admin, "other.jobs").await.expect("guest declares");
    let _ = admin_conn;

    let (conn, ch) = login(&broker, "alice", "a").await;
    declare(&ch, "alice.jobs")
        .await
        .expect("alice may configure alice.*");
    within(ch.basic_publish(
        "".into(),
        "alice.jobs".into(),
        BasicPublishOptions::default(),
        b"hi",
        BasicProperties::default(),
    ))
    .await
    .expect("alice may write to the default exchange");
    within(ch.basic_get("shared.jobs".into(), BasicGetOptions::default()))
        .await
        .expect("alice may read shared.*");

    refused(
        &conn,
        "access to queue 'other.jobs' in vhost '/' refused for user 'alice'",
        |ch| async move { declare(&ch, "other.jobs").await },
    )
    .await;
    refused(
        &conn,
        "access to queue 'other.jobs' in vhost '/' refused for user 'alice'",
        |ch| async move {
            within(ch.basic_consume(
                "other.jobs".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await
            .map(|_| ())
        },
    )
    .await;
    refused(
        &conn,
        "access to queue 'other.jobs' in vhost '/' refused for user 'alice'",
        |ch| async move {
            within(ch.queue_purge("other.jobs".into(), QueuePurgeOptions::default()))
                .await
                .map(|_| ())
        },
    )
    .await;
    // Binding her queue to amq.direct: write on the queue is granted, read on the exchange
    // is not.
    refused(
        &conn,
        "access to exchange 'amq.direct' in vhost '/' refused for user 'alice'",
        |ch| async move {
            within(ch.queue_bind(
                "alice.jobs".into(),
                "amq.direct".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
        },
    )
    .await;
    // A dead-letter exchange she may not write to.
    refused(
        &conn,
        "access to exchange 'amq.fanout' in vhost '/' refused for user 'alice'",
        |ch| async move {
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("amq.fanout".into()),
            );
            within(ch.queue_declare("alice.dl".into(), QueueDeclareOptions::default(), args))
                .await
                .map(|_| ())
        },
    )
    .await;
    // A publish to an exchange she may not write to closes the channel (lapin sees it on
    // the next call).
    let ch = within(conn.create_channel()).await.expect("channel");
    let _ = within(ch.basic_publish(
        "amq.topic".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    ))
    .await;
    let after = declare(&ch, "alice.jobs").await;
    assert_reply_code(after, 403);
}

#[tokio::test]
async fn topic_permissions_limit_the_routing_keys_of_a_topic_exchange() {
    let broker = start().await;
    let (_admin_conn, admin) = login(&broker, "guest", "guest").await;
    within(admin.exchange_declare(
        "alice.logs".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange");
    let (conn, ch) = login(&broker, "carol", "c").await;
    within(ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    let confirm = within(ch.basic_publish(
        "alice.logs".into(),
        "carol.info".into(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    within(confirm).await.expect("carol may publish carol.*");
    let ch = within(conn.create_channel()).await.expect("channel");
    within(ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    let outcome = match within(ch.basic_publish(
        "alice.logs".into(),
        "dave.info".into(),
        BasicPublishOptions::default(),
        b"no",
        BasicProperties::default(),
    ))
    .await
    {
        Ok(confirm) => within(confirm).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let error = outcome
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("access to topic 'dave.info' in exchange 'alice.logs' in vhost '/' refused"),
        "{error}"
    );
    assert_reply_code(outcome, 403);
    // And she may not declare anything (configure is empty).
    refused(
        &conn,
        "access to queue 'carol.q' in vhost '/' refused for user 'carol'",
        |ch| async move { declare(&ch, "carol.q").await },
    )
    .await;
}
