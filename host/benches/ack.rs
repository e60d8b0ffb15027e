//! The manual-ack path without the network: what one delivery and its basic.ack cost the
//! broker, through bourse's public API only.
//!
//! - `ack/queue_deliver_ack_each`: a queue with one consumer (prefetch 100) whose outlet accepts
//!   every offer; 100 publishes go straight to the consumer, then each is acked on its own
//!   (`Queue::settle` of one message), as a consumer acking with multiple=false does.
//! - `ack/queue_backlog_ack_dispatches_next`: scenario (b)'s steady state: the queue holds a
//!   backlog and the consumer's 100 credits are used; one publish joins the backlog and one ack
//!   frees a credit, so the settle dispatches the next ready message.
//! - `ack/channel_deliver_ack_each`: the same as the first through the channel layer: the
//!   consumer's outlet is a real `ChannelOutlet`, which encodes basic.deliver and the content
//!   into a connection `Writer` (flushed by its task to a loopback socket whose other end
//!   discards), and each ack is `ChannelOutlet::take_unacked` of one tag then `Queue::settle`.
//! - `ack/channel_deliver_ack_turn`: the same window settled as the broker does with acks that
//!   arrive in one read turn: each tag taken on its own, one `Queue::settle` for all of them.
//!
//! Per element: one message delivered and acked. Run: `cargo bench -p bourse --bench ack`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use bourse::channel::{ChannelOutlet, Unacked};
use bourse::connection::Writer;
use bourse::exchange::Name;
use bourse::message::{Message, QueuedMessage};
use bourse::queue::{Consumer, Outlet, Queue, QueueSpec};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::AsyncReadExt;

const PREFETCH: u32 = 100;

/// An outlet that takes every offer, as a channel with room does, and keeps the entries as a
/// channel's unacked list would.
#[derive(Default)]
struct Accepting {
    unacked: Mutex<VecDeque<QueuedMessage>>,
}

impl Outlet for Accepting {
    fn offer(
        &self,
        consumer: &Arc<Consumer>,
        _queue: &Arc<Queue>,
        entry: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            self.unacked.lock().expect("lock").push_back(entry);
        }
        Ok(())
    }

    fn cancelled_by_server(&self, _consumer: &Consumer) {}
}

impl Accepting {
    /// Acks the oldest unacked delivery, as basic.ack(tag, multiple=false) does.
    fn ack_oldest(&self, consumer: &Consumer, queue: &Arc<Queue>) {
        let entry = {
            let Some(entry) = self.unacked.lock().expect("lock").pop_front() else {
                return;
            };
            entry
        };
        consumer.unacked.fetch_sub(1, Ordering::Relaxed);
        let positions: &[u64] = if entry.position != 0 {
            &[entry.position]
        } else {
            &[]
        };
        queue.settle(1, positions);
    }
}

fn spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: Name::from(name),
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
    }
}

/// A transient 16-byte message, as scenario (b) publishes.
fn message() -> Arc<Message> {
    Arc::new(Message::new(
        Name::from(""),
        Name::from("q"),
        &BasicProperties::default().with_delivery_mode(1),
        &[0x10, 0x00, 1],
        Bytes::from_static(&[7; 16]),
    ))
}

fn consumer(outlet: Arc<dyn Outlet>) -> Arc<Consumer> {
    Arc::new(Consumer {
        tag: Name::from("ctag"),
        outlet,
        no_ack: false,
        exclusive: false,
        priority: 0,
        prefetch: PREFETCH,
        unacked: Default::default(),
    })
}

