//! The memory high watermark, as RabbitMQ's `vm_memory_high_watermark`: the broker samples its
//! own resident memory and, above the watermark, raises an alarm that makes publishing
//! connections stop reading from their sockets until memory falls back (see `connection/` and
//! docs/memory.md).
//!
//! [`MemoryMonitor`] samples `/proc/self/statm` every [`SAMPLE_INTERVAL`] on a tokio task and
//! publishes the alarm through a `watch` channel (for tasks that wait for it to clear) and an
//! atomic (for the read loop's check, one load per read batch). Tasks that must react at once
//! when the alarm sets (an idle publishing connection, which would otherwise only notice at
//! its next read) register a [`Notify`] with [`MemoryMonitor::wake_on_alarm`]: the read loop
//! already waits on one, so an idle connection pays nothing for the alarm.
//!
//! Where `/proc` is unavailable nothing is ever sampled and the alarm never sets.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::config::Config;

/// How often resident memory is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Watches the broker's resident memory against a watermark. Cloning is cheap: clones share
/// one state, and the sampling task stops once every clone is gone.
#[derive(Clone)]
pub struct MemoryMonitor {
    inner: Arc<Inner>,
}

type Sampler = Box<dyn Fn() -> io::Result<u64> + Send + Sync>;

struct Inner {
    /// Above this many resident bytes the alarm sets; `u64::MAX` when unknown (never sets).
    watermark_bytes: AtomicU64,
    /// Mirrors `state` for a cheap read on the connections' hot path.
    alarmed: AtomicBool,
    /// The last resident memory sampled, in bytes; 0 before the first sample.
    rss_bytes: AtomicU64,
    /// The alarm; written only inside `send_if_modified`, which serialises transitions.
    state: watch::Sender<bool>,
    /// Resident memory in bytes (the process's own, except in unit tests).
    sample: Sampler,
    /// Tasks to wake when the alarm sets.
    wakers: Mutex<Wakers>,
}

#[derive(Default)]
struct Wakers {
    tasks: Vec<Weak<Notify>>,
    /// Live entries after the last pruning: the list is pruned when it doubles, so
    /// connections that come and go without an alarm do not grow it without bound.
    live: usize,
}

impl MemoryMonitor {
    /// A monitor of this process's resident memory; nothing is sampled until
    /// [`spawn_sampler`](Self::spawn_sampler) or a watermark change.
    pub fn new(watermark_bytes: u64) -> Self {
        Self::with_sampler(watermark_bytes, process_rss_bytes)
    }

