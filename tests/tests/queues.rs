//! Queues end to end: declare (server-named, passive, durable, exclusive, auto-delete), the
//! counts in declare-ok, bind/unbind, purge, delete with its conditions, FIFO order and where a
//! requeued message goes back.
//!
//! Publishes use publisher confirms, so the broker has enqueued a message before the test looks
//! for it.

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};
use bourse_tests::raw::{assert_reply_code, reply_code, within};
use bourse_tests::{TestBroker, confirm_channel, session};
use futures_lite::StreamExt;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind, Queue};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers

async fn try_declare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<Queue, lapin::Error> {
    within(ch.queue_declare(name.into(), options, args)).await
}

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions) -> Queue {
    try_declare(ch, name, options, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declare queue {name:?}: {e}"))
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Publishes `body` to the default exchange (so to queue `queue`) and waits for the confirm.
async fn publish(ch: &Channel, queue: &str, body: &str) {
    publish_to(ch, "", queue, body).await;
}

async fn publish_to(ch: &Channel, exchange: &str, key: &str, body: &str) {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("publish {body:?}: {e}"));
    let confirmation = within(confirm)
        .await
        .unwrap_or_else(|e| panic!("confirm {body:?}: {e}"));
    assert!(confirmation.is_ack(), "publish {body:?} acked");
}

/// basic.get with explicit acks.
async fn get(ch: &Channel, queue: &str) -> Option<BasicGetMessage> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
}

/// basic.get with explicit acks, expecting a message with `body`.
#[track_caller]
fn expect_body(msg: Option<BasicGetMessage>, body: &str) -> BasicGetMessage {
    let msg = msg.unwrap_or_else(|| panic!("expected message {body:?}, queue was empty"));
    assert_eq!(
        String::from_utf8_lossy(&msg.delivery.data),
        body,
        "message order"
    );
    msg
}

/// Every ready message's body, taken with no-ack.
async fn bodies(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
        {
            Some(msg) => out.push(String::from_utf8(msg.delivery.data).expect("utf-8 body")),
            None => return out,
        }
    }
    panic!("queue {queue} never emptied");
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Result<Consumer, lapin::Error> {
    within(ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
}

async fn cancel(ch: &Channel, tag: &str) {
    within(ch.basic_cancel(tag.into(), BasicCancelOptions::default()))
        .await
        .unwrap_or_else(|e| panic!("cancel {tag}: {e}"));
}

/// Whether queue `name` exists, by passive declare on a throwaway channel (405, locked by
/// another connection, counts as existing).
async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = within(conn.create_channel()).await.expect("channel opens");
    match try_declare(&ch, name, passive(), FieldTable::default()).await {
        Ok(_) => true,
        Err(e) if reply_code(&e) == Some(404) => false,
        // Another connection's exclusive queue: it exists, we just may not touch it.
        Err(e) if reply_code(&e) == Some(405) => true,
        Err(e) => panic!("passive declare of {name}: {e}"),
    }
}

/// Polls until queue `name` no longer exists; false if it is still there after 5 s.
async fn eventually_gone(conn: &Connection, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if !queue_exists(conn, name).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Declare

#[tokio::test]
async fn server_named_queue_gets_amq_gen_name() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    let q1 = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let q2 = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let (n1, n2) = (q1.name().as_str().to_owned(), q2.name().as_str().to_owned());
    assert!(
        n1.starts_with("amq.gen-") && n1.len() > "amq.gen-".len(),
        "name {n1}"
    );
    assert_ne!(n1, n2, "each declare gets a fresh name");
    publish(&ch, &n1, "hello").await;
    assert_eq!(
        bodies(&ch, &n1).await,
        ["hello"],
        "the generated name is routable"
    );
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_not_found() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    assert_reply_code(
        try_declare(&ch, "missing", passive(), FieldTable::default()).await,
        404,
    );
    let ch = confirm_channel(&conn).await;
    declare(&ch, "present", QueueDeclareOptions::default()).await;
    let q = try_declare(&ch, "present", passive(), FieldTable::default())
        .await
        .expect("passive");
    assert_eq!(q.name().as_str(), "present");
}

