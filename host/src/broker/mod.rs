//! The broker: shared state (config, users, vhosts, exchange types) and the accept loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::Context;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::UserStore;
use crate::config::Config;
use crate::connection::{TlsError, TlsServer};
use crate::exchange::Registry;
use crate::exchange::wasm::budget::VhostBudget;
use crate::exchange::wasm::tenant::{self, VhostPluginError};
use crate::exchange::wasm::{PluginManager, PluginStatus};
use crate::store::{StoreError, StoreOptions};
use crate::vhost::VHost;

mod meta;
mod vhost_plugins;

/// State shared by every connection.
pub struct Shared {
    /// The configuration the broker started with.
    pub config: Config,
    /// Users and their passwords.
    pub users: UserStore,
    /// Exchange types, built-in and plugins.
    pub registry: Registry,
    /// WASM exchange-type plugins: the plugin directory's and each vhost's own (None only
    /// when the WASM engine could not start).
    pub plugins: Option<PluginManager>,
    /// The memory high-watermark alarm (docs/memory.md).
    pub memory: crate::memory::MemoryMonitor,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection: AtomicU64,
    /// Connections past connection.open, against `limits.connection_max`.
    pub(crate) connections: Arc<AtomicU32>,
    /// What each user has open, against its `[user_limits]` (one entry per user who logged in).
    user_usage: parking_lot::Mutex<HashMap<String, Arc<crate::limits::UserUsage>>>,
    /// Raised by [`BrokerHandle::shutdown`]: every connection closes with 320. Each connection
    /// task holds a receiver until it ends, so the sender sees when all are gone.
    pub(crate) closing: watch::Sender<bool>,
    /// The open connections and their states.
    pub(crate) open: Arc<crate::connection::Connections>,
    /// Vhosts, users and permissions, durable (`meta/`).
    pub meta: crate::meta::Meta,
    /// Message rates, sampled by the management API.
    pub rates: crate::stats::Rates,
    /// This node's cluster (Raft for the metadata), when configured (`meta.rs`).
    cluster: std::sync::OnceLock<Arc<crate::replication::Cluster>>,
    /// `node_name()`, computed once.
    node_name: std::sync::OnceLock<String>,
}

impl Shared {
    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Every open vhost, in name order.
    pub fn vhost_list(&self) -> Vec<Arc<VHost>> {
        let mut all: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The open connections.
    pub fn connection_list(&self) -> Vec<Arc<crate::connection::ConnectionInfo>> {
        self.open.list()
    }

    /// The connection and channel counters of `user`.
    pub(crate) fn user_usage(&self, user: &str) -> Arc<crate::limits::UserUsage> {
        self.user_usage
            .lock()
            .entry(user.to_owned())
            .or_insert_with(|| {
                let usage = crate::limits::UserUsage::default();
                usage.set_limits(self.user_limits_of(user));
                Arc::new(usage)
            })
            .clone()
    }

    /// The limits of user `name`: the config file's, with the runtime ones over them.
    fn user_limits_of(&self, name: &str) -> crate::limits::UserLimits {
        let base = self.config.user_limits_for(name);
        match self.meta.state().user_limits.get(name) {
            Some(limits) => crate::meta::user_limits_over(limits, base),
            None => base,
        }
    }

    /// Every [`admission::SAMPLE_INTERVAL`](crate::vhost::admission::SAMPLE_INTERVAL), sums
    /// the queued bytes of each vhost that has a `max-queued-bytes`.
    async fn sample_queued_bytes(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(crate::vhost::admission::SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tick.tick() => {}
            }
            let limited: Vec<Arc<VHost>> = self
                .vhosts
                .read()
                .values()
                .filter(|v| v.admission().queued_bytes_max().is_some())
                .cloned()
                .collect();
            for vhost in limited {
                vhost.sample_queued_bytes();
            }
        }
    }

