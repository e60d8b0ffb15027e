//! Helpers the targets share: a naive recursive nesting walk (the independent model the
//! non-recursive `check_table` is checked against), the nesting depth of decoded values, and
//! amq-protocol's parsers run on a thread with a large stack for inputs the broker refused.

use std::fmt::Debug;

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, connection, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable};

/// Whether the field table (length-prefixed) at the start of `input` nests deeper than
/// `limit` levels, following amq-protocol's grammar structurally up to that point: `false` if
/// it is malformed before reaching that depth. Recursive, but never deeper than `limit + 1`.
pub(crate) fn nests_deeper_than(input: &[u8], limit: usize) -> bool {
    matches!(value(b'F', input, 0, limit), Err(Stop::Deep))
}

/// Why the naive walk stopped early.
enum Stop {
    Deep,
    Malformed,
}

/// One value of type `tag` at the start of `input`, `depth` containers deep; the bytes it
/// takes.
fn value(tag: u8, input: &[u8], depth: usize, limit: usize) -> Result<usize, Stop> {
    let fixed = match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' | b'F' | b'A' => {
            let len: [u8; 4] = input
                .get(..4)
                .ok_or(Stop::Malformed)?
                .try_into()
                .map_err(|_| Stop::Malformed)?;
            let len = u32::from_be_bytes(len) as usize;
            let body = input.get(4..4 + len).ok_or(Stop::Malformed)?;
            if tag == b'F' || tag == b'A' {
                if depth == limit {
                    return Err(Stop::Deep);
                }
                entries(tag == b'F', body, depth + 1, limit)?;
            }
            return Ok(4 + len);
        }
        _ => return Err(Stop::Malformed),
    };
    if input.len() < fixed {
        return Err(Stop::Malformed);
    }
    Ok(fixed)
}

/// The entries of a table (short-string key, tag, value) or an array (tag, value).
fn entries(table: bool, mut body: &[u8], depth: usize, limit: usize) -> Result<(), Stop> {
    while !body.is_empty() {
        if table {
            let key_len = usize::from(body[0]);
            body = body.get(1 + key_len..).ok_or(Stop::Malformed)?;
        }
        let (&tag, rest) = body.split_first().ok_or(Stop::Malformed)?;
        let taken = value(tag, rest, depth, limit)?;
        body = &rest[taken..];
    }
    Ok(())
}

/// Whether raw basic properties (flags first) carry a headers table nesting deeper than
/// `limit`, skipping content-type and content-encoding as the property list orders them.
pub(crate) fn properties_nest_deeper_than(raw: &[u8], limit: usize) -> bool {
    let [high, low, ..] = *raw else {
        return false;
    };
    let flags = u16::from_be_bytes([high, low]);
    if flags & (1 << 13) == 0 {
        return false;
    }
    let mut rest = &raw[2..];
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            let Some((&len, tail)) = rest.split_first() else {
                return false;
            };
            let Some(tail) = tail.get(usize::from(len)..) else {
                return false;
            };
            rest = tail;
        }
    }
    nests_deeper_than(rest, limit)
}

/// Nesting depth of a decoded table (a table of scalars is 1), walked with an explicit stack
/// so a value that slipped past the broker's limit is measured rather than overflowing here.
pub(crate) fn table_depth(table: &FieldTable) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&AMQPValue, usize)> = table.inner().values().map(|v| (v, 1)).collect();
    deepest = deepest.max(1);
    while let Some((value, depth)) = stack.pop() {
        match value {
            AMQPValue::FieldTable(inner) => {
                deepest = deepest.max(depth + 1);
                stack.extend(inner.inner().values().map(|v| (v, depth + 1)));
            }
            AMQPValue::FieldArray(inner) => {
                deepest = deepest.max(depth + 1);
                stack.extend(inner.as_slice().iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// The deepest table among a method's arguments (0 when it has none).
pub(crate) fn method_depth(method: &AMQPClass) -> usize {
    let table = match method {
        AMQPClass::Connection(connection::AMQPMethod::Start(m)) => &m.server_properties,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => &m.client_properties,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => &m.arguments,
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => &m.arguments,
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => &m.arguments,
        AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => &m.arguments,
        AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => &m.arguments,
        AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => &m.arguments,
        AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => &m.arguments,
        _ => return 0,
    };
    table_depth(table)
}

/// The depth of the headers table in properties (0 without headers).
pub(crate) fn properties_depth(properties: &BasicProperties) -> usize {
    properties.headers().as_ref().map_or(0, table_depth)
}

/// Equality through `Debug`: decoded values hold floats, and a NaN never equals itself.
pub(crate) fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Runs `f` on a thread with a 512 MiB stack: amq-protocol's parsers recurse once per level,
/// and the targets call them on inputs the broker refused as too deep to check that refusal.
pub(crate) fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(f)
        .expect("spawn parser thread")
        .join()
        .expect("parser thread")
}

/// A whole frame of `kind` on channel 1 around `payload`, for feeding `parse_frame`.
pub(crate) fn frame_on_channel_1(kind: u8, payload: &[u8]) -> bytes::BytesMut {
    let mut frame = bytes::BytesMut::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&[kind, 0, 1]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[0xCE]);
    frame
}