#[tokio::test]
async fn declare_ok_reports_message_and_consumer_counts() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let q = declare(&ch, "counted", QueueDeclareOptions::default()).await;
    assert_eq!(
        (q.message_count(), q.consumer_count()),
        (0, 0),
        "fresh queue"
    );
    for i in 0..3 {
        publish(&ch, "counted", &format!("m{i}")).await;
    }
    let q = declare(&ch, "counted", QueueDeclareOptions::default()).await;
    assert_eq!(
        (q.message_count(), q.consumer_count()),
        (3, 0),
        "redeclare reports counts"
    );

    // One consumer holding one unacked message: 2 ready, 1 consumer.
    let consumer_ch = within(conn.create_channel()).await.expect("channel");
    within(consumer_ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut consumer = consume(&consumer_ch, "counted", "c1")
        .await
        .expect("consume");
    let first = within(consumer.next())
        .await
        .expect("a delivery")
        .expect("delivery ok");
    assert_eq!(first.data, b"m0");
    let q = try_declare(&ch, "counted", passive(), FieldTable::default())
        .await
        .expect("passive");
    assert_eq!(
        q.message_count(),
        2,
        "message_count counts ready messages only"
    );
    assert_eq!(q.consumer_count(), 1);
}

#[tokio::test]
async fn durable_queue_redeclared_as_transient_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare(&ch, "dq", durable).await;
    declare(&ch, "dq", durable).await; // same flags: fine
    let res = try_declare(
        &ch,
        "dq",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 406);
    assert!(queue_exists(&conn, "dq").await);
}