    /// The limits of vhost `name`: the config file's, with the runtime ones over them.
    fn limits_of(&self, name: &str) -> crate::limits::VhostLimits {
        let base = self.config.vhost_limits_for(name);
        match self.meta.state().vhosts.get(name) {
            Some(meta) => meta.limits_over(base),
            None => base,
        }
    }

    /// Sets the WASM budget of `name` (deadline, memory, instances, CPU): its runtime limits
    /// over the config's.
    fn apply_wasm_budget(&self, name: &str) {
        let Some(manager) = &self.plugins else { return };
        let base = manager.config_budget(name);
        let limits = match self.meta.state().vhosts.get(name) {
            Some(meta) => meta.budget_over(base),
            None => base,
        };
        manager.budget(name).set(limits);
    }

    /// The exchange-type allow list of `name`: set at runtime, else the config file's.
    fn exchange_types_of(&self, name: &str) -> Option<Vec<String>> {
        self.meta
            .state()
            .vhosts
            .get(name)
            .and_then(|v| v.exchange_types.clone())
            .or_else(|| {
                self.config
                    .vhost_limits
                    .get(name)
                    .and_then(|o| o.exchange_types.clone())
            })
    }

    /// The WASM budget of `vhost`, when plugins are enabled.
    pub fn wasm_budget(&self, vhost: &str) -> Option<Arc<VhostBudget>> {
        self.plugins.as_ref().map(|m| m.budget(vhost))
    }

    /// Closes a deleted vhost: its connections get 320, its storage is closed and removed.
    fn remove_vhost(&self, name: &str) {
        let Some(vhost) = self.vhosts.write().remove(name) else {
            return;
        };
        // Its connections were asked to close (`execute_meta`); one that opened since is too.
        self.open
            .force_close_where(|c| c.vhost == name, &crate::connection::vhost_deleted(name));
        vhost.close_storage();
        if let Some(manager) = &self.plugins {
            manager.forget_vhost(name);
        }
        let dir = crate::store::vhost_dir(&self.config.data_dir, name);
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(vhost = name, %error, "cannot remove a deleted vhost's data");
        }
    }

    /// Opens a vhost if it is not open yet: its durable state under the data directory is
    /// restored (definitions replayed, queued persistent messages recovered).
    pub fn add_vhost(&self, name: &str) -> Result<Arc<VHost>, StoreError> {
        let mut vhosts = self.vhosts.write();
        if let Some(vhost) = vhosts.get(name) {
            return Ok(vhost.clone());
        }
        // The vhost's own plugin types first, so that its durable exchanges of those types
        // are restored with their routers.
        let registry = match &self.plugins {
            Some(manager) => {
                let set = manager.vhost(name);
                let plugins = self
                    .meta
                    .state()
                    .vhosts
                    .get(name)
                    .map(|v| v.plugins.clone())
                    .unwrap_or_default();
                if !plugins.is_empty() {
                    set.sync(manager, &self.config.data_dir, &plugins);
                }
                tenant::remove_unreferenced(&self.config.data_dir, name, &plugins);
                set.registry()
            }
            None => self.registry.clone(),
        };
        // Before its exchanges are restored: they take their places in the budget.
        self.apply_wasm_budget(name);
        let vhost = VHost::open(
            name,
            registry,
            &self.config.data_dir,
            StoreOptions::from_config(&self.config),
        )?;
        vhost.set_limits(self.limits_of(name));
        vhost.set_exchange_types(self.exchange_types_of(name));
        vhosts.insert(name.to_owned(), vhost.clone());
        Ok(vhost)
    }
}

/// How long [`BrokerHandle::shutdown`] waits for client connections to close.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The broker, as a library: `Broker::start` binds the listener and serves in the background.
pub struct Broker;

