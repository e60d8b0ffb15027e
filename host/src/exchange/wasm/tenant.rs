//! Plugins per vhost: exchange types a tenant uploads into its own vhost, seen only by that
//! vhost's declares (docs/plugins.md, "Plugins per vhost").
//!
//! - **Scoping.** Each vhost declares through its own [`Registry`] layer over the broker-wide
//!   one ([`Registry::layered`]): its own types first, then the built-ins and the plugin
//!   directory's types, which every vhost sees. A vhost type may not take the name of a
//!   built-in or broker-wide type (refused at upload); two vhosts may each have an `x-foo`.
//! - **Loading** is the plugin directory's: the same engine, compile cache, limits and
//!   [`WasmExchangeType`] (versions, the all-or-nothing swap), so replacing and rolling back
//!   move the vhost's existing exchanges of the type to the new version as a directory reload
//!   does, and removing a type leaves them routing.
//! - **Storage.** The bytes go to `<vhost dir>/plugins/<sha256>.wasm`, written, fsynced, then
//!   the directory fsynced, before the metadata command naming the hash is logged (why a hash
//!   and not the bytes: `meta::plugins`). Files no version refers to are removed after each
//!   change and at start-up; deleting the vhost removes its directory, plugins included.
//! - **Order of an upload**: size check, compile and describe (off the async threads, under
//!   no vhost lock), name check, file written, the version swapped in (it can still fail for
//!   an existing exchange: nothing is logged then), the command logged; if logging fails the
//!   swap is undone. A change is therefore in force before it is logged, never logged without
//!   being in force. Replaying a log (start-up, or a replicated command) goes the other way:
//!   [`VhostPlugins::sync`] makes the loaded types match the metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tracing::{info, warn};

use super::manager::{PluginManager, plugin_status};
use super::plugin::WasmExchangeType;
use super::runtime::{PluginVersion, sha256_hex};
use super::{PluginStatus, WasmError};
use crate::exchange::Registry;
use crate::meta::MetaError;
use crate::meta::plugins::VhostPluginMeta;
use crate::store::StoreError;

