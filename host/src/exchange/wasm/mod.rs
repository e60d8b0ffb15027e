//! WASM exchange types: plugins are WebAssembly components targeting `wit/exchange.wit`
//! (`bourse:exchange@0.1.x`) or `wit/v0.2/exchange.wit` (`@0.2.x`), run by wasmtime. This is the only module that uses wasmtime.
//!
//! - [`runtime`]: one `Engine` (epoch interruption, pooling allocator) and its epoch ticker;
//!   components compiled once, artifacts cached on disk by content hash and engine
//!   compatibility; version check; pre-linked `InstancePre`s.
//! - [`cache`]: the artifact cache: a directory only the broker's user can write, and a keyed
//!   MAC on every artifact, checked before it is deserialized.
//! - [`host`]: the imports (`logging`, `clock`) and WASI 0.2 with an empty context, linked so
//!   that nothing can block the routing thread; [`state`]: the `state` import, kept by
//!   [`crate::store::PluginState`] (on disk for durable exchanges).
//! - [`instance`]: one instance in its own store; every call under a deadline and caps.
//! - [`output`]: bounds on what a plugin can make the host say or do: texts cut to 1 KiB,
//!   the cap on ids per `route` answer, the per-exchange warning throttle.
//! - [`router`]: the [`Router`](crate::exchange::Router) of one exchange: one long-lived
//!   instance behind a mutex, binding ids, failure handling.
//! - [`decisions`]: the decision cache of one exchange, keyed on every input the plugin was
//!   given, allocation-free on look-up.
//! - [`plugin`]: the [`ExchangeType`](crate::exchange::ExchangeType) of one plugin, and the
//!   all-or-nothing hot-reload swap.
//! - [`manager`]: [`PluginManager`], loading from the plugin directory and watching it.
//! - [`tenant`]: plugins per vhost: a vhost's own types, their stored files, and their
//!   start-up load.
//! - [`v0_1`]: the `bindgen!` of the 0.1 contract and lowering of broker values into it;
//!   [`v0_2`]: the 0.2 contract (0.1's types and imports, a `route` that also answers a
//!   delay), whose messages the vhost holds (`vhost/delayed/`).
//!
//! Invariants: a plugin sees only WIT types, never host types; one instance serves one
//! exchange and is never entered concurrently nor after a trap; a message is routed entirely
//! by one plugin version; nothing a plugin does can panic the broker or stall it beyond the
//! call deadline.

pub mod budget;
pub mod cache;
mod counters;
pub mod decisions;
pub mod host;
pub mod instance;
pub mod latency;
pub mod manager;
pub mod output;
pub mod plugin;
pub mod router;
pub mod runtime;
pub mod shadow;
pub mod state;
pub mod tenant;
pub mod v0_1;
pub mod v0_2;

use std::time::Duration;

pub use counters::GlobalStatus;

/// The first WIT package this host serves; a plugin loads if it was built against a 0.1.x or
/// a 0.2.x version of it (`runtime.rs`).
pub const WIT_PACKAGE: &str = "bourse:exchange@0.1.0";
/// The 0.2 package (`wit/v0.2/`): `route` may also decide a delay.
pub const WIT_PACKAGE_0_2: &str = "bourse:exchange@0.2.0";
pub use manager::{PluginManager, ScanReport};

/// Process-wide counters.
static GLOBAL: counters::Counters = counters::Counters::new();

/// Process-wide totals of WASM routing (all brokers of the process): calls routed, failures by
/// kind, instances replaced, exchanges marked failed.
pub fn status() -> GlobalStatus {
    GLOBAL.snapshot()
}

