//! Unit tests of the `headers` exchange: each `x-match` rule, RabbitMQ's value comparison,
//! binding validation and removal, and a property test against a naive model of the matcher.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::LongString;
use proptest::prelude::*;

use super::super::test_util::{binding_with, names, queue, route_with};
use super::*;

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(text: &str) -> AMQPValue {
    AMQPValue::LongString(text.into())
}

fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
    BasicProperties::default().with_headers(table(headers))
}

fn router(args: &[(&str, AMQPValue)]) -> HeadersRouter {
    let mut r = HeadersRouter::default();
    let b = binding_with("", queue("q"), table(args));
    r.validate_binding(&b).expect("valid binding");
    r.add_binding(&b);
    r
}

fn routes(r: &HeadersRouter, headers: &[(&str, AMQPValue)]) -> bool {
    !route_with(r, "", &props(headers)).is_empty()
}

#[test]
fn all_needs_every_header() {
    let r = router(&[("x-match", s("all")), ("a", s("1")), ("b", s("2"))]);
    assert!(routes(&r, &[("a", s("1")), ("b", s("2"))]));
    assert!(routes(&r, &[("a", s("1")), ("b", s("2")), ("c", s("3"))]));
    assert!(!routes(&r, &[("a", s("1"))]));
    assert!(!routes(&r, &[("a", s("1")), ("b", s("3"))]));
    assert!(!routes(&r, &[]));
}

#[test]
fn all_is_the_default() {
    let r = router(&[("a", s("1")), ("b", s("2"))]);
    assert!(routes(&r, &[("a", s("1")), ("b", s("2"))]));
    assert!(!routes(&r, &[("a", s("1"))]));
}

