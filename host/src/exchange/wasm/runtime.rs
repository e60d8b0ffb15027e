//! The engine: one wasmtime `Engine` (epoch interruption, pooling allocator) with its epoch
//! ticker and its linker; compiling components once, with the compiled artifact cached on disk
//! (behind a keyed MAC, see `cache.rs`); and turning a component into a [`PluginVersion`] ready
//! to instantiate.
//!
//! Engines are shared in the process between brokers that ask for the same engine-wide
//! settings (tests start many brokers), so their pools and tickers are not multiplied.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::WasmError;
use super::cache::{ArtifactCache, ArtifactId};
use super::host::{self, ExchangeCtx, HostState};
use super::instance::GuestPre;
use super::instance::{self, Instance};
use super::v0_1::ROUTER_EXPORT_PREFIX;
use super::{v0_1, v0_2};
use crate::config::WasmLimits;

/// The engine ticks every millisecond; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Settings fixed for an engine's lifetime (they size the pooling allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// The largest memory cap any vhost uses.
    pub memory_max_bytes: u64,
    /// The largest table cap any vhost uses.
    pub table_elements_max: u64,
    /// Most component instances alive at once.
    pub instances_max: u32,
}

/// One engine, its epoch ticker and its linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    settings: EngineSettings,
    /// `Engine::precompile_compatibility_hash`, hashed to a file-name-friendly string.
    compatibility: String,
    stop_ticker: Arc<AtomicBool>,
    /// Epoch ticks so far: a coarse clock the router reads for nothing on every call.
    ticks: Arc<AtomicU64>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// The process's engine for `settings`, created on first use.
    pub fn shared(settings: EngineSettings) -> Result<Arc<Self>, WasmError> {
        static ENGINES: Mutex<Vec<(EngineSettings, Weak<Runtime>)>> = Mutex::new(Vec::new());
        let mut engines = ENGINES.lock();
        engines.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(runtime) = engines
            .iter()
            .find(|(s, _)| *s == settings)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(runtime);
        }
        let runtime = Arc::new(Self::new(settings)?);
        engines.push((settings, Arc::downgrade(&runtime)));
        Ok(runtime)
    }

    /// A new engine with its own ticker thread.
    pub fn new(settings: EngineSettings) -> Result<Self, WasmError> {
        let page = 65_536;
        let memory = settings.memory_max_bytes.div_ceil(page) * page;
        let instances = settings.instances_max.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            // A Rust component has a handful of core instances (module, WASI adapter,
            // shims); CPython more.
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_memory_size(usize::try_from(memory).unwrap_or(usize::MAX))
            .table_elements(usize::try_from(settings.table_elements_max).unwrap_or(usize::MAX))
            // CPython's instance metadata is larger than the 1 MiB default.
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let compatibility = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = stop_ticker.clone();
        let ticks = Arc::new(AtomicU64::new(0));
        let ticked = ticks.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                    ticked.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            linker,
            settings,
            compatibility,
            stop_ticker,
            ticks,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks ([`EPOCH_TICK`]) since the engine started.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> EngineSettings {
        self.settings
    }

    /// Compiles `bytes` (or loads its artifact from `cache`) and checks that the
    /// component speaks a supported `bourse:exchange` version, links it, and asks it to
    /// describe itself.
    pub fn prepare(
        self: &Arc<Self>,
        bytes: &[u8],
        origin: &str,
        cache: Option<&ArtifactCache>,
        limits: &WasmLimits,
    ) -> Result<Arc<PluginVersion>, WasmError> {
        check_header(bytes)?;
        let sha256 = sha256_hex(bytes);
        let started = Instant::now();
        let (component, from_cache) = self.compile(bytes, &sha256, cache)?;
        let compile_time = started.elapsed();
        let minor = check_version(&self.engine, &component)?;
        // Not `define_unknown_imports_as_traps`: it would shadow the host's WASI 0.2.x
        // interfaces with trapping stubs for each other 0.2.y a guest names (it matches names
        // exactly, while the linker resolves imports by semver).
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Link(format!("{e:#}")))?;
        let link = |e: wasmtime::Error| WasmError::Link(format!("{e:#}"));
        let pre = match minor {
            Minor::V0_2 => GuestPre::V0_2(v0_2::BindingsPre::new(pre).map_err(link)?),
            Minor::V0_1 => GuestPre::V0_1(v0_1::BindingsPre::new(pre).map_err(link)?),
        };
        let scratch = ExchangeCtx::new("", "", "", limits.clone());
        let mut instance = Instance::new(&pre, scratch, limits.setup_deadline_ms)
            .map_err(|e| WasmError::Guest(format!("instantiation failed: {e}")))?;
        let description = instance
            .describe()
            .map_err(|e| WasmError::Guest(format!("describe failed: {e}")))?;
        if !description.name.starts_with("x-") || description.name.len() > 255 {
            return Err(WasmError::BadName(description.name));
        }
        info!(plugin = %description.name, version = %description.version, %origin,
            sha256 = %&sha256[..16], from_cache, compile_ms = compile_time.as_millis() as u64,
            "plugin compiled");
        Ok(Arc::new(PluginVersion {
            name: description.name,
            version: description.version,
            summary: description.summary,
            sha256,
            origin: origin.to_owned(),
            loaded_at: SystemTime::now(),
            compile_time,
            from_cache,
            pre,
            runtime: self.clone(),
        }))
    }

    fn compile(
        &self,
        bytes: &[u8],
        sha256: &str,
        cache: Option<&ArtifactCache>,
    ) -> Result<(Component, bool), WasmError> {
        let id = ArtifactId {
            sha256,
            compatibility: &self.compatibility,
        };
        // `load` returns only bytes whose MAC it checked (see `cache.rs`).
        if let Some(cache) = cache
            && let Some(artifact) = cache.load(id)
        {
            match deserialize(&self.engine, &artifact) {
                Ok(component) => return Ok((component, true)),
                Err(e) => warn!(path = %cache.path(id).display(), error = %format!("{e:#}"),
                    "cached plugin artifact unusable; recompiling"),
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| WasmError::Compile(format!("{e:#}")))?;
        if let Some(cache) = cache {
            let stored = component
                .serialize()
                .map_err(std::io::Error::other)
                .and_then(|artifact| cache.store(id, &artifact));
            if let Err(e) = stored {
                warn!(path = %cache.path(id).display(), error = %e, "cannot cache the compiled plugin");
            }
        }
        Ok((component, false))
    }
}

