//! The plugin manager: loads every `*.wasm` of the plugin directory at start-up, then watches
//! it (polling size and mtime, then the content hash) and applies what changed: a new file adds
//! an exchange type, a changed file hot-reloads its type, a removed file removes it. The same
//! operations are methods (`load`, `replace`, `rollback`, `remove`, `status`) for tests and a
//! management API.
//!
//! A file that is not a component, targets another major version of the WIT, or fails to
//! compile, link or describe itself is logged with the reason and skipped; the broker runs on.
//!
//! One file provides one type, and a type is provided by one file: a file describing a type
//! that another file of the directory provides is refused (logged with both file names) and
//! the owner keeps it, with its live exchanges. At start-up files are loaded in name order, so
//! the first name wins; later, the file that already provides the type. A refused file is
//! tried again once the owner is deleted (its exchanges then follow it, as for any reload).
//!
//! The manager exists in every broker, with or without a plugin directory: it also holds the
//! vhosts' own plugin sets ([`super::tenant`]). Without a plugin directory the engine and the
//! compile cache are made on first use (the first vhost plugin), so a broker that never loads
//! a plugin never creates them.
//!
//! Removing a type (its file deleted, or `remove`) unregisters it: declaring a new exchange of
//! it fails with 406 as for any unknown type, while exchanges already declared keep routing on
//! their instances (deleting a file must not break live traffic). If a file providing the type
//! comes back, those exchanges are hot-reloaded onto it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tracing::{error, info, warn};

use super::budget::{BudgetLimits, Budgets, VhostBudget};
use super::cache::ArtifactCache;
use super::plugin::{Settings, WasmExchangeType};
use super::runtime::{self, EngineSettings, PluginVersion, Runtime};
use super::tenant::VhostPlugins;
use super::{ExchangeStatus, PluginStatus, VersionStatus, WasmError};
use crate::config::Config;
use crate::exchange::Registry;

/// Loads, reloads and removes WASM exchange types of one broker. Cheap to clone.
#[derive(Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager")
            .field("plugin_dir", &self.inner.plugin_dir)
            .finish()
    }
}

struct Inner {
    /// The engine and the settings its types share, made on first use ([`Self::core`]).
    core: Mutex<Option<Core>>,
    engine_settings: EngineSettings,
    /// What the compile cache and the limits are made from.
    config: Config,
    registry: Registry,
    plugin_dir: Option<PathBuf>,
    /// Each open vhost's own plugin types.
    vhosts: Mutex<BTreeMap<String, Arc<VhostPlugins>>>,
    /// Each vhost's WASM budget; made with the manager (connections read it before any
    /// engine exists).
    budgets: Arc<Budgets>,
    /// Every type ever loaded, by name (removed ones stay so they can come back).
    types: Mutex<BTreeMap<String, Entry>>,
    /// What the directory looked like at the last scan.
    files: Mutex<BTreeMap<PathBuf, FileSeen>>,
    /// Serialises load / replace / rollback / remove / scan.
    ops: Mutex<()>,
    /// Called after a scan that loaded something (the broker restores the durable exchanges
    /// that were waiting for a type).
    on_loaded: Mutex<Option<LoadedHook>>,
}

/// See [`PluginManager::on_loaded`].
type LoadedHook = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct Core {
    runtime: Arc<Runtime>,
    settings: Arc<Settings>,
}

struct Entry {
    ty: Arc<WasmExchangeType>,
    registered: bool,
}

impl Inner {
    /// The engine and settings, created now if this is the first use.
    fn core(&self) -> Result<Core, WasmError> {
        let mut core = self.core.lock();
        if let Some(core) = core.as_ref() {
            return Ok(core.clone());
        }
        let runtime = Runtime::shared(self.engine_settings)?;
        let config = &self.config;
        let settings = Arc::new(Settings {
            global: config.wasm.clone(),
            per_vhost: config.vhost_limits.clone(),
            cache: ArtifactCache::for_config(config).map(Arc::new),
            budgets: self.budgets.clone(),
        });
        let made = Core { runtime, settings };
        *core = Some(made.clone());
        Ok(made)
    }
}

