//! One instance of a plugin in its own store, and every call into it under a deadline.
//!
//! Each call sets the store's epoch deadline, runs with the store's memory and table caps, and
//! is wrapped in `catch_unwind` (a panicking host function must not take the broker down). Any
//! failure leaves the instance unusable: the caller drops it and builds a fresh one. Texts a
//! call returns (error strings, description fields) come back cut to 1 KiB (`output.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable as AmqpTable;
use wasmtime::{Store, UpdateDeadline};

use super::host::{CapHit, ExchangeCtx, HostState};
use super::output::{HEADER_NAMES_MAX, bounded_owned};
use super::v0_1::{Binding, Description, FlatTable, HeaderSelection, InputFields, Inputs, Message};
use super::{v0_1, v0_2};
use crate::exchange::{self, RoutingInput};

/// Largest body passed to a plugin that asked for bodies; larger ones arrive as `none`.
pub const BODY_MAX_BYTES: usize = 1024 * 1024;

/// Why a call into a plugin did not return normally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The call ran past its epoch deadline.
    #[error("deadline of {ms} ms exceeded")]
    Deadline {
        /// The deadline.
        ms: u64,
    },
    /// A memory tried to grow past the cap.
    #[error("memory cap exceeded (tried to grow a memory to {bytes} bytes)")]
    MemoryCap {
        /// The size asked for.
        bytes: usize,
    },
    /// A table tried to grow past the cap.
    #[error("table cap exceeded (tried to grow a table to {elements} elements)")]
    TableCap {
        /// The size asked for.
        elements: usize,
    },
    /// Any other trap (`unreachable`, out-of-bounds access, a bad canonical-ABI value...).
    #[error("trapped: {0}")]
    Trap(String),
    /// A host function panicked during the call (a bug on the host side, contained).
    #[error("host panicked during the call: {0}")]
    Panicked(String),
}

/// A component linked for the contract version it exports (`runtime.rs` reads which).
pub enum GuestPre {
    /// Exports `bourse:exchange/router@0.1.x`: `route` answers binding ids.
    V0_1(v0_1::BindingsPre<HostState>),
    /// Exports `bourse:exchange/router@0.2.x`: `route` answers ids and a delay.
    V0_2(v0_2::BindingsPre<HostState>),
}

impl GuestPre {
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Self::V0_1(pre) => pre.engine(),
            Self::V0_2(pre) => pre.engine(),
        }
    }

    /// Whether its `route` may decide a delay (a 0.2 component).
    pub fn decides_delays(&self) -> bool {
        matches!(self, Self::V0_2(_))
    }
}

/// The exports of a live instance, by contract version.
enum Guest {
    V0_1(v0_1::Bindings),
    V0_2(v0_2::Bindings),
}

/// Runs one call of the `router` interface, whatever the version: `$router` is the version's
/// interface handle and `$store` the store, inside `guarded` under `$deadline`. Every function
/// but `route` has the same signature in both versions.
macro_rules! call_router {
    ($self:ident, $deadline:expr, |$router:ident, $store:ident| $body:expr) => {
        match &$self.bindings {
            Guest::V0_1(bindings) => {
                let $router = bindings.bourse_exchange_router();
                guarded(&mut $self.store, $deadline, |$store| $body)
            }
            Guest::V0_2(bindings) => {
                let $router = bindings.bourse_exchange0_2_0_router();
                guarded(&mut $self.store, $deadline, |$store| $body)
            }
        }
    };
}

/// A `route` answer: the binding ids and the delay in ms (0: deliver now; always 0 for 0.1).
pub type Decided = (Vec<u64>, u64);

/// A live instance.
pub struct Instance {
    store: Store<HostState>,
    bindings: Guest,
}

impl Instance {
    /// Instantiates `pre` in a fresh store for `ctx`.
    pub fn new(pre: &GuestPre, ctx: Arc<ExchangeCtx>, deadline_ms: u64) -> Result<Self, CallError> {
        let mut store = Store::new(pre.engine(), HostState::new(ctx));
        store.limiter(|state| &mut state.caps);
        store.epoch_deadline_callback(past_deadline);
        let bindings = match pre {
            GuestPre::V0_1(pre) => Guest::V0_1(guarded(&mut store, deadline_ms, |store| {
                pre.instantiate(store)
            })?),
            GuestPre::V0_2(pre) => Guest::V0_2(guarded(&mut store, deadline_ms, |store| {
                pre.instantiate(store)
            })?),
        };
        Ok(Self { store, bindings })
    }

