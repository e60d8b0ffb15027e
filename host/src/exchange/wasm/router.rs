//! The router of one WASM exchange: one long-lived instance behind a mutex, the host's copy of
//! the bindings (with the ids the plugin sees), the decision cache, and failure handling.
//!
//! The mutex is held across each call, so an exchange's calls never overlap and a message is
//! routed entirely by one instance of one plugin version (hot reload swaps instances under the
//! same mutex, see `plugin.rs`).
//!
//! Failures (trap, deadline, memory or table cap, unknown binding ids) fail the call, drop the
//! instance and build a fresh one at once: `init`, then every binding replayed in id order.
//! After `failures_max` consecutive failures the exchange is marked failed: every message is
//! unroutable through it, without entering the plugin, until a new version of the plugin is
//! loaded (or rolled back to).
//!
//! What a plugin answers is bounded (`output.rs`): a `route` answer with more ids than the cap
//! is a failed call, and so is a large answer whose processing by the host takes the call past
//! its deadline. Per-message warnings (a failed call, a message refused by a failed exchange)
//! go through one throttle per exchange: one line per 10 s, with the count of lines held back;
//! the line marking the exchange failed is always logged. The decision cache is bounded in
//! bytes as well as in entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable as AmqpTable;
use parking_lot::{Mutex, MutexGuard};
use tracing::{Level, error, warn};

use super::budget::Admitted;
use super::decisions::{Decisions, Lookup};
use super::host::ExchangeCtx;
use super::instance::{CallError, Instance, thread_cpu_ns};
use super::latency::Latency;
use super::output::{ROUTE_IDS_TIMED, Throttle, WARN_INTERVAL, route_ids_max};
use super::runtime::{EPOCH_TICK, PluginVersion};
use super::shadow::{Candidate, Shadow};
use super::v0_1::Inputs;
use super::{GLOBAL, counters::Counter};
use crate::exchange::{Binding, Destination, Invalid, RouteError, Router, RoutingInput};

/// Counters of one exchange.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    /// Messages routed by the plugin (cache misses that returned normally).
    pub routed: AtomicU64,
    /// Messages answered from the decision cache.
    pub cache_hits: AtomicU64,
    /// Calls that failed (any reason below).
    pub failures: AtomicU64,
    /// Calls stopped at their deadline.
    pub deadlines: AtomicU64,
    /// Calls stopped at the memory or table cap.
    pub caps: AtomicU64,
    /// Other traps (and contained host panics).
    pub traps: AtomicU64,
    /// Binding ids returned by `route` that were not bound (ignored).
    pub unknown_ids: AtomicU64,
    /// `route` calls of a plugin declaring itself cacheable that read a clock, the state or
    /// randomness: their decisions were not cached.
    pub impure: AtomicU64,
    /// `route` answers over the id cap, or whose processing ran past the deadline.
    pub oversized: AtomicU64,
    /// `route` answers of `err(text)`.
    pub plugin_errors: AtomicU64,
    /// Instances replaced after a failure.
    pub replaced: AtomicU64,
    /// Hot reloads (and rollbacks) applied to this exchange.
    pub reloads: AtomicU64,
}

/// The routing state shared between the vhost's router and the plugin's list of live
/// exchanges (for hot reload).
pub struct RouterCore {
    /// Names, limits, log budget and state store of the exchange.
    pub ctx: Arc<ExchangeCtx>,
    arguments: AmqpTable,
    /// Counters.
    pub stats: ExchangeStats,
    state: Mutex<RouterState>,
}

/// What the mutex guards.
pub struct RouterState {
    version: Arc<PluginVersion>,
    instance: Option<Instance>,
    inputs: Inputs,
    bindings: BTreeMap<u64, Binding>,
    /// The ids of `bindings` by [`Binding::identity_hash`]: removal without a scan.
    ids: HashMap<u64, Vec<u64>>,
    next_id: u64,
    /// Bumped by every binding change; a reload prepared against an older generation is
    /// rebuilt under the lock.
    generation: u64,
    /// The decision cache, when the plugin declared its decisions cacheable.
    cache: Option<Decisions>,
    /// Whether the exchange's log already says that a cacheable plugin read a clock, the
    /// state or randomness while routing.
    impure_logged: bool,
    consecutive_failures: u32,
    failed: Option<String>,
    /// Per-message warnings of this exchange.
    warnings: Throttle,
    /// Sampled durations of `route` calls.
    latency: Latency,
    /// Engine ticks that passed during routing calls (time in the plugin, by the tick).
    busy_ticks: u64,
    /// The last failure: when (ms since the epoch) and why.
    last_error: Option<(u64, String)>,
    /// A candidate version running beside this one on the same messages (`shadow.rs`).
    shadow: Option<Shadow>,
}

