//! Topology changes as bindings grow: the cost per binding of binding n keys, unbinding them,
//! deleting a queue that has n bindings, and declaring, binding and deleting one small queue
//! next to n bindings of another. With bindings indexed (issue 10) each figure per binding (or
//! per small queue) stays flat from n = 1,000 to 100,000; with a `Vec` per exchange, binding
//! and unbinding were O(n) each and setting up n bindings O(n^2).
//!
//! Every operation goes through the vhost's public API (`VHost::bind`, `unbind`,
//! `delete_queue`), on an in-memory vhost with a direct exchange: what queue.bind costs the
//! broker without the network. Throughput is in bindings (elements) per second.
//!
//! Run: `cargo bench -p bourse --bench bindings` (add `-- --quick` for a rough figure).
//!
//! Measured 2026-12-04 on 2 cores shared with other builds (load average 4-7: ±50 %), time per
//! binding for n = 1k / 10k / 100k: bind 0.77 / 0.75 / 1.2 µs, unbind 0.48 / 0.78 / 1.3-2.7 µs,
//! delete a queue with n bindings 0.26 / 0.55 / 1.6 µs; a small queue declared, bound and
//! deleted next to n bindings 2.3 / 2.0 / 1.7 µs. The slow growth at 100k is cache misses
//! (tens of MB of maps), not a scan. The `Vec` before: bind 5.2 / 57.7 µs (n = 1k / 10k; 100k
//! not run, quadratic), unbind 0.59 / 5.3 µs, small queue next to n 3.0 / 24.4 µs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;
use bourse::exchange::{Binding, Destination, Name, Registry};
use bourse::queue::QueueSpec;
use bourse::vhost::{ExchangeSpec, VHost};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn vhost() -> Arc<VHost> {
    let vhost = VHost::new("/", Registry::with_builtins());
    vhost
        .declare_exchange(ExchangeSpec {
            name: Name::from("x"),
            kind: Name::from("direct"),
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        })
        .expect("declare x");
    declare_queue(&vhost, "q");
    vhost
}

fn declare_queue(vhost: &VHost, name: &str) {
    vhost
        .declare_queue(QueueSpec {
            name: Name::from(name),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        })
        .expect("declare queue");
}

fn binding(queue: &str, key: usize) -> Binding {
    Binding {
        destination: Destination::Queue(Name::from(queue)),
        routing_key: Name::from(format!("key.{key}")),
        arguments: FieldTable::default(),
    }
}

fn bind_all(vhost: &VHost, queue: &str, n: usize) {
    for i in 0..n {
        vhost.bind("x", binding(queue, i)).expect("bind");
    }
}

/// Runs `iters` times: `setup` (not timed), then `timed` on what it built.
fn timed<T>(iters: u64, setup: impl Fn() -> T, timed: impl Fn(&T)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let state = setup();
        let started = Instant::now();
        timed(&state);
        total += started.elapsed();
        // Dropped outside the timing: tearing n bindings down is not what is measured.
        drop(state);
    }
    total
}

fn bindings(c: &mut Criterion) {
    let mut group = c.benchmark_group("bindings");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &n in &SIZES {
        let keys: Vec<Binding> = (0..n).map(|i| binding("q", i)).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("bind", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                timed(iters, vhost, |vhost| {
                    for binding in &keys[..n] {
                        vhost.bind("x", binding.clone()).expect("bind");
                    }
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("unbind", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        let vhost = vhost();
                        bind_all(&vhost, "q", n);
                        vhost
                    },
                    |vhost| {
                        for binding in &keys[..n] {
                            vhost.unbind("x", binding).expect("unbind");
                        }
                    },
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("delete_queue", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        let vhost = vhost();
                        bind_all(&vhost, "q", n);
                        vhost
                    },
                    |vhost| {
                        black_box(vhost.delete_queue("q", 0, false, false).expect("delete"));
                    },
                )
            })
        });
    }
    group.finish();

    // One small queue declared, bound once and deleted next to n bindings of another queue:
    // the cost per small queue must not grow with n (no scan of the other bindings).
    let mut group = c.benchmark_group("bindings_small_queue_next_to_n");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &n in &SIZES {
        let vhost = vhost();
        bind_all(&vhost, "q", n);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                declare_queue(&vhost, "small");
                vhost.bind("x", binding("small", 0)).expect("bind");
                black_box(
                    vhost
                        .delete_queue("small", 0, false, false)
                        .expect("delete"),
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bindings);
criterion_main!(benches);
