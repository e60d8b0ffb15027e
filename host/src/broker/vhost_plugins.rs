//! A vhost's own plugin types at the broker level: upload, roll back, remove (each checked
//! against `auth::plugin_access`, stored in the vhost's directory and logged as a metadata
//! command), and keeping the loaded types in step with the metadata.

use std::sync::Arc;

use tracing::{info, warn};

use super::Shared;
use crate::exchange::wasm::shadow::Candidate;
use crate::exchange::wasm::tenant::{self, VhostPluginError};
use crate::exchange::wasm::{PluginManager, PluginStatus};

impl Shared {
    /// Makes `vhost`'s loaded plugin types match the metadata, and removes the plugin files no
    /// version refers to.
    pub(super) fn sync_vhost_plugins(&self, vhost: &str) {
        let Some(manager) = &self.plugins else { return };
        let plugins = self
            .meta
            .state()
            .vhosts
            .get(vhost)
            .map(|v| v.plugins.clone())
            .unwrap_or_default();
        manager
            .vhost(vhost)
            .sync(manager, &self.config.data_dir, &plugins);
        self.remove_unused_plugin_files(vhost);
    }

    fn remove_unused_plugin_files(&self, vhost: &str) {
        let plugins = self
            .meta
            .state()
            .vhosts
            .get(vhost)
            .map(|v| v.plugins.clone())
            .unwrap_or_default();
        tenant::remove_unreferenced(&self.config.data_dir, vhost, &plugins);
    }

    /// The plugin set of an open vhost.
    fn vhost_plugin_set(
        &self,
        vhost: &str,
    ) -> Result<(&PluginManager, Arc<tenant::VhostPlugins>), VhostPluginError> {
        if self.vhost(vhost).is_none() {
            return Err(VhostPluginError::NoVhost(vhost.to_owned()));
        }
        let manager = self.plugins.as_ref().ok_or_else(|| {
            VhostPluginError::Wasm(crate::exchange::wasm::WasmError::Engine(
                "WASM plugins are disabled (the engine did not start)".into(),
            ))
        })?;
        Ok((manager, manager.vhost(vhost)))
    }

    /// Refuses a component larger than `wasm_upload_max_bytes`.
    fn check_upload_size(&self, bytes: &[u8]) -> Result<(), VhostPluginError> {
        let max = self.config.wasm_upload_max_bytes;
        if bytes.len() as u64 > max {
            return Err(VhostPluginError::TooLarge {
                size: bytes.len() as u64,
                max,
            });
        }
        Ok(())
    }

    /// Checks that `user` (None: the operator, not checked) may manage type `name` of `vhost`
    /// (`auth::plugin_access`).
    fn authorize_plugin(
        &self,
        user: Option<&str>,
        vhost: &str,
        name: Option<&str>,
    ) -> Result<(), VhostPluginError> {
        let Some(user) = user else { return Ok(()) };
        let found = self.users.get(user).ok_or_else(|| {
            VhostPluginError::Meta(crate::meta::MetaError::NotFound(format!(
                "user '{user}' not found"
            )))
        })?;
        let grants = self.users.grants(user, vhost);
        crate::auth::may_manage_vhost_plugin(&found, grants.as_deref(), vhost, name)?;
        Ok(())
    }

    /// Resets WASM exchange `exchange` of `vhost` (see `RouterCore::reset`), if `user` may
    /// manage plugins there (as for the exchange's name). Slow (an instance is built): call it
    /// off the async threads.
    pub fn reset_plugin_exchange(
        &self,
        vhost: &str,
        exchange: &str,
        user: Option<&str>,
    ) -> Result<crate::exchange::wasm::ExchangeStatus, VhostPluginError> {
        let (manager, _set) = self.vhost_plugin_set(vhost)?;
        self.authorize_plugin(user, vhost, Some(exchange))?;
        let no_exchange = || VhostPluginError::NoExchange {
            vhost: vhost.to_owned(),
            name: exchange.to_owned(),
        };
        let found = self
            .vhost(vhost)
            .ok_or_else(|| VhostPluginError::NoVhost(vhost.to_owned()))?
            .exchange(exchange)
            .map_err(|_| no_exchange())?;
        let kind = found.spec.kind.to_string();
        manager
            .reset_exchange(vhost, exchange, &kind)
            .map_err(|e| match e {
                crate::exchange::wasm::WasmError::UnknownPlugin(_) => {
                    VhostPluginError::NotAPlugin {
                        name: exchange.to_owned(),
                        kind,
                    }
                }
                other => other.into(),
            })
    }