#[test]
fn any_needs_one_header() {
    let r = router(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
    assert!(routes(&r, &[("a", s("1"))]));
    assert!(routes(&r, &[("b", s("2")), ("a", s("0"))]));
    assert!(!routes(&r, &[("a", s("2")), ("c", s("1"))]));
    assert!(!routes(&r, &[]));
}

#[test]
fn empty_patterns() {
    // RabbitMQ: `all` starts true and nothing refutes it; `any` starts false.
    let all = router(&[]);
    assert!(routes(&all, &[]));
    assert!(
        !route_with(&all, "", &BasicProperties::default()).is_empty(),
        "no headers"
    );
    assert!(routes(
        &router(&[("x-match", s("all")), ("x-other", s("v"))]),
        &[]
    ));
    let any = router(&[("x-match", s("any"))]);
    assert!(!routes(&any, &[("a", s("1"))]));
    assert!(!routes(
        &router(&[("x-match", s("any")), ("x-y", s("1"))]),
        &[("x-y", s("1"))]
    ));
}

#[test]
fn message_without_headers_is_an_empty_table() {
    let none = BasicProperties::default();
    let r = router(&[("a", AMQPValue::Void)]);
    assert!(route_with(&r, "", &none).is_empty());
    let r = router(&[("x-match", s("any")), ("a", s("1"))]);
    assert!(route_with(&r, "", &none).is_empty());
}

#[test]
fn x_arguments_count_only_with_x() {
    let headers = [("x-id", s("7")), ("a", s("1"))];
    // Ignored by all/any: only `a` counts.
    assert!(routes(
        &router(&[("a", s("1")), ("x-id", s("8"))]),
        &headers
    ));
    assert!(!routes(
        &router(&[("x-match", s("any")), ("x-id", s("7"))]),
        &headers
    ));
    // Counted by the *-with-x rules.
    let all_x = router(&[
        ("x-match", s("all-with-x")),
        ("a", s("1")),
        ("x-id", s("8")),
    ]);
    assert!(!routes(&all_x, &headers));
    let all_x = router(&[
        ("x-match", s("all-with-x")),
        ("a", s("1")),
        ("x-id", s("7")),
    ]);
    assert!(routes(&all_x, &headers));
    let any_x = router(&[("x-match", s("any-with-x")), ("x-id", s("7"))]);
    assert!(routes(&any_x, &headers));
    assert!(!routes(&any_x, &[("a", s("1"))]));
}

#[test]
fn x_match_itself_never_counts() {
    // Even with *-with-x, `x-match` is not compared with a header of that name.
    let r = router(&[("x-match", s("all-with-x"))]);
    assert!(routes(&r, &[]));
    let r = router(&[("x-match", s("any-with-x")), ("a", s("1"))]);
    assert!(!routes(&r, &[("x-match", s("any-with-x"))]));
}

#[test]
fn void_matches_presence() {
    let r = router(&[("a", AMQPValue::Void)]);
    assert!(routes(&r, &[("a", s("anything"))]));
    assert!(routes(&r, &[("a", AMQPValue::Void)]));
    assert!(routes(&r, &[("a", AMQPValue::LongInt(0))]));
    assert!(!routes(&r, &[("b", s("1"))]));
    // A void header only equals a void (or presence) pattern.
    let r = router(&[("a", AMQPValue::Boolean(false))]);
    assert!(!routes(&r, &[("a", AMQPValue::Void)]));
}

#[test]
fn numbers_compare_numerically() {
    use AMQPValue::*;
    let one = [
        ShortShortInt(1),
        ShortShortUInt(1),
        ShortInt(1),
        ShortUInt(1),
        LongInt(1),
        LongUInt(1),
        LongLongInt(1),
        Timestamp(1),
        Float(1.0),
        Double(1.0),
    ];
    for a in &one {
        for b in &one {
            assert!(values_equal(a, b), "{a:?} == {b:?}");
        }
        assert!(!values_equal(a, &Double(1.5)));
        assert!(!values_equal(a, &s("1")), "a number never equals a string");
        assert!(!values_equal(a, &Boolean(true)), "nor a boolean");
        assert!(!values_equal(
            a,
            &DecimalValue(amq_protocol::types::DecimalValue { scale: 0, value: 1 })
        ));
    }
    assert!(values_equal(&LongLongInt(-3), &Float(-3.0)));
    assert!(
        !values_equal(&Float(0.1), &Double(0.1)),
        "f32 0.1 is not f64 0.1"
    );
    assert!(values_equal(&Float(0.5), &Double(0.5)));
    assert!(!values_equal(&Double(f64::NAN), &Double(f64::NAN)));
    assert!(!values_equal(
        &LongLongInt(i64::MAX),
        &Double(f64::INFINITY)
    ));
    // Exact comparison beyond 2^53, as Erlang does.
    let big = 1i64 << 60;
    assert!(values_equal(&LongLongInt(big), &Double(big as f64)));
    assert!(!values_equal(&LongLongInt(big + 1), &Double(big as f64)));
    assert!(values_equal(&Timestamp(u64::MAX), &Timestamp(u64::MAX)));
    assert!(!values_equal(&Timestamp(u64::MAX), &LongLongInt(-1)));

    let r = router(&[("n", LongInt(1))]);
    assert!(routes(&r, &[("n", Double(1.0))]));
    assert!(!routes(&r, &[("n", s("1"))]));
}

#[test]
fn strings_and_binaries_compare_by_bytes() {
    let short = AMQPValue::ShortString("abc".into());
    let long = s("abc");
    let bytes = AMQPValue::ByteArray(b"abc".to_vec().into());
    for (a, b) in [(&short, &long), (&long, &bytes), (&short, &bytes)] {
        assert!(values_equal(a, b));
    }
    assert!(!values_equal(&long, &s("abd")));
    assert!(!values_equal(&long, &s("ABC")));
    assert!(!values_equal(
        &AMQPValue::LongString(LongString::from(Vec::new())),
        &AMQPValue::FieldArray(Vec::new().into())
    ));
}

#[test]
fn booleans_decimals_and_void() {
    use AMQPValue::*;
    assert!(values_equal(&Boolean(true), &Boolean(true)));
    assert!(!values_equal(&Boolean(true), &Boolean(false)));
    assert!(!values_equal(&Boolean(false), &LongInt(0)));
    let d = |scale, value| DecimalValue(amq_protocol::types::DecimalValue { scale, value });
    assert!(values_equal(&d(2, 150), &d(2, 150)));
    assert!(
        !values_equal(&d(2, 150), &d(1, 15)),
        "decimals are {{Scale, Value}} tuples"
    );
    assert!(values_equal(&Void, &Void));
    assert!(!values_equal(&Void, &Boolean(false)));
}

#[test]
fn nested_values_compare_structurally_with_types() {
    use AMQPValue::*;
    let arr = |v: Vec<AMQPValue>| FieldArray(v.into());
    assert!(values_equal(
        &arr(vec![LongInt(1), s("a")]),
        &arr(vec![LongInt(1), s("a")])
    ));
    assert!(!values_equal(
        &arr(vec![LongInt(1)]),
        &arr(vec![LongInt(1), LongInt(1)])
    ));
    assert!(!values_equal(
        &arr(vec![LongInt(1)]),
        &arr(vec![LongInt(2)])
    ));
    // Inside an array RabbitMQ keeps {Type, Value}: types must agree.
    assert!(!values_equal(
        &arr(vec![LongInt(1)]),
        &arr(vec![LongLongInt(1)])
    ));
    assert!(!values_equal(
        &arr(vec![LongInt(1)]),
        &arr(vec![Double(1.0)])
    ));
    let inner = |v| FieldTable(table(&[("k", v)]));
    assert!(values_equal(&inner(s("v")), &inner(s("v"))));
    assert!(!values_equal(&inner(s("v")), &inner(s("w"))));
    assert!(!values_equal(&inner(LongInt(1)), &inner(ShortInt(1))));
    assert!(!values_equal(
        &inner(s("v")),
        &FieldTable(table(&[("j", s("v"))]))
    ));
    assert!(values_equal(
        &arr(vec![inner(arr(vec![Boolean(true)]))]),
        &arr(vec![inner(arr(vec![Boolean(true)]))])
    ));
    // Both are empty Erlang lists.
    assert!(values_equal(&arr(vec![]), &FieldTable(table(&[]))));
    assert!(!values_equal(&arr(vec![LongInt(1)]), &inner(LongInt(1))));

    let r = router(&[("h", inner(arr(vec![s("x")])))]);
    assert!(routes(&r, &[("h", inner(arr(vec![s("x")])))]));
    assert!(!routes(&r, &[("h", inner(arr(vec![s("y")])))]));
}

#[test]
fn invalid_x_match_is_refused() {
    let r = HeadersRouter::default();
    let check =
        |args: &[(&str, AMQPValue)]| r.validate_binding(&binding_with("", queue("q"), table(args)));
    for ok in ["all", "any", "all-with-x", "any-with-x"] {
        assert!(check(&[("x-match", s(ok))]).is_ok(), "{ok}");
    }
    assert!(check(&[]).is_ok(), "x-match may be omitted");
    assert_eq!(
        check(&[("x-match", s("some"))]).unwrap_err().0,
        "Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x"
    );
    assert!(check(&[("x-match", s("ALL"))]).is_err(), "case matters");
    assert_eq!(
        check(&[("x-match", AMQPValue::LongInt(1))]).unwrap_err().0,
        "Invalid x-match field type signedint (value 1); expected longstr"
    );
}

#[test]
fn unvalidated_bad_x_match_falls_back_to_all() {
    let mut r = HeadersRouter::default();
    r.add_binding(&binding_with(
        "",
        queue("q"),
        table(&[("x-match", s("bogus")), ("a", s("1")), ("b", s("2"))]),
    ));
    assert!(routes(&r, &[("a", s("1")), ("b", s("2"))]));
    assert!(!routes(&r, &[("a", s("1"))]));
}

#[test]
fn routing_key_is_ignored() {
    let r = router(&[("a", s("1"))]);
    let p = props(&[("a", s("1"))]);
    for key in ["", "a", "#"] {
        assert_eq!(names(&route_with(&r, key, &p)), ["q"]);
    }
}

#[test]
fn duplicate_bindings_are_counted() {
    // Same destination and arguments, different routing keys: distinct bindings.
    let args = table(&[("a", s("1"))]);
    let mut r = HeadersRouter::default();
    r.add_binding(&binding_with("k1", queue("q"), args.clone()));
    r.add_binding(&binding_with("k2", queue("q"), args.clone()));
    r.add_binding(&binding_with("", queue("q"), table(&[("b", s("2"))])));
    assert_eq!(r.entries.len(), 2);
    let p = props(&[("a", s("1"))]);
    let mut out = Vec::new();
    let input = RoutingInput {
        exchange: "x",
        routing_key: "",
        properties: &p,
        body: b"",
    };
    r.route(&input, &mut out).unwrap();
    assert_eq!(out, [queue("q")], "one copy per distinct pattern");

    r.remove_binding(&binding_with("k1", queue("q"), args.clone()));
    assert_eq!(names(&route_with(&r, "", &p)), ["q"]);
    r.remove_binding(&binding_with("k2", queue("q"), args.clone()));
    assert!(route_with(&r, "", &p).is_empty());
    r.remove_binding(&binding_with("k2", queue("q"), args));
    assert_eq!(r.entries.len(), 1, "unknown unbind is a no-op");
}

#[test]
fn bindings_with_nan_can_be_removed() {
    let args = table(&[("a", AMQPValue::Double(f64::NAN))]);
    let mut r = HeadersRouter::default();
    r.add_binding(&binding_with("", queue("q"), args.clone()));
    r.remove_binding(&binding_with("", queue("q"), args));
    assert!(r.entries.is_empty());
}

// ---- Property test against a naive model -------------------------------------------------

/// An Erlang term, as `rabbit_binary_parser` would produce from a header value.
#[derive(Debug, Clone)]
enum Erl {
    Int(i128),
    Float(f64),
    Bin(Vec<u8>),
    Atom(&'static str),
    Tuple(Vec<Erl>),
    List(Vec<Erl>),
}

/// The value part of `{Name, Type, Value}`.
fn erl(v: &AMQPValue) -> Erl {
    use AMQPValue::*;
    match v {
        Boolean(b) => Erl::Atom(if *b { "true" } else { "false" }),
        ShortShortInt(i) => Erl::Int((*i).into()),
        ShortShortUInt(i) => Erl::Int((*i).into()),
        ShortInt(i) => Erl::Int((*i).into()),
        ShortUInt(i) => Erl::Int((*i).into()),
        LongInt(i) => Erl::Int((*i).into()),
        LongUInt(i) => Erl::Int((*i).into()),
        LongLongInt(i) => Erl::Int((*i).into()),
        Timestamp(i) => Erl::Int((*i).into()),
        Float(f) => Erl::Float((*f).into()),
        Double(f) => Erl::Float(*f),
        DecimalValue(d) => Erl::Tuple(vec![Erl::Int(d.scale.into()), Erl::Int(d.value.into())]),
        ShortString(s) => Erl::Bin(s.as_str().as_bytes().to_vec()),
        LongString(s) => Erl::Bin(s.as_bytes().to_vec()),
        ByteArray(b) => Erl::Bin(b.as_slice().to_vec()),
        Void => Erl::Atom("undefined"),
        FieldArray(a) => Erl::List(
            a.as_slice()
                .iter()
                .map(|v| Erl::Tuple(vec![Erl::Atom(rabbit_type(v)), erl(v)]))
                .collect(),
        ),
        FieldTable(t) => Erl::List(
            t.inner()
                .iter()
                .map(|(k, v)| {
                    Erl::Tuple(vec![
                        Erl::Bin(k.as_str().as_bytes().to_vec()),
                        Erl::Atom(rabbit_type(v)),
                        erl(v),
                    ])
                })
                .collect(),
        ),
    }
}

/// Erlang's `==`: numbers by value, everything else structurally.
fn erl_eq(a: &Erl, b: &Erl) -> bool {
    match (a, b) {
        (Erl::Int(x), Erl::Int(y)) => x == y,
        (Erl::Float(x), Erl::Float(y)) => x == y,
        (Erl::Int(i), Erl::Float(f)) | (Erl::Float(f), Erl::Int(i)) => *i as f64 == *f,
        (Erl::Bin(x), Erl::Bin(y)) => x == y,
        (Erl::Atom(x), Erl::Atom(y)) => x == y,
        (Erl::Tuple(x), Erl::Tuple(y)) | (Erl::List(x), Erl::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| erl_eq(a, b))
        }
        _ => false,
    }
}

/// The reference: which pattern entries count, and whether the message satisfies them.
fn naive_matches(args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let rule = match args.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => s.as_bytes().to_vec(),
        _ => b"all".to_vec(),
    };
    let with_x = rule.ends_with(b"-with-x");
    let mut matched = 0;
    let mut counted = 0;
    for (name, wanted) in args.inner() {
        let name = name.as_str();
        if name == "x-match" || (name.starts_with("x-") && !with_x) {
            continue;
        }
        counted += 1;
        let found = headers.and_then(|h| h.inner().get(name));
        let hit = match (wanted, found) {
            (_, None) => false,
            (AMQPValue::Void, Some(_)) => true,
            (w, Some(f)) => erl_eq(&erl(w), &erl(f)),
        };
        matched += usize::from(hit);
    }
    if rule.starts_with(b"all") {
        matched == counted
    } else {
        matched > 0
    }
}

