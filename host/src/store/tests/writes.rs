//! Message store writes: round trips, reads before and after the flush, segment roll-over and
//! reclamation, deletion, misuse, and group commit seen from many threads and async waiters.

use std::fs;
use std::sync::Arc;

use amq_protocol::types::ShortString;

use super::*;
use crate::store::segment;

#[test]
fn append_ack_recover_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut positions = Vec::new();
    {
        let (store, queues) = open(dir.path(), StoreOptions::default());
        assert!(queues.is_empty());
        let q = store.open_queue("orders/eu").unwrap();
        for i in 0..10 {
            positions.push(append(&q, i, i * 10));
        }
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions grow");
        for &i in &[0, 4, 9] {
            q.ack(positions[i]).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.synced(), store.issued());
    }
    let (store, mut queues) = open(dir.path(), StoreOptions::default());
    let rq = queues.remove("orders/eu").expect("queue recovered");
    let expect: Vec<usize> = (0..10).filter(|i| ![0, 4, 9].contains(i)).collect();
    let got: Vec<Position> = rq.messages.iter().map(|m| m.position).collect();
    let want: Vec<Position> = expect.iter().map(|&i| positions[i]).collect();
    assert_eq!(got, want);
    for (m, &i) in rq.messages.iter().zip(&expect) {
        assert!(!m.redelivered);
        assert_eq!(m.body_len as usize, i * 10);
        check_read(&rq.store, m.position, i, i * 10);
    }
    // Appends continue after the recovered records.
    let next = append(&rq.store, 10, 5);
    assert!(next > positions[9]);
    store.flush().unwrap();
    check_read(&rq.store, next, 10, 5);
}

#[test]
fn index_entries_stay_small() {
    // What a queue keeps per paged-out persistent message: 10 million fit in 160 MB.
    assert_eq!(std::mem::size_of::<RecoveredMessage>(), 16);
    assert_eq!(std::mem::size_of::<Position>(), 8);
}

#[test]
fn stored_message_rebuilds_a_broker_message() {
    use amq_protocol::protocol::BasicProperties;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default());
    let q = store.open_queue("q").unwrap();
    let mut raw = Vec::new();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("text/plain"));
    let ctx = amq_protocol::protocol::basic::gen_properties(&props)(
        amq_protocol::frame::WriteContext::from(Vec::new()),
    )
    .unwrap();
    raw.extend_from_slice(&ctx.into_inner().0);
    let message = crate::message::Message::new(
        "ex".into(),
        "rk".into(),
        &props,
        &raw,
        bytes::Bytes::from_static(b"hello"),
    );
    let (pos, _) = q.append_message(&message).unwrap();
    store.flush().unwrap();
    let back = q.read(pos).unwrap().into_message().unwrap();
    assert_eq!(back.properties(), props);
    assert_eq!(back.raw_properties(), &raw[..]);
    assert!(back.persistent());
    assert_eq!(back.body(), b"hello");
}

#[test]
fn reads_come_from_the_buffer_before_the_flush_and_from_disk_after() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), small());
    let q = store.open_queue("q").unwrap();
    store.halt(); // nothing gets written: every read below is served from memory
    let positions: Vec<Position> = (0..20).map(|i| append(&q, i, 700)).collect();
    for (i, &p) in positions.iter().enumerate() {
        check_read(&q, p, i, 700);
    }
    drop(q);
    drop(store);

    let (store, _) = open(dir.path(), small());
    let q = store.open_queue("q2").unwrap();
    let positions: Vec<Position> = (0..20).map(|i| append(&q, i, 700)).collect();
    store.flush().unwrap();
    for (i, &p) in positions.iter().enumerate() {
        check_read(&q, p, i, 700);
    }
    // A large record needs a second read past the first 4 KiB.
    let big = append(&q, 99, 100_000);
    check_read(&q, big, 99, 100_000);
    store.flush().unwrap();
    check_read(&q, big, 99, 100_000);
}

