//! The message store of one vhost: segment files per durable queue, group-committed by one
//! flusher thread.
//!
//! # How the pieces call it
//!
//! - A queue appends a persistent message with [`QueueStore::append`] while holding its own
//!   lock. The call copies the record into the queue's in-memory write buffer and returns its
//!   [`Position`] (stable for the message's life, ordered like publishes) and a [`Ticket`]. No
//!   system call, no I/O, no waiting on the disk.
//! - The flusher thread takes every dirty queue's buffer, writes it to the segment files,
//!   fdatasyncs them, and then publishes the highest ticket issued before it started as
//!   `synced`. Every append with a ticket at or below [`MessageStore::synced`] is on disk. A
//!   channel sends the publisher confirm of a message once its ticket (the largest among the
//!   queues it went to) is synced, watching [`MessageStore::subscribe`]. Acks and delivery
//!   marks are written in the same rounds but synced lazily ([`MessageStore::all_synced`]).
//! - Acknowledgements (and any other removal: expiry, drop-head, dead-lettering, purge) are
//!   [`QueueStore::ack`]; first deliveries are [`QueueStore::mark_delivered`], so that after a
//!   crash the message comes back with `redelivered` set. Both are buffered like appends.
//! - A queue may drop a message's body from memory and keep only its position;
//!   [`QueueStore::read`] reads it back (from the write buffer if not yet written).
//! - At boot, [`MessageStore::open`] returns every queue directory's surviving messages.
//!
//! Why acks go to a side file per segment (`acks.N`) rather than into the message stream: a
//! fully acknowledged segment is reclaimed by deleting its files, with no ack elsewhere still
//! pointing into it; recovery reads a segment's acks before scanning it; and an ack costs 8
//! bytes (the offset and its CRC). Delivery marks (`dlvr.N`) work the same way.
//!
//! # Where the code is
//!
//! This module holds the store handle, its recovery at open and the state shared by all;
//! [`QueueStore`] and the buffers it fills are in `queue_store`, the flusher thread and its
//! group commit in `flusher`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::flusher::flusher_loop;
#[cfg(test)]
use super::flusher::{FileKind, Unsynced};
use super::plugin_state::{PluginState, StateCore};
use super::queue_store::{QueueInner, QueueStore};
use super::segment::{self, SEGMENT_HEADER_LEN};
use super::{StoreError, create_dir_durable, hex_name, sync_dir, write_name_file};
use crate::exchange::Name;
use crate::message::Message;

/// A store-wide sequence number of a write (append, ack, delivery mark). Written-and-synced
/// when it is at most [`MessageStore::synced`]. Tickets restart from 1 at every open.
pub type Ticket = u64;

/// Where a message lies in its queue's store: segment id (high 32 bits) and byte offset in
/// that segment (low 32 bits). Positions of one queue grow in append order, so a queue can use
/// them as its sequence numbers. Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u64);

impl Position {
    /// The position of the record at `offset` in segment `segment`.
    pub fn new(segment: u32, offset: u32) -> Self {
        Position((u64::from(segment) << 32) | u64::from(offset))
    }
    /// The segment id.
    pub fn segment(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The byte offset of the record within its segment file.
    pub fn offset(self) -> u32 {
        self.0 as u32
    }
    /// The position as one integer (for compact indexes).
    pub fn to_u64(self) -> u64 {
        self.0
    }
    /// The inverse of [`Position::to_u64`].
    pub fn from_u64(raw: u64) -> Self {
        Position(raw)
    }
}

/// Tunables of a [`MessageStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A segment is closed and a new one started when the next record would take it past this
    /// size (a record larger than this gets a segment of its own). At most 1 GiB.
    pub segment_max_bytes: u32,
    /// Whether written segments are fdatasynced before `synced` moves. False for a store that
    /// only pages transient messages out of memory: nothing in it must survive a crash.
    pub sync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_max_bytes: 64 * 1024 * 1024,
            sync: true,
        }
    }
}

impl StoreOptions {
    /// The options set in the broker's [`Config`](crate::Config).
    pub fn from_config(config: &crate::Config) -> Self {
        StoreOptions {
            segment_max_bytes: config.segment_max_bytes,
            sync: true,
        }
    }
}

