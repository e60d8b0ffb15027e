//! The ready list of one queue: messages waiting for a consumer, in delivery order.
//!
//! A plain queue is one FIFO. A priority queue (`x-max-priority`) keeps one FIFO per priority
//! level and always serves the highest non-empty level first, as RabbitMQ's priority queues do:
//! a message without a priority counts as 0, one above the maximum counts as the maximum.
//! Within a level, order is publish order, and a requeued message goes back to its original
//! place (entries carry a sequence number).
//!
//! Every kind of queue pages. Past `in_memory` entries (over all levels), a new entry goes to
//! its level's paged tail instead of memory: a persistent message of a durable queue is
//! already in the queue's message store, and any other message (transient, or in a queue
//! that is not durable) is written to the vhost's paging store ([`Spill`], never synced and
//! wiped at start-up). The tail holds runs of consecutive records (32 bytes a run, however
//! many messages it covers) and, for messages with an expiry, 8 bytes each; when a level's
//! in-memory head runs empty the next entries are read back. A message that cannot be
//! written (no data directory, or the disk failed) waits in the tail with its message.
//! Sequence numbers are handed out when an entry enters the in-memory head, so they always
//! grow in delivery order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::message::{Message, QueuedMessage};
use crate::store::{MessageStore, Position, QueueStore, RecoveredMessage, StoredMessage};

/// Entries moved from a paged tail into memory at a time.
const PAGE_IN_BATCH: usize = 256;

/// What a ready message held in memory costs beyond its body and property bytes: its queue
/// entry, the shared message and the allocation headers (an estimate, for memory accounting).
pub(crate) const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<QueuedMessage>() + std::mem::size_of::<Message>() + 16;

/// Ready messages of one queue.
pub(crate) struct Ready {
    /// One level for a FIFO queue; index = priority otherwise.
    levels: Box<[Level]>,
    len: usize,
    bytes: usize,
    /// Entries in the levels' in-memory heads.
    in_memory: usize,
    /// Body and property bytes of the messages held in memory (heads and held tail entries).
    held_bytes: usize,
    next_seq: u64,
    pager: Option<Pager>,
}

/// One priority level: the in-memory head, then the paged tail.
#[derive(Default)]
struct Level {
    head: VecDeque<QueuedMessage>,
    tail: Tail,
}

/// The paged part of a level, in order.
#[derive(Default)]
struct Tail {
    runs: VecDeque<Run>,
    /// Expiry (ms after [`Pager::epoch`]) of each entry of a run flagged [`Run::EXPIRES`].
    expiries: VecDeque<u64>,
    /// The messages of runs flagged [`Run::HELD`], in order.
    held: VecDeque<QueuedMessage>,
    /// Records of the first run already read from disk (one read covers many), taken by the
    /// same refill.
    read_ahead: VecDeque<StoredMessage>,
    /// Why the last read failed (reported when the entries it should have returned are lost).
    read_error: Option<String>,
    len: usize,
}

/// Consecutive tail entries with the same flags: for stored ones, consecutive records of one
/// segment, starting at `position` and ending before `end`.
#[derive(Clone, Copy)]
struct Run {
    position: u64,
    /// Body bytes of the run's entries.
    bytes: u64,
    end: u32,
    count: u32,
    flags: u32,
}

impl Run {
    const REDELIVERED: u32 = 1;
    /// The messages are in [`Tail::held`], not on disk.
    const HELD: u32 = 2;
    /// The records are in the paging store, not the queue's message store.
    const SPILLED: u32 = 4;
    /// Each entry has an expiry in [`Tail::expiries`].
    const EXPIRES: u32 = 8;
}

/// Where a queue's tail entries are written.
struct Pager {
    /// The queue's message store (durable queues): persistent messages are already there.
    durable: Option<QueueStore>,
    spill: Spill,
    /// Entries kept in memory before new ones go to the tails.
    limit: usize,
    /// The queue's `x-message-ttl`: recovered messages' TTL counts from when they are read.
    message_ttl: Option<Duration>,
    /// Origin of the expiries kept in the tails.
    epoch: Instant,
}

/// The paging store of one queue: a queue of the vhost's unsynced [`MessageStore`], opened on
/// first use and replaced by a fresh one when the queue is purged.
pub struct Spill {
    source: Option<Arc<MessageStore>>,
    name: String,
    store: Option<QueueStore>,
    failed: bool,
}