#[derive(Clone)]
struct FileSeen {
    modified: Option<SystemTime>,
    len: u64,
    sha256: String,
    /// The type this file provides, if it loaded (kept when a later version of the file is
    /// refused: the type's current version still came from it).
    plugin: Option<String>,
    /// Whether the file's current bytes were refused.
    refused: bool,
    /// The type this file describes but was refused because another file provides it; the
    /// file is tried again once that file is gone.
    conflict: Option<String>,
}

/// What one directory scan did.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// Types added or reloaded: (file, type name).
    pub loaded: Vec<(PathBuf, String)>,
    /// Files refused: (file, reason).
    pub refused: Vec<(PathBuf, String)>,
    /// Types removed because their file went away.
    pub removed: Vec<String>,
}

impl PluginManager {
    /// A manager for `config` registering into `registry`. With a plugin directory, creates
    /// (or shares) the engine now; without one, on first use. Loads nothing yet.
    pub fn new(config: &Config, registry: Registry) -> Result<Self, WasmError> {
        let manager = Self {
            inner: Arc::new(Inner {
                core: Mutex::new(None),
                engine_settings: runtime::engine_settings(config),
                config: config.clone(),
                registry,
                vhosts: Mutex::new(BTreeMap::new()),
                budgets: Arc::new(Budgets::new(
                    config.wasm.clone(),
                    config.vhost_limits.clone(),
                    config.wasm_instances_max,
                )),
                plugin_dir: config.plugin_dir.clone(),
                types: Mutex::new(BTreeMap::new()),
                files: Mutex::new(BTreeMap::new()),
                ops: Mutex::new(()),
                on_loaded: Mutex::new(None),
            }),
        };
        if manager.inner.plugin_dir.is_some() {
            manager.inner.core()?;
        }
        Ok(manager)
    }

    /// The plugin types of `vhost` (an empty set over the broker-wide types at first).
    pub fn vhost(&self, vhost: &str) -> Arc<VhostPlugins> {
        self.inner
            .vhosts
            .lock()
            .entry(vhost.to_owned())
            .or_insert_with(|| VhostPlugins::new(vhost, self.inner.registry.layered()))
            .clone()
    }

    /// Forgets a deleted vhost's plugin types and budget (its exchanges are gone with it).
    pub fn forget_vhost(&self, vhost: &str) {
        self.inner.vhosts.lock().remove(vhost);
        self.inner.budgets.forget(vhost);
    }

    /// The WASM budget of `vhost` (made from the config on first use).
    pub fn budget(&self, vhost: &str) -> Arc<VhostBudget> {
        self.inner.budgets.get(vhost)
    }

    /// The config's budget of `vhost`, that runtime limits apply over.
    pub fn config_budget(&self, vhost: &str) -> BudgetLimits {
        self.inner.budgets.config_limits(vhost)
    }

