//! Frame encoding into a connection's outgoing buffer.
//!
//! Methods go through amq-protocol's generators. Content is framed here because its property
//! bytes are forwarded exactly as the publisher sent them, and a body is cut into frames of
//! the negotiated size straight from the shared `Bytes`.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::protocol::{AMQPClass, BasicProperties};
use bytes::Bytes;

use super::{AmqpError, BASIC_CLASS};

/// Bytes a frame adds around its payload: type, channel, size, end octet.
pub const FRAME_OVERHEAD: usize = 8;

/// Appends one method frame.
pub fn write_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let buf = std::mem::take(out);
    let fallback_len = buf.len();
    match gen_frame(&frame)(WriteContext::from(buf)) {
        Ok(ctx) => *out = ctx.into_inner().0,
        Err(error) => {
            // Writing into a Vec cannot run out of space; a failure means a value too long
            // for its field, which the callers prevent. Keep the buffer as it was.
            tracing::error!(%error, "failed to encode a method frame");
            out.truncate(fallback_len);
        }
    }
}

/// The fields of a basic.deliver (60, 60).
#[derive(Debug, Clone, Copy)]
pub struct Deliver<'a> {
    /// The consumer's tag.
    pub consumer_tag: &'a str,
    /// The channel's delivery tag.
    pub delivery_tag: u64,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: &'a str,
    /// Its routing key.
    pub routing_key: &'a str,
}

/// Appends a basic.deliver method frame. Framed here rather than through amq-protocol's
/// generator, which needs owned strings: the one method sent per delivery then costs no
/// allocation. Every name is an AMQP short string (at most 255 bytes: the broker only holds
/// names that arrived as short strings); a longer one is cut, never written malformed.
pub fn write_deliver(out: &mut Vec<u8>, channel: u16, deliver: Deliver<'_>) {
    fn short(s: &str) -> &[u8] {
        &s.as_bytes()[..s.len().min(255)]
    }
    let (tag, exchange, key) = (
        short(deliver.consumer_tag),
        short(deliver.exchange),
        short(deliver.routing_key),
    );
    // class, method, 3 length octets, delivery tag, redelivered bit.
    let size = 4 + 3 + 8 + 1 + tag.len() + exchange.len() + key.len();
    out.reserve(FRAME_OVERHEAD + size);
    out.push(1);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend_from_slice(&BASIC_CLASS.to_be_bytes());
    out.extend_from_slice(&60u16.to_be_bytes());
    out.push(tag.len() as u8);
    out.extend_from_slice(tag);
    out.extend_from_slice(&deliver.delivery_tag.to_be_bytes());
    out.push(u8::from(deliver.redelivered));
    out.push(exchange.len() as u8);
    out.extend_from_slice(exchange);
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    out.push(0xCE);
}

/// Appends a heartbeat frame.
pub fn write_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);
}

/// Appends a content header frame (with `raw_properties` verbatim) and the body frames.
pub fn write_content(
    out: &mut Vec<u8>,
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: usize,
) {
    let channel = channel.to_be_bytes();
    let header_len = (12 + raw_properties.len()) as u32;
    out.reserve(FRAME_OVERHEAD * 2 + header_len as usize + body.len());
    out.push(2);
    out.extend_from_slice(&channel);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&BASIC_CLASS.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(raw_properties);
    out.push(0xCE);
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(chunk) {
        out.push(3);
        out.extend_from_slice(&channel);
        out.extend_from_slice(&(piece.len() as u32).to_be_bytes());
        out.extend_from_slice(piece);
        out.push(0xCE);
    }
}

/// Encodes properties with amq-protocol's generator (used when the broker changes them).
pub fn encode_properties(properties: &BasicProperties) -> Result<Bytes, AmqpError> {
    gen_properties(properties)(WriteContext::from(Vec::new()))
        .map(|ctx| Bytes::from(ctx.into_inner().0))
        .map_err(|e| AmqpError::internal(format!("cannot encode properties: {e}")))
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, basic};

    use super::{Deliver, write_deliver, write_method};

    #[test]
    fn deliver_frames_like_amq_protocol_and_parses_back() {
        for (tag, redelivered, exchange, key) in [
            ("amq.ctag-abc", false, "amq.direct", "orders.eu"),
            ("c", true, "", ""),
            ("ü-tag", true, "x", "k\u{e9}y"),
        ] {
            let mut ours = Vec::new();
            write_deliver(
                &mut ours,
                7,
                Deliver {
                    consumer_tag: tag,
                    delivery_tag: u64::MAX - 3,
                    redelivered,
                    exchange,
                    routing_key: key,
                },
            );
            let method = basic::Deliver {
                consumer_tag: tag.into(),
                delivery_tag: u64::MAX - 3,
                redelivered,
                exchange: exchange.into(),
                routing_key: key.into(),
            };
            let mut theirs = Vec::new();
            write_method(
                &mut theirs,
                7,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(method.clone())),
            );
            assert_eq!(ours, theirs);
            let (rest, frame) = parse_frame(ours.as_slice()).expect("parses");
            assert!(rest.is_empty());
            assert_eq!(
                frame,
                AMQPFrame::Method(7, AMQPClass::Basic(basic::AMQPMethod::Deliver(method)))
            );
        }
    }
}
