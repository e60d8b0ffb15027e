//! The outgoing side of a connection: one shared buffer that any task appends frames to, and
//! one writer task that flushes it to the socket, many frames per write.
//!
//! One congestion rule bounds the buffer: above [`CONGESTED_BYTES`] unsent bytes nothing that
//! carries a message is added. Queues stop delivering ([`Writer::write_unless_congested`]),
//! direct reply-to replies are dropped ([`Writer::write_if_room`]), and the connection's own
//! reader stops reading requests (basic.get, publishes that come back as basic.return) until
//! the writer has drained ([`Writer::drained`]). Only small control frames pass regardless.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::write_heartbeat;
use crate::stats::OwnedCounter;

/// Something that stopped writing to a congested connection and wants to hear when it
/// drained (a queue that has deliveries for it). The writer owns this trait so that it never
/// depends on what sits above it.
pub trait DrainWaiter: Send + Sync {
    /// The connection drained below the congestion threshold: try again. Called from the
    /// writer task with no lock held.
    fn drained(self: Arc<Self>);
}

/// Above this many buffered bytes the connection counts as congested: queues stop
/// delivering to it until the writer catches up.
pub const CONGESTED_BYTES: usize = 1 << 20;
/// A flushed buffer larger than this is released rather than kept for reuse.
const KEEP_BUFFER_BYTES: usize = 256 << 10;

/// Frames waiting to be written, shared by the connection's reader, its channels' consumers
/// (called from any publisher's task) and the writer task.
pub struct Writer {
    state: Mutex<WriterState>,
    wake: Notify,
    /// Raised whenever the writer task takes the buffer, for a reader waiting for the
    /// congestion to clear.
    drained: Notify,
    /// The buffer holds at least [`CONGESTED_BYTES`]: set by the write that crosses it, cleared
    /// when the writer task takes the buffer. Read per frame by the connection's reader, so an
    /// atomic rather than the lock.
    congested: AtomicBool,
    frame_max: AtomicU32,
    /// Heartbeat interval in seconds (0 = none), fixed by tune-ok after the task started.
    heartbeat_secs: AtomicU32,
    /// Bytes written to the socket (RabbitMQ's `send_oct`), by the writer task alone.
    pub sent: OwnedCounter,
}

#[derive(Default)]
struct WriterState {
    buf: Vec<u8>,
    closing: bool,
    /// Those that found this connection congested and want a nudge once it drains.
    waiting: Vec<Weak<dyn DrainWaiter>>,
}

