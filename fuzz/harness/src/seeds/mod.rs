//! Hand-made seed inputs for every target, built with amq-protocol's generators (nested tables
//! by hand: its generator recurses too). `examples/write_seeds.rs` writes them under
//! `fuzz/corpus/<target>/` before a first run; `tests/replay.rs` also replays them directly, so
//! they stay covered whatever `cargo fuzz cmin` keeps.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue, tx,
};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString};

use bourse::protocol::MAX_FIELD_DEPTH;

mod methods;
pub use methods::methods;

/// The targets, by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: [&str; 5] = [
    "frame_cutting",
    "method_decode",
    "field_table",
    "content_header",
    "connection",
];

/// The seeds of `target`: (file name, bytes).
pub fn for_target(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "frame_cutting" => frame_cutting(),
        "method_decode" => methods()
            .into_iter()
            .map(|(name, m)| (name, method_payload(&m)))
            .chain(deep_method_payloads())
            .collect(),
        "field_table" => field_table(),
        "content_header" => content_headers(),
        "connection" => connection(),
        _ => Vec::new(),
    }
}

/// A table with a value of every type amq-protocol knows, one level of each container inside.
pub fn rich_table() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("count".into(), AMQPValue::LongLongInt(3));
    inner.insert("flag".into(), AMQPValue::Boolean(true));
    let mut table = FieldTable::default();
    let values = [
        AMQPValue::Boolean(false),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::ShortShortUInt(1),
        AMQPValue::ShortInt(-2),
        AMQPValue::ShortUInt(2),
        AMQPValue::LongInt(-3),
        AMQPValue::LongUInt(3),
        AMQPValue::LongLongInt(-4),
        AMQPValue::Float(1.5),
        AMQPValue::Double(2.5),
        AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 7 }),
        AMQPValue::LongString(LongString::from(b"text".to_vec())),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(inner.clone()),
            AMQPValue::Void,
        ])),
        AMQPValue::Timestamp(99),
        AMQPValue::FieldTable(inner),
        AMQPValue::ByteArray(vec![1, 2, 3].into()),
        AMQPValue::Void,
    ];
    for (i, value) in values.into_iter().enumerate() {
        table.insert(format!("k{i}").into(), value);
    }
    table
}

/// The RabbitMQ arguments a client really sends, for the connection target.
fn queue_arguments() -> FieldTable {
    let mut table = FieldTable::default();
    table.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    table.insert("x-max-length".into(), AMQPValue::LongInt(10));
    table.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    table.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
    table
}

fn encode_table(table: &FieldTable) -> Vec<u8> {
    gen_field_table(table)(Vec::new().into())
        .expect("encodes")
        .into_inner()
        .0
}

/// A length-prefixed field table nesting `depth` levels (the table itself is level 1).
pub fn nested_table(depth: usize) -> Vec<u8> {
    bourse::protocol::nested_table_for_tests(depth)
}

/// The depths every nesting seed is made at: around the limit, and the 25,000 of the crash
/// report (a 125 KB connection.start-ok).
const DEPTHS: [usize; 4] = [
    MAX_FIELD_DEPTH - 1,
    MAX_FIELD_DEPTH,
    MAX_FIELD_DEPTH + 1,
    25_000,
];

/// A frame as bytes.
pub fn frame_bytes(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encodes")
        .into_inner()
        .0
}

/// A method's payload: class and method ids, then the arguments.
pub fn method_payload(method: &AMQPClass) -> Vec<u8> {
    let bytes = frame_bytes(&AMQPFrame::Method(1, method.clone()));
    bytes[7..bytes.len() - 1].to_vec()
}

/// A frame of `kind` on `channel` around a raw payload.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

/// For each method with a field table, a payload whose table nests at each of [`DEPTHS`]
/// (the same arguments as [`methods`] before the table; start-ok's table comes first).
fn deep_method_payloads() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, method) in methods() {
        let Some(prefix) = table_prefix(&method) else {
            continue;
        };
        for depth in DEPTHS {
            if depth > 1_000 && name != "connection.start-ok" && name != "queue.declare" {
                continue;
            }
            let mut payload = prefix.clone();
            payload.extend_from_slice(&nested_table(depth));
            payload.extend_from_slice(&table_suffix(&name));
            out.push((format!("{name}-depth-{depth}"), payload));
        }
    }
    out
}