/// Loads an artifact whose MAC the cache verified.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be machine code wasmtime produced.
    // `artifact` is the in-memory copy of a cache file whose HMAC-SHA256, under a key only the
    // broker's user can read, `ArtifactCache::load` checked over exactly these bytes, this
    // component's SHA-256, this engine's compatibility hash and this broker version: so this
    // broker's `Component::serialize` produced it for this very component and engine. Nothing
    // rereads the file between the check and this call. wasmtime also checks the artifact's
    // header against this engine and refuses a mismatch.
    unsafe { Component::deserialize(engine, artifact) }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Refuses what is not a WebAssembly component before handing it to the compiler, so the
/// error says what the file is.
fn check_header(bytes: &[u8]) -> Result<(), WasmError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(WasmError::NotWasm);
    }
    // Version and layer: 1,0 + 0,0 is a core module; 0x0d,0 + 1,0 a component.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(WasmError::CoreModule);
    }
    Ok(())
}

/// The contract versions this host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Minor {
    V0_1,
    V0_2,
}

/// The newest supported `bourse:exchange/router` version `component` exports; refuses
/// components that export none.
fn check_version(engine: &Engine, component: &Component) -> Result<Minor, WasmError> {
    let ty = component.component_type();
    let mut found = Vec::new();
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_owned());
        if let (Some(version), ComponentItem::ComponentInstance(_)) =
            (name.strip_prefix(ROUTER_EXPORT_PREFIX), item.ty)
        {
            found.push(version.to_owned());
        }
    }
    if let Some(minor) = found.iter().filter_map(|v| supported(v)).max() {
        return Ok(minor);
    }
    match found.first() {
        Some(version) => Err(WasmError::UnsupportedVersion {
            found: version.clone(),
        }),
        None => Err(WasmError::NotAnExchangeType { exports }),
    }
}

/// `0.1.x` or `0.2.x` (what this host speaks).
fn supported(version: &str) -> Option<Minor> {
    let mut parts = version.split(['.', '-', '+']);
    if parts.next() != Some("0") {
        return None;
    }
    match parts.next() {
        Some("1") => Some(Minor::V0_1),
        Some("2") => Some(Minor::V0_2),
        _ => None,
    }
}

/// One compiled, linked and described version of a plugin.
pub struct PluginVersion {
    /// The exchange type it provides (`describe().name`).
    pub name: String,
    /// The plugin's own version string.
    pub version: String,
    /// Its one-line summary.
    pub summary: String,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// Where it came from (a file path).
    pub origin: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// How long compiling (or loading the cached artifact) took.
    pub compile_time: Duration,
    /// Whether the compiled artifact came from the disk cache.
    pub from_cache: bool,
    pre: GuestPre,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .field("origin", &self.origin)
            .finish()
    }
}

impl PluginVersion {
    /// A fresh instance for `ctx`, not yet initialised.
    pub fn instantiate(&self, ctx: Arc<ExchangeCtx>) -> Result<Instance, instance::CallError> {
        let deadline = ctx.limits.setup_deadline_ms;
        Instance::new(&self.pre, ctx, deadline)
    }

    /// Whether it speaks the 0.2 contract, whose `route` may decide a delay.
    pub fn decides_delays(&self) -> bool {
        self.pre.decides_delays()
    }

    /// The engine this version was compiled for.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// A short identity for logs: `name version (sha256 prefix)`.
    pub fn label(&self) -> String {
        format!("{} {} ({})", self.name, self.version, &self.sha256[..12])
    }
}

/// Where compiled artifacts go for a broker: `wasm_cache_dir`, else `<data_dir>/wasm-cache`.
pub fn cache_dir(config: &crate::config::Config) -> PathBuf {
    config
        .wasm_cache_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("wasm-cache"))
}

/// Engine settings covering the global limits and every vhost override.
pub fn engine_settings(config: &crate::config::Config) -> EngineSettings {
    let mut all: Vec<WasmLimits> = vec![config.wasm.clone()];
    all.extend(config.vhost_limits.keys().map(|v| config.wasm_limits(v)));
    EngineSettings {
        memory_max_bytes: all.iter().map(|l| l.memory_max_bytes).max().unwrap_or(0),
        table_elements_max: all.iter().map(|l| l.table_elements_max).max().unwrap_or(0),
        instances_max: config.wasm_instances_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(WasmError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(WasmError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn only_0_1_and_0_2_are_supported() {
        assert_eq!(supported("0.1.0"), Some(Minor::V0_1));
        assert_eq!(supported("0.1.7"), Some(Minor::V0_1));
        assert_eq!(supported("0.1.0-rc1"), Some(Minor::V0_1));
        assert_eq!(supported("0.2.0"), Some(Minor::V0_2));
        assert_eq!(supported("0.2.3"), Some(Minor::V0_2));
        assert_eq!(supported("0.3.0"), None);
        assert_eq!(supported("9.0.0"), None);
        assert_eq!(supported("1.1.0"), None);
    }
}