#[tokio::test]
async fn redeclare_with_other_flags_or_arguments_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    try_declare(&ch, "q", QueueDeclareOptions::default(), args.clone())
        .await
        .expect("declare");
    try_declare(&ch, "q", QueueDeclareOptions::default(), args)
        .await
        .expect("same again");

    let mut other_args = FieldTable::default();
    other_args.insert("x-max-length".into(), AMQPValue::LongInt(20));
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let variants = [
        ("auto_delete", auto_delete, FieldTable::default()),
        (
            "durable",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
        ("x-max-length", QueueDeclareOptions::default(), other_args),
    ];
    for (what, opts, args) in variants {
        let ch = confirm_channel(&conn).await;
        match try_declare(&ch, "q", opts, args).await {
            Ok(_) => panic!("redeclare with different {what} succeeded"),
            Err(e) => assert_eq!(reply_code(&e), Some(406), "different {what}: {e}"),
        }
    }
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection() {
    let broker = TestBroker::start().await;
    let (owner, owner_ch) = session(&broker).await;
    declare(
        &owner_ch,
        "ex",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    publish(&owner_ch, "ex", "m").await;

    // The owner may use it from any of its channels.
    let other_owner_ch = confirm_channel(&owner).await;
    let _consumer = consume(&other_owner_ch, "ex", "owner-consumer")
        .await
        .expect("owner consumes");

    let (stranger, _) = session(&broker).await;
    let attempts: [(&str, QueueDeclareOptions); 3] = [
        ("declare", QueueDeclareOptions::default()),
        (
            "exclusive declare",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        ),
        ("passive declare", passive()),
    ];
    for (what, opts) in attempts {
        let ch = confirm_channel(&stranger).await;
        match try_declare(&ch, "ex", opts, FieldTable::default()).await {
            Ok(_) => panic!("{what} from another connection succeeded"),
            Err(e) => assert_eq!(reply_code(&e), Some(405), "{what}: {e}"),
        }
    }
    let ch = confirm_channel(&stranger).await;
    assert_reply_code(consume(&ch, "ex", "stranger").await, 405);
    let ch = confirm_channel(&stranger).await;
    assert_reply_code(
        within(ch.queue_purge("ex".into(), QueuePurgeOptions::default())).await,
        405,
    );
    let ch = confirm_channel(&stranger).await;
    assert_reply_code(
        within(ch.queue_delete("ex".into(), QueueDeleteOptions::default())).await,
        405,
    );

    // Gone once the owner disconnects.
    within(owner.close(200, "bye".into()))
        .await
        .expect("owner closes");
    assert!(
        eventually_gone(&stranger, "ex").await,
        "exclusive queue outlived its connection"
    );
}

#[tokio::test]
async fn exclusive_mismatch_on_redeclare_is_resource_locked() {
    // rabbit_amqqueue:assert_equivalence checks exclusive ownership first (strict), so declaring
    // an existing shared queue as exclusive is 405, not 406.
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "shared", QueueDeclareOptions::default()).await;
    let res = try_declare(
        &ch,
        "shared",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 405);

    // And the other way round: the owner redeclaring its exclusive queue as shared.
    let ch = confirm_channel(&conn).await;
    declare(
        &ch,
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let res = try_declare(
        &ch,
        "mine",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_reply_code(res, 405);
}

#[tokio::test]
async fn auto_delete_queue_waits_for_a_first_consumer() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(
        &ch,
        "ad",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    publish(&ch, "ad", "m1").await;
    assert_eq!(
        bodies(&ch, "ad").await,
        ["m1"],
        "basic.get is not a consumer"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        queue_exists(&conn, "ad").await,
        "never-consumed auto-delete queue stays"
    );
}

#[tokio::test]
async fn auto_delete_queue_goes_after_last_consumer_cancels() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(
        &ch,
        "ad",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    let _c1 = consume(&ch, "ad", "c1").await.expect("consume c1");
    let _c2 = consume(&ch, "ad", "c2").await.expect("consume c2");

    cancel(&ch, "c1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(queue_exists(&conn, "ad").await, "one consumer left");

    cancel(&ch, "c2").await;
    assert!(
        eventually_gone(&conn, "ad").await,
        "auto-delete queue outlived its last consumer"
    );
}

#[tokio::test]
async fn auto_delete_queue_goes_when_consumer_channel_closes() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(
        &ch,
        "ad",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    let consumer_ch = confirm_channel(&conn).await;
    let _c = consume(&consumer_ch, "ad", "c").await.expect("consume");
    within(consumer_ch.close(200, "done".into()))
        .await
        .expect("close channel");
    assert!(
        eventually_gone(&conn, "ad").await,
        "closing the channel cancels its consumers"
    );
}

// ---------------------------------------------------------------------------------------------
// Bind, unbind, purge, delete

#[tokio::test]
async fn bind_and_unbind_control_routing() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange");
    declare(&ch, "q", QueueDeclareOptions::default()).await;

    publish_to(&ch, "x", "k", "before-bind").await;
    for _ in 0..2 {
        // A second identical bind is a no-op, not a second route.
        within(ch.queue_bind(
            "q".into(),
            "x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("bind");
    }
    publish_to(&ch, "x", "k", "bound").await;
    publish_to(&ch, "x", "other", "other-key").await;
    assert_eq!(bodies(&ch, "q").await, ["bound"]);

    within(ch.queue_unbind("q".into(), "x".into(), "k".into(), FieldTable::default()))
        .await
        .expect("unbind");
    publish_to(&ch, "x", "k", "after-unbind").await;
    assert!(bodies(&ch, "q").await.is_empty());
}

#[tokio::test]
async fn binding_to_missing_exchange_or_queue_is_not_found() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    let res = within(ch.queue_bind(
        "q".into(),
        "no-such-x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_reply_code(res, 404);

    let ch = confirm_channel(&conn).await;
    let res = within(ch.queue_bind(
        "no-such-q".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_reply_code(res, 404);
}

#[tokio::test]
async fn purge_returns_the_number_of_messages_removed() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "p", QueueDeclareOptions::default()).await;
    for i in 0..4 {
        publish(&ch, "p", &format!("m{i}")).await;
    }
    let purged = within(ch.queue_purge("p".into(), QueuePurgeOptions::default()))
        .await
        .expect("purge");
    assert_eq!(purged, 4);
    assert!(get(&ch, "p").await.is_none(), "empty after purge");
    let purged = within(ch.queue_purge("p".into(), QueuePurgeOptions::default()))
        .await
        .expect("purge");
    assert_eq!(purged, 0);
}

#[tokio::test]
async fn delete_returns_message_count_and_removes_queue() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "d", QueueDeclareOptions::default()).await;
    for i in 0..3 {
        publish(&ch, "d", &format!("m{i}")).await;
    }
    let count = within(ch.queue_delete("d".into(), QueueDeleteOptions::default()))
        .await
        .expect("delete");
    assert_eq!(count, 3);
    assert!(!queue_exists(&conn, "d").await);
}

#[tokio::test]
async fn delete_of_missing_queue_is_ok() {
    // rabbit_channel: queue.delete of a missing queue answers delete-ok with 0 messages.
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    let count = within(ch.queue_delete("missing".into(), QueueDeleteOptions::default()))
        .await
        .expect("delete-ok");
    assert_eq!(count, 0);
}

#[tokio::test]
async fn delete_if_unused_with_consumer_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "busy", QueueDeclareOptions::default()).await;
    let consumer_ch = confirm_channel(&conn).await;
    let _c = consume(&consumer_ch, "busy", "c").await.expect("consume");
    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_reply_code(within(ch.queue_delete("busy".into(), if_unused)).await, 406);
    assert!(queue_exists(&conn, "busy").await);

    cancel(&consumer_ch, "c").await;
    let ch = confirm_channel(&conn).await;
    within(ch.queue_delete("busy".into(), if_unused))
        .await
        .expect("unused now");
    assert!(!queue_exists(&conn, "busy").await);
}

#[tokio::test]
async fn delete_if_empty_with_messages_is_precondition_failed() {
    let broker = TestBroker::start().await;
    let (conn, ch) = session(&broker).await;
    declare(&ch, "full", QueueDeclareOptions::default()).await;
    publish(&ch, "full", "m").await;
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    assert_reply_code(within(ch.queue_delete("full".into(), if_empty)).await, 406);

    let ch = confirm_channel(&conn).await;
    assert_eq!(
        bodies(&ch, "full").await,
        ["m"],
        "message survived the refused delete"
    );
    let count = within(ch.queue_delete("full".into(), if_empty))
        .await
        .expect("empty now");
    assert_eq!(count, 0);
}

// ---------------------------------------------------------------------------------------------
// Ordering

#[tokio::test]
async fn messages_are_delivered_in_publish_order() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "fifo", QueueDeclareOptions::default()).await;
    let sent: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
    for body in &sent {
        publish(&ch, "fifo", body).await;
    }
    assert_eq!(bodies(&ch, "fifo").await, sent);
}