    /// Uploads a component into `vhost` as the type its `describe` names: a new type of that
    /// vhost only, or a new version of one it has (its exchanges move to it, all or nothing).
    /// Refused, with nothing stored or logged, when it is larger than `wasm_upload_max_bytes`,
    /// does not compile, link or describe itself, names a built-in or broker-wide type, or
    /// `user` may not manage it. Slow (compiling, fsyncs): call it off the async threads.
    pub fn put_vhost_plugin(
        &self,
        vhost: &str,
        bytes: &[u8],
        user: Option<&str>,
    ) -> Result<PluginStatus, VhostPluginError> {
        self.check_upload_size(bytes)?;
        let (manager, set) = self.vhost_plugin_set(vhost)?;
        // A user who may upload nothing here is refused before the compile.
        self.authorize_plugin(user, vhost, None)?;
        let _ops = set.lock();
        let version = manager.prepare_bytes(bytes, &format!("upload to vhost '{vhost}'"))?;
        let name = version.name.clone();
        if let Some(taken) = set.name_taken(&name) {
            return Err(taken);
        }
        self.authorize_plugin(user, vhost, Some(&name))?;
        let sha256 = version.sha256.clone();
        let command = crate::meta::MetaCommand::PutVhostPlugin {
            vhost: vhost.to_owned(),
            name: name.clone(),
            sha256: sha256.clone(),
        };
        // The log's rules (an `x-` name, not a built-in) before the type is registered, so a
        // name the log would refuse is never declarable, even briefly.
        self.meta.state().check(&command)?;
        let installed = tenant::store_component(&self.config.data_dir, vhost, &sha256, bytes)
            .map_err(VhostPluginError::from)
            .and_then(|()| Ok(set.install(manager, version)?));
        let undo = match installed {
            Ok(undo) => undo,
            Err(error) => {
                self.remove_unused_plugin_files(vhost);
                return Err(error);
            }
        };
        if let Err(error) = self.meta.execute(command) {
            set.undo(undo);
            self.remove_unused_plugin_files(vhost);
            return Err(error.into());
        }
        self.remove_unused_plugin_files(vhost);
        info!(vhost, plugin = %name, "vhost plugin installed");
        set.status_of(&name)
            .ok_or_else(|| VhostPluginError::UnknownPlugin {
                vhost: vhost.to_owned(),
                name,
            })
    }

    /// Swaps type `name` of `vhost` back to its previous version (its exchanges with it).
    pub fn rollback_vhost_plugin(
        &self,
        vhost: &str,
        name: &str,
        user: Option<&str>,
    ) -> Result<PluginStatus, VhostPluginError> {
        let (manager, set) = self.vhost_plugin_set(vhost)?;
        let _ops = set.lock();
        self.authorize_plugin(user, vhost, Some(name))?;
        let unknown = || VhostPluginError::UnknownPlugin {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
        };
        let meta = self
            .meta
            .state()
            .vhosts
            .get(vhost)
            .and_then(|v| v.plugins.get(name).cloned())
            .ok_or_else(unknown)?;
        let previous = meta.previous.ok_or_else(|| {
            VhostPluginError::Wasm(crate::exchange::wasm::WasmError::NoPrevious(
                name.to_owned(),
            ))
        })?;
        let ty = set.get(name).ok_or_else(unknown)?;
        let version = set.version_of(manager, &self.config.data_dir, Some(&ty), &previous)?;
        let old = ty.current();
        ty.swap_to(version)?;
        let command = crate::meta::MetaCommand::RollbackVhostPlugin {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
        };
        if let Err(error) = self.meta.execute(command) {
            if let Err(error) = ty.swap_to(old) {
                warn!(vhost, plugin = name, %error, "cannot undo a rollback that was not logged");
            }
            return Err(error.into());
        }
        info!(vhost, plugin = name, "vhost plugin rolled back");
        set.status_of(name).ok_or_else(unknown)
    }