/// A freshly built instance: initialised, bindings replayed.
pub struct Prepared {
    instance: Instance,
    inputs: Inputs,
}

impl Prepared {
    /// The instance and what its `init` declared.
    pub fn into_parts(self) -> (Instance, Inputs) {
        (self.instance, self.inputs)
    }
}

/// Why an instance could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    /// `init` answered `err(text)`.
    #[error("{0}")]
    Refused(String),
    /// A call failed.
    #[error("{0}")]
    Call(#[from] CallError),
}

/// Builds an instance of `version` for `ctx`, initialised and fed `bindings` in id order.
pub fn build(
    version: &PluginVersion,
    ctx: &Arc<ExchangeCtx>,
    arguments: &AmqpTable,
    bindings: &BTreeMap<u64, Binding>,
) -> Result<Prepared, BuildError> {
    let mut instance = version.instantiate(ctx.clone())?;
    let inputs = instance
        .init(&ctx.exchange, arguments)?
        .map_err(BuildError::Refused)?;
    for (id, binding) in bindings {
        instance.add_binding(*id, binding)?;
    }
    Ok(Prepared { instance, inputs })
}

impl RouterCore {
    /// A router for a new exchange (no bindings yet).
    pub fn create(
        version: Arc<PluginVersion>,
        ctx: Arc<ExchangeCtx>,
        arguments: &AmqpTable,
    ) -> Result<Arc<Self>, BuildError> {
        let prepared = build(&version, &ctx, arguments, &BTreeMap::new())?;
        let cache = cache_for(&prepared.inputs, &ctx);
        Ok(Arc::new(Self {
            ctx,
            arguments: arguments.clone(),
            stats: ExchangeStats::default(),
            state: Mutex::new(RouterState {
                version,
                instance: Some(prepared.instance),
                inputs: prepared.inputs,
                bindings: BTreeMap::new(),
                ids: HashMap::default(),
                next_id: 1,
                generation: 0,
                cache,
                impure_logged: false,
                consecutive_failures: 0,
                failed: None,
                warnings: Throttle::new(WARN_INTERVAL),
                latency: Latency::default(),
                busy_ticks: 0,
                last_error: None,
                shadow: None,
            }),
        }))
    }

    /// The bindings and their generation, for preparing a reload outside the lock.
    pub fn snapshot(&self) -> (BTreeMap<u64, Binding>, u64) {
        let state = self.state.lock();
        (state.bindings.clone(), state.generation)
    }

    /// Builds an instance of `version` for this exchange with `bindings`.
    pub fn prepare(
        &self,
        version: &PluginVersion,
        bindings: &BTreeMap<u64, Binding>,
    ) -> Result<Prepared, BuildError> {
        build(version, &self.ctx, &self.arguments, bindings)
    }

