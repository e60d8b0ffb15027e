//! Field tables and arrays from a peer, decoded with a bound on their nesting.
//!
//! amq-protocol's field-table parser recurses once per nested table or array, with no limit:
//! a 125 KB `connection.start-ok` whose client-properties nest an array 25,000 deep overflows a
//! tokio worker's stack and aborts the process before the peer has logged in. So every table
//! a peer sends is walked here first, without recursion, and refused if it nests deeper than
//! [`MAX_FIELD_DEPTH`]; only then does amq-protocol parse it.
//!
//! The walk mirrors amq-protocol's grammar exactly (the same type tags, the same sizes, the
//! same length-prefixed sub-slices), so the depth it finds is the depth amq-protocol would
//! reach. It refuses only input that is well formed up to the point where it nests too deep;
//! anything malformed before that is left for amq-protocol to reject, which it does no deeper
//! than the walk went. The fuzz target `field_table` checks both claims.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::protocol::basic::parse_properties;
use amq_protocol::types::FieldTable;

use super::AmqpError;

/// The deepest nesting of tables and arrays accepted from a peer; a top-level table is depth 1.
/// RabbitMQ's own headers (`x-death`: a table holding an array of tables holding arrays) need
/// four levels.
pub const MAX_FIELD_DEPTH: usize = 64;

/// The input nests tables or arrays deeper than [`MAX_FIELD_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

impl TooDeep {
    fn into_error(self, what: &str) -> AmqpError {
        AmqpError::syntax_error(format!(
            "{what}: field tables and arrays nested deeper than {MAX_FIELD_DEPTH} levels"
        ))
    }
}

/// Checks the nesting of the field table (length-prefixed) at the start of `input`.
///
/// `Ok` means amq-protocol may parse it: either it nests at most [`MAX_FIELD_DEPTH`] levels,
/// or it is malformed at a depth within the limit.
pub fn check_table(input: &[u8]) -> Result<(), TooDeep> {
    check_value(b'F', input, MAX_FIELD_DEPTH)
}

/// Walks one value of type `tag` at the start of `input`, allowing `limit` levels of
/// nesting. Containers are tracked on an explicit stack of (end offset, is a table).
fn check_value(tag: u8, input: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let mut pos = 0;
    // The value being entered: a tag whose bytes start at `pos`.
    let mut pending = Some(tag);
    loop {
        if let Some(tag) = pending.take() {
            let end = stack.last().map_or(input.len(), |&(end, _)| end);
            let Some(size) = fixed_size(tag) else {
                // A container or a length-prefixed string.
                let Some(len) = read_u32(input, pos, end) else {
                    return Ok(());
                };
                let start = pos + 4;
                let Some(stop) = start.checked_add(len).filter(|&stop| stop <= end) else {
                    return Ok(());
                };
                match tag {
                    b'F' | b'A' => {
                        if stack.len() == limit {
                            return Err(TooDeep);
                        }
                        stack.push((stop, tag == b'F'));
                        pos = start;
                    }
                    b'S' | b'x' => pos = stop,
                    // An unknown tag: amq-protocol refuses it here.
                    _ => return Ok(()),
                }
                continue;
            };
            if pos + size > end {
                return Ok(());
            }
            pos += size;
        }
        // Inside the innermost container: its end, or its next entry.
        let Some(&(end, is_table)) = stack.last() else {
            return Ok(());
        };
        if pos == end {
            stack.pop();
            if stack.is_empty() {
                return Ok(());
            }
            continue;
        }
        if is_table {
            // A short-string key, then the value.
            let key_len = usize::from(input[pos]);
            pos += 1 + key_len;
            if pos >= end {
                // No room for the value's tag: malformed.
                return Ok(());
            }
        }
        pending = Some(input[pos]);
        pos += 1;
    }
}

/// The encoded size of a value of fixed width (`None` for length-prefixed and unknown tags),
/// as amq-protocol's `AMQPType::from_id` reads them.
fn fixed_size(tag: u8) -> Option<usize> {
    match tag {
        b'V' => Some(0),
        b't' | b'b' | b'B' => Some(1),
        b's' | b'U' | b'u' => Some(2),
        b'I' | b'i' | b'f' => Some(4),
        b'D' => Some(5),
        b'L' | b'l' | b'd' | b'T' => Some(8),
        _ => None,
    }
}

fn read_u32(input: &[u8], pos: usize, end: usize) -> Option<usize> {
    let bytes = input.get(pos..pos.checked_add(4)?.min(end))?;
    let bytes: [u8; 4] = bytes.try_into().ok()?;
    Some(u32::from_be_bytes(bytes) as usize)
}