fn queue_level(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack");
    group.throughput(Throughput::Elements(PREFETCH.into()));
    {
        let queue = Queue::new(spec("q"));
        let outlet = Arc::new(Accepting::default());
        let consumer = consumer(outlet.clone());
        queue
            .add_consumer(consumer.clone(), || {})
            .expect("consume");
        let msg = message();
        group.bench_function("queue_deliver_ack_each", |b| {
            b.iter(|| {
                for _ in 0..PREFETCH {
                    queue.publish(msg.clone());
                }
                for _ in 0..PREFETCH {
                    outlet.ack_oldest(&consumer, black_box(&queue));
                }
            })
        });
        assert_eq!(
            queue.message_count(),
            0,
            "every publish went to the consumer"
        );
    }
    {
        let queue = Queue::new(spec("q"));
        let outlet = Arc::new(Accepting::default());
        let consumer = consumer(outlet.clone());
        queue
            .add_consumer(consumer.clone(), || {})
            .expect("consume");
        let msg = message();
        // Credit used up, and a backlog behind it.
        for _ in 0..(PREFETCH as usize + 10_000) {
            queue.publish(msg.clone());
        }
        assert_eq!(queue.message_count(), 10_000);
        group.bench_function("queue_backlog_ack_dispatches_next", |b| {
            b.iter(|| {
                for _ in 0..PREFETCH {
                    queue.publish(msg.clone());
                    outlet.ack_oldest(&consumer, black_box(&queue));
                }
            })
        });
        assert_eq!(queue.message_count(), 10_000, "the backlog stayed level");
    }
    group.finish();
}

/// A writer whose task flushes to a loopback socket drained by a reader that discards.
fn loopback_writer(runtime: &tokio::runtime::Runtime) -> Arc<Writer> {
    let writer = Writer::new(131_072);
    let task_writer = writer.clone();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while server.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let (_read, write) = client.into_split();
        tokio::spawn(task_writer.run(Box::new(write)));
    });
    writer
}

fn channel_level(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let writer = loopback_writer(&runtime);
    let outlet = ChannelOutlet::new(1, 1, writer);
    let queue = Queue::new(spec("q"));
    let consumer = consumer(outlet.clone());
    queue
        .add_consumer(consumer.clone(), || {})
        .expect("consume");
    let msg = message();
    let mut tag = 0u64;
    let mut group = c.benchmark_group("ack");
    group.throughput(Throughput::Elements(PREFETCH.into()));
    // Each basic.ack settled on its own (the broker before acks were settled per read turn).
    group.bench_function("channel_deliver_ack_each", |b| {
        let mut taken = Vec::new();
        b.iter(|| {
            for _ in 0..PREFETCH {
                queue.publish(msg.clone());
            }
            for _ in 0..PREFETCH {
                tag += 1;
                take_when_delivered(&outlet, tag, &mut taken);
                for unacked in taken.drain(..) {
                    let positions: &[u64] = if unacked.entry.position != 0 {
                        &[unacked.entry.position]
                    } else {
                        &[]
                    };
                    unacked.queue.settle(1, positions);
                }
            }
        })
    });
    // A window of basic.ack (multiple=false) read in one turn, settled together when the turn
    // ends: one queue lock and one dispatch.
    group.bench_function("channel_deliver_ack_turn", |b| {
        let mut taken = Vec::new();
        b.iter(|| {
            for _ in 0..PREFETCH {
                queue.publish(msg.clone());
            }
            for _ in 0..PREFETCH {
                tag += 1;
                take_when_delivered(&outlet, tag, &mut taken);
            }
            let positions: Vec<u64> = taken
                .iter()
                .map(|u| u.entry.position)
                .filter(|&p| p != 0)
                .collect();
            queue.settle(taken.len(), &positions);
            taken.clear();
        })
    });
    group.finish();
    drop(runtime);
}

/// Takes delivery `tag` into `taken`. A delivery refused while the writer was congested waits
/// in the queue until the writer drains and nudges it: wait for its tag.
fn take_when_delivered(outlet: &ChannelOutlet, tag: u64, taken: &mut Vec<Unacked>) {
    while outlet.take_unacked(tag, false, taken).is_err() {
        std::thread::yield_now();
    }
}

criterion_group!(benches, queue_level, channel_level);
criterion_main!(benches);
