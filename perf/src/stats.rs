//! Shared counters, error samples, the latency histogram and the send-time stamp in bodies.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use hdrhistogram::Histogram;

/// Error samples kept for the report (the count is unbounded, the texts are not).
const MAX_ERROR_SAMPLES: usize = 8;

#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

/// A copy of the counters at one instant.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub sent: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub received: u64,
    pub errors: u64,
}

impl Stats {
    pub fn error(&self, what: impl std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        let mut samples = self.error_samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < MAX_ERROR_SAMPLES {
            let text = what.to_string();
            eprintln!("bourse-perf: error: {text}");
            samples.push(text);
        }
    }

    pub fn error_samples(&self) -> Vec<String> {
        self.error_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Relaxed),
            confirmed: self.confirmed.load(Relaxed),
            nacked: self.nacked.load(Relaxed),
            received: self.received.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// Latencies in microseconds, 1 µs to 1 h, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The process's time origin: publishers and consumers live in one process, so a monotonic
/// clock shared between them gives latencies immune to wall-clock steps.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the process's time origin (called once early in main).
pub fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// Writes the send time into the first 8 bytes of a body (no-op for shorter bodies).
pub fn stamp(body: &mut [u8]) {
    if let Some(head) = body.get_mut(..8) {
        head.copy_from_slice(&now_ns().to_le_bytes());
    }
}

/// Reads the send time of a body and returns its age in microseconds.
pub fn age_us(body: &[u8]) -> Option<u64> {
    let head: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some(age_us_since(u64::from_le_bytes(head)))
}

/// The age in microseconds of a send time read from a body.
pub fn age_us_since(sent_ns: u64) -> u64 {
    now_ns().saturating_sub(sent_ns) / 1000
}
