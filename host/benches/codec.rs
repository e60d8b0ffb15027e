//! Frame decode and encode: the per-message cost of the wire layer.
//!
//! `decode/publish` parses a basic.publish method frame, its content header and a 16-byte
//! body frame, the three frames every small published message costs. `encode/deliver`
//! writes the basic.deliver, header and body frames a consumer receives.

use std::hint::black_box;

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic};
use bourse::protocol::{Deliver, parse_frame, write_content, write_deliver, write_method};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn publish_frames(count: usize, body: &[u8]) -> Vec<u8> {
    let properties = BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_delivery_mode(1);
    let raw = bourse::protocol::encode_properties(&properties).expect("encodes");
    let mut out = Vec::new();
    for _ in 0..count {
        write_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.direct".into(),
                routing_key: "orders.eu".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        write_content(&mut out, 1, &raw, body, 131_072);
    }
    out
}

fn decode(c: &mut Criterion) {
    const BATCH: usize = 1000;
    let wire = publish_frames(BATCH, &[7u8; 16]);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("publish_16b_x1000", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut frames = 0;
            while let Some(frame) = parse_frame(&mut buf, 131_072).expect("valid frames") {
                black_box(&frame);
                frames += 1;
            }
            assert_eq!(frames, BATCH * 3);
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let raw = bourse::protocol::encode_properties(&properties).expect("encodes");
    let body = vec![1u8; 16];
    let mut out = Vec::with_capacity(1 << 20);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("deliver_16b", |b| {
        b.iter(|| {
            out.clear();
            write_deliver(
                &mut out,
                1,
                Deliver {
                    consumer_tag: "amq.ctag-abcdefghijklmnopqrstuv",
                    delivery_tag: 42,
                    redelivered: false,
                    exchange: "amq.direct",
                    routing_key: "orders.eu",
                },
            );
            write_content(&mut out, 1, &raw, &body, 131_072);
            black_box(out.len());
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