/// A running broker.
pub struct BrokerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    /// The AMQPS listener, when configured: its address, its certificates, its accept loop.
    tls: Option<(SocketAddr, Arc<TlsServer>, JoinHandle<()>)>,
    /// The management API's address and server task, when configured.
    management: Option<(SocketAddr, JoinHandle<()>)>,
    /// The management API's HTTPS address and server task, when configured.
    management_tls: Option<(SocketAddr, JoinHandle<()>)>,
    /// The Prometheus endpoint's address and server task, when configured.
    prometheus: Option<(SocketAddr, JoinHandle<()>)>,
    /// Becomes true once the plugin directory's first load is done.
    plugins_loaded: watch::Receiver<bool>,
}

impl Broker {
    /// Binds `config.listen`, creates the default vhost `/` and starts accepting connections
    /// on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<BrokerHandle> {
        config.check()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let tls_listener = match &config.tls {
            Some(settings) => {
                let server = TlsServer::new(settings.clone()).with_context(|| {
                    format!("cannot start the TLS listener on {}", settings.listen)
                })?;
                let listener = TcpListener::bind(settings.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", settings.listen))?;
                Some((listener, server))
            }
            None => None,
        };
        let management_listener = match config.management_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (management API)"))?,
            ),
            None => None,
        };
        let management_tls_listener = match config.management_tls_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (management API, HTTPS)"))?,
            ),
            None => None,
        };
        let prometheus_listener = match config.prometheus_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (Prometheus endpoint)"))?,
            ),
            None => None,
        };
        let registry = Registry::with_builtins();
        let plugins = start_plugins(&config, &registry).await;
        let memory = crate::memory::MemoryMonitor::start(&config);
        let seed = crate::meta::seed(&config)?;
        let meta =
            crate::meta::Meta::open(&config.data_dir, &seed).context("cannot open the meta log")?;
        let state = meta.state();
        let users = UserStore::new(&[], &[], &[], config.guest_loopback_only);
        users.reload(&state);
        let shared = Arc::new(Shared {
            users,
            meta,
            registry,
            plugins,
            memory,
            vhosts: RwLock::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            connections: Arc::new(AtomicU32::new(0)),
            user_usage: Default::default(),
            closing: watch::Sender::new(false),
            open: Default::default(),
            rates: Default::default(),
            cluster: Default::default(),
            node_name: Default::default(),
            config,
        });
        for name in state.vhosts.keys() {
            shared
                .add_vhost(name)
                .with_context(|| format!("cannot open the storage of vhost '{name}'"))?;
        }
        if let Some(settings) = &shared.config.cluster {
            let applier = Arc::new(meta::BrokerApplier(Arc::downgrade(&shared)));
            let node =
                crate::replication::Cluster::start(settings, &shared.config.data_dir, applier)
                    .await?;
            let _ = shared.cluster.set(node);
        }
        if let Some(manager) = &shared.plugins {
            // A plugin file that appears later brings back the durable exchanges of its type
            // that could not be restored at open (with their bindings).
            let weak = Arc::downgrade(&shared);
            manager.on_loaded(move || {
                if let Some(shared) = weak.upgrade() {
                    for vhost in shared.vhost_list() {
                        vhost.restore_waiting();
                    }
                }
            });
        }
        // The plugin directory compiles in the background (seconds per plugin, more for a
        // Python one): the broker listens meanwhile. Declaring a type still compiling is
        // refused with a message saying so; durable exchanges of those types wait and are
        // restored, with their bindings, when their type loads (the hook above).
        let (loaded_tx, plugins_loaded) = watch::channel(false);
        match shared.plugins.clone() {
            Some(manager) if shared.config.plugin_dir.is_some() => {
                let poll = shared.config.plugin_poll_ms;
                let registry = shared.registry.clone();
                let loading = tokio::task::spawn_blocking(move || {
                    let report = manager.scan();
                    registry.set_loading(false);
                    info!(
                        loaded = report.loaded.len(),
                        refused = report.refused.len(),
                        "plugin directory loaded"
                    );
                    // Every version in use is loaded now (the directory's and the vhosts').
                    manager.prune_cache();
                    manager.watch(std::time::Duration::from_millis(poll));
                    let _ = loaded_tx.send(true);
                });
                // A definitions file may declare exchanges of plugin types: load them first.
                if shared.config.load_definitions.is_some() {
                    let _ = loading.await;
                }
            }
            _ => {
                let _ = loaded_tx.send(true);
            }
        }
        if let Some(path) = shared.config.load_definitions.clone() {
            let importing = shared.clone();
            let loading = tokio::task::spawn_blocking(move || load_definitions(&importing, &path));
            if shared.cluster().is_some() {
                // Through the cluster's leader, which may not be elected yet: in the
                // background, and a failure is logged rather than stopping the node.
                tokio::spawn(async move {
                    match loading.await {
                        Ok(Err(error)) => warn!(error = %format!("{error:#}"), "definitions"),
                        Err(error) => warn!(%error, "definitions"),
                        Ok(Ok(())) => {}
                    }
                });
            } else {
                loading.await.context("loading definitions")??;
            }
        }
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(shared.clone().sample_queued_bytes(stopped.clone()));
        let tls = match tls_listener {
            Some((listener, server)) => {
                let addr = listener.local_addr()?;
                let poll = shared.config.tls.as_ref().map_or(0, |t| t.reload_poll_ms);
                if poll > 0 {
                    server.watch(std::time::Duration::from_millis(poll));
                }
                let accept = tokio::spawn(accept_loop(
                    shared.clone(),
                    listener,
                    stopped.clone(),
                    Some(server.clone()),
                ));
                info!(%addr, "listening for AMQPS connections");
                Some((addr, server, accept))
            }
            None => None,
        };
        if management_listener.is_some() || management_tls_listener.is_some() {
            tokio::spawn(crate::management::sample_rates(
                shared.clone(),
                stopped.clone(),
            ));
        }
        let management_tls = match (management_tls_listener, &tls) {
            (Some(listener), Some((_, server, _))) => {
                let addr = listener.local_addr()?;
                let task = tokio::spawn(crate::management::serve_tls(
                    shared.clone(),
                    listener,
                    server.clone(),
                    stopped.clone(),
                ));
                info!(%addr, "management API listening over HTTPS");
                Some((addr, task))
            }
            _ => None,
        };
        let management = match management_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let task = tokio::spawn(crate::management::serve(
                    shared.clone(),
                    listener,
                    stopped.clone(),
                ));
                info!(%addr, "management API listening");
                Some((addr, task))
            }
            None => None,
        };
        let prometheus = match prometheus_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let task = tokio::spawn(crate::management::serve_metrics(
                    shared.clone(),
                    listener,
                    stopped.clone(),
                ));
                info!(%addr, "Prometheus endpoint listening");
                Some((addr, task))
            }
            None => None,
        };
        let accept = tokio::spawn(accept_loop(shared.clone(), listener, stopped, None));
        info!(%local_addr, "listening for AMQP connections");
        Ok(BrokerHandle {
            shared,
            local_addr,
            stop,
            accept: Some(accept),
            tls,
            management,
            management_tls,
            prometheus,
            plugins_loaded,
        })
    }
}