/// Largest segment size accepted: keeps every offset inside a u32 even with a maximal record.
pub const SEGMENT_MAX_BYTES_LIMIT: u32 = 1 << 30;
/// Largest record: offsets stay below 2^32 (segment limit + one record).
pub(super) const MAX_RECORD: usize = 2 << 30;
/// Longest ack and delivery files stay written but unsynced under continuous publishing.
pub const SIDE_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Largest write buffer a queue keeps for reuse after a round.
pub(super) const SPARE_MAX_BYTES: usize = 1 << 20;

/// A message read back from the store.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The exchange it was published to.
    pub exchange: Name,
    /// Its routing key.
    pub routing_key: Name,
    /// The content-header property bytes exactly as the publisher sent them.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl StoredMessage {
    /// Bytes its record takes in the segment: the next record of the same segment starts
    /// this far after it.
    pub fn record_len(&self) -> u32 {
        Self::record_len_of(
            &self.exchange,
            &self.routing_key,
            self.raw_properties.len(),
            self.body.len(),
        )
    }

    /// The record size of a message with these parts (as [`QueueStore::append`] writes it).
    pub fn record_len_of(exchange: &str, routing_key: &str, properties: usize, body: usize) -> u32 {
        (super::frame::HEADER_LEN
            + super::segment::MESSAGE_OVERHEAD
            + exchange.len()
            + routing_key.len()
            + properties
            + body) as u32
    }

    /// Rebuilds the broker's [`Message`], decoding the properties from their raw bytes.
    pub fn into_message(self) -> Result<Message, StoreError> {
        // Bounded like a peer's: the data directory is not trusted to be well formed.
        let properties = match crate::protocol::decode_properties(&self.raw_properties) {
            Ok(properties) => properties,
            Err(_) => {
                return Err(StoreError::Invalid(
                    "stored message properties do not decode".into(),
                ));
            }
        };
        Ok(Message::new(
            self.exchange,
            self.routing_key,
            &properties,
            &self.raw_properties,
            self.body,
        ))
    }
}

/// A message found at recovery: 16 bytes, enough for a queue's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredMessage {
    /// Where it lies; read it with [`QueueStore::read`].
    pub position: Position,
    /// Body size in bytes (for `x-max-length-bytes` and memory accounting).
    pub body_len: u32,
    /// It had been delivered and was not acknowledged: deliver it with `redelivered` set.
    pub redelivered: bool,
}

/// One queue directory found at recovery.
#[derive(Debug)]
pub struct RecoveredQueue {
    /// The queue's name (from the directory's `name` file).
    pub name: String,
    /// The store, ready for appends.
    pub store: QueueStore,
    /// Its unacknowledged messages in publish order.
    pub messages: Vec<RecoveredMessage>,
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages appended since open.
    pub appended: u64,
    /// Message bytes appended but not yet written to a file (memory held by write buffers;
    /// counts toward a memory high-watermark).
    pub buffered_bytes: u64,
    /// Flush rounds that wrote something.
    pub rounds: u64,
    /// fdatasync calls made by the flusher.
    pub fsyncs: u64,
    /// Bytes written by the flusher.
    pub bytes_written: u64,
    /// See [`MessageStore::synced`].
    pub synced: Ticket,
    /// See [`MessageStore::all_synced`].
    pub all_synced: Ticket,
}

/// The message store of one vhost. Dropping it (or [`MessageStore::close`]) flushes what was
/// appended and stops the flusher; later appends fail with [`StoreError::Failed`].
pub struct MessageStore {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    plugin_state: PluginState,
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore")
            .field("dir", &self.shared.dir)
            .field("synced", &self.synced())
            .finish()
    }
}