#[test]
fn segments_roll_over_and_fully_acked_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), small());
    let q = store.open_queue("q").unwrap();
    // 1 KiB bodies: three per 4 KiB segment.
    let positions: Vec<Position> = (0..30).map(|i| append(&q, i, 1024)).collect();
    store.flush().unwrap();
    let segments: Vec<u32> = positions.iter().map(|p| p.segment()).collect();
    assert_eq!(segments.first(), Some(&1));
    assert!(segments.last().copied().unwrap() >= 10, "{segments:?}");
    let on_disk = segment::segment_ids(q.dir());
    assert_eq!(on_disk, q.segment_ids());

    // Ack all messages of the first half of the segments.
    let cut = segments[15];
    for (p, s) in positions.iter().zip(&segments) {
        if *s < cut {
            q.ack(*p).unwrap();
        }
    }
    store.flush().unwrap();
    let on_disk = segment::segment_ids(q.dir());
    assert!(on_disk.iter().all(|&s| s >= cut), "{on_disk:?}");
    for s in 1..cut {
        assert!(!segment::acks_path(q.dir(), s).exists());
    }
    assert_eq!(on_disk, q.segment_ids());

    // Acking everything keeps only the head segment.
    for (p, s) in positions.iter().zip(&segments) {
        if *s >= cut {
            q.ack(*p).unwrap();
        }
    }
    store.flush().unwrap();
    assert_eq!(
        segment::segment_ids(q.dir()),
        vec![*segments.last().unwrap()]
    );
    // The next append rolls past the full head, which is then reclaimed too.
    let p = append(&q, 100, 1024);
    store.flush().unwrap();
    assert_eq!(segment::segment_ids(q.dir()), vec![p.segment()]);
    drop(q);
    drop(store);
    let (_store, queues) = open(dir.path(), small());
    assert_eq!(queues["q"].messages.len(), 1);
    assert_eq!(queues["q"].messages[0].position, p);
}

#[test]
fn a_record_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), small());
    let q = store.open_queue("q").unwrap();
    let a = append(&q, 0, 10);
    let b = append(&q, 1, 10_000);
    let c = append(&q, 2, 10);
    assert_eq!(a.segment(), 1);
    assert_eq!(b.segment(), 2);
    assert_eq!(c.segment(), 3);
    store.flush().unwrap();
    check_read(&q, b, 1, 10_000);
}

#[test]
fn deleted_queues_vanish_and_names_can_be_reused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default());
    let q = store.open_queue("q").unwrap();
    let old = append(&q, 0, 10);
    store.flush().unwrap();
    append(&q, 1, 10); // buffered, dropped by the delete
    q.delete().unwrap();
    assert!(q.append("", "k", &[], b"x").is_err());
    assert!(q.read(old).is_err());
    let q2 = store.open_queue("q").unwrap();
    assert_eq!(append(&q2, 2, 10), old, "a fresh store");
    store.flush().unwrap();
    drop((q, q2));
    drop(store);
    let (_store, queues) = open(dir.path(), StoreOptions::default());
    assert_eq!(queues.len(), 1);
    assert_eq!(queues["q"].messages.len(), 1);
    check_read(&queues["q"].store, old, 2, 10);
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("queues"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("deleted"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn misuse_is_an_error_not_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), small());
    let q = store.open_queue("q").unwrap();
    let a = append(&q, 0, 10);
    assert!(q.ack(Position::new(9, 8)).is_err());
    assert!(q.ack(Position::new(1, 100_000)).is_err());
    assert!(q.read(Position::new(9, 8)).is_err());
    assert!(q.mark_delivered(Position::new(9, 8)).is_err());
    q.ack(a).unwrap();
    assert!(q.ack(a).is_err(), "more acks than messages in the segment");
    let long = "x".repeat(256);
    assert!(q.append(&long, "", &[], b"").is_err());
    assert!(
        MessageStore::open(
            dir.path(),
            StoreOptions {
                segment_max_bytes: 10,
                ..StoreOptions::default()
            }
        )
        .is_err()
    );
    store.flush().unwrap();
    // A position that is not a record start reads as corrupt, never panics.
    let b = append(&q, 1, 10);
    store.flush().unwrap();
    assert!(q.read(Position::new(b.segment(), b.offset() + 3)).is_err());
}