    fn setup_deadline(&self) -> u64 {
        self.store.data().ctx.limits.setup_deadline_ms
    }

    /// `describe()`.
    pub fn describe(&mut self) -> Result<Description, CallError> {
        let deadline = self.setup_deadline();
        let mut description =
            call_router!(self, deadline, |router, store| router.call_describe(store))?;
        for text in [
            &mut description.name,
            &mut description.version,
            &mut description.summary,
        ] {
            *text = bounded_owned(std::mem::take(text));
        }
        Ok(description)
    }

    /// `validate(arguments)`.
    pub fn validate(&mut self, arguments: &AmqpTable) -> Result<Result<(), String>, CallError> {
        let deadline = self.setup_deadline();
        let flat = FlatTable::all(arguments);
        flat.with(|args| {
            call_router!(self, deadline, |router, store| router
                .call_validate(store, args))
        })
        .map(|answer| answer.map_err(bounded_owned))
    }

    /// `init(exchange, arguments)`.
    pub fn init(
        &mut self,
        exchange: &str,
        arguments: &AmqpTable,
    ) -> Result<Result<Inputs, String>, CallError> {
        let deadline = self.setup_deadline();
        let flat = FlatTable::all(arguments);
        let answer = flat.with(|args| {
            call_router!(self, deadline, |router, store| router
                .call_init(store, exchange, args))
        })?;
        Ok(match answer {
            Ok(Inputs {
                headers: HeaderSelection::Named(names),
                ..
            }) if names.len() > HEADER_NAMES_MAX => Err(format!(
                "init selected {} header names; at most {HEADER_NAMES_MAX} are allowed",
                names.len()
            )),
            Ok(inputs) => Ok(inputs),
            Err(text) => Err(bounded_owned(text)),
        })
    }

    /// `validate-binding(binding)` for a binding that would get id `id`.
    pub fn validate_binding(
        &mut self,
        id: u64,
        binding: &exchange::Binding,
    ) -> Result<Result<(), String>, CallError> {
        let deadline = self.setup_deadline();
        let flat = FlatTable::all(&binding.arguments);
        flat.with(|arguments| {
            let binding = Binding {
                id,
                key: &binding.routing_key,
                arguments,
            };
            call_router!(self, deadline, |router, store| router
                .call_validate_binding(store, binding))
        })
        .map(|answer| answer.map_err(bounded_owned))
    }

    /// `add-binding(binding)` with id `id`.
    pub fn add_binding(&mut self, id: u64, binding: &exchange::Binding) -> Result<(), CallError> {
        let deadline = self.setup_deadline();
        let flat = FlatTable::all(&binding.arguments);
        flat.with(|arguments| {
            let binding = Binding {
                id,
                key: &binding.routing_key,
                arguments,
            };
            call_router!(self, deadline, |router, store| router
                .call_add_binding(store, binding))
        })
    }

    /// `remove-binding(id)`.
    pub fn remove_binding(&mut self, id: u64) -> Result<(), CallError> {
        let deadline = self.setup_deadline();
        call_router!(self, deadline, |router, store| router
            .call_remove_binding(store, id))
    }

