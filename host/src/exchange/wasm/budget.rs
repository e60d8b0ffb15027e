//! What one vhost's WASM exchanges may use together, changeable while they run: the call
//! deadline and memory cap of each instance, how many instances and how much memory in all,
//! and a CPU budget in milliseconds of plugin calls per second.
//!
//! The CPU budget is a token bucket charged with the engine ticks (1 ms) each call spans: a
//! call shorter than a tick is charged one tick when it straddles one, so the charge is right
//! on average without reading a clock per call. When the bucket is empty the vhost is "in
//! debt": its publishing connections stop reading until it refills (`connection/`, state
//! `flow`), so a hostile plugin costs its own tenant throughput, not the others'.
//!
//! Calls of a vhost that has a long deadline, or whose calls were recently slow, run where
//! blocking is allowed (`crate::blocking`) and one at a time per vhost ("the slow lane"): a
//! tenant's slow plugin then holds at most one thread and never a tokio worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{VhostLimitOverrides, WasmLimits};
use crate::exchange::Invalid;
use crate::limits::Slot;

/// Calls of a vhost whose deadline is at most this run inline on the publisher's thread,
/// unless its calls were recently slow.
pub const INLINE_DEADLINE_MS: u64 = 5;
/// A call spanning this many ticks or more marks its vhost's calls slow...
const SLOW_CALL_TICKS: u64 = 2;
/// ...for this long.
const SLOW_FOR: Duration = Duration::from_secs(10);

/// The budget of one vhost.
#[derive(Debug)]
pub struct VhostBudget {
    vhost: String,
    call_deadline_ms: AtomicU64,
    memory_max_bytes: AtomicU64,
    instances_max: AtomicU32,
    instances: Arc<AtomicU32>,
    memory_total_max: AtomicU64,
    memory_reserved: Arc<AtomicU64>,
    cpu_ms_per_sec: AtomicU64,
    bucket: Mutex<Bucket>,
    in_debt: AtomicBool,
    /// Set by a slow call; `slow_until` says until when.
    slow: AtomicBool,
    slow_until: Mutex<Instant>,
    /// Serialises the calls that run off the async workers.
    lane: Mutex<()>,
}

#[derive(Debug)]
struct Bucket {
    /// Milliseconds of calls still allowed now (negative: owed).
    balance_ms: f64,
    refilled: Instant,
}

/// The values a [`VhostBudget`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Deadline of one `route` call.
    pub call_deadline_ms: u64,
    /// Memory cap of one instance (at most the engine's slot size, fixed at start-up).
    pub memory_max_bytes: u64,
    /// Instances (WASM exchanges) alive at once.
    pub instances_max: u32,
    /// Sum of the memory caps of the live instances (`u64::MAX`: unlimited).
    pub memory_total_bytes: u64,
    /// Milliseconds of calls per second (0: unlimited).
    pub cpu_ms_per_sec: u64,
}

impl BudgetLimits {
    /// The budget part of `limits`, with `instances_max`.
    pub fn of(limits: &WasmLimits, instances_max: u32) -> Self {
        Self {
            call_deadline_ms: limits.call_deadline_ms,
            memory_max_bytes: limits.memory_max_bytes,
            instances_max,
            memory_total_bytes: limits.memory_total_bytes,
            cpu_ms_per_sec: limits.cpu_ms_per_sec,
        }
    }
}

