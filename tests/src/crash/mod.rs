//! What the crash tests (`tests/tests/crash.rs`) need beyond [`crate::process`]: messages
//! whose body proves their id, a durable queue and a drain bounded in time; the [`ledger`] of
//! what the clients saw across kills; and the [`damage`] done to segment files between a kill
//! and a restart.

pub mod damage;
pub mod ledger;

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::time::timeout;

use crate::process::BrokerProcess;

/// How long client tasks may take to notice that the broker is gone.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for the next message while draining a queue of known length.
pub const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Quiet period after a drain, to catch any message beyond the announced count.
pub const QUIET: Duration = Duration::from_millis(300);

/// The body of message `id`: its id, then a filler whose length (0..257) and letters depend on
/// the id, so a damaged, truncated or swapped body shows.
pub fn body(id: u64) -> Vec<u8> {
    let mut body = format!("bourse crash test message {id}|").into_bytes();
    let extra = (id.wrapping_mul(2_654_435_761) % 257) as usize;
    body.extend((0..extra).map(|i| b'a' + ((id as usize + i) % 26) as u8));
    body
}

/// Persistent (delivery mode 2), with the id as message_id.
pub fn properties(id: u64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.to_string().into())
}

/// The id of a delivery, checking that its body is exactly the one published with that id.
pub fn parse(d: &Delivery) -> Result<u64, String> {
    let Some(message_id) = d.properties.message_id() else {
        return Err(format!(
            "message without message_id, body {:?}",
            String::from_utf8_lossy(&d.data)
        ));
    };
    let id: u64 = message_id
        .as_str()
        .parse()
        .map_err(|_| format!("message_id {message_id:?} is not an id"))?;
    if d.data != body(id) {
        return Err(format!(
            "message {id} has a damaged body: {} bytes {:?}, expected {} bytes",
            d.data.len(),
            String::from_utf8_lossy(&d.data[..d.data.len().min(60)]),
            body(id).len()
        ));
    }
    Ok(id)
}

/// queue.declare options of a durable queue.
pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares the durable `queue` (it may exist) and returns its ready-message count.
pub async fn declare(broker: &BrokerProcess, ch: &Channel, queue: &str) -> u32 {
    match timeout(
        STOP_LIMIT,
        ch.queue_declare(queue.into(), durable(), FieldTable::default()),
    )
    .await
    {
        Ok(Ok(q)) => q.message_count(),
        other => panic!("queue.declare {queue}: {other:?}\n{}", broker.log_tail()),
    }
}

/// Consumes the whole queue (auto-ack): as many messages as queue.declare-ok announces, then
/// whatever else arrives within [`QUIET`] (there should be nothing).
pub async fn drain(broker: &BrokerProcess, queue: &str) -> Vec<Delivery> {
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel opens");
    let expected = declare(broker, &ch, queue).await as usize;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        match timeout(DRAIN_IDLE, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            other => panic!(
                "draining {queue}: got {} of the {expected} messages announced, then {other:?}\n{}",
                out.len(),
                broker.log_tail()
            ),
        }
    }
    while let Ok(Some(Ok(d))) = timeout(QUIET, consumer.next()).await {
        out.push(d);
    }
    let _ = conn.close(200, "drained".into()).await;
    out
}
