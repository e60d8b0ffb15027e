//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies delivered straight to the
//! requester's channel, without a reply queue.
//!
//! A channel that consumes from the pseudo-queue `amq.rabbitmq.reply-to` registers here under
//! an opaque suffix; its requests carry `reply_to = amq.rabbitmq.reply-to.<suffix>`. A reply
//! published to the default exchange with that routing key is handed to the registered
//! channel during routing. A reply for a channel that is gone is dropped silently, as in
//! RabbitMQ.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::exchange::Name;
use crate::message::Message;
use crate::protocol::AmqpError;

/// The pseudo-queue a client consumes from (with no-ack) to receive replies.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// The prefix of the routing keys that lead to a reply consumer.
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel's reply consumer, as routing sees it.
pub trait ReplyConsumer: Send + Sync {
    /// Delivers a reply (basic.deliver with the reply consumer's tag); false if it was
    /// dropped because the requester's connection is congested or closing.
    fn deliver_reply(&self, message: &Arc<Message>) -> bool;

    /// Whether a reply would be taken now: the requester's connection is open and not
    /// congested. A reply that would not is dropped (returned if mandatory) rather than
    /// buffered without bound for a requester that does not read.
    fn has_room(&self) -> bool;
}

/// The reply consumers of one vhost, by suffix.
#[derive(Default)]
pub(crate) struct ReplyRegistry {
    consumers: Mutex<HashMap<Box<str>, Weak<dyn ReplyConsumer>>>,
}

impl ReplyRegistry {
    /// Registers `consumer` under `suffix` unless a live consumer already holds it.
    pub(crate) fn register(&self, suffix: &str, consumer: Weak<dyn ReplyConsumer>) -> bool {
        use std::collections::hash_map::Entry;
        match self.consumers.lock().entry(suffix.into()) {
            Entry::Occupied(held) if held.get().strong_count() > 0 => false,
            Entry::Occupied(mut stale) => {
                stale.insert(consumer);
                true
            }
            Entry::Vacant(free) => {
                free.insert(consumer);
                true
            }
        }
    }

    pub(crate) fn unregister(&self, suffix: &str) {
        self.consumers.lock().remove(suffix);
    }

    /// The live consumer behind a full reply-to name (`amq.rabbitmq.reply-to.<suffix>`).
    pub(crate) fn lookup(&self, name: &str) -> Option<Arc<dyn ReplyConsumer>> {
        let suffix = name.strip_prefix(REPLY_TO_PREFIX)?;
        self.consumers.lock().get(suffix)?.upgrade()
    }
}

impl super::VHost {
    /// Registers a direct reply-to consumer; returns the reply-to name that leads to it.
    pub fn register_reply_consumer(
        &self,
        consumer: Weak<dyn ReplyConsumer>,
    ) -> Result<Name, AmqpError> {
        // Two 22-character CSPRNG suffixes (264 bits): the name is the only thing that lets a
        // client aim replies at a channel, so it must not be guessable from other names. A
        // collision is astronomically unlikely; it is still refused rather than overwriting.
        loop {
            let suffix = format!(
                "{}.{}",
                crate::names::random_suffix()?,
                crate::names::random_suffix()?
            );
            if self.replies.register(&suffix, consumer.clone()) {
                return Ok(Name::from(format!("{REPLY_TO_PREFIX}{suffix}")));
            }
        }
    }

    /// Forgets a reply consumer (cancelled, or its channel closed).
    pub fn unregister_reply_consumer(&self, name: &str) {
        if let Some(suffix) = name.strip_prefix(REPLY_TO_PREFIX) {
            self.replies.unregister(suffix);
        }
    }

    /// Whether `name` is `amq.rabbitmq.reply-to` or the reply-to name of a live consumer
    /// (queue.declare of such a name succeeds with 0 messages and 1 consumer).
    pub fn reply_queue_exists(&self, name: &str) -> bool {
        name == REPLY_TO_QUEUE || self.replies.lookup(name).is_some()
    }
}
