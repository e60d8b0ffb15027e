//! Publish to route to enqueue, without sockets: the frames of one small publish are decoded,
//! the message is built, routed through a vhost's exchange and appended to the queues it
//! reaches. `publish/direct_1_queue` is the path of scenario (a) minus the network;
//! `publish/fanout_10_queues` sends one message to ten queues, which share its one body
//! (checked before measuring: every queue holds the same `Arc<Message>`, so no body is copied).
//!
//! Queues are capped with `x-max-length` (drop-head) so that memory stays flat however long
//! criterion runs; dropping the oldest message is part of the measured cost. So are the
//! management counters a channel keeps per publish: its publish count, and the exchange's
//! publish_in/out tallied for the read turn (added to the exchange every 64 messages here, a
//! turn's worth); the queue counts its own under its lock. `publish/direct_1_queue_uncounted`
//! is the same publish without the channel's and exchange's counters, so the difference
//! between the two is what those counters cost (the queue's own are plain additions under a
//! lock the enqueue holds anyway, and stay in both).
//!
//! Run: `cargo bench -p bourse --bench publish`.

use std::hint::black_box;
use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic};
use amq_protocol::types::{AMQPValue, FieldTable};
use bourse::exchange::{Binding, Destination, Name, Registry};
use bourse::message::Message;
use bourse::protocol::{Frame, parse_frame};
use bourse::queue::{Queue, QueueSpec};
use bourse::stats::OwnedCounter;
use bourse::vhost::{ExchangeSpec, ExchangeTally, Routed, VHost};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The three frames of one publish with a 16-byte body, as a client sends them.
fn publish_frames(exchange: &str, routing_key: &str) -> Vec<u8> {
    let frames = [
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 16,
                properties: BasicProperties::default().with_delivery_mode(1),
            },
        ),
        AMQPFrame::Body(1, vec![7u8; 16]),
    ];
    let mut out = Vec::new();
    for frame in &frames {
        out = gen_frame(frame)(WriteContext::from(out))
            .expect("encodes")
            .into_inner()
            .0;
    }
    out
}

/// A vhost with exchange `x` of `kind` bound to `queues` capped queues.
fn topology(kind: &str, queues: usize) -> (Arc<VHost>, Vec<Arc<Queue>>) {
    let vhost = VHost::new("/", Registry::with_builtins());
    vhost
        .declare_exchange(ExchangeSpec {
            name: Name::from("x"),
            kind: Name::from(kind),
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        })
        .expect("exchange");
    let mut cap = FieldTable::default();
    cap.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
    let queues = (0..queues)
        .map(|i| {
            let name = Name::from(format!("q{i}"));
            let queue = vhost
                .declare_queue(QueueSpec {
                    name: name.clone(),
                    durable: false,
                    exclusive_owner: None,
                    auto_delete: false,
                    arguments: cap.clone(),
                })
                .expect("queue")
                .queue;
            vhost
                .bind(
                    "x",
                    Binding {
                        destination: Destination::Queue(name),
                        routing_key: Name::from("k"),
                        arguments: FieldTable::default(),
                    },
                )
                .expect("bind");
            queue
        })
        .collect();
    (vhost, queues)
}

/// Decodes one publish from `wire` and routes and enqueues it: the broker's per-message work
/// between the socket read and the consumer's write buffer.
fn publish_once(
    vhost: &VHost,
    wire: &[u8],
    buf: &mut BytesMut,
    routed: &mut Routed,
    counts: Option<&mut Counts>,
) {
    buf.extend_from_slice(wire);
    let Ok(Some(Frame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(publish))))) =
        parse_frame(buf, 131_072)
    else {
        panic!("a publish");
    };
    let Ok(Some(Frame::Header(_, header))) = parse_frame(buf, 131_072) else {
        panic!("a header");
    };
    let Ok(Some(Frame::Body(_, body))) = parse_frame(buf, 131_072) else {
        panic!("a body");
    };
    let exchange = vhost.exchange(publish.exchange.as_str()).expect("exchange");
    let header = *header;
    let message = Arc::new(Message::new(
        exchange.spec.name.clone(),
        Name::from(publish.routing_key.as_str()),
        &header.properties,
        &header.raw_properties,
        body,
    ));
    vhost.route(
        &exchange,
        &message,
        &header.properties,
        &[message.routing_key()],
        routed,
    );
    if let Some(counts) = counts {
        counts.published.add(1);
        counts.tally.count(&exchange, !routed.queues.is_empty());
        counts.turn += 1;
        if counts.turn == 64 {
            counts.turn = 0;
            counts.tally.flush();
        }
    }
    for queue in routed.queues.drain(..) {
        queue.publish(message.clone());
    }
}

/// The counters of the channel and connection that publish.
#[derive(Default)]
struct Counts {
    published: OwnedCounter,
    tally: ExchangeTally,
    turn: u32,
}

fn publish(c: &mut Criterion) {
    let wire = publish_frames("x", "k");
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(1));
    for (name, kind, queues, counted) in [
        ("direct_1_queue", "direct", 1, true),
        ("direct_1_queue_uncounted", "direct", 1, false),
        ("fanout_10_queues", "fanout", 10, true),
    ] {
        let (vhost, queues) = topology(kind, queues);
        let mut buf = BytesMut::with_capacity(1 << 16);
        let mut routed = Routed::default();
        let mut counts = Counts::default();
        // One message reaches every queue, and they all hold the same body.
        publish_once(&vhost, &wire, &mut buf, &mut routed, Some(&mut counts));
        let held: Vec<_> = queues
            .iter()
            .map(|q| q.get(true).expect("routed to every queue").0.message)
            .collect();
        assert!(held.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
        group.bench_function(name, |b| {
            b.iter(|| {
                let counts = counted.then_some(&mut counts);
                publish_once(black_box(&vhost), &wire, &mut buf, &mut routed, counts)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
