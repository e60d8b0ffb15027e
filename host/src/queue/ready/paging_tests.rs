//! The ready list with paged tails: spilling, reading back, order, expiry, recovery.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use bytes::Bytes;

use super::*;
use crate::exchange::Name;
use crate::message::Message;
use crate::queue::ready::Spill;
use crate::store::{MessageStore, StoreOptions};

fn message(body: &str, persistent: bool) -> Arc<Message> {
    let mut properties = BasicProperties::default();
    if persistent {
        properties = properties.with_delivery_mode(2);
    }
    let raw_properties = crate::protocol::encode_properties(&properties).expect("encodes");
    Arc::new(Message::new(
        Name::from(""),
        Name::from("q"),
        &properties,
        &raw_properties,
        Bytes::from(body.to_owned()),
    ))
}

/// A FIFO list paging after `in_memory` entries, and its queue store.
fn paged_ready(in_memory: usize) -> (tempfile::TempDir, MessageStore, QueueStore, Ready) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).expect("store");
    let queue = store.open_queue("q").expect("queue store");
    let ready = Ready::new(
        None,
        Some(queue.clone()),
        Spill::new(None, "q"),
        in_memory,
        None,
    );
    (dir, store, queue, ready)
}

/// Publishes like a queue does: persistent messages are appended to the store first.
fn publish(ready: &mut Ready, store: &QueueStore, body: &str, persistent: bool) {
    let message = message(body, persistent);
    let position = if persistent {
        store.append_message(&message).expect("append").0.to_u64()
    } else {
        0
    };
    ready.push_back(QueuedMessage::new(0, message, position));
}

fn body(entry: &QueuedMessage) -> String {
    String::from_utf8_lossy(entry.message.body()).into_owned()
}

#[test]
fn entries_beyond_the_window_are_paged_and_come_back_in_order() {
    let (_dir, _store, queue, mut ready) = paged_ready(4);
    for i in 0..20 {
        // Every fifth is transient: it waits in the tail with its message.
        publish(&mut ready, &queue, &format!("m{i:02}"), i % 5 != 4);
    }
    assert_eq!(ready.len(), 20);
    assert_eq!(ready.bytes(), 60);
    assert_eq!(ready.paged(), 12, "16 in the tail, 4 of them transient");
    let mut seen = Vec::new();
    let mut seqs = Vec::new();
    while let Some(entry) = ready.pop_front() {
        seqs.push(entry.seq);
        seen.push(body(&entry));
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(seen, expected);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs grow: {seqs:?}");
    assert_eq!((ready.len(), ready.bytes(), ready.paged()), (0, 0, 0));
}

#[test]
fn a_requeued_entry_goes_back_before_the_paged_tail() {
    let (_dir, _store, queue, mut ready) = paged_ready(2);
    for i in 0..6 {
        publish(&mut ready, &queue, &format!("m{i}"), true);
    }
    let first = ready.pop_front().expect("m0");
    let second = ready.pop_front().expect("m1");
    let third = ready.pop_front().expect("m2, paged in");
    assert_eq!(body(&third), "m2");
    ready.insert_by_seq(third);
    ready.insert_by_seq(first);
    ready.push_front(second);
    let order: Vec<String> = std::iter::from_fn(|| ready.pop_front())
        .map(|e| body(&e))
        .collect();
    assert_eq!(order, ["m1", "m0", "m2", "m3", "m4", "m5"]);
}

#[test]
fn clear_reports_every_stored_position_once() {
    let (_dir, _store, queue, mut ready) = paged_ready(3);
    for i in 0..10 {
        publish(&mut ready, &queue, &format!("m{i}"), i != 7);
    }
    let mut positions = Vec::new();
    assert_eq!(ready.clear(|p| positions.push(p)), 10);
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 9, "the nine persistent messages");
    assert_eq!((ready.len(), ready.bytes(), ready.paged()), (0, 0, 0));
}

#[test]
fn recovered_messages_are_read_back_with_their_flags() {
    let (_dir, _store, queue, mut ready) = paged_ready(8);
    let mut recovered = Vec::new();
    for i in 0..3 {
        let (position, _) = queue
            .append_message(&message(&format!("r{i}"), true))
            .expect("append");
        recovered.push(RecoveredMessage {
            position,
            body_len: 2,
            redelivered: i == 1,
        });
    }
    for r in recovered {
        assert!(ready.push_recovered(r));
    }
    let got: Vec<(String, bool)> = std::iter::from_fn(|| ready.pop_front())
        .map(|e| (body(&e), e.redelivered()))
        .collect();
    let expected = [("r0", false), ("r1", true), ("r2", false)];
    let expected: Vec<(String, bool)> = expected.iter().map(|(b, r)| (b.to_string(), *r)).collect();
    assert_eq!(got, expected);
}