    /// Removes type `name` of `vhost`: new declares of it there are refused as for an
    /// unknown type; its existing exchanges keep routing until deleted (as for a plugin
    /// file deleted from the plugin directory).
    pub fn delete_vhost_plugin(
        &self,
        vhost: &str,
        name: &str,
        user: Option<&str>,
    ) -> Result<(), VhostPluginError> {
        let (_, set) = self.vhost_plugin_set(vhost)?;
        let _ops = set.lock();
        self.authorize_plugin(user, vhost, Some(name))?;
        self.meta
            .execute(crate::meta::MetaCommand::DeleteVhostPlugin {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
            })
            .map_err(|e| match e {
                crate::meta::MetaError::NotFound(_) if self.vhost(vhost).is_some() => {
                    VhostPluginError::UnknownPlugin {
                        vhost: vhost.to_owned(),
                        name: name.to_owned(),
                    }
                }
                other => other.into(),
            })?;
        set.unregister(name);
        self.remove_unused_plugin_files(vhost);
        Ok(())
    }

    /// Starts a shadow trial of a component as a candidate version of type `name` of
    /// `vhost` (`exchange::wasm::shadow`): it must describe `name`, which the vhost must have.
    /// Nothing is stored or logged; a restart forgets the trial. Slow (compiling, building an
    /// instance per exchange): call it off the async threads.
    pub fn shadow_vhost_plugin(
        &self,
        vhost: &str,
        name: &str,
        bytes: &[u8],
        user: Option<&str>,
    ) -> Result<Arc<Candidate>, VhostPluginError> {
        self.check_upload_size(bytes)?;
        let (manager, set) = self.vhost_plugin_set(vhost)?;
        self.authorize_plugin(user, vhost, Some(name))?;
        let _ops = set.lock();
        let ty = set
            .get(name)
            .ok_or_else(|| VhostPluginError::UnknownPlugin {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
            })?;
        let version =
            manager.prepare_bytes(bytes, &format!("shadow of '{name}' in vhost '{vhost}'"))?;
        let candidate = Candidate::new(version, Arc::from(bytes));
        ty.start_shadow(candidate.clone())?;
        info!(vhost, plugin = name, candidate = %candidate.version.label(), "shadow trial started");
        Ok(candidate)
    }

    /// The shadow trial of type `name` of `vhost`, with the version it runs beside.
    pub fn vhost_plugin_shadow(
        &self,
        vhost: &str,
        name: &str,
        user: Option<&str>,
    ) -> Result<(Arc<Candidate>, PluginStatus), VhostPluginError> {
        let (_, set) = self.vhost_plugin_set(vhost)?;
        self.authorize_plugin(user, vhost, Some(name))?;
        let no_shadow = || VhostPluginError::NoShadow {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
        };
        let candidate = set
            .get(name)
            .and_then(|t| t.candidate())
            .ok_or_else(no_shadow)?;
        let status = set.status_of(name).ok_or_else(no_shadow)?;
        Ok((candidate, status))
    }

    /// Ends the shadow trial of type `name` of `vhost`; `promote` makes the candidate the
    /// type's version as an upload of its component would (stored, logged, every exchange
    /// moved to it, the old version kept for rollback), otherwise it is dropped. Answers the
    /// type's status.
    pub fn end_vhost_plugin_shadow(
        &self,
        vhost: &str,
        name: &str,
        promote: bool,
        user: Option<&str>,
    ) -> Result<PluginStatus, VhostPluginError> {
        let (candidate, _) = self.vhost_plugin_shadow(vhost, name, user)?;
        if promote {
            let status = self.put_vhost_plugin(vhost, &candidate.component, user)?;
            let (_, set) = self.vhost_plugin_set(vhost)?;
            if let Some(ty) = set.get(name) {
                ty.stop_shadow();
            }
            info!(vhost, plugin = name, "shadow candidate promoted");
            return Ok(status);
        }
        let (_, set) = self.vhost_plugin_set(vhost)?;
        let unknown = || VhostPluginError::UnknownPlugin {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
        };
        set.get(name).ok_or_else(unknown)?.stop_shadow();
        info!(vhost, plugin = name, "shadow trial dropped");
        set.status_of(name).ok_or_else(unknown)
    }

    /// The plugin types of `vhost` (empty for an unknown vhost).
    pub fn vhost_plugins(&self, vhost: &str) -> Vec<PluginStatus> {
        match (&self.plugins, self.vhost(vhost)) {
            (Some(manager), Some(_)) => manager.vhost(vhost).status(),
            _ => Vec::new(),
        }
    }
}