/// Decodes a field table from a peer (length-prefixed), refusing deep nesting with 502.
pub fn decode_table(input: &[u8], what: &str) -> Result<FieldTable, AmqpError> {
    check_table(input).map_err(|e| e.into_error(what))?;
    amq_protocol::types::parsing::parse_field_table(input)
        .map(|(_, table)| table)
        .map_err(|_| AmqpError::frame_error(format!("{what}: malformed field table")))
}

/// Checks the tables inside a method payload (class and method ids included) before
/// amq-protocol parses it. Only the methods below carry a field table; it is the last
/// argument but start-ok's, and the arguments before it are skipped as the spec lays them out.
pub fn check_method(payload: &[u8]) -> Result<(), AmqpError> {
    let Some(ids) = payload.get(..4) else {
        return Ok(());
    };
    let class = u16::from_be_bytes([ids[0], ids[1]]);
    let method = u16::from_be_bytes([ids[2], ids[3]]);
    use Arg::{Flags, Octets, Short};
    // The arguments before the table: a reserved short, short strings, a flags octet.
    let prefix: &[Arg] = match (class, method) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octets(2)],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: ticket, exchange, type, flags, arguments.
        (40, 10) => &[Octets(2), Short, Short, Flags],
        // exchange.bind / unbind: ticket, destination, source, routing-key, nowait, arguments.
        (40, 30) | (40, 40) => &[Octets(2), Short, Short, Short, Flags],
        // queue.declare: ticket, queue, flags, arguments.
        (50, 10) => &[Octets(2), Short, Flags],
        // queue.bind: ticket, queue, exchange, routing-key, nowait, arguments.
        (50, 20) => &[Octets(2), Short, Short, Short, Flags],
        // queue.unbind: ticket, queue, exchange, routing-key, arguments (no nowait).
        (50, 50) => &[Octets(2), Short, Short, Short],
        // basic.consume: ticket, queue, consumer-tag, flags, arguments.
        (60, 20) => &[Octets(2), Short, Short, Flags],
        _ => return Ok(()),
    };
    let mut pos = 4;
    for arg in prefix {
        let size = match arg {
            Octets(n) => *n,
            Flags => 1,
            Short => match payload.get(pos) {
                Some(&len) => 1 + usize::from(len),
                None => return Ok(()),
            },
        };
        pos += size;
    }
    match payload.get(pos..) {
        Some(table) => check_table(table).map_err(|e| {
            e.into_error(&format!("arguments of method {class}.{method}"))
                .on_method(class, method)
        }),
        None => Ok(()),
    }
}

/// An argument before a method's field table.
enum Arg {
    Octets(usize),
    Short,
    Flags,
}

/// Property flag of `headers`, the third property.
const HEADERS_FLAG: u16 = 1 << 13;
const CONTENT_TYPE_FLAG: u16 = 1 << 15;
const CONTENT_ENCODING_FLAG: u16 = 1 << 14;

/// Checks the headers table inside raw basic properties (flags first).
pub fn check_properties(raw: &[u8]) -> Result<(), TooDeep> {
    let Some(flags) = raw.get(..2) else {
        return Ok(());
    };
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    if flags & HEADERS_FLAG == 0 {
        return Ok(());
    }
    let mut pos = 2;
    for flag in [CONTENT_TYPE_FLAG, CONTENT_ENCODING_FLAG] {
        if flags & flag != 0 {
            match raw.get(pos) {
                Some(&len) => pos += 1 + usize::from(len),
                None => return Ok(()),
            }
        }
    }
    raw.get(pos..).map_or(Ok(()), check_table)
}

/// Decodes raw basic properties (flags first), refusing deep nesting with 502.
pub fn decode_properties(raw: &[u8]) -> Result<BasicProperties, AmqpError> {
    check_properties(raw).map_err(|e| e.into_error("content header properties"))?;
    parse_properties(raw)
        .map(|(_, properties)| properties)
        .map_err(|_| AmqpError::frame_error("malformed content header properties"))
}

/// A length-prefixed field table whose one entry nests containers (arrays and tables in turn)
/// so that the whole table nests `depth` levels (the table is level 1), built by hand because
/// amq-protocol's encoder recurses as its parser does. Test data for this module's tests, the
/// integration tests and the fuzz seeds; the broker never calls it.
#[doc(hidden)]
pub fn nested_table_for_tests(depth: usize) -> Vec<u8> {
    let mut value = b"S\0\0\0\x02hi".to_vec();
    for level in 0..depth.saturating_sub(1) {
        let mut outer = Vec::with_capacity(value.len() + 8);
        if level % 2 == 0 {
            outer.push(b'A');
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
        } else {
            outer.push(b'F');
            outer.extend_from_slice(&(value.len() as u32 + 2).to_be_bytes());
            outer.extend_from_slice(b"\x01k");
        }
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut table = ((value.len() + 2) as u32).to_be_bytes().to_vec();
    table.extend_from_slice(b"\x01k");
    table.extend_from_slice(&value);
    table
}

#[cfg(test)]
mod tests;
