//! `frame_cutting`: `parse_frame` on a byte stream given whole and given in pieces.
//!
//! Input layout: byte 0 picks `frame_max` ([`FRAME_MAX`]), byte 1 the number of read sizes
//! (0 to 15), then that many bytes each giving a read size (1 to 256 bytes, used in turn until
//! the stream runs out), then the stream. Checked:
//! - both ways give the same frames, the same first error and the same bytes left over;
//! - `Ok(None)` (incomplete frame) leaves the buffer exactly as it was;
//! - a decoded frame consumed exactly its own bytes, and its tables nest at most
//!   `MAX_FIELD_DEPTH` levels.

use bourse::protocol::{AmqpError, Frame, MAX_FIELD_DEPTH, parse_frame};
use bytes::BytesMut;

use crate::walk::{method_depth, properties_depth, same};

/// The frame_max values a stream is cut under: the smallest frame possible (a heartbeat), the
/// pre-tune 4096 of the spec, bourse's default, and a larger one.
const FRAME_MAX: [u32; 4] = [8, 4096, 131_072, 1 << 20];

/// The target's body.
pub fn run(data: &[u8]) {
    let [frame_max, count, rest @ ..] = data else {
        return;
    };
    let frame_max = FRAME_MAX[usize::from(frame_max % 4)];
    let count = usize::from(count % 16);
    let Some((sizes, stream)) = rest.split_at_checked(count.min(rest.len())) else {
        return;
    };

    let mut whole = BytesMut::from(stream);
    let mut expected = Vec::new();
    drain(&mut whole, frame_max, &mut expected);

    let mut pieces = BytesMut::new();
    let mut got = Vec::new();
    let mut offset = 0;
    let mut turn = 0;
    while offset < stream.len() {
        let size = match sizes.get(turn % sizes.len().max(1)) {
            Some(&size) => usize::from(size) + 1,
            None => stream.len(),
        };
        turn += 1;
        let end = (offset + size).min(stream.len());
        pieces.extend_from_slice(&stream[offset..end]);
        offset = end;
        if drain(&mut pieces, frame_max, &mut got) {
            break;
        }
    }
    assert!(
        same(&expected, &got),
        "whole: {expected:?}\npieces: {got:?}"
    );
    if !matches!(expected.last(), Some(Err(_))) {
        assert_eq!(&whole[..], &pieces[..], "different bytes left over");
    }
}

/// Parses frames off the front of `buf` until it is incomplete (false) or an error (true).
fn drain(buf: &mut BytesMut, frame_max: u32, out: &mut Vec<Result<Frame, AmqpError>>) -> bool {
    loop {
        let before = buf.clone();
        match parse_frame(buf, frame_max) {
            Ok(Some(frame)) => {
                let size = u32::from_be_bytes([before[3], before[4], before[5], before[6]]);
                let taken = 7 + size as usize + 1;
                assert_eq!(&buf[..], &before[taken..], "frame consumed other bytes");
                check_frame(&frame);
                out.push(Ok(frame));
            }
            Ok(None) => {
                assert_eq!(&buf[..], &before[..], "an incomplete frame consumed bytes");
                return false;
            }
            Err(error) => {
                out.push(Err(error));
                return true;
            }
        }
    }
}

/// What holds for every frame decoded from a peer.
pub(crate) fn check_frame(frame: &Frame) {
    let depth = match frame {
        Frame::Method(_, method) => method_depth(method),
        Frame::Header(_, header) => properties_depth(&header.properties),
        Frame::Body(..) | Frame::Heartbeat(_) => 0,
    };
    assert!(
        depth <= MAX_FIELD_DEPTH,
        "decoded tables nested {depth} deep"
    );
}
