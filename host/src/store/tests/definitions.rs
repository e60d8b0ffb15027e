//! The definitions log: exact encoding of every kind, replay, a damaged tail, compaction.

use std::fs;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::*;
use crate::store::definitions::{decode_for_test, encode_for_test};

fn rich_table() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    t.insert("x-bool".into(), AMQPValue::Boolean(true));
    t.insert("x-i8".into(), AMQPValue::ShortShortInt(-3));
    t.insert("x-u8".into(), AMQPValue::ShortShortUInt(200));
    t.insert("x-i16".into(), AMQPValue::ShortInt(-300));
    t.insert("x-u16".into(), AMQPValue::ShortUInt(60_000));
    t.insert("x-i64".into(), AMQPValue::LongLongInt(-1 << 40));
    t.insert("x-f32".into(), AMQPValue::Float(1.5));
    t.insert("x-f64".into(), AMQPValue::Double(-2.25));
    t.insert("x-ts".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert(
        "x-str".into(),
        AMQPValue::LongString(LongString::from("plugin arg ✓")),
    );
    t.insert("x-void".into(), AMQPValue::Void);
    let mut inner = FieldTable::default();
    inner.insert("nested".into(), AMQPValue::LongString("yes".into()));
    t.insert("x-table".into(), AMQPValue::FieldTable(inner));
    t.insert(
        "x-array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("two".into()),
        ])),
    );
    t
}

fn exchange(name: &str) -> Definition {
    Definition::DeclareExchange(ExchangeDefinition {
        name: name.into(),
        kind: "x-wasm-geo".into(),
        durable: true,
        auto_delete: false,
        internal: true,
        arguments: rich_table(),
    })
}

fn queue(name: &str) -> Definition {
    Definition::DeclareQueue(QueueDefinition {
        name: name.into(),
        durable: true,
        auto_delete: true,
        exclusive: false,
        arguments: rich_table(),
    })
}

fn binding(source: &str, kind: DestinationKind, dest: &str, key: &str) -> BindingDefinition {
    let mut arguments = FieldTable::default();
    arguments.insert("x-match".into(), AMQPValue::LongString("all".into()));
    BindingDefinition {
        source: source.into(),
        destination_kind: kind,
        destination: dest.into(),
        routing_key: key.into(),
        arguments,
    }
}

fn all_kinds() -> Vec<Definition> {
    vec![
        exchange("geo"),
        exchange("fan"),
        queue("orders"),
        Definition::Bind(binding("geo", DestinationKind::Queue, "orders", "eu.#")),
        Definition::Bind(binding("geo", DestinationKind::Exchange, "fan", "")),
        Definition::Unbind(binding("geo", DestinationKind::Exchange, "fan", "")),
        Definition::DeleteQueue {
            name: "orders".into(),
        },
        Definition::DeleteExchange { name: "fan".into() },
    ]
}

#[test]
fn definitions_encode_and_decode_every_kind_exactly() {
    for def in all_kinds() {
        let bytes = encode_for_test(&def);
        assert_eq!(decode_for_test(&bytes), Ok(def.clone()));
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(decode_for_test(&bytes[..cut]).is_err());
        }
    }
    // NaN survives too (a JSON encoding would not).
    let mut t = FieldTable::default();
    t.insert("x-nan".into(), AMQPValue::Double(f64::NAN));
    let def = Definition::DeclareQueue(QueueDefinition {
        name: "n".into(),
        durable: true,
        auto_delete: false,
        exclusive: false,
        arguments: t,
    });
    let Ok(Definition::DeclareQueue(q)) = decode_for_test(&encode_for_test(&def)) else {
        panic!("decodes");
    };
    let Some(AMQPValue::Double(v)) = q.arguments.inner().get("x-nan") else {
        panic!("value kept");
    };
    assert!(v.is_nan());
}

