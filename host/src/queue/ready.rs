//! The ready list of one queue: messages waiting for a consumer, in delivery order.
//!
//! A plain queue is one FIFO. A priority queue (`x-max-priority`) keeps one FIFO per priority
//! level and always serves the highest non-empty level first, as RabbitMQ's priority queues do:
//! a message without a priority counts as 0, one above the maximum counts as the maximum.
//! Within a level, order is publish order, and a requeued message goes back to its original
//! place (entries carry their publish sequence number).
//!
//! Everything goes through these methods so that the entries can later be backed by the
//! message store (bodies paged out) without touching the queue logic.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::message::QueuedMessage;

/// Ready messages of one queue.
pub(crate) struct Ready {
    levels: Levels,
    len: usize,
    bytes: usize,
}

enum Levels {
    Fifo(VecDeque<QueuedMessage>),
    /// Index = priority; served from the highest index down.
    Priority(Box<[VecDeque<QueuedMessage>]>),
}

impl Ready {
    /// An empty list; `max_priority` above 0 makes it a priority queue.
    pub(crate) fn new(max_priority: Option<u8>) -> Self {
        let levels = match max_priority {
            Some(max) if max > 0 => Levels::Priority(
                (0..=max as usize)
                    .map(|_| VecDeque::new())
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
            _ => Levels::Fifo(VecDeque::new()),
        };
        Self {
            levels,
            len: 0,
            bytes: 0,
        }
    }

    /// Number of ready messages.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total body bytes of the ready messages (for `x-max-length-bytes`).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn level_mut(&mut self, entry: &QueuedMessage) -> &mut VecDeque<QueuedMessage> {
        match &mut self.levels {
            Levels::Fifo(fifo) => fifo,
            Levels::Priority(levels) => {
                let max = levels.len() - 1;
                let priority = entry.message.properties.priority().unwrap_or(0) as usize;
                &mut levels[priority.min(max)]
            }
        }
    }

    fn added(&mut self, entry: &QueuedMessage) {
        self.len += 1;
        self.bytes += entry.message.size();
    }

    fn removed(&mut self, entry: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= entry.message.size();
    }

    /// Appends a newly published message behind the others of its priority.
    pub(crate) fn push_back(&mut self, entry: QueuedMessage) {
        self.added(&entry);
        self.level_mut(&entry).push_back(entry);
    }

    /// Puts back an entry just taken with [`Ready::pop_front`] (no consumer could take it).
    pub(crate) fn push_front(&mut self, entry: QueuedMessage) {
        self.added(&entry);
        self.level_mut(&entry).push_front(entry);
    }

    /// Puts a requeued entry back at its original position within its priority.
    pub(crate) fn insert_by_seq(&mut self, entry: QueuedMessage) {
        self.added(&entry);
        let level = self.level_mut(&entry);
        let at = level.partition_point(|m| m.seq < entry.seq);
        level.insert(at, entry);
    }

    /// Takes the next message to deliver: the oldest of the highest non-empty priority.
    pub(crate) fn pop_front(&mut self) -> Option<QueuedMessage> {
        let entry = match &mut self.levels {
            Levels::Fifo(fifo) => fifo.pop_front(),
            Levels::Priority(levels) => levels.iter_mut().rev().find_map(VecDeque::pop_front),
        }?;
        self.removed(&entry);
        Some(entry)
    }