    /// A monitor whose resident memory comes from `sample` (for tests).
    pub fn with_sampler(
        watermark_bytes: u64,
        sample: impl Fn() -> io::Result<u64> + Send + Sync + 'static,
    ) -> Self {
        let (state, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                watermark_bytes: AtomicU64::new(watermark_bytes),
                alarmed: AtomicBool::new(false),
                rss_bytes: AtomicU64::new(0),
                state,
                sample: Box::new(sample),
                wakers: Mutex::new(Wakers::default()),
            }),
        }
    }

    /// The broker's monitor: the watermark from `config` (absolute bytes, or a fraction of
    /// total memory), sampled from now on. Must run inside a tokio runtime.
    pub fn start(config: &Config) -> Self {
        let total = total_memory_bytes().ok();
        let watermark = resolve_watermark(
            config.memory_high_watermark,
            config.memory_high_watermark_bytes,
            total,
        );
        match watermark {
            Some(watermark) => info!(
                watermark,
                total_memory = total,
                fraction = config.memory_high_watermark,
                "memory high watermark set"
            ),
            None => warn!(
                "total memory unknown (no /proc/meminfo): memory alarm disabled; set \
                 memory_high_watermark_bytes to enable it"
            ),
        }
        let monitor = Self::new(watermark.unwrap_or(u64::MAX));
        monitor.spawn_sampler();
        monitor
    }

    /// Starts sampling every [`SAMPLE_INTERVAL`]. The task ends when the monitor is dropped,
    /// or at once if this platform has no `/proc/self/statm`.
    pub fn spawn_sampler(&self) {
        let monitor = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = monitor.upgrade() else {
                    return;
                };
                if let Err(error) = (MemoryMonitor { inner }).evaluate()
                    && matches!(
                        error.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::Unsupported
                    )
                {
                    info!(%error, "resident memory cannot be sampled here: memory alarm disabled");
                    return;
                }
            }
        });
    }

    /// Whether the alarm is on (one atomic load).
    pub fn is_alarmed(&self) -> bool {
        self.inner.alarmed.load(Ordering::Acquire)
    }

    /// The alarm as a watch channel, to wait for it to set or clear.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.state.subscribe()
    }

    /// The watermark in bytes (`u64::MAX` when total memory is unknown and only a fraction
    /// was configured).
    pub fn watermark_bytes(&self) -> u64 {
        self.inner.watermark_bytes.load(Ordering::Relaxed)
    }

    /// The last resident memory sampled, if any sample succeeded.
    pub fn rss_bytes(&self) -> Option<u64> {
        match self.inner.rss_bytes.load(Ordering::Relaxed) {
            0 => None,
            rss => Some(rss),
        }
    }

    /// Changes the watermark and re-evaluates the alarm at once (sampling anew), so the
    /// alarm state is up to date when this returns.
    pub fn set_watermark_bytes(&self, watermark: u64) {
        let old = self
            .inner
            .watermark_bytes
            .swap(watermark, Ordering::Relaxed);
        info!(old, watermark, "memory high watermark changed");
        if let Err(error) = self.evaluate() {
            debug!(%error, "resident memory not sampled");
        }
    }

    /// Wakes `task` (`notify_one`) whenever the alarm sets, until `task` is dropped.
    pub fn wake_on_alarm(&self, task: &Arc<Notify>) {
        let mut wakers = self.inner.wakers.lock();
        if wakers.tasks.len() >= 2 * wakers.live.max(16) {
            wakers.tasks.retain(|w| w.strong_count() > 0);
            wakers.live = wakers.tasks.len();
        }
        wakers.tasks.push(Arc::downgrade(task));
    }

    /// Samples resident memory and sets or clears the alarm. A failed sample leaves the alarm
    /// as it was.
    fn evaluate(&self) -> io::Result<()> {
        let rss = (self.inner.sample)()?;
        self.inner.rss_bytes.store(rss.max(1), Ordering::Relaxed);
        let mut set = false;
        self.inner.state.send_if_modified(|alarmed| {
            // Read under the channel's lock, so a concurrent watermark change is never
            // overwritten by a decision taken with the old watermark.
            let watermark = self.inner.watermark_bytes.load(Ordering::Relaxed);
            let above = rss > watermark;
            if above == *alarmed {
                return false;
            }
            *alarmed = above;
            self.inner.alarmed.store(above, Ordering::Release);
            if above {
                warn!(
                    rss,
                    watermark, "memory alarm set: blocking publishing connections"
                );
            } else {
                info!(
                    rss,
                    watermark, "memory alarm cleared: publishing connections resume"
                );
            }
            set = above;
            true
        });
        if set {
            self.wake_all();
        }
        Ok(())
    }

    fn wake_all(&self) {
        let mut wakers = self.inner.wakers.lock();
        wakers.tasks.retain(|task| match task.upgrade() {
            Some(task) => {
                task.notify_one();
                true
            }
            None => false,
        });
        wakers.live = wakers.tasks.len();
    }
}

/// The watermark in bytes: `bytes` when set, else `fraction` of `total_memory`; `None` when
/// only a fraction is configured and total memory is unknown.
pub fn resolve_watermark(
    fraction: f64,
    bytes: Option<u64>,
    total_memory: Option<u64>,
) -> Option<u64> {
    bytes.or_else(|| total_memory.map(|total| (total as f64 * fraction) as u64))
}

/// This process's resident memory: `/proc/self/statm`'s resident pages times the page size.
pub fn process_rss_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages = parse_statm_resident_pages(&statm)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/self/statm"))?;
    Ok(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// Total memory of the machine: `/proc/meminfo`'s `MemTotal`.
pub fn total_memory_bytes() -> io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo_total_bytes(&meminfo)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemTotal in /proc/meminfo"))
}

