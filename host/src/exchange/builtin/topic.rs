//! The `topic` exchange: binding keys are patterns over the dot-separated words of a routing key.
//!
//! AMQP 0-9-1: "The routing key used for a topic exchange MUST consist of zero or more words
//! delimited by dots. [...] The routing pattern follows the same rules as the routing key with
//! the addition that * matches a single word, and # matches zero or more words." RabbitMQ
//! details that matter here:
//!
//! * Words are split on every `.`, so empty words are words: `a..b` is `a`, ``, `b`; `a.` is
//!   `a`, `` and `.` is two empty words.
//! * The empty key is *zero* words (`split_topic_key(<<>>) -> []` in `rabbit_db_topic_exchange`,
//!   kept by RabbitMQ's 2026 fix for empty binding keys, PR #16271). Hence `#` matches the empty
//!   routing key, `*` does not, and the empty binding key matches only the empty routing key.
//! * `#` may appear anywhere and any number of times (`#.a.#`, `a.#.b`, `#.#`).
//! * Words of the routing key are plain text: a `*` or `#` there is an ordinary word.
//!
//! # Index
//!
//! Bindings live in a trie with one edge per binding-key word: literal words, `*` and `#` each
//! have their own child slot, and each node holds the destinations of the bindings whose key
//! ends there. Routing runs the trie as a nondeterministic automaton, one step per routing-key
//! word, over a deduplicated set of live nodes: a literal edge or `*` consumes the word, a `#`
//! node may consume it and stay, and entering a node also enters its `#` child (zero words).
//! The cost is words × live nodes, whatever the number of bindings, and unlike a backtracking
//! walk it cannot blow up on keys such as `#.a.#.a.#.a` against a long run of `a`s.
//!
//! Literal words are interned to small integers, so each routing-key word is hashed once per
//! message (with the DoS-resistant std hasher) and the per-node lookups hash a `u32`. Routing
//! allocates nothing once the per-thread scratch buffers are warm. Unbinding prunes the nodes
//! and interned words that no binding uses any more, so the trie never outgrows its bindings.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;

use amq_protocol::types::FieldTable;

use super::DestinationSet;
use crate::exchange::{
    Binding, Destination, ExchangeType, Invalid, RouteError, Router, RoutingInput,
};

/// The `topic` exchange type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Topic;

impl ExchangeType for Topic {
    fn name(&self) -> &str {
        "topic"
    }

    fn validate(&self, _arguments: &FieldTable) -> Result<(), Invalid> {
        Ok(())
    }

    fn create(&self, _exchange: &str, _arguments: &FieldTable) -> Result<Box<dyn Router>, Invalid> {
        Ok(Box::<TopicRouter>::default())
    }
}

/// Splits a key into its words the way RabbitMQ does: on every `.`, the empty key being no
/// words at all.
fn words(key: &str) -> impl Iterator<Item = &str> {
    (!key.is_empty())
        .then(|| key.split('.'))
        .into_iter()
        .flatten()
}

/// Index of a node in [`TopicRouter::nodes`].
type NodeId = u32;
/// Interned literal word.
type WordId = u32;

const ROOT: NodeId = 0;

/// A hasher for the small integers this module assigns itself (node and word ids), which an
/// attacker cannot choose: one multiplication instead of SipHash.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<WordId, V, BuildHasherDefault<IdHasher>>;

/// One trie node: a prefix of some binding keys.
#[derive(Debug, Default)]
struct Node {
    /// Children through a literal word.
    words: IdMap<NodeId>,
    /// Child through `*`.
    star: Option<NodeId>,
    /// Child through `#`.
    hash: Option<NodeId>,
    /// Whether this node is the target of a `#` edge, and so may consume more words itself.
    is_hash: bool,
    /// Destinations of the bindings whose key ends here.
    destinations: DestinationSet,
}

impl Node {
    fn is_unused(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }
}

/// How a node hangs off its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    Word(WordId),
    Star,
    Hash,
}

