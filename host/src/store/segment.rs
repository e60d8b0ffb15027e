//! Segment files of one queue: their names, the message record, and the recovery scan.
//!
//! A queue directory holds, per segment id `N` (ten digits, from 1):
//!
//! - `msgs.N`: an 8-byte header (`BSEG`, version u32 LE) then framed message records;
//! - `acks.N`: entries for the acknowledged messages of `msgs.N`, in ack order;
//! - `dlvr.N`: entries for the messages of `msgs.N` that were delivered.
//!
//! An entry is 8 bytes: the record's offset (u32 LE) and the CRC-32 of those 4 bytes (u32 LE),
//! so a damaged entry is skipped instead of acknowledging (dropping) some other message.
//!
//! A message record's payload is `[kind = 1][exchange len u8][exchange][routing key len u8]
//! [routing key][properties len u32 LE][properties][body]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::frame::{self, Next};
use super::messages::{Position, RecoveredMessage};
use super::{StoreError, sync_dir};

/// First bytes of every `msgs.N` file.
pub(crate) const SEGMENT_HEADER: [u8; 8] = *b"BSEG\x01\x00\x00\x00";
/// Length of [`SEGMENT_HEADER`]: offset of the first record.
pub(crate) const SEGMENT_HEADER_LEN: u32 = SEGMENT_HEADER.len() as u32;
/// Kind byte of a message record.
pub(crate) const KIND_MESSAGE: u8 = 1;
/// Bytes of a message payload besides exchange, routing key, properties and body.
pub(crate) const MESSAGE_OVERHEAD: usize = 1 + 1 + 1 + 4;

/// Size of one entry of `acks.N` / `dlvr.N`.
pub(crate) const OFFSET_ENTRY_LEN: usize = 8;

/// The `acks.N` / `dlvr.N` entry for the record at `offset`.
pub(crate) fn offset_entry(offset: u32) -> [u8; OFFSET_ENTRY_LEN] {
    let o = offset.to_le_bytes();
    let c = crc32fast::hash(&o).to_le_bytes();
    [o[0], o[1], o[2], o[3], c[0], c[1], c[2], c[3]]
}

/// `msgs.N` in `dir`.
pub(crate) fn msgs_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("msgs.{segment:010}"))
}

/// `acks.N` in `dir`.
pub(crate) fn acks_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("acks.{segment:010}"))
}

/// `dlvr.N` in `dir`.
pub(crate) fn dlvr_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("dlvr.{segment:010}"))
}

/// Appends the message record for these parts to `out`; returns the record's size.
///
/// `exchange` and `routing_key` are AMQP short strings (at most 255 bytes); the caller checks.
pub(crate) fn push_message(
    out: &mut Vec<u8>,
    exchange: &[u8],
    routing_key: &[u8],
    properties: &[u8],
    body: &[u8],
) -> usize {
    frame::push_record(
        out,
        &[
            &[KIND_MESSAGE, exchange.len() as u8],
            exchange,
            &[routing_key.len() as u8],
            routing_key,
            &(properties.len() as u32).to_le_bytes(),
            properties,
            body,
        ],
    )
}

/// Where the fields of a message payload lie.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessageLayout {
    pub(crate) exchange: Range<usize>,
    pub(crate) routing_key: Range<usize>,
    pub(crate) properties: Range<usize>,
    pub(crate) body: Range<usize>,
}

/// Splits a message payload into its fields, checking every length. Names are not checked for
/// UTF-8 here (recovery scans millions of records; the CRC already vouches for them): readers
/// check when they turn them into strings.
pub(crate) fn decode_message(payload: &[u8]) -> Result<MessageLayout, &'static str> {
    let mut at = 0usize;
    let mut take = |n: Option<usize>| -> Result<Range<usize>, &'static str> {
        // `None`: everything that is left.
        let end = n.map_or(Some(payload.len()), |n| at.checked_add(n));
        let end = end.filter(|&e| e <= payload.len());
        let end = end.ok_or("message record fields overrun the record")?;
        let range = at..end;
        at = end;
        Ok(range)
    };
    let head = take(Some(2))?;
    if payload[head.start] != KIND_MESSAGE {
        return Err("unknown record kind");
    }
    let exchange = take(Some(usize::from(payload[head.start + 1])))?;
    let rk_len = take(Some(1))?;
    let routing_key = take(Some(usize::from(payload[rk_len.start])))?;
    let props_len = take(Some(4))?;
    let props_len = u32::from_le_bytes([
        payload[props_len.start],
        payload[props_len.start + 1],
        payload[props_len.start + 2],
        payload[props_len.start + 3],
    ]);
    let properties = take(Some(props_len as usize))?;
    let body = take(None)?;
    Ok(MessageLayout {
        exchange,
        routing_key,
        properties,
        body,
    })
}