#[tokio::test]
async fn rejected_message_is_requeued_at_its_original_position() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "rq", QueueDeclareOptions::default()).await;
    for i in 1..=5 {
        publish(&ch, "rq", &i.to_string()).await;
    }
    let m1 = expect_body(get(&ch, "rq").await, "1");
    let m2 = expect_body(get(&ch, "rq").await, "2");
    let m3 = expect_body(get(&ch, "rq").await, "3");
    assert!(!m2.delivery.redelivered);

    within(ch.basic_reject(
        m2.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    ))
    .await
    .expect("reject");
    let again = expect_body(get(&ch, "rq").await, "2");
    assert!(
        again.delivery.redelivered,
        "requeued message is flagged redelivered"
    );
    let m4 = expect_body(get(&ch, "rq").await, "4");
    assert!(!m4.delivery.redelivered);
    let m5 = expect_body(get(&ch, "rq").await, "5");
    assert!(get(&ch, "rq").await.is_none());

    for tag in [m1, again, m3, m4, m5].map(|m| m.delivery.delivery_tag) {
        within(ch.basic_ack(tag, BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    // Everything acked: nothing comes back.
    let q = try_declare(&ch, "rq", passive(), FieldTable::default())
        .await
        .expect("passive");
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn requeued_messages_keep_publish_order_whatever_the_requeue_order() {
    // Requeue 2, then 3: with "push to front" they would come back as 3, 2; RabbitMQ merges them
    // back by publish order.
    let broker = TestBroker::start().await;
    let (_conn, ch) = session(&broker).await;
    declare(&ch, "rq", QueueDeclareOptions::default()).await;
    for i in 1..=5 {
        publish(&ch, "rq", &i.to_string()).await;
    }
    let _m1 = expect_body(get(&ch, "rq").await, "1");
    let m2 = expect_body(get(&ch, "rq").await, "2");
    let m3 = expect_body(get(&ch, "rq").await, "3");
    within(ch.basic_reject(
        m2.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    ))
    .await
    .expect("reject 2");
    within(ch.basic_nack(
        m3.delivery.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    ))
    .await
    .expect("nack 3");
    let order: Vec<String> = {
        let mut v = Vec::new();
        while let Some(m) = get(&ch, "rq").await {
            v.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
            if v.len() > 10 {
                break;
            }
        }
        v
    };
    assert_eq!(order, ["2", "3", "4", "5"]);
}
