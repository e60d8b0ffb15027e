//! Routing a published message through exchanges to queues.
//!
//! Follows exchange-to-exchange bindings breadth-agnostically with a visited set, so cycles
//! terminate and a queue reached by several paths gets the message once. An exchange that
//! routes nowhere hands the message to its alternate exchange, as RabbitMQ does.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use foldhash::HashSet;

use tracing::debug;

use super::reply_to::REPLY_TO_PREFIX;
use super::topology::Topology;
use super::{Exchange, ReplyConsumer, VHost};
use crate::exchange::{Destination, RoutingInput};
use crate::message::Message;
use crate::queue::Queue;

/// Reusable buffers for routing, owned by a channel so publishing allocates nothing per
/// message in the common case.
#[derive(Default)]
pub struct Routed {
    /// The queues the message goes to, each once.
    pub queues: Vec<Arc<Queue>>,
    /// Direct reply-to consumers the message goes to (default exchange only).
    pub replies: Vec<Arc<dyn ReplyConsumer>>,
    /// Whether some router failed (the message was unroutable through that exchange).
    pub router_failed: bool,
    /// The highest message-store ticket taken by durable plugin state writes while routing
    /// (0: none); a persistent message's confirm waits for it (`store::plugin_state`).
    pub state_ticket: crate::store::Ticket,
    /// The delay in ms that the router of the exchange published to decided (a 0.2 plugin's,
    /// at most `delayed::MAX_DELAY_MS`), when that exchange holds such messages; 0 otherwise.
    /// The publisher then holds the message for `queues` instead of enqueueing it.
    pub delay_ms: u64,
    pending: Vec<Arc<Exchange>>,
    /// Exchanges already routed through, by address (identity only).
    visited: Vec<usize>,
    /// The queues in `queues`, by address, once there are more than [`SCAN_UP_TO`]: keeps a
    /// fan-out to n queues O(n) rather than O(n^2).
    seen: HashSet<usize>,
    /// `visited` as a set, once it holds more than [`SCAN_UP_TO`].
    visited_set: HashSet<usize>,
    destinations: Vec<Destination>,
}

/// One message being routed: what each exchange it passes through is given.
#[derive(Clone, Copy)]
struct Publication<'a> {
    /// The exchange it was published to.
    published: &'a Arc<Exchange>,
    message: &'a Message,
    properties: &'a BasicProperties,
    /// The publish key, then the CC and BCC keys.
    keys: &'a [&'a str],
}

/// Up to this many queues, a linear scan finds duplicates faster than a hash set.
const SCAN_UP_TO: usize = 16;

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl VHost {
    /// Routes `message` published to `exchange` with routing keys `keys` (the publish key
    /// plus any CC/BCC keys). The result is left in `routed.queues`.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        message: &Message,
        properties: &BasicProperties,
        keys: &[&str],
        routed: &mut Routed,
    ) {
        self.route_traced(exchange, message, properties, keys, routed, &mut ());
    }

    /// [`route`](Self::route), telling `trace` each step (the publish path passes `()`, whose
    /// calls compile to nothing).
    pub(super) fn route_traced<T: Trace>(
        &self,
        exchange: &Arc<Exchange>,
        message: &Message,
        properties: &BasicProperties,
        keys: &[&str],
        routed: &mut Routed,
        trace: &mut T,
    ) {
        routed.queues.clear();
        routed.replies.clear();
        routed.router_failed = false;
        routed.delay_ms = 0;
        routed.pending.clear();
        routed.visited.clear();
        routed.seen.clear();
        routed.visited_set.clear();
        // Plugin calls run on this thread: what they journal from here on is this message's.
        crate::store::take_thread_ticket();
        let topology = self.read_topology();
        // The exchange published to is visited without a clone of its Arc (shared by every
        // publisher to it); exchanges it leads to are queued in `pending`.
        let publication = Publication {
            published: exchange,
            message,
            properties,
            keys,
        };
        self.visit(&topology, exchange, &publication, routed, trace);
        while let Some(x) = routed.pending.pop() {
            self.visit(&topology, &x, &publication, routed, trace);
        }
        routed.state_ticket = crate::store::take_thread_ticket();
    }

    /// Routes the message through exchange `x`: the queues it reaches go to `routed.queues`,
    /// the exchanges it leads to (bindings, its alternate) to `routed.pending`.
    fn visit<T: Trace>(
        &self,
        topology: &Topology,
        x: &Arc<Exchange>,
        publication: &Publication<'_>,
        routed: &mut Routed,
        trace: &mut T,
    ) {
        let Publication {
            published,
            message,
            properties,
            keys,
        } = *publication;
        let id = Arc::as_ptr(x) as usize;
        if !routed.first_visit(id) {
            return;
        }
        trace.exchange(x);
        let mut reached = false;
        if x.spec.name.is_empty() {
            // The default exchange: every queue is implicitly bound by its own name.
            for key in keys {
                if let Some(queue) = topology.queues.get(*key) {
                    reached = true;
                    trace.default_queue(queue.name());
                    push_unique(&mut routed.queues, &mut routed.seen, queue);
                } else if key.starts_with(REPLY_TO_PREFIX) {
                    // A direct reply-to name: straight to the requester's channel, if it
                    // is still there; otherwise the reply is dropped.
                    if let Some(consumer) = self.replies.lookup(key)
                        && consumer.has_room()
                    {
                        reached = true;
                        trace.reply(key);
                        if !routed
                            .replies
                            .iter()
                            .any(|r| std::ptr::addr_eq(Arc::as_ptr(r), Arc::as_ptr(&consumer)))
                        {
                            routed.replies.push(consumer);
                        }
                    }
                }
            }
        } else {
            routed.destinations.clear();
            let router = x.router();
            // The publish key first, then the CC and BCC keys: built-in types route each
            // key in turn, a plugin decides once from all of them.
            if let Some((first, cc)) = keys.split_first() {
                let input = RoutingInput {
                    exchange: &x.spec.name,
                    routing_key: first,
                    properties,
                    body: message.body(),
                };
                match router.route_keys_delayed(&input, cc, &mut routed.destinations) {
                    // A plugin's delay is honoured only for the exchange published to,
                    // when it holds plugin-delayed messages; elsewhere (behind an
                    // exchange-to-exchange binding, under `x-delayed-message`, at fire
                    // time) the message goes on at once.
                    Ok(delay) if delay > 0 && Arc::ptr_eq(x, published) => {
                        if x.delayed().is_some_and(|d| d.decided()) {
                            routed.delay_ms = delay.min(super::delayed::MAX_DELAY_MS);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // Debug only: a router logs its own failures, rate-limited per
                        // exchange (a failed WASM exchange refuses every message).
                        debug!(exchange = %x.spec.name, vhost = %self.name, %error, "router failed; message unroutable by this exchange");
                        trace.failed(x, &error);
                        routed.router_failed = true;
                        routed.destinations.clear();
                    }
                }
            }
            drop(router);
            for destination in routed.destinations.drain(..) {
                let found = match &destination {
                    Destination::Queue(name) => topology.queues.get(name).map(|queue| {
                        push_unique(&mut routed.queues, &mut routed.seen, queue);
                    }),
                    Destination::Exchange(name) => topology
                        .exchanges
                        .get(name)
                        .map(|next| routed.pending.push(next.clone())),
                }
                .is_some();
                reached |= found;
                trace.destination(x, &destination, found);
            }
        }
        if !reached
            && let Some(alternate) = x.alternate.as_ref().and_then(|n| topology.exchanges.get(n))
        {
            trace.alternate(x, alternate);
            routed.pending.push(alternate.clone());
        }
    }
}

