//! Shadow reload: a candidate version of a plugin runs beside the active one on live traffic.
//!
//! Every message routed by an exchange of the type is also routed by the candidate's instance
//! for that exchange (same bindings, same ids); the two decisions are compared as sets of
//! destinations, and mismatches are counted with a few recent examples. The candidate's
//! answer is never used: messages go where the active version sends them. Its `state` writes
//! are answered but not applied ([`crate::store::dry_run`]), so it cannot change what the
//! active version sees. Its calls run under the same deadline and memory cap and are charged
//! to the vhost's CPU budget; a candidate that fails is rebuilt, and after
//! [`SHADOW_FAILURES_MAX`] failures in a row it stops being called for that exchange.
//!
//! The operator then promotes the candidate (an ordinary hot reload to it) or drops it. A
//! shadow lives in memory only: a restart forgets it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::instance::Instance;
use super::router::{BuildError, build};
use super::runtime::PluginVersion;
use super::v0_1::Inputs;
use crate::exchange::{Binding, Destination, RoutingInput};

/// Recent mismatches kept per shadowed type.
pub const SHADOW_EXAMPLES_MAX: usize = 16;
/// Consecutive failures after which the candidate stops being called for an exchange.
pub const SHADOW_FAILURES_MAX: u32 = 5;
/// Destinations listed per side of an example.
const EXAMPLE_DESTINATIONS_MAX: usize = 16;
/// Bytes of routing key kept in an example.
const EXAMPLE_KEY_MAX: usize = 256;

/// The candidate of one type and its comparison counts, shared by its exchanges' shadows.
#[derive(Debug)]
pub struct Candidate {
    /// The version under trial.
    pub version: Arc<PluginVersion>,
    /// Its component, kept so that promoting it installs exactly these bytes.
    pub component: Arc<[u8]>,
    /// When the trial started (ms since the epoch).
    pub started_ms: u64,
    /// Messages routed by both versions.
    pub compared: AtomicU64,
    /// Of those, the ones whose destinations differed (or that one version refused).
    pub mismatches: AtomicU64,
    /// Candidate calls that failed (trap, deadline, memory cap, build).
    pub failures: AtomicU64,
    examples: Mutex<VecDeque<Mismatch>>,
}

/// One message the two versions routed differently.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The vhost of the exchange.
    pub vhost: String,
    /// The exchange.
    pub exchange: String,
    /// The message's routing key (cut to 256 bytes).
    pub routing_key: String,
    /// Where the active version sent it and the delay it decided (0.2), or why it refused it.
    pub active: Result<(Vec<String>, u64), String>,
    /// Where the candidate would have sent it and its delay, or why it refused it.
    pub candidate: Result<(Vec<String>, u64), String>,
}

impl Candidate {
    /// A trial of `version` (built from `component`), starting now.
    pub fn new(version: Arc<PluginVersion>, component: Arc<[u8]>) -> Arc<Self> {
        Arc::new(Self {
            version,
            component,
            started_ms: super::host::now_millis(),
            compared: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            examples: Mutex::new(VecDeque::new()),
        })
    }

    /// The recent mismatches, oldest first.
    pub fn examples(&self) -> Vec<Mismatch> {
        self.examples.lock().iter().cloned().collect()
    }

    fn record(&self, mismatch: Mismatch) {
        let mut examples = self.examples.lock();
        if examples.len() == SHADOW_EXAMPLES_MAX {
            examples.pop_front();
        }
        examples.push_back(mismatch);
    }
}

/// The candidate's instance for one exchange.
pub struct Shadow {
    /// The trial this instance belongs to.
    pub candidate: Arc<Candidate>,
    instance: Option<(Instance, Inputs)>,
    failures_in_a_row: u32,
}

