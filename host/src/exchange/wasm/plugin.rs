//! One exchange type provided by a plugin: the [`ExchangeType`] the registry holds, the
//! version serving it (and the previous one, for rollback), the exchanges declared with it, and
//! the hot-reload swap.
//!
//! A swap to a new version is all-or-nothing and atomic per message:
//! 1. outside any router lock, an instance of the new version is built for every live exchange
//!    (`init`, then its bindings replayed); routing continues on the old version meanwhile;
//!    any failure aborts the swap and the old version keeps serving;
//! 2. then, holding the type's lock (no exchange can be declared) and every exchange's router
//!    lock, instances prepared against bindings that changed since are rebuilt (any failure
//!    still aborts), and all are swapped in at once.
//!
//! Since a router's lock is held for the whole of each `route` call, every message is routed
//! entirely by the old or entirely by the new version.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use amq_protocol::types::FieldTable as AmqpTable;
use parking_lot::Mutex;
use tracing::info;

use super::WasmError;
use super::budget::{Budgets, VhostBudget};
use super::cache::ArtifactCache;
use super::host::ExchangeCtx;
use super::router::{BuildError, RouterCore, WasmRouter};
use super::runtime::PluginVersion;
use super::shadow::Candidate;
use crate::config::{VhostLimitOverrides, WasmLimits};
use crate::exchange::{ExchangeType, Invalid, Router};
use crate::store::PluginState;

/// The limits that apply where, and where compiled artifacts are cached.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Limits for vhosts without an override.
    pub global: WasmLimits,
    /// Per-vhost overrides.
    pub per_vhost: BTreeMap<String, VhostLimitOverrides>,
    /// The compiled-artifact cache (`None`: no disk cache, or one that could not be trusted).
    pub cache: Option<Arc<ArtifactCache>>,
    /// Each vhost's budget (deadline, memory, instances, CPU), changeable at runtime: one
    /// tenant's exchanges cannot take the whole broker's pool of instances.
    pub budgets: Arc<Budgets>,
}

impl Settings {
    /// The limits in force in `vhost` (as the config file gives them; the budget's part may
    /// have changed since, see [`Settings::budget`]).
    pub fn limits(&self, vhost: &str) -> WasmLimits {
        match self.per_vhost.get(vhost) {
            Some(overrides) => overrides.apply(&self.global),
            None => self.global.clone(),
        }
    }

    /// The budget of `vhost`.
    pub fn budget(&self, vhost: &str) -> Arc<VhostBudget> {
        self.budgets.get(vhost)
    }
}

/// A plugin-provided exchange type.
pub struct WasmExchangeType {
    name: String,
    settings: Arc<Settings>,
    inner: Mutex<TypeInner>,
    /// Serialises swaps of this type.
    swapping: Mutex<()>,
}

struct TypeInner {
    current: Arc<PluginVersion>,
    previous: Option<Arc<PluginVersion>>,
    live: Vec<Weak<RouterCore>>,
    /// A version on trial beside the current one (shadow reload).
    candidate: Option<Arc<Candidate>>,
}

impl WasmExchangeType {
    /// A type served by `version`.
    pub fn new(version: Arc<PluginVersion>, settings: Arc<Settings>) -> Arc<Self> {
        Arc::new(Self {
            name: version.name.clone(),
            settings,
            inner: Mutex::new(TypeInner {
                current: version,
                previous: None,
                live: Vec::new(),
                candidate: None,
            }),
            swapping: Mutex::new(()),
        })
    }

    /// The version serving new and existing exchanges.
    pub fn current(&self) -> Arc<PluginVersion> {
        self.inner.lock().current.clone()
    }

    /// The version before the current one, if any.
    pub fn previous(&self) -> Option<Arc<PluginVersion>> {
        self.inner.lock().previous.clone()
    }

    /// The exchanges of this type still declared.
    pub fn live(&self) -> Vec<Arc<RouterCore>> {
        let mut inner = self.inner.lock();
        inner.live.retain(|w| w.strong_count() > 0);
        inner.live.iter().filter_map(Weak::upgrade).collect()
    }