/// Why a plugin could not be loaded, reloaded, rolled back or removed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WasmError {
    /// The file could not be read.
    #[error("cannot read plugin: {0}")]
    Io(String),
    /// Not a WebAssembly binary at all.
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build it as a component targeting \
         bourse:exchange@0.1.x (e.g. cargo build --target wasm32-wasip2, or componentize-py)"
    )]
    CoreModule,
    /// Exports a `bourse:exchange/router` of an unsupported version.
    #[error(
        "built against bourse:exchange@{found} (exports bourse:exchange/router@{found}); \
         this broker supports bourse:exchange@0.1.x"
    )]
    UnsupportedVersion {
        /// The version the component exports.
        found: String,
    },
    /// Exports no `bourse:exchange/router` at all.
    #[error(
        "not an exchange-type component: it exports no bourse:exchange/router interface \
         (exports: {})",
        exports.join(", ")
    )]
    NotAnExchangeType {
        /// What it does export.
        exports: Vec<String>,
    },
    /// The engine could not be created.
    #[error("WASM engine: {0}")]
    Engine(String),
    /// Compilation failed.
    #[error("invalid component: {0}")]
    Compile(String),
    /// Linking failed (an import the host cannot provide with a compatible type).
    #[error("cannot link the component: {0}")]
    Link(String),
    /// The component failed while being instantiated or described.
    #[error("plugin failed at load: {0}")]
    Guest(String),
    /// `describe().name` is not a valid plugin type name.
    #[error(
        "invalid exchange type name {0:?}: must start with \"x-\", at most 255 bytes, and not be a built-in type"
    )]
    BadName(String),
    /// A reload brought a component describing another type.
    #[error("the new component provides {found:?}, not {expected:?}")]
    NameChanged {
        /// The type being reloaded.
        expected: String,
        /// What the new component says.
        found: String,
    },
    /// The new version failed for one exchange during a reload; the old one keeps serving.
    #[error(
        "reload of {plugin} aborted, the previous version keeps serving: exchange '{exchange}' \
         in vhost '{vhost}': {error}"
    )]
    Reload {
        /// The type.
        plugin: String,
        /// The exchange the new version failed for.
        exchange: String,
        /// Its vhost.
        vhost: String,
        /// What went wrong.
        error: String,
    },
    /// Another file of the plugin directory provides this type.
    #[error(
        "exchange type '{name}' is already provided by {owner}; this file is ignored while \
         that one provides it (delete one of the two)"
    )]
    TypeTaken {
        /// The type.
        name: String,
        /// The file providing it.
        owner: String,
    },
    /// An exchange could not be reset: a fresh instance failed.
    #[error("exchange '{exchange}' in vhost '{vhost}' could not be reset: {error}")]
    Reset {
        /// The exchange.
        exchange: String,
        /// Its vhost.
        vhost: String,
        /// Why the fresh instance failed.
        error: String,
    },
    /// No such plugin is loaded.
    #[error("no plugin provides exchange type '{0}'")]
    UnknownPlugin(String),
    /// Rollback without a previous version.
    #[error("plugin '{0}' has no previous version to roll back to")]
    NoPrevious(String),
}

/// One loaded exchange type.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    /// The exchange type name.
    pub name: String,
    /// Whether new exchanges of it can be declared (false after its removal).
    pub registered: bool,
    /// The version serving it.
    pub current: VersionStatus,
    /// The version a rollback would go back to.
    pub previous: Option<VersionStatus>,
    /// Its declared exchanges.
    pub exchanges: Vec<ExchangeStatus>,
}

/// One version of a plugin.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    /// The plugin's own version string.
    pub version: String,
    /// Its summary.
    pub summary: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Where it was loaded from.
    pub origin: String,
    /// Time to compile (or load from the cache).
    pub compile_time: Duration,
    /// Whether the compiled artifact came from the disk cache.
    pub from_cache: bool,
    /// The contract it was built against ([`WIT_PACKAGE`] or [`WIT_PACKAGE_0_2`]).
    pub wit: &'static str,
}

/// One declared WASM exchange.
#[derive(Debug, Clone)]
pub struct ExchangeStatus {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub exchange: String,
    /// The plugin version routing it.
    pub plugin_version: String,
    /// That version's SHA-256.
    pub plugin_sha256: String,
    /// Number of bindings.
    pub bindings: usize,
    /// Whether decisions are cached.
    pub cacheable: bool,
    /// Why it is marked failed, if it is.
    pub failed: Option<String>,
    /// Messages routed by a plugin call.
    pub routed: u64,
    /// Messages answered from the cache.
    pub cache_hits: u64,
    /// Failed calls.
    pub failures: u64,
    /// Calls stopped at the deadline.
    pub deadlines: u64,
    /// Calls stopped at a memory or table cap.
    pub caps: u64,
    /// Other traps.
    pub traps: u64,
    /// Unknown binding ids returned by `route` (ignored).
    pub unknown_ids: u64,
    /// `route` calls that read a clock, the state or randomness although the plugin declared
    /// its decisions cacheable: their decisions were not cached.
    pub impure: u64,
    /// `route` answers over the id cap, or whose processing by the host ran past the deadline
    /// (each also a failure).
    pub oversized: u64,
    /// `route` answers of `err(text)`.
    pub plugin_errors: u64,
    /// Instances replaced after failures.
    pub replaced: u64,
    /// Hot reloads applied.
    pub reloads: u64,
    /// Plugin log lines dropped by the rate limit and not yet reported.
    pub log_lines_dropped: u64,
    /// Per-message warnings of this exchange held back by its throttle and not yet reported.
    pub warnings_suppressed: u64,
    /// Entries in its state store.
    pub state_entries: usize,
    /// Median duration of the sampled `route` calls (None before any).
    pub latency_p50: Option<std::time::Duration>,
    /// 99th percentile of the sampled `route` calls.
    pub latency_p99: Option<std::time::Duration>,
    /// `route` calls timed (one in `latency::SAMPLE_EVERY`).
    pub latency_samples: u64,
    /// Time spent in routing calls, by the engine's tick (wall time, not CPU time).
    pub busy: std::time::Duration,
    /// The live instance's largest linear memory, in bytes (0 without one).
    pub memory_bytes: usize,
    /// The last failure: when (ms since the epoch) and why.
    pub last_error: Option<(u64, String)>,
    /// Its last log lines, oldest first.
    pub logs: Vec<host::LogLine>,
}
