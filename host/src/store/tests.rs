//! Store tests: round trips, reclamation, damaged tails, the definitions log, and a model-based
//! property test of random appends, acks, delivery marks and crashes.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use proptest::prelude::*;

use super::definitions::{decode_for_test, encode_for_test};
use super::segment;
use super::*;

fn small() -> StoreOptions {
    StoreOptions {
        segment_max_bytes: 4096,
    }
}

fn open(dir: &Path, options: StoreOptions) -> (MessageStore, HashMap<String, RecoveredQueue>) {
    let (store, queues) = MessageStore::open(dir, options).expect("store opens");
    let queues = queues.into_iter().map(|q| (q.name.clone(), q)).collect();
    (store, queues)
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn append(q: &QueueStore, i: usize, len: usize) -> Position {
    let props = [0x10, 0x00, 2]; // delivery-mode 2, as raw property bytes
    q.append("amq.direct", &format!("key.{i}"), &props, &body(i, len))
        .expect("append")
        .0
}

fn check_read(q: &QueueStore, pos: Position, i: usize, len: usize) {
    let m = q.read(pos).expect("read");
    assert_eq!(&*m.exchange, "amq.direct");
    assert_eq!(&*m.routing_key, format!("key.{i}"));
    assert_eq!(&m.raw_properties[..], &[0x10, 0x00, 2]);
    assert_eq!(&m.body[..], &body(i, len)[..]);
}

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
    let message = crate::message::Message {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        properties: props.clone(),
        raw_properties: bytes::Bytes::from(raw.clone()),
        body: bytes::Bytes::from_static(b"hello"),
    };
    let (pos, _) = q.append_message(&message).unwrap();
    store.flush().unwrap();
    let back = q.read(pos).unwrap().into_message().unwrap();
    assert_eq!(back.properties, props);
    assert_eq!(&back.raw_properties[..], &raw[..]);
    assert!(back.persistent());
    assert_eq!(&back.body[..], b"hello");
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
fn delivered_unacked_messages_come_back_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let positions: Vec<Position>;
    {
        let (store, _) = open(dir.path(), StoreOptions::default());
        let q = store.open_queue("q").unwrap();
        positions = (0..6).map(|i| append(&q, i, 16)).collect();
        q.mark_delivered(positions[1]).unwrap();
        q.mark_delivered(positions[2]).unwrap();
        q.mark_delivered(positions[2]).unwrap(); // twice is harmless
        q.mark_delivered(positions[3]).unwrap();
        q.ack(positions[3]).unwrap(); // delivered and acked: gone
        store.flush().unwrap();
    }
    let (_store, mut queues) = open(dir.path(), StoreOptions::default());
    let rq = queues.remove("q").unwrap();
    let got: Vec<(Position, bool)> = rq
        .messages
        .iter()
        .map(|m| (m.position, m.redelivered))
        .collect();
    assert_eq!(
        got,
        vec![
            (positions[0], false),
            (positions[1], true),
            (positions[2], true),
            (positions[4], false),
            (positions[5], false),
        ]
    );
}

#[test]
fn acked_messages_never_come_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut live: Vec<(Position, usize)> = Vec::new();
    let mut next = 0;
    for round in 0..5 {
        let (store, mut queues) = open(dir.path(), small());
        let q = match queues.remove("q") {
            Some(rq) => {
                let got: Vec<Position> = rq.messages.iter().map(|m| m.position).collect();
                let want: Vec<Position> = live.iter().map(|l| l.0).collect();
                assert_eq!(got, want, "round {round}");
                rq.store
            }
            None => store.open_queue("q").unwrap(),
        };
        for _ in 0..30 {
            live.push((append(&q, next, 300), next));
            next += 1;
        }
        // Ack every other one, oldest first.
        let mut kept = Vec::new();
        for (k, (pos, i)) in live.drain(..).enumerate() {
            if k % 2 == 0 {
                q.ack(pos).unwrap();
            } else {
                kept.push((pos, i));
            }
        }
        live = kept;
        for &(pos, i) in &live {
            check_read(&q, pos, i, 300);
        }
        store.flush().unwrap();
    }
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

