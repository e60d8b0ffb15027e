//! The record of a waiting message in a bucket store: the message as published, with its due
//! time and either its CC/BCC keys (`x-delayed-message`: routed when it fires) or the queues a
//! plugin's decision reached at publish (fired into them without routing). The data directory
//! is not trusted: a short or malformed record is an error, never a panic.

use crate::exchange::Name;
use crate::message::Message;
use crate::store::{StoreError, StoredMessage};

/// What is stored ahead of the body of a delayed message: its due time and the extra routing
/// keys of its CC and BCC headers (BCC is gone from the stored properties). At most
/// `u16::MAX - 1` keys are kept: the count `u16::MAX` marks a decided record.
pub(super) fn encode_record_body(due: u64, extra_keys: &[Name], body: &[u8]) -> Vec<u8> {
    let n = extra_keys.len().min(DECIDED_MARK as usize - 1);
    encode_names(due, n as u16, &extra_keys[..n], body)
}

/// The count field of a record whose names are the queues a plugin's decision reached (then
/// a second count and the names follow), rather than CC/BCC keys.
pub(super) const DECIDED_MARK: u16 = u16::MAX;

/// Most queues one decided record names (a fan-out wider than this is refused, not held).
pub const DECIDED_QUEUES_MAX: usize = DECIDED_MARK as usize - 1;

/// What is stored ahead of the body of a message a plugin delayed: its due time, the
/// [`DECIDED_MARK`], and the names of the queues it goes to (at most [`DECIDED_QUEUES_MAX`]).
pub(super) fn encode_decided_body(due: u64, queues: &[Name], body: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(10);
    head.extend_from_slice(&due.to_le_bytes());
    head.extend_from_slice(&DECIDED_MARK.to_le_bytes());
    let n = queues.len().min(DECIDED_QUEUES_MAX);
    let mut out = encode_names(0, n as u16, &queues[..n], body);
    // `encode_names` wrote a placeholder due time: the real head goes in front of its count.
    out.splice(..8, head);
    out
}

/// `due`, `count`, then each name as a u16 length and its bytes, then `body`.
fn encode_names(due: u64, count: u16, names: &[Name], body: &[u8]) -> Vec<u8> {
    let bytes: usize = names.iter().map(|k| 2 + k.len()).sum();
    let mut out = Vec::with_capacity(10 + bytes + body.len());
    out.extend_from_slice(&due.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for key in names {
        let k = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
    }
    out.extend_from_slice(body);
    out
}

/// A delayed message read back from a bucket: what routing needs.
pub(crate) struct Decoded {
    /// The CC/BCC keys or, when `decided`, the queues the message goes to.
    pub(crate) extra_keys: Vec<Name>,
    /// Whether a plugin decided its destinations at publish time (`extra_keys` are queues).
    pub(crate) decided: bool,
    pub(crate) message: Message,
}

/// The due time of a stored record (its first 8 body bytes).
pub(super) fn record_due(stored: &StoredMessage) -> Option<u64> {
    Some(u64::from_le_bytes(stored.body.get(..8)?.try_into().ok()?))
}

/// Splits a stored record into its extra keys and the original message (the due time is
/// read with [`record_due`]). The data
/// directory is not trusted: a short or malformed record is an error, never a panic.
pub(super) fn decode_record(stored: StoredMessage) -> Result<Decoded, StoreError> {
    let bad = || StoreError::Invalid("malformed delayed message record".into());
    let b = &stored.body;
    record_due(&stored).ok_or_else(bad)?;
    let u16_at = |at: usize| -> Result<u16, StoreError> {
        Ok(u16::from_le_bytes(
            b.get(at..at + 2)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let mut n = u16_at(8)?;
    let mut at = 10;
    let decided = n == DECIDED_MARK;
    if decided {
        n = u16_at(10)?;
        at = 12;
    }
    let mut extra_keys = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = u16::from_le_bytes(
            b.get(at..at + 2)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        at += 2;
        let key = b.get(at..at + usize::from(len)).ok_or_else(bad)?;
        extra_keys.push(Name::from(String::from_utf8_lossy(key)));
        at += usize::from(len);
    }
    let body = stored.body.slice(at..);
    let message = StoredMessage { body, ..stored }.into_message()?;
    Ok(Decoded {
        extra_keys,
        decided,
        message,
    })
}