/// A segment as recovery left it.
#[derive(Debug)]
pub(crate) struct RecoveredSegment {
    pub(crate) id: u32,
    /// Length of the intact part (the file was cut to it).
    pub(crate) len: u32,
    /// Messages in the intact part.
    pub(crate) messages: u32,
    /// Of those, how many were acknowledged.
    pub(crate) acked: u32,
    /// Lengths of `acks.N` and `dlvr.N` after recovery (0 when absent).
    pub(crate) acks_len: u64,
    pub(crate) dlvr_len: u64,
}

/// The outcome of scanning one queue directory.
#[derive(Debug)]
pub(crate) struct ScannedQueue {
    /// Segments still holding unacknowledged messages, plus always the last one (the head,
    /// where appends continue), in id order.
    pub(crate) segments: Vec<RecoveredSegment>,
    /// Unacknowledged messages in order.
    pub(crate) messages: Vec<RecoveredMessage>,
}

/// Recovers one queue directory: reads every segment in id order with its ack and delivery
/// files, cuts damaged tails, deletes fully acknowledged segments and stray files.
pub(crate) fn scan_queue(dir: &Path) -> Result<ScannedQueue, StoreError> {
    let mut msgs = Vec::new();
    let mut side = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some((kind, digits)) = name.split_once('.') else {
            continue;
        };
        if digits.len() != 10 {
            continue;
        }
        let Ok(id) = digits.parse::<u32>() else {
            continue;
        };
        match kind {
            "msgs" => msgs.push(id),
            "acks" | "dlvr" => side.push(id),
            _ => {}
        }
    }
    msgs.sort_unstable();
    let max_id = msgs.iter().chain(&side).copied().max().unwrap_or(0);

    // Side files whose segment is gone (a crash between two deletions) are removed first, so
    // a later segment with the same id could never inherit them.
    let mut changed_dir = false;
    for id in side {
        if msgs.binary_search(&id).is_err() {
            remove_if_exists(&acks_path(dir, id))?;
            remove_if_exists(&dlvr_path(dir, id))?;
            changed_dir = true;
        }
    }

    let mut segments = Vec::new();
    let mut messages = Vec::new();
    let last = msgs.last().copied();
    // One read buffer for every segment: fresh 64 MiB buffers cost a page fault per 4 KiB.
    let mut buf = Vec::new();
    for id in msgs {
        let Some(seg) = scan_segment(dir, id, &mut buf, &mut messages)? else {
            changed_dir = true;
            continue;
        };
        let fully_acked = seg.acked == seg.messages;
        if fully_acked && Some(id) != last {
            remove_segment_files(dir, id)?;
            changed_dir = true;
        } else {
            segments.push(seg);
        }
    }
    if segments.last().map(|s| Some(s.id) != last).unwrap_or(true) {
        // No head survived (no segment at all, or the last one was set aside as corrupt):
        // start a fresh one after every id ever seen.
        let id = max_id.checked_add(1).ok_or_else(|| {
            StoreError::Invalid(format!("segment ids exhausted in {}", dir.display()))
        })?;
        create_segment(dir, id)?;
        segments.push(RecoveredSegment {
            id,
            len: SEGMENT_HEADER_LEN,
            messages: 0,
            acked: 0,
            acks_len: 0,
            dlvr_len: 0,
        });
        changed_dir = true;
    }
    if changed_dir {
        sync_dir(dir)?;
    }
    Ok(ScannedQueue { segments, messages })
}

