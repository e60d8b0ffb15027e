//! A vhost's storage: its definitions log and message store, what is written to them when the
//! topology changes, and the restore at start-up (see `docs/storage.md`).
//!
//! Durable objects are logged; transient ones never are. A binding is durable when both ends
//! are (RabbitMQ's rule), and a durable queue stops being exclusive-capable: exclusive queues
//! die with their connection, so they are never logged even when declared durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Exchange, ExchangeSpec, Topology, VHost};
use crate::exchange::{Binding, Destination, ExchangeType, Invalid, Name, Router};
use crate::protocol::AmqpError;
use crate::queue::{Queue, QueueHost, QueueSpec};
use crate::store::{
    BindingDefinition, Definition, DefinitionsLog, DestinationKind, ExchangeDefinition,
    MessageStore, PluginState, QueueDefinition, QueueStore, RecoveredQueue, StoreError,
    StoreOptions, Ticket,
};

/// The storage of one vhost.
pub(super) struct Durable {
    definitions: Mutex<DefinitionsLog>,
    pub(super) messages: Arc<MessageStore>,
    /// Where queues page out the messages `messages` does not hold (transient ones, and
    /// every message of a queue that is not durable): never synced, emptied at every start.
    pub(super) paging: std::sync::Arc<MessageStore>,
    /// What the restore could not rebuild for want of an exchange type.
    waiting: Mutex<Waiting>,
    /// Delayed buckets found at open whose exchange is waiting for its type: adopted by the
    /// exchange's new delayed state when it is restored (`VHost::delayed_state`). A leaf lock.
    pub(super) delayed_buckets: Mutex<Vec<RecoveredQueue>>,
}

/// Durable exchanges whose type was not loaded when the vhost was restored (a plugin file
/// missing, or not compiled yet), and the bindings from or to them: restored when the type
/// appears ([`VHost::restore_waiting`]).
#[derive(Default)]
struct Waiting {
    exchanges: Vec<ExchangeDefinition>,
    bindings: Vec<BindingDefinition>,
}

impl Waiting {
    fn holds(&self, name: &str) -> bool {
        self.exchanges.iter().any(|e| e.name == name)
    }

    /// Whether `binding` needs an exchange that is still waiting.
    fn blocks(&self, binding: &BindingDefinition) -> bool {
        self.holds(&binding.source)
            || (binding.destination_kind == DestinationKind::Exchange
                && self.holds(&binding.destination))
    }
}

/// What the stores returned at open, to be applied once the vhost exists.
pub(super) struct Restore {
    definitions: Vec<Definition>,
    recovered: Vec<RecoveredQueue>,
}

impl Durable {
    /// Opens (creating if needed) the vhost's directory under `data_dir`, replays its
    /// definitions log and recovers its message store.
    pub(super) fn open(
        data_dir: &Path,
        vhost: &str,
        options: StoreOptions,
    ) -> Result<(Durable, Restore), StoreError> {
        let dir = crate::store::prepare_vhost_dir(data_dir, vhost)?;
        let (log, _commands) = DefinitionsLog::open(&dir)?;
        let definitions = log.snapshot();
        let (messages, recovered) = MessageStore::open(&dir, options.clone())?;
        let paging_dir = dir.join("paging");
        match std::fs::remove_dir_all(&paging_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", &paging_dir)(e));
            }
            _ => {}
        }
        let paging_options = StoreOptions {
            sync: false,
            ..options
        };
        let (paging, _) = MessageStore::open(&paging_dir, paging_options)?;
        Ok((
            Durable {
                definitions: Mutex::new(log),
                messages: Arc::new(messages),
                paging: std::sync::Arc::new(paging),
                waiting: Mutex::default(),
                delayed_buckets: Mutex::default(),
            },
            Restore {
                definitions,
                recovered,
            },
        ))
    }

    /// Appends one command to the definitions log (fsynced before it returns).
    pub(super) fn log(&self, definition: &Definition) -> Result<(), AmqpError> {
        self.definitions
            .lock()
            .append(definition)
            .map_err(|e| AmqpError::internal(format!("cannot write the definitions log: {e}")))
    }

    /// The plugin state of a vhost with `durable` storage, or kept in memory.
    pub(super) fn plugin_state_of(durable: Option<&Durable>) -> PluginState {
        durable.map_or_else(PluginState::memory, |d| d.messages.plugin_state())
    }

    /// The store of a newly declared durable queue.
    pub(super) fn open_queue(&self, name: &str) -> Result<QueueStore, AmqpError> {
        self.messages
            .open_queue(name)
            .map_err(|e| AmqpError::internal(format!("cannot create the queue's store: {e}")))
    }
}

/// Whether a queue is kept in the definitions log.
pub(super) fn queue_is_durable(spec: &QueueSpec) -> bool {
    spec.durable && spec.exclusive_owner.is_none()
}

