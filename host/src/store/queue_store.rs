//! The store of one durable queue: the [`QueueStore`] API a queue calls under its own lock
//! (append, ack, delivery marks, reads, deletion) and the in-memory state those calls buffer
//! for the flusher (`super::flusher`). Nothing here makes a system call on the append path.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::StoreError;
use super::flusher::{FileIo, QueueIo, SegmentIo};
use super::frame::{self, Next};
use super::messages::{MAX_RECORD, Position, Shared, StoredMessage, Ticket, wait_synced};
use super::segment::{self, SEGMENT_HEADER, SEGMENT_HEADER_LEN};
use super::sync_dir;
use crate::exchange::Name;
use crate::message::Message;

/// Most bytes [`QueueStore::read_run`] reads at once.
pub const READ_RUN_BYTES: usize = 64 << 10;
/// The store of one durable queue. Cheap to clone; all clones are the same store.
#[derive(Clone)]
pub struct QueueStore {
    pub(super) inner: Arc<QueueInner>,
}

impl std::fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore")
            .field("name", &self.inner.name)
            .finish()
    }
}

pub(super) struct QueueInner {
    name: String,
    pub(super) dir: PathBuf,
    pub(super) shared: Arc<Shared>,
    /// What appends, acks and reads touch: buffers and per-segment counts. Held briefly.
    pub(super) state: Mutex<QueueState>,
    /// What only the flusher (and deletion) touches: file handles and lengths. Held while
    /// writing, never while fsyncing, never together with `state`.
    pub(super) io: Mutex<QueueIo>,
}

pub(super) struct QueueState {
    pub(super) deleted: bool,
    /// In the store's dirty list (or taken from it and not yet drained by the flusher).
    pub(super) dirty: bool,
    head: u32,
    head_len: u32,
    /// Message bytes not yet taken by the flusher, per segment, in order.
    pub(super) pending: Vec<Chunk>,
    /// Chunks the flusher took and has not finished writing (reads look here too).
    pub(super) inflight: Vec<Arc<Chunk>>,
    pub(super) acks: Vec<Position>,
    pub(super) dlvr: Vec<Position>,
    /// Fully acknowledged segments to delete.
    pub(super) reclaim: Vec<u32>,
    pub(super) segments: std::collections::BTreeMap<u32, SegmentCount>,
    /// Buffers the flusher gave back, to avoid regrowing one per round.
    pub(super) spare: Vec<Vec<u8>>,
}

pub(super) struct SegmentCount {
    pub(super) messages: u32,
    pub(super) acked: u32,
    /// For reads; set once the file exists on disk.
    pub(super) file: Option<Arc<File>>,
}

pub(super) struct Chunk {
    pub(super) segment: u32,
    pub(super) offset: u32,
    pub(super) data: Vec<u8>,
}

impl QueueInner {
    pub(super) fn recovered(
        shared: &Arc<Shared>,
        name: String,
        dir: PathBuf,
        segments: Vec<segment::RecoveredSegment>,
    ) -> Result<Arc<QueueInner>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        let mut io = QueueIo::default();
        let (mut head, mut head_len) = (1, SEGMENT_HEADER_LEN);
        for seg in segments {
            let path = segment::msgs_path(&dir, seg.id);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(StoreError::io("open", &path))?;
            let file = Arc::new(file);
            counts.insert(
                seg.id,
                SegmentCount {
                    messages: seg.messages,
                    acked: seg.acked,
                    file: Some(file.clone()),
                },
            );
            io.segments.insert(
                seg.id,
                SegmentIo {
                    msgs: FileIo {
                        handle: Some(file),
                        len: u64::from(seg.len),
                        synced: u64::from(seg.len),
                    },
                    acks: FileIo {
                        handle: None,
                        len: seg.acks_len,
                        synced: seg.acks_len,
                    },
                    dlvr: FileIo {
                        handle: None,
                        len: seg.dlvr_len,
                        synced: seg.dlvr_len,
                    },
                },
            );
            (head, head_len) = (seg.id, seg.len);
        }
        Ok(Arc::new(QueueInner {
            name,
            dir,
            shared: shared.clone(),
            state: Mutex::new(QueueState {
                deleted: false,
                dirty: false,
                head,
                head_len,
                pending: Vec::new(),
                inflight: Vec::new(),
                acks: Vec::new(),
                dlvr: Vec::new(),
                reclaim: Vec::new(),
                segments: counts,
                spare: Vec::new(),
            }),
            io: Mutex::new(io),
        }))
    }

    /// Runs `f` on the state, marks the queue dirty and issues a ticket (in that order: a
    /// ticket is only visible once the flusher is sure to find this queue's buffer).
    fn buffered<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut QueueState) -> Result<R, StoreError>,
    ) -> Result<(R, Ticket), StoreError> {
        let shared = &self.shared;
        shared.check_open()?;
        let mut state = self.state.lock();
        if state.deleted {
            return Err(StoreError::Invalid(format!(
                "queue '{}' was deleted from the store",
                self.name
            )));
        }
        let out = f(&mut state)?;
        let mut wake = false;
        if !state.dirty {
            state.dirty = true;
            let mut dirty = shared.dirty.lock();
            wake = dirty.is_empty();
            dirty.push(self.clone());
        }
        let ticket = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
        drop(state);
        if wake {
            // One wake per flush round, not per message.
            shared.wake_flusher();
        }
        Ok((out, ticket))
    }
}

