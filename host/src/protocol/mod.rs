//! The AMQP 0-9-1 wire layer: bytes in, typed frames or [`AmqpError`] out, and frames back to
//! bytes. Pure: no I/O, no locks, no tasks.
//!
//! Method and content-header codecs are amq-protocol's generated parsers and generators. This
//! module adds the parts a broker needs around them: checking that a whole frame is buffered
//! before decoding it (an incomplete frame is not an error), frame-size limits, zero-copy body
//! frames, and the raw property bytes kept next to the parsed ones so a message's properties
//! are forwarded byte for byte.

mod error;
mod fast;
mod frame;
mod table;
mod write;

pub use error::{AmqpError, ReplyCode};
pub use frame::{ContentHeader, Frame, PROTOCOL_HEADER, parse_frame};
#[doc(hidden)]
pub use table::nested_table_for_tests;
pub use table::{
    MAX_FIELD_DEPTH, TooDeep, check_properties, check_table, decode_properties, decode_table,
};
pub use write::{
    Deliver, FRAME_OVERHEAD, encode_properties, write_content, write_deliver, write_heartbeat,
    write_method,
};

/// The content class of `basic` (the only class with content in 0-9-1).
pub const BASIC_CLASS: u16 = 60;

/// The hand-written basic.publish / basic.ack decoder, exposed only for the differential fuzz
/// target (`fuzz/`) that checks it against amq-protocol. Not an API.
#[doc(hidden)]
pub fn fast_method(payload: &[u8]) -> Option<amq_protocol::protocol::AMQPClass> {
    fast::method(payload)
}

/// The hand-written plain content-header decoder, exposed only for the fuzz targets. Not an API.
#[doc(hidden)]
pub fn fast_content_header(
    payload: &[u8],
) -> Option<(u16, u64, amq_protocol::protocol::BasicProperties)> {
    fast::content_header(payload)
}