/// An interned literal word and the number of trie edges labelled with it.
#[derive(Debug)]
struct Interned {
    id: WordId,
    edges: u32,
}

/// Routing state of one topic exchange.
#[derive(Debug)]
pub struct TopicRouter {
    /// The trie; `nodes[ROOT]` always exists. Slots in `free` are unused.
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    /// Literal words used by some edge.
    words: HashMap<Box<str>, Interned>,
    /// Word ids released by pruning, reused before new ones.
    free_words: Vec<WordId>,
}

impl Default for TopicRouter {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
            free: Vec::new(),
            words: HashMap::new(),
            free_words: Vec::new(),
        }
    }
}

/// Per-thread buffers for the automaton's node sets, reused by every route on the thread.
#[derive(Default)]
struct Scratch {
    current: Vec<NodeId>,
    next: Vec<NodeId>,
}

/// Scratch buffers larger than this are released after use, so one pathological message does
/// not pin memory on a thread for ever.
const SCRATCH_KEEP: usize = 4096;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl TopicRouter {
    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    fn child(&self, parent: NodeId, edge: Edge) -> Option<NodeId> {
        let node = self.node(parent);
        match edge {
            Edge::Word(w) => node.words.get(&w).copied(),
            Edge::Star => node.star,
            Edge::Hash => node.hash,
        }
    }

    /// The edge a binding-key word follows, if the trie can have it (a literal word nobody
    /// interned labels no edge).
    fn edge_of(&self, word: &str) -> Option<Edge> {
        match word {
            "*" => Some(Edge::Star),
            "#" => Some(Edge::Hash),
            w => self.words.get(w).map(|i| Edge::Word(i.id)),
        }
    }

    /// Returns the child of `parent` through `word`, creating it (and interning the word).
    fn child_or_insert(&mut self, parent: NodeId, word: &str) -> NodeId {
        if let Some(child) = self.edge_of(word).and_then(|e| self.child(parent, e)) {
            return child;
        }
        let edge = match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            w => Edge::Word(self.intern(w)),
        };
        let child = self.alloc(edge == Edge::Hash);
        let node = self.node_mut(parent);
        match edge {
            Edge::Word(w) => {
                node.words.insert(w, child);
            }
            Edge::Star => node.star = Some(child),
            Edge::Hash => node.hash = Some(child),
        }
        child
    }

    /// Interns `word` for one more edge.
    fn intern(&mut self, word: &str) -> WordId {
        if let Some(interned) = self.words.get_mut(word) {
            interned.edges += 1;
            return interned.id;
        }
        let id = self.free_words.pop().unwrap_or_else(|| {
            WordId::try_from(self.words.len()).expect("fewer than 2^32 distinct words")
        });
        self.words.insert(word.into(), Interned { id, edges: 1 });
        id
    }

    /// Releases one edge's use of `word`.
    fn release(&mut self, word: &str) {
        if let Some(interned) = self.words.get_mut(word) {
            interned.edges -= 1;
            if interned.edges == 0 {
                self.free_words.push(interned.id);
                self.words.remove(word);
            }
        }
    }

    fn alloc(&mut self, is_hash: bool) -> NodeId {
        let node = Node {
            is_hash,
            ..Node::default()
        };
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                NodeId::try_from(self.nodes.len() - 1).expect("fewer than 2^32 trie nodes")
            }
        }
    }

    /// Adds `id` to a node set together with its chain of `#` children, which match with zero
    /// words.
    fn enter(&self, mut id: NodeId, set: &mut Vec<NodeId>) {
        set.push(id);
        while let Some(hash) = self.node(id).hash {
            set.push(hash);
            id = hash;
        }
    }

    fn route_key(&self, key: &str, scratch: &mut Scratch, out: &mut Vec<Destination>) {
        let Scratch { current, next } = scratch;
        current.clear();
        self.enter(ROOT, current);
        for word in words(key) {
            // One hash of the word per step; a word no binding mentions can only be matched by
            // `*` and `#`.
            let literal = self.words.get(word).map(|i| i.id);
            next.clear();
            for &id in current.iter() {
                let node = self.node(id);
                if let Some(child) = literal.and_then(|w| node.words.get(&w)) {
                    self.enter(*child, next);
                }
                if let Some(child) = node.star {
                    self.enter(child, next);
                }
                if node.is_hash {
                    // `#` swallows this word and stays ready for more.
                    self.enter(id, next);
                }
            }
            if next.len() > 1 {
                next.sort_unstable();
                next.dedup();
            }
            mem::swap(current, next);
            if current.is_empty() {
                return;
            }
        }
        for &id in current.iter() {
            self.node(id).destinations.append_to(out);
        }
    }

    /// Nodes in use, root included (for tests of pruning).
    #[cfg(test)]
    fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