    /// Compiles (or loads from the cache), checks and describes a component, as for the
    /// plugin directory; `origin` says where it came from in logs and status.
    pub fn prepare_bytes(
        &self,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Arc<PluginVersion>, WasmError> {
        let core = self.inner.core()?;
        core.runtime.prepare(
            bytes,
            origin,
            core.settings.cache.as_deref(),
            &core.settings.global,
        )
    }

    /// The settings (limits, instance counts per vhost, cache) plugin types share.
    pub fn settings(&self) -> Result<Arc<Settings>, WasmError> {
        Ok(self.inner.core()?.settings)
    }

    /// The directory this manager loads from.
    pub fn plugin_dir(&self) -> Option<&Path> {
        self.inner.plugin_dir.as_deref()
    }

    /// Loads the component at `path`: registers its type, or hot-reloads the type if it is
    /// already loaded (a no-op when the bytes are the same).
    pub fn load(&self, path: &Path) -> Result<PluginStatus, WasmError> {
        let _op = self.inner.ops.lock();
        let bytes = read(path)?;
        let name = self.load_bytes_locked(&bytes, path)?;
        self.status_of(&name)
    }

    /// Like [`load`](Self::load), but only for a type that is already loaded.
    pub fn replace(&self, path: &Path) -> Result<PluginStatus, WasmError> {
        let _op = self.inner.ops.lock();
        let bytes = read(path)?;
        let version = self.prepare(&bytes, path)?;
        if !self.inner.types.lock().contains_key(&version.name) {
            return Err(WasmError::UnknownPlugin(version.name.clone()));
        }
        let name = self.install(version)?;
        self.status_of(&name)
    }

    /// Swaps a type back to its previous version.
    pub fn rollback(&self, name: &str) -> Result<PluginStatus, WasmError> {
        let _op = self.inner.ops.lock();
        let ty = self.ty(name)?;
        ty.rollback()?;
        self.status_of(name)
    }

    /// Resets exchange `exchange` of `vhost`, of plugin type `kind` (the vhost's own type of
    /// that name, else the broker-wide one): see [`RouterCore::reset`](super::router::RouterCore::reset).
    pub fn reset_exchange(
        &self,
        vhost: &str,
        exchange: &str,
        kind: &str,
    ) -> Result<ExchangeStatus, WasmError> {
        let unknown = || WasmError::UnknownPlugin(kind.to_owned());
        let ty = match self.vhost(vhost).get(kind) {
            Some(ty) => ty,
            None => self.ty(kind)?,
        };
        ty.reset(vhost, exchange).ok_or_else(unknown)?
    }

    /// Tries again every file of the plugin directory that was refused (a reload refused by
    /// one of the type's exchanges, a file describing a type another file provides...),
    /// whether it changed or not, then scans as usual.
    pub fn retry_refused(&self) -> ScanReport {
        {
            let _op = self.inner.ops.lock();
            self.inner.files.lock().retain(|_, seen| !seen.refused);
        }
        self.scan()
    }

    /// Unregisters a type: new declares of it get 406, existing exchanges keep routing.
    pub fn remove(&self, name: &str) -> Result<(), WasmError> {
        let _op = self.inner.ops.lock();
        self.remove_locked(name)
    }

    fn remove_locked(&self, name: &str) -> Result<(), WasmError> {
        let mut types = self.inner.types.lock();
        let entry = types
            .get_mut(name)
            .ok_or_else(|| WasmError::UnknownPlugin(name.to_owned()))?;
        if entry.registered {
            self.inner.registry.unregister(name);
            entry.registered = false;
            info!(plugin = %name, live_exchanges = entry.ty.live().len(),
                "plugin removed; existing exchanges keep their instances");
        }
        Ok(())
    }

    /// Every type loaded so far (removed ones included, flagged).
    pub fn status(&self) -> Vec<PluginStatus> {
        let names: Vec<String> = self.inner.types.lock().keys().cloned().collect();
        names
            .iter()
            .filter_map(|name| self.status_of(name).ok())
            .collect()
    }

    /// One type's status.
    pub fn status_of(&self, name: &str) -> Result<PluginStatus, WasmError> {
        let (ty, registered) = {
            let types = self.inner.types.lock();
            let entry = types
                .get(name)
                .ok_or_else(|| WasmError::UnknownPlugin(name.to_owned()))?;
            (entry.ty.clone(), entry.registered)
        };
        Ok(plugin_status(name, &ty, registered))
    }

    fn ty(&self, name: &str) -> Result<Arc<WasmExchangeType>, WasmError> {
        self.inner
            .types
            .lock()
            .get(name)
            .map(|e| e.ty.clone())
            .ok_or_else(|| WasmError::UnknownPlugin(name.to_owned()))
    }

    fn prepare(&self, bytes: &[u8], origin: &Path) -> Result<Arc<PluginVersion>, WasmError> {
        self.prepare_bytes(bytes, &origin.display().to_string())
    }

    fn load_bytes_locked(&self, bytes: &[u8], origin: &Path) -> Result<String, WasmError> {
        let version = self.prepare(bytes, origin)?;
        self.install(version)
    }

    /// Registers a new type, or swaps an existing one to `version`.
    fn install(&self, version: Arc<PluginVersion>) -> Result<String, WasmError> {
        let name = version.name.clone();
        if crate::exchange::builtin::all()
            .iter()
            .any(|b| b.name() == name)
        {
            return Err(WasmError::BadName(name));
        }
        let existing = self.inner.types.lock().get(&name).map(|e| e.ty.clone());
        let ty = match existing {
            Some(ty) => {
                if ty.current().sha256 != version.sha256 {
                    ty.swap_to(version)?;
                }
                ty
            }
            None => {
                let ty = WasmExchangeType::new(version, self.settings()?);
                self.inner.types.lock().insert(
                    name.clone(),
                    Entry {
                        ty: ty.clone(),
                        registered: false,
                    },
                );
                ty
            }
        };
        let mut types = self.inner.types.lock();
        if let Some(entry) = types.get_mut(&name)
            && !entry.registered
        {
            self.inner.registry.register(ty);
            entry.registered = true;
            info!(plugin = %name, "exchange type registered");
        }
        Ok(name)
    }

    /// Sets what to call after a scan that loaded a type or a version (off the manager's
    /// locks, on the scanning thread).
    pub fn on_loaded(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.inner.on_loaded.lock() = Some(Arc::new(hook));
    }

    /// One pass over the plugin directory: loads new and changed `*.wasm` files, removes the
    /// types whose file went away. Errors are logged and reported, never fatal. Then, if
    /// something loaded, calls the [`on_loaded`](Self::on_loaded) hook.
    pub fn scan(&self) -> ScanReport {
        let report = self.scan_dir();
        if !report.loaded.is_empty() {
            let hook = self.inner.on_loaded.lock().clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        if !report.loaded.is_empty() || !report.removed.is_empty() {
            self.prune_cache();
        }
        report
    }

    /// Deletes the compile cache's artifacts that no loaded version (current or previous, of
    /// the directory's types and of every open vhost's) uses and that were not used for
    /// [`PRUNE_UNUSED_AFTER`](super::cache::PRUNE_UNUSED_AFTER). Returns (files, bytes).
    pub fn prune_cache(&self) -> (usize, u64) {
        let Some(cache) = self
            .inner
            .core
            .lock()
            .as_ref()
            .and_then(|core| core.settings.cache.clone())
        else {
            return (0, 0);
        };
        let mut in_use = std::collections::HashSet::new();
        let vhosts: Vec<Arc<VhostPlugins>> = self.inner.vhosts.lock().values().cloned().collect();
        let statuses = self
            .status()
            .into_iter()
            .chain(vhosts.iter().flat_map(|v| v.status()));
        for status in statuses {
            in_use.insert(status.current.sha256);
            in_use.extend(status.previous.map(|p| p.sha256));
        }
        let (files, bytes) = cache.prune(&in_use, super::cache::PRUNE_UNUSED_AFTER);
        if files > 0 {
            info!(files, bytes, dir = %cache.dir().display(), "unused plugin artifacts pruned");
        }
        (files, bytes)
    }

    fn scan_dir(&self) -> ScanReport {
        let _op = self.inner.ops.lock();
        let mut report = ScanReport::default();
        let Some(dir) = self.inner.plugin_dir.clone() else {
            return report;
        };
        let present = match list_wasm(&dir) {
            Ok(files) => files,
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "cannot read the plugin directory");
                return report;
            }
        };
        let before = self.inner.files.lock().clone();
        let listed: BTreeSet<PathBuf> = present.iter().map(|(p, _, _)| p.clone()).collect();
        let mut after: BTreeMap<PathBuf, FileSeen> = BTreeMap::new();
        for (path, modified, len) in present {
            let seen = before.get(&path);
            // A file refused for a type another file provided is tried again once that
            // file is gone.
            let retry = seen
                .and_then(|s| s.conflict.as_deref())
                .is_some_and(|name| owner(name, &path, &before, &after, &listed).is_none());
            if let Some(seen) = seen.filter(|s| s.modified == modified && s.len == len && !retry) {
                after.insert(path, seen.clone());
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read plugin file");
                    continue;
                }
            };
            let sha256 = runtime::sha256_hex(&bytes);
            if let Some(seen) = seen.filter(|s| s.sha256 == sha256 && !retry) {
                after.insert(
                    path,
                    FileSeen {
                        modified,
                        len,
                        ..seen.clone()
                    },
                );
                continue;
            }
            let mut conflict = None;
            let loaded = self.prepare(&bytes, &path).and_then(|version| {
                // One file per type: the one providing it keeps it (at start-up, the first
                // file in name order). Another file describing the same type would otherwise
                // take over its live exchanges.
                match owner(&version.name, &path, &before, &after, &listed) {
                    Some(owner) => {
                        conflict = Some(version.name.clone());
                        Err(WasmError::TypeTaken {
                            name: version.name.clone(),
                            owner: owner.display().to_string(),
                        })
                    }
                    None => self.install(version),
                }
            });
            let refused = loaded.is_err();
            let plugin = match loaded {
                Ok(name) => {
                    report.loaded.push((path.clone(), name.clone()));
                    Some(name)
                }
                Err(e) => {
                    error!(file = %path.display(), error = %e, "plugin refused");
                    report.refused.push((path.clone(), e.to_string()));
                    seen.and_then(|s| s.plugin.clone())
                }
            };
            after.insert(
                path,
                FileSeen {
                    modified,
                    len,
                    sha256,
                    plugin,
                    refused,
                    conflict,
                },
            );
        }
        // Types whose file is gone, unless another file now provides them.
        for (path, seen) in &before {
            let Some(name) = &seen.plugin else { continue };
            if after.contains_key(path) {
                continue;
            }
            if after.values().any(|s| s.plugin.as_ref() == Some(name)) {
                continue;
            }
            if self.remove_locked(name).is_ok() {
                info!(file = %path.display(), plugin = %name, "plugin file removed");
                report.removed.push(name.clone());
            }
        }
        *self.inner.files.lock() = after;
        report
    }

    /// Polls the plugin directory every `interval` on a background thread, until the manager
    /// is dropped.
    pub fn watch(&self, interval: Duration) {
        if self.inner.plugin_dir.is_none() || interval.is_zero() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { return };
                    PluginManager { inner }.scan();
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "cannot start the plugin directory watcher");
        }
    }
}