/// The second field of `/proc/<pid>/statm` (`size resident shared text lib data dt`, in pages).
fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// `MemTotal:   16318148 kB` in bytes (the kernel's "kB" is KiB).
fn parse_meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut fields = line.split_ascii_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monitor whose "resident memory" the test sets.
    fn fake(watermark: u64) -> (MemoryMonitor, Arc<AtomicU64>) {
        let rss = Arc::new(AtomicU64::new(1000));
        let source = rss.clone();
        let monitor =
            MemoryMonitor::with_sampler(watermark, move || Ok(source.load(Ordering::Relaxed)));
        (monitor, rss)
    }

    #[test]
    fn statm_and_meminfo_parse() {
        assert_eq!(
            parse_statm_resident_pages("52341 3012 1820 412 0 4711 0\n"),
            Some(3012)
        );
        assert_eq!(parse_statm_resident_pages("52341\n"), None);
        assert_eq!(parse_statm_resident_pages("52341 x 1"), None);
        let meminfo = "MemTotal:       16318148 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo_total_bytes(meminfo), Some(16_318_148 * 1024));
        assert_eq!(parse_meminfo_total_bytes("MemFree: 1000 kB\n"), None);
        assert_eq!(parse_meminfo_total_bytes("MemTotal: 1000 MB\n"), None);
    }

    #[test]
    fn watermark_bytes_override_the_fraction() {
        assert_eq!(resolve_watermark(0.4, None, Some(1000)), Some(400));
        assert_eq!(resolve_watermark(0.4, Some(7), Some(1000)), Some(7));
        assert_eq!(resolve_watermark(0.4, Some(7), None), Some(7));
        assert_eq!(resolve_watermark(0.4, None, None), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_resident_memory() {
        let rss = process_rss_bytes().expect("statm readable on Linux");
        let total = total_memory_bytes().expect("meminfo readable on Linux");
        assert!(rss > 1 << 20, "rss {rss}");
        assert!(rss < total, "rss {rss} total {total}");
    }

    #[test]
    fn watermark_changes_take_effect_at_once_and_are_published() {
        let (monitor, _rss) = fake(2000);
        let mut state = monitor.subscribe();
        monitor.set_watermark_bytes(2000);
        assert!(!monitor.is_alarmed(), "1000 bytes is below 2000");
        monitor.set_watermark_bytes(999);
        assert!(monitor.is_alarmed(), "1000 bytes is above 999");
        assert!(state.has_changed().unwrap() && *state.borrow_and_update());
        monitor.set_watermark_bytes(1000);
        assert!(!monitor.is_alarmed(), "at the watermark is not above it");
        assert!(!*state.borrow_and_update());
        assert_eq!(monitor.rss_bytes(), Some(1000));
    }

    #[test]
    fn sampling_sets_and_clears_the_alarm() {
        let (monitor, rss) = fake(2000);
        monitor.evaluate().unwrap();
        assert!(!monitor.is_alarmed());
        rss.store(2001, Ordering::Relaxed);
        monitor.evaluate().unwrap();
        assert!(monitor.is_alarmed());
        rss.store(1500, Ordering::Relaxed);
        monitor.evaluate().unwrap();
        assert!(!monitor.is_alarmed());
    }

    #[test]
    fn a_failed_sample_never_sets_the_alarm_and_keeps_the_state() {
        let failing = MemoryMonitor::with_sampler(1, || Err(io::ErrorKind::NotFound.into()));
        failing.set_watermark_bytes(0);
        assert!(!failing.is_alarmed(), "no sample, no alarm");
        assert_eq!(failing.rss_bytes(), None);

        let ok = Arc::new(AtomicBool::new(true));
        let source = ok.clone();
        let flaky = MemoryMonitor::with_sampler(1, move || {
            if source.load(Ordering::Relaxed) {
                Ok(10)
            } else {
                Err(io::Error::other("EMFILE"))
            }
        });
        flaky.evaluate().unwrap();
        assert!(flaky.is_alarmed());
        ok.store(false, Ordering::Relaxed);
        flaky.set_watermark_bytes(u64::MAX);
        assert!(
            flaky.is_alarmed(),
            "a failed sample leaves the alarm as it was"
        );
    }

    #[test]
    fn registered_tasks_are_woken_when_the_alarm_sets_only() {
        let (monitor, rss) = fake(2000);
        let task = Arc::new(Notify::new());
        monitor.wake_on_alarm(&task);
        let woken = |task: &Notify| {
            // notify_one stores a permit: an already-woken `notified()` completes at once.
            let mut notified = std::pin::pin!(task.notified());
            notified.as_mut().enable()
        };
        rss.store(1500, Ordering::Relaxed);
        monitor.evaluate().unwrap();
        assert!(!woken(&task), "no alarm, no wake-up");
        rss.store(2500, Ordering::Relaxed);
        monitor.evaluate().unwrap();
        assert!(woken(&task), "the alarm set");
        monitor.evaluate().unwrap();
        assert!(!woken(&task), "still on: no second wake-up");
        rss.store(1500, Ordering::Relaxed);
        monitor.evaluate().unwrap();
        assert!(!woken(&task), "clearing does not wake");
    }

    #[test]
    fn dropped_tasks_are_pruned() {
        let (monitor, _) = fake(2000);
        let keep = Arc::new(Notify::new());
        monitor.wake_on_alarm(&keep);
        for _ in 0..1000 {
            monitor.wake_on_alarm(&Arc::new(Notify::new()));
        }
        assert!(
            monitor.inner.wakers.lock().tasks.len() <= 40,
            "dead entries are pruned as the list grows"
        );
        monitor.set_watermark_bytes(1);
        assert_eq!(monitor.inner.wakers.lock().tasks.len(), 1);
    }

    #[tokio::test]
    async fn the_sampler_runs_periodically_and_stops_when_the_monitor_is_dropped() {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let monitor = MemoryMonitor::with_sampler(u64::MAX, move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(1)
        });
        monitor.spawn_sampler();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::Relaxed) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sampled fewer than 3 times"
            );
            tokio::time::sleep(SAMPLE_INTERVAL / 2).await;
        }
        drop(monitor);
        let sampled = calls.load(Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_INTERVAL * 4).await;
        assert!(
            calls.load(Ordering::Relaxed) <= sampled + 1,
            "the task stopped"
        );
    }
}
