//! What a vhost admits from its publishers beyond the per-queue flow control: a publish rate
//! (`max-publish-rate`, messages per second over all its connections) and a ceiling on the
//! body bytes its queues hold ready (`max-queued-bytes`). Neither refuses a message: both slow
//! or stop the publishing connections of this vhost only, as RabbitMQ's credit flow and memory
//! alarm do for the whole broker, so a tenant reaching its share leaves the others untouched
//! (docs/tenancy.md).
//!
//! The data path pays one atomic load per read turn for each while they are off. The rate is
//! charged once per turn with the publishes that turn carried (a token bucket holding one
//! second of the rate); the queued bytes are sampled every [`SAMPLE_INTERVAL`] by the broker
//! (`VHost::sample_queued_bytes`), so a vhost may overshoot its ceiling by what its publishers
//! send in one interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

/// How often the broker sums each limited vhost's queued bytes.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The longest a connection waits for its vhost's publish rate before it looks again (a rate
/// lowered or lifted meanwhile then takes effect).
const RATE_WAIT_MAX: Duration = Duration::from_secs(1);

/// A vhost's publish rate and queued-bytes ceiling, and their state.
#[derive(Debug)]
pub struct Admission {
    /// Messages per second; 0: no limit.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    /// Body bytes of ready messages; `u64::MAX`: no limit.
    queued_bytes_max: AtomicU64,
    /// The last sample of the vhost's queued bytes.
    queued_bytes: AtomicU64,
    /// Whether the last sample was at or above the ceiling (mirrors `full`).
    over: AtomicBool,
    full: watch::Sender<bool>,
}

#[derive(Debug)]
struct Bucket {
    /// Messages that may still be published now; negative: owed.
    tokens: f64,
    at: Instant,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            rate: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
            queued_bytes_max: AtomicU64::new(u64::MAX),
            queued_bytes: AtomicU64::new(0),
            over: AtomicBool::new(false),
            full: watch::Sender::new(false),
        }
    }
}

impl Admission {
    /// Sets the publish rate (0: none) and the queued-bytes ceiling (`u64::MAX`: none).
    pub fn set(&self, rate: u64, queued_bytes_max: u64) {
        if self.rate.swap(rate, Ordering::AcqRel) != rate {
            // A new rate starts with a full second of it.
            *self.bucket.lock() = Bucket {
                tokens: rate as f64,
                at: Instant::now(),
            };
        }
        self.queued_bytes_max
            .store(queued_bytes_max, Ordering::Release);
        if queued_bytes_max == u64::MAX {
            self.record(0, false);
        }
    }

    /// Charges `published` messages against the rate; returns how long the publisher should
    /// stop reading before it asks again (with 0), if its vhost is over its rate. A wait is
    /// at most [`RATE_WAIT_MAX`], so a rate changed meanwhile is seen.
    pub fn charge(&self, published: u32) -> Option<Duration> {
        let rate = self.rate.load(Ordering::Acquire);
        if rate == 0 {
            return None;
        }
        let rate = rate as f64;
        let mut bucket = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate) - f64::from(published);
        bucket.at = now;
        (bucket.tokens < 0.0)
            .then(|| Duration::from_secs_f64(-bucket.tokens / rate).min(RATE_WAIT_MAX))
    }

    /// The queued-bytes ceiling, when one is set.
    pub fn queued_bytes_max(&self) -> Option<u64> {
        let max = self.queued_bytes_max.load(Ordering::Acquire);
        (max != u64::MAX).then_some(max)
    }

    /// Whether the vhost's queues held at least `max-queued-bytes` at the last sample: its
    /// publishing connections stop reading.
    pub fn is_full(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Changes when [`Admission::is_full`] does.
    pub fn subscribe_full(&self) -> watch::Receiver<bool> {
        self.full.subscribe()
    }

    /// The last sample of the vhost's ready body bytes (0 without a ceiling).
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Records a sample of the vhost's queued bytes.
    pub(crate) fn record(&self, bytes: u64, over: bool) {
        self.queued_bytes.store(bytes, Ordering::Relaxed);
        self.over.store(over, Ordering::Release);
        self.full.send_if_modified(|full| {
            let changed = *full != over;
            *full = over;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_one_second_and_charges_what_is_owed() {
        let admission = Admission::default();
        assert_eq!(admission.charge(1_000_000), None, "no rate: never waits");
        admission.set(100, u64::MAX);
        assert_eq!(
            admission.charge(100),
            None,
            "a second's worth passes at once"
        );
        let wait = admission.charge(50).expect("over the rate");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        let longer = admission.charge(500).expect("still over");
        assert_eq!(
            longer, RATE_WAIT_MAX,
            "a wait is capped so a new rate is seen"
        );
        assert_eq!(
            admission.charge(0),
            Some(RATE_WAIT_MAX),
            "what is owed stays owed after a capped wait"
        );
        admission.set(0, u64::MAX);
        assert_eq!(
            admission.charge(1_000),
            None,
            "lifting the rate ends the waits"
        );
    }

    #[test]
    fn full_follows_the_samples_and_clears_when_the_ceiling_goes() {
        let admission = Admission::default();
        let mut full = admission.subscribe_full();
        admission.set(0, 1_000);
        assert_eq!(admission.queued_bytes_max(), Some(1_000));
        admission.record(1_500, true);
        assert!(admission.is_full());
        assert!(full.has_changed().expect("sender alive"));
        assert!(*full.borrow_and_update());
        admission.set(0, u64::MAX);
        assert!(!admission.is_full(), "no ceiling: never full");
        assert!(!*full.borrow_and_update());
        assert_eq!(admission.queued_bytes_max(), None);
    }
}
