//! Frame decoding: check that a whole frame is buffered, then parse it.

use amq_protocol::protocol::{AMQPClass, BasicProperties, parse_class};
use bytes::{Buf, Bytes, BytesMut};

use super::{AmqpError, fast, table};

/// The only protocol header this broker speaks: `AMQP 0-9-1`.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Frame type (1) + channel (2) + payload size (4).
const FRAME_HEADER_LEN: usize = 7;

/// A decoded frame.
///
/// `Header` is boxed: decoded properties are about 300 bytes, and a frame is moved several
/// times on its way to the message (profiles showed those copies cost more than the box).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method on a channel (0 is the connection).
    Method(u16, AMQPClass),
    /// A content header announcing a body.
    Header(u16, Box<ContentHeader>),
    /// A piece of content body, sharing the read buffer (no copy).
    Body(u16, Bytes),
    /// A heartbeat; the spec requires channel 0.
    Heartbeat(u16),
}

/// A content header: parsed properties for routing plus their exact bytes for forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// The content class (60 for basic).
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The properties, decoded.
    pub properties: BasicProperties,
    /// The property flags and values exactly as the client encoded them.
    pub raw_properties: Bytes,
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when the frame is not complete yet (more bytes must be read); the buffer
/// is left untouched then. `frame_max` bounds the whole frame, header and end octet included.
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::frame_error(format!("unknown frame type {kind}")));
    }
    let total = FRAME_HEADER_LEN + size + 1;
    if total > frame_max as usize {
        return Err(AmqpError::frame_error(format!(
            "frame size {total} larger than negotiated maximum {frame_max}"
        )));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(AmqpError::frame_error(format!(
            "frame end octet is {:#04x}, expected 0xce",
            buf[total - 1]
        )));
    }
    if kind == FRAME_METHOD {
        // Methods are decoded in place: nothing of the frame outlives this call.
        let payload = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + size];
        if let Err(unsupported) = check_unsupported(payload) {
            buf.advance(total);
            return Err(unsupported);
        }
        let decoded = match fast::method(payload) {
            Some(method) => Ok(Some(Frame::Method(channel, method))),
            // amq-protocol's table parser recurses: check the nesting first.
            None => match table::check_method(payload).map(|()| parse_class(payload)) {
                Ok(Ok((_, method))) => Ok(Some(Frame::Method(channel, method))),
                Ok(Err(_)) => Err(method_decode_error(payload)),
                Err(too_deep) => Err(too_deep),
            },
        };
        buf.advance(total);
        return decoded;
    }
    let mut frame = buf.split_to(total);
    frame.advance(FRAME_HEADER_LEN);
    frame.truncate(size);
    let payload = frame.freeze();
    match kind {
        FRAME_HEADER => {
            let (class_id, body_size, properties) = match fast::content_header(&payload) {
                Some(decoded) => decoded,
                None => content_header(&payload)?,
            };
            Ok(Some(Frame::Header(
                channel,
                Box::new(ContentHeader {
                    class_id,
                    body_size,
                    properties,
                    // class (2) + weight (2) + body size (8) precede the properties.
                    raw_properties: payload.slice(12..),
                }),
            )))
        }
        FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        _ => Ok(Some(Frame::Heartbeat(channel))),
    }
}

/// Refuses what the decoded method could not show: amq-protocol's `basic.qos` has no
/// prefetch-size (RabbitMQ ignores byte-based prefetch), so a client asking for one would be
/// silently given none. RabbitMQ answers 540 NOT_IMPLEMENTED "prefetch_size!=0 (N)".
fn check_unsupported(payload: &[u8]) -> Result<(), AmqpError> {
    // class 60 (basic), method 10 (qos), then prefetch-size (long), prefetch-count, global.
    if let Some([0, 60, 0, 10, a, b, c, d]) = payload.get(..8)
        && let size @ 1.. = u32::from_be_bytes([*a, *b, *c, *d])
    {
        return Err(
            AmqpError::not_implemented(format!("prefetch_size!=0 ({size})")).on_method(60, 10),
        );
    }
    Ok(())
}

/// A content header payload through amq-protocol's property parser, headers checked first.
fn content_header(payload: &[u8]) -> Result<(u16, u64, BasicProperties), AmqpError> {
    // class (2), weight (2), body size (8), then the property flags and values.
    let (Some(class), Some(size), Some(raw)) =
        (payload.get(..2), payload.get(4..12), payload.get(12..))
    else {
        return Err(AmqpError::frame_error("malformed content header frame"));
    };
    let class_id = u16::from_be_bytes([class[0], class[1]]);
    let body_size = u64::from_be_bytes(size.try_into().expect("8 bytes"));
    let properties = table::decode_properties(raw)?;
    Ok((class_id, body_size, properties))
}

/// A method frame that failed to decode: an unknown class is a command the broker does not
/// know (503 COMMAND_INVALID); arguments that do not decode are 501 FRAME_ERROR.
fn method_decode_error(payload: &[u8]) -> AmqpError {
    if payload.len() < 4 {
        return AmqpError::syntax_error("method frame too short");
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    let known_class = matches!(class_id, 10 | 20 | 30 | 40 | 50 | 60 | 85 | 90);
    if !known_class {
        return AmqpError::command_invalid(format!("unknown class {class_id}"))
            .on_method(class_id, method_id);
    }
    // RabbitMQ's decoder reports undecodable arguments as a frame error (501).
    AmqpError::frame_error(format!(
        "cannot decode arguments of method {class_id}.{method_id}"
    ))
    .on_method(class_id, method_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ReplyCode, write_method};
    use amq_protocol::protocol::queue;

    fn encoded(method: AMQPClass) -> BytesMut {
        let mut out = Vec::new();
        write_method(&mut out, 3, method);
        BytesMut::from(&out[..])
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let whole = encoded(AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: "q".into(),
            nowait: false,
        })));
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(
                parse_frame(&mut part, 131072).unwrap(),
                None,
                "cut at {cut}"
            );
            assert_eq!(part.len(), cut);
        }
        let mut all = whole.clone();
        let frame = parse_frame(&mut all, 131072).unwrap().unwrap();
        assert!(matches!(frame, Frame::Method(3, AMQPClass::Queue(_))));
        assert!(all.is_empty());
    }

    #[test]
    fn bad_frame_end_is_a_frame_error() {
        let mut bytes = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(
            parse_frame(&mut bytes, 4096).unwrap_err().code,
            ReplyCode::FrameError
        );
    }

    #[test]
    fn oversized_frames_are_rejected_before_buffering() {
        let mut bytes = BytesMut::from(&[3u8, 0, 1, 0, 1, 0, 0][..]);
        assert_eq!(
            parse_frame(&mut bytes, 4096).unwrap_err().code,
            ReplyCode::FrameError
        );
    }

    #[test]
    fn garbage_method_arguments_are_a_frame_error() {
        // queue.declare (50.10) whose short string claims 200 bytes but has 2.
        let payload = [0u8, 50, 0, 10, 0, 0, 200, b'a', b'b'];
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&[1, 0, 1]);
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&[0xCE]);
        assert_eq!(
            parse_frame(&mut bytes, 4096).unwrap_err().code,
            ReplyCode::FrameError
        );
    }

    #[test]
    fn body_frames_share_the_buffer() {
        let mut bytes = BytesMut::from(&[3u8, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c', 0xCE][..]);
        let frame = parse_frame(&mut bytes, 4096).unwrap().unwrap();
        assert_eq!(frame, Frame::Body(1, Bytes::from_static(b"abc")));
    }
}