impl BrokerHandle {
    /// Waits until the plugin directory's first load (in the background since start-up) is
    /// done: every file compiled or refused, the durable exchanges of its types restored.
    pub async fn plugins_loaded(&self) {
        let mut loaded = self.plugins_loaded.clone();
        let _ = loaded.wait_for(|done| *done).await;
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the Prometheus endpoint is bound to, when there is one.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus.as_ref().map(|(addr, _)| *addr)
    }

    /// The address the management API's HTTPS listener is bound to, when there is one.
    pub fn management_tls_addr(&self) -> Option<SocketAddr> {
        self.management_tls.as_ref().map(|(addr, _)| *addr)
    }

    /// The address the management API is bound to, when there is one.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management.as_ref().map(|(addr, _)| *addr)
    }

    /// The address the AMQPS listener is bound to, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(addr, _, _)| *addr)
    }

    /// Re-reads the TLS certificate, key and CA files now (the listener also does it when
    /// they change): later connections use them, open ones keep theirs. On an error the
    /// previous certificates stay in use. Without a TLS listener, nothing to do.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.tls {
            Some((_, server, _)) => server.reload(),
            None => Ok(()),
        }
    }

    /// Changes the memory high watermark, in bytes; the alarm is re-evaluated before this
    /// returns.
    pub fn set_memory_high_watermark_bytes(&self, bytes: u64) {
        self.shared.memory.set_watermark_bytes(bytes);
    }

    /// Applies a metadata change (vhosts, users, permissions) on a blocking thread: see
    /// `Shared::execute_meta`.
    pub async fn execute(
        &self,
        command: crate::meta::MetaCommand,
    ) -> Result<(), crate::meta::MetaError> {
        self.shared.submit_meta(command).await
    }

    /// The open connections (past connection.open) with their states.
    pub fn connections(&self) -> Vec<Arc<crate::connection::ConnectionInfo>> {
        self.shared.open.list()
    }

    /// Memory held by queued messages, per vhost (bytes of bodies, properties and entries in
    /// memory, and the index of paged ones: an estimate, see `Queue::memory_bytes`).
    pub fn queued_memory(&self) -> Vec<(String, usize)> {
        let vhosts: Vec<Arc<VHost>> = self.shared.vhosts.read().values().cloned().collect();
        let mut all: Vec<(String, usize)> = vhosts
            .iter()
            .map(|v| (v.name.to_string(), v.queued_memory_bytes()))
            .collect();
        all.sort();
        all
    }

    /// Whether the memory alarm is on (publishing connections are blocked).
    pub fn memory_alarm(&self) -> bool {
        self.shared.memory.is_alarmed()
    }

    /// The broker's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The WASM plugin manager (load, replace, rollback, remove, status); None only when
    /// the WASM engine could not start.
    pub fn plugins(&self) -> Option<&PluginManager> {
        self.shared.plugins.as_ref()
    }

    /// Uploads a component into `vhost` (see `Shared::put_vhost_plugin`) on a blocking
    /// thread. `user`: the user asking, checked with `auth::may_manage_vhost_plugin`; None
    /// for the operator.
    pub async fn put_vhost_plugin(
        &self,
        vhost: &str,
        bytes: Vec<u8>,
        user: Option<&str>,
    ) -> Result<PluginStatus, VhostPluginError> {
        let (shared, vhost, user) = (
            self.shared.clone(),
            vhost.to_owned(),
            user.map(str::to_owned),
        );
        tokio::task::spawn_blocking(move || {
            shared.put_vhost_plugin(&vhost, &bytes, user.as_deref())
        })
        .await
        .map_err(|e| VhostPluginError::Storage(e.to_string()))?
    }

    /// Rolls type `name` of `vhost` back to its previous version, on a blocking thread.
    pub async fn rollback_vhost_plugin(
        &self,
        vhost: &str,
        name: &str,
        user: Option<&str>,
    ) -> Result<PluginStatus, VhostPluginError> {
        let (shared, vhost, name) = (self.shared.clone(), vhost.to_owned(), name.to_owned());
        let user = user.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            shared.rollback_vhost_plugin(&vhost, &name, user.as_deref())
        })
        .await
        .map_err(|e| VhostPluginError::Storage(e.to_string()))?
    }

    /// Removes type `name` of `vhost`, on a blocking thread.
    pub async fn delete_vhost_plugin(
        &self,
        vhost: &str,
        name: &str,
        user: Option<&str>,
    ) -> Result<(), VhostPluginError> {
        let (shared, vhost, name) = (self.shared.clone(), vhost.to_owned(), name.to_owned());
        let user = user.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            shared.delete_vhost_plugin(&vhost, &name, user.as_deref())
        })
        .await
        .map_err(|e| VhostPluginError::Storage(e.to_string()))?
    }

    /// The plugin types of `vhost`, with their versions and exchanges.
    pub fn vhost_plugins(&self, vhost: &str) -> Vec<PluginStatus> {
        self.shared.vhost_plugins(vhost)
    }

    /// Shuts the broker down gracefully, within about [`SHUTDOWN_GRACE`] plus the final sync:
    /// stops accepting connections, closes every open connection with 320 CONNECTION_FORCED
    /// (RabbitMQ's "broker forced connection closure with reason 'shutdown'"), waits up to
    /// [`SHUTDOWN_GRACE`] for them to end (close-ok, or their own close-ok timeout), then
    /// writes and syncs what the message stores buffered and closes them (later persistent
    /// publishes are refused). Connections still open after the grace period are left to be
    /// dropped with the runtime; their confirmed messages are already synced.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        if let Some((_, _, accept)) = self.tls.take() {
            let _ = accept.await;
        }
        for (_, server) in [
            self.management.take(),
            self.management_tls.take(),
            self.prometheus.take(),
        ]
        .into_iter()
        .flatten()
        {
            // Its graceful shutdown waits for requests in flight; not for ever.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
        }
        self.shared.closing.send_replace(true);
        let open = self.shared.closing.receiver_count();
        if open > 0 {
            info!(connections = open, "closing client connections");
            if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.closing.closed())
                .await
                .is_err()
            {
                warn!(
                    connections = self.shared.closing.receiver_count(),
                    "connections still open after the shutdown grace period"
                );
            }
        }
        if let Some(cluster) = self.shared.cluster() {
            cluster.shutdown().await;
        }
        let vhosts: Vec<Arc<VHost>> = self.shared.vhosts.read().values().cloned().collect();
        for vhost in vhosts {
            vhost.close_storage();
        }
    }

    /// Runs until the accept loop ends (it only ends on shutdown).
    pub async fn wait(mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Makes the plugin manager (always: vhosts may have plugins of their own; without a plugin
/// directory the engine is made on first use). The plugin directory is loaded later, in the
/// background (`Broker::start`); until then the registry says it is loading. If the WASM
/// engine itself cannot start, the broker runs without plugins.
async fn start_plugins(config: &Config, registry: &Registry) -> Option<PluginManager> {
    let manager = match PluginManager::new(config, registry.clone()) {
        Ok(manager) => manager,
        Err(error) => {
            tracing::error!(%error, "WASM plugins disabled");
            return None;
        }
    };
    if config.plugin_dir.is_some() {
        // Loaded in the background once the broker is up (`Broker::start`).
        registry.set_loading(true);
    }
    Some(manager)
}

/// Imports `path` (RabbitMQ's definitions format) at start-up; what it skips is logged.
fn load_definitions(shared: &Shared, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read definitions file {}", path.display()))?;
    let document: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("definitions file {} is not JSON", path.display()))?;
    let warnings = crate::definitions::import(shared, &document)
        .with_context(|| format!("cannot load definitions file {}", path.display()))?;
    for warning in &warnings {
        warn!(file = %path.display(), %warning, "definitions");
    }
    info!(file = %path.display(), "definitions loaded");
    Ok(())
}

/// Accepts connections until shutdown; with `tls`, each socket's TLS handshake runs in its
/// own connection task.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    tls: Option<Arc<TlsServer>>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                    match &tls {
                        Some(tls) => tokio::spawn(crate::connection::serve_tls(
                            shared.clone(),
                            tls.clone(),
                            socket,
                            peer,
                            id,
                        )),
                        None => tokio::spawn(crate::connection::serve(shared.clone(), socket, peer, id)),
                    };
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