impl VhostBudget {
    /// A budget for `vhost` with `limits`.
    pub fn new(vhost: &str, limits: BudgetLimits) -> Arc<Self> {
        let budget = Self {
            vhost: vhost.to_owned(),
            call_deadline_ms: AtomicU64::new(0),
            memory_max_bytes: AtomicU64::new(0),
            instances_max: AtomicU32::new(0),
            instances: Arc::new(AtomicU32::new(0)),
            memory_total_max: AtomicU64::new(0),
            memory_reserved: Arc::new(AtomicU64::new(0)),
            cpu_ms_per_sec: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                balance_ms: 0.0,
                refilled: Instant::now(),
            }),
            in_debt: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            slow_until: Mutex::new(Instant::now()),
            lane: Mutex::new(()),
        };
        budget.set(limits);
        budget.bucket.lock().balance_ms = limits.cpu_ms_per_sec as f64;
        Arc::new(budget)
    }

    /// Changes the limits: the deadline applies to the next call, the memory cap to the next
    /// instance built, the counts to the next declare, the CPU rate at once.
    pub fn set(&self, limits: BudgetLimits) {
        self.call_deadline_ms
            .store(limits.call_deadline_ms.max(1), Ordering::Relaxed);
        self.memory_max_bytes
            .store(limits.memory_max_bytes, Ordering::Relaxed);
        self.instances_max
            .store(limits.instances_max, Ordering::Relaxed);
        self.memory_total_max
            .store(limits.memory_total_bytes, Ordering::Relaxed);
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        self.cpu_ms_per_sec
            .store(limits.cpu_ms_per_sec, Ordering::Relaxed);
        // A lower rate caps what is banked; unlimited clears any debt.
        let burst = limits.cpu_ms_per_sec as f64;
        if limits.cpu_ms_per_sec == 0 {
            bucket.balance_ms = 0.0;
            self.in_debt.store(false, Ordering::Relaxed);
        } else {
            bucket.balance_ms = bucket.balance_ms.min(burst);
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> BudgetLimits {
        BudgetLimits {
            call_deadline_ms: self.call_deadline_ms(),
            memory_max_bytes: self.memory_max_bytes(),
            instances_max: self.instances_max.load(Ordering::Relaxed),
            memory_total_bytes: self.memory_total_max.load(Ordering::Relaxed),
            cpu_ms_per_sec: self.cpu_ms_per_sec.load(Ordering::Relaxed),
        }
    }

    /// The deadline of the next `route` call.
    pub fn call_deadline_ms(&self) -> u64 {
        self.call_deadline_ms.load(Ordering::Relaxed)
    }

    /// The memory cap of the next instance built.
    pub fn memory_max_bytes(&self) -> u64 {
        self.memory_max_bytes.load(Ordering::Relaxed)
    }

    /// Instances alive now.
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Memory reserved by the live instances (the sum of their caps).
    pub fn memory_reserved(&self) -> u64 {
        self.memory_reserved.load(Ordering::Relaxed)
    }

    /// Admits one more exchange (one instance): a place in `instances_max` and its memory
    /// cap in `memory_total_bytes`, given back when the returned value is dropped.
    pub fn admit(&self) -> Result<Admitted, Invalid> {
        let max = self.instances_max.load(Ordering::Relaxed);
        let slot = Slot::take(&self.instances, max).ok_or_else(|| {
            Invalid(format!(
                "vhost '{}' has {max} WASM exchanges, its limit (wasm-instances-max; \
                 wasm_instances_max in the config)",
                self.vhost
            ))
        })?;
        let bytes = self.memory_max_bytes();
        let total = self.memory_total_max.load(Ordering::Relaxed);
        let reserved =
            self.memory_reserved
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_add(bytes).filter(|&sum| sum <= total)
                });
        if let Err(held) = reserved {
            return Err(Invalid(format!(
                "vhost '{}' WASM exchanges hold {held} bytes of memory caps; another {bytes} \
                 would pass its limit of {total} (wasm-memory-total-bytes; \
                 wasm_memory_total_bytes in the config)",
                self.vhost
            )));
        }
        Ok(Admitted {
            _slot: slot,
            memory: self.memory_reserved.clone(),
            bytes,
        })
    }

    /// Charges `ticks` milliseconds of calls (the engine ticks one call or build spanned).
    pub fn charge(&self, ticks: u64) {
        if ticks == 0 {
            return;
        }
        if ticks >= SLOW_CALL_TICKS {
            *self.slow_until.lock() = Instant::now() + SLOW_FOR;
            self.slow.store(true, Ordering::Relaxed);
        }
        if self.cpu_ms_per_sec.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        bucket.balance_ms -= ticks as f64;
        if bucket.balance_ms < 0.0 {
            self.in_debt.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the vhost used more than its CPU budget (one atomic load).
    pub fn in_debt(&self) -> bool {
        self.in_debt.load(Ordering::Relaxed)
    }

    /// How long until the budget is back to zero; None when it is not owed (and then the
    /// vhost is no longer in debt).
    pub fn debt_wait(&self) -> Option<Duration> {
        let rate = self.cpu_ms_per_sec.load(Ordering::Relaxed);
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        if rate == 0 || bucket.balance_ms >= 0.0 {
            self.in_debt.store(false, Ordering::Relaxed);
            return None;
        }
        Some(Duration::from_secs_f64(-bucket.balance_ms / rate as f64))
    }

    fn refill(&self, bucket: &mut Bucket) {
        let now = Instant::now();
        let rate = self.cpu_ms_per_sec.load(Ordering::Relaxed) as f64;
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        // At most one second's worth banked.
        bucket.balance_ms = (bucket.balance_ms + elapsed * rate).min(rate);
    }

    /// Whether calls should run off the async workers, in the slow lane: a deadline longer
    /// than [`INLINE_DEADLINE_MS`], or a slow call in the last [`SLOW_FOR`].
    pub fn offload(&self) -> bool {
        if self.call_deadline_ms() > INLINE_DEADLINE_MS {
            return true;
        }
        if !self.slow.load(Ordering::Relaxed) {
            return false;
        }
        if Instant::now() < *self.slow_until.lock() {
            return true;
        }
        self.slow.store(false, Ordering::Relaxed);
        false
    }

    /// Runs `f` in the vhost's slow lane: off the async workers, one at a time.
    pub fn in_slow_lane<T>(&self, f: impl FnOnce() -> T) -> T {
        crate::blocking::blocking(true, || {
            let _lane = self.lane.lock();
            f()
        })
    }
}

/// An exchange's place in its vhost's budget.
#[derive(Debug)]
pub struct Admitted {
    _slot: Slot,
    memory: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.memory.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Every vhost's budget, made on first use from the config's limits of that vhost.
#[derive(Debug)]
pub struct Budgets {
    global: WasmLimits,
    per_vhost: BTreeMap<String, VhostLimitOverrides>,
    instances_max: u32,
    by_vhost: Mutex<HashMap<String, Arc<VhostBudget>>>,
}

impl Budgets {
    /// Budgets whose defaults are the config's: `global` WASM limits, `per_vhost` overrides,
    /// and `instances_max` instances per vhost unless overridden.
    pub fn new(
        global: WasmLimits,
        per_vhost: BTreeMap<String, VhostLimitOverrides>,
        instances_max: u32,
    ) -> Self {
        Self {
            global,
            per_vhost,
            instances_max,
            by_vhost: Mutex::new(HashMap::new()),
        }
    }

    /// The config's budget of `vhost` (what runtime limits are applied over).
    pub fn config_limits(&self, vhost: &str) -> BudgetLimits {
        let overrides = self.per_vhost.get(vhost);
        let limits = match overrides {
            Some(o) => o.apply(&self.global),
            None => self.global.clone(),
        };
        let instances = overrides
            .and_then(|o| o.wasm_instances_max)
            .unwrap_or(self.instances_max);
        BudgetLimits::of(&limits, instances)
    }

    /// The budget of `vhost`, made now from the config if it does not exist yet.
    pub fn get(&self, vhost: &str) -> Arc<VhostBudget> {
        if let Some(budget) = self.by_vhost.lock().get(vhost) {
            return budget.clone();
        }
        let made = VhostBudget::new(vhost, self.config_limits(vhost));
        self.by_vhost
            .lock()
            .entry(vhost.to_owned())
            .or_insert(made)
            .clone()
    }

    /// Forgets a deleted vhost's budget.
    pub fn forget(&self, vhost: &str) {
        self.by_vhost.lock().remove(vhost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BudgetLimits {
        BudgetLimits {
            call_deadline_ms: 5,
            memory_max_bytes: 1 << 20,
            instances_max: 2,
            memory_total_bytes: 3 << 20,
            cpu_ms_per_sec: 100,
        }
    }

    #[test]
    fn admits_up_to_the_instance_and_memory_limits() {
        let budget = VhostBudget::new("v", limits());
        let a = budget.admit().expect("first");
        let b = budget.admit().expect("second");
        let refused = budget.admit().unwrap_err();
        assert!(refused.0.contains("wasm-instances-max"), "{}", refused.0);
        drop(a);
        budget.set(BudgetLimits {
            instances_max: 10,
            memory_max_bytes: 2 << 20,
            ..limits()
        });
        // 1 MiB (b) + 2 MiB fits in 3 MiB; another 2 MiB does not.
        let c = budget.admit().expect("third");
        assert_eq!(budget.memory_reserved(), 3 << 20);
        let refused = budget.admit().unwrap_err();
        assert!(
            refused.0.contains("wasm-memory-total-bytes"),
            "{}",
            refused.0
        );
        drop((b, c));
        assert_eq!(budget.memory_reserved(), 0);
        assert_eq!(budget.instances(), 0);
    }

    #[test]
    fn debt_comes_from_charges_over_the_rate_and_clears_with_time() {
        let budget = VhostBudget::new("v", limits());
        budget.charge(100);
        assert!(!budget.in_debt(), "a second's worth is banked");
        budget.charge(50);
        assert!(budget.in_debt());
        let wait = budget.debt_wait().expect("owed");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        std::thread::sleep(wait + Duration::from_millis(20));
        assert_eq!(budget.debt_wait(), None);
        assert!(!budget.in_debt());
        // Unlimited: never in debt.
        budget.set(BudgetLimits {
            cpu_ms_per_sec: 0,
            ..limits()
        });
        budget.charge(10_000);
        assert!(!budget.in_debt());
        assert_eq!(budget.debt_wait(), None);
    }

    #[test]
    fn long_deadlines_and_slow_calls_go_to_the_slow_lane() {
        let budget = VhostBudget::new("v", limits());
        assert!(!budget.offload());
        budget.charge(1);
        assert!(!budget.offload(), "one tick is a straddle, not a slow call");
        budget.charge(3);
        assert!(budget.offload());
        let other = VhostBudget::new(
            "w",
            BudgetLimits {
                call_deadline_ms: 300,
                ..limits()
            },
        );
        assert!(other.offload());
    }
}