    /// Drops every entry; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        match &mut self.levels {
            Levels::Fifo(fifo) => fifo.clear(),
            Levels::Priority(levels) => levels.iter_mut().for_each(VecDeque::clear),
        }
        let count = self.len;
        self.len = 0;
        self.bytes = 0;
        count
    }

    /// Removes the expired entries at the head of each priority level (RabbitMQ expires only
    /// from the head: a message behind a longer-lived one waits until it reaches the front).
    pub(crate) fn take_expired_heads(&mut self, now: Instant, mut out: impl FnMut(QueuedMessage)) {
        let mut removed = Vec::new();
        let mut take = |level: &mut VecDeque<QueuedMessage>| {
            while level
                .front()
                .is_some_and(|m| m.expires_at.is_some_and(|at| at <= now))
            {
                removed.extend(level.pop_front());
            }
        };
        match &mut self.levels {
            Levels::Fifo(fifo) => take(fifo),
            Levels::Priority(levels) => levels.iter_mut().rev().for_each(take),
        }
        for entry in removed {
            self.removed(&entry);
            out(entry);
        }
    }

    /// The earliest expiry among the heads of the priority levels.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        match &self.levels {
            Levels::Fifo(fifo) => fifo.front().and_then(|m| m.expires_at),
            Levels::Priority(levels) => levels
                .iter()
                .filter_map(|l| l.front().and_then(|m| m.expires_at))
                .min(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    use super::*;
    use crate::exchange::Name;
    use crate::message::Message;

    fn entry(seq: u64, priority: Option<u8>, body: &str) -> QueuedMessage {
        let mut properties = BasicProperties::default();
        if let Some(p) = priority {
            properties = properties.with_priority(p);
        }
        QueuedMessage {
            seq,
            message: Arc::new(Message {
                exchange: Name::from(""),
                routing_key: Name::from("q"),
                properties,
                raw_properties: Bytes::new(),
                body: Bytes::from(body.to_owned()),
            }),
            redelivered: false,
            expires_at: None,
        }
    }

    fn drain(ready: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| ready.pop_front().map(|e| e.seq)).collect()
    }

    #[test]
    fn fifo_keeps_publish_order_and_requeue_position() {
        let mut ready = Ready::new(None);
        for seq in 0..4 {
            ready.push_back(entry(seq, Some(9), "ab"));
        }
        assert_eq!((ready.len(), ready.bytes()), (4, 8));
        let first = ready.pop_front().expect("entry");
        let second = ready.pop_front().expect("entry");
        ready.insert_by_seq(second);
        ready.insert_by_seq(first);
        assert_eq!(drain(&mut ready), [0, 1, 2, 3]);
        assert_eq!((ready.len(), ready.bytes()), (0, 0));
    }

    #[test]
    fn higher_priorities_first_fifo_within_a_priority() {
        let mut ready = Ready::new(Some(5));
        let published = [
            (0, None),
            (1, Some(5)),
            (2, Some(2)),
            (3, Some(5)),
            (4, Some(200)), // above the maximum: counts as 5
            (5, Some(0)),
            (6, Some(2)),
        ];
        for (seq, priority) in published {
            ready.push_back(entry(seq, priority, "x"));
        }
        assert_eq!(drain(&mut ready), [1, 3, 4, 2, 6, 0, 5]);
    }

    #[test]
    fn requeue_returns_to_original_place_within_its_priority() {
        let mut ready = Ready::new(Some(3));
        for (seq, priority) in [(0, Some(3)), (1, Some(1)), (2, Some(3)), (3, Some(1))] {
            ready.push_back(entry(seq, priority, "x"));
        }
        let taken: Vec<_> = std::iter::from_fn(|| ready.pop_front()).take(3).collect();
        assert_eq!(taken.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 2, 1]);
        for e in taken.into_iter().rev() {
            ready.insert_by_seq(e);
        }
        assert_eq!(drain(&mut ready), [0, 2, 1, 3]);
    }

    #[test]
    fn only_expired_heads_are_taken() {
        let now = Instant::now();
        let past = now - std::time::Duration::from_millis(1);
        let future = now + std::time::Duration::from_secs(60);
        let mut ready = Ready::new(Some(1));
        let mut push = |seq, priority, expires_at| {
            let mut e = entry(seq, priority, "x");
            e.expires_at = expires_at;
            ready.push_back(e);
        };
        push(0, Some(1), Some(past));
        push(1, Some(1), Some(future));
        push(2, Some(1), Some(past)); // behind a live message: stays
        push(3, None, Some(past));
        push(4, None, None);
        let mut expired = Vec::new();
        ready.take_expired_heads(now, |e| expired.push(e.seq));
        assert_eq!(expired, [0, 3]);
        assert_eq!(ready.next_expiry(), Some(future));
        assert_eq!(drain(&mut ready), [1, 2, 4]);
    }
}
