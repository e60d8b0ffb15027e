//! Helpers of the basic-class tests (`basic_*.rs`): declare uniquely named queues, publish,
//! consume and drain, poll ready counts, and check reply codes, each bounded in time so a
//! broker that stops answering fails the test instead of hanging it.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer, Event};

use crate::raw::reply_code;
use crate::uniq;

/// Upper bound for anything the broker should do promptly.
pub const WAIT: Duration = Duration::from_secs(5);
/// Upper bound for one whole test.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs a whole test under one deadline, so a broker that stops answering an unwrapped call
/// fails the test instead of hanging it.
pub async fn bounded(test: impl std::future::Future<Output = ()>) {
    crate::bounded(TEST_LIMIT, test).await;
}

/// How long a consumer must stay silent to count as "received nothing more".
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `fut` for at most [`WAIT`]; `what` names it in the panic if it takes longer.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// Asserts that `res` failed with the broker's reply `code`; `what` names the operation.
pub fn assert_code<T: std::fmt::Debug>(res: lapin::Result<T>, code: u16, what: &str) {
    match res {
        Ok(v) => panic!("{what}: expected AMQP error {code}, got Ok({v:?})"),
        Err(e) => assert_eq!(reply_code(&e), Some(code), "{what}: wrong error {e:?}"),
    }
}

/// Waits for the next channel or connection error event and returns its reply code.
pub async fn next_error_code(
    events: &mut (impl futures_lite::Stream<Item = Event> + Unpin),
) -> u16 {
    loop {
        match within("error event", events.next()).await {
            Some(Event::Error(e)) => {
                return reply_code(&e).unwrap_or_else(|| panic!("not a protocol error: {e:?}"));
            }
            Some(_) => continue,
            None => panic!("event stream ended without an error"),
        }
    }
}

/// Declares a queue named after `base` and unique to this process; returns its name.
pub async fn declare(ch: &Channel, base: &str) -> String {
    let name = uniq(base);
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    name
}

/// Publishes `body` (default properties, not mandatory) and awaits the publish's outcome.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish")
    .await
    .expect("publish confirmation");
}

/// Ready-message count as reported by a passive queue.declare.
pub async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Polls the ready count until it equals `n`.
pub async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = ready_count(ch, queue).await;
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue}: expected {n} ready messages, still {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Consumes `queue` with manual acks under consumer tag `tag`.
pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_with(
        ch,
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Consumes `queue` with the given options and arguments.
pub async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
    args: FieldTable,
) -> Consumer {
    ch.basic_consume(queue.into(), tag.into(), options, args)
        .await
        .expect("basic.consume")
}

/// The consumer's next delivery, within [`WAIT`].
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    within("delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Collects deliveries until the consumer has been silent for [`QUIET`].
pub async fn drain(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(next) = tokio::time::timeout(QUIET, consumer.next()).await {
        match next {
            Some(Ok(d)) => out.push(d),
            Some(Err(e)) => panic!("consumer error: {e:?}"),
            None => break,
        }
        assert!(out.len() < 10_000, "runaway consumer");
    }
    out
}

/// basic.get with manual ack, within [`WAIT`].
pub async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
}

/// The bodies of `ds` as text, in order.
pub fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}

/// Publishes `n` messages `{prefix}0`, `{prefix}1`, ... to `queue` through the default exchange.
pub async fn publish_n(ch: &Channel, queue: &str, prefix: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("{prefix}{i}").as_bytes()).await;
    }
}
