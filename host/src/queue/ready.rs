//! The ready list of one queue: messages waiting for a consumer, in delivery order.
//!
//! A plain queue is one FIFO. A priority queue (`x-max-priority`) keeps one FIFO per priority
//! level and always serves the highest non-empty level first, as RabbitMQ's priority queues do:
//! a message without a priority counts as 0, one above the maximum counts as the maximum.
//! Within a level, order is publish order, and a requeued message goes back to its original
//! place (entries carry a sequence number).
//!
//! A FIFO queue with a message store pages: past `in_memory` entries, the messages that are
//! already on disk (persistent, no expiry) are kept as a 16-byte [`Paged`] index entry in a
//! tail behind the in-memory head, and read back from the store when they reach the head.
//! Entries that cannot be paged (transient, or with an expiry) wait in the tail with their
//! message, in order. Sequence numbers are handed out when an entry enters the in-memory head,
//! so they always grow in delivery order.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::message::QueuedMessage;
use crate::store::{Position, QueueStore, RecoveredMessage};

/// Entries moved from the paged tail into memory at a time.
const PAGE_IN_BATCH: usize = 256;
/// Index entries per chunk of the paged tail (64 KiB chunks: no doubling slack).
const CHUNK: usize = 4096;

/// Ready messages of one queue.
pub(crate) struct Ready {
    levels: Levels,
    len: usize,
    bytes: usize,
    next_seq: u64,
    pager: Option<Pager>,
}

enum Levels {
    Fifo(VecDeque<QueuedMessage>),
    /// Index = priority; served from the highest index down.
    Priority(Box<[VecDeque<QueuedMessage>]>),
}

/// The paged tail of a FIFO queue.
struct Pager {
    store: QueueStore,
    /// Entries kept in memory before new ones go to the tail.
    in_memory: usize,
    /// The queue's `x-message-ttl`: only recovered messages are paged with a TTL, and theirs
    /// counts from when they are read back.
    message_ttl: Option<Duration>,
    tail: PagedList,
    /// Entries of the tail that kept their message (`Paged::HELD`), in tail order.
    held: VecDeque<QueuedMessage>,
}

/// One entry of the paged tail: 16 bytes.
#[derive(Clone, Copy)]
struct Paged {
    position: u64,
    size: u32,
    flags: u32,
}

impl Paged {
    const REDELIVERED: u32 = 1;
    /// The message is the next one in `Pager::held`, not on disk.
    const HELD: u32 = 2;
}

/// A FIFO of [`Paged`] in fixed-size chunks, so ten million entries cost 160 MB, not the
/// up-to-double a growing `VecDeque` may reserve.
#[derive(Default)]
struct PagedList {
    chunks: VecDeque<Vec<Paged>>,
    head: usize,
    len: usize,
}

impl PagedList {
    fn push_back(&mut self, entry: Paged) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(entry),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(entry);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<Paged> {
        let chunk = self.chunks.front()?;
        let entry = *chunk.get(self.head)?;
        self.head += 1;
        if self.head == chunk.len() {
            self.chunks.pop_front();
            self.head = 0;
        }
        self.len -= 1;
        Some(entry)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn drain(&mut self) -> impl Iterator<Item = Paged> + '_ {
        let head = std::mem::take(&mut self.head);
        self.len = 0;
        std::mem::take(&mut self.chunks)
            .into_iter()
            .enumerate()
            .flat_map(move |(i, chunk)| chunk.into_iter().skip(if i == 0 { head } else { 0 }))
    }
}

