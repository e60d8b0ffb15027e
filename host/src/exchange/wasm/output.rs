//! Bounds on what a plugin can make the host say or do after a call returns: every text a
//! plugin hands over (log lines, stdout/stderr lines, error strings, description fields) is cut
//! to [`TEXT_MAX_BYTES`]; a `route` answer may hold at most [`route_ids_max`] ids; per-message
//! warnings of one exchange go through a [`Throttle`] of one line per [`WARN_INTERVAL`].
//!
//! The host's own work on an answer (looking ids up, collecting destinations) counts against
//! the plugin: an answer over the id cap is a failed call without being looked at, and a large
//! answer whose processing takes the call past its deadline is a failed call too (`router.rs`).

use std::borrow::Cow;
use std::time::{Duration, Instant};

/// Longest text kept from a plugin, in bytes; longer ones are cut at a character boundary and
/// followed by a marker saying how many bytes were cut.
pub const TEXT_MAX_BYTES: usize = 1024;

/// Most binding ids one `route` answer may hold when the exchange has fewer bindings than
/// this; an exchange with more bindings allows as many ids as it has bindings.
pub const ROUTE_IDS_MAX: usize = 10_000;

/// Answers with more ids than this have the host's work on them timed (with the thread's CPU
/// clock) and added to the call's time before it is checked against the deadline. Smaller ones
/// cost the host microseconds and are not timed.
pub const ROUTE_IDS_TIMED: usize = 1024;

/// Most header names `init` may select (`header-selection.named`).
pub const HEADER_NAMES_MAX: usize = 256;

/// At most one per-message warning per exchange per this interval; the rest are counted and
/// the count is logged with the next one.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The ids one `route` answer may hold for an exchange with `bindings` bindings.
pub fn route_ids_max(bindings: usize) -> usize {
    ROUTE_IDS_MAX.max(bindings)
}

/// `text` cut to [`TEXT_MAX_BYTES`] at a character boundary, with a marker when cut.
pub fn bounded(text: &str) -> Cow<'_, str> {
    bounded_to(text, TEXT_MAX_BYTES)
}

/// `text` cut to `max` bytes at a character boundary, followed by `…[N bytes cut]` when cut.
pub fn bounded_to(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[{} bytes cut]", &text[..end], text.len() - end))
}

/// Like [`bounded`], for an owned string (no copy when it fits).
pub fn bounded_owned(text: String) -> String {
    match bounded(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cut) => cut,
    }
}

/// One line per interval; counts the lines it holds back.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// A throttle letting one line through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines held back since the last one let through)` if a line may be logged now;
    /// `None` (and the line is counted) otherwise.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Lines held back and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_at_a_char_boundary_with_a_marker() {
        assert_eq!(bounded_to("hello", 10), "hello");
        assert_eq!(bounded_to("héllo", 2), "h…[5 bytes cut]");
        let long = "é".repeat(1000); // 2,000 bytes
        let cut = bounded(&long);
        assert!(cut.starts_with(&"é".repeat(512)));
        assert!(cut.ends_with("…[976 bytes cut]"), "{cut}");
        assert!(cut.len() < TEXT_MAX_BYTES + 32);
        assert_eq!(bounded_owned("short".into()), "short");
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_interval() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.allow(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(throttle.allow(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(throttle.suppressed(), 99);
        assert_eq!(throttle.allow(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(throttle.allow(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn the_id_cap_follows_big_exchanges() {
        assert_eq!(route_ids_max(3), ROUTE_IDS_MAX);
        assert_eq!(route_ids_max(50_000), 50_000);
    }
}
