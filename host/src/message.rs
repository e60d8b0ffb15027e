//! A published message, shared by every queue it was routed to.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::AMQPValue;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::exchange::Name;

/// An immutable message. Queues hold `Arc<Message>`, so fan-out to N queues shares one body.
///
/// It keeps its properties as the bytes the publisher sent, plus the few fields queues read
/// for every message (persistence, priority, TTL); everything else is decoded from the bytes
/// when a feature needs it ([`Message::properties`]: dead-lettering, CC keys). Routing sees the
/// properties the channel decoded at publish, never a copy kept here.
///
/// A message held in memory costs three allocations at most, all small: this struct (48
/// bytes, 64 with the `Arc`'s counts), one buffer with the property bytes and a small body
/// together, and its [`Envelope`], which consecutive publishes to the same exchange and
/// routing key share (so usually nothing). docs/overload.md has the measured total.
#[derive(Debug)]
pub struct Message {
    /// A small body: `[property length: u32 LE][property bytes][body]`, copied out of the read
    /// buffer. A large one ([`LARGE`] set): the body alone, still a slice of the read buffer,
    /// with the property bytes in the envelope.
    data: Bytes,
    envelope: Arc<Envelope>,
    /// `expiration` in ms; [`NO_TTL`]: none (or invalid); [`TTL_IN_PROPERTIES`]: too large for
    /// this field, decoded again from the properties when asked.
    ttl_ms: u32,
    /// [`PERSISTENT`], [`HAS_PRIORITY`], [`LARGE`].
    flags: u8,
    priority: u8,
}

/// Where a message was published, shared by consecutive publishes with the same exchange and
/// routing key (a channel keeps its last one), and the property bytes of a large body.
#[derive(Debug)]
pub struct Envelope {
    /// The exchange it was published to.
    pub exchange: Name,
    /// The routing key it was published with.
    pub routing_key: Name,
    /// The property bytes of a message whose body is too large to copy (None otherwise).
    large_properties: Option<Bytes>,
}

impl Envelope {
    /// An envelope for messages published to `exchange` with `routing_key`.
    pub fn new(exchange: Name, routing_key: Name) -> Arc<Self> {
        Arc::new(Self {
            exchange,
            routing_key,
            large_properties: None,
        })
    }
}

const PERSISTENT: u8 = 1;
const HAS_PRIORITY: u8 = 2;
const LARGE: u8 = 4;
const NO_TTL: u32 = u32::MAX;
const TTL_IN_PROPERTIES: u32 = u32::MAX - 1;
/// The length prefix of a small message's buffer.
const PREFIX: usize = 4;

/// Bodies below this size are copied out of the connection's read buffer (with their
/// property bytes, into one allocation) so that a queued message does not keep a whole read
/// chunk (up to 256 KiB) alive.
pub const COPY_BELOW_BYTES: usize = 64 << 10;

impl Message {
    /// A message with `properties` (decoded) and `raw_properties` (their encoding), published
    /// to `exchange` with `routing_key`. For paths that make one message at a time (recovery,
    /// dead-lettering, the management API); the publish path shares envelopes
    /// ([`Message::from_wire`]).
    pub fn new(
        exchange: Name,
        routing_key: Name,
        properties: &BasicProperties,
        raw_properties: &[u8],
        body: Bytes,
    ) -> Self {
        Self::from_wire(
            Envelope::new(exchange, routing_key),
            properties,
            raw_properties,
            body,
        )
    }

