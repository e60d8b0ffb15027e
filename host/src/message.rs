//! A published message, shared by every queue it was routed to.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use bytes::Bytes;
use tokio::time::Instant;

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

    /// The `priority` property.
    pub fn priority(&self) -> Option<u8> {
        *self.properties.priority()
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// The per-message TTL from the `expiration` property, in milliseconds. None when absent
    /// or invalid (the channel refuses invalid ones at publish, see [`parse_expiration`]).
    pub fn ttl_ms(&self) -> Option<u64> {
        self.properties
            .expiration()
            .as_ref()
            .and_then(|e| parse_expiration(e.as_str()).ok())
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
    use super::parse_expiration;

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