impl QueueStore {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Appends a message: copies it into the write buffer and returns its position and the
    /// ticket to await before confirming it. Call with the queue's lock held: this makes no
    /// system call, except waking the flusher once per round when it sleeps.
    ///
    /// `exchange` and `routing_key` are AMQP short strings (at most 255 bytes).
    pub fn append(
        &self,
        exchange: &str,
        routing_key: &str,
        raw_properties: &[u8],
        body: &[u8],
    ) -> Result<(Position, Ticket), StoreError> {
        if exchange.len() > 255 || routing_key.len() > 255 {
            return Err(StoreError::Invalid(
                "exchange and routing key must be at most 255 bytes".into(),
            ));
        }
        let size = frame::HEADER_LEN
            + segment::MESSAGE_OVERHEAD
            + exchange.len()
            + routing_key.len()
            + raw_properties.len()
            + body.len();
        if size > MAX_RECORD {
            return Err(StoreError::Invalid(format!(
                "message of {} bytes is too large to store",
                body.len()
            )));
        }
        let segment_max = self.inner.shared.options.segment_max_bytes as usize;
        let (position, ticket) = self.inner.buffered(|state| {
            if state.head_len > SEGMENT_HEADER_LEN && state.head_len as usize + size > segment_max {
                state.roll();
            }
            let head = state.head;
            let offset = state.head_len;
            let needs_new_chunk = state
                .pending
                .last()
                .is_none_or(|chunk| chunk.segment != head);
            if needs_new_chunk {
                let data = state.spare.pop().unwrap_or_default();
                state.pending.push(Chunk {
                    segment: head,
                    offset,
                    data,
                });
            }
            let Some(chunk) = state.pending.last_mut() else {
                return Err(StoreError::Invalid("no write buffer".into()));
            };
            segment::push_message(
                &mut chunk.data,
                exchange.as_bytes(),
                routing_key.as_bytes(),
                raw_properties,
                body,
            );
            state.head_len += size as u32;
            if let Some(count) = state.segments.get_mut(&head) {
                count.messages += 1;
            }
            Ok(Position::new(head, offset))
        })?;
        let shared = &self.inner.shared;
        shared.appended.fetch_add(1, Ordering::Relaxed);
        shared
            .buffered_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        Ok((position, ticket))
    }

    /// [`QueueStore::append`] for a broker [`Message`].
    pub fn append_message(&self, message: &Message) -> Result<(Position, Ticket), StoreError> {
        self.append(
            message.exchange(),
            message.routing_key(),
            message.raw_properties(),
            message.body(),
        )
    }

    /// Records that the message at `position` is gone from the queue: acknowledged, expired,
    /// dropped, dead-lettered or purged. Buffered like an append. Call exactly once per
    /// message; a segment whose messages are all gone is deleted by the flusher.
    pub fn ack(&self, position: Position) -> Result<Ticket, StoreError> {
        let ((), ticket) = self.inner.buffered(|state| {
            let id = position.segment();
            let head = state.head;
            let valid = id < head || position.offset() < state.head_len;
            let Some(count) = state.segments.get_mut(&id).filter(|_| valid) else {
                return Err(StoreError::Invalid(format!(
                    "ack of {position:?}, which is not in queue store"
                )));
            };
            if count.acked >= count.messages {
                return Err(StoreError::Invalid(format!(
                    "ack of {position:?}: every message of segment {id} is already acked"
                )));
            }
            count.acked += 1;
            state.acks.push(position);
            if count.acked == count.messages && id != head {
                state.segments.remove(&id);
                state.reclaim.push(id);
            }
            Ok(())
        })?;
        Ok(ticket)
    }