impl Shadow {
    /// A shadow of `candidate` with an instance built (outside any router lock) for the
    /// exchange of `ctx` with `bindings`.
    pub fn build(
        candidate: &Arc<Candidate>,
        ctx: &Arc<super::host::ExchangeCtx>,
        arguments: &amq_protocol::types::FieldTable,
        bindings: &BTreeMap<u64, Binding>,
    ) -> Result<Self, BuildError> {
        let prepared = build(&candidate.version, ctx, arguments, bindings)?;
        let (instance, inputs) = prepared.into_parts();
        Ok(Self {
            candidate: candidate.clone(),
            instance: Some((instance, inputs)),
            failures_in_a_row: 0,
        })
    }

    /// Tells the candidate's instance about a new binding (a failure drops the instance; the
    /// next message rebuilds it with every binding).
    pub fn add_binding(&mut self, id: u64, binding: &Binding) {
        if let Some((instance, _)) = &mut self.instance
            && instance.add_binding(id, binding).is_err()
        {
            self.instance = None;
            self.candidate.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the candidate's instance a binding went.
    pub fn remove_binding(&mut self, id: u64) {
        if let Some((instance, _)) = &mut self.instance
            && instance.remove_binding(id).is_err()
        {
            self.instance = None;
            self.candidate.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routes `message` with the candidate and compares its destinations and delay with
    /// `active` (the active version's, or its refusal). `bindings` are the exchange's, by id.
    pub fn compare(
        &mut self,
        ctx: &Arc<super::host::ExchangeCtx>,
        arguments: &amq_protocol::types::FieldTable,
        bindings: &BTreeMap<u64, Binding>,
        message: &RoutingInput<'_>,
        cc: &[&str],
        active: Result<(&[Destination], u64), &str>,
    ) {
        if self.failures_in_a_row >= SHADOW_FAILURES_MAX {
            return;
        }
        if self.instance.is_none() {
            match build(&self.candidate.version, ctx, arguments, bindings) {
                Ok(prepared) => self.instance = Some(prepared.into_parts()),
                Err(_) => {
                    self.failed();
                    return;
                }
            }
        }
        let Some((instance, inputs)) = &mut self.instance else {
            return;
        };
        let answer = crate::store::dry_run(|| instance.route(message, cc, inputs));
        let candidate = match answer {
            Ok(Ok((ids, delay))) => {
                self.failures_in_a_row = 0;
                let mut to: Vec<Destination> = ids
                    .iter()
                    .filter_map(|id| bindings.get(id).map(|b| b.destination.clone()))
                    .collect();
                to.sort_unstable();
                to.dedup();
                Ok((to, delay))
            }
            Ok(Err(text)) => {
                self.failures_in_a_row = 0;
                Err(text)
            }
            Err(error) => {
                self.instance = None;
                self.failed();
                Err(format!("candidate failed: {error}"))
            }
        };
        let active = active.map(|(to, delay)| {
            let mut to = to.to_vec();
            to.sort_unstable();
            to.dedup();
            (to, delay)
        });
        let c = &self.candidate;
        c.compared.fetch_add(1, Ordering::Relaxed);
        let same = match (&active, &candidate) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if same {
            return;
        }
        c.mismatches.fetch_add(1, Ordering::Relaxed);
        let names = |(to, delay): (Vec<Destination>, u64)| -> (Vec<String>, u64) {
            let to = to
                .into_iter()
                .take(EXAMPLE_DESTINATIONS_MAX)
                .map(|d| match d {
                    Destination::Queue(q) => format!("queue {q}"),
                    Destination::Exchange(x) => format!("exchange {x}"),
                })
                .collect();
            (to, delay)
        };
        c.record(Mismatch {
            at_ms: super::host::now_millis(),
            vhost: ctx.vhost.to_string(),
            exchange: ctx.exchange.to_string(),
            routing_key: cut(message.routing_key, EXAMPLE_KEY_MAX),
            active: active.map(names).map_err(|e| cut(e, EXAMPLE_KEY_MAX)),
            candidate: candidate.map(names).map_err(|e| cut(&e, EXAMPLE_KEY_MAX)),
        });
    }

    fn failed(&mut self) {
        self.failures_in_a_row += 1;
        self.candidate.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
