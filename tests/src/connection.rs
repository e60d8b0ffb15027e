//! Helpers of the connection tests (`connection_*.rs`): a lapin connection bounded in time, a
//! check that a channel still works, a bystander connection that misbehaving clients must not
//! disturb, and a raw connection ready to misbehave.

use amq_protocol::types::FieldTable;
use lapin::options::QueueDeclareOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::TestBroker;
use crate::raw::{RawClient, within};

/// Connects with lapin to `url`, bounded in time.
pub async fn lapin_connect(url: &str) -> Result<Connection, lapin::Error> {
    within(Connection::connect(url, ConnectionProperties::default())).await
}

/// Proves a channel still works: declares a fresh exclusive queue and reads its declare-ok.
pub async fn assert_channel_works(ch: &Channel) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("healthy-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let q = within(ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("queue.declare on a healthy channel");
    assert_eq!(q.name().as_str(), name);
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
}

/// A lapin connection opened before a misbehaving client, to check it is not disturbed.
pub struct Bystander {
    _conn: Connection,
    ch: Channel,
}

impl Bystander {
    /// Opens the bystander's connection and channel.
    pub async fn new(broker: &TestBroker) -> Self {
        let (conn, ch) = within(broker.channel()).await;
        Self { _conn: conn, ch }
    }

    /// The bystander's own channel still works and a brand-new connection can be opened.
    pub async fn assert_unaffected(&self, broker: &TestBroker) {
        assert_channel_works(&self.ch).await;
        let (_conn, ch) = within(broker.channel()).await;
        assert_channel_works(&ch).await;
    }
}

/// Opens a raw connection with channel 1 open, ready to misbehave.
pub async fn raw_with_channel(broker: &TestBroker) -> RawClient {
    let (mut raw, _) = RawClient::open(broker.addr()).await;
    raw.open_channel(1).await;
    raw
}