    /// Makes `version` serve this type and every exchange of it; the current version becomes
    /// the previous one. On error nothing changed. Returns the number of exchanges swapped.
    pub fn swap_to(&self, version: Arc<PluginVersion>) -> Result<usize, WasmError> {
        if version.name != self.name {
            return Err(WasmError::NameChanged {
                expected: self.name.clone(),
                found: version.name.clone(),
            });
        }
        let _one_at_a_time = self.swapping.lock();
        let reload_error = |core: &RouterCore, error: BuildError| WasmError::Reload {
            plugin: self.name.clone(),
            exchange: core.ctx.exchange.to_string(),
            vhost: core.ctx.vhost.to_string(),
            error: error.to_string(),
        };

        // 1. Prepare every live exchange outside the router locks.
        let mut prepared = HashMap::new();
        for core in self.live() {
            let (bindings, generation) = core.snapshot();
            let instance = core
                .prepare(&version, &bindings)
                .map_err(|e| reload_error(&core, e))?;
            prepared.insert(Arc::as_ptr(&core) as usize, (generation, instance));
        }

        // 2. Lock the type and every router, catch up, swap.
        let mut inner = self.inner.lock();
        inner.live.retain(|w| w.strong_count() > 0);
        let cores: Vec<Arc<RouterCore>> = inner.live.iter().filter_map(Weak::upgrade).collect();
        let mut guards = Vec::with_capacity(cores.len());
        for core in &cores {
            let state = core.lock();
            let early = prepared.remove(&(Arc::as_ptr(core) as usize));
            let ready = core
                .prepare_locked(&state, &version, early)
                .map_err(|e| reload_error(core, e))?;
            guards.push((core, state, ready));
        }
        let swapped = guards.len();
        for (core, mut state, ready) in guards {
            core.install(&mut state, version.clone(), ready);
        }
        let old = std::mem::replace(&mut inner.current, version.clone());
        info!(plugin = %self.name, from = %old.label(), to = %version.label(), exchanges = swapped,
            "plugin version swapped");
        inner.previous = Some(old);
        Ok(swapped)
    }

    /// Resets exchange `exchange` of `vhost` ([`RouterCore::reset`]); `None` if no live
    /// exchange of this type has that name.
    pub fn reset(
        &self,
        vhost: &str,
        exchange: &str,
    ) -> Option<Result<super::ExchangeStatus, WasmError>> {
        let core = self
            .live()
            .into_iter()
            .find(|c| &*c.ctx.vhost == vhost && &*c.ctx.exchange == exchange)?;
        Some(
            core.reset()
                .map(|()| {
                    info!(plugin = %self.name, %vhost, %exchange, "WASM exchange reset");
                    core.status()
                })
                .map_err(|e| WasmError::Reset {
                    exchange: exchange.to_owned(),
                    vhost: vhost.to_owned(),
                    error: e.to_string(),
                }),
        )
    }

    /// Starts a shadow trial of `version`: every exchange of this type also routes its
    /// messages with `version` and compares (`shadow.rs`). Replaces a trial already running.
    /// On error (the candidate cannot be built for an exchange) nothing runs. Returns the
    /// number of exchanges shadowed.
    pub fn start_shadow(&self, candidate: Arc<Candidate>) -> Result<usize, WasmError> {
        if candidate.version.name != self.name {
            return Err(WasmError::NameChanged {
                expected: self.name.clone(),
                found: candidate.version.name.clone(),
            });
        }
        let _one_at_a_time = self.swapping.lock();
        let cores = self.live();
        for (i, core) in cores.iter().enumerate() {
            if let Err(error) = core.attach_shadow(&candidate) {
                for attached in &cores[..i] {
                    attached.detach_shadow(Some(&candidate));
                }
                return Err(WasmError::Reload {
                    plugin: self.name.clone(),
                    exchange: core.ctx.exchange.to_string(),
                    vhost: core.ctx.vhost.to_string(),
                    error: error.to_string(),
                });
            }
        }
        let old = self.inner.lock().candidate.replace(candidate.clone());
        if let Some(old) = old {
            for core in &cores {
                core.detach_shadow(Some(&old));
            }
        }
        info!(plugin = %self.name, candidate = %candidate.version.label(), exchanges = cores.len(),
            "shadow trial started");
        Ok(cores.len())
    }