#[test]
fn definitions_replay_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert!(replay.is_empty());
        for def in all_kinds() {
            log.append(&def).unwrap();
        }
        log.append_all(&[queue("a"), queue("b")]).unwrap();
    }
    let (log, replay) = DefinitionsLog::open(dir.path()).unwrap();
    let mut want = all_kinds();
    want.extend([queue("a"), queue("b")]);
    assert_eq!(replay, want);
    assert_eq!(log.records(), 10);
    // The live view: geo exchange, queues a and b, no bindings (orders and fan are gone).
    let names: Vec<String> = log
        .snapshot()
        .iter()
        .map(|d| match d {
            Definition::DeclareExchange(e) => format!("e:{}", e.name),
            Definition::DeclareQueue(q) => format!("q:{}", q.name),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, vec!["e:geo", "q:a", "q:b"]);
}

#[test]
fn definitions_damaged_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path;
    let full;
    {
        let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
        log.append(&exchange("a")).unwrap();
        let keep = fs::metadata(log.path()).unwrap().len();
        log.append(&exchange("b")).unwrap();
        path = log.path().to_owned();
        full = (keep, fs::metadata(&path).unwrap().len());
    }
    let (keep, len) = full;
    for cut in [keep + 3, len - 1] {
        let data = fs::read(&path).unwrap();
        let backup = data.clone();
        fs::write(&path, &data[..cut as usize]).unwrap();
        let (mut log, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(replay, vec![exchange("a")]);
        assert_eq!(fs::metadata(&path).unwrap().len(), keep);
        log.append(&exchange("c")).unwrap();
        drop(log);
        let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(replay, vec![exchange("a"), exchange("c")]);
        fs::write(&path, backup).unwrap();
    }
    // A flipped byte in the last record.
    let mut data = fs::read(&path).unwrap();
    let last = data.len() - 5;
    data[last] ^= 1;
    fs::write(&path, data).unwrap();
    let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
    assert_eq!(replay, vec![exchange("a")]);
    // Not a log at all: refused, not overwritten.
    fs::write(&path, b"something else entirely").unwrap();
    assert!(DefinitionsLog::open(dir.path()).is_err());
}

#[test]
fn definitions_compact_to_the_live_objects() {
    let dir = tempfile::tempdir().unwrap();
    let options = DefinitionsOptions {
        compact_min_records: 20,
        compact_ratio: 4,
    };
    {
        let (mut log, _) = DefinitionsLog::open_with(dir.path(), options.clone()).unwrap();
        log.append(&exchange("x")).unwrap();
        log.append(&queue("keep")).unwrap();
        log.append(&Definition::Bind(binding(
            "x",
            DestinationKind::Queue,
            "keep",
            "k",
        )))
        .unwrap();
        for i in 0..40 {
            let name = format!("tmp{i}");
            log.append(&queue(&name)).unwrap();
            log.append(&Definition::Bind(binding(
                "x",
                DestinationKind::Queue,
                &name,
                "k",
            )))
            .unwrap();
            log.append(&Definition::DeleteQueue { name }).unwrap();
        }
        assert!(log.records() < 30, "compacted: {} records", log.records());
    }
    let live = vec![
        exchange("x"),
        queue("keep"),
        Definition::Bind(binding("x", DestinationKind::Queue, "keep", "k")),
    ];
    let (mut log, replay) = DefinitionsLog::open_with(dir.path(), options.clone()).unwrap();
    assert_eq!(log.snapshot(), live);
    assert_eq!(&replay[..3], &live[..], "the snapshot comes first");
    log.compact().unwrap();
    drop(log);
    let (log, replay) = DefinitionsLog::open_with(dir.path(), options).unwrap();
    assert_eq!(replay, live);
    assert_eq!(log.records(), 3);
    assert!(!dir.path().join("definitions.log.tmp").exists());
}

#[test]
fn deleting_an_exchange_drops_its_bindings_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
    for def in [
        exchange("a"),
        exchange("b"),
        queue("q"),
        Definition::Bind(binding("a", DestinationKind::Exchange, "b", "1")),
        Definition::Bind(binding("b", DestinationKind::Queue, "q", "2")),
        Definition::Bind(binding("a", DestinationKind::Queue, "q", "3")),
        Definition::Bind(binding("a", DestinationKind::Queue, "q", "3")), // duplicate
        Definition::DeleteExchange { name: "b".into() },
    ] {
        log.append(&def).unwrap();
    }
    assert_eq!(
        log.snapshot(),
        vec![
            exchange("a"),
            queue("q"),
            Definition::Bind(binding("a", DestinationKind::Queue, "q", "3")),
        ]
    );
}