impl Ready {
    /// An empty list; `max_priority` above 0 makes it a priority queue. A FIFO queue with a
    /// `store` pages once it holds more than `in_memory` entries.
    pub(crate) fn new(
        max_priority: Option<u8>,
        store: Option<QueueStore>,
        in_memory: usize,
        message_ttl: Option<Duration>,
    ) -> Self {
        let levels = match max_priority {
            Some(max) if max > 0 => Levels::Priority(
                (0..=max as usize)
                    .map(|_| VecDeque::new())
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
            _ => Levels::Fifo(VecDeque::new()),
        };
        let pager = match (&levels, store) {
            (Levels::Fifo(_), Some(store)) => Some(Pager {
                store,
                in_memory: in_memory.max(1),
                message_ttl,
                tail: PagedList::default(),
                held: VecDeque::new(),
            }),
            _ => None,
        };
        Self {
            levels,
            len: 0,
            bytes: 0,
            next_seq: 0,
            pager,
        }
    }

    /// Number of ready messages.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total body bytes of the ready messages (for `x-max-length-bytes`).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Ready messages whose body is on disk only.
    pub(crate) fn paged(&self) -> usize {
        self.pager.as_ref().map_or(0, |p| p.tail.len - p.held.len())
    }

    /// A sequence number for a message delivered without entering the list.
    pub(crate) fn allocate_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn in_memory(&self) -> usize {
        match &self.levels {
            Levels::Fifo(fifo) => fifo.len(),
            Levels::Priority(_) => self.len,
        }
    }

    fn level_mut(&mut self, entry: &QueuedMessage) -> &mut VecDeque<QueuedMessage> {
        match &mut self.levels {
            Levels::Fifo(fifo) => fifo,
            Levels::Priority(levels) => {
                let max = levels.len() - 1;
                let priority = entry.message.properties.priority().unwrap_or(0) as usize;
                &mut levels[priority.min(max)]
            }
        }
    }

    fn added(&mut self, size: usize) {
        self.len += 1;
        self.bytes += size;
    }

    fn removed(&mut self, size: usize) {
        self.len -= 1;
        self.bytes -= size;
    }

    /// Appends a newly published message behind the others of its priority. Its sequence
    /// number is assigned here (or when it leaves the paged tail).
    pub(crate) fn push_back(&mut self, mut entry: QueuedMessage) {
        self.added(entry.message.size());
        let in_memory = self.in_memory();
        if let Some(pager) = &mut self.pager
            && (!pager.tail.is_empty() || in_memory >= pager.in_memory)
        {
            let mut flags = if entry.redelivered {
                Paged::REDELIVERED
            } else {
                0
            };
            let size = entry.message.size() as u32;
            let position = if entry.position == 0 || entry.expires_at.is_some() {
                flags |= Paged::HELD;
                pager.held.push_back(entry);
                0
            } else {
                // The entry (and with it the message) is dropped here: the body lives on in
                // the store only.
                entry.position
            };
            pager.tail.push_back(Paged {
                position,
                size,
                flags,
            });
            return;
        }
        entry.seq = self.allocate_seq();
        self.level_mut(&entry).push_back(entry);
    }

    /// Queues a message found in the store at recovery, behind the others.
    pub(crate) fn push_recovered(&mut self, recovered: RecoveredMessage) -> bool {
        let Some(pager) = &mut self.pager else {
            return false;
        };
        pager.tail.push_back(Paged {
            position: recovered.position.to_u64(),
            size: recovered.body_len,
            flags: if recovered.redelivered {
                Paged::REDELIVERED
            } else {
                0
            },
        });
        self.added(recovered.body_len as usize);
        self.refill();
        true
    }

    /// Puts back an entry just taken with [`Ready::pop_front`] (no consumer could take it).
    pub(crate) fn push_front(&mut self, entry: QueuedMessage) {
        self.added(entry.message.size());
        self.level_mut(&entry).push_front(entry);
    }

    /// Puts a requeued entry back at its original position within its priority.
    pub(crate) fn insert_by_seq(&mut self, entry: QueuedMessage) {
        self.added(entry.message.size());
        let level = self.level_mut(&entry);
        let at = level.partition_point(|m| m.seq < entry.seq);
        level.insert(at, entry);
    }

    /// Takes the next message to deliver: the oldest of the highest non-empty priority.
    pub(crate) fn pop_front(&mut self) -> Option<QueuedMessage> {
        self.refill();
        let entry = match &mut self.levels {
            Levels::Fifo(fifo) => fifo.pop_front(),
            Levels::Priority(levels) => levels.iter_mut().rev().find_map(VecDeque::pop_front),
        }?;
        self.removed(entry.message.size());
        Some(entry)
    }

    /// When the in-memory head ran empty, moves the next entries of the paged tail into it,
    /// reading paged messages back from the store. A message that cannot be read is reported,
    /// removed from the store and skipped.
    fn refill(&mut self) {
        let Levels::Fifo(fifo) = &mut self.levels else {
            return;
        };
        let Some(pager) = &mut self.pager else {
            return;
        };
        if !fifo.is_empty() {
            return;
        }
        while fifo.len() < PAGE_IN_BATCH {
            let Some(paged) = pager.tail.pop_front() else {
                break;
            };
            let redelivered = paged.flags & Paged::REDELIVERED != 0;
            let entry = if paged.flags & Paged::HELD != 0 {
                match pager.held.pop_front() {
                    Some(entry) => entry,
                    None => {
                        self.len -= 1;
                        self.bytes -= paged.size as usize;
                        continue;
                    }
                }
            } else {
                let position = Position::from_u64(paged.position);
                match pager
                    .store
                    .read(position)
                    .and_then(|stored| stored.into_message())
                {
                    Ok(message) => {
                        let own = message.ttl_ms().map(Duration::from_millis);
                        let ttl = match (pager.message_ttl, own) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        QueuedMessage {
                            seq: 0,
                            message: std::sync::Arc::new(message),
                            redelivered,
                            expires_at: ttl.and_then(|ttl| Instant::now().checked_add(ttl)),
                            position: paged.position,
                        }
                    }
                    Err(error) => {
                        warn!(queue = pager.store.name(), %error, "a paged message cannot be read back; dropped");
                        let _ = pager.store.ack(position);
                        self.len -= 1;
                        self.bytes -= paged.size as usize;
                        continue;
                    }
                }
            };
            let mut entry = entry;
            entry.seq = self.next_seq;
            self.next_seq += 1;
            fifo.push_back(entry);
        }
    }

    /// Drops every entry; returns how many there were. `gone` sees the store position of
    /// each one that had one.
    pub(crate) fn clear(&mut self, mut gone: impl FnMut(u64)) -> usize {
        let mut forget = |level: &mut VecDeque<QueuedMessage>| {
            for entry in level.drain(..) {
                if entry.position != 0 {
                    gone(entry.position);
                }
            }
        };
        match &mut self.levels {
            Levels::Fifo(fifo) => forget(fifo),
            Levels::Priority(levels) => levels.iter_mut().for_each(forget),
        }
        if let Some(pager) = &mut self.pager {
            for entry in pager.held.drain(..) {
                if entry.position != 0 {
                    gone(entry.position);
                }
            }
            for paged in pager.tail.drain() {
                if paged.flags & Paged::HELD == 0 {
                    gone(paged.position);
                }
            }
        }
        let count = self.len;
        self.len = 0;
        self.bytes = 0;
        count
    }

    /// Removes the expired entries at the head of each priority level (RabbitMQ expires only
    /// from the head: a message behind a longer-lived one waits until it reaches the front).
    pub(crate) fn take_expired_heads(&mut self, now: Instant, mut out: impl FnMut(QueuedMessage)) {
        loop {
            self.refill();
            let mut removed = Vec::new();
            let mut take = |level: &mut VecDeque<QueuedMessage>| {
                while level
                    .front()
                    .is_some_and(|m| m.expires_at.is_some_and(|at| at <= now))
                {
                    removed.extend(level.pop_front());
                }
            };
            match &mut self.levels {
                Levels::Fifo(fifo) => take(fifo),
                Levels::Priority(levels) => levels.iter_mut().rev().for_each(take),
            }
            if removed.is_empty() {
                return;
            }
            for entry in removed {
                self.removed(entry.message.size());
                out(entry);
            }
        }
    }

    /// The earliest expiry among the heads of the priority levels.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        match &self.levels {
            Levels::Fifo(fifo) => fifo.front().and_then(|m| m.expires_at),
            Levels::Priority(levels) => levels
                .iter()
                .filter_map(|l| l.front().and_then(|m| m.expires_at))
                .min(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    use super::*;
    use crate::exchange::Name;
    use crate::message::Message;

    fn entry(seq: u64, priority: Option<u8>, body: &str) -> QueuedMessage {
        let mut properties = BasicProperties::default();
        if let Some(p) = priority {
            properties = properties.with_priority(p);
        }
        QueuedMessage {
            seq,
            message: Arc::new(Message {
                exchange: Name::from(""),
                routing_key: Name::from("q"),
                properties,
                raw_properties: Bytes::new(),
                body: Bytes::from(body.to_owned()),
            }),
            redelivered: false,
            expires_at: None,
            position: 0,
        }
    }

    fn drain(ready: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| ready.pop_front().map(|e| e.seq)).collect()
    }

    #[test]
    fn fifo_keeps_publish_order_and_requeue_position() {
        let mut ready = Ready::new(None, None, 0, None);
        for seq in 0..4 {
            ready.push_back(entry(seq, Some(9), "ab"));
        }
        assert_eq!((ready.len(), ready.bytes()), (4, 8));
        let first = ready.pop_front().expect("entry");
        let second = ready.pop_front().expect("entry");
        ready.insert_by_seq(second);
        ready.insert_by_seq(first);
        assert_eq!(drain(&mut ready), [0, 1, 2, 3]);
        assert_eq!((ready.len(), ready.bytes()), (0, 0));
    }

    #[test]
    fn higher_priorities_first_fifo_within_a_priority() {
        let mut ready = Ready::new(Some(5), None, 0, None);
        let published = [
            (0, None),
            (1, Some(5)),
            (2, Some(2)),
            (3, Some(5)),
            (4, Some(200)), // above the maximum: counts as 5
            (5, Some(0)),
            (6, Some(2)),
        ];
        for (seq, priority) in published {
            ready.push_back(entry(seq, priority, "x"));
        }
        assert_eq!(drain(&mut ready), [1, 3, 4, 2, 6, 0, 5]);
    }

    #[test]
    fn requeue_returns_to_original_place_within_its_priority() {
        let mut ready = Ready::new(Some(3), None, 0, None);
        for (seq, priority) in [(0, Some(3)), (1, Some(1)), (2, Some(3)), (3, Some(1))] {
            ready.push_back(entry(seq, priority, "x"));
        }
        let taken: Vec<_> = std::iter::from_fn(|| ready.pop_front()).take(3).collect();
        assert_eq!(taken.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 2, 1]);
        for e in taken.into_iter().rev() {
            ready.insert_by_seq(e);
        }
        assert_eq!(drain(&mut ready), [0, 2, 1, 3]);
    }