/// The bytes of a method with a field table up to that table, from its encoding with an empty
/// table (which ends the payload, but for start-ok where it is first).
fn table_prefix(method: &AMQPClass) -> Option<Vec<u8>> {
    let mut empty = method.clone();
    match &mut empty {
        AMQPClass::Connection(connection::AMQPMethod::Start(m)) => {
            m.server_properties = FieldTable::default()
        }
        AMQPClass::Connection(connection::AMQPMethod::StartOk(_)) => {
            return Some(vec![0, 10, 0, 11]);
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => {
            m.arguments = FieldTable::default()
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => m.arguments = FieldTable::default(),
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => m.arguments = FieldTable::default(),
        AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => m.arguments = FieldTable::default(),
        AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => m.arguments = FieldTable::default(),
        AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => m.arguments = FieldTable::default(),
        AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => m.arguments = FieldTable::default(),
        _ => return None,
    }
    let mut payload = method_payload(&empty);
    if let AMQPClass::Connection(connection::AMQPMethod::Start(_)) = method {
        // server-properties sit between the version octets and the mechanisms: cut after
        // the versions and let the suffix bring the rest.
        payload.truncate(6);
    } else {
        payload.truncate(payload.len() - 4); // the empty table's length
    }
    Some(payload)
}

/// What follows the table in a method payload.
fn table_suffix(name: &str) -> Vec<u8> {
    match name {
        "connection.start" => b"\0\0\0\x05PLAIN\0\0\0\x05en_US".to_vec(),
        "connection.start-ok" => b"\x05PLAIN\0\0\0\x0c\0guest\0guest\x05en_US".to_vec(),
        _ => Vec::new(),
    }
}

fn header(properties: BasicProperties, body_size: u64) -> AMQPFrame {
    AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties,
        },
    )
}

/// Properties with every field set, headers rich.
fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("gzip".into())
        .with_headers(rich_table())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("c1".into())
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_expiration("60000".into())
        .with_message_id("m1".into())
        .with_timestamp(1_700_000_000)
        .with_type("k".into())
        .with_user_id("guest".into())
        .with_app_id("fuzz".into())
        .with_cluster_id("c".into())
}

fn encode_properties(properties: &BasicProperties) -> Vec<u8> {
    gen_properties(properties)(Vec::new().into())
        .expect("encodes")
        .into_inner()
        .0
}

/// Raw properties: content-type, content-encoding and headers nesting `depth` deep.
fn deep_properties(depth: usize) -> Vec<u8> {
    let flags: u16 = (1 << 15) | (1 << 14) | (1 << 13);
    let mut raw = flags.to_be_bytes().to_vec();
    raw.extend_from_slice(b"\x04text\x04gzip");
    raw.extend_from_slice(&nested_table(depth));
    raw
}

/// Content-header payloads: class, weight, body size, then the raw properties.
fn header_payload(raw_properties: &[u8], body_size: u64) -> Vec<u8> {
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&body_size.to_be_bytes());
    payload.extend_from_slice(raw_properties);
    payload
}

fn content_headers() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (
            "plain".to_string(),
            header_payload(&encode_properties(&BasicProperties::default()), 5),
        ),
        (
            "persistent".to_string(),
            header_payload(
                &encode_properties(&BasicProperties::default().with_delivery_mode(2)),
                5,
            ),
        ),
        (
            "priority".to_string(),
            header_payload(
                &encode_properties(
                    &BasicProperties::default()
                        .with_delivery_mode(1)
                        .with_priority(9),
                ),
                0,
            ),
        ),
        (
            "all-properties".to_string(),
            header_payload(&encode_properties(&all_properties()), u64::MAX),
        ),
    ];
    for depth in DEPTHS {
        out.push((
            format!("headers-depth-{depth}"),
            header_payload(&deep_properties(depth), 1),
        ));
    }
    let all = header_payload(&encode_properties(&all_properties()), 7);
    out.push((
        "truncated-in-properties".into(),
        all[..all.len() - 3].to_vec(),
    ));
    out.push(("truncated-before-flags".into(), all[..13].to_vec()));
    out
}