pub(super) fn exchange_definition(spec: &ExchangeSpec) -> Definition {
    Definition::DeclareExchange(ExchangeDefinition {
        name: spec.name.to_string(),
        kind: spec.kind.to_string(),
        durable: true,
        auto_delete: spec.auto_delete,
        internal: spec.internal,
        arguments: spec.arguments.clone(),
    })
}

pub(super) fn queue_definition(spec: &QueueSpec) -> Definition {
    Definition::DeclareQueue(QueueDefinition {
        name: spec.name.to_string(),
        durable: true,
        auto_delete: spec.auto_delete,
        exclusive: false,
        arguments: spec.arguments.clone(),
    })
}

pub(super) fn binding_definition(source: &str, binding: &Binding) -> BindingDefinition {
    let (destination_kind, destination) = match &binding.destination {
        Destination::Queue(name) => (DestinationKind::Queue, name),
        Destination::Exchange(name) => (DestinationKind::Exchange, name),
    };
    BindingDefinition {
        source: source.to_owned(),
        destination_kind,
        destination: destination.to_string(),
        routing_key: binding.routing_key.to_string(),
        arguments: binding.arguments.clone(),
    }
}

impl Topology {
    /// Whether a binding from `source` to `destination` is kept: both ends durable.
    pub(super) fn binding_is_durable(&self, source: &Exchange, destination: &Destination) -> bool {
        source.spec.durable
            && match destination {
                Destination::Queue(name) => self
                    .queues
                    .get(name)
                    .is_some_and(|q| queue_is_durable(&q.spec)),
                Destination::Exchange(name) => {
                    self.exchanges.get(name).is_some_and(|x| x.spec.durable)
                }
            }
    }
}

impl VHost {
    /// The highest ticket the message store has synced; every ticket when there is no store.
    pub fn synced(&self) -> Ticket {
        self.durable
            .as_ref()
            .map_or(Ticket::MAX, |d| d.messages.synced())
    }

    /// Notified whenever the message store syncs (None without a store).
    pub fn subscribe_synced(&self) -> Option<watch::Receiver<Ticket>> {
        self.durable.as_ref().map(|d| d.messages.subscribe())
    }

    /// Why the message store stopped accepting writes, if it did.
    pub fn store_failure(&self) -> Option<String> {
        self.durable.as_ref().and_then(|d| d.messages.failure())
    }

    /// Writes and syncs the message store's buffers and stops it (broker shutdown).
    pub fn close_storage(&self) {
        if let Some(durable) = &self.durable {
            durable.messages.close();
        }
    }

    /// Whether the vhost keeps durable objects and persistent messages on disk.
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Writes a topology command when the vhost has storage.
    /// Called under the change lock, never under the topology write lock: the append waits
    /// for an fsync.
    pub(super) fn log(&self, definition: &Definition) -> Result<(), AmqpError> {
        match &self.durable {
            Some(durable) => super::blocking(true, || durable.log(definition)),
            None => Ok(()),
        }
    }

    /// Logs the deletion of the durable exchanges that a topology change removed (directly or
    /// by auto-delete).
    /// Their plugin state goes with them (journaled after the definitions record: a crash
    /// between the two leaves state that [`VHost::restore`] removes).
    pub(super) fn log_dropped(&self, dropped: Vec<Name>) -> Result<(), AmqpError> {
        for name in dropped {
            let logged = self.log(&Definition::DeleteExchange {
                name: name.to_string(),
            });
            self.plugin_state().drop_exchange(&name);
            logged?;
        }
        Ok(())
    }

    /// The plugin state of the vhost's WASM exchanges: journaled with the message store for
    /// durable exchanges when the vhost has storage, in memory otherwise.
    pub fn plugin_state(&self) -> PluginState {
        self.plugin_state.clone()
    }

    /// Builds the router of exchange `spec` of type `ty`, with its plugin state.
    pub(super) fn create_router(
        &self,
        ty: &dyn ExchangeType,
        spec: &ExchangeSpec,
    ) -> Result<Box<dyn Router>, Invalid> {
        let (vhost, state) = (&self.name, &self.plugin_state);
        ty.create_with_state(vhost, &spec.name, &spec.arguments, state, spec.durable)
    }