fn corrupt_at(path: &Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0x5a;
    fs::write(path, data).unwrap();
}

#[test]
fn damaged_tail_is_cut_and_the_prefix_kept() {
    for damage in ["flip", "truncate", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let positions: Vec<Position>;
        let qdir: PathBuf;
        {
            let (store, _) = open(dir.path(), StoreOptions::default());
            let q = store.open_queue("q").unwrap();
            positions = (0..5).map(|i| append(&q, i, 100)).collect();
            q.mark_delivered(positions[4]).unwrap();
            store.flush().unwrap();
            qdir = q.dir().to_owned();
        }
        let path = segment::msgs_path(&qdir, 1);
        let last = u64::from(positions[4].offset());
        match damage {
            "flip" => corrupt_at(&path, last + 20),
            "truncate" => {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(last + 30).unwrap();
            }
            _ => {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(last).unwrap();
                f.set_len(last + 200).unwrap(); // a zero-filled tail
            }
        }
        let (store, mut queues) = open(dir.path(), StoreOptions::default());
        let rq = queues.remove("q").unwrap();
        let got: Vec<Position> = rq.messages.iter().map(|m| m.position).collect();
        assert_eq!(got, positions[..4], "{damage}");
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            last,
            "{damage}: tail cut"
        );
        // The stale delivery mark of the lost record must not stick to the next one.
        let again = append(&rq.store, 42, 100);
        assert_eq!(again, positions[4], "{damage}: appends resume at the cut");
        store.flush().unwrap();
        drop(rq);
        drop(store);
        let (_store, queues) = open(dir.path(), StoreOptions::default());
        let m = queues["q"].messages.last().unwrap();
        assert_eq!(m.position, positions[4]);
        assert!(!m.redelivered, "{damage}");
        check_read(&queues["q"].store, m.position, 42, 100);
    }
}

#[test]
fn damage_in_an_older_segment_keeps_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let positions: Vec<Position>;
    let qdir: PathBuf;
    {
        let (store, _) = open(dir.path(), small());
        let q = store.open_queue("q").unwrap();
        positions = (0..9).map(|i| append(&q, i, 1024)).collect();
        store.flush().unwrap();
        qdir = q.dir().to_owned();
    }
    // Damage the second record of segment 1.
    assert_eq!(positions[1].segment(), 1);
    corrupt_at(
        &segment::msgs_path(&qdir, 1),
        u64::from(positions[1].offset()) + 40,
    );
    let (_store, queues) = open(dir.path(), small());
    let got: Vec<Position> = queues["q"].messages.iter().map(|m| m.position).collect();
    let want: Vec<Position> = positions
        .iter()
        .copied()
        .filter(|p| p.segment() != 1 || p.offset() < positions[1].offset())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn torn_offsets_files_and_headers_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let positions: Vec<Position>;
    let qdir: PathBuf;
    {
        let (store, _) = open(dir.path(), small());
        let q = store.open_queue("q").unwrap();
        positions = (0..6).map(|i| append(&q, i, 1024)).collect();
        q.ack(positions[0]).unwrap();
        store.flush().unwrap();
        qdir = q.dir().to_owned();
    }
    // A torn ack entry (2 of 8 bytes), a damaged entry that would ack positions[2], and a
    // next segment whose header was cut short.
    let acks = segment::acks_path(&qdir, 1);
    let mut data = fs::read(&acks).unwrap();
    assert_eq!(data.len(), segment::OFFSET_ENTRY_LEN);
    assert_eq!(positions[2].segment(), 1);
    let mut damaged = segment::offset_entry(positions[2].offset());
    damaged[6] ^= 1;
    data.extend_from_slice(&damaged);
    data.extend_from_slice(&[7, 0]);
    fs::write(&acks, data).unwrap();
    let last = positions.last().unwrap().segment();
    fs::write(segment::msgs_path(&qdir, last + 1), b"BSE").unwrap();
    let (store, queues) = open(dir.path(), small());
    let got: Vec<Position> = queues["q"].messages.iter().map(|m| m.position).collect();
    assert_eq!(got, positions[1..]);
    assert_eq!(fs::metadata(&acks).unwrap().len(), 16, "torn entry cut");
    let p = append(&queues["q"].store, 7, 10);
    assert_eq!(p, Position::new(last + 1, 8));
    store.flush().unwrap();
}