    /// `route(message)`, passing only what `inputs` declared; `cc` are the message's extra
    /// routing keys (its `CC` then `BCC` keys). Answers the ids and the delay (0 from a 0.1
    /// plugin). Afterwards [`impure`](Self::impure) says whether the call read a clock,
    /// randomness or the state store.
    pub fn route(
        &mut self,
        input: &RoutingInput<'_>,
        cc: &[&str],
        inputs: &Inputs,
    ) -> Result<Result<Decided, String>, CallError> {
        self.store.data_mut().impure = false;
        let deadline = self.store.data().ctx.budget.call_deadline_ms();
        let headers = match (&inputs.headers, input.properties.headers()) {
            (HeaderSelection::None, _) | (_, None) => FlatTable::default(),
            (HeaderSelection::Named(names), Some(table)) => FlatTable::named(table, names),
            (HeaderSelection::All, Some(table)) => FlatTable::all(table),
        };
        let properties = inputs
            .fields
            .contains(InputFields::PROPERTIES)
            .then(|| super::v0_1::properties(input.properties));
        let (routing_key, cc) = if inputs.fields.contains(InputFields::ROUTING_KEY) {
            (input.routing_key, cc)
        } else {
            ("", &[][..])
        };
        let body = (inputs.fields.contains(InputFields::BODY)
            && input.body.len() <= BODY_MAX_BYTES)
            .then_some(input.body);
        headers
            .with(|headers| {
                let message = Message {
                    exchange: input.exchange,
                    routing_key,
                    cc,
                    properties,
                    headers,
                    body_size: input.body.len() as u64,
                    body,
                };
                match &self.bindings {
                    Guest::V0_1(bindings) => {
                        let router = bindings.bourse_exchange_router();
                        guarded(&mut self.store, deadline, |store| {
                            router.call_route(store, message)
                        })
                        .map(|answer| answer.map(|ids| (ids, 0)))
                    }
                    Guest::V0_2(bindings) => {
                        let router = bindings.bourse_exchange0_2_0_router();
                        guarded(&mut self.store, deadline, |store| {
                            router.call_route(store, message)
                        })
                        .map(|answer| answer.map(|d| (d.bindings, d.delay_ms)))
                    }
                }
            })
            .map(|answer| answer.map_err(bounded_owned))
    }

    /// Whether the last `route` call read a clock, randomness or the state store.
    pub fn impure(&self) -> bool {
        self.store.data().impure
    }

    /// The largest linear memory the instance was granted, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().caps.memory_bytes
    }

    /// The exchange context this instance serves.
    pub fn ctx(&self) -> &Arc<ExchangeCtx> {
        &self.store.data().ctx
    }
}

/// Called when a call reaches its epoch deadline (wall time). The deadline is meant for what
/// the plugin consumes, not for time its thread spent descheduled (two cores, many threads):
/// so the first time, note the thread's CPU clock and look again one tick later; stop the call
/// if the thread ran for at least half of that tick (it is busy, not starved) or if it is far
/// past its deadline anyway. A loop is thus cut off about one tick after its deadline, and a
/// short call that merely lost its core near the deadline is not. (Reading the thread CPU
/// clock is a system call, too slow to do on every call; it is only done here.)
fn past_deadline(
    mut store: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    let state = store.data_mut();
    let cpu = thread_cpu_ns();
    let now = Instant::now();
    let deadline = Duration::from_millis(state.ctx.budget.call_deadline_ms().max(1));
    match state.overrun.replace((cpu, now)) {
        None => Ok(UpdateDeadline::Continue(1)),
        Some((cpu_before, at)) => {
            let ran = Duration::from_nanos(cpu.saturating_sub(cpu_before));
            let waited = now.duration_since(at);
            let first = state.overrun_since.get_or_insert(at);
            if ran * 2 >= waited || now.duration_since(*first) > deadline * 20 + OVERRUN_MAX {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        }
    }
}

/// However starved a thread is, a call ends this long (plus 20 deadlines) after its deadline.
const OVERRUN_MAX: Duration = Duration::from_millis(200);

/// CPU time of the calling thread, in nanoseconds (a system call: not for every message).
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Runs one call under `deadline_ms`, and explains how it failed.
fn guarded<R>(
    store: &mut Store<HostState>,
    deadline_ms: u64,
    call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    // Ticks are 1 ms; the first may come at once, so a deadline of n ms allows n-1..n ms.
    store.set_epoch_deadline(deadline_ms.max(1));
    let state = store.data_mut();
    state.caps.hit = None;
    state.overrun = None;
    state.overrun_since = None;
    match std::panic::catch_unwind(AssertUnwindSafe(|| call(&mut *store))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(classify(&error, store.data().caps.hit, deadline_ms)),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(CallError::Panicked(text))
        }
    }
}

fn classify(error: &wasmtime::Error, hit: Option<CapHit>, deadline_ms: u64) -> CallError {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>()
        && *trap == wasmtime::Trap::Interrupt
    {
        return CallError::Deadline { ms: deadline_ms };
    }
    match hit {
        Some(CapHit::Memory(bytes)) => CallError::MemoryCap { bytes },
        Some(CapHit::Table(elements)) => CallError::TableCap { elements },
        None => match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Trap(error.root_cause().to_string()),
        },
    }
}
