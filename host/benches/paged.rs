//! Paged enqueue and dequeue: a queue with no consumer takes 100,000 16-byte messages (far
//! beyond the in-memory window of `queue::IN_MEMORY_MESSAGES`, so most are paged out and read
//! back), then a consumer drains it. Two kinds: `persistent` (a durable queue, the messages in
//! its message store) and `transient` (a non-durable queue paging into an unsynced store).
//!
//! - `paged/publish_100k/KIND`: the enqueue side alone (append to the store, page out);
//! - `paged/publish_then_drain_100k/KIND`: enqueue, then an auto-ack consumer takes every
//!   message (page in, acknowledge in the store).
//!
//! Per element: one message. Files go to `$BOURSE_BENCH_DIR` (default: the system temp dir).
//! The set-up is one small function, [`paged_queue`], so that it can follow changes to how
//! queues are given their store (e.g. transient messages paging too).
//! Run: `cargo bench -p bourse --bench paged`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use bourse::exchange::Name;
use bourse::message::{Message, QueuedMessage};
use bourse::queue::{Consumer, IN_MEMORY_MESSAGES, Outlet, Queue, QueueSpec};
use bourse::store::{MessageStore, StoreOptions};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MESSAGES: u64 = 100_000;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BOURSE_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("bench dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

/// The two kinds of paged queue.
#[derive(Clone, Copy)]
enum Kind {
    /// A durable queue of persistent messages: they page into its message store.
    Persistent,
    /// A non-durable queue of transient messages: they page into the unsynced paging store.
    Transient,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Persistent => "persistent",
            Kind::Transient => "transient",
        }
    }
}

/// A queue named `name` of `kind`: persistent messages go to `store`, transient ones page into
/// `paging`.
fn paged_queue(
    kind: Kind,
    store: &MessageStore,
    paging: &Arc<MessageStore>,
    name: &str,
) -> Arc<Queue> {
    let spec = QueueSpec {
        name: Name::from(name),
        durable: matches!(kind, Kind::Persistent),
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
    };
    let queue_store = match kind {
        Kind::Persistent => Some(store.open_queue(name).expect("queue store")),
        Kind::Transient => None,
    };
    Queue::try_new_paged(spec, queue_store, Some(paging.clone())).expect("queue")
}

/// A 16-byte message of `kind`.
fn message(kind: Kind) -> Arc<Message> {
    let mode = match kind {
        Kind::Persistent => 2,
        Kind::Transient => 1,
    };
    Arc::new(Message::new(
        Name::from(""),
        Name::from("q"),
        &BasicProperties::default().with_delivery_mode(mode),
        &[0x10, 0x00, mode],
        Bytes::from_static(&[7; 16]),
    ))
}

/// An auto-ack consumer's outlet that counts what it is given.
#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
}

impl Outlet for Counting {
    fn offer(
        &self,
        _consumer: &Arc<Consumer>,
        _queue: &Arc<Queue>,
        _entry: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn cancelled_by_server(&self, _consumer: &Consumer) {}
}

fn fill(queue: &Arc<Queue>, msg: &Arc<Message>) {
    for _ in 0..MESSAGES {
        queue.publish(msg.clone());
    }
}

/// Adds an auto-ack consumer, which takes the whole queue, and removes it again.
fn drain(queue: &Arc<Queue>) {
    let outlet = Arc::new(Counting::default());
    let consumer = Arc::new(Consumer {
        tag: Name::from("ctag"),
        outlet: outlet.clone(),
        no_ack: true,
        exclusive: false,
        priority: 0,
        prefetch: 0,
        unacked: Default::default(),
    });
    queue
        .add_consumer(consumer.clone(), || {})
        .expect("consume");
    assert_eq!(outlet.delivered.load(Ordering::Relaxed), MESSAGES);
    queue.remove_consumer(&consumer);
}

fn paged(c: &mut Criterion) {
    let dir = bench_dir();
    let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).expect("store");
    let paging_options = StoreOptions {
        sync: false,
        ..StoreOptions::default()
    };
    let (paging, _) =
        MessageStore::open(&dir.path().join("paging"), paging_options).expect("paging store");
    let paging = Arc::new(paging);
    let mut round = 0u64;
    let mut next_name = || {
        round += 1;
        format!("paged-{round}")
    };
    let mut group = c.benchmark_group("paged");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(MESSAGES));
    for kind in [Kind::Persistent, Kind::Transient] {
        let msg = message(kind);
        {
            // The set-up works as intended: most of the queue is beyond the in-memory window.
            let queue = paged_queue(kind, &store, &paging, &next_name());
            fill(&queue, &msg);
            assert_eq!(queue.message_count() as u64, MESSAGES);
            assert!(queue.paged_count() as u64 > MESSAGES - 2 * IN_MEMORY_MESSAGES as u64);
            drain(&queue);
            assert_eq!(queue.message_count(), 0);
            queue.delete();
        }
        group.bench_function(format!("publish_100k/{}", kind.name()), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let queue = paged_queue(kind, &store, &paging, &next_name());
                    let start = Instant::now();
                    fill(&queue, &msg);
                    spent += start.elapsed();
                    queue.delete();
                }
                spent
            })
        });
        group.bench_function(format!("publish_then_drain_100k/{}", kind.name()), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let queue = paged_queue(kind, &store, &paging, &next_name());
                    let start = Instant::now();
                    fill(&queue, &msg);
                    drain(&queue);
                    spent += start.elapsed();
                    queue.delete();
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, paged);
criterion_main!(benches);