#[test]
fn an_unknown_segment_header_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let qdir: PathBuf;
    {
        let (store, _) = open(dir.path(), StoreOptions::default());
        let q = store.open_queue("q").unwrap();
        append(&q, 0, 10);
        store.flush().unwrap();
        qdir = q.dir().to_owned();
    }
    corrupt_at(&segment::msgs_path(&qdir, 1), 0);
    let (store, queues) = open(dir.path(), StoreOptions::default());
    assert!(queues["q"].messages.is_empty());
    assert!(qdir.join("msgs.0000000001.corrupt").exists());
    let p = append(&queues["q"].store, 1, 10);
    assert_eq!(p.segment(), 2);
    store.flush().unwrap();
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
fn directories_without_a_name_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("queues").join(hex_name("ghost"));
    fs::create_dir_all(&junk).unwrap();
    fs::write(junk.join("msgs.0000000001"), segment::SEGMENT_HEADER).unwrap();
    let (store, queues) = open(dir.path(), StoreOptions::default());
    assert!(queues.is_empty());
    let q = store.open_queue("ghost").unwrap();
    append(&q, 0, 1);
    store.flush().unwrap();
    assert!(junk.join("name").exists());
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
                segment_max_bytes: 10
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

// ---------------------------------------------------------------- definitions log

fn rich_table() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    t.insert("x-bool".into(), AMQPValue::Boolean(true));
    t.insert("x-i8".into(), AMQPValue::ShortShortInt(-3));
    t.insert("x-u8".into(), AMQPValue::ShortShortUInt(200));
    t.insert("x-i16".into(), AMQPValue::ShortInt(-300));
    t.insert("x-u16".into(), AMQPValue::ShortUInt(60_000));
    t.insert("x-i64".into(), AMQPValue::LongLongInt(-1 << 40));
    t.insert("x-f32".into(), AMQPValue::Float(1.5));
    t.insert("x-f64".into(), AMQPValue::Double(-2.25));
    t.insert("x-ts".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert(
        "x-str".into(),
        AMQPValue::LongString(LongString::from("plugin arg ✓")),
    );
    t.insert("x-void".into(), AMQPValue::Void);
    let mut inner = FieldTable::default();
    inner.insert("nested".into(), AMQPValue::LongString("yes".into()));
    t.insert("x-table".into(), AMQPValue::FieldTable(inner));
    t.insert(
        "x-array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("two".into()),
        ])),
    );
    t
}

fn exchange(name: &str) -> Definition {
    Definition::DeclareExchange(ExchangeDefinition {
        name: name.into(),
        kind: "x-wasm-geo".into(),
        durable: true,
        auto_delete: false,
        internal: true,
        arguments: rich_table(),
    })
}

fn queue(name: &str) -> Definition {
    Definition::DeclareQueue(QueueDefinition {
        name: name.into(),
        durable: true,
        auto_delete: true,
        exclusive: false,
        arguments: rich_table(),
    })
}

fn binding(source: &str, kind: DestinationKind, dest: &str, key: &str) -> BindingDefinition {
    let mut arguments = FieldTable::default();
    arguments.insert("x-match".into(), AMQPValue::LongString("all".into()));
    BindingDefinition {
        source: source.into(),
        destination_kind: kind,
        destination: dest.into(),
        routing_key: key.into(),
        arguments,
    }
}

fn all_kinds() -> Vec<Definition> {
    vec![
        exchange("geo"),
        exchange("fan"),
        queue("orders"),
        Definition::Bind(binding("geo", DestinationKind::Queue, "orders", "eu.#")),
        Definition::Bind(binding("geo", DestinationKind::Exchange, "fan", "")),
        Definition::Unbind(binding("geo", DestinationKind::Exchange, "fan", "")),
        Definition::DeleteQueue {
            name: "orders".into(),
        },
        Definition::DeleteExchange { name: "fan".into() },
    ]
}

