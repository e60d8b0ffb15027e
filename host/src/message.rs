//! A published message, shared by every queue it was routed to.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::exchange::Name;

/// An immutable message. Queues hold `Arc<Message>`, so fan-out to N queues shares one body.
///
/// It keeps its properties as the bytes the publisher sent, plus the few fields queues read
/// for every message (persistence, priority, TTL); everything else is decoded from the bytes
/// when a feature needs it ([`Message::properties`]: dead-lettering, CC keys). Routing sees the
/// properties the channel decoded at publish, never a copy kept here.
#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: Name,
    /// The routing key it was published with.
    pub routing_key: Name,
    /// The encoded property flags and values, forwarded verbatim on delivery.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
    meta: Meta,
}

/// The property fields queues read per message, decoded once.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// `expiration` in ms; `u64::MAX`: none (or invalid, or too large to ever expire).
    ttl_ms: u64,
    priority: Option<u8>,
    persistent: bool,
}

/// Bodies below this size are copied out of the connection's read buffer (with their
/// property bytes, into one allocation) so that a queued message does not keep a whole read
/// chunk (up to 256 KiB) alive.
pub const COPY_BELOW_BYTES: usize = 64 << 10;

impl Message {
    /// A message with `properties` (decoded) and `raw_properties` (their encoding).
    pub fn new(
        exchange: Name,
        routing_key: Name,
        properties: &BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        let ttl_ms = properties
            .expiration()
            .as_ref()
            .and_then(|e| parse_expiration(e.as_str()).ok())
            .unwrap_or(u64::MAX);
        Message {
            exchange,
            routing_key,
            raw_properties,
            body,
            meta: Meta {
                ttl_ms,
                priority: *properties.priority(),
                persistent: *properties.delivery_mode() == Some(2),
            },
        }
    }

    /// [`Message::new`] for a body and property bytes cut from a connection's read buffer:
    /// small ones are copied out together into one allocation of their own.
    pub fn from_wire(
        exchange: Name,
        routing_key: Name,
        properties: &BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        let (raw_properties, body) = if body.len() < COPY_BELOW_BYTES {
            let mut both = BytesMut::with_capacity(raw_properties.len() + body.len());
            both.extend_from_slice(&raw_properties);
            both.extend_from_slice(&body);
            let mut both = both.freeze();
            let body = both.split_off(raw_properties.len());
            (both, body)
        } else {
            (Bytes::copy_from_slice(&raw_properties), body)
        };
        Self::new(exchange, routing_key, properties, raw_properties, body)
    }

    /// The properties, decoded from their bytes (bounded like a peer's: the nesting walk runs
    /// first). Bytes that do not decode give the default properties.
    pub fn properties(&self) -> BasicProperties {
        crate::protocol::decode_properties(&self.raw_properties).unwrap_or_default()
    }

    /// Whether the publisher asked for persistence (delivery-mode 2).
    pub fn persistent(&self) -> bool {
        self.meta.persistent
    }

    /// The `priority` property.
    pub fn priority(&self) -> Option<u8> {
        self.meta.priority
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// The per-message TTL from the `expiration` property, in milliseconds. None when absent
    /// or invalid (the channel refuses invalid ones at publish, see [`parse_expiration`]).
    pub fn ttl_ms(&self) -> Option<u64> {
        (self.meta.ttl_ms != u64::MAX).then_some(self.meta.ttl_ms)
    }
}

/// Parses an `expiration` property as RabbitMQ does (`rabbit_basic:parse_expiration`): a
/// non-negative decimal integer of milliseconds. The error is RabbitMQ's reason term, for the
/// 406 text "invalid expiration '...': <reason>".
pub fn parse_expiration(text: &str) -> Result<u64, String> {
    // Erlang's string:to_integer: optional sign, then digits; anything after is left over.
    let digits_start = usize::from(text.starts_with(['+', '-']));
    let digits_end = text[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |i| i + digits_start);
    if digits_end == digits_start {
        return Err("no_integer".into());
    }
    if digits_end < text.len() {
        return Err(format!("{{leftover_string,\"{}\"}}", &text[digits_end..]));
    }
    let value: i128 = text[..digits_end]
        .parse()
        .map_err(|_| "no_integer".to_string())?;
    if value < 0 {
        return Err(format!("{{value_negative,{value}}}"));
    }
    u64::try_from(value).map_err(|_| format!("{{value_too_big,{value}}}"))
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
    /// When the message expires in this queue (`x-message-ttl` or its `expiration`, whichever
    /// is sooner), fixed when it was enqueued; a requeue keeps it. None: never.
    pub expires_at: Option<Instant>,
    /// Where the queue's message store holds it (a [`crate::store::Position`] as u64), or 0
    /// when it is not stored (transient, or the queue is not durable).
    pub position: u64,
}

#[cfg(test)]
mod tests {
    use super::{Message, parse_expiration};
    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    #[test]
    fn a_small_message_owns_its_bytes_and_stays_small() {
        // A read chunk of 256 KiB with a 16-byte body and 2 property bytes inside it.
        let chunk = Bytes::from(vec![7u8; 256 << 10]);
        let properties = BasicProperties::default()
            .with_priority(3)
            .with_delivery_mode(2)
            .with_expiration("1500".into());
        let message = Message::from_wire(
            "ex".into(),
            "rk".into(),
            &properties,
            chunk.slice(1000..1002),
            chunk.slice(2000..2016),
        );
        let inside = |b: &Bytes| {
            let start = chunk.as_ptr() as usize;
            (start..start + chunk.len()).contains(&(b.as_ptr() as usize))
        };
        assert!(!inside(&message.body) && !inside(&message.raw_properties));
        assert_eq!((message.body.len(), message.raw_properties.len()), (16, 2));
        assert_eq!(
            (message.priority(), message.persistent(), message.ttl_ms()),
            (Some(3), true, Some(1500))
        );
        // No decoded property struct is kept: names, two byte slices and a few fields.
        assert!(std::mem::size_of::<Message>() <= 112);
        // A large body stays where it is (copying it would cost more than it pins).
        let big = Message::from_wire(
            "ex".into(),
            "rk".into(),
            &BasicProperties::default(),
            chunk.slice(0..2),
            chunk.slice(2..),
        );
        assert!(inside(&big.body) && !inside(&big.raw_properties));
    }

    #[test]
    fn expiration_is_a_non_negative_integer() {
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("60000"), Ok(60_000));
        assert_eq!(parse_expiration("+5"), Ok(5));
        assert_eq!(parse_expiration("-1"), Err("{value_negative,-1}".into()));
        assert_eq!(parse_expiration("abc"), Err("no_integer".into()));
        assert_eq!(parse_expiration(""), Err("no_integer".into()));
        assert_eq!(
            parse_expiration("10s"),
            Err("{leftover_string,\"s\"}".into())
        );
    }
}