/// State shared by the store handle, every queue store and the flusher thread.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) options: StoreOptions,
    /// Last ticket handed out.
    pub(super) issued: AtomicU64,
    /// Every append with a ticket up to this is on disk.
    pub(super) synced: AtomicU64,
    /// Every write (acks and delivery marks too) with a ticket up to this is on disk.
    pub(super) all_synced: AtomicU64,
    pub(super) synced_tx: watch::Sender<Ticket>,
    /// Blocking waiters on `synced`.
    sync_lock: Mutex<()>,
    sync_cv: Condvar,
    /// Set by the first failed write or fsync (or by close); never cleared.
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Queues with buffered writes, in the order they became dirty.
    pub(super) dirty: Mutex<Vec<Arc<QueueInner>>>,
    /// Directories of deleted queues, to be removed by the flusher.
    pub(super) trash: Mutex<Vec<PathBuf>>,
    /// Open queues by name.
    pub(super) queues: Mutex<HashMap<String, Arc<QueueInner>>>,
    pub(super) flusher: OnceLock<Thread>,
    /// The flusher has exited: nothing more will be synced.
    closed: AtomicBool,
    /// Ask the flusher to finish what is buffered and exit.
    pub(super) stop: AtomicBool,
    /// Tests: ask the flusher to exit at once, dropping what is buffered (a crash).
    pub(super) halt: AtomicBool,
    pub(super) appended: AtomicU64,
    pub(super) buffered_bytes: AtomicU64,
    pub(super) rounds: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) trash_seq: AtomicU64,
    /// The journal of the vhost's plugin state (a store that syncs only).
    pub(super) plugin_state: OnceLock<Arc<StateCore>>,
}

impl Shared {
    pub(super) fn fail(&self, reason: String) {
        tracing::error!(dir = %self.dir.display(), %reason, "message store failed; no further writes will be confirmed");
        self.failure.lock().get_or_insert(reason);
        self.failed.store(true, Ordering::SeqCst);
        self.notify();
    }

    fn failure(&self) -> Option<String> {
        if self.failed.load(Ordering::SeqCst) {
            Some(
                self.failure
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "store failed".into()),
            )
        } else {
            None
        }
    }

    pub(super) fn publish(&self, appends: Ticket, all: Option<Ticket>) {
        self.synced.fetch_max(appends, Ordering::SeqCst);
        if let Some(all) = all {
            self.all_synced.fetch_max(all, Ordering::SeqCst);
        }
        self.notify();
    }

    fn notify(&self) {
        self.synced_tx
            .send_replace(self.synced.load(Ordering::SeqCst));
        let _guard = self.sync_lock.lock();
        self.sync_cv.notify_all();
    }

    pub(super) fn wake_flusher(&self) {
        if let Some(thread) = self.flusher.get() {
            thread.unpark();
        }
    }

    pub(super) fn check_open(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Failed(self.failure().unwrap_or_default()));
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(StoreError::Failed("message store closed".into()));
        }
        Ok(())
    }
}

impl MessageStore {
    /// Opens (creating if needed) the message store in `vhost_dir` and recovers every queue
    /// directory under `vhost_dir/queues`: damaged tails are cut, fully acknowledged segments
    /// deleted, and each queue's unacknowledged messages returned in order. Starts the flusher.
    ///
    /// The caller then deletes, with [`QueueStore::delete`], the recovered queues that the
    /// definitions log no longer declares (a crash between the two deletions).
    pub fn open(
        vhost_dir: &Path,
        options: StoreOptions,
    ) -> Result<(MessageStore, Vec<RecoveredQueue>), StoreError> {
        if options.segment_max_bytes < 4096 || options.segment_max_bytes > SEGMENT_MAX_BYTES_LIMIT {
            return Err(StoreError::Invalid(format!(
                "segment_max_bytes must be between 4096 and {SEGMENT_MAX_BYTES_LIMIT}"
            )));
        }
        let dir = vhost_dir.join("queues");
        create_dir_durable(&dir)?;
        let (synced_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            options,
            issued: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            all_synced: AtomicU64::new(0),
            synced_tx,
            sync_lock: Mutex::new(()),
            sync_cv: Condvar::new(),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            dirty: Mutex::new(Vec::new()),
            trash: Mutex::new(Vec::new()),
            queues: Mutex::new(HashMap::new()),
            flusher: OnceLock::new(),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            halt: AtomicBool::new(false),
            appended: AtomicU64::new(0),
            buffered_bytes: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            trash_seq: AtomicU64::new(0),
            plugin_state: OnceLock::new(),
        });
        let plugin_state = if shared.options.sync {
            let state = PluginState::open(vhost_dir, &shared)?;
            let _ = shared.plugin_state.set(state.core().clone());
            state
        } else {
            PluginState::memory()
        };

