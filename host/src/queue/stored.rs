//! What a durable queue tells its message store: recovered messages queued at start-up,
//! deliveries (marked, or removed for no-ack consumers) and removals. Every store call for a
//! message goes through here, so each stored message is removed exactly once.

use std::sync::Arc;

use tracing::warn;

use super::Queue;
use crate::message::QueuedMessage;
use crate::store::{Position, RecoveredMessage};

impl Queue {
    /// Queues the messages its store recovered at start-up, in order, with their
    /// redelivered flags. A FIFO queue keeps them paged out; a priority queue reads them in.
    pub fn recover(&self, messages: Vec<RecoveredMessage>) {
        let Some(store) = &self.store else {
            return;
        };
        let mut state = self.state.lock();
        state.expiring = true;
        for recovered in messages {
            if state.ready.push_recovered(recovered) {
                continue;
            }
            match store
                .read(recovered.position)
                .and_then(|stored| stored.into_message())
            {
                Ok(message) => {
                    let message = Arc::new(message);
                    let expires_at = self.expiry_of(&message);
                    state.ready.push_back({
                        let mut entry = QueuedMessage::new(0, message, recovered.position.to_u64());
                        entry.set_redelivered(recovered.redelivered);
                        entry.set_expires_at(expires_at);
                        entry
                    });
                }
                Err(error) => {
                    warn!(queue = %self.name(), %error, "a recovered message cannot be read; dropped");
                    let _ = store.ack(recovered.position);
                }
            }
        }
        self.finish(state);
    }

    /// Ready messages whose body is on disk only (paged out).
    pub fn paged_count(&self) -> usize {
        self.state.lock().ready.paged()
    }

    /// Records in the store that a stored message was handed to a consumer: gone for good
    /// when the consumer does not ack (`no_ack`), else marked delivered once, so that it comes
    /// back redelivered after a crash.
    pub(super) fn delivered(&self, position: u64, redelivered: bool, no_ack: bool) {
        let Some(store) = self.store.as_ref().filter(|_| position != 0) else {
            return;
        };
        let position = Position::from_u64(position);
        let result = if no_ack {
            store.ack(position)
        } else if !redelivered {
            store.mark_delivered(position)
        } else {
            return;
        };
        if let Err(error) = result {
            warn!(queue = %self.name(), %error, "cannot record a delivery in the store");
        }
    }

    /// Records in the store that a stored message left the queue (acked, expired, dropped,
    /// dead-lettered, purged).
    pub(super) fn forget(&self, position: u64) {
        let Some(store) = self.store.as_ref().filter(|_| position != 0) else {
            return;
        };
        if let Err(error) = store.ack(Position::from_u64(position)) {
            warn!(queue = %self.name(), %error, "cannot record a removal in the store");
        }
    }
}
