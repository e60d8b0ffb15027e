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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use amq_protocol::protocol::basic::parse_properties;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::frame::{self, Next};
use super::segment::{self, SEGMENT_HEADER, SEGMENT_HEADER_LEN};
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl StoreOptions {
    /// The options set in the broker's [`Config`](crate::Config).
    pub fn from_config(config: &crate::Config) -> Self {
        StoreOptions {
            segment_max_bytes: config.segment_max_bytes,
        }
    }
}

/// Largest segment size accepted: keeps every offset inside a u32 even with a maximal record.
pub const SEGMENT_MAX_BYTES_LIMIT: u32 = 1 << 30;
/// Largest record: offsets stay below 2^32 (segment limit + one record).
const MAX_RECORD: usize = 2 << 30;
/// Longest ack and delivery files stay written but unsynced under continuous publishing.
pub const SIDE_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Largest write buffer a queue keeps for reuse after a round.
const SPARE_MAX_BYTES: usize = 1 << 20;

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
    /// Rebuilds the broker's [`Message`], decoding the properties from their raw bytes.
    pub fn into_message(self) -> Result<Message, StoreError> {
        let properties = match parse_properties(&self.raw_properties[..]) {
            Ok((_, properties)) => properties,
            Err(_) => {
                return Err(StoreError::Invalid(
                    "stored message properties do not decode".into(),
                ));
            }
        };
        Ok(Message {
            exchange: self.exchange,
            routing_key: self.routing_key,
            properties,
            raw_properties: self.raw_properties,
            body: self.body,
        })
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
struct Shared {
    dir: PathBuf,
    options: StoreOptions,
    /// Last ticket handed out.
    issued: AtomicU64,
    /// Every append with a ticket up to this is on disk.
    synced: AtomicU64,
    /// Every write (acks and delivery marks too) with a ticket up to this is on disk.
    all_synced: AtomicU64,
    synced_tx: watch::Sender<Ticket>,
    /// Blocking waiters on `synced`.
    sync_lock: Mutex<()>,
    sync_cv: Condvar,
    /// Set by the first failed write or fsync (or by close); never cleared.
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Queues with buffered writes, in the order they became dirty.
    dirty: Mutex<Vec<Arc<QueueInner>>>,
    /// Directories of deleted queues, to be removed by the flusher.
    trash: Mutex<Vec<PathBuf>>,
    /// Open queues by name.
    queues: Mutex<HashMap<String, Arc<QueueInner>>>,
    flusher: OnceLock<Thread>,
    /// The flusher has exited: nothing more will be synced.
    closed: AtomicBool,
    /// Ask the flusher to finish what is buffered and exit.
    stop: AtomicBool,
    /// Tests: ask the flusher to exit at once, dropping what is buffered (a crash).
    halt: AtomicBool,
    appended: AtomicU64,
    buffered_bytes: AtomicU64,
    rounds: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    trash_seq: AtomicU64,
}

impl Shared {
    fn fail(&self, reason: String) {
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

    fn publish(&self, appends: Ticket, all: Option<Ticket>) {
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

    fn wake_flusher(&self) {
        if let Some(thread) = self.flusher.get() {
            thread.unpark();
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
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
        });

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
async fn wait_synced(
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

/// The store of one durable queue. Cheap to clone; all clones are the same store.
#[derive(Clone)]
pub struct QueueStore {
    inner: Arc<QueueInner>,
}

impl std::fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore")
            .field("name", &self.inner.name)
            .finish()
    }
}

struct QueueInner {
    name: String,
    dir: PathBuf,
    shared: Arc<Shared>,
    /// What appends, acks and reads touch: buffers and per-segment counts. Held briefly.
    state: Mutex<QueueState>,
    /// What only the flusher (and deletion) touches: file handles and lengths. Held while
    /// writing, never while fsyncing, never together with `state`.
    io: Mutex<QueueIo>,
}

struct QueueState {
    deleted: bool,
    /// In the store's dirty list (or taken from it and not yet drained by the flusher).
    dirty: bool,
    head: u32,
    head_len: u32,
    /// Message bytes not yet taken by the flusher, per segment, in order.
    pending: Vec<Chunk>,
    /// Chunks the flusher took and has not finished writing (reads look here too).
    inflight: Vec<Arc<Chunk>>,
    acks: Vec<Position>,
    dlvr: Vec<Position>,
    /// Fully acknowledged segments to delete.
    reclaim: Vec<u32>,
    segments: std::collections::BTreeMap<u32, SegmentCount>,
    /// Buffers the flusher gave back, to avoid regrowing one per round.
    spare: Vec<Vec<u8>>,
}

struct SegmentCount {
    messages: u32,
    acked: u32,
    /// For reads; set once the file exists on disk.
    file: Option<Arc<File>>,
}

struct Chunk {
    segment: u32,
    offset: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct QueueIo {
    /// Set under this lock when the directory is renamed away: write nothing more.
    deleted: bool,
    segments: std::collections::BTreeMap<u32, SegmentIo>,
}

#[derive(Default)]
struct SegmentIo {
    msgs: FileIo,
    acks: FileIo,
    dlvr: FileIo,
}

#[derive(Default)]
struct FileIo {
    handle: Option<Arc<File>>,
    /// Bytes written.
    len: u64,
    /// Bytes known to be fdatasynced.
    synced: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum FileKind {
    Msgs,
    Acks,
    Dlvr,
}

impl FileKind {
    fn path(self, dir: &Path, segment: u32) -> PathBuf {
        match self {
            FileKind::Msgs => segment::msgs_path(dir, segment),
            FileKind::Acks => segment::acks_path(dir, segment),
            FileKind::Dlvr => segment::dlvr_path(dir, segment),
        }
    }
}

/// What the flusher took from one queue in one round.
struct Work {
    chunks: Vec<Arc<Chunk>>,
    acks: Vec<Position>,
    dlvr: Vec<Position>,
    reclaim: Vec<u32>,
}

/// A written file to fdatasync.
struct ToSync {
    queue: Arc<QueueInner>,
    segment: u32,
    kind: FileKind,
    file: Arc<File>,
    len: u64,
}

impl QueueInner {
    fn recovered(
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

    /// Flusher: takes the buffered writes, moving message chunks to `inflight`.
    fn take_work(&self) -> Option<Work> {
        let mut state = self.state.lock();
        state.dirty = false;
        if state.deleted {
            return None;
        }
        let chunks: Vec<Arc<Chunk>> = state.pending.drain(..).map(Arc::new).collect();
        state.inflight.extend(chunks.iter().cloned());
        Some(Work {
            chunks,
            acks: std::mem::take(&mut state.acks),
            dlvr: std::mem::take(&mut state.dlvr),
            reclaim: std::mem::take(&mut state.reclaim),
        })
    }

    /// Flusher: writes one queue's work, noting each written segment file in `msgs` and each
    /// ack or delivery file in `side`, and whether directory entries changed in
    /// `dir_changed`. Returns bytes written.
    fn write(
        self: &Arc<Self>,
        work: Work,
        msgs: &mut Unsynced,
        side: &mut Unsynced,
        dir_changed: &mut bool,
    ) -> Result<u64, StoreError> {
        let mut io = self.io.lock();
        if io.deleted {
            drop(io);
            let skipped: u64 = work.chunks.iter().map(|c| message_bytes(c)).sum();
            self.shared
                .buffered_bytes
                .fetch_sub(skipped, Ordering::Relaxed);
            self.state.lock().inflight.clear();
            return Ok(0);
        }
        let mut written = 0u64;
        let mut opened = Vec::new();
        for chunk in &work.chunks {
            let seg = io.segments.entry(chunk.segment).or_default();
            let file = match &seg.msgs.handle {
                Some(file) => file.clone(),
                None => {
                    let path = segment::msgs_path(&self.dir, chunk.segment);
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(StoreError::io("create", &path))?;
                    let file = Arc::new(file);
                    seg.msgs.handle = Some(file.clone());
                    opened.push((chunk.segment, file.clone()));
                    *dir_changed = true;
                    file
                }
            };
            file.write_all_at(&chunk.data, u64::from(chunk.offset))
                .map_err(StoreError::io(
                    "write",
                    &segment::msgs_path(&self.dir, chunk.segment),
                ))?;
            written += chunk.data.len() as u64;
            self.shared
                .buffered_bytes
                .fetch_sub(message_bytes(chunk), Ordering::Relaxed);
            seg.msgs.len = seg
                .msgs
                .len
                .max(u64::from(chunk.offset) + chunk.data.len() as u64);
            msgs.note(self, chunk.segment, FileKind::Msgs, &file, seg.msgs.len);
        }
        for (kind, positions) in [(FileKind::Acks, &work.acks), (FileKind::Dlvr, &work.dlvr)] {
            if positions.is_empty() {
                continue;
            }
            // Group by segment, keeping order; skip segments reclaimed in this same round.
            let mut by_segment: Vec<(u32, Vec<u8>)> = Vec::new();
            for pos in positions {
                if work.reclaim.contains(&pos.segment()) {
                    continue;
                }
                let entry = segment::offset_entry(pos.offset());
                match by_segment.iter_mut().find(|(s, _)| *s == pos.segment()) {
                    Some((_, buf)) => buf.extend_from_slice(&entry),
                    None => by_segment.push((pos.segment(), entry.to_vec())),
                }
            }
            for (id, buf) in by_segment {
                let seg = io.segments.entry(id).or_default();
                let file_io = match kind {
                    FileKind::Acks => &mut seg.acks,
                    _ => &mut seg.dlvr,
                };
                let file = match &file_io.handle {
                    Some(file) => file.clone(),
                    None => {
                        let path = kind.path(&self.dir, id);
                        let file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&path)
                            .map_err(StoreError::io("create", &path))?;
                        if file_io.len == 0 {
                            *dir_changed = true;
                        }
                        let file = Arc::new(file);
                        file_io.handle = Some(file.clone());
                        file
                    }
                };
                file.write_all_at(&buf, file_io.len)
                    .map_err(StoreError::io("write", &kind.path(&self.dir, id)))?;
                written += buf.len() as u64;
                file_io.len += buf.len() as u64;
                side.note(self, id, kind, &file, file_io.len);
            }
        }
        for id in &work.reclaim {
            io.segments.remove(id);
            msgs.forget(self, *id);
            side.forget(self, *id);
            segment::remove_segment_files(&self.dir, *id)?;
            *dir_changed = true;
        }
        drop(io);

        // The chunks are in the page cache now: reads go to the files.
        let mut state = self.state.lock();
        state.inflight.clear();
        for (id, file) in opened {
            if let Some(count) = state.segments.get_mut(&id) {
                count.file = Some(file);
            }
        }
        drop(state);
        let mut spare = Vec::new();
        for chunk in work.chunks {
            // Keep modest buffers for reuse; a burst's large one is freed.
            if let Ok(mut chunk) = Arc::try_unwrap(chunk)
                && chunk.data.capacity() <= SPARE_MAX_BYTES
            {
                chunk.data.clear();
                spare.push(chunk.data);
            }
        }
        if !spare.is_empty() {
            let mut state = self.state.lock();
            while state.spare.len() < 2 {
                match spare.pop() {
                    Some(buf) => state.spare.push(buf),
                    None => break,
                }
            }
        }
        Ok(written)
    }
}

/// Files written and not yet fdatasynced, one entry per file.
#[derive(Default)]
struct Unsynced {
    files: HashMap<(usize, u32, FileKind), ToSync>,
}

impl Unsynced {
    /// Records that `file` must be synced up to `len`.
    fn note(
        &mut self,
        queue: &Arc<QueueInner>,
        segment: u32,
        kind: FileKind,
        file: &Arc<File>,
        len: u64,
    ) {
        let key = (Arc::as_ptr(queue) as usize, segment, kind);
        self.files
            .entry(key)
            .and_modify(|entry| entry.len = len)
            .or_insert_with(|| ToSync {
                queue: queue.clone(),
                segment,
                kind,
                file: file.clone(),
                len,
            });
    }

    /// A reclaimed segment's files are gone: nothing to sync.
    fn forget(&mut self, queue: &Arc<QueueInner>, segment: u32) {
        let ptr = Arc::as_ptr(queue) as usize;
        self.files
            .retain(|&(q, s, _), _| !(q == ptr && s == segment));
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// fdatasyncs every file, records the synced lengths, and empties the set. Returns the
    /// number of fsyncs.
    fn sync(&mut self) -> Result<u64, StoreError> {
        for entry in self.files.values() {
            entry.file.sync_data().map_err(StoreError::io(
                "fdatasync",
                &entry.kind.path(&entry.queue.dir, entry.segment),
            ))?;
        }
        let n = self.files.len() as u64;
        for (_, entry) in self.files.drain() {
            let mut io = entry.queue.io.lock();
            if let Some(seg) = io.segments.get_mut(&entry.segment) {
                let file = match entry.kind {
                    FileKind::Msgs => &mut seg.msgs,
                    FileKind::Acks => &mut seg.acks,
                    FileKind::Dlvr => &mut seg.dlvr,
                };
                file.synced = file.synced.max(entry.len);
            }
        }
        Ok(n)
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
            &message.exchange,
            &message.routing_key,
            &message.raw_properties,
            &message.body,
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
                Next::Record(payload, _) => self.stored(payload.to_vec(), offset),
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
                self.stored(record, offset)
            }
            Next::End | Next::Bad(_) => Err(self.corrupt(offset, "record checksum mismatch")),
        }
    }

    fn stored(&self, payload: Vec<u8>, offset: u32) -> Result<StoredMessage, StoreError> {
        let layout =
            segment::decode_message(&payload).map_err(|reason| self.corrupt(offset, reason))?;
        let text = |range: std::ops::Range<usize>| -> Result<Name, StoreError> {
            std::str::from_utf8(&payload[range])
                .map(Name::from)
                .map_err(|_| self.corrupt(offset, "exchange or routing key is not UTF-8"))
        };
        let exchange = text(layout.exchange.clone())?;
        let routing_key = text(layout.routing_key.clone())?;
        let payload = Bytes::from(payload);
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

    /// See [`MessageStore::subscribe`].
    pub fn subscribe(&self) -> watch::Receiver<Ticket> {
        self.inner.shared.synced_tx.subscribe()
    }

    /// See [`MessageStore::wait_synced`].
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
fn message_bytes(chunk: &Chunk) -> u64 {
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

/// The flusher thread: rounds back to back while there is work (each round's fsync is the
/// time in which the next batch gathers), sleeping when there is none.
fn flusher_loop(shared: &Arc<Shared>) {
    let mut side = SideFiles {
        unsynced: Unsynced::default(),
        last_sync: Instant::now(),
    };
    loop {
        if shared.halt.load(Ordering::SeqCst) {
            return;
        }
        let stopping = shared.stop.load(Ordering::SeqCst);
        match round(shared, &mut side) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                shared.fail(error.to_string());
                return;
            }
        }
        empty_trash(shared);
        if stopping {
            return;
        }
        thread::park_timeout(Duration::from_millis(500));
    }
}

/// Ack and delivery files written but not yet synced, across rounds.
struct SideFiles {
    unsynced: Unsynced,
    last_sync: Instant,
}

/// One group commit. Returns whether any queue had work.
///
/// Segment files written in the round are fdatasynced before `synced` moves, so confirms
/// wait for exactly one fsync per touched segment. Ack and delivery files are written every
/// round (a killed process loses none of them) but fdatasynced only when a round has no
/// messages to sync, or every [`SIDE_SYNC_INTERVAL`] under continuous load: syncing them in
/// every round would double the fsyncs a publisher waits for whenever a consumer acks.
fn round(shared: &Arc<Shared>, side: &mut SideFiles) -> Result<bool, StoreError> {
    // Read the target before taking the dirty list: every ticket up to it was issued after
    // its queue was marked dirty, so its bytes are in a buffer taken now or in an earlier
    // round (see `QueueInner::buffered`).
    let target = shared.issued.load(Ordering::SeqCst);
    let queues = std::mem::take(&mut *shared.dirty.lock());
    let mut msgs = Unsynced::default();
    let mut dirs = Vec::new();
    let mut written = 0;
    for queue in &queues {
        let Some(work) = queue.take_work() else {
            continue;
        };
        let mut dir_changed = false;
        written += queue.write(work, &mut msgs, &mut side.unsynced, &mut dir_changed)?;
        if dir_changed {
            dirs.push(queue.dir.clone());
        }
    }
    let sync_side = !side.unsynced.is_empty()
        && (msgs.is_empty() || side.last_sync.elapsed() >= SIDE_SYNC_INTERVAL);
    let mut fsyncs = msgs.sync()?;
    for dir in &dirs {
        if dir.exists() {
            sync_dir(dir)?;
            fsyncs += 1;
        }
    }
    if sync_side {
        fsyncs += side.unsynced.sync()?;
        side.last_sync = Instant::now();
    }
    if !queues.is_empty() {
        shared.rounds.fetch_add(1, Ordering::Relaxed);
    }
    shared.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
    shared.bytes_written.fetch_add(written, Ordering::Relaxed);
    // Nothing written is left unsynced: every write up to the target is durable.
    let all = side.unsynced.is_empty().then_some(target);
    if target > shared.synced.load(Ordering::SeqCst)
        || all.is_some_and(|t| t > shared.all_synced.load(Ordering::SeqCst))
    {
        shared.publish(target, all);
    }
    Ok(!queues.is_empty())
}

fn empty_trash(shared: &Shared) {
    let trash = std::mem::take(&mut *shared.trash.lock());
    for dir in trash {
        if let Err(error) = fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), %error, "cannot remove a deleted queue's directory");
        }
    }
}