    /// Locks the routing state (used by hot reload to swap several exchanges at once).
    pub fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock()
    }

    /// Installs a prepared instance of `version`, if it was prepared against the current
    /// bindings (`generation`); otherwise builds one now, under the lock.
    pub fn prepare_locked(
        &self,
        state: &RouterState,
        version: &PluginVersion,
        prepared: Option<(u64, Prepared)>,
    ) -> Result<Prepared, BuildError> {
        match prepared {
            Some((generation, prepared)) if generation == state.generation => Ok(prepared),
            _ => self.prepare(version, &state.bindings),
        }
    }

    /// Swaps in `prepared` (an instance of `version`); clears failures and the cache.
    pub fn install(
        &self,
        state: &mut RouterState,
        version: Arc<PluginVersion>,
        prepared: Prepared,
    ) {
        state.version = version;
        state.cache = cache_for(&prepared.inputs, &self.ctx);
        state.instance = Some(prepared.instance);
        state.inputs = prepared.inputs;
        state.consecutive_failures = 0;
        state.failed = None;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Brings the exchange back into service (an operator's reset, typically of an exchange
    /// marked failed): a fresh instance of its current version with every binding replayed,
    /// failures forgotten, the decision cache emptied. The instance is built outside the
    /// router lock, and again under it if the bindings changed meanwhile. On error nothing
    /// changed.
    pub fn reset(&self) -> Result<(), BuildError> {
        let version = self.state.lock().version.clone();
        let (bindings, generation) = self.snapshot();
        let early = self.prepare(&version, &bindings)?;
        let mut state = self.state.lock();
        let prepared = if Arc::ptr_eq(&state.version, &version) {
            self.prepare_locked(&state, &version, Some((generation, early)))?
        } else {
            // A reload happened meanwhile: build for the version now serving.
            let current = state.version.clone();
            self.prepare_locked(&state, &current, None)?
        };
        state.cache = cache_for(&prepared.inputs, &self.ctx);
        state.instance = Some(prepared.instance);
        state.inputs = prepared.inputs;
        state.consecutive_failures = 0;
        state.failed = None;
        Ok(())
    }

    /// Runs `candidate` beside the active version on this exchange's messages: its instance
    /// is built outside the router lock, and again under it if the bindings changed meanwhile.
    pub fn attach_shadow(&self, candidate: &Arc<Candidate>) -> Result<(), BuildError> {
        let (bindings, generation) = self.snapshot();
        let early = Shadow::build(candidate, &self.ctx, &self.arguments, &bindings)?;
        let mut state = self.state.lock();
        let shadow = if state.generation == generation {
            early
        } else {
            Shadow::build(candidate, &self.ctx, &self.arguments, &state.bindings)?
        };
        state.shadow = Some(shadow);
        Ok(())
    }

    /// Stops the shadow of `candidate` (any shadow, if `None`).
    pub fn detach_shadow(&self, candidate: Option<&Arc<Candidate>>) {
        let mut state = self.state.lock();
        if candidate.is_none_or(|c| {
            state
                .shadow
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.candidate, c))
        }) {
            state.shadow = None;
        }
    }

    /// A status snapshot.
    pub fn status(&self) -> super::ExchangeStatus {
        let state = self.state.lock();
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::ExchangeStatus {
            vhost: self.ctx.vhost.to_string(),
            exchange: self.ctx.exchange.to_string(),
            plugin_version: state.version.version.clone(),
            plugin_sha256: state.version.sha256.clone(),
            bindings: state.bindings.len(),
            cacheable: state.inputs.cacheable,
            failed: state.failed.clone(),
            routed: get(&s.routed),
            cache_hits: get(&s.cache_hits),
            failures: get(&s.failures),
            deadlines: get(&s.deadlines),
            caps: get(&s.caps),
            traps: get(&s.traps),
            unknown_ids: get(&s.unknown_ids),
            impure: get(&s.impure),
            oversized: get(&s.oversized),
            plugin_errors: get(&s.plugin_errors),
            replaced: get(&s.replaced),
            reloads: get(&s.reloads),
            log_lines_dropped: self.ctx.log_dropped(),
            warnings_suppressed: state.warnings.suppressed(),
            state_entries: self.ctx.state_len(),
            latency_p50: state.latency.quantile(0.5),
            latency_p99: state.latency.quantile(0.99),
            latency_samples: state.latency.samples(),
            busy: EPOCH_TICK * u32::try_from(state.busy_ticks).unwrap_or(u32::MAX),
            memory_bytes: state.instance.as_ref().map_or(0, Instance::memory_bytes),
            last_error: state.last_error.clone(),
            logs: self.ctx.recent_logs(),
        }
    }

    /// Records a failed call: drops the instance, and either marks the exchange failed or
    /// builds a replacement right away.
    fn fail(&self, state: &mut RouterState, reason: &str, error: Option<&CallError>) {
        state.instance = None;
        state.consecutive_failures += 1;
        state.last_error = Some((super::host::now_millis(), reason.to_owned()));
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        GLOBAL.add(Counter::Failures);
        match error {
            Some(CallError::Deadline { .. }) => {
                self.stats.deadlines.fetch_add(1, Ordering::Relaxed);
                GLOBAL.add(Counter::Deadlines);
            }
            Some(CallError::MemoryCap { .. } | CallError::TableCap { .. }) => {
                self.stats.caps.fetch_add(1, Ordering::Relaxed);
                GLOBAL.add(Counter::Caps);
            }
            Some(CallError::Trap(_) | CallError::Panicked(_)) => {
                self.stats.traps.fetch_add(1, Ordering::Relaxed);
                GLOBAL.add(Counter::Traps);
            }
            None => {}
        }
        let max = self.ctx.limits.failures_max;
        if state.consecutive_failures >= max {
            let why = format!("{max} consecutive failures, last: {reason}");
            error!(exchange = %self.ctx.exchange, vhost = %self.ctx.vhost,
                plugin = %state.version.label(), reason = %why,
                "WASM exchange marked failed; its messages are unroutable until the plugin is reloaded");
            state.failed = Some(why);
            GLOBAL.add(Counter::ExchangesFailed);
            return;
        }
        if let Some(suppressed) = state.warnings.allow(Instant::now()) {
            warn!(exchange = %self.ctx.exchange, vhost = %self.ctx.vhost,
                plugin = %state.version.label(), %reason, failures = state.consecutive_failures,
                suppressed, "WASM call failed; replacing the instance");
        }
        self.rebuild(state);
    }

    /// Builds a fresh instance with every binding replayed (after a failure).
    fn rebuild(&self, state: &mut RouterState) {
        match build(&state.version, &self.ctx, &self.arguments, &state.bindings) {
            Ok(prepared) => {
                state.cache = cache_for(&prepared.inputs, &self.ctx);
                state.instance = Some(prepared.instance);
                state.inputs = prepared.inputs;
                self.stats.replaced.fetch_add(1, Ordering::Relaxed);
                GLOBAL.add(Counter::Replaced);
            }
            Err(e) => {
                let reason = format!("rebuilding the instance failed: {e}");
                let call = match &e {
                    BuildError::Call(c) => Some(c.clone()),
                    BuildError::Refused(_) => None,
                };
                // Counts as a failure; recursion is bounded by `failures_max`.
                self.fail(state, &reason, call.as_ref());
            }
        }
    }

    /// Takes the live instance out for a call (rebuilding it if an earlier failure left
    /// none); the caller puts it back if the call went well. `Err` when the exchange is failed
    /// or no instance can be built.
    fn take_ready(&self, state: &mut RouterState) -> Result<Instance, String> {
        if let Some(reason) = &state.failed {
            return Err(format!("exchange failed: {reason}"));
        }
        if state.instance.is_none() {
            self.rebuild(state);
        }
        if let Some(reason) = &state.failed {
            return Err(format!("exchange failed: {reason}"));
        }
        state
            .instance
            .take()
            .ok_or_else(|| "no plugin instance could be built".to_owned())
    }

    fn route_locked(
        &self,
        state: &mut RouterState,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Result<u64, RouteError> {
        if let Some(reason) = &state.failed {
            if let Some(suppressed) = state.warnings.allow(Instant::now()) {
                warn!(exchange = %self.ctx.exchange, vhost = %self.ctx.vhost,
                    plugin = %state.version.label(), %reason, suppressed,
                    "WASM exchange is marked failed; message unroutable by this exchange");
            }
            return Err(RouteError(format!("exchange failed: {reason}")));
        }
        let lookup = match &mut state.cache {
            Some(cache) => cache.lookup(&state.inputs, message, cc, out),
            None => Lookup::Uncacheable,
        };
        if lookup == Lookup::Hit {
            // Only decisions without a delay are cached.
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        }
        let mut instance = self.take_ready(state).map_err(RouteError)?;
        // The engine's tick counter, not `Instant::now()`: two atomic loads per call.
        let ticks_before = state.version.runtime().ticks();
        let result = if state.latency.should_time() {
            let started = Instant::now();
            let result = instance.route(message, cc, &state.inputs);
            state.latency.record(started.elapsed());
            result
        } else {
            instance.route(message, cc, &state.inputs)
        };
        let impure = instance.impure();
        let ticks_after = state.version.runtime().ticks();
        if result.is_ok() {
            state.instance = Some(instance);
        }
        match result {
            Ok(Ok((ids, delay_ms))) => {
                // The host's work on the answer counts against the plugin: over the cap, the
                // answer is not even looked at.
                let max = route_ids_max(state.bindings.len());
                if ids.len() > max {
                    self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                    let reason = format!(
                        "route returned {} binding ids; at most {max} are allowed",
                        ids.len()
                    );
                    self.fail(state, &reason, None);
                    return Err(RouteError(format!("plugin {reason}")));
                }
                let count = ids.len();
                let timed = (count > ROUTE_IDS_TIMED).then(thread_cpu_ns);
                let start = out.len();
                let mut unknown = 0u64;
                for id in ids {
                    match state.bindings.get(&id) {
                        Some(binding) => out.push(binding.destination.clone()),
                        None => unknown += 1,
                    }
                }
                if let Some(cpu_before) = timed {
                    let host = Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu_before));
                    // At least this long in the plugin (ticks seen, less one for a call that
                    // merely straddled a tick).
                    let called = EPOCH_TICK
                        * u32::try_from(ticks_after.saturating_sub(ticks_before).saturating_sub(1))
                            .unwrap_or(u32::MAX);
                    let deadline_ms = self.ctx.budget.call_deadline_ms();
                    if called + host > Duration::from_millis(deadline_ms) {
                        out.truncate(start);
                        self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                        let reason = format!(
                            "route answer of {} ids took the call past its deadline of \
                             {deadline_ms} ms (plugin {:.2} ms, host {:.2} ms)",
                            count,
                            called.as_secs_f64() * 1e3,
                            host.as_secs_f64() * 1e3
                        );
                        self.fail(
                            state,
                            &reason,
                            Some(&CallError::Deadline { ms: deadline_ms }),
                        );
                        return Err(RouteError(format!("plugin {reason}")));
                    }
                }
                if unknown > 0 {
                    // Ids not bound (any more) are ignored and counted, as the contract says:
                    // the message still goes to the bound ones. Not a failure: a plugin may
                    // answer with an id whose unbinding it has not seen yet.
                    self.stats.unknown_ids.fetch_add(unknown, Ordering::Relaxed);
                    GLOBAL.add(Counter::UnknownIds);
                }
                state.consecutive_failures = 0;
                self.stats.routed.fetch_add(1, Ordering::Relaxed);
                GLOBAL.add(Counter::Routed);
                if lookup == Lookup::Miss
                    && let Some(cache) = &mut state.cache
                {
                    if impure {
                        self.stats.impure.fetch_add(1, Ordering::Relaxed);
                        if !state.impure_logged {
                            state.impure_logged = true;
                            warn!(exchange = %self.ctx.exchange, vhost = %self.ctx.vhost,
                                plugin = %state.version.label(),
                                "plugin declares its decisions cacheable but read the clock, the \
                                 state or randomness while routing; such decisions are not cached");
                        }
                    } else if unknown == 0 && delay_ms == 0 {
                        // A decision with a delay is never cached: the cache holds
                        // destinations only, and a hit answers "now".
                        cache.store(&out[start..]);
                    }
                }
                Ok(delay_ms)
            }
            Ok(Err(text)) => {
                // The plugin's own answer: unroutable, but not a failure of the plugin.
                self.stats.plugin_errors.fetch_add(1, Ordering::Relaxed);
                self.ctx.log(Level::DEBUG, &format!("route: {text}"));
                Err(RouteError(text))
            }
            Err(error) => {
                let reason = format!("route {error}");
                self.fail(state, &reason, Some(&error));
                Err(RouteError(format!("plugin {reason}")))
            }
        }
    }
}

