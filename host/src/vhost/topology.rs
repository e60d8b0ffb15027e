//! The objects of one vhost and the indexes over them: what routing reads under the topology
//! read lock, and what a change swaps in under the write lock.
//!
//! Every method here is quick (hash and B-tree operations, O(1) or O(log n) in the number of
//! objects, or proportional to what the change removes): slow work (plugin calls, fsync,
//! directories) is done by the caller before or after holding the write lock. Bindings removed
//! because their destination went are detached from the host's index here and handed back in
//! [`Topology::detached`], for the routers to be told after the write lock is released.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use super::Exchange;
use crate::exchange::{Binding, Destination, Name};
use crate::protocol::AmqpError;
use crate::queue::{ConnectionId, Queue};

#[derive(Default)]
pub(super) struct Topology {
    pub(super) exchanges: HashMap<Name, Arc<Exchange>>,
    pub(super) queues: HashMap<Name, Arc<Queue>>,
    /// Bindings of all exchanges together, against `VhostLimits::max_bindings`.
    pub(super) bindings: usize,
    /// Durable exchanges removed by the last change, to be logged as deleted.
    pub(super) dropped: Vec<Name>,
    /// Bindings detached from the host's index by the last change, whose routers have yet to
    /// be told (after the write lock is released).
    pub(super) detached: Vec<(Arc<Exchange>, Vec<Binding>)>,
    /// Reverse index: for each destination, the exchanges binding to it and how many
    /// bindings each has to it. Makes queue deletion O(bindings to that queue).
    sources: HashMap<Destination, HashMap<Name, usize>>,
    /// Exclusive queues by owning connection.
    exclusive: HashMap<ConnectionId, HashSet<Name>>,
    /// The message counts of deleted queues, so the vhost's totals never go down.
    pub(super) retired: crate::stats::MessageStats,
}

impl Topology {
    pub(super) fn check_destination(
        &self,
        destination: &Destination,
        vhost: &str,
    ) -> Result<(), AmqpError> {
        match destination {
            Destination::Queue(name) if !self.queues.contains_key(name) => Err(
                AmqpError::not_found(format!("no queue '{name}' in vhost '{vhost}'")),
            ),
            Destination::Exchange(name) if !self.exchanges.contains_key(name) => Err(
                AmqpError::not_found(format!("no exchange '{name}' in vhost '{vhost}'")),
            ),
            _ => Ok(()),
        }
    }

    /// Whether any exchange binds to exchange `name`.
    pub(super) fn is_destination(&self, name: &str) -> bool {
        self.sources
            .contains_key(&Destination::Exchange(Name::from(name)))
    }

    /// Adds a queue (and indexes it by owner when exclusive).
    pub(super) fn insert_queue(&mut self, queue: Arc<Queue>) {
        if let Some(owner) = queue.spec.exclusive_owner {
            self.exclusive
                .entry(owner)
                .or_default()
                .insert(queue.name().clone());
        }
        self.queues.insert(queue.name().clone(), queue);
    }

    /// The exclusive queues `connection` owns.
    pub(super) fn exclusive_of(&self, connection: ConnectionId) -> Vec<Arc<Queue>> {
        self.exclusive
            .get(&connection)
            .into_iter()
            .flatten()
            .filter_map(|name| self.queues.get(name).cloned())
            .collect()
    }

    /// Counts a binding from `source` to `destination` that was just added.
    pub(super) fn bound(&mut self, source: &Name, destination: &Destination) {
        self.bindings += 1;
        *self
            .sources
            .entry(destination.clone())
            .or_default()
            .entry(source.clone())
            .or_default() += 1;
    }

    /// Counts a binding from `source` to `destination` that was just removed.
    pub(super) fn unbound(&mut self, source: &str, destination: &Destination) {
        self.bindings = self.bindings.saturating_sub(1);
        if let Some(by_source) = self.sources.get_mut(destination) {
            if let Some(count) = by_source.get_mut(source) {
                *count -= 1;
                if *count == 0 {
                    by_source.remove(source);
                }
            }
            if by_source.is_empty() {
                self.sources.remove(destination);
            }
        }
    }

    /// Removes an exchange, the bindings to it, and the auto-delete exchanges this leaves
    /// without bindings (iteratively: a client chooses how long such a chain is).
    pub(super) fn remove_exchange(&mut self, name: &str) {
        let mut pending = vec![Name::from(name)];
        while let Some(name) = pending.pop() {
            let Some(exchange) = self.exchanges.remove(&name) else {
                continue;
            };
            exchange.mark_removed();
            // Its own bindings leave the reverse index (the router goes with the exchange).
            for destination in exchange.destinations() {
                if let Some(by_source) = self.sources.get_mut(&destination) {
                    if let Some(count) = by_source.remove(&name) {
                        self.bindings = self.bindings.saturating_sub(count);
                    }
                    if by_source.is_empty() {
                        self.sources.remove(&destination);
                    }
                }
            }
            if exchange.spec.durable {
                self.dropped.push(exchange.spec.name.clone());
            }
            self.drop_bindings_to(&Destination::Exchange(name), &mut pending);
            // Dropped after the write lock is released: a WASM router frees its instance.
            self.detached.push((exchange, Vec::new()));
        }
    }

    /// Removes a queue and the bindings to it (and auto-deletes what that empties).
    pub(super) fn remove_queue(&mut self, name: &str) -> Option<Arc<Queue>> {
        let queue = self.queues.remove(name)?;
        self.retired.add(&queue.message_stats());
        if let Some(owner) = queue.spec.exclusive_owner
            && let Some(owned) = self.exclusive.get_mut(&owner)
        {
            owned.remove(name);
            if owned.is_empty() {
                self.exclusive.remove(&owner);
            }
        }
        let mut pending = Vec::new();
        self.drop_bindings_to(&Destination::Queue(Name::from(name)), &mut pending);
        for exchange in pending {
            self.remove_exchange(&exchange);
        }
        Some(queue)
    }

    /// Detaches every binding to `destination` (found through the reverse index) and queues
    /// the auto-delete exchanges left without bindings in `emptied`.
    fn drop_bindings_to(&mut self, destination: &Destination, emptied: &mut Vec<Name>) {
        let Some(by_source) = self.sources.remove(destination) else {
            return;
        };
        for source in by_source.into_keys() {
            let Some(exchange) = self.exchanges.get(&source).cloned() else {
                continue;
            };
            let removed = exchange.detach_destination(destination);
            self.bindings = self.bindings.saturating_sub(removed.len());
            if exchange.spec.auto_delete && !exchange.has_bindings() {
                emptied.push(source);
            }
            self.detached.push((exchange, removed));
        }
    }

    /// Rebuilds the counters and reverse index from the exchanges' own bindings (after the
    /// restore at start-up, which binds straight into the exchanges).
    pub(super) fn reindex(&mut self) {
        self.sources.clear();
        self.bindings = 0;
        let mut bound = Vec::new();
        for exchange in self.exchanges.values() {
            for binding in exchange.bindings() {
                bound.push((exchange.spec.name.clone(), binding.destination));
            }
        }
        for (source, destination) in bound {
            self.bound(&source, &destination);
        }
    }
}
