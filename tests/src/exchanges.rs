//! Helpers of the exchange tests (`exchanges_*.rs`; the WASM exchange tests get the generic
//! ones through [`crate::wasm`]): field tables, declaring exchanges and queues, bindings,
//! publishing with confirms, and reading a queue back. Every broker call is bounded by
//! [`within`].

use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

use crate::raw::within;

/// A field table from pairs.
pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A long-string field value.
pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// exchange.declare with explicit options and arguments.
pub async fn try_declare(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    within(ch.exchange_declare(name.into(), kind, options, args)).await
}

/// Whether exchange `name` exists, checked with a passive declare on a throwaway channel.
pub async fn exchange_exists(conn: &lapin::Connection, name: &str) -> bool {
    let ch = within(conn.create_channel()).await.expect("channel opens");
    let res = try_declare(
        &ch,
        name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    match res {
        Ok(()) => true,
        Err(e) if crate::raw::reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of {name}: {e}"),
    }
}

/// exchange.declare with default options, which must succeed.
pub async fn declare(ch: &Channel, name: &str, kind: ExchangeKind) {
    try_declare(
        ch,
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

/// queue.declare (non-durable), which must succeed.
pub async fn queue(ch: &Channel, name: &str) {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// queue.bind.
pub async fn try_bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    ))
    .await
}

/// queue.bind, which must succeed.
pub async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    try_bind(ch, queue, exchange, key, args)
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

/// Binds exchange `destination` to `source`.
pub async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    within(ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("bind exchange {destination} to {source}: {e}"));
}

/// Declares `queue` and binds it to `exchange` with `key`; both must succeed.
pub async fn queue_on(ch: &Channel, queue_name: &str, exchange: &str, key: &str) {
    queue(ch, queue_name).await;
    bind_queue(ch, queue_name, exchange, key, FieldTable::default()).await;
}

/// Publishes and waits for the broker's confirm; returns the confirmation or the channel error.
pub async fn try_publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<Confirmation, lapin::Error> {
    let options = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let confirm =
        within(ch.basic_publish(exchange.into(), key.into(), options, body, properties)).await?;
    within(confirm).await
}

/// Publishes a plain message and expects an ack without a return.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str) {
    let confirmation = try_publish(
        ch,
        exchange,
        key,
        body.as_bytes(),
        BasicProperties::default(),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("publish to {exchange:?} with {key:?}: {e}"));
    assert!(
        confirmation.is_ack(),
        "publish to {exchange:?} with {key:?} was not acked"
    );
}

/// Publishes a message with headers and expects an ack.
pub async fn publish_headers(ch: &Channel, exchange: &str, body: &str, headers: FieldTable) {
    let props = BasicProperties::default().with_headers(headers);
    let confirmation = try_publish(ch, exchange, "", body.as_bytes(), props, false)
        .await
        .unwrap_or_else(|e| panic!("publish to {exchange:?}: {e}"));
    assert!(
        confirmation.is_ack(),
        "publish to {exchange:?} was not acked"
    );
}

/// Takes every ready message from `queue`.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
        {
            Some(msg) => out.push(msg.delivery),
            None => return out,
        }
    }
    panic!("queue {queue} never emptied");
}

/// The bodies of every ready message in `queue`, in order.
pub async fn bodies(ch: &Channel, queue: &str) -> Vec<String> {
    drain(ch, queue)
        .await
        .into_iter()
        .map(|d| String::from_utf8(d.data).expect("utf-8 body"))
        .collect()
}