/// Tells apart the paging stores of queues of the same name over the process's life.
static SPILL_GENERATION: AtomicU64 = AtomicU64::new(0);

impl Spill {
    /// Pages the messages of queue `queue` into `source`; None: no paging store (no data
    /// directory), transient messages stay in memory.
    pub fn new(source: Option<Arc<MessageStore>>, queue: &str) -> Self {
        Spill {
            source,
            name: Self::fresh_name(queue),
            store: None,
            failed: false,
        }
    }

    fn fresh_name(queue: &str) -> String {
        let generation = SPILL_GENERATION.fetch_add(1, Ordering::Relaxed);
        format!("{queue}\u{0}{generation}")
    }

    fn store(&mut self) -> Option<&QueueStore> {
        if self.store.is_none() && !self.failed {
            let source = self.source.as_ref()?;
            match source.open_queue(&self.name) {
                Ok(store) => self.store = Some(store),
                Err(error) => {
                    warn!(queue = %self.name, %error, "cannot open the paging store; messages stay in memory");
                    self.failed = true;
                }
            }
        }
        self.store.as_ref()
    }

    /// Drops everything paged (purge, delete): the store's files go.
    fn discard(&mut self) {
        if let Some(store) = self.store.take() {
            if let Err(error) = store.delete() {
                warn!(queue = %self.name, %error, "cannot delete a paging store");
            }
            let queue = self
                .name
                .split('\u{0}')
                .next()
                .unwrap_or_default()
                .to_owned();
            self.name = Self::fresh_name(&queue);
        }
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.discard();
    }
}

/// The size of `message`'s record in a store segment.
fn record_len(message: &Message) -> u32 {
    StoredMessage::record_len_of(
        message.exchange(),
        message.routing_key(),
        message.raw_properties().len(),
        message.body().len(),
    )
}

impl Tail {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends an entry: extends the last run when it continues it.
    fn push(&mut self, position: u64, record: u32, body: u64, flags: u32) {
        self.len += 1;
        if let Some(last) = self.runs.back_mut()
            && last.flags == flags
            && (flags & Run::HELD != 0
                || (Position::from_u64(last.position).segment()
                    == Position::from_u64(position).segment()
                    && Position::from_u64(position).offset() == last.end))
        {
            last.count += 1;
            last.bytes += body;
            last.end = last.end.wrapping_add(record);
            return;
        }
        self.runs.push_back(Run {
            position,
            bytes: body,
            end: Position::from_u64(position).offset().wrapping_add(record),
            count: 1,
            flags,
        });
    }

    /// Memory the tail takes.
    fn memory(&self) -> usize {
        self.runs.len() * std::mem::size_of::<Run>() + self.expiries.len() * 8
    }
}

