//! Message store benchmarks: group-committed appends of 1 KiB messages (how many per fsync),
//! and recovery of a queue of 1,000,000 16-byte messages.
//!
//! `cargo bench -p bourse --bench store`. Files go to `$BOURSE_BENCH_DIR` (default: the
//! system temp dir), so point it at the disk under test. Each append scenario prints msgs per
//! fsync round from the store's counters. `BOURSE_BENCH_RECOVERY_MESSAGES` changes the size of
//! the recovered queue (default 1,000,000).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bourse::store::{MessageStore, QueueStore, StoreOptions, Ticket};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROPS: [u8; 3] = [0x10, 0x00, 2]; // delivery-mode 2

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BOURSE_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("bench dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn report(label: &str, store: &MessageStore, before: bourse::store::StoreStats) {
    let s = store.stats();
    let msgs = s.appended - before.appended;
    if msgs == 0 {
        return; // filtered out
    }
    let rounds = (s.rounds - before.rounds).max(1);
    let fsyncs = (s.fsyncs - before.fsyncs).max(1);
    eprintln!(
        "  {label}: {msgs} msgs in {rounds} rounds ({:.1} msgs/round, {:.1} msgs/fsync)",
        msgs as f64 / rounds as f64,
        msgs as f64 / fsyncs as f64
    );
}

/// `publishers` threads each append `per` messages to `queues[t % queues.len()]`, keeping at
/// most `window` unconfirmed (1 = wait for each confirm), then wait for the last sync.
fn publish(
    store: &Arc<MessageStore>,
    queues: &[QueueStore],
    publishers: usize,
    per: u64,
    window: u64,
    body: &[u8],
) {
    std::thread::scope(|s| {
        for t in 0..publishers {
            let q = queues[t % queues.len()].clone();
            let store = store.clone();
            s.spawn(move || {
                let mut pending: std::collections::VecDeque<Ticket> = Default::default();
                for _ in 0..per {
                    let (_, ticket) = q.append("", "bench", &PROPS, body).expect("append");
                    pending.push_back(ticket);
                    if pending.len() as u64 >= window {
                        let oldest = pending.pop_front().unwrap_or(ticket);
                        store.wait_synced_blocking(oldest).expect("sync");
                        while pending.front().is_some_and(|&t| t <= store.synced()) {
                            pending.pop_front();
                        }
                    }
                }
                if let Some(&last) = pending.back() {
                    store.wait_synced_blocking(last).expect("sync");
                }
            });
        }
    });
}

fn appends(c: &mut Criterion) {
    let body = vec![0xabu8; 1024];
    let mut group = c.benchmark_group("store_append_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(1));
    // (name, publishers, unconfirmed window per publisher)
    for (name, publishers, window) in [
        ("1 publisher, confirm each", 1, 1),
        ("4 publishers, confirm each", 4, 1),
        ("1 publisher, window 256", 1, 256),
        ("4 publishers, window 256", 4, 256),
        ("1 publisher, unbounded", 1, u64::MAX),
    ] {
        let dir = bench_dir();
        let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).expect("open");
        let store = Arc::new(store);
        let queues = vec![store.open_queue("bench").expect("queue")];
        let before = store.stats();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(publishers as u64);
                let start = Instant::now();
                publish(&store, &queues, publishers, per, window, &body);
                start.elapsed()
            })
        });
        report(name, &store, before);
    }
    // Publish and consume at once: every message acked once synced, so each round also
    // writes (and syncs) the ack file.
    {
        let name = "1 publisher window 256, acking consumer";
        let dir = bench_dir();
        let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).expect("open");
        let store = Arc::new(store);
        let q = store.open_queue("bench").expect("queue");
        let before = store.stats();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let (tx, rx) = std::sync::mpsc::sync_channel(1024);
                std::thread::scope(|s| {
                    let qc = q.clone();
                    s.spawn(move || {
                        for pos in rx {
                            qc.ack(pos).expect("ack");
                        }
                    });
                    let mut pending = std::collections::VecDeque::new();
                    for _ in 0..iters {
                        let (pos, ticket) = q.append("", "bench", &PROPS, &body).expect("append");
                        pending.push_back((pos, ticket));
                        if pending.len() >= 256 {
                            let (p, t) = pending.pop_front().expect("pending");
                            store.wait_synced_blocking(t).expect("sync");
                            tx.send(p).expect("consumer");
                        }
                    }
                    for (p, t) in pending {
                        store.wait_synced_blocking(t).expect("sync");
                        tx.send(p).expect("consumer");
                    }
                    drop(tx);
                });
                start.elapsed()
            })
        });
        report(name, &store, before);
    }
    group.finish();
}

/// Fills a store with `n` messages of `size` bytes in one queue and closes it.
fn fill(dir: &Path, n: usize, size: usize) {
    let (store, _) = MessageStore::open(dir, StoreOptions::default()).expect("open");
    let q = store.open_queue("deep").expect("queue");
    let body = vec![7u8; size];
    for i in 0..n {
        q.append("", "deep", &PROPS, &body).expect("append");
        if i % 100_000 == 0 {
            store.flush().expect("flush");
        }
    }
    store.flush().expect("flush");
}

fn recovery(c: &mut Criterion) {
    // BOURSE_BENCH_RECOVERY_MESSAGES=4000000 to check that recovery time scales linearly.
    let n: usize = std::env::var("BOURSE_BENCH_RECOVERY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = bench_dir();
    let start = Instant::now();
    fill(dir.path(), n, 16);
    eprintln!("  filled {n} x 16 B in {:?}", start.elapsed());
    let mut group = c.benchmark_group("store_recovery");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("{n} x 16 B messages, one queue"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let (store, queues) =
                    MessageStore::open(dir.path(), StoreOptions::default()).expect("open");
                total += start.elapsed();
                assert_eq!(queues[0].messages.len(), n);
                drop(queues);
                drop(store);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, appends, recovery);
criterion_main!(benches);
