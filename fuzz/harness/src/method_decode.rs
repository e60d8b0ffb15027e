//! `method_decode`: the hand-written method decoder against amq-protocol, on one method payload
//! (class and method ids first; the whole input).
//!
//! Checked:
//! - when `fast_method` (basic.publish, basic.ack) returns a method, amq-protocol's
//!   `parse_class` decodes the same payload, all of it, to the same method;
//! - the payload as a method frame through `parse_frame`: a decoded method is what
//!   `parse_class` gives (the fast path is only a shortcut) and nests at most
//!   `MAX_FIELD_DEPTH`; an error other than the nesting refusal means `parse_class` fails too;
//!   the nesting refusal (502) means amq-protocol, run on a large stack, either fails or
//!   decodes arguments really nested deeper than the limit.

use amq_protocol::protocol::parse_class;
use bourse::protocol::{Frame, MAX_FIELD_DEPTH, ReplyCode, fast_method, parse_frame};

use crate::frame_cutting::check_frame;
use crate::walk::{method_depth, on_big_stack, same};

/// The target's body.
pub fn run(payload: &[u8]) {
    if let Some(fast) = fast_method(payload) {
        match parse_class(payload) {
            Ok((rest, reference)) => {
                assert!(
                    rest.is_empty(),
                    "fast path took a payload with {} trailing bytes",
                    rest.len()
                );
                assert!(
                    same(&fast, &reference),
                    "fast {fast:?}\namq-protocol {reference:?}"
                );
            }
            Err(error) => panic!("fast path decoded {fast:?}, amq-protocol failed: {error:?}"),
        }
    }
    let mut frame = crate::walk::frame_on_channel_1(1, payload);
    match parse_frame(&mut frame, u32::MAX) {
        Ok(Some(decoded)) => {
            check_frame(&decoded);
            let Frame::Method(1, method) = &decoded else {
                panic!("a method frame decoded as {decoded:?}");
            };
            let reference = parse_class(payload).map(|(_, m)| m);
            assert!(
                reference.as_ref().is_ok_and(|r| same(r, method)),
                "parse_frame {method:?}\nparse_class {reference:?}"
            );
        }
        Ok(None) => panic!("a whole method frame was reported incomplete"),
        Err(error) if error.code == ReplyCode::SyntaxError && error.text.contains("nested") => {
            let owned = payload.to_vec();
            let depth = on_big_stack(move || {
                parse_class(owned.as_slice())
                    .ok()
                    .map(|(_, method)| method_depth(&method))
            });
            if let Some(depth) = depth {
                assert!(
                    depth > MAX_FIELD_DEPTH,
                    "refused arguments only {depth} deep"
                );
            }
        }
        Err(error) => {
            assert!(
                parse_class(payload).is_err(),
                "parse_frame refused ({error:?}) what parse_class decodes"
            );
        }
    }
}
