//! Publisher flow control (issue 10): a publisher that outruns the consumers of a queue is
//! slowed by its connection not being read, so the queue's backlog stays bounded; publishers
//! to other queues are not slowed; a queue without consumers, or whose consumers take
//! nothing, keeps accepting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties as RawProperties, basic};
use bourse::connection::ConnectionState;
use bourse::queue::FLOW_HIGH_MESSAGES;
use bourse_tests::basic::{declare, ready_count};
use bourse_tests::raw::{RawClient, encode_frame};
use bourse_tests::{TestBroker, bounded, session};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::io::AsyncWriteExt;

/// Messages a flooding publisher sends in one socket write.
const BATCH: usize = 500;
/// What a backlog may reach past the flow threshold: the rest of the read turn in which the
/// threshold was crossed (at most 1,024 frames, 341 three-frame publishes) and the other
/// publishers' turns.
const OVERSHOOT: usize = 1_024;

/// Publishes `count` messages to `queue` as fast as the socket takes them, from a raw
/// client, each body the message's number (u32, big-endian). Returns the connection's address
/// as the broker sees it (to find its state) and the task.
async fn flood(
    addr: SocketAddr,
    queue: &str,
    count: u32,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (mut raw, _) = RawClient::open(addr).await;
    raw.open_channel(1).await;
    let (stream, _) = raw.into_parts();
    let local = stream.local_addr().expect("local address");
    let (mut read, mut write) = stream.into_split();
    let queue = queue.to_owned();
    let task = tokio::spawn(async move {
        // Nothing is expected back; read so the broker's writes never block.
        tokio::spawn(async move {
            let mut sink = vec![0u8; 64 << 10];
            while tokio::io::AsyncReadExt::read(&mut read, &mut sink)
                .await
                .is_ok_and(|n| n > 0)
            {}
        });
        let mut next = 0u32;
        while next < count {
            let mut bytes = Vec::new();
            for _ in 0..BATCH.min((count - next) as usize) {
                bytes.extend(publish_frames(&queue, &next.to_be_bytes()));
                next += 1;
            }
            write.write_all(&bytes).await.expect("publish write");
        }
        // Keep the socket open until the test ends: closing could race the last publishes.
        std::future::pending::<()>().await;
    });
    (local, task)
}

fn publish_frames(queue: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = encode_frame(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    bytes.extend(encode_frame(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: RawProperties::default(),
        },
    )));
    bytes.extend(encode_frame(&AMQPFrame::Body(1, body.to_vec())));
    bytes
}