        let mut recovered = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(StoreError::io("list", &dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            if !path.is_dir() {
                continue;
            }
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".deleted"))
            {
                shared.trash.lock().push(path);
                continue;
            }
            let name_path = path.join("name");
            let name = match fs::read(&name_path).map(String::from_utf8) {
                Ok(Ok(name)) if path.file_name() == Some(hex_name(&name).as_ref()) => name,
                _ => {
                    // Created but its name never became durable: it was never declared-and-
                    // used long enough to hold anything confirmed.
                    tracing::warn!(dir = %path.display(), "queue directory without a valid name file; removing it");
                    // Renamed now: a queue declared later may hash to this very directory.
                    let mut trash = path.clone().into_os_string();
                    trash.push(format!(".deleted.{}.0", std::process::id()));
                    fs::rename(&path, &trash).map_err(StoreError::io("rename", &path))?;
                    shared.trash.lock().push(trash.into());
                    continue;
                }
            };
            let scanned = segment::scan_queue(&path)?;
            let inner = QueueInner::recovered(&shared, name.clone(), path, scanned.segments)?;
            shared.queues.lock().insert(name.clone(), inner.clone());
            recovered.push(RecoveredQueue {
                name,
                store: QueueStore { inner },
                messages: scanned.messages,
            });
        }

        let store = MessageStore {
            shared: shared.clone(),
            flusher: Mutex::new(None),
            plugin_state,
        };
        let thread_shared = shared.clone();
        let handle = thread::Builder::new()
            .name("bourse-store-flush".into())
            .spawn(move || flusher_loop(&thread_shared))
            .map_err(StoreError::io("spawn flusher for", &dir))?;
        let _ = shared.flusher.set(handle.thread().clone());
        *store.flusher.lock() = Some(handle);
        Ok((store, recovered))
    }

    /// The store of queue `name`, created (durably, with an empty first segment) if it has
    /// none. Call when a durable queue is declared; the same store is returned while it lives.
    pub fn open_queue(&self, name: &str) -> Result<QueueStore, StoreError> {
        self.shared.check_open()?;
        let mut queues = self.shared.queues.lock();
        if let Some(inner) = queues.get(name) {
            return Ok(QueueStore {
                inner: inner.clone(),
            });
        }
        let dir = self.shared.dir.join(hex_name(name));
        create_dir_durable(&dir)?;
        segment::create_segment(&dir, 1)?;
        write_name_file(&dir, name)?;
        sync_dir(&dir)?;
        let first = segment::RecoveredSegment {
            id: 1,
            len: SEGMENT_HEADER_LEN,
            messages: 0,
            acked: 0,
            acks_len: 0,
            dlvr_len: 0,
        };
        let inner = QueueInner::recovered(&self.shared, name.to_owned(), dir, vec![first])?;
        queues.insert(name.to_owned(), inner.clone());
        Ok(QueueStore { inner })
    }

    /// The vhost's plugin state, journaled in this store's group commits (in memory only for
    /// a store that does not sync).
    pub fn plugin_state(&self) -> PluginState {
        self.plugin_state.clone()
    }

    /// Every append with a ticket at or below this is on disk: confirm those publishes.
    pub fn synced(&self) -> Ticket {
        self.shared.synced.load(Ordering::SeqCst)
    }

    /// Every write (appends, acks, delivery marks) with a ticket at or below this is on disk.
    /// Acks and marks lag appends by at most [`SIDE_SYNC_INTERVAL`] under continuous load.
    pub fn all_synced(&self) -> Ticket {
        self.shared.all_synced.load(Ordering::SeqCst)
    }

    /// The highest ticket handed out.
    pub fn issued(&self) -> Ticket {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// A receiver of the synced ticket, for a channel's confirm task: whenever it changes,
    /// confirm every pending publish whose ticket is at most the new value. On failure the
    /// value stops moving and [`MessageStore::failure`] says why (nack what is pending).
    pub fn subscribe(&self) -> watch::Receiver<Ticket> {
        self.shared.synced_tx.subscribe()
    }

    /// Waits until `ticket` is synced; fails if the store failed or closed first.
    pub async fn wait_synced(&self, ticket: Ticket) -> Result<(), StoreError> {
        wait_synced(&self.shared, ticket, |s| &s.synced).await
    }

    /// Waits until every write up to `ticket`, acks and delivery marks included, is synced
    /// (a `tx.commit` that acknowledged messages).
    pub async fn wait_all_synced(&self, ticket: Ticket) -> Result<(), StoreError> {
        wait_synced(&self.shared, ticket, |s| &s.all_synced).await
    }

    /// Blocks the calling thread until the append with `ticket` is synced (tools, tests,
    /// benchmarks).
    pub fn wait_synced_blocking(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.wait_blocking(&self.shared.synced, ticket)
    }

    /// Blocks until everything written so far, acks and delivery marks included, is synced
    /// (a transaction commit, shutdown, tests).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.wait_blocking(&self.shared.all_synced, self.issued())
    }

    fn wait_blocking(&self, watermark: &AtomicU64, ticket: Ticket) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut guard = shared.sync_lock.lock();
        loop {
            if watermark.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            if let Some(reason) = shared.failure() {
                return Err(StoreError::Failed(reason));
            }
            if shared.closed.load(Ordering::SeqCst) {
                return Err(StoreError::Failed("message store closed".into()));
            }
            shared
                .sync_cv
                .wait_for(&mut guard, Duration::from_millis(50));
        }
    }

    /// Why the store stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared;
        StoreStats {
            appended: s.appended.load(Ordering::Relaxed),
            buffered_bytes: s.buffered_bytes.load(Ordering::Relaxed),
            rounds: s.rounds.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            synced: s.synced.load(Ordering::SeqCst),
            all_synced: s.all_synced.load(Ordering::SeqCst),
        }
    }

    /// Writes and syncs what is buffered, then stops the flusher. Idempotent.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_flusher();
        let handle = self.flusher.lock().take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            self.shared.fail("flusher thread panicked".into());
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.notify();
    }

    /// Tests: stop the flusher at once, like a crash, dropping buffered writes.
    #[cfg(test)]
    pub(crate) fn halt(&self) {
        self.shared.halt.store(true, Ordering::SeqCst);
        self.shared.wake_flusher();
        let handle = self.flusher.lock().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.notify();
    }

    /// Tests (after [`MessageStore::halt`]): write what is buffered without syncing or
    /// publishing, as a flusher killed between write and fsync would have.
    #[cfg(test)]
    pub(crate) fn write_unsynced(&self) {
        let queues = std::mem::take(&mut *self.shared.dirty.lock());
        for queue in queues {
            let work = queue.take_work();
            if let Some(work) = work {
                let (mut msgs, mut side) = (Unsynced::default(), Unsynced::default());
                let _ = queue.write(work, &mut msgs, &mut side, &mut false);
            }
        }
    }

    /// Tests: for every file of every open queue, the length known to be synced and the
    /// current length.
    #[cfg(test)]
    pub(crate) fn file_lengths(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for queue in self.shared.queues.lock().values() {
            let io = queue.io.lock();
            for (id, seg) in &io.segments {
                for (kind, file) in [
                    (FileKind::Msgs, &seg.msgs),
                    (FileKind::Acks, &seg.acks),
                    (FileKind::Dlvr, &seg.dlvr),
                ] {
                    if file.handle.is_some() || file.synced > 0 {
                        out.push((kind.path(&queue.dir, *id), file.synced));
                    }
                }
            }
        }
        out
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits until `watermark(shared)` reaches `ticket`. Every change of either watermark is
/// announced on the watch channel, so one channel serves both.
pub(super) async fn wait_synced(
    shared: &Shared,
    ticket: Ticket,
    watermark: fn(&Shared) -> &AtomicU64,
) -> Result<(), StoreError> {
    let mut rx = shared.synced_tx.subscribe();
    loop {
        rx.borrow_and_update();
        if watermark(shared).load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        if let Some(reason) = shared.failure() {
            return Err(StoreError::Failed(reason));
        }
        if shared.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Failed("message store closed".into()));
        }
        // The sender lives in `shared`, which outlives this borrow: `changed` cannot fail.
        let _ = rx.changed().await;
    }
}
