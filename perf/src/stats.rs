//! Shared counters, error samples, the latency histogram, the send-time stamp in bodies, and the
//! per-publisher sequence numbers that `--check-order` verifies.

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
    /// `--check-order`: deliveries whose sequence word was checked, and what was wrong.
    pub order: OrderCounts,
    error_samples: Mutex<Vec<String>>,
}

/// What the consumers' [`OrderCheck`]s found, summed over consumers.
#[derive(Debug, Default)]
pub struct OrderCounts {
    /// Deliveries checked.
    pub checked: AtomicU64,
    /// Deliveries that were the next message of their publisher.
    pub in_order: AtomicU64,
    /// Jumps forward: a later message arrived before one or more earlier ones.
    pub gaps: AtomicU64,
    /// Messages skipped over by those jumps (missing, or still to come out of order).
    pub skipped: AtomicU64,
    /// Deliveries at or behind a number already seen: duplicates or reordering.
    pub behind: AtomicU64,
    /// Deliveries whose publisher field is out of range (not from this run).
    pub foreign: AtomicU64,
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

/// Bits of the sequence word that carry the message number; the publisher index is above them.
const SEQ_BITS: u32 = 48;

/// The 8-byte sequence word a publisher writes after the send time: publisher index in the top
/// 16 bits, the message's number (from 0, per publisher) in the low 48.
pub fn seq_word(publisher: usize, seq: u64) -> u64 {
    ((publisher as u64) << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1))
}

/// One consumer's view of the sequence words it receives: with one consumer on a queue and no
/// redeliveries, each publisher's messages must arrive exactly once and in publish order, so
/// every delivery is the next number of its publisher.
#[derive(Debug)]
pub struct OrderCheck {
    /// Per publisher, the number expected next.
    next: Vec<u64>,
    checked: u64,
    in_order: u64,
    gaps: u64,
    skipped: u64,
    behind: u64,
    foreign: u64,
}

impl OrderCheck {
    pub fn new(publishers: usize) -> Self {
        Self {
            next: vec![0; publishers],
            checked: 0,
            in_order: 0,
            gaps: 0,
            skipped: 0,
            behind: 0,
            foreign: 0,
        }
    }

    pub fn observe(&mut self, word: u64) {
        self.checked += 1;
        let publisher = (word >> SEQ_BITS) as usize;
        let seq = word & ((1 << SEQ_BITS) - 1);
        let Some(next) = self.next.get_mut(publisher) else {
            self.foreign += 1;
            return;
        };
        if seq == *next {
            self.in_order += 1;
            *next += 1;
        } else if seq > *next {
            self.gaps += 1;
            self.skipped += seq - *next;
            *next = seq + 1;
        } else {
            self.behind += 1;
        }
    }

    /// Adds what was seen since the last flush to the shared counters.
    pub fn flush(&mut self, to: &OrderCounts) {
        for (counter, n) in [
            (&to.checked, &mut self.checked),
            (&to.in_order, &mut self.in_order),
            (&to.gaps, &mut self.gaps),
            (&to.skipped, &mut self.skipped),
            (&to.behind, &mut self.behind),
            (&to.foreign, &mut self.foreign),
        ] {
            if *n > 0 {
                counter.fetch_add(std::mem::take(n), Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_check_counts_gaps_duplicates_and_strangers() {
        let counts = OrderCounts::default();
        let mut check = OrderCheck::new(2);
        for w in [
            seq_word(0, 0),
            seq_word(1, 0),
            seq_word(0, 1),
            seq_word(0, 4), // 2 and 3 skipped
            seq_word(0, 4), // duplicate
            seq_word(0, 2), // late
            seq_word(1, 1),
            seq_word(5, 0), // no such publisher
        ] {
            check.observe(w);
        }
        check.flush(&counts);
        let get = |c: &AtomicU64| c.load(Relaxed);
        assert_eq!(get(&counts.checked), 8);
        assert_eq!(get(&counts.in_order), 4);
        assert_eq!((get(&counts.gaps), get(&counts.skipped)), (1, 2));
        assert_eq!(get(&counts.behind), 2);
        assert_eq!(get(&counts.foreign), 1);
        check.flush(&counts);
        assert_eq!(get(&counts.checked), 8);
    }
}