    #[test]
    fn only_expired_heads_are_taken() {
        let now = Instant::now();
        let past = now - std::time::Duration::from_millis(1);
        let future = now + std::time::Duration::from_secs(60);
        let mut ready = Ready::new(Some(1), None, 0, None);
        let mut push = |seq, priority, expires_at| {
            let mut e = entry(seq, priority, "x");
            e.expires_at = expires_at;
            ready.push_back(e);
        };
        push(0, Some(1), Some(past));
        push(1, Some(1), Some(future));
        push(2, Some(1), Some(past)); // behind a live message: stays
        push(3, None, Some(past));
        push(4, None, None);
        let mut expired = Vec::new();
        ready.take_expired_heads(now, |e| expired.push(e.seq));
        assert_eq!(expired, [0, 3]);
        assert_eq!(ready.next_expiry(), Some(future));
        assert_eq!(drain(&mut ready), [1, 2, 4]);
    }
}

#[cfg(test)]
mod paging_tests {
    use std::sync::Arc;

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    use super::*;
    use crate::exchange::Name;
    use crate::message::Message;
    use crate::store::{MessageStore, StoreOptions};

    fn message(body: &str, persistent: bool) -> Arc<Message> {
        let mut properties = BasicProperties::default();
        if persistent {
            properties = properties.with_delivery_mode(2);
        }
        let raw_properties = crate::channel::encode_properties(&properties).expect("encodes");
        Arc::new(Message {
            exchange: Name::from(""),
            routing_key: Name::from("q"),
            properties,
            raw_properties,
            body: Bytes::from(body.to_owned()),
        })
    }

