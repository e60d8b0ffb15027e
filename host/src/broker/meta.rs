//! Metadata changes in the broker: applying one (`execute_meta`: logged, then in effect on
//! users, vhosts and connections), submitting one (through `replication`, Raft, when the node
//! is in a cluster, whose committed changes come back to every node through [`Applier`],
//! implemented here; directly otherwise), and replacing all of it from a cluster snapshot.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use tracing::warn;

use super::Shared;
use crate::meta::{MetaCommand, MetaError};
use crate::replication::{Applier, Cluster, Command, Reply};

/// The state machine's way into the broker (weak: the broker owns the cluster).
pub(super) struct BrokerApplier(pub(super) Weak<Shared>);

impl BrokerApplier {
    fn shared(&self) -> Result<Arc<Shared>, String> {
        self.0
            .upgrade()
            .ok_or_else(|| "the broker is shutting down".to_owned())
    }
}

impl Applier for BrokerApplier {
    fn apply(&self, command: &Command) -> Result<Reply, String> {
        let shared = self.shared()?;
        match command {
            Command::Meta(command) => match shared.execute_meta(command.clone()) {
                Err(MetaError::Storage(reason)) => Err(reason),
                result => Ok(Reply(result)),
            },
        }
    }

    fn snapshot(&self) -> Vec<Command> {
        match self.0.upgrade() {
            Some(shared) => shared
                .meta
                .state()
                .snapshot()
                .into_iter()
                .map(Command::Meta)
                .collect(),
            None => Vec::new(),
        }
    }

    fn install(&self, commands: &[Command]) -> Result<(), String> {
        let shared = self.shared()?;
        let meta: Vec<MetaCommand> = commands.iter().map(|Command::Meta(c)| c.clone()).collect();
        shared.install_meta(&meta).map_err(|e| e.to_string())
    }
}

impl Shared {
    /// Applies a metadata command (`meta/`): checked, logged and synced, then in effect: users
    /// and permissions for new connections, a new vhost opened, a deleted vhost's connections
    /// closed with 320 and its data removed. Slow (fsyncs): call it off the async threads.
    pub fn execute_meta(
        &self,
        command: crate::meta::MetaCommand,
    ) -> Result<(), crate::meta::MetaError> {
        use crate::meta::{MetaCommand, MetaError};
        self.meta.execute(command.clone())?;
        // Access taken away takes effect at once: the connections concerned close with 320,
        // asked before the users reload so that a connection refreshing its grants meanwhile
        // is given this reason, not "access revoked" (other changes of permissions reach
        // open connections at their next read turn).
        match &command {
            MetaCommand::DeleteVhost { name } => {
                let reason = crate::connection::vhost_deleted(name);
                self.open.force_close_where(|c| c.vhost == *name, &reason);
            }
            MetaCommand::DeleteUser { name } => {
                let reason = crate::connection::user_deleted(name);
                self.open.force_close_where(|c| c.user == *name, &reason);
            }
            MetaCommand::ClearPermissions { user, vhost } => {
                let reason = crate::connection::access_revoked(vhost, user);
                self.open
                    .force_close_where(|c| c.user == *user && c.vhost == *vhost, &reason);
            }
            _ => {}
        }
        self.users.reload(&self.meta.state());
        match command {
            MetaCommand::PutVhost { name, .. } => {
                self.add_vhost(&name)
                    .map_err(|e| MetaError::Storage(e.to_string()))?;
            }
            MetaCommand::DeleteVhost { name } => self.remove_vhost(&name),
            MetaCommand::SetVhostLimits { vhost, .. } => {
                if let Some(open) = self.vhost(&vhost) {
                    open.set_limits(self.limits_of(&vhost));
                    self.apply_wasm_budget(&vhost);
                }
            }
            MetaCommand::SetVhostExchangeTypes { vhost, .. } => {
                if let Some(open) = self.vhost(&vhost) {
                    open.set_exchange_types(self.exchange_types_of(&vhost));
                }
            }
            MetaCommand::SetUserLimits { user, .. } => {
                let usage = self.user_usage.lock().get(&user).cloned();
                if let Some(usage) = usage {
                    usage.set_limits(self.user_limits_of(&user));
                }
            }
            MetaCommand::DeleteUser { name } => {
                self.user_usage.lock().remove(&name);
            }
            // Commands that did not come through `put_vhost_plugin` and its siblings (a
            // replicated log): the file is expected in place; load what the state now says.
            MetaCommand::PutVhostPlugin { vhost, .. }
            | MetaCommand::RollbackVhostPlugin { vhost, .. }
            | MetaCommand::DeleteVhostPlugin { vhost, .. } => self.sync_vhost_plugins(&vhost),
            _ => {}
        }
        Ok(())
    }

    /// The node's name as the management API shows it: `bourse@<node name>` in a cluster,
    /// `bourse@<host name>` otherwise (RabbitMQ's `rabbit@<host>`).
    pub fn node_name(&self) -> &str {
        self.node_name.get_or_init(|| match &self.config.cluster {
            Some(cluster) => format!("bourse@{}", cluster.node_name),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "localhost".to_owned());
                format!("bourse@{host}")
            }
        })
    }

    /// This node's cluster, if it is in one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Applies a metadata change: through the cluster's leader when clustered (every node
    /// applies it once committed), else on a blocking thread (it syncs the meta log).
    pub async fn submit_meta(self: &Arc<Self>, command: MetaCommand) -> Result<(), MetaError> {
        if let Some(cluster) = self.cluster() {
            return match cluster.write(Command::Meta(command)).await {
                Ok(Reply(result)) => result,
                Err(error) => Err(MetaError::Unavailable(error.to_string())),
            };
        }
        let shared = self.clone();
        tokio::task::spawn_blocking(move || shared.execute_meta(command))
            .await
            .map_err(|e| MetaError::Storage(e.to_string()))?
    }

    /// [`submit_meta`](Self::submit_meta) for callers on a blocking thread.
    pub fn submit_meta_blocking(&self, command: MetaCommand) -> Result<(), MetaError> {
        let Some(cluster) = self.cluster() else {
            return self.execute_meta(command);
        };
        match tokio::runtime::Handle::current().block_on(cluster.write(Command::Meta(command))) {
            Ok(Reply(result)) => result,
            Err(error) => Err(MetaError::Unavailable(error.to_string())),
        }
    }

    /// Replaces this node's metadata with a cluster snapshot's, then opens the vhosts it
    /// names and removes the others.
    fn install_meta(&self, commands: &[MetaCommand]) -> Result<(), MetaError> {
        let before: BTreeSet<String> = self.vhosts.read().keys().cloned().collect();
        self.meta.replace(commands)?;
        let state = self.meta.state();
        self.users.reload(&state);
        for gone in before.iter().filter(|v| !state.vhosts.contains_key(*v)) {
            self.remove_vhost(gone);
        }
        for name in state.vhosts.keys() {
            if !before.contains(name)
                && let Err(error) = self.add_vhost(name)
            {
                warn!(vhost = %name, %error, "cannot open a vhost a cluster snapshot names");
                return Err(MetaError::Storage(error.to_string()));
            }
            if let Some(open) = self.vhost(name) {
                open.set_limits(self.limits_of(name));
                open.set_exchange_types(self.exchange_types_of(name));
                self.apply_wasm_budget(name);
            }
            self.sync_vhost_plugins(name);
        }
        Ok(())
    }
}