/// An empty decision cache, if the plugin allows one and the limits ask for one.
fn cache_for(inputs: &Inputs, ctx: &ExchangeCtx) -> Option<Decisions> {
    (inputs.cacheable && ctx.limits.route_cache_entries > 0)
        .then(|| Decisions::new(ctx.limits.route_cache_entries as usize))
}

/// What the vhost holds: a handle on the shared core.
pub struct WasmRouter {
    core: Arc<RouterCore>,
    /// The exchange's place in its vhost's budget (an instance, its memory cap), given back
    /// when it goes.
    _admitted: Admitted,
}

impl WasmRouter {
    /// Wraps a core holding its place in the vhost's budget.
    pub fn new(core: Arc<RouterCore>, admitted: Admitted) -> Self {
        Self {
            core,
            _admitted: admitted,
        }
    }

    /// Routes under the router lock, charging the vhost's budget with the ticks it took
    /// (instance rebuilds after a failure included).
    fn route_charged(
        &self,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Result<u64, RouteError> {
        let mut state = self.core.state.lock();
        let before = state.version.runtime().ticks();
        let start = out.len();
        let result = self.core.route_locked(&mut state, message, cc, out);
        let state_ref = &mut *state;
        if let Some(shadow) = state_ref.shadow.as_mut() {
            let active = match &result {
                Ok(delay) => Ok((&out[start..], *delay)),
                Err(error) => Err(error.0.as_str()),
            };
            let core = &self.core;
            shadow.compare(
                &core.ctx,
                &core.arguments,
                &state_ref.bindings,
                message,
                cc,
                active,
            );
        }
        let ticks = state.version.runtime().ticks().saturating_sub(before);
        state.busy_ticks += ticks;
        drop(state);
        self.core.ctx.budget.charge(ticks);
        result
    }
}

impl Router for WasmRouter {
    fn validate_binding(&self, binding: &Binding) -> Result<(), Invalid> {
        let core = &self.core;
        let mut state = core.state.lock();
        let id = state.next_id;
        let mut instance = core.take_ready(&mut state).map_err(Invalid)?;
        let result = instance.validate_binding(id, binding);
        if result.is_ok() {
            state.instance = Some(instance);
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(text)) => Err(Invalid(text)),
            Err(error) => {
                let reason = format!("validate-binding {error}");
                core.fail(&mut state, &reason, Some(&error));
                Err(Invalid(format!("plugin {reason}")))
            }
        }
    }

