//! Frame encoding into a connection's outgoing buffer.
//!
//! Methods go through amq-protocol's generators. Content is framed here because its property
//! bytes are forwarded exactly as the publisher sent them, and a body is cut into frames of
//! the negotiated size straight from the shared `Bytes`.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::AMQPClass;

use super::BASIC_CLASS;

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