/// What [`VHost::route_traced`] reports as it goes (`vhost::explain`). Every call has a
/// default that does nothing.
pub(super) trait Trace {
    /// The message enters exchange `x` (each exchange once).
    fn exchange(&mut self, _x: &Arc<Exchange>) {}
    /// `x`'s router chose `to`; `found` when it exists (a missing one is skipped).
    fn destination(&mut self, _x: &Arc<Exchange>, _to: &Destination, _found: bool) {}
    /// The default exchange delivers to the queue named by the routing key.
    fn default_queue(&mut self, _queue: &crate::exchange::Name) {}
    /// A direct reply-to consumer named by `key` takes the message.
    fn reply(&mut self, _key: &str) {}
    /// `x`'s router failed: the message is unroutable through it.
    fn failed(&mut self, _x: &Arc<Exchange>, _error: &crate::exchange::RouteError) {}
    /// `x` reached nothing and hands the message to its alternate exchange `to`.
    fn alternate(&mut self, _x: &Arc<Exchange>, _to: &Arc<Exchange>) {}
}

/// No trace: the publish path.
impl Trace for () {}

impl VHost {
    /// Appends the queues among `names` that exist now, each once (a fired plugin-delayed
    /// message's destinations).
    pub(crate) fn queues_named(&self, names: &[crate::exchange::Name], out: &mut Vec<Arc<Queue>>) {
        let mut seen = HashSet::default();
        let topology = self.read_topology();
        for name in names {
            if let Some(queue) = topology.queues.get(name) {
                push_unique(out, &mut seen, queue);
            }
        }
    }
}

impl Routed {
    /// Marks exchange `id` visited; false if it was already. Clients choose how many
    /// exchanges a message passes through, so past [`SCAN_UP_TO`] this is a set too.
    fn first_visit(&mut self, id: usize) -> bool {
        if self.visited.len() < SCAN_UP_TO {
            if self.visited.contains(&id) {
                return false;
            }
            self.visited.push(id);
            return true;
        }
        if self.visited_set.is_empty() {
            self.visited_set.extend(self.visited.iter().copied());
        }
        if self.visited_set.insert(id) {
            self.visited.push(id);
            true
        } else {
            false
        }
    }
}

/// Adds `queue` to `queues` unless it is already there; `seen` indexes `queues` once it is
/// past [`SCAN_UP_TO`].
pub(super) fn push_unique(
    queues: &mut Vec<Arc<Queue>>,
    seen: &mut HashSet<usize>,
    queue: &Arc<Queue>,
) {
    if queues.len() < SCAN_UP_TO {
        if !queues.iter().any(|q| Arc::ptr_eq(q, queue)) {
            queues.push(queue.clone());
        }
        return;
    }
    if seen.is_empty() {
        seen.extend(queues.iter().map(|q| Arc::as_ptr(q) as usize));
    }
    if seen.insert(Arc::as_ptr(queue) as usize) {
        queues.push(queue.clone());
    }
}