    /// Rebuilds the durable topology and queued messages found at open. An object that cannot
    /// be rebuilt (an exchange type no longer loaded, invalid arguments) is reported and
    /// skipped; it stays in the log, so it returns once the cause is fixed. An exchange whose
    /// type is not loaded, and its bindings, wait for the type: [`Self::restore_waiting`].
    pub(super) fn restore(self: &Arc<Self>, restore: Restore) {
        let Some(durable) = &self.durable else {
            return;
        };
        let (delayed, queues): (Vec<RecoveredQueue>, Vec<RecoveredQueue>) = restore
            .recovered
            .into_iter()
            .partition(|q| q.name.starts_with(super::delayed::STORE_PREFIX));
        let mut recovered: HashMap<String, RecoveredQueue> =
            queues.into_iter().map(|q| (q.name.clone(), q)).collect();
        let mut declared_exchanges = std::collections::HashSet::new();
        let mut pending_messages = Vec::new();
        // Plugin state is kept for every exchange the log declares, restored or not (a type
        // not loaded yet gets it back once it is).
        let declared: std::collections::HashSet<String> = restore
            .definitions
            .iter()
            .filter_map(|d| match d {
                Definition::DeclareExchange(def) => Some(def.name.clone()),
                _ => None,
            })
            .collect();
        durable
            .messages
            .plugin_state()
            .retain(|name| declared.contains(name));
        let (mut exchanges, mut queues, mut bindings) = (0, 0, 0);
        let mut waiting = durable.waiting.lock();
        let mut topology = self.topology.write();
        for definition in restore.definitions {
            match definition {
                Definition::DeclareExchange(def) => {
                    let missing = self.registry.get(&def.kind).is_none();
                    let kept = missing.then(|| def.clone());
                    declared_exchanges.insert(def.name.clone());
                    match self.restore_exchange(&mut topology, def) {
                        Ok(()) => exchanges += 1,
                        Err(error) => {
                            warn!(vhost = %self.name, %error, "exchange not restored");
                            if let Some(def) = kept {
                                info!(vhost = %self.name, exchange = %def.name, kind = %def.kind,
                                    "the exchange and its bindings are restored when its type is loaded");
                                waiting.exchanges.push(def);
                            }
                        }
                    }
                }
                Definition::DeclareQueue(def) => {
                    let found = recovered.remove(&def.name);
                    let store = match found.as_ref() {
                        Some(q) => Ok(q.store.clone()),
                        None => durable.messages.open_queue(&def.name),
                    };
                    let spec = QueueSpec {
                        name: Name::from(def.name.as_str()),
                        durable: true,
                        exclusive_owner: None,
                        auto_delete: def.auto_delete,
                        arguments: def.arguments,
                    };
                    let queue = store.map_err(|e| e.to_string()).and_then(|store| {
                        Queue::try_new_windowed(
                            spec,
                            Some(store),
                            Some(durable.paging.clone()),
                            self.limits().queue_in_memory_messages as usize,
                        )
                        .map_err(|e| format!("invalid arg '{}': {}", e.key, e.detail))
                    });
                    match queue {
                        Ok(queue) => {
                            let host: std::sync::Weak<dyn QueueHost> = self.me.clone();
                            queue.attach(host);
                            topology.insert_queue(queue.clone());
                            if let Some(found) = found {
                                pending_messages.push((queue, found.messages));
                            }
                            queues += 1;
                        }
                        Err(error) => {
                            warn!(vhost = %self.name, queue = %def.name, %error, "queue not restored")
                        }
                    }
                }
                Definition::Bind(def) if waiting.blocks(&def) => waiting.bindings.push(def),
                Definition::Bind(def) => match self.restore_binding(&topology, def) {
                    Ok(()) => bindings += 1,
                    Err(error) => warn!(vhost = %self.name, %error, "binding not restored"),
                },
                // A snapshot holds declarations and bindings only.
                Definition::DeleteExchange { .. }
                | Definition::DeleteQueue { .. }
                | Definition::Unbind(_) => {}
            }
        }
        topology.reindex();
        let delayed_exchanges: Vec<Arc<Exchange>> = topology
            .exchanges
            .values()
            .filter(|x| x.delayed().is_some())
            .cloned()
            .collect();
        drop(topology);
        drop(waiting);
        self.restore_delayed(delayed, &delayed_exchanges, &declared_exchanges);
        let mut messages = 0;
        for (queue, found) in pending_messages {
            messages += found.len();
            queue.recover(found);
        }
        // Queue directories the log no longer declares: deleted just before a crash.
        for (name, orphan) in recovered {
            warn!(vhost = %self.name, queue = %name, "removing the messages of a queue that no longer exists");
            if let Err(error) = orphan.store.delete() {
                warn!(vhost = %self.name, queue = %name, %error, "cannot remove an orphaned queue store");
            }
        }
        info!(vhost = %self.name, exchanges, queues, bindings, messages, "durable state restored");
    }

