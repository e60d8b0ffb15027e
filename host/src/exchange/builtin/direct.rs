//! The `direct` exchange: a message goes to the bindings whose key equals its routing key.
//!
//! AMQP 0-9-1 §3.1.3.1: "a message queue binds to the exchange using a routing key, K; a
//! publisher sends the exchange a message with the routing key R; the message is passed to the
//! message queue if K = R." Comparison is byte for byte: no case folding, no wildcards.
//!
//! The index is a hash map from binding key to the destinations bound with it. Several bindings
//! may share a key and destination (they differ in their arguments, which direct ignores), so
//! each destination is counted: unbinding one of them keeps the destination routed.

use foldhash::HashMap;

use amq_protocol::types::FieldTable;

use super::DestinationSet;
use crate::exchange::{
    Binding, Destination, ExchangeType, Invalid, Name, RouteError, Router, RoutingInput,
};

/// The `direct` exchange type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl ExchangeType for Direct {
    fn name(&self) -> &str {
        "direct"
    }

    fn validate(&self, _arguments: &FieldTable) -> Result<(), Invalid> {
        Ok(())
    }

    fn create(&self, _exchange: &str, _arguments: &FieldTable) -> Result<Box<dyn Router>, Invalid> {
        Ok(Box::<DirectRouter>::default())
    }
}

/// Routing state of one direct exchange.
#[derive(Debug, Default)]
pub struct DirectRouter {
    /// Binding key -> destinations bound with it. A key whose set becomes empty is removed.
    by_key: HashMap<Name, DestinationSet>,
}

impl Router for DirectRouter {
    fn validate_binding(&self, _binding: &Binding) -> Result<(), Invalid> {
        // Any key is a valid direct binding key, including the empty one.
        Ok(())
    }

    fn add_binding(&mut self, binding: &Binding) {
        self.by_key
            .entry(binding.routing_key.clone())
            .or_default()
            .insert(&binding.destination);
    }

    fn remove_binding(&mut self, binding: &Binding) {
        if let Some(set) = self.by_key.get_mut(&*binding.routing_key) {
            set.remove(&binding.destination);
            if set.is_empty() {
                self.by_key.remove(&*binding.routing_key);
            }
        }
    }

    fn route(
        &self,
        message: &RoutingInput<'_>,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        if let Some(set) = self.by_key.get(message.routing_key) {
            set.append_to(out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::AMQPValue;

    use super::super::test_util::{binding, binding_with, names, queue, route};
    use super::*;

    fn router() -> Box<dyn Router> {
        Direct.create("x", &FieldTable::default()).unwrap()
    }

    fn args(n: i32) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("n".into(), AMQPValue::LongInt(n));
        t
    }

    #[test]
    fn routes_on_exact_key_only() {
        let mut r = router();
        r.add_binding(&binding("stock.nyse", queue("a")));
        assert_eq!(names(&route(&*r, "stock.nyse")), ["a"]);
        assert!(route(&*r, "stock.NYSE").is_empty(), "case matters");
        assert!(route(&*r, "stock.nyse.").is_empty());
        assert!(route(&*r, "stock").is_empty());
        assert!(route(&*r, "*").is_empty());
    }

    #[test]
    fn wildcards_are_plain_characters() {
        let mut r = router();
        r.add_binding(&binding("#", queue("hash")));
        r.add_binding(&binding("a.*", queue("star")));
        assert!(route(&*r, "anything").is_empty());
        assert!(route(&*r, "a.b").is_empty());
        assert_eq!(names(&route(&*r, "#")), ["hash"]);
        assert_eq!(names(&route(&*r, "a.*")), ["star"]);
    }

    #[test]
    fn empty_key_is_a_key() {
        let mut r = router();
        r.add_binding(&binding("", queue("e")));
        assert_eq!(names(&route(&*r, "")), ["e"]);
        assert!(route(&*r, ".").is_empty());
    }

    #[test]
    fn several_destinations_share_a_key() {
        let mut r = router();
        r.add_binding(&binding("k", queue("a")));
        r.add_binding(&binding("k", queue("b")));
        r.add_binding(&binding("k", Destination::Exchange("e".into())));
        r.add_binding(&binding("other", queue("c")));
        let routed = route(&*r, "k");
        assert_eq!(routed.len(), 3);
        assert!(routed.contains(&Destination::Exchange("e".into())));
        r.remove_binding(&binding("k", queue("a")));
        assert_eq!(names(&route(&*r, "k")), ["b", "e"]);
    }

    #[test]
    fn duplicate_bindings_are_counted() {
        // Same destination and key, different arguments: two distinct bindings.
        let mut r = router();
        r.add_binding(&binding_with("k", queue("q"), args(1)));
        r.add_binding(&binding_with("k", queue("q"), args(2)));
        let mut out = Vec::new();
        let props = Default::default();
        let input = RoutingInput {
            exchange: "x",
            routing_key: "k",
            properties: &props,
            body: b"",
        };
        r.route(&input, &mut out).unwrap();
        assert_eq!(out.len(), 1, "one copy per destination, not per binding");

        r.remove_binding(&binding_with("k", queue("q"), args(1)));
        assert_eq!(names(&route(&*r, "k")), ["q"], "the other binding remains");
        r.remove_binding(&binding_with("k", queue("q"), args(2)));
        assert!(route(&*r, "k").is_empty());
    }

    #[test]
    fn unbinding_cleans_up_and_tolerates_unknown_bindings() {
        let mut r = DirectRouter::default();
        r.add_binding(&binding("k", queue("q")));
        r.remove_binding(&binding("k", queue("other")));
        r.remove_binding(&binding("nope", queue("q")));
        assert_eq!(names(&route(&r, "k")), ["q"]);
        r.remove_binding(&binding("k", queue("q")));
        assert!(r.by_key.is_empty(), "empty key entries are pruned");
    }
}