    /// A FIFO list paging after `in_memory` entries, and its queue store.
    fn paged_ready(in_memory: usize) -> (tempfile::TempDir, MessageStore, QueueStore, Ready) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).expect("store");
        let queue = store.open_queue("q").expect("queue store");
        let ready = Ready::new(None, Some(queue.clone()), in_memory, None);
        (dir, store, queue, ready)
    }

    /// Publishes like a queue does: persistent messages are appended to the store first.
    fn publish(ready: &mut Ready, store: &QueueStore, body: &str, persistent: bool) {
        let message = message(body, persistent);
        let position = if persistent {
            store.append_message(&message).expect("append").0.to_u64()
        } else {
            0
        };
        ready.push_back(QueuedMessage {
            seq: 0,
            message,
            redelivered: false,
            expires_at: None,
            position,
        });
    }

    fn body(entry: &QueuedMessage) -> String {
        String::from_utf8_lossy(&entry.message.body).into_owned()
    }

    #[test]
    fn entries_beyond_the_window_are_paged_and_come_back_in_order() {
        let (_dir, _store, queue, mut ready) = paged_ready(4);
        for i in 0..20 {
            // Every fifth is transient: it waits in the tail with its message.
            publish(&mut ready, &queue, &format!("m{i:02}"), i % 5 != 4);
        }
        assert_eq!(ready.len(), 20);
        assert_eq!(ready.bytes(), 60);
        assert_eq!(ready.paged(), 12, "16 in the tail, 4 of them transient");
        let mut seen = Vec::new();
        let mut seqs = Vec::new();
        while let Some(entry) = ready.pop_front() {
            seqs.push(entry.seq);
            seen.push(body(&entry));
        }
        let expected: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
        assert_eq!(seen, expected);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs grow: {seqs:?}");
        assert_eq!((ready.len(), ready.bytes(), ready.paged()), (0, 0, 0));
    }

    #[test]
    fn a_requeued_entry_goes_back_before_the_paged_tail() {
        let (_dir, _store, queue, mut ready) = paged_ready(2);
        for i in 0..6 {
            publish(&mut ready, &queue, &format!("m{i}"), true);
        }
        let first = ready.pop_front().expect("m0");
        let second = ready.pop_front().expect("m1");
        let third = ready.pop_front().expect("m2, paged in");
        assert_eq!(body(&third), "m2");
        ready.insert_by_seq(third);
        ready.insert_by_seq(first);
        ready.push_front(second);
        let order: Vec<String> = std::iter::from_fn(|| ready.pop_front())
            .map(|e| body(&e))
            .collect();
        assert_eq!(order, ["m1", "m0", "m2", "m3", "m4", "m5"]);
    }

    #[test]
    fn clear_reports_every_stored_position_once() {
        let (_dir, _store, queue, mut ready) = paged_ready(3);
        for i in 0..10 {
            publish(&mut ready, &queue, &format!("m{i}"), i != 7);
        }
        let mut positions = Vec::new();
        assert_eq!(ready.clear(|p| positions.push(p)), 10);
        positions.sort_unstable();
        positions.dedup();
        assert_eq!(positions.len(), 9, "the nine persistent messages");
        assert_eq!((ready.len(), ready.bytes(), ready.paged()), (0, 0, 0));
    }

    #[test]
    fn recovered_messages_are_read_back_with_their_flags() {
        let (_dir, _store, queue, mut ready) = paged_ready(8);
        let mut recovered = Vec::new();
        for i in 0..3 {
            let (position, _) = queue
                .append_message(&message(&format!("r{i}"), true))
                .expect("append");
            recovered.push(RecoveredMessage {
                position,
                body_len: 2,
                redelivered: i == 1,
            });
        }
        for r in recovered {
            assert!(ready.push_recovered(r));
        }
        let got: Vec<(String, bool)> = std::iter::from_fn(|| ready.pop_front())
            .map(|e| (body(&e), e.redelivered))
            .collect();
        let expected = [("r0", false), ("r1", true), ("r2", false)];
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(b, r)| (b.to_string(), *r)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_paged_tail_is_sixteen_bytes_an_entry() {
        assert_eq!(std::mem::size_of::<Paged>(), 16);
        let mut list = PagedList::default();
        for i in 0..(CHUNK as u64 * 2 + 5) {
            list.push_back(Paged {
                position: i + 1,
                size: 0,
                flags: 0,
            });
        }
        assert_eq!(list.chunks.len(), 3);
        for i in 0..(CHUNK as u64 * 2 + 5) {
            assert_eq!(list.pop_front().map(|p| p.position), Some(i + 1));
        }
        assert!(list.pop_front().is_none() && list.is_empty());
    }
}