    /// Records that the message at `position` was delivered to a consumer that must ack it,
    /// so that recovery gives it back with `redelivered` set. Once per message is enough (at
    /// its first delivery).
    pub fn mark_delivered(&self, position: Position) -> Result<Ticket, StoreError> {
        let ((), ticket) = self.inner.buffered(|state| {
            let known = state.segments.contains_key(&position.segment())
                && (position.segment() < state.head || position.offset() < state.head_len);
            if !known {
                return Err(StoreError::Invalid(format!(
                    "delivery mark of {position:?}, which is not in queue store"
                )));
            }
            state.dlvr.push(position);
            Ok(())
        })?;
        Ok(ticket)
    }

    /// Reads back the message at `position` (not yet acked), from the write buffer if it was
    /// not written yet, else from its segment file (one or two `pread`s, usually from the page
    /// cache). The record's checksum is verified.
    pub fn read(&self, position: Position) -> Result<StoredMessage, StoreError> {
        let id = position.segment();
        let offset = position.offset();
        let state = self.inner.state.lock();
        let in_memory = state
            .pending
            .iter()
            .chain(state.inflight.iter().map(|c| &**c))
            .find(|c| {
                c.segment == id && offset >= c.offset && offset - c.offset < c.data.len() as u32
            });
        if let Some(chunk) = in_memory {
            let at = (offset - chunk.offset) as usize;
            return match frame::read_record(&chunk.data, at) {
                Next::Record(payload, _) => {
                    self.stored(Bytes::from(payload.to_vec()), offset, None)
                }
                _ => Err(self.corrupt(offset, "no record at this position")),
            };
        }
        let file = state.segments.get(&id).and_then(|c| c.file.clone());
        drop(state);
        let Some(file) = file else {
            return Err(StoreError::Invalid(format!(
                "read of {position:?}, which is not in queue store '{}'",
                self.inner.name
            )));
        };
        let path = || segment::msgs_path(&self.inner.dir, id);
        // One read usually covers a whole small record; a second fetches the rest.
        let mut head = [0u8; 4096];
        let n = read_at_most(&file, &mut head, u64::from(offset))
            .map_err(StoreError::io("read", &path()))?;
        let Some(len) = frame::announced_len(&head[..n]) else {
            return Err(self.corrupt(offset, "no record at this position"));
        };
        let total = frame::HEADER_LEN + len;
        let mut record = Vec::with_capacity(total);
        record.extend_from_slice(&head[..n.min(total)]);
        if record.len() < total {
            let have = record.len();
            record.resize(total, 0);
            file.read_exact_at(&mut record[have..], u64::from(offset) + have as u64)
                .map_err(StoreError::io("read", &path()))?;
        }
        match frame::read_record(&record, 0) {
            Next::Record(..) => {
                record.drain(..frame::HEADER_LEN);
                self.stored(Bytes::from(record), offset, None)
            }
            Next::End | Next::Bad(_) => Err(self.corrupt(offset, "record checksum mismatch")),
        }
    }

    /// Reads up to `count` consecutive records starting at `position`, with one `pread` of at
    /// most [`READ_RUN_BYTES`] when they are on disk (a record in the write buffer, or larger
    /// than that, is read alone). Stops early at the end of what is written. The records'
    /// checksums are verified; consecutive records with the same exchange and routing key
    /// share their names.
    pub fn read_run(
        &self,
        position: Position,
        count: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let id = position.segment();
        let offset = position.offset();
        let state = self.inner.state.lock();
        let buffered = state
            .pending
            .iter()
            .chain(state.inflight.iter().map(|c| &**c))
            .any(|c| {
                c.segment == id && offset >= c.offset && offset - c.offset < c.data.len() as u32
            });
        let file = state.segments.get(&id).and_then(|c| c.file.clone());
        drop(state);
        let file = match file {
            Some(file) if !buffered && count > 1 => file,
            _ => return self.read(position).map(|m| vec![m]),
        };
        let mut buf = vec![0u8; READ_RUN_BYTES];
        let n = read_at_most(&file, &mut buf, u64::from(offset)).map_err(StoreError::io(
            "read",
            &segment::msgs_path(&self.inner.dir, id),
        ))?;
        buf.truncate(n);
        let buf = Bytes::from(buf);
        let mut out: Vec<StoredMessage> = Vec::with_capacity(count.min(256));
        let mut at = 0;
        while out.len() < count {
            let Next::Record(_, next) = frame::read_record(&buf, at) else {
                break;
            };
            let names = out.last().map(|m| (&m.exchange, &m.routing_key));
            let stored = self.stored(
                buf.slice(at + frame::HEADER_LEN..next),
                offset + at as u32,
                names,
            )?;
            out.push(stored);
            at = next;
        }
        if out.is_empty() {
            return self.read(position).map(|m| vec![m]);
        }
        Ok(out)
    }

