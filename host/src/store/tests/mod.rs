//! Store tests: round trips, reclamation, damaged tails, the definitions log, and a model-based
//! property test of random appends, acks, delivery marks and crashes. The helpers here are
//! shared by every file of the directory.

mod definitions;
mod plugin_state;
mod properties;
mod recovery;
mod writes;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::*;

fn small() -> StoreOptions {
    StoreOptions {
        segment_max_bytes: 4096,
        ..StoreOptions::default()
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

fn corrupt_at(path: &Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0x5a;
    fs::write(path, data).unwrap();
}