impl Router for TopicRouter {
    fn validate_binding(&self, _binding: &Binding) -> Result<(), Invalid> {
        // RabbitMQ accepts any binding key for a topic exchange, the empty one included.
        Ok(())
    }

    fn add_binding(&mut self, binding: &Binding) {
        let mut node = ROOT;
        for word in words(&binding.routing_key) {
            node = self.child_or_insert(node, word);
        }
        self.node_mut(node)
            .destinations
            .insert(&binding.destination);
    }

    fn remove_binding(&mut self, binding: &Binding) {
        // Walk down, remembering the path for pruning; an unknown binding is ignored.
        let mut path: Vec<(NodeId, Edge, &str)> = Vec::new();
        let mut node = ROOT;
        for word in words(&binding.routing_key) {
            let Some(edge) = self.edge_of(word) else {
                return;
            };
            let Some(child) = self.child(node, edge) else {
                return;
            };
            path.push((node, edge, word));
            node = child;
        }
        if !self
            .node_mut(node)
            .destinations
            .remove(&binding.destination)
        {
            return;
        }
        // Prune from the leaf up while nodes serve no binding.
        for (parent, edge, word) in path.into_iter().rev() {
            if !self.node(node).is_unused() {
                break;
            }
            self.nodes[node as usize] = Node::default();
            self.free.push(node);
            let p = self.node_mut(parent);
            match edge {
                Edge::Word(w) => {
                    p.words.remove(&w);
                    self.release(word);
                }
                Edge::Star => p.star = None,
                Edge::Hash => p.hash = None,
            }
            node = parent;
        }
    }

    fn route(
        &self,
        message: &RoutingInput<'_>,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                self.route_key(message.routing_key, &mut scratch, out);
                if scratch.current.capacity() > SCRATCH_KEEP
                    || scratch.next.capacity() > SCRATCH_KEEP
                {
                    *scratch = Scratch::default();
                }
            }
            // Only reachable if routing re-entered itself on this thread; stay correct.
            Err(_) => self.route_key(message.routing_key, &mut Scratch::default(), out),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use amq_protocol::types::AMQPValue;
    use proptest::prelude::*;

    use super::super::test_util::{binding, binding_with, names, queue, route};
    use super::*;

    fn router_with(bindings: &[(&str, &str)]) -> TopicRouter {
        let mut r = TopicRouter::default();
        for (key, q) in bindings {
            r.add_binding(&binding(key, queue(q)));
        }
        r
    }

    /// Asserts which of `keys` a single binding key matches.
    #[track_caller]
    fn check(pattern: &str, matching: &[&str], not_matching: &[&str]) {
        let r = router_with(&[(pattern, "q")]);
        for key in matching {
            assert_eq!(
                names(&route(&r, key)),
                ["q"],
                "{pattern:?} should match {key:?}"
            );
        }
        for key in not_matching {
            assert!(
                route(&r, key).is_empty(),
                "{pattern:?} should not match {key:?}"
            );
        }
    }

    #[test]
    fn literal_keys_match_exactly() {
        check(
            "stock.nyse.ibm",
            &["stock.nyse.ibm"],
            &["stock.nyse", "stock.nyse.ibm.x", "stock.nyse.IBM", ""],
        );
    }

