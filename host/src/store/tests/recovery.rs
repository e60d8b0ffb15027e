//! Recovery: redelivered flags and acks across restarts, damaged or torn files, unknown
//! headers and queue directories without a name.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;

use super::*;
use crate::store::segment;

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