/// Why a vhost plugin change was refused (nothing changed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum VhostPluginError {
    /// The upload is larger than `wasm_upload_max_bytes`.
    #[error("plugin of {size} bytes refused: larger than wasm_upload_max_bytes ({max} bytes)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The component names a built-in or broker-wide type.
    #[error("exchange type '{name}' is {by}: a vhost's plugin may not take its name")]
    NameTaken {
        /// The type name.
        name: String,
        /// "a built-in type" or "a broker-wide plugin".
        by: &'static str,
    },
    /// No such vhost.
    #[error("vhost '{0}' not found")]
    NoVhost(String),
    /// No such type in the vhost.
    #[error("no plugin type '{name}' in vhost '{vhost}'")]
    UnknownPlugin {
        /// The vhost.
        vhost: String,
        /// The type name.
        name: String,
    },
    /// No such exchange in the vhost.
    #[error("no exchange '{name}' in vhost '{vhost}'")]
    NoExchange {
        /// The vhost.
        vhost: String,
        /// The exchange name.
        name: String,
    },
    /// The exchange is not of a plugin type.
    #[error("exchange '{name}' is of type '{kind}', not a WASM plugin type")]
    NotAPlugin {
        /// The exchange name.
        name: String,
        /// Its type.
        kind: String,
    },
    /// The type has no shadow trial running.
    #[error("plugin type '{name}' in vhost '{vhost}' has no shadow trial running")]
    NoShadow {
        /// The vhost.
        vhost: String,
        /// The type name.
        name: String,
    },
    /// The user may not manage it (`auth::plugin_access`).
    #[error(transparent)]
    Denied(#[from] crate::auth::PluginAccessDenied),
    /// Not a loadable component, or the swap failed for an exchange.
    #[error(transparent)]
    Wasm(#[from] WasmError),
    /// The metadata command was refused or could not be logged.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The component could not be stored.
    #[error("cannot store the plugin: {0}")]
    Storage(String),
}

impl From<StoreError> for VhostPluginError {
    fn from(e: StoreError) -> Self {
        VhostPluginError::Storage(e.to_string())
    }
}

/// The plugin types of one vhost.
pub struct VhostPlugins {
    vhost: String,
    registry: Registry,
    types: Mutex<BTreeMap<String, Entry>>,
    /// Serialises the changes of this vhost's plugins.
    ops: Mutex<()>,
}

impl std::fmt::Debug for VhostPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostPlugins")
            .field("vhost", &self.vhost)
            .field("types", &self.types.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

struct Entry {
    ty: Arc<WasmExchangeType>,
    registered: bool,
}

/// How to take back an [`VhostPlugins::install`] whose command could not be logged.
pub enum Undo {
    /// The type was new: unregister it.
    Added(String),
    /// The type was swapped from `old`.
    Swapped {
        /// The type.
        ty: Arc<WasmExchangeType>,
        /// The version before.
        old: Arc<PluginVersion>,
        /// Whether it was registered before.
        registered: bool,
    },
    /// Nothing changed (the same bytes again).
    Nothing,
}

impl VhostPlugins {
    /// An empty set declaring through `registry` (a layer over the broker-wide types).
    pub fn new(vhost: &str, registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            vhost: vhost.to_owned(),
            registry,
            types: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
        })
    }

    /// The registry the vhost declares through.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Takes this vhost's plugin lock: changes of its plugins are applied one at a time.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.ops.lock()
    }

    /// Why `name` may not be a type of this vhost, if it may not.
    pub fn name_taken(&self, name: &str) -> Option<VhostPluginError> {
        let by = if crate::exchange::builtin::all()
            .iter()
            .any(|b| b.name() == name)
        {
            "a built-in type"
        } else if self.registry.has_below(name) {
            "a broker-wide plugin"
        } else {
            return None;
        };
        Some(VhostPluginError::NameTaken {
            name: name.to_owned(),
            by,
        })
    }

    /// Makes `version` serve its type in this vhost: a new type is registered, an existing
    /// one swapped (all-or-nothing: on error nothing changed). Call under [`lock`](Self::lock).
    pub fn install(
        &self,
        manager: &PluginManager,
        version: Arc<PluginVersion>,
    ) -> Result<Undo, WasmError> {
        let name = version.name.clone();
        let existing = self
            .types
            .lock()
            .get(&name)
            .map(|e| (e.ty.clone(), e.registered));
        let undo = match existing {
            Some((ty, registered)) => {
                let old = ty.current();
                if old.sha256 == version.sha256 {
                    if registered {
                        return Ok(Undo::Nothing);
                    }
                } else {
                    ty.swap_to(version)?;
                }
                Undo::Swapped {
                    ty,
                    old,
                    registered,
                }
            }
            None => {
                let ty = WasmExchangeType::new(version, manager.settings()?);
                self.types.lock().insert(
                    name.clone(),
                    Entry {
                        ty,
                        registered: false,
                    },
                );
                Undo::Added(name.clone())
            }
        };
        self.register(&name);
        Ok(undo)
    }

    /// Takes back an install (its command was not logged).
    pub fn undo(&self, undo: Undo) {
        match undo {
            Undo::Nothing => {}
            Undo::Added(name) => {
                self.registry.unregister(&name);
                self.types.lock().remove(&name);
            }
            Undo::Swapped {
                ty,
                old,
                registered,
            } => {
                let name = ty.current().name.clone();
                if ty.current().sha256 != old.sha256
                    && let Err(error) = ty.swap_to(old)
                {
                    warn!(vhost = %self.vhost, plugin = %name, %error,
                        "cannot swap a vhost plugin back after its change failed");
                }
                if !registered {
                    self.unregister(&name);
                }
            }
        }
    }

    fn register(&self, name: &str) {
        let mut types = self.types.lock();
        if let Some(entry) = types.get_mut(name)
            && !entry.registered
        {
            self.registry.register(entry.ty.clone());
            entry.registered = true;
            info!(vhost = %self.vhost, plugin = %name, "vhost exchange type registered");
        }
    }

    /// Unregisters a type: new declares of it in this vhost get 406 as for an unknown type;
    /// its existing exchanges keep routing on their instances, and follow it if it comes back.
    pub fn unregister(&self, name: &str) {
        let mut types = self.types.lock();
        if let Some(entry) = types.get_mut(name)
            && entry.registered
        {
            self.registry.unregister(name);
            entry.registered = false;
            info!(vhost = %self.vhost, plugin = %name, live_exchanges = entry.ty.live().len(),
                "vhost plugin removed; existing exchanges keep their instances");
        }
    }

    /// The type `name`, loaded (registered or not).
    pub fn get(&self, name: &str) -> Option<Arc<WasmExchangeType>> {
        self.types.lock().get(name).map(|e| e.ty.clone())
    }

    /// Every registered type's status.
    pub fn status(&self) -> Vec<PluginStatus> {
        let types: Vec<(String, Arc<WasmExchangeType>, bool)> = self
            .types
            .lock()
            .iter()
            .filter(|(_, e)| e.registered)
            .map(|(n, e)| (n.clone(), e.ty.clone(), e.registered))
            .collect();
        types
            .iter()
            .map(|(name, ty, registered)| plugin_status(name, ty, *registered))
            .collect()
    }

    /// One type's status (registered or not).
    pub fn status_of(&self, name: &str) -> Option<PluginStatus> {
        let types = self.types.lock();
        let entry = types.get(name)?;
        Some(plugin_status(name, &entry.ty, entry.registered))
    }

    /// The version with hash `sha256` for type `ty`: one it already holds, or the stored file
    /// compiled.
    pub fn version_of(
        &self,
        manager: &PluginManager,
        data_dir: &Path,
        ty: Option<&WasmExchangeType>,
        sha256: &str,
    ) -> Result<Arc<PluginVersion>, WasmError> {
        if let Some(ty) = ty {
            let held = std::iter::once(ty.current()).chain(ty.previous());
            if let Some(version) = held.into_iter().find(|v| v.sha256 == sha256) {
                return Ok(version);
            }
        }
        let bytes = read_component(data_dir, &self.vhost, sha256)?;
        manager.prepare_bytes(&bytes, &format!("vhost '{}'", self.vhost))
    }

    /// Makes the loaded types match `meta` (the vhost's plugins in the metadata): at start-up
    /// before the vhost's definitions are restored, and after a plugin command that did not
    /// come through this module (a replicated one). A type that cannot be loaded is logged and
    /// left out. Takes the plugin lock.
    pub fn sync(
        &self,
        manager: &PluginManager,
        data_dir: &Path,
        meta: &BTreeMap<String, VhostPluginMeta>,
    ) {
        let _ops = self.lock();
        for (name, wanted) in meta {
            let ty = self.get(name);
            let result = match ty {
                Some(ty) if ty.current().sha256 == wanted.current => Ok(()),
                Some(ty) => self
                    .version_of(manager, data_dir, Some(&ty), &wanted.current)
                    .and_then(|v| ty.swap_to(v).map(|_| ())),
                None => self.load_new(manager, data_dir, name, wanted),
            };
            match result {
                Ok(()) if self.get(name).is_some() => self.register(name),
                Ok(()) => {}
                Err(error) => {
                    warn!(vhost = %self.vhost, plugin = %name, %error, "vhost plugin not loaded")
                }
            }
        }
        let gone: Vec<String> = self
            .types
            .lock()
            .keys()
            .filter(|n| !meta.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.unregister(&name);
        }
    }

    /// Loads a type this vhost does not hold yet: its previous version first (if its file
    /// loads), then the current one over it, so a rollback after a restart goes where it would
    /// have gone before.
    fn load_new(
        &self,
        manager: &PluginManager,
        data_dir: &Path,
        name: &str,
        wanted: &VhostPluginMeta,
    ) -> Result<(), WasmError> {
        let current = self.version_of(manager, data_dir, None, &wanted.current)?;
        if current.name != name {
            return Err(WasmError::NameChanged {
                expected: name.to_owned(),
                found: current.name.clone(),
            });
        }
        if let Some(reason) = self.name_taken(name) {
            return Err(WasmError::Guest(reason.to_string()));
        }
        let previous = wanted
            .previous
            .as_deref()
            .and_then(|sha| self.version_of(manager, data_dir, None, sha).ok())
            .filter(|v| v.name == name);
        let ty = match previous {
            Some(previous) => {
                let ty = WasmExchangeType::new(previous, manager.settings()?);
                ty.swap_to(current)?;
                ty
            }
            None => WasmExchangeType::new(current, manager.settings()?),
        };
        self.types.lock().insert(
            name.to_owned(),
            Entry {
                ty,
                registered: false,
            },
        );
        Ok(())
    }
}

