//! A model-based property test of random appends, acks, delivery marks and crashes: synced
//! writes are never lost and synced acks never resurrected.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

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
