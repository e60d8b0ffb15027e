//! Limits on what clients may make the broker hold: connections, channels, consumers, queues,
//! exchanges, bindings, buffered content. Each has a name, a default and the reply code
//! RabbitMQ uses for it (docs/limits.md is the table); RabbitMQ's names are kept where it has
//! the limit.
//!
//! [`Limits`] are broker-wide; [`VhostLimits`] hold in one vhost (the top-level keys are the
//! default for every vhost, `[vhost_limits."NAME"]` overrides them; a connection takes its
//! vhost's per-connection limits when it opens); [`UserLimits`] hold for
//! one user across all its connections (`[user_limits."NAME"]`). The counters live with what
//! they count: the broker counts connections, a vhost its connections and topology, a user
//! entry its connections and channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::Deserialize;

use crate::protocol::AmqpError;

/// RabbitMQ's ceiling for `max_message_size` (512 MiB): `max_message_bytes` may not exceed it.
pub const MAX_MESSAGE_BYTES_CEILING: u64 = 512 << 20;

/// Broker-wide limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on the whole broker (RabbitMQ's `connection_max`); the next
    /// connection.open gets 530 NOT_ALLOWED.
    pub connection_max: u32,
    /// The limits of every vhost without its own `[vhost_limits]` entry.
    pub vhost: VhostLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connection_max: 65_536,
            vhost: VhostLimits::default(),
        }
    }
}

/// Limits of one vhost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhostLimits {
    /// Connections open to the vhost (RabbitMQ's `max-connections`); 530 at connection.open.
    pub max_connections: u32,
    /// Queues in the vhost (RabbitMQ's `max-queues`); 406 at queue.declare.
    pub max_queues: u32,
    /// Exchanges declared in the vhost, not counting the pre-declared ones; 406 at
    /// exchange.declare.
    pub max_exchanges: u32,
    /// Bindings in the vhost (queue and exchange bindings together); 406 at queue.bind and
    /// exchange.bind.
    pub max_bindings: u32,
    /// Consumers on one channel (RabbitMQ's `consumer_max_per_channel`); the next
    /// basic.consume gets 530 NOT_ALLOWED.
    pub consumer_max_per_channel: u32,
    /// Body bytes one transaction may buffer before tx.commit; the publish that crosses it
    /// closes the channel with 406 PRECONDITION_FAILED and the transaction is discarded.
    pub tx_max_bytes: u64,
    /// Bytes of message bodies one connection may hold while they are still arriving (all its
    /// channels together); the body frame that crosses it closes the connection with 506
    /// RESOURCE_ERROR.
    pub connection_content_max_bytes: u64,
    /// Ready messages a queue keeps in memory; beyond them it pages to disk (docs/overload.md).
    /// Fixed for a queue when it is created.
    pub queue_in_memory_messages: u32,
    /// Body bytes of ready messages the vhost's queues may hold (`max-queued-bytes`); at it
    /// the vhost's publishing connections are blocked until consumers bring it below
    /// (`vhost/admission.rs`). `u64::MAX`: no limit.
    pub max_queued_bytes: u64,
    /// Messages per second the vhost's publishers may send together (`max-publish-rate`);
    /// above it their connections stop reading for a while (state `flow`). 0: no limit.
    pub max_publish_rate: u64,
}

impl Default for VhostLimits {
    fn default() -> Self {
        Self {
            max_connections: u32::MAX,
            max_queues: 100_000,
            max_exchanges: 10_000,
            max_bindings: 1_000_000,
            consumer_max_per_channel: 65_536,
            tx_max_bytes: 256 << 20,
            connection_content_max_bytes: 256 << 20,
            queue_in_memory_messages: crate::queue::IN_MEMORY_MESSAGES as u32,
            max_queued_bytes: u64::MAX,
            max_publish_rate: 0,
        }
    }
}

impl VhostLimits {
    /// The refusal of a connection.open to `vhost` at its connection limit (530).
    pub fn connections_refused(&self, vhost: &str, user: &str) -> AmqpError {
        AmqpError::not_allowed(format!(
            "access to vhost '{vhost}' refused for user '{user}': connection limit ({}) is \
             reached",
            self.max_connections
        ))
    }

    /// Refuses a queue.declare creating a queue when `count` queues exist.
    pub fn check_queues(&self, vhost: &str, queue: &str, count: usize) -> Result<(), AmqpError> {
        if count >= self.max_queues as usize {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{queue}': queue limit in vhost '{vhost}' ({}) is reached",
                self.max_queues
            )));
        }
        Ok(())
    }

    /// Refuses an exchange.declare creating an exchange when `count` exist.
    pub fn check_exchanges(
        &self,
        vhost: &str,
        exchange: &str,
        count: usize,
    ) -> Result<(), AmqpError> {
        if count >= self.max_exchanges as usize {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare exchange '{exchange}': exchange limit in vhost '{vhost}' ({}) is \
                 reached",
                self.max_exchanges
            )));
        }
        Ok(())
    }

    /// Refuses a bind adding a binding when `count` exist.
    pub fn check_bindings(&self, vhost: &str, source: &str, count: usize) -> Result<(), AmqpError> {
        if count >= self.max_bindings as usize {
            return Err(AmqpError::precondition_failed(format!(
                "cannot bind to exchange '{source}': binding limit in vhost '{vhost}' ({}) is \
                 reached",
                self.max_bindings
            )));
        }
        Ok(())
    }
}

