//! A published message, shared by every queue it was routed to.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use bytes::Bytes;

use crate::exchange::Name;

/// An immutable message. Queues hold `Arc<Message>`, so fan-out to N queues shares one body.
#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: Name,
    /// The routing key it was published with.
    pub routing_key: Name,
    /// Decoded properties, for routing and queue features.
    pub properties: BasicProperties,
    /// The encoded property flags and values, forwarded verbatim on delivery.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// Whether the publisher asked for persistence (delivery-mode 2).
    pub fn persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

/// A message's place in one queue: its position (for requeueing in order) and its flags.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue's publish order; requeued messages return to it.
    pub seq: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Set once the message was delivered and came back.
    pub redelivered: bool,
}