#[test]
fn definitions_encode_and_decode_every_kind_exactly() {
    for def in all_kinds() {
        let bytes = encode_for_test(&def);
        assert_eq!(decode_for_test(&bytes), Ok(def.clone()));
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(decode_for_test(&bytes[..cut]).is_err());
        }
    }
    // NaN survives too (a JSON encoding would not).
    let mut t = FieldTable::default();
    t.insert("x-nan".into(), AMQPValue::Double(f64::NAN));
    let def = Definition::DeclareQueue(QueueDefinition {
        name: "n".into(),
        durable: true,
        auto_delete: false,
        exclusive: false,
        arguments: t,
    });
    let Ok(Definition::DeclareQueue(q)) = decode_for_test(&encode_for_test(&def)) else {
        panic!("decodes");
    };
    let Some(AMQPValue::Double(v)) = q.arguments.inner().get("x-nan") else {
        panic!("value kept");
    };
    assert!(v.is_nan());
}

#[test]
fn definitions_replay_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert!(replay.is_empty());
        for def in all_kinds() {
            log.append(&def).unwrap();
        }
        log.append_all(&[queue("a"), queue("b")]).unwrap();
    }
    let (log, replay) = DefinitionsLog::open(dir.path()).unwrap();
    let mut want = all_kinds();
    want.extend([queue("a"), queue("b")]);
    assert_eq!(replay, want);
    assert_eq!(log.records(), 10);
    // The live view: geo exchange, queues a and b, no bindings (orders and fan are gone).
    let names: Vec<String> = log
        .snapshot()
        .iter()
        .map(|d| match d {
            Definition::DeclareExchange(e) => format!("e:{}", e.name),
            Definition::DeclareQueue(q) => format!("q:{}", q.name),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, vec!["e:geo", "q:a", "q:b"]);
}

#[test]
fn definitions_damaged_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path;
    let full;
    {
        let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
        log.append(&exchange("a")).unwrap();
        let keep = fs::metadata(log.path()).unwrap().len();
        log.append(&exchange("b")).unwrap();
        path = log.path().to_owned();
        full = (keep, fs::metadata(&path).unwrap().len());
    }
    let (keep, len) = full;
    for cut in [keep + 3, len - 1] {
        let data = fs::read(&path).unwrap();
        let backup = data.clone();
        fs::write(&path, &data[..cut as usize]).unwrap();
        let (mut log, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(replay, vec![exchange("a")]);
        assert_eq!(fs::metadata(&path).unwrap().len(), keep);
        log.append(&exchange("c")).unwrap();
        drop(log);
        let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(replay, vec![exchange("a"), exchange("c")]);
        fs::write(&path, backup).unwrap();
    }
    // A flipped byte in the last record.
    let mut data = fs::read(&path).unwrap();
    let last = data.len() - 5;
    data[last] ^= 1;
    fs::write(&path, data).unwrap();
    let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
    assert_eq!(replay, vec![exchange("a")]);
    // Not a log at all: refused, not overwritten.
    fs::write(&path, b"something else entirely").unwrap();
    assert!(DefinitionsLog::open(dir.path()).is_err());
}

