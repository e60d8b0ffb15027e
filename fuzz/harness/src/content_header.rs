//! `content_header`: one content-header payload (class, weight, body size, property flags and
//! values; the whole input) through the fast path, the slow path and `parse_frame`.
//!
//! Checked:
//! - when `fast_content_header` decodes it, amq-protocol's `parse_content_header` decodes all
//!   of it to the same class, body size and properties;
//! - as a header frame through `parse_frame`: the decoded properties are what
//!   `decode_properties` gives for the raw property bytes (so the fast path, when taken, agrees
//!   with the slow one), `raw_properties` are those bytes verbatim, the headers nest at most
//!   `MAX_FIELD_DEPTH`; a nesting refusal means amq-protocol, on a large stack, either fails
//!   or decodes headers really deeper than the limit; any other error means amq-protocol
//!   fails too.

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::basic::parse_properties;
use bourse::protocol::{
    Frame, MAX_FIELD_DEPTH, ReplyCode, decode_properties, fast_content_header, parse_frame,
};

use crate::frame_cutting::check_frame;
use crate::walk::{on_big_stack, properties_depth, same};

/// The target's body.
pub fn run(payload: &[u8]) {
    if let Some((class_id, body_size, properties)) = fast_content_header(payload) {
        match parse_content_header(payload) {
            Ok((rest, reference)) => {
                assert!(
                    rest.is_empty(),
                    "fast path took {} trailing bytes",
                    rest.len()
                );
                assert_eq!(
                    (class_id, body_size),
                    (reference.class_id, reference.body_size)
                );
                assert!(
                    same(&properties, &reference.properties),
                    "fast {properties:?}\namq-protocol {:?}",
                    reference.properties
                );
            }
            Err(error) => {
                panic!("fast path decoded {properties:?}, amq-protocol failed: {error:?}")
            }
        }
    }
    let mut frame = crate::walk::frame_on_channel_1(2, payload);
    match parse_frame(&mut frame, u32::MAX) {
        Ok(Some(decoded)) => {
            check_frame(&decoded);
            let Frame::Header(1, header) = &decoded else {
                panic!("a header frame decoded as {decoded:?}");
            };
            let raw = &payload[12..];
            assert_eq!(&header.raw_properties[..], raw);
            assert_eq!(
                u16::from_be_bytes([payload[0], payload[1]]),
                header.class_id
            );
            let size: [u8; 8] = payload[4..12].try_into().expect("8 bytes");
            assert_eq!(u64::from_be_bytes(size), header.body_size);
            let slow = decode_properties(raw).expect("the slow path decodes what parse_frame did");
            assert!(
                same(&slow, &header.properties),
                "parse_frame {:?}\nslow path {slow:?}",
                header.properties
            );
        }
        Ok(None) => panic!("a whole header frame was reported incomplete"),
        Err(error) if error.code == ReplyCode::SyntaxError => {
            let raw = payload
                .get(12..)
                .expect("refused after the fixed fields")
                .to_vec();
            let depth = on_big_stack(move || {
                parse_properties(raw.as_slice())
                    .ok()
                    .map(|(_, properties)| properties_depth(&properties))
            });
            if let Some(depth) = depth {
                assert!(depth > MAX_FIELD_DEPTH, "refused headers only {depth} deep");
            }
        }
        Err(error) => {
            let reference = payload.get(12..).map(parse_properties);
            assert!(
                !matches!(reference, Some(Ok(_))),
                "parse_frame refused ({error:?}) what amq-protocol decodes"
            );
        }
    }
}