    /// A message whose property bytes and body may be slices of a connection's read buffer:
    /// small ones are copied out together into one allocation of their own, a large body
    /// stays where it is (copying it would cost more than it pins).
    pub fn from_wire(
        envelope: Arc<Envelope>,
        properties: &BasicProperties,
        raw_properties: &[u8],
        body: Bytes,
    ) -> Self {
        let ttl = properties
            .expiration()
            .as_ref()
            .and_then(|e| parse_expiration(e.as_str()).ok());
        let ttl_ms = match ttl {
            None => NO_TTL,
            Some(ms) => u32::try_from(ms)
                .ok()
                .filter(|&ms| ms < TTL_IN_PROPERTIES)
                .unwrap_or(TTL_IN_PROPERTIES),
        };
        let mut flags = 0;
        if *properties.delivery_mode() == Some(2) {
            flags |= PERSISTENT;
        }
        let priority = match *properties.priority() {
            Some(p) => {
                flags |= HAS_PRIORITY;
                p
            }
            None => 0,
        };
        let (data, envelope) = match u32::try_from(raw_properties.len()) {
            Ok(len) if body.len() < COPY_BELOW_BYTES => {
                // Exactly the capacity it needs, so freezing it makes no second allocation.
                let mut both = BytesMut::with_capacity(PREFIX + raw_properties.len() + body.len());
                both.extend_from_slice(&len.to_le_bytes());
                both.extend_from_slice(raw_properties);
                both.extend_from_slice(&body);
                (both.freeze(), envelope)
            }
            _ => {
                flags |= LARGE;
                let envelope = Arc::new(Envelope {
                    exchange: envelope.exchange.clone(),
                    routing_key: envelope.routing_key.clone(),
                    large_properties: Some(Bytes::copy_from_slice(raw_properties)),
                });
                (body, envelope)
            }
        };
        Message {
            data,
            envelope,
            ttl_ms,
            flags,
            priority,
        }
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &Name {
        &self.envelope.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &Name {
        &self.envelope.routing_key
    }

    /// Its envelope (exchange and routing key), to share with a message made from this one.
    pub fn envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }

    /// The length of the property bytes of a small message.
    fn properties_len(&self) -> usize {
        let mut len = [0; PREFIX];
        len.copy_from_slice(&self.data[..PREFIX]);
        u32::from_le_bytes(len) as usize
    }

    /// The encoded property flags and values, forwarded verbatim on delivery.
    pub fn raw_properties(&self) -> &[u8] {
        match &self.envelope.large_properties {
            Some(properties) if self.flags & LARGE != 0 => properties,
            _ => &self.data[PREFIX..PREFIX + self.properties_len()],
        }
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        if self.flags & LARGE != 0 {
            &self.data
        } else {
            &self.data[PREFIX + self.properties_len()..]
        }
    }

    /// The body as shared bytes (a reference, not a copy).
    pub fn body_bytes(&self) -> Bytes {
        if self.flags & LARGE != 0 {
            self.data.clone()
        } else {
            self.data.slice(PREFIX + self.properties_len()..)
        }
    }

    /// The properties, decoded from their bytes (bounded like a peer's: the nesting walk runs
    /// first). Bytes that do not decode give the default properties.
    pub fn properties(&self) -> BasicProperties {
        crate::protocol::decode_properties(self.raw_properties()).unwrap_or_default()
    }

    /// Whether the publisher asked for persistence (delivery-mode 2).
    pub fn persistent(&self) -> bool {
        self.flags & PERSISTENT != 0
    }

    /// The `priority` property.
    pub fn priority(&self) -> Option<u8> {
        (self.flags & HAS_PRIORITY != 0).then_some(self.priority)
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body().len()
    }

    /// The per-message TTL from the `expiration` property, in milliseconds. None when absent
    /// or invalid (the channel refuses invalid ones at publish, see [`parse_expiration`]).
    pub fn ttl_ms(&self) -> Option<u64> {
        match self.ttl_ms {
            NO_TTL => None,
            TTL_IN_PROPERTIES => self
                .properties()
                .expiration()
                .as_ref()
                .and_then(|e| parse_expiration(e.as_str()).ok()),
            ms => Some(u64::from(ms)),
        }
    }
}

/// Adds the routing keys of a CC or BCC header (an array of strings, or one string).
pub fn header_keys(value: Option<&AMQPValue>, keys: &mut Vec<Name>) {
    let mut push = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => keys.push(Name::from(String::from_utf8_lossy(s.as_bytes()))),
        AMQPValue::ShortString(s) => keys.push(Name::from(s.as_str())),
        _ => {}
    };
    match value {
        Some(AMQPValue::FieldArray(array)) => array.as_slice().iter().for_each(&mut push),
        Some(other) => push(other),
        None => {}
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
/// 32 bytes: one is kept per message a queue holds in memory.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue's publish order; requeued messages return to it.
    pub seq: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Where the queue's message store holds it (a [`crate::store::Position`] as u64), or 0
    /// when it is not stored (transient, or the queue is not durable).
    pub position: u64,
    /// Bit 63: delivered and came back. The rest: when the message expires in this queue
    /// (`x-message-ttl` or its `expiration`, whichever is sooner), fixed when it was enqueued
    /// and kept by a requeue, as [`Deadline`] encodes it; 0: never.
    marks: u64,
}

const REDELIVERED: u64 = 1 << 63;

impl QueuedMessage {
    /// `message` at `seq`, stored at `position` (0: not stored), never delivered, no expiry.
    pub fn new(seq: u64, message: Arc<Message>, position: u64) -> Self {
        Self {
            seq,
            message,
            position,
            marks: 0,
        }
    }

    /// Set once the message was delivered and came back.
    pub fn redelivered(&self) -> bool {
        self.marks & REDELIVERED != 0
    }

    /// Marks it (un)delivered.
    pub fn set_redelivered(&mut self, redelivered: bool) {
        self.marks = (self.marks & !REDELIVERED) | if redelivered { REDELIVERED } else { 0 };
    }

    /// When it expires in this queue; None: never.
    pub fn expires_at(&self) -> Option<Instant> {
        Deadline::decode(self.marks & !REDELIVERED)
    }

    /// Fixes when it expires.
    pub fn set_expires_at(&mut self, at: Option<Instant>) {
        self.marks = (self.marks & REDELIVERED) | at.map_or(0, Deadline::encode);
    }
}

/// An expiry instant in 63 bits: nanoseconds from a process-wide base, biased so that instants
/// before the base (a paused test clock can be) fit too; ±73 years, exact. 0 is "never".
struct Deadline;

impl Deadline {
    const BIAS: i64 = 1 << 61;

