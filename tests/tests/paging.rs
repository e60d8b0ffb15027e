//! Paging of every kind of message (issue 10): a queue without consumers holds far more than
//! its in-memory window; transient messages, messages with a TTL and priority queues go to
//! disk beyond it, and come back in order, with TTLs honoured, when a consumer drains.

use std::sync::Arc;
use std::time::Duration;

use bourse::queue::{IN_MEMORY_MESSAGES, Queue};
use bourse_tests::raw::within;
use bourse_tests::{TestBroker, bounded, session};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

const TOTAL: usize = 3 * IN_MEMORY_MESSAGES;

/// Declares a non-durable queue with `args`.
async fn declare(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.clone());
    }
    within(ch.queue_declare(name.into(), QueueDeclareOptions::default(), table))
        .await
        .expect("queue.declare");
}

/// Publishes `TOTAL` transient messages "m{i}" with confirms, `properties(i)` each.
async fn publish_all(ch: &Channel, queue: &str, properties: impl Fn(usize) -> BasicProperties) {
    let mut confirms = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL {
        confirms.push(
            within(ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                properties(i),
            ))
            .await
            .expect("basic.publish"),
        );
    }
    for confirm in confirms {
        assert!(within(confirm).await.expect("confirm").is_ack());
    }
}

fn queue(broker: &TestBroker, name: &str) -> Option<Arc<Queue>> {
    broker.handle()?.shared().vhost("/")?.queue(name).ok()
}

/// Checks that more than the in-memory window is on disk only, and that the queue accounts
/// in memory for the window alone (its entries and small bodies), not for the paged ones.
fn assert_paged(broker: &TestBroker, name: &str) {
    if let Some(queue) = queue(broker, name) {
        assert!(
            queue.paged_count() >= TOTAL - IN_MEMORY_MESSAGES - 1,
            "messages beyond the in-memory window are paged out ({} of {TOTAL})",
            queue.paged_count()
        );
        let window = IN_MEMORY_MESSAGES * 400;
        assert!(
            queue.memory_bytes() < window,
            "{} bytes accounted for {TOTAL} queued messages",
            queue.memory_bytes()
        );
        let vhost: usize = broker
            .handle()
            .map(|h| h.queued_memory().iter().map(|(_, b)| b).sum())
            .unwrap_or_default();
        assert!(vhost >= queue.memory_bytes() && vhost < 2 * window);
    }
}

/// Consumes (autoack) until `expected` bodies arrived; returns them in delivery order.
async fn drain(ch: &Channel, queue: &str, expected: usize) -> Vec<String> {
    let mut consumer = within(ch.basic_consume(
        queue.into(),
        "drain".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("basic.consume");
    let mut got = Vec::with_capacity(expected);
    while got.len() < expected {
        let delivery = within(consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        got.push(String::from_utf8_lossy(&delivery.data).into_owned());
    }
    got
}

fn names(indexes: impl Iterator<Item = usize>) -> Vec<String> {
    indexes.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn transient_messages_of_a_non_durable_queue_page_out_and_drain_in_order() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare(&ch, "paged-transient", &[]).await;
        publish_all(&ch, "paged-transient", |_| BasicProperties::default()).await;
        assert_paged(&broker, "paged-transient");
        let got = drain(&ch, "paged-transient", TOTAL).await;
        assert_eq!(got, names(0..TOTAL));
    })
    .await;
}

#[tokio::test]
async fn paged_messages_with_a_ttl_expire_at_the_head_and_the_rest_drain_in_order() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare(&ch, "paged-ttl", &[]).await;
        // Every other message expires after 300 ms; the others after a minute.
        publish_all(&ch, "paged-ttl", |i| {
            let ttl = if i % 2 == 0 { "300" } else { "60000" };
            BasicProperties::default().with_expiration(ttl.into())
        })
        .await;
        assert_paged(&broker, "paged-ttl");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let got = drain(&ch, "paged-ttl", TOTAL / 2).await;
        assert_eq!(got, names((0..TOTAL).filter(|i| i % 2 == 1)));
        if let Some(queue) = queue(&broker, "paged-ttl") {
            assert_eq!(queue.message_count(), 0, "nothing else is left");
        }
    })
    .await;
}

#[tokio::test]
async fn a_priority_queue_pages_out_and_drains_highest_priority_first() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = session(&broker).await;
        declare(
            &ch,
            "paged-priority",
            &[("x-max-priority", AMQPValue::ShortShortUInt(5))],
        )
        .await;
        publish_all(&ch, "paged-priority", |i| {
            BasicProperties::default().with_priority((i % 6) as u8)
        })
        .await;
        assert_paged(&broker, "paged-priority");
        let got = drain(&ch, "paged-priority", TOTAL).await;
        let mut expected: Vec<usize> = (0..TOTAL).collect();
        expected.sort_by_key(|&i| (std::cmp::Reverse(i % 6), i));
        assert_eq!(got, names(expected.into_iter()));
    })
    .await;
}

/// Declares a durable queue with `args`.
async fn declare_durable(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.clone());
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare(name.into(), options, table))
        .await
        .expect("queue.declare");
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

#[tokio::test]
async fn after_a_restart_paged_persistent_messages_are_back_and_paged_transient_ones_are_gone() {
    bounded(Duration::from_secs(90), async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        declare_durable(&ch, "paged-mixed", &[]).await;
        // Every third message is persistent; all but the first window are paged, the
        // transient ones into the paging store.
        publish_all(&ch, "paged-mixed", |i| {
            if i % 3 == 0 {
                persistent()
            } else {
                BasicProperties::default()
            }
        })
        .await;
        assert_paged(&broker, "paged-mixed");
        drop(ch);
        let _ = conn.close(200, "restart".into()).await;
        broker.restart().await;
        let (_conn, ch) = session(&broker).await;
        let kept = TOTAL.div_ceil(3);
        let got = drain(&ch, "paged-mixed", kept).await;
        assert_eq!(got, names((0..TOTAL).filter(|i| i % 3 == 0)));
        if let Some(queue) = queue(&broker, "paged-mixed") {
            assert_eq!(queue.message_count(), 0, "no transient message came back");
        }
    })
    .await;
}

#[tokio::test]
async fn a_durable_priority_queue_pages_and_recovers_in_priority_order() {
    bounded(Duration::from_secs(90), async {
        let mut broker = TestBroker::start().await;
        let (conn, ch) = session(&broker).await;
        let args = [("x-max-priority", AMQPValue::ShortShortUInt(3))];
        declare_durable(&ch, "paged-durable-priority", &args).await;
        publish_all(&ch, "paged-durable-priority", |i| {
            persistent().with_priority((i % 4) as u8)
        })
        .await;
        assert_paged(&broker, "paged-durable-priority");
        drop(ch);
        let _ = conn.close(200, "restart".into()).await;
        broker.restart().await;
        let (_conn, ch) = session(&broker).await;
        let got = drain(&ch, "paged-durable-priority", TOTAL).await;
        let mut expected: Vec<usize> = (0..TOTAL).collect();
        expected.sort_by_key(|&i| (std::cmp::Reverse(i % 4), i));
        assert_eq!(got, names(expected.into_iter()));
    })
    .await;
}