impl Ready {
    /// An empty list; `max_priority` above 0 makes it a priority queue. It pages once it holds
    /// more than `in_memory` entries, persistent messages into `durable` (when the queue is
    /// durable) and the others into `spill`.
    pub(crate) fn new(
        max_priority: Option<u8>,
        durable: Option<QueueStore>,
        spill: Spill,
        in_memory: usize,
        message_ttl: Option<Duration>,
    ) -> Self {
        let count = match max_priority {
            Some(max) if max > 0 => max as usize + 1,
            _ => 1,
        };
        let pager = (durable.is_some() || spill.source.is_some()).then(|| Pager {
            durable,
            spill,
            limit: in_memory.max(1),
            message_ttl,
            epoch: Instant::now(),
        });
        Self {
            levels: (0..count).map(|_| Level::default()).collect(),
            len: 0,
            bytes: 0,
            in_memory: 0,
            held_bytes: 0,
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
        self.levels
            .iter()
            .map(|l| l.tail.len - l.tail.held.len())
            .sum()
    }

    /// What the ready messages take in memory: bodies, properties and entries of those held,
    /// and the paged tails' index (an estimate; a message routed to several queues is
    /// counted in each).
    pub(crate) fn memory(&self) -> usize {
        let held: usize = self.levels.iter().map(|l| l.tail.held.len()).sum();
        let tails: usize = self.levels.iter().map(|l| l.tail.memory()).sum();
        self.held_bytes + (self.in_memory + held) * ENTRY_OVERHEAD + tails
    }

    /// A sequence number for a message delivered without entering the list.
    pub(crate) fn allocate_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn level_of(&self, message: &Message) -> usize {
        let max = self.levels.len() - 1;
        if max == 0 {
            return 0;
        }
        (message.priority().unwrap_or(0) as usize).min(max)
    }

    fn added(&mut self, size: usize) {
        self.len += 1;
        self.bytes += size;
    }

    fn removed(&mut self, size: usize) {
        self.len -= 1;
        self.bytes -= size;
    }

    /// An entry enters an in-memory head.
    fn entering(&mut self, entry: &QueuedMessage) {
        self.in_memory += 1;
        self.held_bytes += held_size(&entry.message);
    }

    /// Appends a newly published message behind the others of its priority. Its sequence
    /// number is assigned here (or when it leaves the paged tail).
    pub(crate) fn push_back(&mut self, mut entry: QueuedMessage) {
        self.added(entry.message.size());
        let index = self.level_of(&entry.message);
        if let Some(pager) = &mut self.pager {
            let tail = &mut self.levels[index].tail;
            if !tail.is_empty() || self.in_memory >= pager.limit {
                let size = held_size(&entry.message);
                if pager.page_out(tail, entry) {
                    self.held_bytes += size;
                }
                return;
            }
        }
        entry.seq = self.allocate_seq();
        self.entering(&entry);
        self.levels[index].head.push_back(entry);
    }

    /// Queues a message found in the store at recovery, behind the others. False when the
    /// queue cannot page it without reading it (a priority queue needs its priority).
    pub(crate) fn push_recovered(&mut self, recovered: RecoveredMessage) -> bool {
        if self.levels.len() > 1 {
            return false;
        }
        let Some(pager) = &mut self.pager else {
            return false;
        };
        if pager.durable.is_none() {
            return false;
        }
        // The record length is not known without reading it: a run of one, extended by
        // nothing (the next recovered message starts a run of its own).
        let flags = if recovered.redelivered {
            Run::REDELIVERED
        } else {
            0
        };
        self.levels[0].tail.runs.push_back(Run {
            position: recovered.position.to_u64(),
            bytes: recovered.body_len.into(),
            end: u32::MAX,
            count: 1,
            flags,
        });
        self.levels[0].tail.len += 1;
        self.added(recovered.body_len as usize);
        self.refill(0);
        true
    }

    /// Puts back an entry just taken with [`Ready::pop_front`] (no consumer could take it).
    pub(crate) fn push_front(&mut self, entry: QueuedMessage) {
        self.added(entry.message.size());
        self.entering(&entry);
        let index = self.level_of(&entry.message);
        self.levels[index].head.push_front(entry);
    }

    /// Puts a requeued entry back at its original position within its priority.
    pub(crate) fn insert_by_seq(&mut self, entry: QueuedMessage) {
        self.added(entry.message.size());
        self.entering(&entry);
        let index = self.level_of(&entry.message);
        let head = &mut self.levels[index].head;
        let at = head.partition_point(|m| m.seq < entry.seq);
        head.insert(at, entry);
    }

    /// Takes the next message to deliver: the oldest of the highest non-empty priority.
    pub(crate) fn pop_front(&mut self) -> Option<QueuedMessage> {
        loop {
            let index = (0..self.levels.len()).rev().find(|&i| {
                let level = &self.levels[i];
                !level.head.is_empty() || !level.tail.is_empty()
            })?;
            self.refill(index);
            // (A refill that could read nothing back emptied the tail: look again.)
            if let Some(entry) = self.levels[index].head.pop_front() {
                self.leaving(&entry);
                return Some(entry);
            }
        }
    }

    /// An entry leaves an in-memory head (delivered, expired, dropped).
    fn leaving(&mut self, entry: &QueuedMessage) {
        self.removed(entry.message.size());
        self.in_memory -= 1;
        self.held_bytes -= held_size(&entry.message);
    }

    /// When a level's in-memory head ran empty, moves the next entries of its paged tail into
    /// it, reading paged messages back. A message that cannot be read is reported and
    /// skipped with the rest of its run.
    fn refill(&mut self, index: usize) {
        let Some(pager) = &mut self.pager else {
            return;
        };
        let level = &mut self.levels[index];
        if !level.head.is_empty() {
            return;
        }
        while level.head.len() < PAGE_IN_BATCH {
            let want = PAGE_IN_BATCH - level.head.len();
            match pager.page_in(&mut level.tail, want) {
                None => break,
                Some(Ok((mut entry, was_held))) => {
                    entry.seq = self.next_seq;
                    self.next_seq += 1;
                    self.in_memory += 1;
                    if !was_held {
                        self.held_bytes += held_size(&entry.message);
                    }
                    level.head.push_back(entry);
                }
                Some(Err((lost, bytes))) => {
                    self.len -= lost;
                    self.bytes -= bytes as usize;
                }
            }
        }
    }

    /// Drops every entry (the queue is deleted with its store); returns how many there were.
    pub(crate) fn clear_all(&mut self) -> usize {
        self.clear_with(None)
    }

    /// Drops every entry (purge); returns how many there were. `gone` sees the message-store
    /// position of each one that had one (paged ones are read back to find them).
    pub(crate) fn clear(&mut self, mut gone: impl FnMut(u64)) -> usize {
        self.clear_with(Some(&mut gone))
    }

    fn clear_with(&mut self, mut gone: Option<&mut dyn FnMut(u64)>) -> usize {
        for level in self.levels.iter_mut() {
            let head = std::mem::take(&mut level.head);
            let tail = std::mem::take(&mut level.tail);
            let Some(gone) = gone.as_mut() else {
                continue;
            };
            for entry in head.iter().chain(tail.held.iter()) {
                if entry.position != 0 {
                    gone(entry.position);
                }
            }
            let Some(durable) = self.pager.as_ref().and_then(|p| p.durable.as_ref()) else {
                continue;
            };
            let stored = tail
                .runs
                .iter()
                .filter(|r| r.flags & (Run::HELD | Run::SPILLED) == 0);
            for run in stored {
                let mut position = Position::from_u64(run.position);
                for _ in 0..run.count {
                    gone(position.to_u64());
                    match durable.read(position) {
                        Ok(stored) => {
                            position = Position::new(
                                position.segment(),
                                position.offset() + stored.record_len(),
                            );
                        }
                        // The rest cannot be found: recovery reports them.
                        Err(_) => break,
                    }
                }
            }
        }
        if let Some(pager) = &mut self.pager {
            pager.spill.discard();
        }
        let count = self.len;
        self.len = 0;
        self.bytes = 0;
        self.in_memory = 0;
        self.held_bytes = 0;
        count
    }

    /// Removes the expired entries at the head of each priority level (RabbitMQ expires only
    /// from the head: a message behind a longer-lived one waits until it reaches the front).
    pub(crate) fn take_expired_heads(&mut self, now: Instant, mut out: impl FnMut(QueuedMessage)) {
        loop {
            let mut removed = Vec::new();
            for index in (0..self.levels.len()).rev() {
                self.refill(index);
                let head = &mut self.levels[index].head;
                while head
                    .front()
                    .is_some_and(|m| m.expires_at().is_some_and(|at| at <= now))
                {
                    removed.extend(head.pop_front());
                }
            }
            if removed.is_empty() {
                return;
            }
            for entry in removed {
                self.leaving(&entry);
                out(entry);
            }
        }
    }

    /// The earliest expiry among the heads of the priority levels (a level whose head is
    /// empty shows its tail's first expiry).
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|level| match level.head.front() {
                Some(m) => m.expires_at(),
                None => {
                    let pager = self.pager.as_ref()?;
                    let run = level.tail.runs.front()?;
                    if run.flags & Run::HELD != 0 {
                        return level.tail.held.front().and_then(|m| m.expires_at());
                    }
                    (run.flags & Run::EXPIRES != 0)
                        .then(|| level.tail.expiries.front())
                        .flatten()
                        .map(|&ms| pager.epoch + Duration::from_millis(ms))
                }
            })
            .min()
    }
}

