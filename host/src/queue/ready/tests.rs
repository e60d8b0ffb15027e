//! The ready list in memory: order, priorities, requeue, expiry.

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
    QueuedMessage::new(
        seq,
        Arc::new(Message::new(
            Name::from(""),
            Name::from("q"),
            &properties,
            &[],
            Bytes::from(body.to_owned()),
        )),
        0,
    )
}

fn drain(ready: &mut Ready) -> Vec<u64> {
    std::iter::from_fn(|| ready.pop_front().map(|e| e.seq)).collect()
}

#[test]
fn fifo_keeps_publish_order_and_requeue_position() {
    let mut ready = Ready::new(None, None, Spill::new(None, "q"), 0, None);
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
    let mut ready = Ready::new(Some(5), None, Spill::new(None, "q"), 0, None);
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
    let mut ready = Ready::new(Some(3), None, Spill::new(None, "q"), 0, None);
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
    let mut ready = Ready::new(Some(1), None, Spill::new(None, "q"), 0, None);
    let mut push = |seq, priority, expires_at| {
        let mut e = entry(seq, priority, "x");
        e.set_expires_at(expires_at);
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