/// Creates `msgs.N` holding only the header, durably (the caller fsyncs the directory).
pub(crate) fn create_segment(dir: &Path, id: u32) -> Result<File, StoreError> {
    let path = msgs_path(dir, id);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(StoreError::io("create", &path))?;
    file.write_all(&SEGMENT_HEADER)
        .and_then(|()| file.sync_data())
        .map_err(StoreError::io("write", &path))?;
    Ok(file)
}

/// Removes `msgs.N` (first: it is what makes the segment exist), then its side files.
pub(crate) fn remove_segment_files(dir: &Path, id: u32) -> Result<(), StoreError> {
    remove_if_exists(&msgs_path(dir, id))?;
    remove_if_exists(&acks_path(dir, id))?;
    remove_if_exists(&dlvr_path(dir, id))
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Scans `msgs.N`, pushing its unacknowledged messages. `None` when the file was unusable and
/// set aside (renamed `*.corrupt`).
fn scan_segment(
    dir: &Path,
    id: u32,
    buf: &mut Vec<u8>,
    out: &mut Vec<RecoveredMessage>,
) -> Result<Option<RecoveredSegment>, StoreError> {
    let path = msgs_path(dir, id);
    buf.clear();
    File::open(&path)
        .and_then(|mut f| io::Read::read_to_end(&mut f, buf))
        .map_err(StoreError::io("read", &path))?;
    let data = &buf[..];
    if data.len() < SEGMENT_HEADER.len() && SEGMENT_HEADER.starts_with(data)
        || data.len() < SEGMENT_HEADER.len() && data.iter().all(|&b| b == 0)
    {
        // Created but its header never fully reached the disk: it held nothing.
        tracing::warn!(file = %path.display(), bytes = data.len(), "segment header cut short; rewriting an empty segment");
        create_segment(dir, id)?;
        remove_if_exists(&acks_path(dir, id))?;
        remove_if_exists(&dlvr_path(dir, id))?;
        return Ok(Some(RecoveredSegment {
            id,
            len: SEGMENT_HEADER_LEN,
            messages: 0,
            acked: 0,
            acks_len: 0,
            dlvr_len: 0,
        }));
    }
    if !data.starts_with(&SEGMENT_HEADER) {
        tracing::error!(file = %path.display(), "segment has an unknown header; setting it aside as .corrupt");
        for p in [path.clone(), acks_path(dir, id), dlvr_path(dir, id)] {
            let mut aside = p.clone().into_os_string();
            aside.push(".corrupt");
            match fs::rename(&p, &aside) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StoreError::io("rename", &p)(e));
                }
                _ => {}
            }
        }
        return Ok(None);
    }

    let (acks, acks_len) = read_offsets(&acks_path(dir, id))?;
    let (dlvr, dlvr_len) = read_offsets(&dlvr_path(dir, id))?;

    let mut at = SEGMENT_HEADER.len();
    let mut messages = 0u32;
    let mut acked = 0u32;
    let (mut ai, mut di) = (0usize, 0usize);
    let bad = loop {
        match frame::read_record(data, at) {
            Next::End => break None,
            Next::Bad(reason) => break Some(reason),
            Next::Record(payload, next) => {
                let layout = match decode_message(payload) {
                    Ok(layout) => layout,
                    Err(reason) => break Some(reason),
                };
                let offset = at as u32;
                messages += 1;
                // Both offset lists are sorted; walk them alongside the records.
                while ai < acks.len() && acks[ai] < offset {
                    ai += 1;
                }
                while di < dlvr.len() && dlvr[di] < offset {
                    di += 1;
                }
                if acks.get(ai) == Some(&offset) {
                    acked += 1;
                } else {
                    out.push(RecoveredMessage {
                        position: Position::new(id, offset),
                        body_len: layout.body.len() as u32,
                        redelivered: dlvr.get(di) == Some(&offset),
                    });
                }
                at = next;
            }
        }
    };
    if let Some(reason) = bad {
        tracing::warn!(
            file = %path.display(),
            offset = at,
            bytes_skipped = data.len() - at,
            reason,
            "damaged segment tail cut off; the records before it are kept"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        file.set_len(at as u64)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("truncate", &path))?;
    } else {
        // What recovery returns counts as durable from now on; after a process crash it may
        // only be in the page cache, so make it so.
        File::open(&path)
            .and_then(|f| f.sync_data())
            .map_err(StoreError::io("fsync", &path))?;
    }
    let len = at as u32;
    // Offsets at or past the intact end belong to records that are gone; new records will be
    // appended there, so those entries must not survive to mark them.
    let acks_len = drop_stale_offsets(&acks_path(dir, id), &acks, acks_len, len)?;
    let dlvr_len = drop_stale_offsets(&dlvr_path(dir, id), &dlvr, dlvr_len, len)?;
    Ok(Some(RecoveredSegment {
        id,
        len,
        messages,
        acked,
        acks_len,
        dlvr_len,
    }))
}