impl Writer {
    /// A writer with nothing buffered.
    pub fn new(frame_max: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(WriterState::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            congested: AtomicBool::new(false),
            frame_max: AtomicU32::new(frame_max),
            heartbeat_secs: AtomicU32::new(0),
            sent: OwnedCounter::default(),
        })
    }

    /// The negotiated frame size.
    pub fn frame_max(&self) -> usize {
        self.frame_max.load(Ordering::Relaxed) as usize
    }

    /// Sets the negotiated frame size.
    pub fn set_frame_max(&self, frame_max: u32) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    /// Starts sending heartbeats every `secs` seconds of silence (0 disables).
    pub fn set_heartbeat(&self, secs: u16) {
        self.heartbeat_secs.store(secs.into(), Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Appends frames with `write` and wakes the writer task.
    pub fn write<R>(&self, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let result = {
            let mut state = self.state.lock();
            let result = write(&mut state.buf);
            self.note_size(state.buf.len());
            result
        };
        self.wake.notify_one();
        result
    }

    fn note_size(&self, buffered: usize) {
        if buffered >= CONGESTED_BYTES {
            self.congested.store(true, Ordering::Relaxed);
        }
    }

    /// Appends frames unless the connection is congested or closing; a congested connection
    /// remembers `waiter` and tells it once drained.
    pub fn write_unless_congested<W: DrainWaiter + 'static, R>(
        &self,
        waiter: &Arc<W>,
        write: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> Option<R> {
        self.write_with_room(write, |waiting| {
            let known = waiting
                .iter()
                .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(waiter)));
            if !known {
                let waiter: Weak<dyn DrainWaiter> = Arc::downgrade(waiter) as Weak<dyn DrainWaiter>;
                waiting.push(waiter);
            }
        })
    }

    /// Appends frames unless the connection is congested or closing (a direct reply-to
    /// delivery, which has no queue to wait in).
    pub fn write_if_room<R>(&self, write: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        self.write_with_room(write, |_| {})
    }

    /// The congestion rule: `write` runs only below [`CONGESTED_BYTES`] on an open writer;
    /// `congested` is told about the queues waiting for a drain otherwise.
    fn write_with_room<R>(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> R,
        congested: impl FnOnce(&mut Vec<Weak<dyn DrainWaiter>>),
    ) -> Option<R> {
        let result = {
            let mut state = self.state.lock();
            if state.closing {
                return None;
            }
            if state.buf.len() >= CONGESTED_BYTES {
                congested(&mut state.waiting);
                return None;
            }
            let result = write(&mut state.buf);
            self.note_size(state.buf.len());
            result
        };
        self.wake.notify_one();
        Some(result)
    }

    /// Whether at least [`CONGESTED_BYTES`] wait unsent.
    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed)
    }

    /// Waits until the buffer is below [`CONGESTED_BYTES`] (or the writer closes).
    pub async fn drained(&self) {
        loop {
            let flushed = self.drained.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            {
                let state = self.state.lock();
                if state.closing || state.buf.len() < CONGESTED_BYTES {
                    return;
                }
            }
            flushed.await;
        }
    }

    /// Flushes what is buffered, then closes the socket.
    pub fn close(&self) {
        self.state.lock().closing = true;
        self.wake.notify_one();
    }

    /// Writes buffered frames until closed or the socket fails; sends a heartbeat when nothing
    /// was written for `heartbeat`.
    pub async fn run(self: Arc<Self>, mut socket: super::SocketWrite) {
        let mut spare: Vec<u8> = Vec::new();
        let mut last_write = Instant::now();
        loop {
            let (closing, waiting, was_congested) = {
                let mut state = self.state.lock();
                std::mem::swap(&mut state.buf, &mut spare);
                // Cleared under the lock: the next write that crosses the threshold sets it.
                let was_congested = self.congested.swap(false, Ordering::Relaxed);
                let waiting = if state.waiting.is_empty() {
                    Vec::new()
                } else {
                    std::mem::take(&mut state.waiting)
                };
                (state.closing, waiting, was_congested)
            };
            // The buffer was just taken: a reader paused on congestion may go on.
            if was_congested {
                self.drained.notify_waiters();
            }
            if !spare.is_empty() {
                if socket.write_all(&spare).await.is_err() {
                    break;
                }
                self.sent.add(spare.len() as u64);
                last_write = Instant::now();
                spare.clear();
                if spare.capacity() > KEEP_BUFFER_BYTES {
                    spare = Vec::new();
                }
            }
            for waiter in waiting.iter().filter_map(Weak::upgrade) {
                waiter.drained();
            }
            if closing {
                // Frames appended while the last batch was written still go out.
                let rest = std::mem::take(&mut self.state.lock().buf);
                let _ = socket.write_all(&rest).await;
                break;
            }
            if !self.state.lock().buf.is_empty() {
                continue;
            }
            let heartbeat = match self.heartbeat_secs.load(Ordering::Relaxed) {
                0 => None,
                secs => Some(Duration::from_secs(secs.into())),
            };
            match heartbeat {
                Some(interval) => {
                    let due = last_write + interval;
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(due) => {
                            if last_write + interval <= Instant::now() {
                                write_heartbeat(&mut self.state.lock().buf);
                            }
                        }
                    }
                }
                None => self.wake.notified().await,
            }
        }
        let _ = socket.shutdown().await;
        self.state.lock().closing = true;
        self.drained.notify_waiters();
    }

    /// Whether the writer has stopped (socket closed or close requested).
    pub fn is_closing(&self) -> bool {
        self.state.lock().closing
    }
}
