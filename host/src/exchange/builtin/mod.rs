//! The four exchange types every AMQP 0-9-1 broker has: `direct`, `fanout`, `topic`, `headers`.
//!
//! Each type is a stateless factory ([`ExchangeType`]) whose routers keep an index of the
//! bindings the host hands them, shaped for the question asked on every publish:
//!
//! | type      | index                                  | cost of one route                |
//! |-----------|----------------------------------------|----------------------------------|
//! | `direct`  | hash map from binding key to queues    | one lookup                       |
//! | `fanout`  | one destination set                    | copying the set                  |
//! | `topic`   | trie of binding-key words, `*` and `#` | key length, not binding count    |
//! | `headers` | list of pre-parsed binding patterns    | linear in bindings (as RabbitMQ) |
//!
//! Semantics are RabbitMQ's, down to the corner cases (empty topic words, `x-match` variants,
//! Erlang-style value comparison in headers); each module quotes the behaviour it copies.
//! A router's index is only a cache of the host's bindings, so none of them persists anything.
//!
//! The same destination may be reached through several bindings (same key, different
//! arguments); `DestinationSet` counts them so that unbinding one keeps the others routing.
//! Routers append each destination once per matching binding pattern at most; the host
//! deduplicates across patterns.

mod direct;
mod fanout;
mod headers;
mod topic;

use foldhash::HashMap;
use std::sync::Arc;

pub use direct::Direct;
pub use fanout::Fanout;
pub use headers::Headers;
pub use topic::Topic;

use super::{Destination, ExchangeType};

/// The names of the built-in types.
pub const NAMES: [&str; 4] = ["direct", "fanout", "topic", "headers"];

/// The built-in exchange types, in the order RabbitMQ lists them.
pub fn all() -> Vec<Arc<dyn ExchangeType>> {
    vec![
        Arc::new(Direct),
        Arc::new(Fanout),
        Arc::new(Topic),
        Arc::new(Headers),
    ]
}

/// Above this many destinations a set keeps a hash index; below it a linear scan is faster and
/// costs no memory (most sets hold one or two queues).
const INDEX_ABOVE: usize = 16;

/// Destinations with the number of bindings leading to each.
///
/// Iteration order is insertion order, perturbed by removals. Adding and removing are O(1)
/// (amortised) for large sets, thanks to the index kept once the set grows past [`INDEX_ABOVE`].
#[derive(Debug, Default)]
pub(crate) struct DestinationSet {
    /// Each distinct destination once, with its binding count (never zero).
    entries: Vec<(Destination, u32)>,
    /// Position of each destination in `entries`; empty while the set is small.
    index: HashMap<Destination, usize>,
}