    /// Restores the durable exchanges (and their bindings) that were waiting for their type,
    /// for the types now loaded; answers how many exchanges came back. Each goes through the
    /// ordinary declare and bind (under the change lock, the router built before it) but, as
    /// at start-up, without the limits, the allow list and a log append: they are in the log
    /// already. Called when plugins are loaded after the vhost opened.
    pub fn restore_waiting(&self) -> usize {
        let Some(durable) = &self.durable else {
            return 0;
        };
        let mut waiting = durable.waiting.lock();
        if waiting.exchanges.is_empty() {
            return 0;
        }
        let mut restored = 0;
        for def in std::mem::take(&mut waiting.exchanges) {
            if self.exchange_type(&def.kind, &def.arguments).is_err() {
                waiting.exchanges.push(def);
                continue;
            }
            match self.declare_exchange_as(logged_spec(def.clone()), true) {
                Ok(()) => {
                    restored += 1;
                    info!(vhost = %self.name, exchange = %def.name, kind = %def.kind,
                        "exchange restored now that its type is loaded");
                }
                // Gone for good (e.g. declared since with another type): its bindings too.
                Err(error) => {
                    warn!(vhost = %self.name, exchange = %def.name, %error, "exchange not restored")
                }
            }
        }
        for def in std::mem::take(&mut waiting.bindings) {
            if waiting.blocks(&def) {
                waiting.bindings.push(def);
                continue;
            }
            let destination = match def.destination_kind {
                DestinationKind::Queue => Destination::Queue(Name::from(def.destination.as_str())),
                DestinationKind::Exchange => {
                    Destination::Exchange(Name::from(def.destination.as_str()))
                }
            };
            let binding = Binding {
                destination,
                routing_key: Name::from(def.routing_key.as_str()),
                arguments: def.arguments,
            };
            if let Err(error) = self.bind_as(&def.source, binding, true) {
                warn!(vhost = %self.name, source = %def.source, %error, "binding not restored");
            }
        }
        restored
    }

    /// Hands the delayed buckets found at open to their exchanges, and starts the timers.
    /// The buckets of an exchange that is no longer declared are removed; those of one that
    /// is declared but could not be restored wait for it (`Durable::delayed_buckets`).
    fn restore_delayed(
        self: &Arc<Self>,
        buckets: Vec<RecoveredQueue>,
        exchanges: &[Arc<Exchange>],
        declared: &std::collections::HashSet<String>,
    ) {
        let mut held = 0;
        for bucket in buckets {
            let owner = super::delayed::store_exchange(&bucket.name).unwrap_or_default();
            let positions = bucket.messages.iter().map(|m| m.position).collect();
            match exchanges.iter().find(|x| *x.spec.name == *owner) {
                Some(x) => {
                    held += bucket.messages.len();
                    if let Some(delayed) = x.delayed() {
                        delayed.adopt(&bucket.name, bucket.store, positions);
                    }
                }
                None if declared.contains(owner) => {
                    if let Some(durable) = &self.durable {
                        durable.delayed_buckets.lock().push(bucket);
                    }
                }
                None => {
                    let _ = bucket.store.delete();
                }
            }
        }
        for x in exchanges {
            if let Some(delayed) = x.delayed() {
                delayed.start(self.me.clone());
            }
        }
        if held > 0 {
            info!(vhost = %self.name, messages = held, "delayed messages restored");
        }
    }

    fn restore_exchange(
        &self,
        topology: &mut Topology,
        def: ExchangeDefinition,
    ) -> Result<(), String> {
        let ty = self
            .exchange_type(&def.kind, &def.arguments)
            .map_err(|e| format!("exchange '{}': {}", def.name, e.text))?;
        let spec = logged_spec(def);
        let router = self
            .create_router(&*ty, &spec)
            .map_err(|e| format!("exchange '{}': {e}", spec.name))?;
        let delayed = self.delayed_state(&spec, &*router);
        topology.exchanges.insert(
            spec.name.clone(),
            Arc::new(Exchange::with_delayed(spec, router, delayed)),
        );
        Ok(())
    }

    fn restore_binding(&self, topology: &Topology, def: BindingDefinition) -> Result<(), String> {
        let source = topology
            .exchanges
            .get(def.source.as_str())
            .ok_or_else(|| format!("binding from '{}': no such exchange", def.source))?;
        let destination = match def.destination_kind {
            DestinationKind::Queue => Destination::Queue(Name::from(def.destination.as_str())),
            DestinationKind::Exchange => {
                Destination::Exchange(Name::from(def.destination.as_str()))
            }
        };
        topology
            .check_destination(&destination, &self.name)
            .map_err(|e| e.to_string())?;
        source
            .bind(Binding {
                destination,
                routing_key: Name::from(def.routing_key.as_str()),
                arguments: def.arguments,
            })
            .map(|_| ())
            .map_err(|e| format!("binding from '{}': {e}", def.source))
    }
}

/// The spec of a durable exchange as the definitions log records it.
fn logged_spec(def: ExchangeDefinition) -> ExchangeSpec {
    ExchangeSpec {
        name: Name::from(def.name.as_str()),
        kind: Name::from(def.kind.as_str()),
        durable: true,
        auto_delete: def.auto_delete,
        internal: def.internal,
        arguments: def.arguments,
    }
}
