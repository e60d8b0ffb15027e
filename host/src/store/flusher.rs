//! The flusher thread of a [`MessageStore`](super::MessageStore): group commit. Each round takes
//! every dirty queue's buffers, writes them to the segment, ack and delivery files, fdatasyncs
//! the segment files once, and then publishes the highest ticket issued before the round as
//! `synced`; ack and delivery files are synced lazily (see [`SIDE_SYNC_INTERVAL`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::StoreError;
use super::messages::{Position, SIDE_SYNC_INTERVAL, SPARE_MAX_BYTES, Shared};
use super::queue_store::{Chunk, QueueInner, message_bytes};
use super::segment;
use super::sync_dir;

#[derive(Default)]
pub(super) struct QueueIo {
    /// Set under this lock when the directory is renamed away: write nothing more.
    pub(super) deleted: bool,
    pub(super) segments: std::collections::BTreeMap<u32, SegmentIo>,
}

#[derive(Default)]
pub(super) struct SegmentIo {
    pub(super) msgs: FileIo,
    pub(super) acks: FileIo,
    pub(super) dlvr: FileIo,
}

#[derive(Default)]
pub(super) struct FileIo {
    pub(super) handle: Option<Arc<File>>,
    /// Bytes written.
    pub(super) len: u64,
    /// Bytes known to be fdatasynced.
    pub(super) synced: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum FileKind {
    Msgs,
    Acks,
    Dlvr,
}

impl FileKind {
    pub(super) fn path(self, dir: &Path, segment: u32) -> PathBuf {
        match self {
            FileKind::Msgs => segment::msgs_path(dir, segment),
            FileKind::Acks => segment::acks_path(dir, segment),
            FileKind::Dlvr => segment::dlvr_path(dir, segment),
        }
    }
}

/// What the flusher took from one queue in one round.
pub(super) struct Work {
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
    /// Flusher: takes the buffered writes, moving message chunks to `inflight`.
    pub(super) fn take_work(&self) -> Option<Work> {
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
    pub(super) fn write(
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
            // A store that does not sync is never recovered: its acks and delivery marks only
            // count (segments are reclaimed from the counts), nothing reads them back.
            if positions.is_empty() || !self.shared.options.sync {
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
pub(super) struct Unsynced {
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

    /// A store that does not sync: what was written counts as done.
    fn forget_all(&mut self) {
        self.files.clear();
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

/// How long the flusher of a store that does not sync waits after a round with work before
/// the next: without an fsync to gather the next batch in, rounds back to back wrote a few
/// messages each and fought the publishers for the queue's lock (a publisher into a
/// consumer-less queue spent more CPU paging than routing).
const GATHER_WITHOUT_SYNC: Duration = Duration::from_millis(1);

/// The flusher thread: rounds back to back while there is work (each round's fsync is the
/// time in which the next batch gathers), sleeping when there is none.
pub(super) fn flusher_loop(shared: &Arc<Shared>) {
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
            Ok(true) => {
                if !shared.options.sync && !stopping {
                    thread::sleep(GATHER_WITHOUT_SYNC);
                }
                continue;
            }
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
    // The plugin state journal: written and fdatasynced here, before `synced` moves.
    let plugin_state = shared.plugin_state.get();
    let state_written = match plugin_state {
        Some(core) => core.flush()?,
        None => None,
    };
    if let Some(bytes) = state_written {
        written += bytes;
    }
    let sync_side = !side.unsynced.is_empty()
        && (msgs.is_empty() || side.last_sync.elapsed() >= SIDE_SYNC_INTERVAL);
    let mut fsyncs = 0;
    if shared.options.sync {
        fsyncs += msgs.sync()?;
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
    } else {
        msgs.forget_all();
        side.unsynced.forget_all();
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
    if state_written.is_some() {
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        // After the confirms went out: a snapshot delays only the next round.
        if let Some(core) = plugin_state {
            core.compact_if_due()?;
        }
    }
    Ok(!queues.is_empty() || state_written.is_some())
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