#[test]
fn definitions_compact_to_the_live_objects() {
    let dir = tempfile::tempdir().unwrap();
    let options = DefinitionsOptions {
        compact_min_records: 20,
        compact_ratio: 4,
    };
    {
        let (mut log, _) = DefinitionsLog::open_with(dir.path(), options.clone()).unwrap();
        log.append(&exchange("x")).unwrap();
        log.append(&queue("keep")).unwrap();
        log.append(&Definition::Bind(binding(
            "x",
            DestinationKind::Queue,
            "keep",
            "k",
        )))
        .unwrap();
        for i in 0..40 {
            let name = format!("tmp{i}");
            log.append(&queue(&name)).unwrap();
            log.append(&Definition::Bind(binding(
                "x",
                DestinationKind::Queue,
                &name,
                "k",
            )))
            .unwrap();
            log.append(&Definition::DeleteQueue { name }).unwrap();
        }
        assert!(log.records() < 30, "compacted: {} records", log.records());
    }
    let live = vec![
        exchange("x"),
        queue("keep"),
        Definition::Bind(binding("x", DestinationKind::Queue, "keep", "k")),
    ];
    let (mut log, replay) = DefinitionsLog::open_with(dir.path(), options.clone()).unwrap();
    assert_eq!(log.snapshot(), live);
    assert_eq!(&replay[..3], &live[..], "the snapshot comes first");
    log.compact().unwrap();
    drop(log);
    let (log, replay) = DefinitionsLog::open_with(dir.path(), options).unwrap();
    assert_eq!(replay, live);
    assert_eq!(log.records(), 3);
    assert!(!dir.path().join("definitions.log.tmp").exists());
}

#[test]
fn deleting_an_exchange_drops_its_bindings_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
    for def in [
        exchange("a"),
        exchange("b"),
        queue("q"),
        Definition::Bind(binding("a", DestinationKind::Exchange, "b", "1")),
        Definition::Bind(binding("b", DestinationKind::Queue, "q", "2")),
        Definition::Bind(binding("a", DestinationKind::Queue, "q", "3")),
        Definition::Bind(binding("a", DestinationKind::Queue, "q", "3")), // duplicate
        Definition::DeleteExchange { name: "b".into() },
    ] {
        log.append(&def).unwrap();
    }
    assert_eq!(
        log.snapshot(),
        vec![
            exchange("a"),
            queue("q"),
            Definition::Bind(binding("a", DestinationKind::Queue, "q", "3")),
        ]
    );
}

// ---------------------------------------------------------------- model-based crash test

#[derive(Debug, Clone)]
enum Op {
    Append { queue: usize, len: usize },
    Ack { queue: usize, pick: usize },
    Deliver { queue: usize, pick: usize },
    Flush,
    Crash { write_unsynced: bool, seed: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..1500usize).prop_map(|(queue, len)| Op::Append { queue, len }),
        3 => (0..2usize, any::<usize>()).prop_map(|(queue, pick)| Op::Ack { queue, pick }),
        2 => (0..2usize, any::<usize>()).prop_map(|(queue, pick)| Op::Deliver { queue, pick }),
        1 => Just(Op::Flush),
        1 => (any::<bool>(), any::<u64>())
            .prop_map(|(write_unsynced, seed)| Op::Crash { write_unsynced, seed }),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    pos: Position,
    id: usize,
    len: usize,
    appended: Option<Ticket>,
    acked: Option<Ticket>,
    delivered: Option<Ticket>,
    redelivered: bool,
}

