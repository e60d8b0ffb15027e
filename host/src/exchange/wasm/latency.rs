//! The call latency of one WASM exchange, for its stats (p50, p99): one `route` call in
//! [`SAMPLE_EVERY`] is timed (two clock reads cost about as much as a small plugin's call, so
//! timing every call would show in the routing benchmark) into a log-linear histogram, four
//! buckets per power of two (each quantile within 12.5% of the truth). Kept under the
//! exchange's routing lock: plain integers, no atomics.

use std::time::Duration;

/// One call in this many is timed.
pub const SAMPLE_EVERY: u64 = 8;

/// Calls under 64 ns share the first bucket; the last holds everything from about 9 minutes.
const FIRST_OCTAVE: u32 = 6;
const OCTAVES: usize = 34;
const PER_OCTAVE: usize = 4;
const BUCKETS: usize = 1 + OCTAVES * PER_OCTAVE;

/// Sampled call durations.
#[derive(Debug, Clone)]
pub struct Latency {
    buckets: Box<[u64; BUCKETS]>,
    samples: u64,
    calls: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            buckets: Box::new([0; BUCKETS]),
            samples: 0,
            calls: 0,
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < 1 << FIRST_OCTAVE {
        return 0;
    }
    let exp = 63 - ns.leading_zeros();
    let sub = ((ns >> (exp - 2)) & 3) as usize;
    let octave = (exp - FIRST_OCTAVE) as usize;
    (1 + octave * PER_OCTAVE + sub).min(BUCKETS - 1)
}

/// The middle of bucket `index`, in nanoseconds.
fn middle(index: usize) -> u64 {
    if index == 0 {
        return 32;
    }
    let octave = (index - 1) / PER_OCTAVE;
    let sub = ((index - 1) % PER_OCTAVE) as u64;
    let exp = octave as u32 + FIRST_OCTAVE;
    let width = 1u64 << (exp - 2);
    (4 + sub) * width + width / 2
}

impl Latency {
    /// Counts one call; true when this one should be timed.
    pub fn should_time(&mut self) -> bool {
        self.calls += 1;
        self.calls % SAMPLE_EVERY == 1
    }

    /// Records a timed call.
    pub fn record(&mut self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket(ns)] += 1;
        self.samples += 1;
    }

    /// Calls timed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The duration `q` (0 to 1) of the timed calls were at most; None before any.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.samples == 0 {
            return None;
        }
        let target = ((q.clamp(0.0, 1.0) * self.samples as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(Duration::from_nanos(middle(index)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_an_eighth_of_the_recorded_durations() {
        let mut l = Latency::default();
        assert_eq!(l.quantile(0.5), None);
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us));
        }
        let p50 = l.quantile(0.5).unwrap().as_nanos() as f64;
        let p99 = l.quantile(0.99).unwrap().as_nanos() as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.125, "p50 {p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.125, "p99 {p99}");
        assert_eq!(l.samples(), 100);
    }

    #[test]
    fn extremes_land_in_the_end_buckets() {
        let mut l = Latency::default();
        l.record(Duration::from_nanos(1));
        l.record(Duration::from_secs(100_000));
        assert_eq!(l.quantile(0.0), Some(Duration::from_nanos(32)));
        assert!(l.quantile(1.0).unwrap() > Duration::from_secs(300));
    }

    #[test]
    fn one_call_in_sample_every_is_timed() {
        let mut l = Latency::default();
        let timed = (0..SAMPLE_EVERY * 10).filter(|_| l.should_time()).count();
        assert_eq!(timed as u64, 10);
    }
}
