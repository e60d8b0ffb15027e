use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::*;
use crate::protocol::ReplyCode;

fn nested_table(depth: usize) -> Vec<u8> {
    nested_table_for_tests(depth)
}

fn encode(table: &FieldTable) -> Vec<u8> {
    gen_field_table(table)(Vec::new().into())
        .expect("encodes")
        .into_inner()
        .0
}

#[test]
fn depth_at_the_limit_is_accepted_and_decodes_like_amq_protocol() {
    let bytes = nested_table(MAX_FIELD_DEPTH);
    assert_eq!(check_table(&bytes), Ok(()));
    let ours = decode_table(&bytes, "test").expect("decodes");
    let theirs = amq_protocol::types::parsing::parse_field_table(&bytes[..])
        .expect("amq-protocol decodes")
        .1;
    assert_eq!(ours, theirs);
}

#[test]
fn one_level_deeper_is_a_syntax_error() {
    let bytes = nested_table(MAX_FIELD_DEPTH + 1);
    assert_eq!(check_table(&bytes), Err(TooDeep));
    let error = decode_table(&bytes, "client-properties").unwrap_err();
    assert_eq!(error.code, ReplyCode::SyntaxError);
    assert!(
        error.text.contains("nested deeper than 64"),
        "{}",
        error.text
    );
}

#[test]
fn the_reported_attack_is_refused_without_recursion() {
    // About 125 KB: an array nested 25,000 deep, as in the crash report.
    let bytes = nested_table(25_000);
    assert!(bytes.len() > 100_000);
    assert_eq!(check_table(&bytes), Err(TooDeep));
}

#[test]
fn ordinary_tables_pass_and_round_trip() {
    let mut inner = FieldTable::default();
    inner.insert("count".into(), AMQPValue::LongLongInt(3));
    inner.insert("flag".into(), AMQPValue::Boolean(true));
    let mut table = FieldTable::default();
    for (i, value) in [
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
        AMQPValue::DecimalValue(amq_protocol::types::DecimalValue { scale: 2, value: 7 }),
        AMQPValue::LongString(LongString::from(b"text".to_vec())),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(inner.clone()),
            AMQPValue::Void,
        ])),
        AMQPValue::Timestamp(99),
        AMQPValue::FieldTable(inner),
        AMQPValue::ByteArray(vec![1, 2, 3].into()),
        AMQPValue::Void,
    ]
    .into_iter()
    .enumerate()
    {
        table.insert(format!("k{i}").into(), value);
    }
    let bytes = encode(&table);
    assert_eq!(check_table(&bytes), Ok(()));
    assert_eq!(decode_table(&bytes, "test").expect("decodes"), table);
}

#[test]
fn malformed_tables_pass_the_walk_and_fail_to_decode() {
    let deep = nested_table(10);
    for cut in 0..deep.len() {
        let part = &deep[..cut];
        assert_eq!(check_table(part), Ok(()), "cut at {cut}");
        assert!(decode_table(part, "t").is_err(), "cut at {cut}");
    }
    // An unknown tag, and a length running past its container.
    assert!(decode_table(b"\0\0\0\x03\x01kZ", "t").is_err());
    assert_eq!(check_table(b"\0\0\0\x08\x01kA\0\0\0\x09"), Ok(()));
}

#[test]
fn method_arguments_are_checked_where_the_table_sits() {
    // queue.declare: ticket, queue "q", flags, arguments.
    let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    payload.extend_from_slice(&nested_table(MAX_FIELD_DEPTH + 1));
    let error = check_method(&payload).unwrap_err();
    assert_eq!(error.code, ReplyCode::SyntaxError);
    assert_eq!((error.class_id, error.method_id), (50, 10));
    // connection.start-ok: the table comes first.
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend_from_slice(&nested_table(25_000));
    assert_eq!(
        check_method(&start_ok).unwrap_err().code,
        ReplyCode::SyntaxError
    );
    // basic.consume at the limit passes.
    let mut consume = vec![0, 60, 0, 20, 0, 0, 1, b'q', 1, b't', 0];
    consume.extend_from_slice(&nested_table(MAX_FIELD_DEPTH));
    assert!(check_method(&consume).is_ok());
    // A method without a table is not looked at.
    assert!(check_method(&[0, 60, 0, 80, 1]).is_ok());
}

#[test]
fn headers_in_properties_are_checked_after_the_strings_before_them() {
    let flags = CONTENT_TYPE_FLAG | CONTENT_ENCODING_FLAG | HEADERS_FLAG;
    let mut raw = flags.to_be_bytes().to_vec();
    raw.extend_from_slice(b"\x04text\x04gzip");
    raw.extend_from_slice(&nested_table(MAX_FIELD_DEPTH + 1));
    assert_eq!(check_properties(&raw), Err(TooDeep));
    assert_eq!(
        decode_properties(&raw).unwrap_err().code,
        ReplyCode::SyntaxError
    );
    let mut ok = flags.to_be_bytes().to_vec();
    ok.extend_from_slice(b"\x04text\x04gzip");
    ok.extend_from_slice(&nested_table(3));
    let properties: BasicProperties = decode_properties(&ok).expect("decodes");
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("text")
    );
    assert!(properties.headers().is_some());
}