    #[test]
    fn star_matches_exactly_one_word() {
        check(
            "stock.*.ibm",
            &["stock.nyse.ibm", "stock..ibm"],
            &["stock.ibm", "stock.a.b.ibm"],
        );
        check("*", &["a", "*", "#"], &["", ".", "a.b"]);
        check("*.*", &[".", "a.", ".a", "a.b"], &["", "a", "a.b.c"]);
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        check("#", &["", "a", ".", "a.b.c", "a..b"], &[]);
        check(
            "stock.#",
            &["stock", "stock.", "stock.a", "stock.a.b.c"],
            &["", "stocks", "x.stock"],
        );
        check(
            "#.orders",
            &["orders", ".orders", "eu.orders", "eu.fr.orders"],
            &["orders.eu", ""],
        );
        check(
            "eu.#.orders",
            &["eu.orders", "eu.fr.orders", "eu.fr.paris.orders"],
            &["eu.orders.x", "us.orders", "eu"],
        );
    }

    #[test]
    fn several_hashes() {
        check(
            "#.a.#",
            &["a", "x.a", "a.x", "x.a.y", "a.a.a", "x..a..y"],
            &["", "x", "x.b.y"],
        );
        check("#.#", &["", "a", "a.b.c"], &[]);
        check(
            "a.#.b.#.c",
            &["a.b.c", "a.x.b.y.c", "a.b.b.c.c", "a.x.y.b.c"],
            &["a.c", "a.b", "a.c.b"],
        );
        check("#.*", &["a", "a.b"], &[""]);
    }

    #[test]
    fn star_and_hash_combined() {
        // `#.*` and `*.#` need at least one word, `*.*.#` two.
        check("*.#", &["a", "a.b", "."], &[""]);
        check("#.*", &["a", "a.b.c"], &[""]);
        check("*.*.#", &["a.b", "a.b.c"], &["", "a"]);
        check("*.#.*", &["a.b", "a.b.c.d"], &["a", ""]);
    }

    #[test]
    fn empty_key_is_zero_words() {
        // RabbitMQ: split_topic_key(<<>>) -> [].
        check("", &[""], &[".", "a", " "]);
        check("#", &[""], &[]);
        check("*", &[], &[""]);
    }

    #[test]
    fn empty_words_are_words() {
        check("a..b", &["a..b"], &["a.b", "a...b"]);
        check("a.", &["a."], &["a", "a.b"]);
        check(".a", &[".a"], &["a"]);
        check(".", &["."], &["", ".."]);
        check("a.*.b", &["a..b"], &["a.b"]);
        check("a.#.b", &["a.b", "a..b", "a...b"], &["a."]);
    }

    #[test]
    fn wildcards_in_routing_keys_are_words() {
        check("a.b", &[], &["a.*", "a.#", "#", "*.b"]);
        check("a.*", &["a.*", "a.#"], &[]);
    }

    #[test]
    fn destinations_from_several_bindings() {
        let r = router_with(&[
            ("stock.nyse.*", "nyse"),
            ("stock.#", "stocks"),
            ("#.ibm", "ibm"),
            ("#", "all"),
            ("bond.*", "bonds"),
        ]);
        assert_eq!(
            names(&route(&r, "stock.nyse.ibm")),
            ["all", "ibm", "nyse", "stocks"]
        );
        assert_eq!(names(&route(&r, "bond.x")), ["all", "bonds"]);
        assert_eq!(names(&route(&r, "")), ["all"]);
    }

