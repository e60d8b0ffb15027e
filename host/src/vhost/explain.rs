//! Route explain: where a message would go, without sending it.
//!
//! The message is routed exactly as a publish routes it (the same loop, the real routers, WASM
//! plugins included) with a [`Trace`] that records each exchange it passes through, what that
//! exchange's router chose and through which bindings, router failures, and alternate
//! exchanges taken. Nothing is enqueued, no counter of the exchange or vhost moves, and plugin
//! state writes are answered but not applied ([`crate::store::dry_run`]); a plugin's own call
//! counters and decision cache do see the call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;

use super::route::{Routed, Trace};
use super::{Exchange, VHost};
use crate::exchange::{Binding, Destination, Name, RouteError};
use crate::message::Message;

/// How the message reached an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// It was published to it.
    Published,
    /// Through an exchange-to-exchange binding of this exchange.
    Binding(Name),
    /// As the alternate exchange of this exchange, which reached nothing.
    Alternate(Name),
}

/// One destination an exchange's router chose.
#[derive(Debug, Clone)]
pub struct Reached {
    /// The queue or exchange.
    pub destination: Destination,
    /// Whether it exists (a router may name one that was deleted; it is skipped).
    pub exists: bool,
    /// The exchange's bindings to it (a router answers with destinations, not bindings, so
    /// these are every binding that leads there, the matching one among them).
    pub bindings: Vec<Binding>,
}

/// One exchange on the message's way.
#[derive(Debug, Clone)]
pub struct Hop {
    /// Its name (empty: the default exchange).
    pub exchange: Name,
    /// Its type.
    pub kind: Name,
    /// How the message got there.
    pub via: Via,
    /// What its router chose, in its order.
    pub reached: Vec<Reached>,
    /// Its router's failure, if it failed.
    pub error: Option<String>,
    /// The alternate exchange it handed the message to, having reached nothing.
    pub alternate: Option<Name>,
}

/// Where a message would go.
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    /// The exchanges passed through, in routing order.
    pub hops: Vec<Hop>,
    /// The queues that would receive it, each once.
    pub queues: Vec<Name>,
    /// Direct reply-to consumers that would receive it.
    pub replies: usize,
    /// Due time (ms since the epoch) when the exchange is a delayed one and the message
    /// carries a delay: it would be held until then and routed as above at that time.
    pub held_until_ms: Option<u64>,
}

impl Explanation {
    /// Whether the message would reach anything (a `mandatory` publish would not be returned).
    pub fn routed(&self) -> bool {
        !self.queues.is_empty() || self.replies > 0
    }
}

/// The [`Trace`] that builds an [`Explanation`].
#[derive(Default)]
struct Recorder {
    hops: Vec<Hop>,
    /// How exchanges chosen but not yet entered were reached, by name.
    arrivals: Vec<(Name, Via)>,
    /// The bindings of the exchange being routed through, by destination: read once per
    /// exchange, so explaining a fan-out to n queues stays O(n).
    bindings: HashMap<Destination, Vec<Binding>>,
    /// The destinations already listed for that exchange.
    listed: HashSet<Destination>,
}

impl Recorder {
    fn hop(&mut self, x: &Arc<Exchange>) -> Option<&mut Hop> {
        self.hops
            .iter_mut()
            .rev()
            .find(|h| h.exchange == x.spec.name)
    }
}

impl Trace for Recorder {
    fn exchange(&mut self, x: &Arc<Exchange>) {
        let via = match self.arrivals.iter().rposition(|(n, _)| *n == x.spec.name) {
            Some(i) => self.arrivals.swap_remove(i).1,
            None => Via::Published,
        };
        self.bindings.clear();
        self.listed.clear();
        for binding in x.bindings() {
            let to = binding.destination.clone();
            self.bindings.entry(to).or_default().push(binding);
        }
        self.hops.push(Hop {
            exchange: x.spec.name.clone(),
            kind: x.spec.kind.clone(),
            via,
            reached: Vec::new(),
            error: None,
            alternate: None,
        });
    }

    fn destination(&mut self, x: &Arc<Exchange>, to: &Destination, found: bool) {
        if found && let Destination::Exchange(name) = to {
            self.arrivals
                .push((name.clone(), Via::Binding(x.spec.name.clone())));
        }
        // A router may name a destination more than once: it is listed once.
        if !self.listed.insert(to.clone()) {
            return;
        }
        let bindings = self.bindings.remove(to).unwrap_or_default();
        if let Some(hop) = self.hop(x) {
            hop.reached.push(Reached {
                destination: to.clone(),
                exists: found,
                bindings,
            });
        }
    }

    fn default_queue(&mut self, queue: &Name) {
        if let Some(hop) = self.hops.last_mut() {
            hop.reached.push(Reached {
                destination: Destination::Queue(queue.clone()),
                exists: true,
                bindings: Vec::new(),
            });
        }
    }

    fn failed(&mut self, x: &Arc<Exchange>, error: &RouteError) {
        if let Some(hop) = self.hop(x) {
            hop.error = Some(error.0.clone());
        }
    }

    fn alternate(&mut self, x: &Arc<Exchange>, to: &Arc<Exchange>) {
        self.arrivals
            .push((to.spec.name.clone(), Via::Alternate(x.spec.name.clone())));
        if let Some(hop) = self.hop(x) {
            hop.alternate = Some(to.spec.name.clone());
        }
    }
}

impl VHost {
    /// Where `message`, published to `exchange` with routing keys `keys` (the publish key,
    /// then any CC/BCC keys), would go now; nothing is sent. Plugin calls may block up to
    /// their deadline: call it where blocking is allowed.
    pub fn explain(
        &self,
        exchange: &Arc<Exchange>,
        message: &Message,
        properties: &BasicProperties,
        keys: &[&str],
    ) -> Explanation {
        let mut routed = Routed::default();
        let mut recorder = Recorder::default();
        crate::store::dry_run(|| {
            self.route_traced(
                exchange,
                message,
                properties,
                keys,
                &mut routed,
                &mut recorder,
            );
        });
        let held_until_ms = exchange
            .delayed()
            .and_then(|_| super::delayed::due_time(properties, super::delayed::now_ms()));
        Explanation {
            hops: recorder.hops,
            queues: routed.queues.iter().map(|q| q.name().clone()).collect(),
            replies: routed.replies.len(),
            held_until_ms,
        }
    }
}