fn field_table() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "table-rich".to_string(),
        [vec![0], encode_table(&rich_table())].concat(),
    )];
    out.push(("table-empty".into(), vec![0, 0, 0, 0, 0]));
    for depth in DEPTHS {
        out.push((
            format!("table-depth-{depth}"),
            [vec![0], nested_table(depth)].concat(),
        ));
        out.push((
            format!("properties-depth-{depth}"),
            [vec![1], deep_properties(depth)].concat(),
        ));
    }
    let deep = nested_table(10);
    out.push((
        "table-truncated".into(),
        [vec![0], deep[..deep.len() - 3].to_vec()].concat(),
    ));
    out.push((
        "properties-all".into(),
        [vec![1], encode_properties(&all_properties())].concat(),
    ));
    out
}

/// A publish on channel 1: method, header, body in two frames.
fn publish_frames(routing_key: &str, properties: BasicProperties) -> Vec<u8> {
    let body = b"hello fuzz";
    [
        frame_bytes(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: routing_key.into(),
                mandatory: true,
                immediate: false,
            })),
        )),
        frame_bytes(&header(properties, body.len() as u64)),
        raw_frame(3, 1, &body[..4]),
        raw_frame(3, 1, &body[4..]),
    ]
    .concat()
}

fn frame_cutting() -> Vec<(String, Vec<u8>)> {
    let mut stream = Vec::new();
    for (_, method) in methods() {
        stream.extend_from_slice(&frame_bytes(&AMQPFrame::Method(1, method)));
    }
    let publish = publish_frames("fq", all_properties());
    let heartbeat = raw_frame(8, 0, &[]);
    // Selector bytes: frame_max index, number of read sizes, the sizes.
    let mut out = vec![
        (
            "every-method-whole".to_string(),
            [vec![2, 0], stream.clone()].concat(),
        ),
        (
            "every-method-cut".to_string(),
            [vec![2, 3, 0, 6, 255], stream].concat(),
        ),
        (
            "publish-bytewise".to_string(),
            [vec![1, 1, 0], publish.clone()].concat(),
        ),
        (
            "publish-cut".to_string(),
            [vec![2, 2, 10, 100], publish.clone(), heartbeat.clone()].concat(),
        ),
        (
            "heartbeat-max-8".to_string(),
            [vec![0, 0], heartbeat.clone(), heartbeat].concat(),
        ),
        (
            "publish-max-8".to_string(),
            [vec![0, 1, 3], publish.clone()].concat(),
        ),
        (
            "truncated".to_string(),
            [vec![2, 1, 7], publish[..publish.len() - 5].to_vec()].concat(),
        ),
        (
            "bad-frame-end".to_string(),
            vec![2, 0, 8, 0, 0, 0, 0, 0, 0, 0xCD],
        ),
        (
            "unknown-type".to_string(),
            vec![2, 0, 9, 0, 0, 0, 0, 0, 0, 0xCE],
        ),
        ("oversized".to_string(), vec![1, 0, 3, 0, 1, 0, 1, 0, 0]),
    ];
    for (name, payload) in deep_method_payloads() {
        if name.ends_with("-25000") && !name.starts_with("connection.start-ok") {
            continue;
        }
        out.push((
            format!("{name}-cut"),
            [vec![3, 1, 200], raw_frame(1, 0, &payload)].concat(),
        ));
    }
    for depth in DEPTHS {
        let payload = header_payload(&deep_properties(depth), 0);
        out.push((
            format!("header-depth-{depth}"),
            [vec![3, 0], raw_frame(2, 1, &payload)].concat(),
        ));
    }
    out
}

fn method_frame(channel: u16, method: AMQPClass) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(channel, method))
}

