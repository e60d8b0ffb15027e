//! Unit tests of the vhost's indexes: bindings by destination (queue deletion, auto-delete
//! cascades), exclusive queues by owner, and routing's de-duplication of large fan-outs.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use foldhash::HashSet;

use super::route::push_unique;
use super::{ExchangeSpec, VHost};
use crate::exchange::{Binding, Destination, Name, Registry};
use crate::queue::{Queue, QueueSpec};

fn vhost() -> Arc<VHost> {
    VHost::new("/", Registry::with_builtins())
}

fn exchange(vhost: &VHost, name: &str, auto_delete: bool) {
    vhost
        .declare_exchange(ExchangeSpec {
            name: Name::from(name),
            kind: Name::from("direct"),
            durable: false,
            auto_delete,
            internal: false,
            arguments: FieldTable::default(),
        })
        .expect("declare exchange");
}

fn queue(vhost: &VHost, name: &str, owner: Option<u64>) -> Arc<Queue> {
    vhost
        .declare_queue(QueueSpec {
            name: Name::from(name),
            durable: false,
            exclusive_owner: owner,
            auto_delete: false,
            arguments: FieldTable::default(),
        })
        .expect("declare queue")
        .queue
}

fn to_queue(name: &str, key: &str) -> Binding {
    Binding {
        destination: Destination::Queue(Name::from(name)),
        routing_key: Name::from(key),
        arguments: FieldTable::default(),
    }
}

fn to_exchange(name: &str) -> Binding {
    Binding {
        destination: Destination::Exchange(Name::from(name)),
        routing_key: Name::from(""),
        arguments: FieldTable::default(),
    }
}

#[test]
fn deleting_a_queue_drops_its_bindings_only() {
    let v = vhost();
    exchange(&v, "x", false);
    queue(&v, "q", None);
    queue(&v, "other", None);
    for i in 0..100 {
        v.bind("x", to_queue("q", &format!("k{i}"))).unwrap();
    }
    v.bind("x", to_queue("other", "k0")).unwrap();
    // Binding twice is a no-op.
    v.bind("x", to_queue("q", "k0")).unwrap();
    assert_eq!(v.topology.read().bindings, 101);
    v.delete_queue("q", 0, false, false).unwrap();
    let topology = v.topology.read();
    assert_eq!(topology.bindings, 1);
    let x = topology.exchanges.get("x").unwrap();
    assert_eq!(x.bindings(), vec![to_queue("other", "k0")]);
    assert!(!x.binds_to(&Destination::Queue(Name::from("q"))));
}

#[test]
fn a_long_chain_of_auto_delete_exchanges_goes_with_its_queue() {
    // e0 -> q, e1 -> e0, ..., e4999 -> e4998, all auto-delete: deleting q empties e0, whose
    // removal empties e1, and so on. Removed iteratively (a client chooses the length).
    let v = vhost();
    queue(&v, "q", None);
    exchange(&v, "keep", false);
    v.bind("keep", to_exchange("e0")).unwrap_err(); // e0 does not exist yet
    exchange(&v, "e0", true);
    v.bind("e0", to_queue("q", "")).unwrap();
    for i in 1..5000 {
        exchange(&v, &format!("e{i}"), true);
        v.bind(&format!("e{i}"), to_exchange(&format!("e{}", i - 1)))
            .unwrap();
    }
    v.bind("keep", to_exchange("e4999")).unwrap();
    assert_eq!(v.topology.read().bindings, 5001);
    v.delete_queue("q", 0, false, false).unwrap();
    let topology = v.topology.read();
    assert!((0..5000).all(|i| !topology.exchanges.contains_key(format!("e{i}").as_str())));
    // keep's binding to the removed e4999 went too, and keep (not auto-delete) stays.
    assert!(topology.exchanges.contains_key("keep"));
    assert_eq!(topology.bindings, 0);
    assert!(!topology.is_destination("e4999"));
}

#[test]
fn unbinding_the_last_binding_to_an_exchange_clears_the_reverse_index() {
    let v = vhost();
    exchange(&v, "src", false);
    exchange(&v, "dst", false);
    v.bind("src", to_exchange("dst")).unwrap();
    // In use as a destination: if-unused refuses.
    assert!(v.delete_exchange("dst", true).is_err());
    v.unbind("src", &to_exchange("dst")).unwrap();
    assert!(!v.topology.read().is_destination("dst"));
    v.delete_exchange("dst", true).unwrap();
    assert_eq!(v.topology.read().bindings, 0);
}

#[test]
fn exclusive_queues_are_found_by_their_owner() {
    let v = vhost();
    queue(&v, "a1", Some(1));
    queue(&v, "a2", Some(1));
    queue(&v, "b", Some(2));
    queue(&v, "shared", None);
    v.remove_exclusive_queues(1);
    let topology = v.topology.read();
    let mut left: Vec<&str> = topology.queues.keys().map(|n| &**n).collect();
    left.sort_unstable();
    assert_eq!(left, ["b", "shared"]);
    assert!(topology.exclusive_of(1).is_empty());
    assert_eq!(topology.exclusive_of(2).len(), 1);
}

#[test]
fn a_large_fan_out_keeps_each_queue_once() {
    let v = vhost();
    let queues: Vec<Arc<Queue>> = (0..100)
        .map(|i| queue(&v, &format!("q{i}"), None))
        .collect();
    let (mut out, mut seen) = (Vec::new(), HashSet::default());
    // Every queue three times, interleaved, past the linear-scan threshold.
    for _ in 0..3 {
        for q in &queues {
            push_unique(&mut out, &mut seen, q);
        }
    }
    assert_eq!(out.len(), 100);
    assert!(out.iter().zip(&queues).all(|(a, b)| Arc::ptr_eq(a, b)));
}

#[test]
fn bindings_differing_only_in_a_float_argument_are_told_apart() {
    use amq_protocol::types::AMQPValue;
    let with = |f: f64| {
        let mut args = FieldTable::default();
        args.insert("w".into(), AMQPValue::Double(f));
        args.insert("s".into(), AMQPValue::LongString("v".into()));
        Binding {
            arguments: args,
            ..to_queue("q", "k")
        }
    };
    // Same identity hash (floats are hashed by variant only), different bindings.
    assert_eq!(with(1.0).identity_hash(), with(2.0).identity_hash());
    assert!(!with(1.0).same_as(&with(2.0)));
    let v = vhost();
    exchange(&v, "x", false);
    queue(&v, "q", None);
    v.bind("x", with(1.0)).unwrap();
    v.bind("x", with(2.0)).unwrap();
    v.bind("x", with(2.0)).unwrap();
    assert_eq!(v.topology.read().bindings, 2);
    v.unbind("x", &with(1.0)).unwrap();
    let x = v.exchange("x").unwrap();
    assert_eq!(x.bindings(), vec![with(2.0)]);
    assert!(!x.has_binding(&with(1.0)));
}