/// Few values, chosen to collide across types (`1`, `1.0`, `"1"`, `<<"1">>`, ...).
fn value() -> impl Strategy<Value = AMQPValue> {
    use AMQPValue::*;
    let scalars = prop::sample::select(vec![
        Void,
        Boolean(true),
        ShortShortInt(1),
        LongInt(1),
        LongLongInt(2),
        Timestamp(1),
        Float(1.0),
        Float(0.1),
        Double(0.1),
        s("1"),
        ShortString("1".into()),
        ByteArray(b"1".to_vec().into()),
        DecimalValue(amq_protocol::types::DecimalValue { scale: 0, value: 1 }),
    ]);
    scalars.prop_recursive(2, 4, 2, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| FieldArray(v.into())),
            prop::collection::btree_map(prop::sample::select(vec!["k", "l"]), inner, 0..2)
                .prop_map(|m| FieldTable(table(&m.into_iter().collect::<Vec<_>>()))),
        ]
    })
}

fn entries() -> impl Strategy<Value = Vec<(&'static str, AMQPValue)>> {
    prop::collection::vec((prop::sample::select(vec!["a", "b", "x-d"]), value()), 0..4)
}

fn binding_args() -> impl Strategy<Value = FieldTable> {
    let rule = prop::option::of(prop::sample::select(vec![
        "all",
        "any",
        "all-with-x",
        "any-with-x",
    ]));
    (rule, entries()).prop_map(|(rule, entries)| {
        let mut t = table(&entries);
        if let Some(rule) = rule {
            t.insert("x-match".into(), s(rule));
        }
        t
    })
}