    #[test]
    fn one_copy_per_matching_binding() {
        // Several automaton paths reach the same binding; it routes once.
        let mut r = router_with(&[("#.a.#", "q"), ("#.#.#", "r")]);
        r.add_binding(&binding("*.#", Destination::Exchange("e".into())));
        let mut out = Vec::new();
        let props = Default::default();
        let input = RoutingInput {
            exchange: "x",
            routing_key: "a.a.a.a",
            properties: &props,
            body: b"",
        };
        r.route(&input, &mut out).unwrap();
        out.sort();
        assert_eq!(
            out,
            [queue("q"), queue("r"), Destination::Exchange("e".into())]
        );
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        // A backtracking matcher tries ~C(250, 6) splits here; the automaton does 250 steps.
        let r = router_with(&[
            ("#.a.#.a.#.a.#.a.#.a.#.a.#.b", "q"),
            ("#.#.#.#.#.#.#.#.#.#.#.#.#.#.b", "r"),
        ]);
        let key = vec!["a"; 250].join(".");
        assert!(route(&r, &key).is_empty());
        assert_eq!(names(&route(&r, &format!("{key}.b"))), ["q", "r"]);
    }

    #[test]
    fn duplicate_bindings_are_counted() {
        let args = |n: i32| {
            let mut t = FieldTable::default();
            t.insert("n".into(), AMQPValue::LongInt(n));
            t
        };
        let mut r = TopicRouter::default();
        r.add_binding(&binding_with("a.#", queue("q"), args(1)));
        r.add_binding(&binding_with("a.#", queue("q"), args(2)));
        r.add_binding(&binding("a.*", queue("q")));
        r.remove_binding(&binding_with("a.#", queue("q"), args(1)));
        assert_eq!(names(&route(&r, "a")), ["q"], "a.# still bound once");
        r.remove_binding(&binding_with("a.#", queue("q"), args(2)));
        assert!(route(&r, "a").is_empty());
        assert_eq!(names(&route(&r, "a.b")), ["q"], "a.* still bound");
    }

    #[test]
    fn unbinding_prunes_the_trie() {
        let keys = ["a.b.c", "a.b", "a.*.c", "#", "a.#.c", "", "x..y", "#.#"];
        let mut r = TopicRouter::default();
        for (i, key) in keys.iter().enumerate() {
            r.add_binding(&binding(key, queue(&i.to_string())));
        }
        assert!(r.live_nodes() > 1);
        // Unknown bindings change nothing.
        r.remove_binding(&binding("a.b.c", queue("nobody")));
        r.remove_binding(&binding("a.b.c.d", queue("0")));
        r.remove_binding(&binding("zz", queue("0")));
        assert_eq!(names(&route(&r, "a.b.c")), ["0", "2", "3", "4", "7"]);

        for (i, key) in keys.iter().enumerate() {
            r.remove_binding(&binding(key, queue(&i.to_string())));
        }
        assert_eq!(r.live_nodes(), 1, "only the root remains");
        assert!(r.words.is_empty(), "no interned word remains");
        assert!(route(&r, "a.b.c").is_empty());

        // Freed slots and word ids are reused.
        let capacity = r.nodes.len();
        for (i, key) in keys.iter().enumerate() {
            r.add_binding(&binding(key, queue(&i.to_string())));
        }
        assert_eq!(r.nodes.len(), capacity);
        assert_eq!(names(&route(&r, "a.b.c")), ["0", "2", "3", "4", "7"]);
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut r = router_with(&[("a.b.c", "q"), ("a.b", "q"), ("a.b.d", "q")]);
        let before = r.live_nodes();
        r.remove_binding(&binding("a.b.c", queue("q")));
        assert_eq!(r.live_nodes(), before - 1);
        assert_eq!(names(&route(&r, "a.b")), ["q"]);
        assert_eq!(names(&route(&r, "a.b.d")), ["q"]);
        r.remove_binding(&binding("a.b", queue("q")));
        assert_eq!(names(&route(&r, "a.b.d")), ["q"]);
        assert!(r.words.contains_key("b"));
        assert!(!r.words.contains_key("c"));
    }

    // ---- Property tests against a naive matcher -------------------------------------------

