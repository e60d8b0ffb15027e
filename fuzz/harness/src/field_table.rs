//! `field_table`: the nesting walk that guards amq-protocol's recursive table parser.
//!
//! The first byte chooses what the rest is: even, a length-prefixed field table for
//! `check_table` / `decode_table`; odd, raw basic properties (flags first) for
//! `check_properties` / `decode_properties`. Checked:
//! - the walk refuses (`TooDeep`) exactly when a naive recursive walk ([`crate::walk`]) finds the
//!   input well formed down to a container deeper than `MAX_FIELD_DEPTH`;
//! - when the walk lets the input through, amq-protocol's parser runs on it (here, on the
//!   fuzzer's stack: an overflow is a crash) and whatever it decodes nests at most
//!   `MAX_FIELD_DEPTH` levels;
//! - `decode_table` / `decode_properties` return what amq-protocol returns, or an error exactly
//!   when it fails.

use amq_protocol::protocol::basic::parse_properties;
use amq_protocol::types::parsing::parse_field_table;
use bourse::protocol::{
    MAX_FIELD_DEPTH, ReplyCode, TooDeep, check_properties, check_table, decode_properties,
    decode_table,
};

use crate::walk::{
    nests_deeper_than, properties_depth, properties_nest_deeper_than, same, table_depth,
};

/// The target's body.
pub fn run(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        table(input);
    } else {
        properties(input);
    }
}

fn table(input: &[u8]) {
    let walk = check_table(input);
    let deep = nests_deeper_than(input, MAX_FIELD_DEPTH);
    assert_eq!(
        walk == Err(TooDeep),
        deep,
        "check_table says {walk:?}, the naive walk says deeper than {MAX_FIELD_DEPTH}: {deep}"
    );
    let decoded = decode_table(input, "fuzz");
    if walk.is_err() {
        let error = decoded.expect_err("refused by the walk");
        assert_eq!(error.code, ReplyCode::SyntaxError);
        return;
    }
    let reference = parse_field_table(input);
    match (&decoded, &reference) {
        (Ok(ours), Ok((_, theirs))) => {
            assert!(same(ours, theirs), "decode_table differs from amq-protocol");
            let depth = table_depth(theirs);
            assert!(depth <= MAX_FIELD_DEPTH, "decoded a table {depth} deep");
        }
        (Err(error), Err(_)) => assert_eq!(error.code, ReplyCode::FrameError),
        _ => panic!("decode_table {decoded:?} but amq-protocol {reference:?}"),
    }
}

fn properties(raw: &[u8]) {
    let walk = check_properties(raw);
    let deep = properties_nest_deeper_than(raw, MAX_FIELD_DEPTH);
    assert_eq!(
        walk == Err(TooDeep),
        deep,
        "check_properties says {walk:?}, the naive walk says deeper than {MAX_FIELD_DEPTH}: {deep}"
    );
    let decoded = decode_properties(raw);
    if walk.is_err() {
        let error = decoded.expect_err("refused by the walk");
        assert_eq!(error.code, ReplyCode::SyntaxError);
        return;
    }
    let reference = parse_properties(raw);
    match (&decoded, &reference) {
        (Ok(ours), Ok((_, theirs))) => {
            assert!(
                same(ours, theirs),
                "decode_properties differs from amq-protocol"
            );
            let depth = properties_depth(theirs);
            assert!(depth <= MAX_FIELD_DEPTH, "decoded headers {depth} deep");
        }
        (Err(error), Err(_)) => assert_eq!(error.code, ReplyCode::FrameError),
        _ => panic!("decode_properties {decoded:?} but amq-protocol {reference:?}"),
    }
}
