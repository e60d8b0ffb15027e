//! Unit tests: headers, bucket arithmetic, records, store names, and buckets cascaded,
//! loaded and recovered through a real vhost message store (a fake clock drives the turns;
//! nothing fires, since firing reads the wall clock).

use super::*;

fn headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert((*k).into(), v.clone());
    }
    BasicProperties::default().with_headers(table)
}

#[test]
fn due_time_reads_the_three_headers() {
    let now = 1_000_000;
    let p = headers(&[("x-delay", AMQPValue::LongInt(500))]);
    assert_eq!(due_time(&p, now), Some(now + 500));
    let p = headers(&[("x-delay", AMQPValue::LongInt(0))]);
    assert_eq!(due_time(&p, now), None);
    let p = headers(&[("x-delay", AMQPValue::LongLongInt(-5))]);
    assert_eq!(due_time(&p, now), None);
    let p = headers(&[("x-opt-delivery-time", AMQPValue::LongLongInt(1_000_250))]);
    assert_eq!(due_time(&p, now), Some(now + 250));
    let p = headers(&[("x-opt-delivery-time", AMQPValue::LongLongInt(10))]);
    assert_eq!(due_time(&p, now), None, "a time in the past routes at once");
    let p = headers(&[("x-opt-delivery-delay", AMQPValue::LongString("70".into()))]);
    assert_eq!(due_time(&p, now), Some(now + 70));
    let p = headers(&[("x-delay", AMQPValue::LongLongInt(i64::MAX))]);
    assert_eq!(due_time(&p, now), Some(now + MAX_DELAY_MS));
    assert_eq!(due_time(&BasicProperties::default(), now), None);
}

#[test]
fn buckets_are_fine_near_now_and_coarse_far_away() {
    let now = 1 << 40;
    let near = bucket_of(now + 500, now);
    assert_eq!(near.level, 0);
    let far = bucket_of(now + 3_600_000, now);
    assert!(far.level >= 2, "{far:?}");
    // Every level above 0 acts strictly before now + its width: its messages can be
    // cascaded to lower levels in time.
    for delay in [2_048u64, 40_000, 700_000, 10_000_000, MAX_DELAY_MS] {
        let key = bucket_of(now + delay, now);
        assert!(key.trigger > now || key.level == 0, "{delay}: {key:?}");
        // At the trigger, a cascade puts the message at a strictly lower level.
        if key.level > 0 {
            let again = bucket_of(now + delay, key.trigger);
            assert!(again.level < key.level, "{delay}: {key:?} -> {again:?}");
        }
    }
    // Level-0 buckets are loaded at most ~2 widths before their messages are due.
    let key = bucket_of(now + 1_500, now);
    assert!(now + 1_500 - key.trigger <= 2 << LEVEL0_SHIFT);
}

#[test]
fn records_round_trip_and_bad_ones_are_errors() {
    let keys = [Name::from("cc1"), Name::from("bcc")];
    let body = encode_record_body(42, &keys, b"hello");
    let stored = StoredMessage {
        exchange: "x".into(),
        routing_key: "rk".into(),
        raw_properties: bytes::Bytes::from_static(&[0, 0]),
        body: bytes::Bytes::from(body),
    };
    assert_eq!(record_due(&stored), Some(42));
    let decoded = decode_record(stored.clone()).expect("decodes");
    assert_eq!(decoded.extra_keys, keys);
    assert_eq!(decoded.message.body(), b"hello");
    for cut in [0, 5, 9, 11, 14] {
        let short = StoredMessage {
            body: stored.body.slice(..cut),
            ..stored.clone()
        };
        assert!(decode_record(short).is_err(), "cut at {cut}");
    }
}

#[test]
fn decided_records_name_their_queues_and_bad_ones_are_errors() {
    let queues = [Name::from("q1"), Name::from("queue-two")];
    let body = encode_decided_body(99, &queues, b"later");
    let stored = StoredMessage {
        exchange: "x".into(),
        routing_key: "rk".into(),
        raw_properties: bytes::Bytes::from_static(&[0, 0]),
        body: bytes::Bytes::from(body),
    };
    assert_eq!(record_due(&stored), Some(99));
    let decoded = decode_record(stored.clone()).expect("decodes");
    assert!(decoded.decided);
    assert_eq!(decoded.extra_keys, queues);
    assert_eq!(decoded.message.body(), b"later");
    // A record of CC keys is not decided, even with the most keys it may hold.
    let many: Vec<Name> = (0..usize::from(DECIDED_MARK))
        .map(|_| Name::from(""))
        .collect();
    let plain = StoredMessage {
        body: bytes::Bytes::from(encode_record_body(1, &many, b"")),
        ..stored.clone()
    };
    let decoded = decode_record(plain).expect("decodes");
    assert!(!decoded.decided);
    assert_eq!(decoded.extra_keys.len(), usize::from(DECIDED_MARK) - 1);
    for cut in [10, 11, 13, 16] {
        let short = StoredMessage {
            body: stored.body.slice(..cut),
            ..stored.clone()
        };
        assert!(decode_record(short).is_err(), "cut at {cut}");
    }
}