/// The file other than `path` that provides type `name`: one already handled in this scan
/// (`after`), or one that provided it at the last scan (`before`) and is still there.
fn owner(
    name: &str,
    path: &Path,
    before: &BTreeMap<PathBuf, FileSeen>,
    after: &BTreeMap<PathBuf, FileSeen>,
    listed: &BTreeSet<PathBuf>,
) -> Option<PathBuf> {
    let provides = |(p, s): (&PathBuf, &FileSeen)| {
        (p.as_path() != path && s.plugin.as_deref() == Some(name)).then(|| p.clone())
    };
    after.iter().find_map(provides).or_else(|| {
        before
            .iter()
            .filter(|(p, _)| listed.contains(*p) && !after.contains_key(*p))
            .find_map(provides)
    })
}

fn read(path: &Path) -> Result<Vec<u8>, WasmError> {
    std::fs::read(path).map_err(|e| WasmError::Io(format!("{}: {e}", path.display())))
}

/// `(path, mtime, size)` of every `*.wasm` file directly in `dir`, sorted by path.
fn list_wasm(dir: &Path) -> std::io::Result<Vec<(PathBuf, Option<SystemTime>, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            files.push((path, meta.modified().ok(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// The status of type `name` served by `ty`.
pub(super) fn plugin_status(name: &str, ty: &WasmExchangeType, registered: bool) -> PluginStatus {
    let version = |v: &PluginVersion| VersionStatus {
        version: v.version.clone(),
        summary: v.summary.clone(),
        sha256: v.sha256.clone(),
        origin: v.origin.clone(),
        compile_time: v.compile_time,
        from_cache: v.from_cache,
        wit: if v.decides_delays() {
            super::WIT_PACKAGE_0_2
        } else {
            super::WIT_PACKAGE
        },
    };
    PluginStatus {
        name: name.to_owned(),
        registered,
        current: version(&ty.current()),
        previous: ty.previous().map(|v| version(&v)),
        exchanges: ty
            .live()
            .iter()
            .map(|c| c.status())
            .collect::<Vec<ExchangeStatus>>(),
    }
}