/// Per-user limits (RabbitMQ's user limits), from `[user_limits."NAME"]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    /// Connections the user may have open at once (`max-connections`); 530 at
    /// connection.open.
    pub max_connections: Option<u32>,
    /// Channels the user may have open at once over all its connections (`max-channels`);
    /// 530 at channel.open.
    pub max_channels: Option<u32>,
}

/// What one user has open, shared by its connections.
#[derive(Debug, Default)]
pub struct UserUsage {
    connections: AtomicU32,
    channels: AtomicU32,
    /// The user's limits now (the config file's with the runtime ones over them).
    limits: parking_lot::Mutex<UserLimits>,
}

impl UserUsage {
    /// The limits the next connection.open and channel.open are checked against.
    pub fn limits(&self) -> UserLimits {
        *self.limits.lock()
    }

    /// Changes the limits; what is open beyond a lowered limit stays.
    pub fn set_limits(&self, limits: UserLimits) {
        *self.limits.lock() = limits;
    }

    /// Takes a connection slot for `user`, or refuses it (530).
    pub fn open_connection(
        self: &Arc<Self>,
        user: &str,
        limits: &UserLimits,
    ) -> Result<Held, AmqpError> {
        let max = limits.max_connections.unwrap_or(u32::MAX);
        take(&self.connections, max).map_err(|()| {
            AmqpError::not_allowed(format!(
                "Connection refused for user '{user}': user connection limit ({max}) is reached"
            ))
        })?;
        Ok(Held {
            usage: self.clone(),
            channel: false,
        })
    }

    /// Takes a channel slot for `user`, or refuses it (530).
    pub fn open_channel(
        self: &Arc<Self>,
        user: &str,
        limits: &UserLimits,
    ) -> Result<Held, AmqpError> {
        let max = limits.max_channels.unwrap_or(u32::MAX);
        take(&self.channels, max).map_err(|()| {
            AmqpError::not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed \
                 user limit of ({max})"
            ))
        })?;
        Ok(Held {
            usage: self.clone(),
            channel: true,
        })
    }
}

/// Increments `counter` unless it is at `max`.
fn take(counter: &AtomicU32, max: u32) -> Result<(), ()> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .map(|_| ())
        .map_err(|_| ())
}

/// A connection or channel slot of a user, given back when dropped.
#[derive(Debug)]
pub struct Held {
    usage: Arc<UserUsage>,
    channel: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let counter = if self.channel {
            &self.usage.channels
        } else {
            &self.usage.connections
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot of a shared counter with a maximum (the broker's or a vhost's connections), given
/// back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Slot {
    /// Takes a slot of `counter` unless `max` are taken.
    pub fn take(counter: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        take(counter, max).ok().map(|()| Self(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Body bytes of unfinished messages one connection holds, against
/// [`Limits::connection_content_max_bytes`]. Shared by the connection's channels through
/// [`ContentBudget::reserve`]; what a [`Reservation`] holds comes back when it is dropped (the
/// message completed, or its channel closed).
#[derive(Debug)]
pub struct ContentBudget {
    held: AtomicU64,
    max: u64,
}

impl ContentBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicU64::new(0),
            max,
        })
    }

    /// An empty reservation, to grow as body frames arrive.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

/// Bytes of one unfinished body, accounted in a [`ContentBudget`].
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ContentBudget>,
    bytes: u64,
}

impl Reservation {
    /// Accounts `bytes` more, or refuses them (506) leaving the budget as it was.
    pub fn grow(&mut self, bytes: u64) -> Result<(), AmqpError> {
        let max = self.budget.max;
        self.budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= max)
            })
            .map_err(|held| {
                AmqpError::resource_error(format!(
                    "unfinished message bodies on this connection would hold {} bytes, more \
                     than connection_content_max_bytes ({max})",
                    held.saturating_add(bytes)
                ))
            })?;
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ReplyCode;

    #[test]
    fn user_slots_are_refused_at_the_limit_and_given_back_on_drop() {
        let usage = Arc::new(UserUsage::default());
        let limits = UserLimits {
            max_connections: Some(2),
            max_channels: Some(1),
        };
        let a = usage.open_connection("u", &limits).expect("first");
        let _b = usage.open_connection("u", &limits).expect("second");
        let refused = usage.open_connection("u", &limits).unwrap_err();
        assert_eq!(refused.code, ReplyCode::NotAllowed);
        assert!(
            refused.text.contains("user connection limit (2)"),
            "{}",
            refused.text
        );
        drop(a);
        usage
            .open_connection("u", &limits)
            .expect("a slot came back");
        let ch = usage.open_channel("u", &limits).expect("channel");
        assert!(usage.open_channel("u", &limits).is_err());
        drop(ch);
        assert!(usage.open_channel("u", &limits).is_ok());
    }

    #[test]
    fn the_content_budget_refuses_what_would_cross_it_and_gets_it_back_on_drop() {
        let budget = ContentBudget::new(100);
        let mut a = budget.reserve();
        a.grow(60).expect("fits");
        let mut b = budget.reserve();
        assert_eq!(b.grow(41).unwrap_err().code, ReplyCode::ResourceError);
        assert_eq!(budget.held(), 60);
        b.grow(40).expect("exactly the max fits");
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        budget.reserve().grow(100).expect("all given back");
    }
}