#[test]
fn store_names_parse_back() {
    let key = bucket_of((1 << 40) + 100_000, 1 << 40);
    let name = store_name("my\u{0}x", key, 7, SYNCED);
    assert_eq!(store_exchange(&name), Some("my\u{0}x"));
    assert_eq!(parse_store_name(&name), Some((key, 7)));
    assert!(is_reserved_queue_name(&name));
}

fn message(body: &str, persistent: bool) -> Arc<Message> {
    let mut props = BasicProperties::default();
    if persistent {
        props = props.with_delivery_mode(2);
    }
    let raw = crate::protocol::encode_properties(&props).expect("encodes");
    Arc::new(Message::new(
        "d".into(),
        "k".into(),
        &props,
        &raw,
        bytes::Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn open(dir: &std::path::Path) -> Arc<crate::vhost::VHost> {
    crate::vhost::VHost::open(
        "/",
        Registry::with_builtins(),
        dir,
        crate::store::StoreOptions::default(),
    )
    .expect("vhost opens")
}

fn delayed_of(vhost: &crate::vhost::VHost) -> Arc<DelayedExchange> {
    vhost
        .exchange("d")
        .expect("declared")
        .delayed()
        .expect("a delayed exchange")
        .clone()
}

/// Turns at each bucket trigger up to `until` (fake times), then the loaded messages.
fn step_until(vhost: &crate::vhost::VHost, d: &DelayedExchange, until: u64) -> Vec<(u64, String)> {
    while let Some(t) = d.next_trigger() {
        if t > until {
            break;
        }
        d.turn(vhost, t);
    }
    let mut loaded = d.loaded_messages();
    loaded.sort();
    loaded
}

#[test]
fn far_messages_cascade_down_load_with_their_bodies_and_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("bourse-delayed-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let vhost = open(&dir);
    let mut args = FieldTable::default();
    args.insert(TYPE_ARGUMENT.into(), AMQPValue::LongString("direct".into()));
    vhost
        .declare_exchange(crate::vhost::ExchangeSpec {
            name: "d".into(),
            kind: TYPE_NAME.into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: args,
        })
        .expect("declares");
    let d = delayed_of(&vhost);
    let now = now_ms();
    // Levels 0 to 4, in no particular order; odd ones transient.
    let delays = [
        40_000u64, 8_000, 600_000, 5_000_000, 20_000, 70_000_000, 9_000,
    ];
    let mut expected = Vec::new();
    for (i, delay) in delays.iter().enumerate() {
        let body = format!("m{i}");
        let persistent = i % 2 == 0;
        d.hold(&message(&body, persistent), &[], now + delay)
            .expect("held");
        expected.push((now + delay, body, persistent));
    }
    assert_eq!(d.waiting(), delays.len() as u64);
    let levels = d.pending_levels();
    assert!(
        levels.contains(&0) && levels.iter().any(|l| *l >= 3),
        "{levels:?}"
    );
    let last = now + 70_000_000;
    let loaded = step_until(&vhost, &d, last);
    let all: Vec<(u64, String)> = {
        let mut v: Vec<_> = expected.iter().map(|(t, b, _)| (*t, b.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(loaded, all, "every message reached the heap, bodies intact");
    assert_eq!(
        d.waiting(),
        delays.len() as u64,
        "nothing fired or was lost"
    );

    // Again from scratch, then a restart before any turn: persistent ones come back.
    drop(d);
    vhost.delete_exchange("d", false).expect("deleted");
    let mut args = FieldTable::default();
    args.insert(TYPE_ARGUMENT.into(), AMQPValue::LongString("direct".into()));
    vhost
        .declare_exchange(crate::vhost::ExchangeSpec {
            name: "d".into(),
            kind: TYPE_NAME.into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: args,
        })
        .expect("declares again");
    let d = delayed_of(&vhost);
    assert_eq!(d.waiting(), 0, "a deleted exchange's messages are gone");
    for (due, body, persistent) in &expected {
        d.hold(&message(body, *persistent), &[], *due)
            .expect("held");
    }
    drop(d);
    vhost.close_storage();
    drop(vhost);
    let vhost = open(&dir);
    let d = delayed_of(&vhost);
    let persistent: Vec<(u64, String)> = {
        let mut v: Vec<_> = expected
            .iter()
            .filter(|(_, _, p)| *p)
            .map(|(t, b, _)| (*t, b.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(d.waiting(), persistent.len() as u64);
    assert_eq!(step_until(&vhost, &d, last), persistent);
    vhost.close_storage();
    let _ = std::fs::remove_dir_all(&dir);
}
