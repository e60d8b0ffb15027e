//! Process-wide counters of WASM routing, readable from Rust with [`super::status`] (for
//! metrics and tests). Per-exchange figures are in [`super::ExchangeStatus`].

use std::sync::atomic::{AtomicU64, Ordering};

/// One process-wide counter.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// Messages routed by a plugin call.
    Routed,
    /// Failed calls, whatever the reason.
    Failures,
    /// Calls stopped at their deadline.
    Deadlines,
    /// Calls stopped at a memory or table cap.
    Caps,
    /// Other traps.
    Traps,
    /// `route` results holding ids that were not bound.
    UnknownIds,
    /// Instances replaced after a failure.
    Replaced,
    /// Exchanges marked failed.
    ExchangesFailed,
}

/// The counters.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; 8]);

impl Counters {
    /// All zero.
    pub const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; 8])
    }

    /// Adds one.
    pub fn add(&self, counter: Counter) {
        self.0[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> GlobalStatus {
        let get = |c: Counter| self.0[c as usize].load(Ordering::Relaxed);
        GlobalStatus {
            routed: get(Counter::Routed),
            failures: get(Counter::Failures),
            deadlines: get(Counter::Deadlines),
            caps: get(Counter::Caps),
            traps: get(Counter::Traps),
            unknown_id_results: get(Counter::UnknownIds),
            replaced: get(Counter::Replaced),
            exchanges_failed: get(Counter::ExchangesFailed),
        }
    }
}

/// Process-wide totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalStatus {
    /// Messages routed by a plugin call (cache hits excluded).
    pub routed: u64,
    /// Failed calls.
    pub failures: u64,
    /// Calls stopped at their deadline.
    pub deadlines: u64,
    /// Calls stopped at a memory or table cap.
    pub caps: u64,
    /// Other traps.
    pub traps: u64,
    /// `route` results holding ids that were not bound.
    pub unknown_id_results: u64,
    /// Instances replaced after a failure.
    pub replaced: u64,
    /// Exchanges marked failed.
    pub exchanges_failed: u64,
}