#[test]
fn buffered_bytes_count_what_is_not_written_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), small());
    assert_eq!(
        StoreOptions::from_config(&crate::Config::default()).segment_max_bytes,
        64 * 1024 * 1024
    );
    let q = store.open_queue("q").unwrap();
    for i in 0..10 {
        append(&q, i, 1000);
    }
    store.flush().unwrap();
    assert_eq!(store.stats().buffered_bytes, 0);
    store.halt();
    for i in 0..10 {
        append(&q, i, 1000); // rolls over segments: headers are not counted
    }
    let buffered = store.stats().buffered_bytes;
    assert!((10_000..11_000).contains(&buffered), "{buffered}");
    q.delete().unwrap();
    assert_eq!(store.stats().buffered_bytes, 0);
}

#[test]
fn tickets_are_synced_in_groups_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default());
    let store = Arc::new(store);
    let queues: Vec<QueueStore> = (0..4)
        .map(|i| store.open_queue(&format!("q{i}")).unwrap())
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let q = queues[t % 2].clone(); // two threads per queue
            let store = store.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..2000 {
                    let (_, ticket) = q.append("", "k", &[], &body(i, 1024)).unwrap();
                    assert!(ticket > last);
                    last = ticket;
                    if i % 500 == 499 {
                        store.wait_synced_blocking(ticket).unwrap();
                        assert!(store.synced() >= ticket);
                    }
                }
                last
            })
        })
        .collect();
    let max = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap();
    store.wait_synced_blocking(max).unwrap();
    let stats = store.stats();
    assert_eq!(stats.appended, 8000);
    assert!(
        stats.rounds < 8000,
        "group commit batches appends: {stats:?}"
    );
}

#[test]
fn async_waiters_see_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default());
    let q = store.open_queue("q").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rx = store.subscribe();
        let (_, ticket) = q.append("", "k", &[], b"hello").unwrap();
        q.wait_synced(ticket).await.unwrap();
        assert!(*rx.borrow_and_update() >= ticket);
        let (p2, t2) = q.append("", "k", &[], b"again").unwrap();
        rx.wait_for(|s| *s >= t2).await.unwrap();
        let t3 = q.ack(p2).unwrap();
        store.wait_all_synced(t3).await.unwrap();
        assert!(store.all_synced() >= t3);
    });
    store.close();
    assert!(q.append("", "k", &[], b"late").is_err());
    let (_, _) = (store.synced(), store.stats());
    rt.block_on(async {
        assert!(store.wait_synced(store.issued() + 1).await.is_err());
    });
}

#[test]
fn a_run_of_records_is_read_with_one_call_and_shares_names() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default());
    let q = store.open_queue("run").unwrap();
    let first = q.append("ex", "rk", &[], b"m0").unwrap().0;
    for i in 1..300 {
        q.append("ex", "rk", &[], format!("m{i}").as_bytes())
            .unwrap();
    }
    // Still in the write buffer (one at a time), or already written by the flusher.
    assert!(matches!(q.read_run(first, 10).unwrap().len(), 1 | 10));
    store.flush().unwrap();
    let run = q.read_run(first, 200).unwrap();
    assert_eq!(run.len(), 200);
    for (i, stored) in run.iter().enumerate() {
        assert_eq!(&stored.body[..], format!("m{i}").as_bytes());
    }
    assert!(Arc::ptr_eq(&run[0].routing_key, &run[199].routing_key));
    // The next call starts where the run's records end.
    let mut next = first;
    for stored in &run {
        next = Position::new(next.segment(), next.offset() + stored.record_len());
    }
    let rest = q.read_run(next, 1000).unwrap();
    assert_eq!(rest.len(), 100, "stops at the end of what was written");
    assert_eq!(&rest[0].body[..], b"m200");
}
