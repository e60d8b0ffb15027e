//! Routing a published message through exchanges to queues.
//!
//! Follows exchange-to-exchange bindings breadth-agnostically with a visited set, so cycles
//! terminate and a queue reached by several paths gets the message once. An exchange that
//! routes nowhere hands the message to its alternate exchange, as RabbitMQ does.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;

use tracing::debug;

use super::reply_to::REPLY_TO_PREFIX;
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
    pending: Vec<Arc<Exchange>>,
    /// Exchanges already routed through, by address (identity only).
    visited: Vec<usize>,
    destinations: Vec<Destination>,
}

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
        routed.queues.clear();
        routed.replies.clear();
        routed.router_failed = false;
        routed.pending.clear();
        routed.visited.clear();
        routed.pending.push(exchange.clone());
        let topology = self.topology.read();
        while let Some(x) = routed.pending.pop() {
            let id = Arc::as_ptr(&x) as usize;
            if routed.visited.contains(&id) {
                continue;
            }
            routed.visited.push(id);
            let mut reached = false;
            if x.spec.name.is_empty() {
                // The default exchange: every queue is implicitly bound by its own name.
                for key in keys {
                    if let Some(queue) = topology.queues.get(*key) {
                        reached = true;
                        push_unique(&mut routed.queues, queue);
                    } else if key.starts_with(REPLY_TO_PREFIX) {
                        // A direct reply-to name: straight to the requester's channel, if it
                        // is still there; otherwise the reply is dropped.
                        if let Some(consumer) = self.replies.lookup(key)
                            && consumer.has_room()
                        {
                            reached = true;
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
                for key in keys {
                    let input = RoutingInput {
                        exchange: &x.spec.name,
                        routing_key: key,
                        properties,
                        body: &message.body,
                    };
                    if let Err(error) = router.route(&input, &mut routed.destinations) {
                        // Debug only: a router logs its own failures, rate-limited per
                        // exchange (a failed WASM exchange refuses every message).
                        debug!(exchange = %x.spec.name, vhost = %self.name, %error, "router failed; message unroutable by this exchange");
                        routed.router_failed = true;
                        routed.destinations.clear();
                        break;
                    }
                }
                drop(router);
                for destination in routed.destinations.drain(..) {
                    match destination {
                        Destination::Queue(name) => {
                            if let Some(queue) = topology.queues.get(&name) {
                                reached = true;
                                push_unique(&mut routed.queues, queue);
                            }
                        }
                        Destination::Exchange(name) => {
                            if let Some(next) = topology.exchanges.get(&name) {
                                reached = true;
                                routed.pending.push(next.clone());
                            }
                        }
                    }
                }
            }
            if !reached
                && let Some(alternate) =
                    x.alternate.as_ref().and_then(|n| topology.exchanges.get(n))
            {
                routed.pending.push(alternate.clone());
            }
        }
    }
}

fn push_unique(queues: &mut Vec<Arc<Queue>>, queue: &Arc<Queue>) {
    if !queues.iter().any(|q| Arc::ptr_eq(q, queue)) {
        queues.push(queue.clone());
    }
}