fn headers() -> impl Strategy<Value = Option<FieldTable>> {
    prop::option::weighted(
        0.9,
        (
            entries(),
            prop::option::of(prop::sample::select(vec!["all", "any"])),
        )
            .prop_map(|(entries, x_match)| {
                let mut t = table(&entries);
                if let Some(v) = x_match {
                    t.insert("x-match".into(), s(v));
                }
                t
            }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn routes_like_the_naive_model(
        bindings in prop::collection::vec((binding_args(), 0..4usize), 0..8),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        messages in prop::collection::vec(headers(), 1..8),
    ) {
        let mut r = HeadersRouter::default();
        let mut model: Vec<(FieldTable, usize)> = Vec::new();
        for (args, q) in bindings {
            let b = binding_with("", queue(&q.to_string()), args.clone());
            prop_assert!(r.validate_binding(&b).is_ok());
            r.add_binding(&b);
            model.push((args, q));
        }
        for index in removals {
            if model.is_empty() {
                break;
            }
            let (args, q) = model.swap_remove(index.index(model.len()));
            r.remove_binding(&binding_with("", queue(&q.to_string()), args));
        }
        // Also send each binding's own arguments as headers, which exercises `all`.
        let own = model.iter().map(|(args, _)| Some(args.clone()));
        for headers in messages.into_iter().chain(own) {
            let p = match &headers {
                Some(h) => BasicProperties::default().with_headers(h.clone()),
                None => BasicProperties::default(),
            };
            let got: Vec<String> =
                names(&route_with(&r, "", &p)).into_iter().map(str::to_owned).collect();
            let mut want: Vec<String> = model
                .iter()
                .filter(|(args, _)| naive_matches(args, headers.as_ref()))
                .map(|(_, q)| q.to_string())
                .collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(got, want, "headers {:?}", headers);
        }
    }
}