/// A consumer acking each message, slowed to about 10,000 msg/s (a 10 ms pause every 100
/// messages); checks that messages come in publish order and counts them.
async fn slow_consumer(ch: &Channel, queue: &str, received: Arc<AtomicUsize>) {
    ch.basic_qos(50, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "slow".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    tokio::spawn(async move {
        let mut expected = 0u32;
        while let Some(Ok(delivery)) = consumer.next().await {
            let seq = u32::from_be_bytes(delivery.data[..4].try_into().expect("4-byte body"));
            assert_eq!(seq, expected, "messages arrive in publish order");
            expected += 1;
            delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("basic.ack");
            if received.fetch_add(1, Ordering::Relaxed) % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
}

/// The state the broker shows for the connection from `peer`.
fn state_of(broker: &TestBroker, peer: SocketAddr) -> Option<ConnectionState> {
    let handle = broker.handle()?;
    handle
        .connections()
        .into_iter()
        .find(|c| c.peer == peer)
        .map(|c| c.state())
}

#[tokio::test]
async fn a_publisher_outrunning_an_acking_consumer_is_throttled() {
    bounded(Duration::from_secs(90), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let queue = declare(&ch, "flow-slow").await;
        let (_consumer_conn, consumer_ch) = broker.channel().await;
        let received = Arc::new(AtomicUsize::new(0));
        slow_consumer(&consumer_ch, &queue, received.clone()).await;

        let total = 30_000u32;
        let (peer, _publisher) = flood(broker.addr(), &queue, total).await;
        let mut max_ready = 0;
        let mut saw_flow = false;
        while received.load(Ordering::Relaxed) < total as usize {
            max_ready = max_ready.max(ready_count(&ch, &queue).await as usize);
            saw_flow |= state_of(&broker, peer) == Some(ConnectionState::Flow);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            max_ready <= FLOW_HIGH_MESSAGES + OVERSHOOT,
            "the backlog stayed bounded: at most {max_ready} ready"
        );
        if broker.handle().is_some() {
            assert!(saw_flow, "the publisher's connection showed the state flow");
        }
        assert_eq!(ready_count(&ch, &queue).await, 0);
    })
    .await;
}

#[tokio::test]
async fn publishers_to_other_queues_are_not_throttled() {
    bounded(Duration::from_secs(90), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let slow = declare(&ch, "flow-slow").await;
        let buffer = declare(&ch, "flow-buffer").await;
        let (_consumer_conn, consumer_ch) = broker.channel().await;
        let received = Arc::new(AtomicUsize::new(0));
        slow_consumer(&consumer_ch, &slow, received.clone()).await;
        let total = 60_000u32;
        let (slow_peer, _publisher) = flood(broker.addr(), &slow, total).await;

        // Another connection publishes with confirms to a queue without consumers while the
        // first is held back.
        let (_other_conn, other) = session(&broker).await;
        let mut other_flow = false;
        let mut slow_flow = false;
        for batch in 0..20 {
            let mut confirms = Vec::new();
            for i in 0..1_000 {
                confirms.push(
                    other
                        .basic_publish(
                            "".into(),
                            buffer.as_str().into(),
                            BasicPublishOptions::default(),
                            format!("{batch}-{i}").as_bytes(),
                            BasicProperties::default(),
                        )
                        .await
                        .expect("basic.publish"),
                );
            }
            for confirm in confirms {
                assert!(confirm.await.expect("confirm").is_ack());
            }
            if let Some(handle) = broker.handle() {
                for c in handle.connections() {
                    if c.peer == slow_peer {
                        slow_flow |= c.state() == ConnectionState::Flow;
                    } else {
                        other_flow |= c.state() == ConnectionState::Flow;
                    }
                }
            }
        }
        let consumed = received.load(Ordering::Relaxed);
        assert!(
            consumed < total as usize,
            "20,000 confirmed publishes to the other queue finished while the slow queue's \
             publisher was still held back ({consumed} of {total} consumed)"
        );
        assert_eq!(ready_count(&ch, &buffer).await, 20_000);
        if broker.handle().is_some() {
            assert!(slow_flow, "the flooding connection is in flow");
            assert!(!other_flow, "no other connection is ever in flow");
        }
    })
    .await;
}

#[tokio::test]
async fn consumers_that_take_nothing_do_not_hold_publishers_back() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let queue = declare(&ch, "flow-stalled").await;
        // A consumer that takes its prefetch and never acks.
        let (_consumer_conn, consumer_ch) = broker.channel().await;
        consumer_ch
            .basic_qos(10, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let _consumer = consumer_ch
            .basic_consume(
                queue.as_str().into(),
                "stuck".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        let (_pub_conn, publisher) = session(&broker).await;
        let total = 3 * FLOW_HIGH_MESSAGES;
        let mut confirms = Vec::new();
        for i in 0..total {
            confirms.push(
                publisher
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        format!("{i}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .expect("basic.publish"),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        assert_eq!(ready_count(&ch, &queue).await as usize, total - 10);
    })
    .await;
}

/// A buffer that consumers attach to: its publishers are paced to the consumers while the
/// backlog drains (they go on every 512 deliveries), not held until all of it has drained.
#[tokio::test]
async fn publishers_to_a_draining_buffer_go_on_at_the_consumers_pace() {
    bounded(Duration::from_secs(90), async {
        let broker = TestBroker::start().await;
        let (_conn, ch) = broker.channel().await;
        let queue = declare(&ch, "flow-buffer").await;
        let buffered = 50_000u32;
        // The flood's task keeps its socket open: wait for the queue instead.
        let (_peer, _flood) = flood(broker.addr(), &queue, buffered).await;
        while ready_count(&ch, &queue).await < buffered {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // About 10,000 msg/s: the buffer takes some 5 s to drain.
        let (_consumer_conn, consumer_ch) = broker.channel().await;
        let received = Arc::new(AtomicUsize::new(0));
        slow_consumer(&consumer_ch, &queue, received.clone()).await;
        while received.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_publisher_conn, publisher) = broker.channel().await;
        publisher
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let more = 3_000u32;
        let mut confirms = Vec::new();
        for seq in buffered..buffered + more {
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &seq.to_be_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        let left = ready_count(&ch, &queue).await;
        assert!(
            left > 20_000,
            "the publisher was confirmed while the buffer drained, not after: {left} ready"
        );
        while received.load(Ordering::Relaxed) < (buffered + more) as usize {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ready_count(&ch, &queue).await, 0);
    })
    .await;
}