    /// The version on trial, if any.
    pub fn candidate(&self) -> Option<Arc<Candidate>> {
        self.inner.lock().candidate.clone()
    }

    /// Ends the shadow trial (its comparisons stop); returns it.
    pub fn stop_shadow(&self) -> Option<Arc<Candidate>> {
        let _one_at_a_time = self.swapping.lock();
        let candidate = self.inner.lock().candidate.take()?;
        for core in self.live() {
            core.detach_shadow(Some(&candidate));
        }
        Some(candidate)
    }

    /// Swaps back to the previous version (which then becomes the previous one again).
    pub fn rollback(&self) -> Result<usize, WasmError> {
        let previous = self
            .previous()
            .ok_or_else(|| WasmError::NoPrevious(self.name.clone()))?;
        self.swap_to(previous)
    }
}

impl ExchangeType for WasmExchangeType {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, arguments: &AmqpTable) -> Result<(), Invalid> {
        let version = self.current();
        let ctx = ExchangeCtx::new("", "", &self.name, self.settings.global.clone());
        let mut instance = version
            .instantiate(ctx)
            .map_err(|e| Invalid(format!("{}: plugin failed: {e}", self.name)))?;
        match instance.validate(arguments) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(text)) => Err(Invalid(text)),
            Err(e) => Err(Invalid(format!("{}: plugin failed: {e}", self.name))),
        }
    }

    fn create(&self, exchange: &str, arguments: &AmqpTable) -> Result<Box<dyn Router>, Invalid> {
        self.create_in("/", exchange, arguments)
    }

    fn creates_slowly(&self) -> bool {
        true
    }

    fn create_in(
        &self,
        vhost: &str,
        exchange: &str,
        arguments: &AmqpTable,
    ) -> Result<Box<dyn Router>, Invalid> {
        self.create_with_state(vhost, exchange, arguments, &PluginState::memory(), false)
    }

    fn create_with_state(
        &self,
        vhost: &str,
        exchange: &str,
        arguments: &AmqpTable,
        state: &PluginState,
        durable: bool,
    ) -> Result<Box<dyn Router>, Invalid> {
        let budget = self.settings.budget(vhost);
        let admitted = budget.admit()?;
        let limits = self.settings.limits(vhost);
        // Attached before `init`, which may read (or write) it.
        let state = state.attach(exchange, durable);
        let ctx =
            ExchangeCtx::in_budget(vhost, exchange, &self.name, limits, budget.clone(), state);
        let build = |version: Arc<PluginVersion>, ctx: Arc<ExchangeCtx>| {
            RouterCore::create(version, ctx, arguments).map_err(|e| match e {
                BuildError::Refused(text) => Invalid(text),
                BuildError::Call(e) => Invalid(format!("{}: plugin failed: {e}", self.name)),
            })
        };
        // Instantiate and `init` (up to the setup deadline) without the type's lock, so other
        // declares and swaps of this type do not wait for it.
        let version = self.current();
        // Building (instantiate, `init`) is charged to the vhost's CPU budget too: a tenant
        // declaring exchange after exchange pays for it.
        let before = version.runtime().ticks();
        let built = build(version.clone(), ctx.clone());
        budget.charge(version.runtime().ticks().saturating_sub(before));
        let core = built?;
        // Holding the type's lock: a swap cannot miss this exchange. One that completed while
        // the instance was built means it runs the old version: build it again, now.
        let mut inner = self.inner.lock();
        let core = if Arc::ptr_eq(&inner.current, &version) {
            core
        } else {
            build(inner.current.clone(), ctx)?
        };
        inner.live.retain(|w| w.strong_count() > 0);
        inner.live.push(Arc::downgrade(&core));
        let candidate = inner.candidate.clone();
        drop(inner);
        // An exchange declared during a shadow trial is shadowed too (best effort: one the
        // candidate cannot serve just runs without a shadow, and counts as a failure).
        if let Some(candidate) = candidate {
            if core.attach_shadow(&candidate).is_err() {
                candidate
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let still = self
                .inner
                .lock()
                .candidate
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &candidate));
            if !still {
                core.detach_shadow(Some(&candidate));
            }
        }
        Ok(Box::new(WasmRouter::new(core, admitted)))
    }
}
