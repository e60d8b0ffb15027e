//! The `fanout` exchange: every message goes to every bound destination.
//!
//! AMQP 0-9-1 §3.1.3.2: "a message queue binds to the exchange with no arguments; when a
//! publisher sends the exchange a message, it is passed to the message queue unconditionally."
//! Binding keys and routing keys are ignored, but bindings that differ only in their key are
//! still distinct bindings, so destinations are counted like everywhere else.

use amq_protocol::types::FieldTable;

use super::DestinationSet;
use crate::exchange::{
    Binding, Destination, ExchangeType, Invalid, RouteError, Router, RoutingInput,
};

/// The `fanout` exchange type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fanout;

impl ExchangeType for Fanout {
    fn name(&self) -> &str {
        "fanout"
    }

    fn validate(&self, _arguments: &FieldTable) -> Result<(), Invalid> {
        Ok(())
    }

    fn create(&self, _exchange: &str, _arguments: &FieldTable) -> Result<Box<dyn Router>, Invalid> {
        Ok(Box::<FanoutRouter>::default())
    }
}

/// Routing state of one fanout exchange.
#[derive(Debug, Default)]
pub struct FanoutRouter {
    destinations: DestinationSet,
}

impl Router for FanoutRouter {
    fn validate_binding(&self, _binding: &Binding) -> Result<(), Invalid> {
        Ok(())
    }

    fn add_binding(&mut self, binding: &Binding) {
        self.destinations.insert(&binding.destination);
    }

    fn remove_binding(&mut self, binding: &Binding) {
        self.destinations.remove(&binding.destination);
    }

    fn route(
        &self,
        _message: &RoutingInput<'_>,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.destinations.append_to(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{binding, names, queue, route};
    use super::*;

    #[test]
    fn routes_everywhere_whatever_the_key() {
        let mut r = Fanout.create("x", &FieldTable::default()).unwrap();
        assert!(route(&*r, "k").is_empty(), "no bindings, no destinations");
        r.add_binding(&binding("", queue("a")));
        r.add_binding(&binding("unrelated", queue("b")));
        for key in ["", "k", "a.b.c", "#"] {
            assert_eq!(names(&route(&*r, key)), ["a", "b"], "key {key:?}");
        }
    }

    #[test]
    fn bindings_differing_by_key_are_counted() {
        let mut r = Fanout.create("x", &FieldTable::default()).unwrap();
        r.add_binding(&binding("one", queue("q")));
        r.add_binding(&binding("two", queue("q")));
        r.remove_binding(&binding("one", queue("q")));
        assert_eq!(names(&route(&*r, "")), ["q"]);
        r.remove_binding(&binding("two", queue("q")));
        assert!(route(&*r, "").is_empty());
        r.remove_binding(&binding("two", queue("q")));
        assert!(route(&*r, "").is_empty(), "unknown unbind is a no-op");
    }
}