/// A list of a queue that is not durable, paging into an unsynced store.
fn spilling_ready(
    max_priority: Option<u8>,
    in_memory: usize,
) -> (tempfile::TempDir, Arc<MessageStore>, Ready) {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions {
        sync: false,
        ..StoreOptions::default()
    };
    let (store, _) = MessageStore::open(dir.path(), options).expect("store");
    let store = Arc::new(store);
    let spill = Spill::new(Some(store.clone()), "q");
    let ready = Ready::new(max_priority, None, spill, in_memory, None);
    (dir, store, ready)
}

fn transient(body: &str, priority: Option<u8>) -> QueuedMessage {
    let mut properties = BasicProperties::default();
    if let Some(p) = priority {
        properties = properties.with_priority(p);
    }
    let raw_properties = crate::protocol::encode_properties(&properties).expect("encodes");
    QueuedMessage::new(
        0,
        Arc::new(Message::new(
            Name::from(""),
            Name::from("q"),
            &properties,
            &raw_properties,
            Bytes::from(body.to_owned()),
        )),
        0,
    )
}

#[test]
fn transient_messages_page_out_as_one_run_and_come_back_in_order() {
    let (_dir, _store, mut ready) = spilling_ready(None, 4);
    for i in 0..10_000 {
        ready.push_back(transient(&format!("m{i:05}"), None));
    }
    assert_eq!(ready.len(), 10_000);
    assert_eq!(ready.paged(), 9_996);
    assert_eq!(
        ready.levels[0].tail.runs.len(),
        1,
        "consecutive records: one run"
    );
    assert!(
        ready.memory() < 4 * (ENTRY_OVERHEAD + 64) + 64,
        "memory {} for 9,996 paged messages",
        ready.memory()
    );
    let mut seqs = Vec::new();
    for i in 0..10_000 {
        let entry = ready.pop_front().expect("entry");
        assert_eq!(body(&entry), format!("m{i:05}"));
        assert_eq!(
            entry.position, 0,
            "a transient message has no store position"
        );
        seqs.push(entry.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(ready.pop_front().is_none());
    assert_eq!((ready.len(), ready.bytes(), ready.paged()), (0, 0, 0));
    assert_eq!(ready.memory(), 0);
}

#[test]
fn priority_levels_page_and_keep_their_order() {
    let (_dir, _store, mut ready) = spilling_ready(Some(3), 2);
    for i in 0..40u32 {
        let priority = (i % 4) as u8;
        ready.push_back(transient(&format!("{priority}-{i:02}"), Some(priority)));
    }
    assert_eq!(ready.paged(), 38);
    let got: Vec<String> = std::iter::from_fn(|| ready.pop_front())
        .map(|e| body(&e))
        .collect();
    let mut expected: Vec<(u8, u32)> = (0..40u32).map(|i| ((i % 4) as u8, i)).collect();
    expected.sort_by_key(|&(p, i)| (std::cmp::Reverse(p), i));
    let expected: Vec<String> = expected
        .into_iter()
        .map(|(p, i)| format!("{p}-{i:02}"))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn paged_entries_keep_their_expiry() {
    let (_dir, _store, mut ready) = spilling_ready(None, 1);
    let now = Instant::now();
    let soon = now + std::time::Duration::from_millis(5);
    let later = now + std::time::Duration::from_secs(60);
    for (i, at) in [Some(later), Some(soon), Some(soon), None]
        .into_iter()
        .enumerate()
    {
        let mut entry = transient(&format!("m{i}"), None);
        entry.set_expires_at(at);
        ready.push_back(entry);
    }
    assert_eq!(ready.paged(), 3);
    let first = ready.pop_front().expect("m0");
    assert_eq!(first.expires_at(), Some(later));
    // The head is empty now: the tail's first expiry shows.
    let next = ready.next_expiry().expect("an expiry");
    assert!(next.duration_since(soon) < std::time::Duration::from_millis(2));
    let mut expired = Vec::new();
    ready.take_expired_heads(soon + std::time::Duration::from_millis(10), |e| {
        expired.push(body(&e))
    });
    assert_eq!(expired, ["m1", "m2"]);
    let last = ready.pop_front().expect("m3");
    assert_eq!((body(&last), last.expires_at()), ("m3".to_owned(), None));
}

#[test]
fn purge_discards_the_paging_store() {
    let (dir, store, mut ready) = spilling_ready(None, 2);
    for i in 0..100 {
        ready.push_back(transient(&format!("m{i}"), None));
    }
    let live = || {
        std::fs::read_dir(dir.path().join("queues"))
            .expect("queues dir")
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().contains(".deleted"))
            .count()
    };
    assert_eq!(live(), 1, "the queue's paging store");
    assert_eq!(ready.clear(|_| {}), 100);
    assert_eq!(live(), 0, "purged with its messages");
    for i in 0..10 {
        ready.push_back(transient(&format!("after{i}"), None));
    }
    assert_eq!(live(), 1, "a fresh one for what comes next");
    assert_eq!(body(&ready.pop_front().expect("after0")), "after0");
    drop(ready);
    assert_eq!(live(), 0, "dropped with the queue");
    store.flush().expect("flush");
}