/// Simulates losing what was not synced: every store file is cut at a random point at or past
/// its synced length (possibly mid-record), sometimes with a damaged byte in the lost part,
/// and files never synced may vanish.
fn crash_files(dir: &Path, synced: &HashMap<PathBuf, u64>, rng: &mut fastrand::Rng) {
    let queues = dir.join("queues");
    for qdir in fs::read_dir(&queues).unwrap().filter_map(|e| e.ok()) {
        for file in fs::read_dir(qdir.path()).unwrap().filter_map(|e| e.ok()) {
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("msgs.")
                || name.starts_with("acks.")
                || name.starts_with("dlvr."))
            {
                continue;
            }
            let len = fs::metadata(&path).unwrap().len();
            let floor = synced.get(&path).copied().unwrap_or(0).min(len);
            if floor == 0 && rng.u8(..4) == 0 {
                fs::remove_file(&path).unwrap();
                continue;
            }
            let cut = rng.u64(floor..=len);
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            if cut > floor && rng.bool() {
                corrupt_at(&path, rng.u64(floor..cut));
            }
        }
    }
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let names = ["alpha", "beta"];
    let (mut store, _) = open(dir.path(), small());
    let mut stores: Vec<QueueStore> = names.iter().map(|n| store.open_queue(n).unwrap()).collect();
    let mut model: Vec<Vec<Entry>> = vec![Vec::new(), Vec::new()];
    let mut next_id = 0usize;
    for op in ops {
        match op {
            Op::Append { queue, len } => {
                let id = next_id;
                next_id += 1;
                let (pos, ticket) = stores[queue]
                    .append("", &format!("key.{id}"), &[0x10, 0, 2], &body(id, len))
                    .unwrap();
                model[queue].push(Entry {
                    pos,
                    id,
                    len,
                    appended: Some(ticket),
                    acked: None,
                    delivered: None,
                    redelivered: false,
                });
            }
            Op::Ack { queue, pick } | Op::Deliver { queue, pick } => {
                let live: Vec<usize> = (0..model[queue].len())
                    .filter(|&i| model[queue][i].acked.is_none())
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let e = &mut model[queue][live[pick % live.len()]];
                let read = stores[queue].read(e.pos).unwrap();
                prop_assert_eq!(&read.body[..], &body(e.id, e.len)[..]);
                if matches!(op, Op::Ack { .. }) {
                    e.acked = Some(stores[queue].ack(e.pos).unwrap());
                } else {
                    e.delivered = Some(stores[queue].mark_delivered(e.pos).unwrap());
                }
            }
            Op::Flush => store.flush().unwrap(),
            Op::Crash {
                write_unsynced,
                seed,
            } => {
                store.halt();
                if write_unsynced {
                    store.write_unsynced();
                }
                let synced_ticket = store.synced();
                let all_synced = store.all_synced();
                prop_assert!(all_synced <= synced_ticket);
                let lengths: HashMap<PathBuf, u64> = store.file_lengths().into_iter().collect();
                drop(stores);
                drop(store);
                crash_files(dir.path(), &lengths, &mut fastrand::Rng::with_seed(seed));

                let (reopened, mut recovered) = open(dir.path(), small());
                store = reopened;
                stores = Vec::new();
                for (q, name) in names.iter().enumerate() {
                    let rq = recovered.remove(*name).expect("queue survives");
                    let mut by_pos: HashMap<Position, &Entry> =
                        model[q].iter().map(|e| (e.pos, e)).collect();
                    let mut kept = Vec::new();
                    for m in &rq.messages {
                        let Some(e) = by_pos.remove(&m.position) else {
                            return Err(TestCaseError::fail(format!(
                                "{name}: recovered {:?}, never appended",
                                m.position
                            )));
                        };
                        let synced = |t: Option<Ticket>| t.is_some_and(|t| t <= all_synced);
                        prop_assert!(!synced(e.acked), "{}: acked {:?} came back", name, e.pos);
                        if synced(e.delivered) || e.redelivered {
                            prop_assert!(
                                m.redelivered,
                                "{}: delivered {:?} lost its mark",
                                name,
                                e.pos
                            );
                        }
                        if m.redelivered {
                            prop_assert!(e.delivered.is_some() || e.redelivered);
                        }
                        let read = rq.store.read(m.position).unwrap();
                        prop_assert_eq!(&read.body[..], &body(e.id, e.len)[..]);
                        prop_assert_eq!(m.body_len as usize, e.len);
                        kept.push(Entry {
                            appended: None,
                            acked: None,
                            delivered: None,
                            redelivered: m.redelivered,
                            ..e.clone()
                        });
                    }
                    for e in by_pos.values() {
                        // An ack, synced or not, may take effect (a reclaimed segment is
                        // deleted before its round is published); an unacked synced append
                        // must survive.
                        let must_survive =
                            e.appended.is_none_or(|t| t <= synced_ticket) && e.acked.is_none();
                        prop_assert!(
                            !must_survive,
                            "{}: synced message {:?} lost (synced {}, {:?})",
                            name,
                            e.pos,
                            synced_ticket,
                            e
                        );
                    }
                    model[q] = kept;
                    stores.push(rq.store);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=1000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn crashes_never_lose_synced_writes_or_resurrect_acks(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run_model(ops)?;
    }
}