    /// Decodes a record's payload; `names` are the previous record's, reused when equal.
    fn stored(
        &self,
        payload: Bytes,
        offset: u32,
        names: Option<(&Name, &Name)>,
    ) -> Result<StoredMessage, StoreError> {
        let layout =
            segment::decode_message(&payload).map_err(|reason| self.corrupt(offset, reason))?;
        let text =
            |range: std::ops::Range<usize>, same: Option<&Name>| -> Result<Name, StoreError> {
                let bytes = &payload[range];
                if let Some(name) = same.filter(|n| n.as_bytes() == bytes) {
                    return Ok(name.clone());
                }
                std::str::from_utf8(bytes)
                    .map(Name::from)
                    .map_err(|_| self.corrupt(offset, "exchange or routing key is not UTF-8"))
            };
        let exchange = text(layout.exchange.clone(), names.map(|n| n.0))?;
        let routing_key = text(layout.routing_key.clone(), names.map(|n| n.1))?;
        Ok(StoredMessage {
            exchange,
            routing_key,
            raw_properties: payload.slice(layout.properties),
            body: payload.slice(layout.body),
        })
    }

    fn corrupt(&self, offset: u32, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.inner.dir.clone(),
            offset: u64::from(offset),
            reason: reason.to_owned(),
        }
    }

    /// Deletes the queue's store: buffered writes are dropped, the directory is renamed away
    /// at once (so a queue of the same name can be declared right after) and removed by the
    /// flusher. Call after the queue's deletion is in the definitions log.
    pub fn delete(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        {
            let mut state = inner.state.lock();
            if state.deleted {
                return Ok(());
            }
            state.deleted = true;
            let dropped: u64 = state.pending.iter().map(message_bytes).sum();
            inner
                .shared
                .buffered_bytes
                .fetch_sub(dropped, Ordering::Relaxed);
            state.pending.clear();
            state.inflight.clear();
            state.acks.clear();
            state.dlvr.clear();
            state.segments.clear();
        }
        {
            let mut queues = inner.shared.queues.lock();
            if queues
                .get(&inner.name)
                .is_some_and(|q| Arc::ptr_eq(q, inner))
            {
                queues.remove(&inner.name);
            }
        }
        let mut io = inner.io.lock();
        io.deleted = true;
        io.segments.clear();
        let n = inner.shared.trash_seq.fetch_add(1, Ordering::Relaxed);
        let mut trash = inner.dir.clone().into_os_string();
        trash.push(format!(".deleted.{}.{n}", std::process::id()));
        let trash = PathBuf::from(trash);
        fs::rename(&inner.dir, &trash).map_err(StoreError::io("rename", &inner.dir))?;
        drop(io);
        sync_dir(&inner.shared.dir)?;
        inner.shared.trash.lock().push(trash);
        inner.shared.wake_flusher();
        Ok(())
    }

    /// The highest synced ticket of the store this queue belongs to.
    pub fn synced(&self) -> Ticket {
        self.inner.shared.synced.load(Ordering::SeqCst)
    }

    /// See [`MessageStore::subscribe`](super::MessageStore::subscribe).
    pub fn subscribe(&self) -> watch::Receiver<Ticket> {
        self.inner.shared.synced_tx.subscribe()
    }

    /// See [`MessageStore::wait_synced`](super::MessageStore::wait_synced).
    pub async fn wait_synced(&self, ticket: Ticket) -> Result<(), StoreError> {
        wait_synced(&self.inner.shared, ticket, |s| &s.synced).await
    }

    /// Segment ids currently holding this queue's messages (tests and metrics).
    pub fn segment_ids(&self) -> Vec<u32> {
        self.inner.state.lock().segments.keys().copied().collect()
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl QueueState {
    /// Starts a new head segment; the old one is reclaimed now if nothing in it is left.
    fn roll(&mut self) {
        let old = self.head;
        if let Some(count) = self.segments.get(&old)
            && count.acked == count.messages
        {
            self.segments.remove(&old);
            self.reclaim.push(old);
        }
        self.head = old + 1;
        self.head_len = SEGMENT_HEADER_LEN;
        self.segments.insert(
            self.head,
            SegmentCount {
                messages: 0,
                acked: 0,
                file: None,
            },
        );
        let mut data = self.spare.pop().unwrap_or_default();
        data.extend_from_slice(&SEGMENT_HEADER);
        self.pending.push(Chunk {
            segment: self.head,
            offset: 0,
            data,
        });
    }
}

/// Bytes of message records in a chunk (a new segment's header is not a message's).
pub(super) fn message_bytes(chunk: &Chunk) -> u64 {
    let header = if chunk.offset == 0 {
        SEGMENT_HEADER.len()
    } else {
        0
    };
    (chunk.data.len() - header) as u64
}

/// Reads up to `buf.len()` bytes at `offset`, fewer only at the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