    /// The reference: a direct reading of the spec over RabbitMQ's word split.
    fn naive_match(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| naive_match(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && naive_match(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && naive_match(rest, &key[1..]),
        }
    }

    /// RabbitMQ's split, written out again so the model does not share the router's.
    fn naive_words(key: &str) -> Vec<&str> {
        if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').collect()
        }
    }

    fn naive_route(bindings: &[(String, usize)], key: &str) -> BTreeSet<String> {
        let key = naive_words(key);
        bindings
            .iter()
            .filter(|(pattern, _)| naive_match(&naive_words(pattern), &key))
            .map(|(_, q)| q.to_string())
            .collect()
    }

    fn routed(r: &TopicRouter, key: &str) -> BTreeSet<String> {
        names(&route(r, key))
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Keys of up to five words over a small alphabet, so that patterns and keys collide often.
    fn key_from(alphabet: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(alphabet), 0..6).prop_map(|w| w.join("."))
    }

    fn binding_key() -> impl Strategy<Value = String> {
        key_from(&["a", "b", "", "*", "#"])
    }

    fn routing_key() -> impl Strategy<Value = String> {
        key_from(&["a", "b", "c", "", "*", "#"])
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bind { key: String, queue: usize, arg: i32 },
        Unbind(prop::sample::Index),
        UnbindUnknown { key: String, queue: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (binding_key(), 0..4usize, 0..2i32)
                .prop_map(|(key, queue, arg)| Op::Bind { key, queue, arg }),
            3 => any::<prop::sample::Index>().prop_map(Op::Unbind),
            1 => (binding_key(), 0..4usize)
                .prop_map(|(key, queue)| Op::UnbindUnknown { key, queue }),
        ]
    }

    fn with_arg(key: &str, q: usize, arg: i32) -> Binding {
        let mut args = FieldTable::default();
        args.insert("arg".into(), AMQPValue::LongInt(arg));
        binding_with(key, queue(&q.to_string()), args)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn routes_like_the_naive_matcher(
            bindings in prop::collection::vec((binding_key(), 0..6usize), 0..12),
            keys in prop::collection::vec(routing_key(), 1..12),
        ) {
            let mut r = TopicRouter::default();
            for (key, q) in &bindings {
                r.add_binding(&binding(key, queue(&q.to_string())));
            }
            for key in &keys {
                prop_assert_eq!(routed(&r, key), naive_route(&bindings, key), "key {:?}", key);
            }
        }

        #[test]
        fn bind_unbind_sequences_match_the_model(
            ops in prop::collection::vec(op(), 1..40),
            probes in prop::collection::vec(routing_key(), 1..8),
        ) {
            let mut r = TopicRouter::default();
            // The host's view: distinct bindings (key, queue, argument).
            let mut model: Vec<(String, usize, i32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Bind { key, queue, arg } => {
                        if !model.contains(&(key.clone(), queue, arg)) {
                            r.add_binding(&with_arg(&key, queue, arg));
                            model.push((key, queue, arg));
                        }
                    }
                    Op::Unbind(index) => {
                        if !model.is_empty() {
                            let (key, queue, arg) = model.swap_remove(index.index(model.len()));
                            r.remove_binding(&with_arg(&key, queue, arg));
                        }
                    }
                    Op::UnbindUnknown { key, queue } => {
                        // Queues 4.. are never bound: must change nothing. (The host never
                        // unbinds what it did not bind, so a known key and queue with other
                        // arguments is not a case to test.)
                        r.remove_binding(&with_arg(&key, queue + 4, 0));
                    }
                }
                let bound: Vec<(String, usize)> =
                    model.iter().map(|(k, q, _)| (k.clone(), *q)).collect();
                for key in &probes {
                    prop_assert_eq!(routed(&r, key), naive_route(&bound, key), "key {:?}", key);
                }
            }
            for (key, queue, arg) in model.drain(..) {
                r.remove_binding(&with_arg(&key, queue, arg));
            }
            prop_assert_eq!(r.live_nodes(), 1);
            prop_assert!(r.words.is_empty());
        }
    }
}