impl DestinationSet {
    /// Counts one more binding to `destination`.
    pub(crate) fn insert(&mut self, destination: &Destination) {
        if let Some(i) = self.position(destination) {
            self.entries[i].1 += 1;
            return;
        }
        self.entries.push((destination.clone(), 1));
        if !self.index.is_empty() {
            self.index
                .insert(destination.clone(), self.entries.len() - 1);
        } else if self.entries.len() > INDEX_ABOVE {
            self.index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (d, _))| (d.clone(), i))
                .collect();
        }
    }

    /// Counts one binding less to `destination`, dropping it at zero. Returns false when the
    /// destination was not in the set (the host asked to remove a binding it never added).
    pub(crate) fn remove(&mut self, destination: &Destination) -> bool {
        let Some(i) = self.position(destination) else {
            return false;
        };
        let count = &mut self.entries[i].1;
        *count -= 1;
        if *count > 0 {
            return true;
        }
        self.entries.swap_remove(i);
        if !self.index.is_empty() {
            self.index.remove(destination);
            if self.entries.len() <= INDEX_ABOVE / 2 {
                // Small again: drop the index and its memory (the hysteresis avoids rebuilding
                // it on every bind/unbind around the threshold).
                self.index = HashMap::default();
            } else if let Some((moved, _)) = self.entries.get(i) {
                self.index.insert(moved.clone(), i);
            }
        }
        true
    }

    /// True when no binding leads anywhere.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of distinct destinations.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends every destination once.
    pub(crate) fn append_to(&self, out: &mut Vec<Destination>) {
        out.extend(self.entries.iter().map(|(d, _)| d.clone()));
    }

    fn position(&self, destination: &Destination) -> Option<usize> {
        if self.index.is_empty() {
            self.entries.iter().position(|(d, _)| d == destination)
        } else {
            self.index.get(destination).copied()
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the routers' unit tests.

    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::FieldTable;

    use crate::exchange::{Binding, Destination, Router, RoutingInput};

    pub(crate) fn queue(name: &str) -> Destination {
        Destination::Queue(name.into())
    }

    pub(crate) fn binding(key: &str, destination: Destination) -> Binding {
        binding_with(key, destination, FieldTable::default())
    }

    pub(crate) fn binding_with(key: &str, destination: Destination, args: FieldTable) -> Binding {
        Binding {
            destination,
            routing_key: key.into(),
            arguments: args,
        }
    }

    /// Routes a message and returns the destinations sorted, without duplicates.
    pub(crate) fn route_with(
        router: &dyn Router,
        key: &str,
        properties: &BasicProperties,
    ) -> Vec<Destination> {
        let mut out = Vec::new();
        router
            .route(
                &RoutingInput {
                    exchange: "x",
                    routing_key: key,
                    properties,
                    body: b"",
                },
                &mut out,
            )
            .expect("built-in routers never fail");
        out.sort();
        out.dedup();
        out
    }

    /// Routes a message without properties.
    pub(crate) fn route(router: &dyn Router, key: &str) -> Vec<Destination> {
        route_with(router, key, &BasicProperties::default())
    }

    /// Names of the queues among `destinations`, for terse assertions.
    pub(crate) fn names(destinations: &[Destination]) -> Vec<&str> {
        destinations
            .iter()
            .map(|d| match d {
                Destination::Queue(n) | Destination::Exchange(n) => &**n,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::queue;
    use super::*;

    #[test]
    fn all_lists_the_four_amqp_types() {
        let names: Vec<String> = all().iter().map(|t| t.name().to_owned()).collect();
        assert_eq!(names, ["direct", "fanout", "topic", "headers"]);
    }

    #[test]
    fn builtins_accept_any_exchange_arguments() {
        let mut args = amq_protocol::types::FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            amq_protocol::types::AMQPValue::LongString("ae".into()),
        );
        args.insert("x-anything".into(), 7i32.into());
        for ty in all() {
            assert!(ty.validate(&args).is_ok(), "{}", ty.name());
            assert!(ty.create("x", &args).is_ok(), "{}", ty.name());
        }
    }

    #[test]
    fn destination_set_counts_bindings() {
        let mut set = DestinationSet::default();
        set.insert(&queue("q"));
        set.insert(&queue("q"));
        assert_eq!(set.len(), 1);
        assert!(set.remove(&queue("q")));
        assert_eq!(set.len(), 1, "one binding to q remains");
        assert!(set.remove(&queue("q")));
        assert!(set.is_empty());
        assert!(
            !set.remove(&queue("q")),
            "removing an unknown binding is a no-op"
        );
    }

    #[test]
    fn destination_set_index_survives_growth_and_shrinking() {
        let mut set = DestinationSet::default();
        let n = INDEX_ABOVE * 3;
        for i in 0..n {
            set.insert(&queue(&i.to_string()));
            set.insert(&queue(&i.to_string()));
        }
        assert_eq!(set.len(), n);
        assert!(!set.index.is_empty());
        // Remove in an order that moves entries around with swap_remove.
        for i in (0..n).step_by(2).chain((1..n).step_by(2)) {
            assert!(set.remove(&queue(&i.to_string())));
            assert!(set.remove(&queue(&i.to_string())));
            for (pos, (d, _)) in set.entries.iter().enumerate() {
                assert_eq!(set.position(d), Some(pos));
            }
        }
        assert!(set.is_empty());
        assert!(set.index.is_empty());
    }
}