    fn base() -> std::time::Instant {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(std::time::Instant::now)
    }

    fn encode(at: Instant) -> u64 {
        let (at, base) = (at.into_std(), Self::base());
        let nanos = match at.checked_duration_since(base) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => -i64::try_from((base - at).as_nanos()).unwrap_or(i64::MAX),
        };
        (nanos.clamp(1 - Self::BIAS, Self::BIAS) + Self::BIAS) as u64
    }

    fn decode(marks: u64) -> Option<Instant> {
        if marks == 0 {
            return None;
        }
        let nanos = marks as i64 - Self::BIAS;
        let base = Self::base();
        let at = if nanos >= 0 {
            base.checked_add(Duration::from_nanos(nanos as u64))
        } else {
            base.checked_sub(Duration::from_nanos(nanos.unsigned_abs()))
        };
        Some(Instant::from_std(at.unwrap_or(base)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;
    use tokio::time::Instant;

    use super::{Envelope, Message, QueuedMessage, parse_expiration};

    #[test]
    fn a_small_message_owns_its_bytes_and_stays_small() {
        // A read chunk of 256 KiB with a 16-byte body and 2 property bytes inside it.
        let chunk = Bytes::from(vec![7u8; 256 << 10]);
        let properties = BasicProperties::default()
            .with_priority(3)
            .with_delivery_mode(2)
            .with_expiration("1500".into());
        let envelope = Envelope::new("ex".into(), "rk".into());
        let message = Message::from_wire(
            envelope.clone(),
            &properties,
            &chunk[1000..1002],
            chunk.slice(2000..2016),
        );
        let inside = |b: &[u8]| {
            let start = chunk.as_ptr() as usize;
            (start..start + chunk.len()).contains(&(b.as_ptr() as usize))
        };
        assert!(!inside(message.body()) && !inside(message.raw_properties()));
        assert_eq!(
            (message.body().len(), message.raw_properties().len()),
            (16, 2)
        );
        assert_eq!(
            (message.priority(), message.persistent(), message.ttl_ms()),
            (Some(3), true, Some(1500))
        );
        assert!(Arc::ptr_eq(message.envelope(), &envelope));
        assert_eq!(
            (&**message.exchange(), &**message.routing_key()),
            ("ex", "rk")
        );
        // The sizes docs/overload.md counts on: 48 + 16 bytes of `Arc<Message>`, 32 per queue.
        assert_eq!(std::mem::size_of::<Message>(), 48);
        assert_eq!(std::mem::size_of::<QueuedMessage>(), 32);
        // A large body stays where it is (copying it would cost more than it pins).
        let big = Message::from_wire(
            envelope,
            &BasicProperties::default(),
            &chunk[0..2],
            chunk.slice(2..),
        );
        assert!(inside(big.body()) && !inside(big.raw_properties()));
        assert_eq!(big.raw_properties(), &chunk[0..2]);
        assert_eq!(big.body_bytes().len(), chunk.len() - 2);
        assert_eq!(message.body_bytes(), message.body());
    }

    #[test]
    fn ttls_of_any_size_and_no_priority() {
        let long = BasicProperties::default().with_expiration("99999999999".into());
        let m = Message::new("".into(), "q".into(), &long, &[], Bytes::new());
        assert_eq!(
            (m.ttl_ms(), m.priority(), m.persistent()),
            (None, None, false),
            "properties that were not encoded decode as none"
        );
        let raw = crate::protocol::encode_properties(&long).unwrap();
        let m = Message::new("".into(), "q".into(), &long, &raw, Bytes::new());
        assert_eq!(m.ttl_ms(), Some(99_999_999_999));
        let zero = BasicProperties::default().with_priority(0);
        let m = Message::new("".into(), "q".into(), &zero, &[], Bytes::new());
        assert_eq!(m.priority(), Some(0));
    }

    #[test]
    fn queued_marks_keep_redelivered_and_expiry_apart() {
        let m = Arc::new(Message::new(
            "".into(),
            "q".into(),
            &BasicProperties::default(),
            &[],
            Bytes::from_static(b"x"),
        ));
        let mut q = QueuedMessage::new(7, m, 0);
        assert_eq!((q.redelivered(), q.expires_at()), (false, None));
        let now = Instant::now();
        let at = now + Duration::from_micros(12_300);
        q.set_expires_at(Some(at));
        q.set_redelivered(true);
        assert_eq!(q.expires_at(), Some(at));
        assert!(q.redelivered());
        q.set_expires_at(None);
        assert_eq!((q.redelivered(), q.expires_at()), (true, None));
        // Before the process-wide base (a paused clock can be) and far in the future.
        let before = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        q.set_expires_at(Some(before));
        assert_eq!(q.expires_at(), Some(before));
        q.set_redelivered(false);
        let far = now + Duration::from_secs(10 * 365 * 86_400);
        q.set_expires_at(Some(far));
        assert_eq!((q.expires_at(), q.redelivered()), (Some(far), false));
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