    fn add_binding(&mut self, binding: &Binding) {
        let core = &self.core;
        let mut state = core.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.bindings.insert(id, binding.clone());
        state
            .ids
            .entry(binding.identity_hash())
            .or_default()
            .push(id);
        state.generation += 1;
        if let Some(cache) = &mut state.cache {
            cache.clear();
        }
        if let Some(shadow) = state.shadow.as_mut() {
            shadow.add_binding(id, binding);
        }
        // Without a live instance the binding is replayed when one is built.
        if let Some(instance) = state.instance.as_mut()
            && let Err(error) = instance.add_binding(id, binding)
        {
            let reason = format!("add-binding {error}");
            core.fail(&mut state, &reason, Some(&error));
        }
    }

    fn remove_binding(&mut self, binding: &Binding) {
        let core = &self.core;
        let mut state = core.state.lock();
        let hash = binding.identity_hash();
        let Some(id) = state.ids.get(&hash).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|id| state.bindings.get(id).is_some_and(|b| b.same_as(binding)))
        }) else {
            return;
        };
        state.bindings.remove(&id);
        if let Some(ids) = state.ids.get_mut(&hash) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                state.ids.remove(&hash);
            }
        }
        state.generation += 1;
        if let Some(cache) = &mut state.cache {
            cache.clear();
        }
        if let Some(shadow) = state.shadow.as_mut() {
            shadow.remove_binding(id);
        }
        if let Some(instance) = state.instance.as_mut()
            && let Err(error) = instance.remove_binding(id)
        {
            let reason = format!("remove-binding {error}");
            core.fail(&mut state, &reason, Some(&error));
        }
    }

    fn route(
        &self,
        message: &RoutingInput<'_>,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.route_keys(message, &[], out)
    }

    /// One call for every routing key: the plugin sees the CC and BCC keys as `message.cc`
    /// and makes one decision (a hash exchange picks one queue for the message, as RabbitMQ's
    /// consistent-hash exchange does).
    fn route_keys(
        &self,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.route_keys_delayed(message, cc, out).map(|_| ())
    }

    /// As [`route_keys`](Self::route_keys), with the delay a 0.2 plugin decided (0 from a
    /// 0.1 plugin).
    fn route_keys_delayed(
        &self,
        message: &RoutingInput<'_>,
        cc: &[&str],
        out: &mut Vec<Destination>,
    ) -> Result<u64, RouteError> {
        let budget = &self.core.ctx.budget;
        // A vhost with a long deadline, or whose calls were slow lately, routes through its
        // WASM exchanges off the async workers and one call at a time: its slow plugin cannot
        // hold up the other tenants' tasks of this worker.
        if budget.offload() {
            budget.in_slow_lane(|| self.route_charged(message, cc, out))
        } else {
            self.route_charged(message, cc, out)
        }
    }

    fn decides_delays(&self) -> bool {
        self.core.state.lock().version.decides_delays()
    }
}