/// Body and property bytes a message keeps in memory.
fn held_size(message: &Message) -> usize {
    message.body().len() + message.raw_properties().len()
}

impl Pager {
    /// Writes an entry to the tail. Returns true when it could not be written and is held in
    /// memory instead (in order).
    fn page_out(&mut self, tail: &mut Tail, entry: QueuedMessage) -> bool {
        let mut flags = if entry.redelivered() {
            Run::REDELIVERED
        } else {
            0
        };
        if let Some(at) = entry.expires_at() {
            flags |= Run::EXPIRES;
            let ms = at.saturating_duration_since(self.epoch).as_millis();
            tail.expiries
                .push_back(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        let body = entry.message.size() as u64;
        let position = if entry.position != 0 {
            Some(entry.position)
        } else {
            match self.spill.store().map(|s| s.append_message(&entry.message)) {
                Some(Ok((position, _))) => {
                    flags |= Run::SPILLED;
                    Some(position.to_u64())
                }
                Some(Err(error)) => {
                    warn!(queue = %self.spill.name, %error, "cannot page a message out; it stays in memory");
                    self.spill.failed = true;
                    None
                }
                None => None,
            }
        };
        match position {
            Some(position) => {
                tail.push(position, record_len(&entry.message), body, flags);
                false
            }
            None => {
                tail.push(0, 0, body, flags | Run::HELD);
                tail.held.push_back(entry);
                true
            }
        }
    }

    /// Takes the first entry of the tail, reading it back; the flag tells whether it was held
    /// in memory. None when the tail is empty. A record that cannot be read loses the rest of
    /// its run (positions after it are unknown), one that does not decode only itself:
    /// `Err` says how many entries and body bytes went.
    #[allow(clippy::type_complexity)]
    fn page_in(
        &mut self,
        tail: &mut Tail,
        want: usize,
    ) -> Option<Result<(QueuedMessage, bool), (usize, u64)>> {
        let run = tail.runs.front_mut()?;
        let flags = run.flags;
        let expiry = if flags & Run::EXPIRES != 0 {
            tail.expiries.pop_front()
        } else {
            None
        };
        if flags & Run::HELD != 0 {
            let entry = tail.held.pop_front();
            run.bytes -= entry.as_ref().map_or(0, |e| e.message.size() as u64);
            run.count -= 1;
            if run.count == 0 {
                tail.runs.pop_front();
            }
            tail.len -= 1;
            return Some(entry.map(|e| (e, true)).ok_or((1, 0)));
        }
        let position = Position::from_u64(run.position);
        let spilled = flags & Run::SPILLED != 0;
        let store = if spilled {
            self.spill.store.as_ref()
        } else {
            self.durable.as_ref()
        };
        if tail.read_ahead.is_empty() {
            let count = want.min(run.count as usize).max(1);
            let read = match store {
                Some(store) => store.read_run(position, count).map_err(|e| e.to_string()),
                None => Err("its store is gone".to_owned()),
            };
            match read {
                Ok(records) => tail.read_ahead.extend(records),
                Err(error) => tail.read_error = Some(error),
            }
        }
        let read = match tail.read_ahead.pop_front() {
            Some(stored) => Ok(stored),
            None => Err(tail
                .read_error
                .take()
                .unwrap_or_else(|| "no record".to_owned())),
        };
        let stored = match read {
            Ok(stored) => stored,
            Err(error) => {
                warn!(queue = %self.spill.name, %error, "paged messages cannot be read back; dropped");
                let lost = run.count as usize;
                let bytes = run.bytes;
                if flags & Run::EXPIRES != 0 {
                    for _ in 1..lost {
                        tail.expiries.pop_front();
                    }
                }
                tail.runs.pop_front();
                tail.len -= lost;
                return Some(Err((lost, bytes)));
            }
        };
        let size = stored.body.len() as u64;
        run.position =
            Position::new(position.segment(), position.offset() + stored.record_len()).to_u64();
        run.bytes = run.bytes.saturating_sub(size);
        run.count -= 1;
        if run.count == 0 {
            tail.runs.pop_front();
        }
        tail.len -= 1;
        if spilled && let Some(store) = &self.spill.store {
            // Back in memory: a transient message needs no copy on disk.
            let _ = store.ack(position);
        }
        let message = match stored.into_message() {
            Ok(message) => message,
            Err(error) => {
                warn!(queue = %self.spill.name, %error, "a paged message does not decode; dropped");
                if !spilled && let Some(store) = &self.durable {
                    let _ = store.ack(position);
                }
                return Some(Err((1, size)));
            }
        };
        let expires_at = match expiry {
            Some(ms) => self.epoch.checked_add(Duration::from_millis(ms)),
            None if spilled => None,
            // A recovered message: its TTL counts from when it is read back.
            None => {
                let own = message.ttl_ms().map(Duration::from_millis);
                let ttl = match (self.message_ttl, own) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                ttl.and_then(|ttl| Instant::now().checked_add(ttl))
            }
        };
        Some(Ok((
            {
                let position = if spilled { 0 } else { position.to_u64() };
                let mut entry = QueuedMessage::new(0, Arc::new(message), position);
                entry.set_redelivered(flags & Run::REDELIVERED != 0);
                entry.set_expires_at(expires_at);
                entry
            },
            false,
        )))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod paging_tests;