/// `<vhost dir>/plugins`.
pub fn plugins_dir(data_dir: &Path, vhost: &str) -> PathBuf {
    crate::store::vhost_dir(data_dir, vhost).join("plugins")
}

fn component_path(data_dir: &Path, vhost: &str, sha256: &str) -> PathBuf {
    plugins_dir(data_dir, vhost).join(format!("{sha256}.wasm"))
}

/// Stores a component as `<vhost dir>/plugins/<sha256>.wasm`: written under a temporary
/// name, fsynced, renamed, and the directory fsynced. A file already there with the same
/// content is kept.
pub fn store_component(
    data_dir: &Path,
    vhost: &str,
    sha256: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = plugins_dir(data_dir, vhost);
    crate::store::create_dir_durable(&dir)?;
    let path = component_path(data_dir, vhost, sha256);
    if std::fs::read(&path).is_ok_and(|held| sha256_hex(&held) == sha256) {
        return Ok(());
    }
    let tmp = dir.join(format!("{sha256}.wasm.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
    file.write_all(bytes)
        .map_err(StoreError::io("write", &tmp))?;
    file.sync_all().map_err(StoreError::io("fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(StoreError::io("rename", &tmp))?;
    crate::store::sync_dir(&dir)
}

/// The bytes of a stored component, checked against their hash.
pub fn read_component(data_dir: &Path, vhost: &str, sha256: &str) -> Result<Vec<u8>, WasmError> {
    let path = component_path(data_dir, vhost, sha256);
    let bytes =
        std::fs::read(&path).map_err(|e| WasmError::Io(format!("{}: {e}", path.display())))?;
    if sha256_hex(&bytes) != sha256 {
        return Err(WasmError::Io(format!(
            "{}: the content does not match its hash",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Removes the files of `<vhost dir>/plugins` that no version in `meta` refers to (replaced
/// twice, deleted, or written for a change that was then refused). Best effort: failures are
/// logged.
pub fn remove_unreferenced(data_dir: &Path, vhost: &str, meta: &BTreeMap<String, VhostPluginMeta>) {
    let dir = plugins_dir(data_dir, vhost);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let keep: Vec<String> = meta
        .values()
        .flat_map(|p| {
            p.files()
                .map(|sha| format!("{sha}.wasm"))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut removed = false;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if keep.iter().any(|k| k == file) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed = true,
            Err(error) => {
                warn!(vhost, file, %error, "cannot remove an unused vhost plugin file")
            }
        }
    }
    if removed && let Err(error) = crate::store::sync_dir(&dir) {
        warn!(vhost, %error, "cannot sync the vhost plugin directory");
    }
}