/// Reads an offsets file: its valid offsets, sorted and deduplicated, and the file's length
/// after a torn last entry is cut off. Entries failing their check are skipped with a warning.
fn read_offsets(path: &Path) -> Result<(Vec<u32>, u64), StoreError> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let whole = data.len() - data.len() % OFFSET_ENTRY_LEN;
    if whole != data.len() {
        tracing::warn!(file = %path.display(), offset = whole, bytes_skipped = data.len() - whole, "torn entry at the end of an offsets file cut off");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        file.set_len(whole as u64)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("truncate", path))?;
    } else if whole > 0 {
        File::open(path)
            .and_then(|f| f.sync_data())
            .map_err(StoreError::io("fsync", path))?;
    }
    let mut offsets = Vec::with_capacity(whole / OFFSET_ENTRY_LEN);
    let mut damaged = 0usize;
    for (i, entry) in data[..whole].chunks_exact(OFFSET_ENTRY_LEN).enumerate() {
        let offset = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        if offset_entry(offset)[..] == entry[..] {
            offsets.push(offset);
        } else {
            if damaged == 0 {
                tracing::warn!(file = %path.display(), offset = i * OFFSET_ENTRY_LEN, "damaged entry in an offsets file skipped");
            }
            damaged += 1;
        }
    }
    if damaged > 1 {
        tracing::warn!(file = %path.display(), damaged, "damaged entries in an offsets file skipped");
    }
    offsets.sort_unstable();
    offsets.dedup();
    Ok((offsets, whole as u64))
}

/// Rewrites an offsets file without the entries at or past `end` (and without damaged ones),
/// if it has any at or past `end`; returns the file's length afterwards.
fn drop_stale_offsets(path: &Path, offsets: &[u32], len: u64, end: u32) -> Result<u64, StoreError> {
    if offsets.last().is_none_or(|&last| last < end) {
        return Ok(len);
    }
    let kept: Vec<u8> = offsets
        .iter()
        .filter(|&&o| o < end)
        .flat_map(|&o| offset_entry(o))
        .collect();
    tracing::warn!(file = %path.display(), dropped = offsets.len() - kept.len() / OFFSET_ENTRY_LEN, "dropping entries that point past the intact end of their segment");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
    file.write_all(&kept)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(StoreError::io("rename", &tmp))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(kept.len() as u64)
}

/// Ids present in a directory listing, for tests.
#[cfg(test)]
pub(crate) fn segment_ids(dir: &Path) -> Vec<u32> {
    let mut ids: Vec<u32> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("msgs.")?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_payload_round_trip() {
        let mut buf = Vec::new();
        let n = push_message(
            &mut buf,
            b"ex",
            b"rk.1",
            b"\x80\x00\x0atext/plain",
            b"hello",
        );
        assert_eq!(n, buf.len());
        let Next::Record(payload, _) = frame::read_record(&buf, 0) else {
            panic!("record expected");
        };
        let layout = decode_message(payload).expect("decodes");
        assert_eq!(&payload[layout.exchange], b"ex");
        assert_eq!(&payload[layout.routing_key], b"rk.1");
        assert_eq!(&payload[layout.properties], b"\x80\x00\x0atext/plain");
        assert_eq!(&payload[layout.body], b"hello");
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        assert!(decode_message(&[]).is_err());
        assert!(decode_message(&[2, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_message(&[1, 5, b'a']).is_err());
        assert!(decode_message(&[1, 0, 0, 255, 255, 255, 255]).is_err());
        assert!(decode_message(&[1, 0, 0, 0, 0, 0, 0]).is_ok());
    }
}