fn connection() -> Vec<(String, Vec<u8>)> {
    use AMQPClass as C;
    let declare = |name: &str, arguments: FieldTable| {
        method_frame(
            1,
            C::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: true,
                nowait: false,
                arguments,
            })),
        )
    };
    let session = [
        declare("fq", queue_arguments()),
        method_frame(
            1,
            C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "fx".into(),
                kind: "topic".into(),
                passive: false,
                durable: false,
                auto_delete: true,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        method_frame(
            1,
            C::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "fq".into(),
                exchange: "fx".into(),
                routing_key: "a.#".into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        method_frame(
            1,
            C::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        ),
        publish_frames("fq", BasicProperties::default().with_delivery_mode(2)),
        publish_frames("fq", all_properties()),
        method_frame(
            1,
            C::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
        ),
        method_frame(
            1,
            C::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "fq".into(),
                consumer_tag: "ct".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        method_frame(
            1,
            C::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        ),
        method_frame(
            1,
            C::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 2,
                multiple: true,
                requeue: true,
            })),
        ),
        method_frame(
            1,
            C::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "fq".into(),
                no_ack: false,
            })),
        ),
        method_frame(
            1,
            C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "ct".into(),
                nowait: false,
            })),
        ),
        method_frame(
            1,
            C::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "fq".into(),
                nowait: false,
            })),
        ),
        method_frame(
            1,
            C::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "ok".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
        method_frame(
            0,
            C::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "ok".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
    ]
    .concat();
    let tx = [
        method_frame(1, C::Tx(tx::AMQPMethod::Select(tx::Select {}))),
        publish_frames("nowhere", BasicProperties::default()),
        method_frame(1, C::Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        method_frame(1, C::Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))),
    ]
    .concat();
    let start_ok = method_frame(
        0,
        C::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: rich_table(),
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    );
    let tune_ok = method_frame(
        0,
        C::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 4096,
            heartbeat: 1,
        })),
    );
    let open = method_frame(
        0,
        C::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    );
    let channel_open = method_frame(1, C::Channel(channel::AMQPMethod::Open(channel::Open {})));
    // Stage bytes: 0 start, 1 tune, 2 tuned, 3 open, 4 channel (see connection::Stage).
    let mut out = vec![
        (
            "start-whole-session".to_string(),
            [
                vec![0],
                start_ok,
                tune_ok.clone(),
                open.clone(),
                channel_open.clone(),
                session.clone(),
            ]
            .concat(),
        ),
        (
            "tune-ok-open".to_string(),
            [vec![1], tune_ok, open, channel_open.clone()].concat(),
        ),
        (
            "tuned-bad-vhost".to_string(),
            [
                vec![2],
                method_frame(
                    0,
                    C::Connection(connection::AMQPMethod::Open(connection::Open {
                        virtual_host: "nope".into(),
                    })),
                ),
            ]
            .concat(),
        ),
        (
            "open-channel-session".to_string(),
            [vec![3], channel_open.clone(), session.clone()].concat(),
        ),
        ("channel-session".to_string(), [vec![4], session].concat()),
        ("channel-tx".to_string(), [vec![4], tx].concat()),
        (
            "channel-garbage".to_string(),
            [vec![4], vec![1, 0, 1, 0, 0, 0, 2, 0xff, 0xff, 0xCE]].concat(),
        ),
        (
            "channel-unopened".to_string(),
            [vec![3], declare("fq", FieldTable::default())].concat(),
        ),
    ];
    // After tune-ok, frames up to 128 KiB: room for the 25,000 levels that overflow a tokio
    // worker's stack without the walk.
    for depth in [MAX_FIELD_DEPTH, MAX_FIELD_DEPTH + 1, 25_000] {
        let mut payload = vec![0, 50, 0, 10, 0, 0, 2, b'f', b'q', 0b0_1100];
        payload.extend_from_slice(&nested_table(depth));
        out.push((
            format!("channel-declare-depth-{depth}"),
            [vec![4], raw_frame(1, 1, &payload)].concat(),
        ));
        let header = raw_frame(2, 1, &header_payload(&deep_properties(depth), 0));
        let publish = method_frame(
            1,
            C::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "fq".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        out.push((
            format!("channel-headers-depth-{depth}"),
            [vec![4], publish, header].concat(),
        ));
    }
    // Before tune-ok the broker takes frames of at most 8 KiB (HANDSHAKE_FRAME_MAX): the
    // deepest start-ok that fits, and the 125 KB one of the crash report (refused by size).
    for (name, payload) in deep_method_payloads() {
        if name.starts_with("connection.start-ok") {
            out.push((
                format!("start-{name}"),
                [vec![0], raw_frame(1, 0, &payload)].concat(),
            ));
        }
    }
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend_from_slice(&nested_table(1_300));
    start_ok.extend_from_slice(&table_suffix("connection.start-ok"));
    out.push((
        "start-ok-depth-1300".into(),
        [vec![0], raw_frame(1, 0, &start_ok)].concat(),
    ));
    out
}
